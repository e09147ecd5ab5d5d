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
from numba import prange

from ternref._jit import njit
from ternref.packed._gemm import TILE_ROWS, i8_epilogue, tile_dot_i8, tile_matmul

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


@njit(parallel=True)
def dot_f32(pos, neg, xp, xsum, sp, sn, so, asym, has_offset, y):
    """float32-lane dot products; arguments as :func:`ternref.packed.i2.dot_f32`."""
    m = pos.shape[0]
    n_rows_x, length = xp.shape
    n_groups = sp.shape[1]
    seg = length // n_groups
    one = np.uint64(1)
    for r in prange(m):
        acc = np.empty(64, np.float32)
        acc_n = np.empty(64, np.float32)
        for n in range(n_rows_x):
            yr = 0.0
            for g in range(n_groups):
                for j in range(64):
                    acc[j] = 0.0
                    acc_n[j] = 0.0
                # this group's packed words and activations as 0-based slices: with
                # absolute offsets LLVM does not vectorize the lane loop (10x slower)
                pos_g = pos[r, g * seg // 64 : (g + 1) * seg // 64]
                neg_g = neg[r, g * seg // 64 : (g + 1) * seg // 64]
                x = xp[n, g * seg : (g + 1) * seg]
                for b in range(seg // BLOCK):
                    base = b * BLOCK
                    wp = pos_g[b]
                    wn = neg_g[b]
                    if asym:
                        for i in range(64):
                            sh = np.uint64(i)
                            acc[i] += np.float32(np.int32((wp >> sh) & one)) * x[base + i]
                            acc_n[i] += np.float32(np.int32((wn >> sh) & one)) * x[base + i]
                    else:
                        for i in range(64):
                            sh = np.uint64(i)
                            c = np.int32((wp >> sh) & one) - np.int32((wn >> sh) & one)
                            acc[i] += np.float32(c) * x[base + i]
                s = np.float32(0.0)
                s_n = np.float32(0.0)
                for i in range(64):
                    s += acc[i]
                    s_n += acc_n[i]
                if asym:
                    yr += sp[r, g] * np.float64(s) - sn[r, g] * np.float64(s_n)
                else:
                    yr += sp[r, g] * np.float64(s)
                if has_offset:
                    yr += so[r, g] * xsum[n, g]
            y[n, r] = yr


def _bits(words):
    """(M,) uint64 words -> (M, 64) int32 bits, LSB first."""
    return ((words[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).astype(np.int32)


def dot_f32_numpy(pos, neg, xp, xsum, sp, sn, so, asym, has_offset, y):
    """NumPy twin of :func:`dot_f32`."""
    m = pos.shape[0]
    n_rows_x, length = xp.shape
    n_groups = sp.shape[1]
    seg = length // n_groups
    for n in range(n_rows_x):
        x = xp[n]
        yr = np.zeros(m, np.float64)
        for g in range(n_groups):
            acc = np.zeros((m, 64), np.float32)
            acc_n = np.zeros((m, 64), np.float32)
            for b in range(g * seg // BLOCK, (g + 1) * seg // BLOCK):
                xs = x[b * BLOCK : b * BLOCK + BLOCK]
                p, q = _bits(pos[:, b]), _bits(neg[:, b])
                if asym:
                    acc += p.astype(np.float32) * xs
                    acc_n += q.astype(np.float32) * xs
                else:
                    acc += (p - q).astype(np.float32) * xs
            s = np.zeros(m, np.float32)
            s_n = np.zeros(m, np.float32)
            for i in range(64):
                s += acc[:, i]
                s_n += acc_n[:, i]
            if asym:
                yr += sp[:, g] * s.astype(np.float64) - sn[:, g] * s_n.astype(np.float64)
            else:
                yr += sp[:, g] * s.astype(np.float64)
            if has_offset:
                yr += so[:, g] * xsum[n, g]
        y[n] = yr


@njit(parallel=True)
def dot_i8(pos, neg, xq, xsumq, inv_s, sp, sn, so, asym, has_offset, y):
    """int32-lane dot products; arguments as :func:`ternref.packed.i2.dot_i8`."""
    m = pos.shape[0]
    n_rows_x, length = xq.shape
    n_groups = sp.shape[1]
    seg = length // n_groups
    one = np.uint64(1)
    for r in prange(m):
        acc = np.empty(64, np.int32)
        acc_n = np.empty(64, np.int32)
        for n in range(n_rows_x):
            yr = 0.0
            for g in range(n_groups):
                for j in range(64):
                    acc[j] = 0
                    acc_n[j] = 0
                # this group's packed words and activations as 0-based slices: with
                # absolute offsets LLVM does not vectorize the lane loop (10x slower)
                pos_g = pos[r, g * seg // 64 : (g + 1) * seg // 64]
                neg_g = neg[r, g * seg // 64 : (g + 1) * seg // 64]
                x = xq[n, g * seg : (g + 1) * seg]
                for b in range(seg // BLOCK):
                    base = b * BLOCK
                    wp = pos_g[b]
                    wn = neg_g[b]
                    for i in range(64):
                        sh = np.uint64(i)
                        xi = np.int32(x[base + i])
                        if asym:
                            acc[i] += np.int32(np.int32((wp >> sh) & one) * xi)
                            acc_n[i] += np.int32(np.int32((wn >> sh) & one) * xi)
                        else:
                            c = np.int32((wp >> sh) & one) - np.int32((wn >> sh) & one)
                            acc[i] += np.int32(c * xi)
                s = np.int64(0)
                s_n = np.int64(0)
                for i in range(64):
                    s += acc[i]
                    s_n += acc_n[i]
                if asym:
                    yr += sp[r, g] * np.float64(s) - sn[r, g] * np.float64(s_n)
                else:
                    yr += sp[r, g] * np.float64(s)
                if has_offset:
                    yr += so[r, g] * np.float64(xsumq[n, g])
            y[n, r] = yr * inv_s[n]


def dot_i8_numpy(pos, neg, xq, xsumq, inv_s, sp, sn, so, asym, has_offset, y):
    """NumPy twin of :func:`dot_i8`."""
    m = pos.shape[0]
    n_rows_x, length = xq.shape
    n_groups = sp.shape[1]
    seg = length // n_groups
    for n in range(n_rows_x):
        x = xq[n].astype(np.int64)
        yr = np.zeros(m, np.float64)
        for g in range(n_groups):
            s = np.zeros(m, np.int64)
            s_n = np.zeros(m, np.int64)
            for b in range(g * seg // BLOCK, (g + 1) * seg // BLOCK):
                xs = x[b * BLOCK : b * BLOCK + BLOCK]
                p, q = _bits(pos[:, b]).astype(np.int64), _bits(neg[:, b]).astype(np.int64)
                if asym:
                    s += p @ xs
                    s_n += q @ xs
                else:
                    s += (p - q) @ xs
            if asym:
                yr += sp[:, g] * s.astype(np.float64) - sn[:, g] * s_n.astype(np.float64)
            else:
                yr += sp[:, g] * s.astype(np.float64)
            if has_offset:
                yr += so[:, g] * np.float64(xsumq[n, g])
        y[n] = yr * inv_s[n]


@njit
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


@njit(parallel=True)
def dequant_tile(pos, neg, r0, lut, out):
    """Rows ``r0 .. r0 + R`` of the weight as float32 values in ``out`` (R, L)."""
    for i in prange(out.shape[0]):
        dequant_row(pos, neg, r0 + i, lut, out[i])


@njit(parallel=True)
def gemm_f32(pos, neg, xp, lut, y):
    """``y = xp @ W_hat.T`` (float32): per thread, decode ``TILE_ROWS`` rows into a float32
    buffer and multiply it by ``xp`` with :func:`ternref.packed._gemm.tile_matmul`."""
    m = lut.shape[0]
    length = xp.shape[1]
    for t in prange((m + TILE_ROWS - 1) // TILE_ROWS):
        r0 = t * TILE_ROWS
        nr = min(TILE_ROWS, m - r0)
        buf = np.empty((TILE_ROWS, length), np.float32)
        for i in range(nr):
            dequant_row(pos, neg, r0 + i, lut, buf[i])
        tile_matmul(xp, buf, nr, y, r0)


@njit(parallel=True)
def gemm_i8(pos, neg, xq, xsumq, inv_s, sp, sn, so, code_lut, abs_lut, asym, has_offset, y):
    """:func:`dot_i8` for a batch: per thread, decode ``TILE_ROWS`` rows into signed int8 codes
    (``code_lut``; and ``|c|`` with ``abs_lut`` when asymmetric), form the exact group sums with
    ``_gemm.tile_dot_i8``, then scale them with ``_gemm.i8_epilogue``.
    """
    m = sp.shape[0]
    n_x, length = xq.shape
    n_groups = sp.shape[1]
    seg = length // n_groups
    for t in prange((m + TILE_ROWS - 1) // TILE_ROWS):
        r0 = t * TILE_ROWS
        nr = min(TILE_ROWS, m - r0)
        buf = np.empty((TILE_ROWS, length), np.int8)
        d = np.empty((n_x, TILE_ROWS, n_groups), np.int32)
        s = np.empty((n_x, TILE_ROWS, n_groups) if asym else (0, 0, 0), np.int32)
        for i in range(nr):
            dequant_row(pos, neg, r0 + i, code_lut, buf[i])
        tile_dot_i8(xq, buf, nr, seg, d)
        if asym:
            for i in range(nr):
                dequant_row(pos, neg, r0 + i, abs_lut, buf[i])
            tile_dot_i8(xq, buf, nr, seg, s)
        i8_epilogue(d, s, xsumq, inv_s, sp, sn, so, r0, nr, asym, has_offset, y)


def dequant_tile_numpy(pos, neg, r0, lut, out):
    """NumPy twin of :func:`dequant_tile`."""
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
