"""Projection functions: ``w -> Ternary`` (forward only; gradients live in ``ternref.methods``).

Each family has its own module; importing this package imports them all so that the registry
(:func:`names`, :func:`get`) is complete.
"""

from ternref.projections._registry import PROPERTIES, ProjectionInfo, get, names, register

__all__ = ["PROPERTIES", "ProjectionInfo", "get", "names", "register"]
