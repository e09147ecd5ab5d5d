"""The ``bitplanes`` format: two bit masks per row, ``pos = [c = +1]`` and ``neg = [c = -1]``.

Layout of one row
-----------------
A row of ``L`` weights (``L`` a multiple of ``BLOCK = 64``; :mod:`ternref.packed.packed` pads
rows and scale groups with code 0) is stored as two arrays of ``L / 64`` little-endian
``uint64`` words. Weight ``k`` of the row is bit ``k % 64`` (least significant first) of word
``k // 64``, in ``pos`` if its code is +1 and in ``neg`` if it is -1; a zero code sets neither::

    one 64-weight block = one word per plane
    pos: | bit 63 | bit 62 | ... | bit 1 | bit 0 |     bit i = [c(64 b + i) = +1]
    neg: | bit 63 | bit 62 | ... | bit 1 | bit 0 |     bit i = [c(64 b + i) = -1]

    weight w -> word w // 64, bit w % 64, in plane pos (c = +1) or neg (c = -1)

The pair (pos bit, neg bit) = (1, 1) never occurs; :func:`decode` refuses it. Storage is 2 bits
per weight, like ``i2``, but the two planes are what popcount kernels want (TAB, Zhu et al.
2022; TernGEMM, Choi et al. 2021): with binary or ternary activations ``y`` is a difference of
popcounts. With real activations::

    y = alpha_pos * sum(x[pos]) - alpha_neg * sum(x[neg])  (+ offset * sum(x))

Kernels follow :mod:`ternref.packed.i2` (float32 lanes, here 64 of them, one per bit position;
int32 lanes for int8 activations; a NumPy twin running the same order).

References
----------
Zhu, S., Duong, L. H. K., Liu, W. (2022). TAB: unified and optimized ternary, binary, and
mixed-precision neural network inference on the edge. ACM TECS 21(5). doi:10.1145/3508390.
"""

from __future__ import annotations

import numpy as np

from ternref._jit import njit
from ternref.packed._conv import X_BLOCK, gather_f32, product_columns, store_nchw
from ternref.packed._f32_block import fill_panels
from ternref.packed._gemm import (
    NO_BIAS,
    REASSOC,
    add_group,
    add_group_int,
    add_group_numpy,
    conv_tile_rows,
    f32_tile_rows,
    finish_rows,
    finish_rows_numpy,
    plain_int8_sums,
    quantize_rows,
    scale_rows_i8,
    scatter_f32,
    scatter_i8,
    tile_buffer,
    tile_matmul_act,
    tile_matmul_blocked,
    tile_product_f32,
    tile_product_i8,
    tile_rows,
)

BLOCK = 64
ARRAYS = ("pos", "neg")
BITS_PER_CODE = 2.0

_WEIGHTS = (np.uint64(1) << np.arange(64, dtype=np.uint64)).astype(np.uint64)


