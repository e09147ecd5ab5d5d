"""Shared pieces of the packed kernels: group epilogues and the tile products of the GEMM.

Group epilogue
--------------
Every format decodes a code ``c`` in {-1, 0, +1} as ``q = c + 1`` (or, for ``bitplanes``, as
the two bits ``[c = +1]``, ``[c = -1]``). For one output row ``r`` and one scale group ``g`` a
GEMV kernel forms ``Q = sum q x`` and, when the scales are asymmetric, ``Z = sum [c = 0] x``;
with ``X = sum x`` over the group::

    D = sum c x   = Q - X                         (the signed sum)
    S = sum |c| x = X - Z
    P = sum_{c=+1} x = (S + D) / 2,   N = sum_{c=-1} x = (S - D) / 2

and the group contributes ``alpha_pos D`` (symmetric) or ``alpha_pos P - alpha_neg N``
(asymmetric), then ``offset X`` is added when there is an offset (:func:`add_group`; the
int8 twins and tests add the terms in this order, so the float64 totals agree bit for bit).
With int8 activations ``Q``, ``Z`` and ``X`` are exact integers and ``S + D = 2 P`` is even,
so ``P`` and ``N`` are exact too (:func:`group_value_int`).

GEMM tiles
----------
A format's ``gemm_f32`` decodes :func:`tile_rows` weight rows at a time into a float32 buffer
of their *values* (scales and offset applied) and calls :func:`tile_matmul_blocked`; ``gemm_i8``
decodes rows into their signed codes (and ``|c|``) and calls :func:`tile_product_i8`. Only one
tile per thread is ever decoded, so the weights stay packed in memory.

:func:`tile_matmul` is register-blocked 4 x 4 (four rows of ``X`` times four weight rows,
sixteen scalar accumulators) and compiled with ``fastmath={"reassoc", "contract"}``
(:data:`REASSOC`): reassociation lets LLVM vectorize the reductions over ``k``, contraction fuses
multiply-adds. The float GEMV kernels use the same flags. The summation order is then
unspecified, exactly as in BLAS, which is what the NumPy twins use (``X @ tile.T``); kernel and
twin agree within the K-derived float tolerance, not bit for bit.

:func:`tile_product_i8` multiplies int8 activations by codes in float32, which is exact here
(every partial sum is an integer below 2^24, :data:`EXACT_COLUMNS`), so the int8 paths agree
with their twins bit for bit; the GEMV kernels (one row of activations) use integer
instructions instead (``vpmaddwd`` / ``vpdpwssd``, or for ``i2`` ``vpdpbusd`` on AVX-512 VNNI
and ``vpmaddubsw`` on AVX2, where the stream kernel also takes the int8 GEMM; see
:func:`ternref.packed.i2.dot_i8`).
"""

from __future__ import annotations

import numpy as np

from ternref._jit import njit
from ternref.packed._f32_block import AVAILABLE as F32_BLOCK
from ternref.packed._f32_block import COLS as F32_COLS
from ternref.packed._f32_block import ROWS as F32_ROWS
from ternref.packed._f32_block import outer_block_store

INT8_MAX = 127
"""Activations are clipped to [-127, 127] (symmetric: negating a quantized x never overflows)."""

REASSOC = {"reassoc", "contract"}
"""The fastmath flags of the float kernels (vectorizable reductions, fused multiply-adds)."""

TILE_BYTES = 1 << 17
"""Target size of one decoded tile (128 KiB: fits the L2 cache beside a block of ``X``)."""

MIN_TILE_ROWS = 4
TILE_ROWS = 16
"""At most this many weight rows per decoded tile (fewer when rows are long)."""

X_BLOCK = 64
"""Rows of ``X`` multiplied by one tile at a time (a block stays in L1/L2 across the tile)."""


