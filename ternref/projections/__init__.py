"""Projection functions: ``w -> Ternary`` (forward only; gradients live in ``ternref.methods``).

Each family of projection functions has its own module in this package. Importing the package
imports every module, so the registry (:func:`names`, :func:`get`) is complete, and exposes each
registered function under its registry name (``ternref.projections.twn(w)``).
"""

import importlib
import pkgutil

from ternref.projections._registry import (
    INPUT_KINDS,
    PROPERTIES,
    ProjectionInfo,
    get,
    names,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

for _name in names():
    globals()[_name] = get(_name).fn

__all__ = ["INPUT_KINDS", "PROPERTIES", "ProjectionInfo", "get", "names", "register", *names()]
