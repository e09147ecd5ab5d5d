"""Packed ternary inference: bit formats, Numba kernels with NumPy twins, packed layers, files.

Formats (each documented to the bit in its module): :mod:`~ternref.packed.i2` (2 bits per
weight), :mod:`~ternref.packed.tq1` (base 3, 1.6 bits), :mod:`~ternref.packed.bitplanes` (two
bit masks). :func:`pack` / :func:`unpack` convert a :class:`~ternref.ternary.Ternary` exactly;
:func:`linear` computes ``x @ W_hat.T`` from the packed codes.
"""

from ternref.packed.kernels import linear, quantize_activations
from ternref.packed.packed import FORMATS, Packed, pack, unpack

__all__ = ["FORMATS", "Packed", "linear", "pack", "quantize_activations", "unpack"]