@njit(nogil=True)
def tile_rows(n_rows, bytes_per_row):
    """Weight rows per decoded tile: :data:`TILE_ROWS`, or fewer (a multiple of 4, at least 4)
    when that many rows would not fit in :data:`TILE_BYTES`."""
    rows = max(MIN_TILE_ROWS, min(TILE_ROWS, (TILE_BYTES // max(bytes_per_row, 1)) // 4 * 4))
    return min(rows, max(n_rows, 1))


WHOLE_WEIGHT_BYTES = 1 << 20
"""A convolution whose decoded weight fits in this many bytes decodes it once per call chunk
(its thousands of receptive fields are then multiplied by the same buffer) instead of one tile
at a time per block of receptive fields."""


@njit(nogil=True)
def conv_tile_rows(n_rows, bytes_per_row):
    """Rows per decoded tile of a convolution: all of them when they fit in
    :data:`WHOLE_WEIGHT_BYTES`, else :func:`tile_rows`."""
    if n_rows * bytes_per_row <= WHOLE_WEIGHT_BYTES:
        return max(n_rows, 1)
    return tile_rows(n_rows, bytes_per_row)


# ------------------------------------------------------------------------ activation layout
@njit(nogil=True)
def scatter_f32(x2d, dest, group, out, xsum):
    """``out[n, dest[k]] = x[n, k]`` (float32; ``out`` zero elsewhere) and the group sums."""
    out[:] = 0
    xsum[:] = 0
    for n in range(x2d.shape[0]):
        for k in range(x2d.shape[1]):
            v = np.float32(x2d[n, k])
            out[n, dest[k]] = v
            xsum[n, group[k]] += np.float64(v)


@njit(nogil=True)
def scatter_i8(x2d, dest, group, out, xsum, inv_s):
    """:func:`ternref.packed.quantize_activations` per row, scattered like :func:`scatter_f32`
    (``out`` int8, or float32 holding the same integers; exact int64 group sums;
    ``inv_s = max|x| / 127``)."""
    out[:] = 0
    xsum[:] = 0
    for n in range(x2d.shape[0]):
        amax = np.float32(0.0)
        for k in range(x2d.shape[1]):
            amax = max(amax, abs(np.float32(x2d[n, k])))
        s = np.float32(INT8_MAX) / amax if amax > 0 else np.float32(0.0)
        inv_s[n] = np.float64(amax) / INT8_MAX
        for k in range(x2d.shape[1]):
            q = min(max(np.rint(np.float32(x2d[n, k]) * s), np.float32(-INT8_MAX)), INT8_MAX)
            out[n, dest[k]] = q
            xsum[n, group[k]] += np.int64(q)


def layout_runs(dest, group) -> np.ndarray:
    """The maximal runs of a scatter layout: rows ``(k0, dest[k0], length, group[k0])`` of int64
    for every stretch of columns ``k0 .. k0 + length - 1`` that land on consecutive
    destinations in one scale group (``i2``'s streams take 32 consecutive columns at a time)."""
    dest, group = np.asarray(dest, np.int64), np.asarray(group, np.int64)
    breaks = np.flatnonzero((np.diff(dest) != 1) | (np.diff(group) != 0)) + 1
    starts = np.concatenate([[0], breaks]).astype(np.int64)
    ends = np.concatenate([breaks, [dest.shape[0]]]).astype(np.int64)
    return np.ascontiguousarray(np.stack([starts, dest[starts], ends - starts, group[starts]], 1))


@njit(nogil=True)
def scatter_i8_runs(x2d, runs, out, xsum, inv_s):
    """:func:`scatter_i8` over the runs of :func:`layout_runs`: the same values, sums and
    scales. Each row is quantized in one contiguous float32 loop, as :func:`quantize_rows` does
    (which LLVM vectorizes, where the column-by-column scatter cannot), then converted to int8
    run by run, and the exact integer sums taken with :func:`segment_sum`. (Converting and
    summing inside the quantizing loop kept it scalar: 3x slower on the MLP's 359 x 256 batch,
    measured 2026-12-02.) ``x2d`` must be float32 with contiguous rows (``max |x|`` is an
    integer reduction over its bits, :func:`absmax_bits`)."""
    out[:] = 0
    xsum[:] = 0
    cell = np.empty(1, np.int32)  # reinterprets the bits of max |x| as a float32
    as_float = cell.view(np.float32)
    quantized = np.empty(x2d.shape[1], np.float32)  # exact integers, |q| <= 127
    one_group = xsum.shape[1] == 1
    top = np.float32(INT8_MAX)
    for n in range(x2d.shape[0]):
        row = x2d[n]
        cell[0] = absmax_bits(row)
        amax = as_float[0]
        s = top / amax if amax > 0 else np.float32(0.0)
        inv_s[n] = np.float64(amax) / INT8_MAX
        for k in range(row.shape[0]):
            quantized[k] = min(max(np.rint(row[k] * s), -top), top)
        out_row = out[n]
        for r in range(runs.shape[0]):
            k0, d0, length = runs[r, 0], runs[r, 1], runs[r, 2]
            dst = out_row[d0 : d0 + length]
            src = quantized[k0 : k0 + length]
            for j in range(length):
                dst[j] = np.int8(np.int32(src[j]))
            if not one_group:
                xsum[n, runs[r, 3]] += exact_sum(quantized, k0, k0 + length)
        if one_group:
            xsum[n, 0] = exact_sum(quantized, 0, row.shape[0])


# ------------------------------------------------------------------------------ epilogues
@njit(nogil=True)
def group_value(q_sum, z_sum, x_sum, sc, r, g, asym):
    """Scaled code sum of group ``g`` of row ``r`` from ``Q``, ``Z``, ``X`` (float64; module
    doc), without the offset term (callers add ``offset X`` after it, in that order)."""
    d = q_sum - x_sum
    if asym:
        s = x_sum - z_sum
        return sc[0, r, g] * (0.5 * (s + d)) - sc[1, r, g] * (0.5 * (s - d))
    return sc[0, r, g] * d


@njit(nogil=True)
def group_value_int(q_sum, z_sum, x_sum, sc, r, g, asym):
    """:func:`group_value` from exact integer sums (``P``, ``N`` formed in int64)."""
    d = np.int64(q_sum) - x_sum
    if asym:
        s = x_sum - np.int64(z_sum)
        return sc[0, r, g] * np.float64((s + d) // 2) - sc[1, r, g] * np.float64((s - d) // 2)
    return sc[0, r, g] * np.float64(d)


def add_group_numpy(total, q_sum, z_sum, x_sum, sc_rows, asym, has_offset):
    """NumPy twin of :func:`add_group` / :func:`add_group_int` for a column of rows (in place);
    ``sc_rows`` is ``sc[:, rows, g]`` (3, R). Integer sums stay integers until the scales."""
    d = q_sum - x_sum
    if asym:
        s = x_sum - z_sum
        if np.issubdtype(np.asarray(d).dtype, np.integer):
            pos, neg = (s + d) // 2, (s - d) // 2
        else:
            pos, neg = 0.5 * (s + d), 0.5 * (s - d)
        total += sc_rows[0] * pos - sc_rows[1] * neg
    else:
        total += sc_rows[0] * d
    if has_offset:
        total += sc_rows[2] * np.float64(x_sum)


@njit(nogil=True)
def add_group(total, sums, zeros, xsum, n, g, sc, r0, asym, has_offset):
    """``total[i] += group_value(Q = sums[i], Z = zeros[n, r0 + i, g], X = xsum[n, g])`` for the
    rows ``r0 .. r0 + len(total) - 1`` (float sums)."""
    x_sum = xsum[n, g]
    for i in range(total.shape[0]):
        z_sum = np.float64(zeros[n, r0 + i, g]) if asym else 0.0
        total[i] += group_value(np.float64(sums[i]), z_sum, x_sum, sc, r0 + i, g, asym)
        if has_offset:
            total[i] += sc[2, r0 + i, g] * x_sum


@njit(nogil=True)
def add_group_int(total, sums, zeros, xsum, n, g, sc, r0, asym, has_offset):
    """:func:`add_group` from exact integer sums (:func:`group_value_int`)."""
    x_sum = xsum[n, g]
    for i in range(total.shape[0]):
        z_sum = np.int64(zeros[n, r0 + i, g]) if asym else np.int64(0)
        total[i] += group_value_int(sums[i], z_sum, x_sum, sc, r0 + i, g, asym)
        if has_offset:
            total[i] += sc[2, r0 + i, g] * np.float64(x_sum)


@njit(nogil=True)
def finish_rows(total, scale, bias, has_bias, relu, r0, y_row):
    """``y_row[r0 + i] = act(float32(total[i] * scale) + bias[r0 + i])``: the int8 rescale (1.0
    for float activations), the bias in float32, then ReLU when ``relu`` (:func:`_bias_relu`)."""
    out = y_row[r0 : r0 + total.shape[0]]
    for i in range(out.shape[0]):
        out[i] = np.float32(total[i] * scale)
    _bias_relu(out, bias, r0, has_bias, relu)


@njit(nogil=True)
def _bias_relu(out, bias, r0, has_bias, relu):
    """``out += bias[r0 : r0 + len(out)]`` (float32) when ``has_bias``, then ReLU in place when
    ``relu``, each a loop
    of its own over slices, which LLVM vectorizes. Two things kept the epilogues below scalar
    (measured on the AMD EPYC Zen 5 VM, 2026-12-03, 359 rows of 256 outputs): the two flags
    inside the loop that computes the values (LLVM does not unswitch it), and indexing with a
    run-time offset, ``y_row[r0 + i]`` (Numba's negative-index wraparound on every access):
    0.124 ms that way, 0.045 ms over slices with the flags outside.

    Bias and ReLU together are one loop: a ReLU pass over values it has just loaded,
    ``out[i] = 0 if out[i] < 0 else out[i]``, is a store only where the value is negative, and
    LLVM vectorizes that with a masked store (``vmaskmovps``), which AMD's Zen cores run slowly:
    on the Zen 2 VM (2026-12-08), 359 rows of 256 outputs, 0.078 ms for the two passes against
    0.021 ms for the fused loop, whose store is unconditional (the value is computed). The ReLU
    alone (no bias) keeps the masked store."""
    if has_bias and relu:
        b = bias[r0 : r0 + out.shape[0]]
        for i in range(out.shape[0]):
            v = out[i] + b[i]
            out[i] = np.float32(0.0) if v < 0 else v
        return
    if has_bias:
        b = bias[r0 : r0 + out.shape[0]]
        for i in range(out.shape[0]):
            out[i] += b[i]
    if relu:
        for i in range(out.shape[0]):
            v = out[i]
            out[i] = np.float32(0.0) if v < 0 else v


@njit(nogil=True)
def finish_plain_i8(sums, x_sum, alpha, scale, bias, has_bias, relu, r0, y_row):
    """:func:`add_group_int` then :func:`finish_rows` for the common case (one group,
    symmetric scales, no offset):
    ``y_row[r0 + i] = act(float32((0.0 + alpha[i] * D) * scale) + b)`` with
    ``D = sums[i] - x_sum``, the same float64 operations in the same order (the running total
    starts at 0.0; the ``0.0 +`` stays, it turns a ``-0.0`` into ``+0.0`` as that total does,
    ``tests/packed/test_epilogues.py``), without the per-row branches and 3-D indexing, so
    LLVM vectorizes it; bias and ReLU follow in :func:`_bias_relu` (the same float32
    operations). ``alpha`` is ``sc[0, r0:r1, 0]`` copied into a contiguous array: passed as
    that strided view (Numba's layout ``A``), the loop stays scalar (359 rows of 256 outputs,
    bias and ReLU flags known at compile time: 0.062 ms against 0.014 ms contiguous).
    ``D`` is computed as ``float64(sums[i]) - float64(x_sum)``, which is the same double as
    ``float64(sums[i] - x_sum)``: both operands and their difference are integers below 2^53,
    exact in float64. The int64 form needs an int64 -> float64 conversion, which AVX2 does not
    have in vector form (AVX-512DQ's ``vcvtqq2pd``): on the Zen 2 VM (2026-12-08) the loop stayed
    scalar, 0.13 ms for those 359 rows against 0.03 ms this way.
    """
    out = y_row[r0 : r0 + sums.shape[0]]
    x_sum_f = np.float64(x_sum)
    for i in range(out.shape[0]):
        out[i] = np.float32((0.0 + alpha[i] * (np.float64(sums[i]) - x_sum_f)) * scale)
    _bias_relu(out, bias, r0, has_bias, relu)


@njit(nogil=True)
def finish_plain_f32(sums, x_sum, alpha, bias, has_bias, relu, r0, y_row):
    """:func:`add_group` then :func:`finish_rows` (scale 1.0) for the common case of the
    float32 products (one group, symmetric scales, no offset):
    ``y_row[r0 + i] = act(float32(0.0 + alpha[i] * (float64(sums[i]) - x_sum)) + b)``, the same
    float64 operations in the same order (``total * 1.0`` is ``total``; the ``0.0 +`` as in
    :func:`finish_plain_i8`), vectorized in the same way, with the same contiguous ``alpha``."""
    out = y_row[r0 : r0 + sums.shape[0]]
    for i in range(out.shape[0]):
        out[i] = np.float32(0.0 + alpha[i] * (np.float64(sums[i]) - x_sum))
    _bias_relu(out, bias, r0, has_bias, relu)


def finish_rows_numpy(yr, scale, bias, relu, y_row):
    """NumPy twin of :func:`finish_rows` for one activation row (``yr`` float64 (R,))."""
    v = (yr * scale).astype(np.float32)
    if bias is not None:
        v += bias
    if relu:
        np.maximum(v, 0, out=v)
    y_row[:] = v


# ------------------------------------------------------------------------------ float tiles
NO_BIAS = np.zeros(0, np.float32)
"""The ``bias`` argument of the kernels when there is none (``has_bias`` False)."""


@njit(nogil=True, fastmath=REASSOC)
def dense_small(x2d, w, bias, has_bias, relu, y):
    """``y = act(x2d @ w.T + bias)`` in float32 for a few rows: the full-precision ``Linear`` of
    a packed model at batch 1 (:class:`~ternref.packed.layers.PackedSequential`), where BLAS's
    call, then NumPy's bias add and ReLU, cost several times the arithmetic. Four weight rows
    share one pass over ``x`` (four accumulators; the k loop vectorizes). NumPy twin:
    :func:`dense_small_numpy`."""
    m, k = w.shape
    for n in range(x2d.shape[0]):
        x = x2d[n]
        for i0 in range(0, m, 4):
            wa = w[i0]
            wb = w[min(i0 + 1, m - 1)]  # rows past the end: computed twice, written once
            wc = w[min(i0 + 2, m - 1)]
            wd = w[min(i0 + 3, m - 1)]
            sa = sb = sc = sd = np.float32(0.0)
            for j in range(k):
                v = x[j]
                sa += v * wa[j]
                sb += v * wb[j]
                sc += v * wc[j]
                sd += v * wd[j]
            for i, acc in enumerate((sa, sb, sc, sd)):
                if i0 + i < m:
                    if has_bias:
                        acc += bias[i0 + i]
                    if relu and acc < 0:
                        acc = np.float32(0.0)
                    y[n, i0 + i] = acc


def dense_small_numpy(x2d, w, bias, has_bias, relu, y):
    """NumPy twin of :func:`dense_small`."""
    y[:] = x2d @ w.T
    if has_bias:
        y += bias
    if relu:
        np.maximum(y, 0, out=y)


@njit(nogil=True)
def tile_matmul(xp, buf, nr, y, r0):
    """``y[:, r0:r0+nr] = xp @ buf[:nr].T`` with 4 x 4 register blocking."""
    tile_matmul_act(xp, buf, nr, y, r0, xp.shape[1], NO_BIAS, False, False)


@njit(nogil=True, fastmath=REASSOC)
def tile_matmul_act(xp, buf, nr, y, r0, n_cols, bias, has_bias, relu):
    """``y[:, r0:r0+nr] = act(xp[:, :n_cols] @ buf[:nr, :n_cols].T + bias[r0:r0+nr])`` with 4 x 4
    register blocking.

    ``n_cols`` drops columns known to be zero in ``xp``: the padding at the end of a weight
    with one scale group (LeNet-5's second convolution has 800 real columns of 896 in ``i2``;
    the MLP's 256 of 320 in ``tq1``); it is passed, not sliced, because Numba types a 2-D column
    slice as non-contiguous and LLVM then keeps the loop scalar.

    The bias (when ``has_bias``) and the ReLU (when ``relu``) are applied to each 4 x 4 block
    of results as it is stored, so the float32 GEMM needs no pass of its own over ``y`` (the
    two NumPy passes took 0.042 ms of the MLP's 0.31 ms 256 x 256 product at batch 359,
    measured 2026-12-03, AMD EPYC Zen 5 VM). ``bias`` is indexed by the absolute output row;
    a NaN stays NaN under the ReLU, as with ``np.maximum``."""
    n_x = xp.shape[0]
    length = n_cols
    for n0 in range(0, n_x, 4):
        # rows past the end are clamped (computed twice, written once)
        xa = xp[n0, :length]
        xb = xp[min(n0 + 1, n_x - 1), :length]
        xc = xp[min(n0 + 2, n_x - 1), :length]
        xd = xp[min(n0 + 3, n_x - 1), :length]
        for i0 in range(0, nr, 4):
            wa = buf[i0, :length]
            wb = buf[min(i0 + 1, nr - 1), :length]
            wc = buf[min(i0 + 2, nr - 1), :length]
            wd = buf[min(i0 + 3, nr - 1), :length]
            aa = ab = ac = ad = np.float32(0.0)
            ba = bb = bc = bd = np.float32(0.0)
            ca = cb = cc = cd = np.float32(0.0)
            da = db = dc = dd = np.float32(0.0)
            for k in range(length):
                p = xa[k]
                q = xb[k]
                s = xc[k]
                t = xd[k]
                u = wa[k]
                v = wb[k]
                w = wc[k]
                z = wd[k]
                aa += p * u
                ab += p * v
                ac += p * w
                ad += p * z
                ba += q * u
                bb += q * v
                bc += q * w
                bd += q * z
                ca += s * u
                cb += s * v
                cc += s * w
                cd += s * z
                da += t * u
                db += t * v
                dc += t * w
                dd += t * z
            res = ((aa, ab, ac, ad), (ba, bb, bc, bd), (ca, cb, cc, cd), (da, db, dc, dd))
            for b in range(4):
                if i0 + b < nr:
                    add = bias[r0 + i0 + b] if has_bias else np.float32(0.0)
                    for a in range(4):
                        if n0 + a < n_x:
                            v = res[a][b]
                            if has_bias:
                                v += add
                            if relu and v < 0:
                                v = np.float32(0.0)
                            y[n0 + a, r0 + i0 + b] = v


@njit(nogil=True)
def tile_matmul_blocked(xp, buf, nr, y, r0, n0, n1, n_cols, bias, has_bias, relu):
    """:func:`tile_matmul_act` for the rows ``n0 .. n1 - 1`` of ``xp``, :data:`X_BLOCK` at a
    time."""
    for b0 in range(n0, n1, X_BLOCK):
        b1 = min(n1, b0 + X_BLOCK)
        tile_matmul_act(xp[b0:b1], buf, nr, y[b0:b1], r0, n_cols, bias, has_bias, relu)


@njit(nogil=True)
def tile_matmul_t(xt, buf, nr, y, r0, n0, n1, n_cols, bias, has_bias, relu):
    """:func:`tile_matmul_blocked` from the activations as panels of 32 rows ``xt``
    (:func:`ternref.packed._f32_block.transpose_activations`) with the block of
    :mod:`ternref.packed._f32_block` (AVX-512 or AVX2): ``F32_ROWS`` weight rows (6 or 2) by
    32 activation rows per call, then bias and ReLU as the block is stored. ``buf`` must hold a
    multiple of ``F32_ROWS`` rows (the rows past ``nr`` are multiplied and dropped) and ``n0``
    must be a multiple of 32.

    The code around the inlined block decides whether LLVM keeps its accumulators in registers:
    the partial-tile epilogue below, written through :func:`_bias_relu` instead, made it spill
    them (73 against 131-148 GFLOP/s on the MLP's 256-column tiles, measured 2026-12-03), so
    it stays as written; time any change here, with a fresh ``NUMBA_CACHE_DIR``."""
    edge = np.empty((F32_COLS, F32_ROWS), np.float32)  # a partial block, before its epilogue
    length = buf.shape[1]
    for c0 in range(n0, n1, F32_COLS):
        n_here = min(F32_COLS, n1 - c0)
        for i0 in range(0, nr, F32_ROWS):
            rows_here = min(F32_ROWS, nr - i0)
            x0 = c0 // F32_COLS * length  # the panel of activation rows c0 .. c0 + 31
            whole = n_here == F32_COLS and rows_here == F32_ROWS
            target = y if whole else edge
            at_n, at_r = (c0, r0 + i0) if whole else (0, 0)
            outer_block_store(xt, x0, buf, i0, n_cols, target, at_n, at_r, bias,
                             has_bias and whole, relu and whole)  # fmt: skip
            if whole:
                continue
            for j in range(n_here):
                out = y[c0 + j, r0 + i0 : r0 + i0 + rows_here]
                for i in range(rows_here):
                    v = edge[j, i]
                    if has_bias:
                        v += bias[r0 + i0 + i]
                    if relu and v < 0:
                        v = np.float32(0.0)
                    out[i] = v


@njit(nogil=True)
def tile_product_f32(xp, xt, buf, nr, y, r0, n0, n1, n_cols, bias, has_bias, relu):
    """The float32 GEMM's product of one decoded tile: :func:`tile_matmul_t` on AVX-512 or AVX2
    (:data:`ternref.packed._f32_block.AVAILABLE`), else :func:`tile_matmul_blocked`."""
    if F32_BLOCK:
        tile_matmul_t(xt, buf, nr, y, r0, n0, n1, n_cols, bias, has_bias, relu)
    else:
        tile_matmul_blocked(xp, buf, nr, y, r0, n0, n1, n_cols, bias, has_bias, relu)


@njit(nogil=True)
def f32_tile_rows(n_rows, bytes_per_row):
    """:func:`tile_rows` for the float32 GEMM: a multiple of the float32 block's ``F32_ROWS``
    when that block runs, so that only a last, partial tile multiplies rows it drops."""
    rows = tile_rows(n_rows, bytes_per_row)
    if F32_BLOCK and rows < n_rows:
        rows = min(n_rows, -(-rows // F32_ROWS) * F32_ROWS)
    return rows


@njit(nogil=True)
def tile_buffer(rows, length):
    """The decoded tile of the float32 GEMM: ``rows`` rounded up to a multiple of the float32
    block's ``F32_ROWS`` (zeros in the extra rows, which :func:`tile_matmul_t` multiplies and
    drops)."""
    return np.zeros((-(-rows // F32_ROWS) * F32_ROWS, length), np.float32)


# --------------------------------------------------------------- weights decoded as panels
@njit(nogil=True)
def panel_code_bytes(codes, p, m, ct):
    """``ct[t, j] = codes[32 p + j, t]`` for the rows of panel ``p`` below ``m`` (the code bytes
    of 32 rows side by side, what the formats' ``dequant_panels`` decode column by column);
    returns how many rows the panel has."""
    rows = min(32, m - 32 * p)
    for j in range(rows):
        crow = codes[32 * p + j]
        for t in range(codes.shape[1]):
            ct[t, j] = crow[t]
    return rows


@njit(nogil=True)
def panel_values(lut, p, rows, g, v0, v1, v2):
    """The values of codes -1, 0, +1 of the panel's 32 rows in scale group ``g``, one lane a
    row (``lut`` (M, G, 3)); zeros for the rows past ``rows``: every code decodes to 0 there."""
    for j in range(32):
        v0[j] = lut[32 * p + j, g, 0] if j < rows else np.float32(0.0)
        v1[j] = lut[32 * p + j, g, 1] if j < rows else np.float32(0.0)
        v2[j] = lut[32 * p + j, g, 2] if j < rows else np.float32(0.0)


# ------------------------------------------------------------------------------ int8 tiles
EXACT_COLUMNS = 1 << 17
"""Columns summed in one float32 product of the int8 GEMM: with ``|x| <= 127`` and
``|c| <= 1`` every partial sum is an integer below ``127 * 2^17 < 2^24``, so float32 holds it
exactly whatever the order of the additions and the fused multiply-adds."""


@njit(nogil=True)
def plain_int8_sums(n_groups, length, asym, has_offset) -> bool:
    """Whether an int8 product is ``alpha * D / s`` with one float32 product per tile (one group,
    at most :data:`EXACT_COLUMNS` columns, symmetric scales, no offset): then the GEMM kernels
    write the exact sums ``D`` straight into ``y`` (:func:`tile_matmul_blocked`) and scale them
    in one pass at the end (:func:`scale_rows_i8`), instead of tile by tile."""
    return n_groups == 1 and length <= EXACT_COLUMNS and not asym and not has_offset


@njit(nogil=True)
def scale_rows_i8(y, sc, inv_s, r0, r1, n0, n1):
    """``y[n, r] = (alpha[r] * D[n, r]) / s[n]`` in float64 for the block ``n0:n1, r0:r1`` of
    exact integer sums ``D`` held in float32 ``y`` (``alpha = sc[0, :, 0]``, ``1 / s = inv_s``):
    the same operations as :func:`tile_product_i8`'s common case, over contiguous row slices
    (LLVM vectorizes them; tile by tile, the epilogue cost as much as a fifth of the product).
    ``alpha`` is copied into a contiguous array first (see :func:`finish_plain_i8`)."""
    alpha = sc[0, r0:r1, 0].copy()
    for n in range(n0, n1):
        s = inv_s[n]
        row = y[n, r0:r1]
        for i in range(row.shape[0]):
            row[i] = (alpha[i] * np.float64(row[i])) * s


@njit(nogil=True)
def tile_product_i8(xq, buf, abs_buf, nr, r0, n0, n1, xsum, inv_s, sc, asym, has_offset, y):
    """``y[n, r0 + i]`` for ``n0 <= n < n1`` from int8 activations and a tile of signed codes.

    ``xq`` float32 (N, L) holds the quantized activations (integers in [-127, 127]), ``buf``
    float32 the codes -1, 0, +1 of the tile's rows (``abs_buf`` their magnitudes, when
    asymmetric). ``D = sum c x`` and ``S = sum |c| x`` are formed by :func:`tile_matmul`, the
    register-blocked float32 kernel, over at most :data:`EXACT_COLUMNS` columns at a time: the
    sums are exact integers (so the result is bit-identical to the int64 NumPy twin), and the
    4 x 4 blocking with 16 float32 lanes beats what LLVM makes of integer loops here (measured:
    an int32 ``vpmaddwd`` reduction runs one accumulator per loop, at a third of the speed).
    Then :func:`group_value_int` with ``Q = D + X``, ``Z = X - S``.
    """
    n_groups = sc.shape[2]
    length = xq.shape[1]
    seg = length // n_groups
    rows = min(X_BLOCK, n1 - n0)
    part = np.empty((rows, nr), np.float32)
    d = np.empty((rows, nr, n_groups), np.int64)
    s = np.empty((rows, nr, n_groups), np.int64)
    whole = n_groups == 1 and length <= EXACT_COLUMNS  # one product over contiguous rows
    for b0 in range(n0, n1, X_BLOCK):
        b1 = min(n1, b0 + X_BLOCK)
        nb = b1 - b0
        if whole and not asym and not has_offset:
            # the common case, alpha * D / s: the same float64 operations as group_value_int
            tile_matmul(xq[b0:b1], buf, nr, part, 0)
            for n in range(nb):
                for i in range(nr):
                    y[b0 + n, r0 + i] = (sc[0, r0 + i, 0] * np.float64(part[n, i])) * inv_s[b0 + n]
            continue
        d[:nb] = 0
        s[:nb] = 0
        for sign in range(2 if asym else 1):
            tile = buf if sign == 0 else abs_buf
            sums = d if sign == 0 else s
            for g in range(n_groups):
                for k0 in range(g * seg, (g + 1) * seg, EXACT_COLUMNS):
                    if whole:
                        tile_matmul(xq[b0:b1], tile, nr, part, 0)
                    else:
                        k1 = min((g + 1) * seg, k0 + EXACT_COLUMNS)
                        tile_matmul(xq[b0:b1, k0:k1], tile[:, k0:k1], nr, part, 0)
                    for n in range(nb):
                        for i in range(nr):
                            sums[n, i, g] += np.int64(part[n, i])
        for n in range(b0, b1):
            for i in range(nr):
                acc = 0.0
                for g in range(n_groups):
                    x_sum = xsum[n, g]
                    q_sum = d[n - b0, i, g] + x_sum
                    z_sum = x_sum - s[n - b0, i, g] if asym else np.int64(0)
                    acc += group_value_int(q_sum, z_sum, x_sum, sc, r0 + i, g, asym)
                    if has_offset:
                        acc += sc[2, r0 + i, g] * np.float64(x_sum)
                y[n, r0 + i] = acc * inv_s[n]


@njit(nogil=True)
def absmax_bits(row):
    """The bit pattern of ``max |row|`` (float32 ``row``, finite): for finite floats the bits
    of ``|v|`` (``v & 0x7fffffff`` as int32) order exactly as the values, and an integer max
    reduction vectorizes where LLVM leaves a float one scalar (measured: 10x)."""
    bits = row.view(np.int32)
    best = np.int32(0)
    for l in range(bits.shape[0]):
        b = bits[l] & np.int32(0x7FFFFFFF)
        best = b if b > best else best
    return best


@njit(nogil=True, fastmath=REASSOC)
def segment_sum(row, start, stop):
    """``sum(row[start:stop])`` in float32 (the rows summed here hold small integers: exact in
    any order). The loop runs over a slice: over ``range(start, stop)`` of the whole row LLVM
    leaves the sum scalar (measured: 12x slower on 800-column rows)."""
    part = row[start:stop]
    total = np.float32(0.0)
    for l in range(part.shape[0]):
        total += part[l]
    return total


@njit(nogil=True)
def exact_sum(row, start, stop):
    """``sum(row[start:stop])`` as int64 for float32 ``row`` holding integers of at most 127 in
    magnitude: :func:`segment_sum` over pieces of :data:`EXACT_COLUMNS`, each exact in float32."""
    total = np.int64(0)
    for a in range(start, stop, EXACT_COLUMNS):
        total += np.int64(segment_sum(row, a, min(stop, a + EXACT_COLUMNS)))
    return total


@njit(nogil=True)
def quantize_rows(block, nq, seg, xsum, inv_s):
    """Quantize rows ``0 .. nq-1`` of the float32 ``block`` in place, absmax per row, exactly as
    :func:`ternref.packed.quantize_activations` (float32 arithmetic, half-to-even rounding); the
    quantized values stay in float32 (exact integers); ``xsum`` (int64) gets their group sums
    over segments of ``seg`` columns and ``inv_s`` (float64) ``max|x| / 127``."""
    length = block.shape[1]
    cell = np.empty(1, np.int32)  # reinterprets the bits of max |x| as a float32
    as_float = cell.view(np.float32)
    for q in range(nq):
        row = block[q]
        cell[0] = absmax_bits(row)
        amax = as_float[0]
        scale = np.float32(INT8_MAX) / amax if amax > 0 else np.float32(0.0)
        inv_s[q] = np.float64(amax) / INT8_MAX
        for l in range(length):
            row[l] = min(max(np.rint(row[l] * scale), np.float32(-INT8_MAX)), np.float32(INT8_MAX))
        for g in range(length // seg):
            xsum[q, g] = exact_sum(row, g * seg, (g + 1) * seg)