def encode(codes: np.ndarray) -> dict:
    """Pack int8 codes ``(M, L)``, ``L % 64 == 0``, into ``pos``/``neg`` uint64 ``(M, L/64)``."""
    m, length = codes.shape
    planes = {}
    for name, value in (("pos", 1), ("neg", -1)):
        bits = (codes == value).reshape(m, length // BLOCK, BLOCK).astype(np.uint64)
        # word = sum_i bit_i * 2^i (bits are disjoint, so the sum is an OR)
        planes[name] = np.ascontiguousarray((bits * _WEIGHTS).sum(axis=2, dtype=np.uint64))
    return planes


def decode(arrays: dict) -> np.ndarray:
    """Inverse of :func:`encode`: int8 codes ``(M, L)``; raises if a bit is set in both planes."""
    pos, neg = arrays["pos"], arrays["neg"]
    if np.any(pos & neg):
        raise ValueError("bitplanes: a weight is marked both +1 and -1 (corrupt packed data)")
    m, words = pos.shape
    shifts = np.arange(64, dtype=np.uint64)
    p = (pos[:, :, None] >> shifts) & np.uint64(1)
    n = (neg[:, :, None] >> shifts) & np.uint64(1)
    return (p.astype(np.int8) - n.astype(np.int8)).reshape(m, words * 64)


# ---------------------------------------------------------------------------------------------
# GEMV kernels: straight from the bit planes
# ---------------------------------------------------------------------------------------------
STREAMS = 1
"""The activations stay in their padded order (bit ``l % 64`` of word ``l // 64`` is weight l)."""


def stream_index(l):
    """``(0, l)``: one stream, in column order."""
    return 0 * l, l


@njit(nogil=True, fastmath=REASSOC)
def _signed_sums_f32(pos, neg, w0, words, x, r0, r1, out):
    """``out[r - r0] = D = sum ([pos] - [neg]) x`` over words ``w0 .. w0 + words - 1`` (x float32,
    the group's activations)."""
    one = np.uint64(1)
    for r in range(r0, r1):
        acc = np.float32(0.0)
        for w in range(words):
            p = pos[r, w0 + w]
            q = neg[r, w0 + w]
            for j in range(64):
                bit = np.uint64(j)
                acc += (np.float32((p >> bit) & one) - np.float32((q >> bit) & one)) * x[64 * w + j]
        out[r - r0] = acc


@njit(nogil=True, fastmath=REASSOC)
def _zero_sums_f32(pos, neg, w0, words, x, r0, r1, out):
    """``out[r - r0] = Z = sum_{c = 0} x``: the bits set in neither plane."""
    one = np.uint64(1)
    for r in range(r0, r1):
        acc = np.float32(0.0)
        for w in range(words):
            free = ~(pos[r, w0 + w] | neg[r, w0 + w])
            for j in range(64):
                acc += np.float32((free >> np.uint64(j)) & one) * x[64 * w + j]
        out[r - r0] = acc


@njit(nogil=True)
def _signed_sums_i8(pos, neg, w0, words, x, r0, r1, out):
    """:func:`_signed_sums_f32` for int8 activations (exact, int64 ``out``)."""
    one = np.uint64(1)
    for r in range(r0, r1):
        total = np.int64(0)
        for w in range(words):
            p = pos[r, w0 + w]
            q = neg[r, w0 + w]
            acc = 0
            for j in range(64):
                bit = np.uint64(j)
                acc += (np.int32((p >> bit) & one) - np.int32((q >> bit) & one)) * np.int32(
                    x[64 * w + j]
                )
            total += np.int32(acc)
        out[r - r0] = total


@njit(nogil=True)
def _zero_sums_i8(pos, neg, w0, words, x, r0, r1, out):
    """:func:`_zero_sums_f32` for int8 activations (exact, int64 ``out``)."""
    one = np.uint64(1)
    for r in range(r0, r1):
        total = np.int64(0)
        for w in range(words):
            free = ~(pos[r, w0 + w] | neg[r, w0 + w])
            acc = 0
            for j in range(64):
                acc += np.int32((free >> np.uint64(j)) & one) * np.int32(x[64 * w + j])
            total += np.int32(acc)
        out[r - r0] = total


@njit(nogil=True)
def dot_f32(pos, neg, xs, xsum, sc, zeros, asym, has_offset, bias, has_bias, relu, r0, r1, y):
    """``y[n, r]`` for rows ``r0 <= r < r1`` from the two planes, float32 activations
    (``xs`` float32 (N, 1, L), other arguments as :func:`ternref.packed.i2.dot_f32`).

    ``D = sum c x = sum ([pos] - [neg]) x`` is one reduction; the group epilogue takes
    ``Q = D + X``; ``zeros`` (:func:`zeros_f32`) holds ``Z`` for asymmetric scales.
    """
    n_groups = sc.shape[2]
    seg = pos.shape[1] // n_groups  # words per group
    sums = np.empty(r1 - r0, np.float64)  # D + X in float64 (X is a float64 sum)
    total = np.empty(r1 - r0, np.float64)
    for n in range(xs.shape[0]):
        total[:] = 0.0
        for g in range(n_groups):
            w0 = g * seg
            _signed_sums_f32(pos, neg, w0, seg, xs[n, 0, 64 * w0 : 64 * (w0 + seg)], r0, r1, sums)
            sums += xsum[n, g]  # Q = D + X
            add_group(total, sums, zeros, xsum, n, g, sc, r0, asym, has_offset)
        finish_rows(total, 1.0, bias, has_bias, relu, r0, y[n])


@njit(nogil=True)
def zeros_f32(pos, neg, xs, r0, r1, zeros):
    """``zeros[n, r, g] = sum_{c = 0} x`` for rows ``r0 .. r1 - 1`` (asymmetric scales)."""
    n_groups = zeros.shape[2]
    seg = pos.shape[1] // n_groups
    sums = np.empty(r1 - r0, np.float32)
    for n in range(xs.shape[0]):
        for g in range(n_groups):
            w0 = g * seg
            _zero_sums_f32(pos, neg, w0, seg, xs[n, 0, 64 * w0 : 64 * (w0 + seg)], r0, r1, sums)
            zeros[n, r0:r1, g] = sums


@njit(nogil=True)
def dot_i8(pos, neg, xs, xsum, inv_s, sc, zeros, asym, has_offset, bias, has_bias, relu, r0, r1, y):
    """:func:`dot_f32` for int8 activations (exact integer sums, float64 epilogue)."""
    n_groups = sc.shape[2]
    seg = pos.shape[1] // n_groups
    sums = np.empty(r1 - r0, np.int64)
    total = np.empty(r1 - r0, np.float64)
    for n in range(xs.shape[0]):
        total[:] = 0.0
        for g in range(n_groups):
            w0 = g * seg
            _signed_sums_i8(pos, neg, w0, seg, xs[n, 0, 64 * w0 : 64 * (w0 + seg)], r0, r1, sums)
            sums += xsum[n, g]  # Q = D + X
            add_group_int(total, sums, zeros, xsum, n, g, sc, r0, asym, has_offset)
        finish_rows(total, inv_s[n], bias, has_bias, relu, r0, y[n])


@njit(nogil=True)
def zeros_i8(pos, neg, xs, r0, r1, zeros):
    """:func:`zeros_f32` for int8 activations (exact sums)."""
    n_groups = zeros.shape[2]
    seg = pos.shape[1] // n_groups
    sums = np.empty(r1 - r0, np.int64)
    for n in range(xs.shape[0]):
        for g in range(n_groups):
            w0 = g * seg
            _zero_sums_i8(pos, neg, w0, seg, xs[n, 0, 64 * w0 : 64 * (w0 + seg)], r0, r1, sums)
            zeros[n, r0:r1, g] = sums


@njit(nogil=True)
def gemv_f32(pos, neg, x2d, dest, group, sc, asym, has_offset, bias, has_bias, relu, y):
    """A whole small GEMV on the calling thread in one call: lay ``x2d`` out as streams
    (:func:`~ternref.packed._gemm.scatter_f32`, with ``dest``/``group`` from the layout of
    :mod:`ternref.packed.kernels`), then :func:`zeros_f32` (asymmetric scales) and :func:`dot_f32`.
    Saves the separate calls' overhead where the product itself takes microseconds."""
    n = x2d.shape[0]
    m = sc.shape[1]
    n_groups = sc.shape[2]
    width = pos.shape[1] * 64
    xs = np.empty((n, STREAMS, width // STREAMS), np.float32)
    xsum = np.empty((n, n_groups), np.float64)
    scatter_f32(x2d, dest, group, xs.reshape(n, width), xsum)
    zeros = np.zeros((n, m, n_groups) if asym else (0, 0, 0), np.float32)
    if asym:
        zeros_f32(pos, neg, xs, 0, m, zeros)
    dot_f32(pos, neg, xs, xsum, sc, zeros, asym, has_offset, bias, has_bias, relu, 0, m, y)


@njit(nogil=True)
def gemv_i8(pos, neg, x2d, dest, group, sc, asym, has_offset, bias, has_bias, relu, y):
    """A whole small GEMV on the calling thread in one call: lay ``x2d`` out as streams
    (:func:`~ternref.packed._gemm.scatter_i8`, with ``dest``/``group`` from the layout of
    :mod:`ternref.packed.kernels`), then :func:`zeros_i8` (asymmetric scales) and :func:`dot_i8`.
    Saves the separate calls' overhead where the product itself takes microseconds."""
    n = x2d.shape[0]
    m = sc.shape[1]
    n_groups = sc.shape[2]
    width = pos.shape[1] * 64
    xs = np.empty((n, STREAMS, width // STREAMS), np.int8)
    xsum = np.empty((n, n_groups), np.int64)
    inv_s = np.empty(n, np.float64)
    scatter_i8(x2d, dest, group, xs.reshape(n, width), xsum, inv_s)
    zeros = np.zeros((n, m, n_groups) if asym else (0, 0, 0), np.int32)
    if asym:
        zeros_i8(pos, neg, xs, 0, m, zeros)
    dot_i8(pos, neg, xs, xsum, inv_s, sc, zeros, asym, has_offset, bias, has_bias, relu, 0, m, y)


def _bits(words):
    """uint64 words (...) -> int32 bits (..., 64), LSB first."""
    return ((words[..., None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).astype(np.int32)


def dot_f32_numpy(pos, neg, xs, xsum, sc, zeros, asym, has_offset, bias, has_bias, relu, r0, r1, y):
    """NumPy twin of :func:`dot_f32`."""
    b = bias[r0:r1] if has_bias else None
    _dot_numpy(pos, neg, xs.astype(np.float64), xsum, sc, zeros, asym, has_offset, b, relu, r0,
               r1, y, None)  # fmt: skip


def dot_i8_numpy(
    pos, neg, xs, xsum, inv_s, sc, zeros, asym, has_offset, bias, has_bias, relu, r0, r1, y
):
    """NumPy twin of :func:`dot_i8` (int64 arithmetic: the same exact sums)."""
    b = bias[r0:r1] if has_bias else None
    _dot_numpy(pos, neg, xs.astype(np.int64), xsum, sc, zeros, asym, has_offset, b, relu, r0,
               r1, y, inv_s)  # fmt: skip


def zeros_f32_numpy(pos, neg, xs, r0, r1, zeros):
    """NumPy twin of :func:`zeros_f32` (and, with integer ``xs``, of :func:`zeros_i8`)."""
    n_groups = zeros.shape[2]
    seg = pos.shape[1] // n_groups
    wide = np.int64 if np.issubdtype(xs.dtype, np.integer) else np.float64
    for n in range(xs.shape[0]):
        for g in range(n_groups):
            words = slice(g * seg, (g + 1) * seg)
            x = xs[n, 0, 64 * g * seg : 64 * (g + 1) * seg].astype(wide)
            free = _bits(~(pos[r0:r1, words] | neg[r0:r1, words])).reshape(r1 - r0, -1)
            zeros[n, r0:r1, g] = free.astype(wide) @ x


zeros_i8_numpy = zeros_f32_numpy


def _dot_numpy(pos, neg, xs, xsum, sc, zeros, asym, has_offset, bias, relu, r0, r1, y, inv_s):
    n_groups = sc.shape[2]
    seg = pos.shape[1] // n_groups
    for n in range(xs.shape[0]):
        yr = np.zeros(r1 - r0, np.float64)
        for g in range(n_groups):
            words = slice(g * seg, (g + 1) * seg)
            x = xs[n, 0, 64 * g * seg : 64 * (g + 1) * seg]
            signed = _bits(pos[r0:r1, words]) - _bits(neg[r0:r1, words])  # c in {-1, 0, 1}
            d_sum = signed.reshape(r1 - r0, -1).astype(x.dtype) @ x
            x_sum = xsum[n, g]
            z_sum = zeros[n, r0:r1, g].astype(d_sum.dtype) if asym else 0
            add_group_numpy(yr, d_sum + x_sum, z_sum, x_sum, sc[:, r0:r1, g], asym, has_offset)
        finish_rows_numpy(yr, 1.0 if inv_s is None else inv_s[n], bias, relu, y[n, r0:r1])


@njit(nogil=True)
def dequant_row(pos, neg, r, lut, out_row):
    """Write row ``r`` as float32 values into ``out_row`` (L,); ``lut`` (M, G, 3) holds the
    values of codes -1, 0, +1 (``offset - alpha_neg``, ``offset``, ``offset + alpha_pos``)."""
    length = out_row.shape[0]
    n_groups = lut.shape[1]
    seg = length // n_groups
    one = np.uint64(1)
    for b in range(length // BLOCK):
        g = b * BLOCK // seg
        v0 = lut[r, g, 0]
        v1 = lut[r, g, 1]
        v2 = lut[r, g, 2]
        wp = pos[r, b]
        wn = neg[r, b]
        for k in range(64):
            sh = np.uint64(k)
            p = np.int32((wp >> sh) & one)
            q = np.int32((wn >> sh) & one)
            out_row[b * BLOCK + k] = v2 if p == 1 else (v0 if q == 1 else v1)


@njit(nogil=True)
def dequant_panels(pos, neg, m, lut, wt):
    """Rows ``0 .. m - 1`` decoded to float32 as panels of 32 rows (``wt[p L + k, j]`` = value
    of weight ``(32 p + j, k)``, zero past ``m``; see :func:`ternref.packed.i2.dequant_panels`):
    here the rows decoded by :func:`dequant_row`, then transposed."""
    length = pos.shape[1] * BLOCK
    rows = np.empty((m, length), np.float32)
    for r in range(m):
        dequant_row(pos, neg, r, lut, rows[r])
    fill_panels(rows, wt)


@njit(nogil=True)
def gemm_f32(pos, neg, xp, xt, lut, n_cols, bias, has_bias, relu, r0, r1, n0, n1, y):
    """As :func:`ternref.packed.i2.gemm_f32`, with this format's :func:`dequant_row`."""
    length = pos.shape[1] * BLOCK  # xp may stop at the last real column (one scale group)
    rows = f32_tile_rows(r1 - r0, length * 4)
    buf = tile_buffer(rows, length)
    for t0 in range(r0, r1, rows):
        nr = min(rows, r1 - t0)
        for i in range(nr):
            dequant_row(pos, neg, t0 + i, lut, buf[i])
        tile_product_f32(xp, xt, buf, nr, y, t0, n0, n1, n_cols, bias, has_bias, relu)


@njit(nogil=True)
def gemm_i8(
    pos, neg, xq, xsum, inv_s, sc, code_lut, abs_lut, asym, has_offset, n_cols, r0, r1, n0, n1, y
):
    """As :func:`ternref.packed.i2.gemm_i8`, with this format's :func:`dequant_row`."""
    length = xq.shape[1]
    rows = tile_rows(r1 - r0, 4 * length)
    buf = np.empty((rows, length), np.float32)
    abs_buf = np.empty((rows if asym else 0, length), np.float32)
    plain = plain_int8_sums(sc.shape[2], length, asym, has_offset)
    for t0 in range(r0, r1, rows):
        nr = min(rows, r1 - t0)
        for i in range(nr):
            dequant_row(pos, neg, t0 + i, code_lut, buf[i])
            if asym:
                dequant_row(pos, neg, t0 + i, abs_lut, abs_buf[i])
        if plain:  # exact sums straight into y, scaled once below
            tile_matmul_blocked(xq, buf, nr, y, t0, n0, n1, n_cols, NO_BIAS, False, False)
        else:
            tile_product_i8(xq, buf, abs_buf, nr, t0, n0, n1, xsum, inv_s, sc, asym, has_offset, y)
    if plain:
        scale_rows_i8(y, sc, inv_s, r0, r1, n0, n1)


@njit(nogil=True)
def conv_f32(pos, neg, lut, xflat, src, geo, bias, has_bias, relu, p0, p1, y):
    """Output positions ``p0 .. p1 - 1`` of the convolution (float32 activations), without an
    im2col matrix: gather blocks of receptive fields, multiply them by decoded tiles of weight
    rows (:func:`dequant_row`, :func:`~ternref.packed._gemm.tile_matmul_act`), store NCHW
    (:mod:`ternref.packed._conv`)."""
    length = src.shape[0]
    n_cols = product_columns(geo, length)  # the real columns of one-group weights
    m = lut.shape[0]
    rows = conv_tile_rows(m, 4 * length)
    buf = np.empty((rows, length), np.float32)
    if rows >= m:  # one tile holds every row: decode it once
        for i in range(m):
            dequant_row(pos, neg, i, lut, buf[i])
    block = np.empty((X_BLOCK, length), np.float32)
    out = np.empty((X_BLOCK, m), np.float32)
    for q0 in range(p0, p1, X_BLOCK):
        nq = min(X_BLOCK, p1 - q0)
        gather_f32(xflat, src, geo, q0, nq, block)
        for t0 in range(0, m, rows):
            nr = min(rows, m - t0)
            if rows < m:
                for i in range(nr):
                    dequant_row(pos, neg, t0 + i, lut, buf[i])
            tile_matmul_act(block[:nq], buf, nr, out, t0, n_cols, NO_BIAS, False, False)
        store_nchw(out, nq, q0, geo, bias, has_bias, relu, y)


@njit(nogil=True)
def conv_i8(
    pos,
    neg,
    sc,
    code_lut,
    abs_lut,
    asym,
    has_offset,
    xflat,
    src,
    geo,
    bias,
    has_bias,
    relu,
    p0,
    p1,
    y,
):
    """:func:`conv_f32` with int8 activations: each receptive field is quantized on its own
    (:func:`~ternref.packed._gemm.quantize_rows`), the tiles hold signed codes, and
    :func:`~ternref.packed._gemm.tile_product_i8` forms the exact sums and the epilogue (in the
    common case, :func:`~ternref.packed._gemm.plain_int8_sums`, the float32 tile product and
    one :func:`~ternref.packed._gemm.scale_rows_i8` pass per block)."""
    length = src.shape[0]
    n_cols = product_columns(geo, length)  # the real columns of one-group weights
    m = sc.shape[1]
    n_groups = sc.shape[2]
    seg = length // n_groups
    plain = plain_int8_sums(n_groups, length, asym, has_offset)
    rows = conv_tile_rows(m, 4 * length)
    buf = np.empty((rows, length), np.float32)
    abs_buf = np.empty((rows if asym else 0, length), np.float32)
    block = np.empty((X_BLOCK, length), np.float32)
    xsum = np.empty((X_BLOCK, n_groups), np.int64)
    inv_s = np.empty(X_BLOCK, np.float64)
    out = np.empty((X_BLOCK, m), np.float32)
    for q0 in range(p0, p1, X_BLOCK):
        nq = min(X_BLOCK, p1 - q0)
        gather_f32(xflat, src, geo, q0, nq, block)
        quantize_rows(block, nq, seg, xsum, inv_s)
        for t0 in range(0, m, rows):
            nr = min(rows, m - t0)
            if rows < m or q0 == p0:
                for i in range(nr):
                    dequant_row(pos, neg, t0 + i, code_lut, buf[i])
                    if asym:
                        dequant_row(pos, neg, t0 + i, abs_lut, abs_buf[i])
            if plain:  # exact sums straight into out, scaled once below
                tile_matmul_act(block[:nq], buf, nr, out[:nq], t0, n_cols, NO_BIAS, False, False)
            else:
                tile_product_i8(
                    block[:nq], buf, abs_buf, nr, t0, 0, nq, xsum, inv_s, sc, asym, has_offset, out
                )
        if plain:
            scale_rows_i8(out, sc, inv_s, 0, m, 0, nq)
        store_nchw(out, nq, q0, geo, bias, has_bias, relu, y)


def dequant_tile_numpy(pos, neg, r0, lut, out):
    """NumPy twin of :func:`dequant_row` for the rows ``r0 .. r0 + len(out) - 1``."""
    n_tile, length = out.shape
    n_groups = lut.shape[1]
    seg = length // n_groups
    rows = np.arange(r0, r0 + n_tile)
    for b in range(length // BLOCK):
        g = b * BLOCK // seg
        c = _bits(pos[rows, b]) - _bits(neg[rows, b]) + 1  # code + 1 in {0, 1, 2}
        out[:, b * BLOCK : b * BLOCK + BLOCK] = np.take_along_axis(
            lut[rows, g, :], c.astype(np.intp), 1
        )
