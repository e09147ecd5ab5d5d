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

With float32 activations on AVX-512 or AVX2, when the whole weight fits one decoded tile
(LeNet-5's convolutions), :func:`conv_whole_f32` replaces steps 1-2: the weight decoded once per
call as panels of output channels, multiplied by the block of :mod:`ternref.packed._f32_block`,
which reads the receptive fields in place when the weight has one scale group.

Receptive-field columns follow the packed weight's padded layout (``(C, kh, kw)`` order,
segments of ``seg`` per scale group, zeros in the padding), described by ``src``: ``src[l]`` is
the offset of column ``l`` inside one padded input window (``c Hp Wp + a Wp + b``), or -1 for a
padding column. The NumPy twin is ``im2col`` followed by the linear twin
(:func:`ternref.packed.kernels.product` with ``backend="numpy"``).
"""

from __future__ import annotations

import numpy as np

from ternref._jit import njit
from ternref.packed._f32_block import COLS as F32_COLS
from ternref.packed._f32_block import ROWS as F32_ROWS
from ternref.packed._f32_block import outer_block_gather, outer_block_store
from ternref.packed._gemm import NO_BIAS, X_BLOCK

__all__ = [
    "X_BLOCK",
    "conv_geometry",
    "conv_whole_f32",
    "gather_f32",
    "product_columns",
    "store_nchw",
    "store_nchw_t",
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
    """``y[n, o, i, j] = act(block[q, o] + bias[o])`` for positions ``p0 .. p0 + nq - 1``:
    :func:`store_nchw_t` on the transposed view (the same order of reads)."""
    store_nchw_t(block.T, block.shape[1], nq, p0, geo, bias, has_bias, relu, y)


@njit(nogil=True)
def conv_whole_f32(wt, m, xflat, src, geo, bias, has_bias, relu, p0, p1, y):
    """Output positions ``p0 .. p1 - 1`` of a float32 convolution on the float32 block of
    :mod:`ternref.packed._f32_block`, with the roles of the GEMM swapped; ``wt`` holds all
    ``m`` weight rows decoded as panels of 32 rows (the formats' ``dequant_panels``: ``wt[p L +
    k, j]`` = weight ``(32 p + j, k)``, zeros past ``m``).

    In the GEMM the block broadcasts weights and loads vectors of activations. Here the weight
    is the small operand that every block of positions reuses (LeNet-5's second convolution:
    64 rows; 100 positions at batch 1), so the block loads vectors of 32 output channels and
    broadcasts receptive-field values, six positions at a time: ``out_t[o, q] = sum_k
    field_q[k] W[o, k]``; its transposed store writes channels by positions, the order of an
    NCHW output (:func:`store_nchw_t`).

    With one scale group (the first ``K`` columns all real) the block reads each field in place
    from the padded input, ``xflat[window_base(q) + src[k]]``
    (:func:`~ternref.packed._f32_block.outer_block_gather`): no gathered copy at all. That
    copy (:func:`gather_f32`, still used with several groups, whose padding columns sit inside
    the row) took a third of the layer's time. LeNet-5's second convolution at batch 1 went
    from 89-117 us (decoded rows, 4 x 4 loop) to 62-84 us, at batch 1000 from 55-62 ms to
    36-40 ms (i2 and tq1, old and new interleaved in one process, 2026-12-03). Gathering the
    fields into panels along positions, to keep the GEMM's orientation, had cost 36-46 us
    against 24-30 us for the row gather on that layer.

    Positions past the ``nq`` of a block (the last window again, or stale rows of the gathered
    block) and channels past ``m`` (zero panels) are multiplied and never stored."""
    length = src.shape[0]
    n_cols = product_columns(geo, length)
    panels = wt.shape[0] // length
    block_rows = -(-X_BLOCK // F32_ROWS) * F32_ROWS
    out_t = np.empty((panels * F32_COLS, block_rows), np.float32)
    if geo[7] == length:  # one scale group: the first K columns are all real, read in place
        bases = np.empty(block_rows, np.int64)
        for q0 in range(p0, p1, X_BLOCK):
            nq = min(X_BLOCK, p1 - q0)
            for q in range(block_rows):  # past the range: the last window again, dropped
                bases[q] = _window_base(min(q0 + q, p1 - 1), geo)
            for p in range(panels):
                for i0 in range(0, nq, F32_ROWS):
                    outer_block_gather(wt, p * length, xflat, bases, i0, src, n_cols, out_t,
                                       p * F32_COLS, i0)  # fmt: skip
            store_nchw_t(out_t, m, nq, q0, geo, bias, has_bias, relu, y)
        return
    block = np.zeros((block_rows, length), np.float32)
    for q0 in range(p0, p1, X_BLOCK):
        nq = min(X_BLOCK, p1 - q0)
        gather_f32(xflat, src, geo, q0, nq, block)
        for p in range(panels):
            for i0 in range(0, nq, F32_ROWS):
                outer_block_store(wt, p * length, block, i0, n_cols, out_t, p * F32_COLS, i0,
                                  NO_BIAS, False, False)  # fmt: skip
        store_nchw_t(out_t, m, nq, q0, geo, bias, has_bias, relu, y)


@njit(nogil=True)
def store_nchw_t(block_t, m, nq, p0, geo, bias, has_bias, relu, y):
    """:func:`store_nchw` from a block stored channels by positions: ``y[n, o, i, j] =
    act(block_t[o, q] + bias[o])`` for ``o < m`` and positions ``p0 .. p0 + nq - 1``."""
    oh, ow = geo[3], geo[4]
    for q in range(nq):
        pos = p0 + q
        n = pos // (oh * ow)
        rem = pos - n * oh * ow
        i = rem // ow
        j = rem - i * ow
        for o in range(m):
            v = block_t[o, q]
            if has_bias:
                v += bias[o]
            if relu and v < 0:
                v = np.float32(0.0)
            y[n, o, i, j] = v
