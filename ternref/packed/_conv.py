"""The packed convolution without an im2col matrix: gather, (quantize), multiply, store, per block.

``PackedConv2d`` computes ``y = im2col(x) @ W_hat.T + b`` (then NCHW). Building the whole im2col
matrix first, as the float ``Conv2d`` does, writes and re-reads ``N*OH*OW x C*kh*kw`` floats (627
MB for LeNet-5's second convolution on 1000 images) and leaves nothing for the packed weights to
save. Here every thread takes a range of output positions and, :data:`X_BLOCK` positions at a
time:

1. gathers their receptive fields into a small block (:func:`gather_f32`; with int8 activations
   :func:`ternref.packed._gemm.quantize_rows` then quantizes each receptive field, absmax per
   row, exactly as :func:`ternref.packed.quantize_activations` does on the im2col rows);
2. multiplies the block by decoded tiles of weight rows (the GEMM tiles of
   :mod:`ternref.packed._gemm`);
3. adds the bias, applies a fused ReLU if asked, and stores the block into the NCHW output
   (:func:`store_nchw`).

Receptive-field columns follow the packed weight's padded layout (``(C, kh, kw)`` order,
segments of ``seg`` per scale group, zeros in the padding), described by ``src``: ``src[l]`` is
the offset of column ``l`` inside one padded input window (``c Hp Wp + a Wp + b``), or -1 for a
padding column. The NumPy twin is ``im2col`` followed by the linear twin
(:func:`ternref.packed.kernels.product` with ``backend="numpy"``).
"""

from __future__ import annotations

import numpy as np

from ternref._jit import njit
from ternref.packed._gemm import X_BLOCK

__all__ = [
    "X_BLOCK",
    "conv_geometry",
    "gather_f32",
    "product_columns",
    "store_nchw",
]


def conv_geometry(p, in_shape, kernel_size, stride, padding) -> tuple[np.ndarray, np.ndarray]:
    """``(geo, src)`` for input ``(C, H, W)``: ``geo = [C, Hp, Wp, OH, OW, sh, sw, seg, per_seg,
    K]`` (int64) and the column offsets ``src`` (int64, length ``L``) of the packed weight's padded
    layout. The real columns of a segment of ``seg`` padded columns are its first ``per_seg``
    (the group size, or ``K``) and the last segment's first ``K - (G - 1) per_seg``: what lets
    :func:`gather_f32` copy them without testing each column for padding."""
    c, h, w = in_shape
    kh, kw = kernel_size
    sh, sw = stride
    ph, pw = padding
    hp, wp = h + 2 * ph, w + 2 * pw
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    k = c * kh * kw
    cols = np.arange(k)
    ci, rest = np.divmod(cols, kh * kw)
    a, b = np.divmod(rest, kw)
    offsets = ci * hp * wp + a * wp + b
    if p.n_groups == 1:
        dest, per_seg = cols, k
    else:
        dest, per_seg = (cols // p.group_size) * p.segment + cols % p.group_size, p.group_size
    src = np.full(p.padded_length, -1, np.int64)
    src[dest] = offsets
    geo = np.array([c, hp, wp, oh, ow, sh, sw, p.segment, per_seg, k], np.int64)
    return geo, src


@njit(nogil=True)
def _window_base(pos, geo):
    """Flat offset of the top-left input element of output position ``pos`` (n, i, j)."""
    c, hp, wp, oh, ow, sh, sw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6]
    n = pos // (oh * ow)
    rem = pos - n * oh * ow
    i = rem // ow
    j = rem - i * ow
    return n * c * hp * wp + i * sh * wp + j * sw


@njit(nogil=True)
def gather_f32(xflat, src, geo, p0, nq, out):
    """``out[q, l]`` = column ``l`` of the receptive field of position ``p0 + q`` (float32): the
    real columns of each segment (a prefix, :func:`conv_geometry`) are gathered, the padding
    after them zeroed, with no test per column (a branch in the loop made the gather half of a
    small convolution's time; measured on LeNet-5's second convolution, 2026-12-02)."""
    length = src.shape[0]
    seg, per_seg, k = geo[7], geo[8], geo[9]
    for q in range(nq):
        base = _window_base(p0 + q, geo)
        row = out[q]
        for g0 in range(0, length, seg):
            real = min(per_seg, k - g0 // seg * per_seg)
            part = row[g0 : g0 + real]
            offsets = src[g0 : g0 + real]
            for l in range(real):
                part[l] = xflat[base + offsets[l]]
            row[g0 + real : g0 + seg] = np.float32(0.0)


@njit(nogil=True)
def product_columns(geo, length):
    """Columns of a gathered block the tile product must read: the ``K`` real ones when the
    weight has one scale group (its padding is then at the end, zero in every block), else all
    ``length`` (the padding sits inside every segment). LeNet-5's second convolution reads 800
    columns of 896 in ``i2``."""
    seg, k = geo[7], geo[9]
    return k if seg == length else length


@njit(nogil=True)
def store_nchw(block, nq, p0, geo, bias, has_bias, relu, y):
    """``y[n, o, i, j] = act(block[q, o] + bias[o])`` for positions ``p0 .. p0 + nq - 1``."""
    oh, ow = geo[3], geo[4]
    m = block.shape[1]
    for q in range(nq):
        pos = p0 + q
        n = pos // (oh * ow)
        rem = pos - n * oh * ow
        i = rem // ow
        j = rem - i * ow
        for o in range(m):
            v = block[q, o]
            if has_bias:
                v += bias[o]
            if relu and v < 0:
                v = np.float32(0.0)
            y[n, o, i, j] = v
