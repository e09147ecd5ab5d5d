"""The ``tq1`` format: base 3, five trits per byte (1.6 bits per weight), decoded by multiplication.

Encoding of five weights
------------------------
A code ``c`` in {-1, 0, +1} becomes the trit ``t = c + 1`` in {0, 1, 2}. Five trits form the
base-3 number (first trit most significant)::

    v = t0*81 + t1*27 + t2*9 + t3*3 + t4        in 0 .. 242

and the byte stores the fixed-point fraction ``v / 243`` scaled by 256, rounded *up*::

    byte = ceil(v * 256 / 243) = (v * 256 + 242) // 243      in 0 .. 255

(llama.cpp's TQ1_0 trick, Stanislav "compilade" 2024, llama.cpp PR #8151). Decoding trit ``n``
needs no division: multiplying by ``3**n`` modulo 256 shifts the fraction left by ``n`` base-3
digits (the uint8 wrap drops the digits above), and multiplying by 3 then taking the top byte
reads the leading digit::

    b = (byte * 3**n) & 255          # wrap-around is the point
    t = (b * 3) >> 8                 # the n-th trit, 0 <= t <= 2

The ceiling makes the fraction never fall below ``v / 243``, and since ``v <= 242`` it stays
below the next digit boundary, so the floor in ``>> 8`` lands on the right digit; the test suite
checks this for all 243 values of ``v``.

Layout of one row
-----------------
A row of ``L`` weights (``L`` a multiple of ``BLOCK = 160``; :mod:`ternref.packed.packed` pads
rows and scale groups with code 0) is stored in ``L / 5`` bytes. Block ``b`` covers weights
``160 b ... 160 b + 159`` and occupies bytes ``32 b ... 32 b + 31``; byte ``j`` (0..31) holds
the five weights ``j, j + 32, j + 64, j + 96, j + 128`` as trits ``t0 .. t4``::

    one 160-weight block = 32 bytes          byte j of the block = ceil(256 v / 243), with
    +--------+--------+-- ... --+--------+   v = t[j]*81 + t[32+j]*27 + t[64+j]*9
    | byte 0 | byte 1 |         | byte31 |       + t[96+j]*3 + t[128+j]
    +--------+--------+-- ... --+--------+
    weight w of the block -> byte w % 32, trit n = w // 32 (n = 0 most significant)

As in ``i2``, decoding trit ``n`` of the 32 bytes of a block gives 32 consecutive weights
``32 n ... 32 n + 31``. This is the 160-weight part of llama.cpp's 256-weight TQ1_0 block,
without its fp16 per-block scale (ternref keeps scales at the method's own granularity).

Dot product and kernels: exactly as in :mod:`ternref.packed.i2` (``sum c x = sum t x - sum x``),
with the trit decode above in place of the shift and mask.

References
----------
Compilade (2024). Ternary packing for TriLMs and BitNet b1.58. llama.cpp pull request #8151,
https://github.com/ggml-org/llama.cpp/pull/8151; https://compilade.net/blog/ternary-packing.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ternref._jit import njit
from ternref.packed._gemm import TILE_ROWS, i8_epilogue, tile_dot_i8, tile_matmul

BLOCK = 160
"""Weights per block (32 bytes of 5 trits); rows and scale groups are padded to this."""

ARRAYS = ("codes",)
BITS_PER_CODE = 1.6
POW3 = (1, 3, 9, 27, 81)


def encode(codes: np.ndarray) -> dict:
    """Pack int8 codes ``(M, L)``, ``L % 160 == 0``, into ``{"codes": uint8 (M, L/5)}``."""
    m, length = codes.shape
    t = (codes.astype(np.int32) + 1).reshape(m, length // BLOCK, 5, 32)  # (M, block, n, j)
    v = ((((t[:, :, 0] * 3 + t[:, :, 1]) * 3 + t[:, :, 2]) * 3 + t[:, :, 3]) * 3) + t[:, :, 4]
    byte = (v * 256 + 242) // 243  # ceil(v * 256 / 243): fixed-point fraction v / 243
    return {"codes": np.ascontiguousarray(byte.reshape(m, length // 5), dtype=np.uint8)}


def decode_trit(byte, n):
    """Trit ``n`` (0 = most significant) of packed byte(s), with multiplications only."""
    b = (np.asarray(byte).astype(np.int32) * POW3[n]) & 255
    return (b * 3) >> 8


def decode(arrays: dict) -> np.ndarray:
    """Inverse of :func:`encode`: int8 codes ``(M, L)``; raises on bytes no trit word maps to."""
    b = arrays["codes"]
    m, nbytes = b.shape
    blocks = b.reshape(m, nbytes // 32, 32)
    t = np.stack([decode_trit(blocks, n) for n in range(5)], axis=2)  # (M, block, n, j)
    # a byte is valid iff it is the encoding of the trits it decodes to
    v = (((t[:, :, 0] * 3 + t[:, :, 1]) * 3 + t[:, :, 2]) * 3 + t[:, :, 3]) * 3 + t[:, :, 4]
    if np.any((v * 256 + 242) // 243 != blocks):
        raise ValueError("tq1 codes contain a byte that encodes no 5-trit word (corrupt data)")
    return (t.astype(np.int8) - 1).reshape(m, nbytes * 5)


@njit(parallel=True)
def dot_f32(codes, xp, xsum, sp, sn, so, asym, has_offset, y):
    """float32-lane dot products; arguments as :func:`ternref.packed.i2.dot_f32`."""
    m = codes.shape[0]
    n_rows_x, length = xp.shape
    n_groups = sp.shape[1]
    seg = length // n_groups
    for r in prange(m):
        acc = np.empty(32, np.float32)
        acc_n = np.empty(32, np.float32)
        for n in range(n_rows_x):
            yr = 0.0
            for g in range(n_groups):
                for j in range(32):
                    acc[j] = 0.0
                    acc_n[j] = 0.0
                # this group's packed words and activations as 0-based slices: with
                # absolute offsets LLVM does not vectorize the lane loop (10x slower)
                codes_g = codes[r, g * seg // 5 : (g + 1) * seg // 5]
                x = xp[n, g * seg : (g + 1) * seg]
                for b in range(seg // BLOCK):
                    base = b * BLOCK
                    for j in range(32):
                        byte = np.int32(codes_g[b * 32 + j])
                        # trit n = ((byte * 3^n mod 256) * 3) >> 8
                        t0 = np.int32((np.int32(byte & 255) * 3) >> 8)
                        t1 = np.int32((np.int32((byte * 3) & 255) * 3) >> 8)
                        t2 = np.int32((np.int32((byte * 9) & 255) * 3) >> 8)
                        t3 = np.int32((np.int32((byte * 27) & 255) * 3) >> 8)
                        t4 = np.int32((np.int32((byte * 81) & 255) * 3) >> 8)
                        if asym:
                            acc[j] += (
                                np.float32(t0 >> 1) * x[base + j]
                                + np.float32(t1 >> 1) * x[base + 32 + j]
                                + np.float32(t2 >> 1) * x[base + 64 + j]
                                + np.float32(t3 >> 1) * x[base + 96 + j]
                                + np.float32(t4 >> 1) * x[base + 128 + j]
                            )
                            acc_n[j] += (
                                np.float32((2 - t0) >> 1) * x[base + j]
                                + np.float32((2 - t1) >> 1) * x[base + 32 + j]
                                + np.float32((2 - t2) >> 1) * x[base + 64 + j]
                                + np.float32((2 - t3) >> 1) * x[base + 96 + j]
                                + np.float32((2 - t4) >> 1) * x[base + 128 + j]
                            )
                        else:
                            acc[j] += (
                                np.float32(t0) * x[base + j]
                                + np.float32(t1) * x[base + 32 + j]
                                + np.float32(t2) * x[base + 64 + j]
                                + np.float32(t3) * x[base + 96 + j]
                                + np.float32(t4) * x[base + 128 + j]
                            )
                s = np.float32(0.0)
                s_n = np.float32(0.0)
                for j in range(32):
                    s += acc[j]
                    s_n += acc_n[j]
                if asym:
                    yr += sp[r, g] * np.float64(s) - sn[r, g] * np.float64(s_n)
                else:
                    yr += sp[r, g] * (np.float64(s) - xsum[n, g])
                if has_offset:
                    yr += so[r, g] * xsum[n, g]
            y[n, r] = yr


def _trits(codes_cols):
    """The five trit columns of a (M, 32) slice of packed bytes (int32)."""
    byte = codes_cols.astype(np.int32)
    return [((byte * p) & 255) * 3 >> 8 for p in POW3]


def dot_f32_numpy(codes, xp, xsum, sp, sn, so, asym, has_offset, y):
    """NumPy twin of :func:`dot_f32`."""
    m = codes.shape[0]
    n_rows_x, length = xp.shape
    n_groups = sp.shape[1]
    seg = length // n_groups
    f32 = np.float32
    for n in range(n_rows_x):
        x = xp[n]
        yr = np.zeros(m, np.float64)
        for g in range(n_groups):
            acc = np.zeros((m, 32), np.float32)
            acc_n = np.zeros((m, 32), np.float32)
            for b in range(g * seg // BLOCK, (g + 1) * seg // BLOCK):
                base = b * BLOCK
                ts = _trits(codes[:, b * 32 : b * 32 + 32])
                xs = [x[base + 32 * k : base + 32 * k + 32] for k in range(5)]
                if asym:
                    acc += (
                        (ts[0] >> 1).astype(f32) * xs[0]
                        + (ts[1] >> 1).astype(f32) * xs[1]
                        + (ts[2] >> 1).astype(f32) * xs[2]
                        + (ts[3] >> 1).astype(f32) * xs[3]
                        + (ts[4] >> 1).astype(f32) * xs[4]
                    )
                    acc_n += (
                        ((2 - ts[0]) >> 1).astype(f32) * xs[0]
                        + ((2 - ts[1]) >> 1).astype(f32) * xs[1]
                        + ((2 - ts[2]) >> 1).astype(f32) * xs[2]
                        + ((2 - ts[3]) >> 1).astype(f32) * xs[3]
                        + ((2 - ts[4]) >> 1).astype(f32) * xs[4]
                    )
                else:
                    acc += (
                        ts[0].astype(f32) * xs[0]
                        + ts[1].astype(f32) * xs[1]
                        + ts[2].astype(f32) * xs[2]
                        + ts[3].astype(f32) * xs[3]
                        + ts[4].astype(f32) * xs[4]
                    )
            s = np.zeros(m, np.float32)
            s_n = np.zeros(m, np.float32)
            for j in range(32):
                s += acc[:, j]
                s_n += acc_n[:, j]
            if asym:
                yr += sp[:, g] * s.astype(np.float64) - sn[:, g] * s_n.astype(np.float64)
            else:
                yr += sp[:, g] * (s.astype(np.float64) - xsum[n, g])
            if has_offset:
                yr += so[:, g] * xsum[n, g]
        y[n] = yr


@njit(parallel=True)
def dot_i8(codes, xq, xsumq, inv_s, sp, sn, so, asym, has_offset, y):
    """int32-lane dot products; arguments as :func:`ternref.packed.i2.dot_i8`."""
    m = codes.shape[0]
    n_rows_x, length = xq.shape
    n_groups = sp.shape[1]
    seg = length // n_groups
    for r in prange(m):
        acc = np.empty(32, np.int32)
        acc_n = np.empty(32, np.int32)
        for n in range(n_rows_x):
            yr = 0.0
            for g in range(n_groups):
                for j in range(32):
                    acc[j] = 0
                    acc_n[j] = 0
                # this group's packed words and activations as 0-based slices: with
                # absolute offsets LLVM does not vectorize the lane loop (10x slower)
                codes_g = codes[r, g * seg // 5 : (g + 1) * seg // 5]
                x = xq[n, g * seg : (g + 1) * seg]
                for b in range(seg // BLOCK):
                    base = b * BLOCK
                    for j in range(32):
                        byte = np.int32(codes_g[b * 32 + j])
                        t0 = np.int32((np.int32(byte & 255) * 3) >> 8)
                        t1 = np.int32((np.int32((byte * 3) & 255) * 3) >> 8)
                        t2 = np.int32((np.int32((byte * 9) & 255) * 3) >> 8)
                        t3 = np.int32((np.int32((byte * 27) & 255) * 3) >> 8)
                        t4 = np.int32((np.int32((byte * 81) & 255) * 3) >> 8)
                        x0 = np.int32(x[base + j])
                        x1 = np.int32(x[base + 32 + j])
                        x2 = np.int32(x[base + 64 + j])
                        x3 = np.int32(x[base + 96 + j])
                        x4 = np.int32(x[base + 128 + j])
                        if asym:
                            acc[j] += np.int32(
                                (t0 >> 1) * x0
                                + (t1 >> 1) * x1
                                + (t2 >> 1) * x2
                                + (t3 >> 1) * x3
                                + (t4 >> 1) * x4
                            )
                            acc_n[j] += np.int32(
                                ((2 - t0) >> 1) * x0
                                + ((2 - t1) >> 1) * x1
                                + ((2 - t2) >> 1) * x2
                                + ((2 - t3) >> 1) * x3
                                + ((2 - t4) >> 1) * x4
                            )
                        else:
                            acc[j] += np.int32(t0 * x0 + t1 * x1 + t2 * x2 + t3 * x3 + t4 * x4)
                s = np.int64(0)
                s_n = np.int64(0)
                for j in range(32):
                    s += acc[j]
                    s_n += acc_n[j]
                if asym:
                    yr += sp[r, g] * np.float64(s) - sn[r, g] * np.float64(s_n)
                else:
                    yr += sp[r, g] * np.float64(s - xsumq[n, g])
                if has_offset:
                    yr += so[r, g] * np.float64(xsumq[n, g])
            y[n, r] = yr * inv_s[n]


def dot_i8_numpy(codes, xq, xsumq, inv_s, sp, sn, so, asym, has_offset, y):
    """NumPy twin of :func:`dot_i8`."""
    m = codes.shape[0]
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
                base = b * BLOCK
                for k, t in enumerate(_trits(codes[:, b * 32 : b * 32 + 32])):
                    t = t.astype(np.int64)
                    xs = x[base + 32 * k : base + 32 * k + 32]
                    if asym:
                        s += (t >> 1) @ xs
                        s_n += ((2 - t) >> 1) @ xs
                    else:
                        s += t @ xs
            if asym:
                yr += sp[:, g] * s.astype(np.float64) - sn[:, g] * s_n.astype(np.float64)
            else:
                yr += sp[:, g] * (s - xsumq[n, g]).astype(np.float64)
            if has_offset:
                yr += so[:, g] * np.float64(xsumq[n, g])
        y[n] = yr * inv_s[n]


@njit
def dequant_row(codes, r, lut, out_row):
    """Write row ``r`` as float32 values into ``out_row`` (L,); ``lut`` (M, G, 3) holds the
    values of codes -1, 0, +1 (``offset - alpha_neg``, ``offset``, ``offset + alpha_pos``)."""
    length = out_row.shape[0]
    n_groups = lut.shape[1]
    seg = length // n_groups
    crow = codes[r]  # a 0-based row view: lets LLVM vectorize the lane loop
    for b in range(length // BLOCK):
        g = b * BLOCK // seg
        v0 = lut[r, g, 0]
        v1 = lut[r, g, 1]
        v2 = lut[r, g, 2]
        base = b * BLOCK
        for j in range(32):
            byte = np.int32(crow[b * 32 + j])
            t0 = np.int32((np.int32(byte & 255) * 3) >> 8)
            t1 = np.int32((np.int32((byte * 3) & 255) * 3) >> 8)
            t2 = np.int32((np.int32((byte * 9) & 255) * 3) >> 8)
            t3 = np.int32((np.int32((byte * 27) & 255) * 3) >> 8)
            t4 = np.int32((np.int32((byte * 81) & 255) * 3) >> 8)
            out_row[base + j] = v0 if t0 == 0 else (v1 if t0 == 1 else v2)
            out_row[base + 32 + j] = v0 if t1 == 0 else (v1 if t1 == 1 else v2)
            out_row[base + 64 + j] = v0 if t2 == 0 else (v1 if t2 == 1 else v2)
            out_row[base + 96 + j] = v0 if t3 == 0 else (v1 if t3 == 1 else v2)
            out_row[base + 128 + j] = v0 if t4 == 0 else (v1 if t4 == 1 else v2)


@njit(parallel=True)
def dequant_tile(codes, r0, lut, out):
    """Rows ``r0 .. r0 + R`` of the weight as float32 values in ``out`` (R, L)."""
    for i in prange(out.shape[0]):
        dequant_row(codes, r0 + i, lut, out[i])


@njit(parallel=True)
def gemm_f32(codes, xp, lut, y):
    """``y = xp @ W_hat.T`` (float32): per thread, decode ``TILE_ROWS`` rows into a float32
    buffer and multiply it by ``xp`` with :func:`ternref.packed._gemm.tile_matmul`."""
    m = lut.shape[0]
    length = xp.shape[1]
    for t in prange((m + TILE_ROWS - 1) // TILE_ROWS):
        r0 = t * TILE_ROWS
        nr = min(TILE_ROWS, m - r0)
        buf = np.empty((TILE_ROWS, length), np.float32)
        for i in range(nr):
            dequant_row(codes, r0 + i, lut, buf[i])
        tile_matmul(xp, buf, nr, y, r0)


@njit(parallel=True)
def gemm_i8(codes, xq, xsumq, inv_s, sp, sn, so, code_lut, abs_lut, asym, has_offset, y):
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
            dequant_row(codes, r0 + i, code_lut, buf[i])
        tile_dot_i8(xq, buf, nr, seg, d)
        if asym:
            for i in range(nr):
                dequant_row(codes, r0 + i, abs_lut, buf[i])
            tile_dot_i8(xq, buf, nr, seg, s)
        i8_epilogue(d, s, xsumq, inv_s, sp, sn, so, r0, nr, asym, has_offset, y)


def dequant_tile_numpy(codes, r0, lut, out):
    """NumPy twin of :func:`dequant_tile`."""
    n_tile, length = out.shape
    n_groups = lut.shape[1]
    seg = length // n_groups
    rows = np.arange(r0, r0 + n_tile)
    for b in range(length // BLOCK):
        g = b * BLOCK // seg
        base = b * BLOCK
        for k, t in enumerate(_trits(codes[rows, b * 32 : b * 32 + 32])):
            out[:, base + 32 * k : base + 32 * k + 32] = np.take_along_axis(
                lut[rows, g, :], t.astype(np.intp), 1
            )
