"""The ``i2`` format: 2 bits per weight, four interleaved 32-weight sub-blocks per 128-weight block.

Encoding of one weight
----------------------
A ternary code ``c`` in {-1, 0, +1} is stored as the unsigned 2-bit number ``q = c + 1`` in
{0, 1, 2}; the bit pattern ``0b11`` never occurs (:func:`decode` refuses it).

Layout of one row
-----------------
A row of ``L`` weights (``L`` a multiple of ``BLOCK = 128``; :mod:`ternref.packed.packed` pads
rows and scale groups with code 0) is stored in ``L / 4`` bytes. Block ``b`` covers weights
``128 b ... 128 b + 127`` and occupies bytes ``32 b ... 32 b + 31``. Inside a block, byte ``j``
(0..31) holds the four weights ``j, j + 32, j + 64, j + 96``, least significant bits first::

    one 128-weight block = 32 bytes                      byte j of the block (bit 7 ... bit 0)
    +--------+--------+--------+-- ... --+--------+      +-------+-------+-------+-------+
    | byte 0 | byte 1 | byte 2 |         | byte31 |      | q[96+j]| q[64+j]| q[32+j]| q[j] |
    +--------+--------+--------+-- ... --+--------+      +-------+-------+-------+-------+
                                                          bits 7-6  bits 5-4 bits 3-2 bits 1-0

    weight w of the block -> byte w % 32, bits 2*(w // 32) and 2*(w // 32) + 1

So ``(byte >> 2 s) & 3`` applied to the 32 consecutive bytes of a block yields the codes of the
32 *consecutive* weights ``32 s ... 32 s + 31``: one shift and one mask per 32 weights, which is
what lets a compiler (or a SIMD programmer) decode a whole vector register at once. This is the
order of llama.cpp's TQ2_0 (LSB first); bitnet.cpp's I2_S uses the same interleave MSB first.

Dot product
-----------
With ``q = c + 1``, ``sum_k c_k x_k = sum_k q_k x_k - sum_k x_k`` (DESIGN.md, "Packed formats"):
the kernel multiplies the *unsigned* codes and subtracts the activation sum once per scale group.
For asymmetric scales it needs the two sides separately: ``[c = +1] = q >> 1`` and
``[c = -1] = (2 - q) >> 1``.

Kernels
-------
Each jitted kernel (``@njit(parallel=True)``, parallel over output rows) has a NumPy
twin ``*_numpy`` running the same algorithm on whole columns of rows: the same 32 float32
accumulator lanes per row, filled block by block in the same order, summed lane 0 to lane 31,
then the same float64 epilogue. Because Numba compiles without ``fastmath`` (no reassociation, no
FMA contraction), kernel and twin agree bit for bit. The ``np.int32(...)`` around every decoded
code is there for speed: Numba widens uint8 arithmetic to int64, and the truncation lets LLVM
narrow the shifts and masks back to 32-bit lanes (twice as many per vector register).

References
----------
Ma, S., Wang, H., et al. (2024). The era of 1-bit LLMs: all large language models are in 1.58
bits. arXiv:2402.17764. (bitnet.cpp I2_S: Wang, J., et al. 2024, arXiv:2410.16144.)
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ternref._jit import njit
from ternref.packed._gemm import TILE_ROWS, i8_epilogue, tile_dot_i8, tile_matmul

BLOCK = 128
"""Weights per block; rows and scale groups are padded to a multiple of this."""

ARRAYS = ("codes",)
"""Names and order of the packed arrays of this format."""

BITS_PER_CODE = 2.0


def encode(codes: np.ndarray) -> dict:
    """Pack int8 codes of shape ``(M, L)``, ``L % 128 == 0``, into ``{"codes": uint8 (M, L/4)}``."""
    m, length = codes.shape
    q = (codes.astype(np.int16) + 1).astype(np.uint8)  # c + 1 in {0, 1, 2}
    # (M, blocks, sub-block s, lane j) -> byte (M, blocks, j) = sum_s q[s, j] << 2 s
    q = q.reshape(m, length // BLOCK, 4, 32)
    packed = q[:, :, 0, :] | (q[:, :, 1, :] << 2) | (q[:, :, 2, :] << 4) | (q[:, :, 3, :] << 6)
    return {"codes": np.ascontiguousarray(packed.reshape(m, length // 4), dtype=np.uint8)}


def decode(arrays: dict) -> np.ndarray:
    """Inverse of :func:`encode`: int8 codes of shape ``(M, L)``; raises on the unused code 3."""
    b = arrays["codes"]
    m, nbytes = b.shape
    blocks = b.reshape(m, nbytes // 32, 1, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = (blocks >> shifts) & 3  # (M, blocks, s, j): code of weight 32 s + j of the block
    if np.any(q == 3):
        raise ValueError("i2 codes contain the unused bit pattern 0b11 (corrupt packed data)")
    return (q.astype(np.int8) - 1).reshape(m, nbytes * 4)


# ---------------------------------------------------------------------------------------------
# float32 activations
# ---------------------------------------------------------------------------------------------
@njit(parallel=True)
def dot_f32(codes, xp, xsum, sp, sn, so, asym, has_offset, y):
    """``y[n, r] = sum_g (scaled code-dot of row r and x[n] over group g)``, float32 lanes.

    Parameters
    ----------
    codes : uint8 (M, L/4)
        Packed rows, ``L = G * seg`` with every scale group padded to ``seg`` (a multiple of 128).
    xp : float32 (N, L)
        Activations in the same padded layout (zeros in the padding).
    xsum : float64 (N, G)
        ``sum(x)`` over each group (the ``- sum x`` of the i2 identity, and the offset term).
    sp, sn, so : float64 (M, G)
        ``alpha_pos``, ``alpha_neg`` and ``offset`` of row r, group g (``so`` all zero if none).
    asym : bool
        Accumulate the +1 and -1 sides separately (``alpha_pos != alpha_neg``).
    has_offset : bool
    y : float32 (N, M)
        Output, overwritten.
    """
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
                codes_g = codes[r, g * seg // 4 : (g + 1) * seg // 4]
                x = xp[n, g * seg : (g + 1) * seg]
                for b in range(seg // BLOCK):
                    base = b * BLOCK
                    if asym:
                        for j in range(32):
                            q = codes_g[b * 32 + j]
                            q0 = np.int32(q & 3)
                            q1 = np.int32((q >> 2) & 3)
                            q2 = np.int32((q >> 4) & 3)
                            q3 = np.int32(q >> 6)
                            # [c = +1] = q >> 1, [c = -1] = (2 - q) >> 1
                            acc[j] += (
                                np.float32(q0 >> 1) * x[base + j]
                                + np.float32(q1 >> 1) * x[base + 32 + j]
                                + np.float32(q2 >> 1) * x[base + 64 + j]
                                + np.float32(q3 >> 1) * x[base + 96 + j]
                            )
                            acc_n[j] += (
                                np.float32((2 - q0) >> 1) * x[base + j]
                                + np.float32((2 - q1) >> 1) * x[base + 32 + j]
                                + np.float32((2 - q2) >> 1) * x[base + 64 + j]
                                + np.float32((2 - q3) >> 1) * x[base + 96 + j]
                            )
                    else:
                        for j in range(32):
                            q = codes_g[b * 32 + j]
                            # sum q*x over the 4 sub-blocks; one shift+mask per sub-block
                            acc[j] += (
                                np.float32(np.int32(q & 3)) * x[base + j]
                                + np.float32(np.int32((q >> 2) & 3)) * x[base + 32 + j]
                                + np.float32(np.int32((q >> 4) & 3)) * x[base + 64 + j]
                                + np.float32(np.int32(q >> 6)) * x[base + 96 + j]
                            )
                s = np.float32(0.0)
                s_n = np.float32(0.0)
                for j in range(32):
                    s += acc[j]
                    s_n += acc_n[j]
                if asym:
                    yr += sp[r, g] * np.float64(s) - sn[r, g] * np.float64(s_n)
                else:
                    # sum c x = sum q x - sum x
                    yr += sp[r, g] * (np.float64(s) - xsum[n, g])
                if has_offset:
                    yr += so[r, g] * xsum[n, g]
            y[n, r] = yr


def dot_f32_numpy(codes, xp, xsum, sp, sn, so, asym, has_offset, y):
    """NumPy twin of :func:`dot_f32`: the same lanes and order, vectorised over the rows."""
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
                q = codes[:, b * 32 : b * 32 + 32].astype(np.int32)  # (M, 32)
                qs = [q & 3, (q >> 2) & 3, (q >> 4) & 3, q >> 6]  # sub-block s: weights 32s + j
                xs = [x[base + 32 * s : base + 32 * s + 32] for s in range(4)]
                if asym:
                    acc += (
                        (qs[0] >> 1).astype(f32) * xs[0]
                        + (qs[1] >> 1).astype(f32) * xs[1]
                        + (qs[2] >> 1).astype(f32) * xs[2]
                        + (qs[3] >> 1).astype(f32) * xs[3]
                    )
                    acc_n += (
                        ((2 - qs[0]) >> 1).astype(f32) * xs[0]
                        + ((2 - qs[1]) >> 1).astype(f32) * xs[1]
                        + ((2 - qs[2]) >> 1).astype(f32) * xs[2]
                        + ((2 - qs[3]) >> 1).astype(f32) * xs[3]
                    )
                else:
                    acc += (
                        qs[0].astype(f32) * xs[0]
                        + qs[1].astype(f32) * xs[1]
                        + qs[2].astype(f32) * xs[2]
                        + qs[3].astype(f32) * xs[3]
                    )
            s = np.zeros(m, np.float32)
            s_n = np.zeros(m, np.float32)
            for j in range(32):  # lane 0 .. 31, as the kernel
                s += acc[:, j]
                s_n += acc_n[:, j]
            if asym:
                yr += sp[:, g] * s.astype(np.float64) - sn[:, g] * s_n.astype(np.float64)
            else:
                yr += sp[:, g] * (s.astype(np.float64) - xsum[n, g])
            if has_offset:
                yr += so[:, g] * xsum[n, g]
        y[n] = yr


# ---------------------------------------------------------------------------------------------
# int8 activations: int32 lanes, exact integer sums, float64 epilogue
# ---------------------------------------------------------------------------------------------
@njit(parallel=True)
def dot_i8(codes, xq, xsumq, inv_s, sp, sn, so, asym, has_offset, y):
    """Integer twin of :func:`dot_f32`: ``xq`` int8 (N, L), int32 lanes, ``xsumq`` int64 (N, G).

    Per group the integer sum ``D = sum q xq - sum xq`` (or ``P``, ``N`` when asymmetric) is
    exact; ``y[n, r] = inv_s[n] * sum_g (sp D | sp P - sn N) + so sum xq``, in float64.
    """
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
                codes_g = codes[r, g * seg // 4 : (g + 1) * seg // 4]
                x = xq[n, g * seg : (g + 1) * seg]
                for b in range(seg // BLOCK):
                    base = b * BLOCK
                    if asym:
                        for j in range(32):
                            q = codes_g[b * 32 + j]
                            q0 = np.int32(q & 3)
                            q1 = np.int32((q >> 2) & 3)
                            q2 = np.int32((q >> 4) & 3)
                            q3 = np.int32(q >> 6)
                            acc[j] += np.int32(
                                (q0 >> 1) * np.int32(x[base + j])
                                + (q1 >> 1) * np.int32(x[base + 32 + j])
                                + (q2 >> 1) * np.int32(x[base + 64 + j])
                                + (q3 >> 1) * np.int32(x[base + 96 + j])
                            )
                            acc_n[j] += np.int32(
                                ((2 - q0) >> 1) * np.int32(x[base + j])
                                + ((2 - q1) >> 1) * np.int32(x[base + 32 + j])
                                + ((2 - q2) >> 1) * np.int32(x[base + 64 + j])
                                + ((2 - q3) >> 1) * np.int32(x[base + 96 + j])
                            )
                    else:
                        for j in range(32):
                            q = codes_g[b * 32 + j]
                            acc[j] += np.int32(
                                np.int32(q & 3) * np.int32(x[base + j])
                                + np.int32((q >> 2) & 3) * np.int32(x[base + 32 + j])
                                + np.int32((q >> 4) & 3) * np.int32(x[base + 64 + j])
                                + np.int32(q >> 6) * np.int32(x[base + 96 + j])
                            )
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
    """NumPy twin of :func:`dot_i8` (int64 arithmetic; the sums are exact either way)."""
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
                q = codes[:, b * 32 : b * 32 + 32].astype(np.int64)
                for sub, qsub in enumerate((q & 3, (q >> 2) & 3, (q >> 4) & 3, q >> 6)):
                    xs = x[base + 32 * sub : base + 32 * sub + 32]
                    if asym:
                        s += (qsub >> 1) @ xs
                        s_n += ((2 - qsub) >> 1) @ xs
                    else:
                        s += qsub @ xs
            if asym:
                yr += sp[:, g] * s.astype(np.float64) - sn[:, g] * s_n.astype(np.float64)
            else:
                yr += sp[:, g] * (s - xsumq[n, g]).astype(np.float64)
            if has_offset:
                yr += so[:, g] * np.float64(xsumq[n, g])
        y[n] = yr * inv_s[n]


# ---------------------------------------------------------------------------------------------
# dequantized row tiles (for GEMM through BLAS)
# ---------------------------------------------------------------------------------------------
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
            q = crow[b * 32 + j]
            q0 = np.int32(q & 3)
            q1 = np.int32((q >> 2) & 3)
            q2 = np.int32((q >> 4) & 3)
            q3 = np.int32(q >> 6)
            out_row[base + j] = v0 if q0 == 0 else (v1 if q0 == 1 else v2)
            out_row[base + 32 + j] = v0 if q1 == 0 else (v1 if q1 == 1 else v2)
            out_row[base + 64 + j] = v0 if q2 == 0 else (v1 if q2 == 1 else v2)
            out_row[base + 96 + j] = v0 if q3 == 0 else (v1 if q3 == 1 else v2)


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
        for s in range(4):
            q = ((codes[rows, b * 32 : b * 32 + 32] >> (2 * s)) & 3).astype(np.intp)
            out[:, base + 32 * s : base + 32 * s + 32] = np.take_along_axis(lut[rows, g, :], q, 1)
