"""Packed ternary inference: bit formats, Numba kernels with NumPy twins, packed layers, files.

Formats (each documented to the bit in its module): :mod:`~ternref.packed.i2` (2 bits per
weight), :mod:`~ternref.packed.tq1` (base 3, 1.6 bits), :mod:`~ternref.packed.bitplanes` (two
bit masks). :func:`pack` / :func:`unpack` convert a :class:`~ternref.ternary.Ternary` exactly;
:func:`linear` computes ``x @ W_hat.T`` and :func:`conv2d` a convolution from the packed codes
(on the calling thread and helper threads that do not fight NumPy's BLAS pool:
:func:`get_num_threads` / :func:`set_num_threads`); :func:`export` turns a trained
``Sequential`` into a :class:`PackedSequential` of :class:`PackedLinear` /
:class:`PackedConv2d` layers (BatchNorm folded;
several ternary terms per layer for Ternary Residual Networks), keeping the activation
quantizers that methods insert as registered inference layers
(:func:`register_inference_layer`); :func:`save` / :func:`load` write and read it as a checked
``.npz``.
"""

from ternref.packed._threads import get_num_threads, set_num_threads
from ternref.packed.io import load, save
from ternref.packed.kernels import conv2d, linear, quantize_activations
from ternref.packed.layers import (
    PackedConv2d,
    PackedLinear,
    PackedSequential,
    export,
    fold_batchnorm,
    inference_layer_types,
    register_inference_layer,
)
from ternref.packed.packed import FORMATS, Packed, pack, unpack

__all__ = [
    "FORMATS",
    "Packed",
    "PackedConv2d",
    "PackedLinear",
    "PackedSequential",
    "conv2d",
    "export",
    "fold_batchnorm",
    "get_num_threads",
    "inference_layer_types",
    "linear",
    "load",
    "pack",
    "quantize_activations",
    "register_inference_layer",
    "save",
    "set_num_threads",
    "unpack",
]
