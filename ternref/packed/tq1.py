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

from ternref._jit import njit
from ternref.packed import _vnni, i2
from ternref.packed._conv import X_BLOCK, gather_f32, product_columns, store_nchw
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
    panel_code_bytes,
    panel_values,
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


# ---------------------------------------------------------------------------------------------
# GEMV kernels: straight from the packed bytes, on five activation streams (as in ``i2``)
# ---------------------------------------------------------------------------------------------
STREAMS = 5
"""Trits per byte: byte ``t`` of a row holds one weight of each of the 5 streams."""


def stream_index(l):
    """``(s, t)`` of padded column ``l``: weight ``l`` is trit ``s`` of byte ``t``
    (``t = 32 (l // 160) + l % 32``, ``s = (l % 160) // 32``)."""
    return (l % BLOCK) // 32, 32 * (l // BLOCK) + l % 32


@njit(nogil=True)
def _trit(byte, power):
    """Trit ``s`` of ``byte`` for ``power = 3^s``: ``((byte 3^s) mod 256) 3 >> 8``, computed in
    8- and 16-bit integers. Written with Python ints, Numba computes it in int64 and LLVM
    converts 64-bit lanes (``vcvtqq2ps``, eight an instruction); with the narrow types it uses
    16-bit multiplies and ``vcvtdq2ps`` on sixteen lanes: the float32 code sums ran 1.6-1.9x
    faster (measured 2026-12-03, AMD EPYC Zen 5; every byte's five trits checked equal)."""
    wrapped = (np.uint16(byte) * np.uint16(power)) & np.uint16(255)  # < 2^16: no overflow
    return np.uint8((wrapped * np.uint16(3)) >> np.uint16(8))


@njit(nogil=True, fastmath=REASSOC)
def _code_sums_f32(codes, t0, seg, x0, x1, x2, x3, x4, r0, r1, out):
    """``out[r - r0] = Q = sum_t sum_s trit_s(byte t) x_s[t]`` (float32 streams), the trit
    decode :func:`_trit`; as :func:`ternref.packed.i2._code_sums_f32`."""
    for r in range(r0, r1):
        cr = codes[r, t0 : t0 + seg]
        acc = np.float32(0.0)
        for t in range(seg):
            b = cr[t]
            acc += (
                np.float32(_trit(b, np.uint8(1))) * x0[t]
                + np.float32(_trit(b, np.uint8(3))) * x1[t]
                + np.float32(_trit(b, np.uint8(9))) * x2[t]
                + np.float32(_trit(b, np.uint8(27))) * x3[t]
                + np.float32(_trit(b, np.uint8(81))) * x4[t]
            )
        out[r - r0] = acc


@njit(nogil=True, fastmath=REASSOC)
def _zero_sums_f32(codes, t0, seg, x0, x1, x2, x3, x4, r0, r1, out):
    """``out[r - r0] = Z = sum_{c = 0} x``: ``[trit = 1] = trit & 1``."""
    one = np.uint8(1)
    for r in range(r0, r1):
        cr = codes[r, t0 : t0 + seg]
        acc = np.float32(0.0)
        for t in range(seg):
            b = cr[t]
            acc += (
                np.float32(np.uint8(_trit(b, np.uint8(1)) & one)) * x0[t]
                + np.float32(np.uint8(_trit(b, np.uint8(3)) & one)) * x1[t]
                + np.float32(np.uint8(_trit(b, np.uint8(9)) & one)) * x2[t]
                + np.float32(np.uint8(_trit(b, np.uint8(27)) & one)) * x3[t]
                + np.float32(np.uint8(_trit(b, np.uint8(81)) & one)) * x4[t]
            )
        out[r - r0] = acc


@njit(nogil=True)
def _code_sums_i8(codes, t0, seg, x0, x1, x2, x3, x4, r0, r1, out):
    """:func:`_code_sums_f32` for int8 streams, exact in int32 (``vpmaddwd`` / ``vpdpwssd``)."""
    for r in range(r0, r1):
        cr = codes[r, t0 : t0 + seg]
        acc = 0
        for t in range(seg):
            b = np.int32(cr[t])
            acc += np.int32((b * 3) >> 8) * np.int32(x0[t])
            acc += np.int32((((b * 3) & 255) * 3) >> 8) * np.int32(x1[t])
            acc += np.int32((((b * 9) & 255) * 3) >> 8) * np.int32(x2[t])
            acc += np.int32((((b * 27) & 255) * 3) >> 8) * np.int32(x3[t])
            acc += np.int32((((b * 81) & 255) * 3) >> 8) * np.int32(x4[t])
        out[r - r0] = acc


@njit(nogil=True)
def _zero_sums_i8(codes, t0, seg, x0, x1, x2, x3, x4, r0, r1, out):
    """:func:`_zero_sums_f32` for int8 streams (exact, int32)."""
    for r in range(r0, r1):
        cr = codes[r, t0 : t0 + seg]
        acc = 0
        for t in range(seg):
            b = np.int32(cr[t])
            acc += np.int32(((b * 3) >> 8) & 1) * np.int32(x0[t])
            acc += np.int32(((((b * 3) & 255) * 3) >> 8) & 1) * np.int32(x1[t])
            acc += np.int32(((((b * 9) & 255) * 3) >> 8) & 1) * np.int32(x2[t])
            acc += np.int32(((((b * 27) & 255) * 3) >> 8) & 1) * np.int32(x3[t])
            acc += np.int32(((((b * 81) & 255) * 3) >> 8) & 1) * np.int32(x4[t])
        out[r - r0] = acc


@njit(nogil=True)
def dot_f32(codes, xs, xsum, sc, zeros, asym, has_offset, bias, has_bias, relu, r0, r1, y):
    """``y[n, r]`` for rows ``r0 <= r < r1``, float32 activations (``xs`` float32 (N, 5, L/5));
    arguments and algorithm as :func:`ternref.packed.i2.dot_f32`."""
    n_groups = sc.shape[2]
    seg = codes.shape[1] // n_groups
    sums = np.empty(r1 - r0, np.float32)
    total = np.empty(r1 - r0, np.float64)
    for n in range(xs.shape[0]):
        total[:] = 0.0
        for g in range(n_groups):
            t0, t1 = g * seg, (g + 1) * seg
            x = xs[n]
            _code_sums_f32(
                codes,
                t0,
                seg,
                x[0, t0:t1],
                x[1, t0:t1],
                x[2, t0:t1],
                x[3, t0:t1],
                x[4, t0:t1],
                r0,
                r1,
                sums,
            )
            add_group(total, sums, zeros, xsum, n, g, sc, r0, asym, has_offset)
        finish_rows(total, 1.0, bias, has_bias, relu, r0, y[n])


@njit(nogil=True)
def zeros_f32(codes, xs, r0, r1, zeros):
    """``zeros[n, r, g] = sum_{c = 0} x`` for rows ``r0 .. r1 - 1`` (asymmetric scales)."""
    n_groups = zeros.shape[2]
    seg = codes.shape[1] // n_groups
    sums = np.empty(r1 - r0, np.float32)
    for n in range(xs.shape[0]):
        for g in range(n_groups):
            t0, t1 = g * seg, (g + 1) * seg
            x = xs[n]
            _zero_sums_f32(
                codes,
                t0,
                seg,
                x[0, t0:t1],
                x[1, t0:t1],
                x[2, t0:t1],
                x[3, t0:t1],
                x[4, t0:t1],
                r0,
                r1,
                sums,
            )
            zeros[n, r0:r1, g] = sums


@njit(nogil=True)
def dot_i8(codes, xs, xsum, inv_s, sc, zeros, asym, has_offset, bias, has_bias, relu, r0, r1, y):
    """:func:`dot_f32` for int8 activations (``xs`` int8 (N, 5, L/5)): exact int32 sums,
    float64 epilogue, as :func:`ternref.packed.i2.dot_i8`."""
    n_groups = sc.shape[2]
    seg = codes.shape[1] // n_groups
    sums = np.empty(r1 - r0, np.int32)
    total = np.empty(r1 - r0, np.float64)
    for n in range(xs.shape[0]):
        total[:] = 0.0
        for g in range(n_groups):
            t0, t1 = g * seg, (g + 1) * seg
            x = xs[n]
            _code_sums_i8(
                codes,
                t0,
                seg,
                x[0, t0:t1],
                x[1, t0:t1],
                x[2, t0:t1],
                x[3, t0:t1],
                x[4, t0:t1],
                r0,
                r1,
                sums,
            )
            add_group_int(total, sums, zeros, xsum, n, g, sc, r0, asym, has_offset)
        finish_rows(total, inv_s[n], bias, has_bias, relu, r0, y[n])


@njit(nogil=True)
def zeros_i8(codes, xs, r0, r1, zeros):
    """:func:`zeros_f32` for int8 activations (exact int32 sums)."""
    n_groups = zeros.shape[2]
    seg = codes.shape[1] // n_groups
    sums = np.empty(r1 - r0, np.int32)
    for n in range(xs.shape[0]):
        for g in range(n_groups):
            t0, t1 = g * seg, (g + 1) * seg
            x = xs[n]
            _zero_sums_i8(
                codes,
                t0,
                seg,
                x[0, t0:t1],
                x[1, t0:t1],
                x[2, t0:t1],
                x[3, t0:t1],
                x[4, t0:t1],
                r0,
                r1,
                sums,
            )
            zeros[n, r0:r1, g] = sums


@njit(nogil=True)
def gemv_f32(codes, x2d, dest, group, sc, asym, has_offset, bias, has_bias, relu, y):
    """A whole small GEMV on the calling thread in one call: lay ``x2d`` out as streams
    (:func:`~ternref.packed._gemm.scatter_f32`, with ``dest``/``group`` from the layout of
    :mod:`ternref.packed.kernels`), then :func:`zeros_f32` (asymmetric scales) and :func:`dot_f32`.
    Saves the separate calls' overhead where the product itself takes microseconds."""
    n = x2d.shape[0]
    m = sc.shape[1]
    n_groups = sc.shape[2]
    width = codes.shape[1] * STREAMS
    xs = np.empty((n, STREAMS, width // STREAMS), np.float32)
    xsum = np.empty((n, n_groups), np.float64)
    scatter_f32(x2d, dest, group, xs.reshape(n, width), xsum)
    zeros = np.zeros((n, m, n_groups) if asym else (0, 0, 0), np.float32)
    if asym:
        zeros_f32(codes, xs, 0, m, zeros)
    dot_f32(codes, xs, xsum, sc, zeros, asym, has_offset, bias, has_bias, relu, 0, m, y)


@njit(nogil=True)
def gemv_i8(codes, x2d, dest, group, sc, asym, has_offset, bias, has_bias, relu, y):
    """A whole small GEMV on the calling thread in one call: lay ``x2d`` out as streams
    (:func:`~ternref.packed._gemm.scatter_i8`, with ``dest``/``group`` from the layout of
    :mod:`ternref.packed.kernels`), then :func:`zeros_i8` (asymmetric scales) and :func:`dot_i8`.
    Saves the separate calls' overhead where the product itself takes microseconds."""
    n = x2d.shape[0]
    m = sc.shape[1]
    n_groups = sc.shape[2]
    width = codes.shape[1] * STREAMS
    xs = np.empty((n, STREAMS, width // STREAMS), np.int8)
    xsum = np.empty((n, n_groups), np.int64)
    inv_s = np.empty(n, np.float64)
    scatter_i8(x2d, dest, group, xs.reshape(n, width), xsum, inv_s)
    zeros = np.zeros((n, m, n_groups) if asym else (0, 0, 0), np.int32)
    if asym:
        zeros_i8(codes, xs, 0, m, zeros)
    dot_i8(codes, xs, xsum, inv_s, sc, zeros, asym, has_offset, bias, has_bias, relu, 0, m, y)


def _trits(codes_cols):
    """The five trit columns of a slice of packed bytes (int64)."""
    byte = codes_cols.astype(np.int64)
    return [((byte * p) & 255) * 3 >> 8 for p in POW3]


def dot_f32_numpy(codes, xs, xsum, sc, zeros, asym, has_offset, bias, has_bias, relu, r0, r1, y):
    """NumPy twin of :func:`dot_f32`: the same streams and sums, vectorised over the rows."""
    b = bias[r0:r1] if has_bias else None
    _dot_numpy(codes, xs.astype(np.float64), xsum, sc, zeros, asym, has_offset, b, relu, r0, r1,
               y, None)  # fmt: skip


def dot_i8_numpy(
    codes, xs, xsum, inv_s, sc, zeros, asym, has_offset, bias, has_bias, relu, r0, r1, y
):
    """NumPy twin of :func:`dot_i8` (int64 arithmetic: the same exact sums)."""
    b = bias[r0:r1] if has_bias else None
    _dot_numpy(codes, xs.astype(np.int64), xsum, sc, zeros, asym, has_offset, b, relu, r0, r1,
               y, inv_s)  # fmt: skip


def zeros_f32_numpy(codes, xs, r0, r1, zeros):
    """NumPy twin of :func:`zeros_f32` (and, with integer ``xs``, of :func:`zeros_i8`)."""
    n_groups = zeros.shape[2]
    seg = codes.shape[1] // n_groups
    wide = np.int64 if np.issubdtype(xs.dtype, np.integer) else np.float64
    for n in range(xs.shape[0]):
        for g in range(n_groups):
            trits = _trits(codes[r0:r1, g * seg : (g + 1) * seg])
            x = xs[n, :, g * seg : (g + 1) * seg].astype(wide)
            zeros[n, r0:r1, g] = sum((t & 1) @ x[s] for s, t in enumerate(trits))


zeros_i8_numpy = zeros_f32_numpy


def _dot_numpy(codes, xs, xsum, sc, zeros, asym, has_offset, bias, relu, r0, r1, y, inv_s):
    n_groups = sc.shape[2]
    seg = codes.shape[1] // n_groups
    rows = codes[r0:r1]
    for n in range(xs.shape[0]):
        yr = np.zeros(r1 - r0, np.float64)
        for g in range(n_groups):
            trits = _trits(rows[:, g * seg : (g + 1) * seg])
            x = xs[n, :, g * seg : (g + 1) * seg]  # (5, seg)
            q_sum = sum(t @ x[s] for s, t in enumerate(trits))
            z_sum = zeros[n, r0:r1, g].astype(q_sum.dtype) if asym else 0
            add_group_numpy(yr, q_sum, z_sum, xsum[n, g], sc[:, r0:r1, g], asym, has_offset)
        finish_rows_numpy(yr, 1.0 if inv_s is None else inv_s[n], bias, relu, y[n, r0:r1])


# ---------------------------------------------------------------------------------------------
# GEMM kernels: decode a tile of rows, then the shared tile products (as in ``i2``)
# ---------------------------------------------------------------------------------------------
@njit(nogil=True)
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
            byte = crow[b * 32 + j]  # narrow trits (_trit): 2.6x faster than in int32/int64
            t0 = _trit(byte, np.uint8(1))
            t1 = _trit(byte, np.uint8(3))
            t2 = _trit(byte, np.uint8(9))
            t3 = _trit(byte, np.uint8(27))
            t4 = _trit(byte, np.uint8(81))
            out_row[base + j] = v0 if t0 == 0 else (v1 if t0 == 1 else v2)
            out_row[base + 32 + j] = v0 if t1 == 0 else (v1 if t1 == 1 else v2)
            out_row[base + 64 + j] = v0 if t2 == 0 else (v1 if t2 == 1 else v2)
            out_row[base + 96 + j] = v0 if t3 == 0 else (v1 if t3 == 1 else v2)
            out_row[base + 128 + j] = v0 if t4 == 0 else (v1 if t4 == 1 else v2)


@njit(nogil=True)
def dequant_panels(codes, m, lut, wt):
    """Rows ``0 .. m - 1`` decoded to float32 as panels of 32 rows (``wt[p L + k, j]`` = value
    of weight ``(32 p + j, k)``, zero past ``m``), from the code bytes of 32 rows put side by
    side; as :func:`ternref.packed.i2.dequant_panels`, with the trit decode :func:`_trit`."""
    nbytes = codes.shape[1]
    length = nbytes * STREAMS
    seg = length // lut.shape[1]
    ct = np.zeros((nbytes, 32), np.uint8)
    v0 = np.empty(32, np.float32)
    v1 = np.empty(32, np.float32)
    v2 = np.empty(32, np.float32)
    for p in range(wt.shape[0] // length):
        rows = panel_code_bytes(codes, p, m, ct)
        for b in range(length // BLOCK):
            panel_values(lut, p, rows, b * BLOCK // seg, v0, v1, v2)
            for tb in range(32):
                cb = ct[32 * b + tb]
                k = p * length + b * BLOCK + tb  # weight column 32 s + tb of block b, trit s
                d0, d1, d2, d3, d4 = wt[k], wt[k + 32], wt[k + 64], wt[k + 96], wt[k + 128]
                for j in range(32):
                    byte = cb[j]
                    t0 = _trit(byte, np.uint8(1))
                    t1 = _trit(byte, np.uint8(3))
                    t2 = _trit(byte, np.uint8(9))
                    t3 = _trit(byte, np.uint8(27))
                    t4 = _trit(byte, np.uint8(81))
                    a0, a1, a2 = v0[j], v1[j], v2[j]
                    d0[j] = a0 if t0 == 0 else (a1 if t0 == 1 else a2)
                    d1[j] = a0 if t1 == 0 else (a1 if t1 == 1 else a2)
                    d2[j] = a0 if t2 == 0 else (a1 if t2 == 1 else a2)
                    d3[j] = a0 if t3 == 0 else (a1 if t3 == 1 else a2)
                    d4[j] = a0 if t4 == 0 else (a1 if t4 == 1 else a2)


@njit(nogil=True)
def gemm_f32(codes, xp, xt, lut, n_cols, bias, has_bias, relu, r0, r1, n0, n1, y):
    """As :func:`ternref.packed.i2.gemm_f32`, with this format's :func:`dequant_row`."""
    length = codes.shape[1] * STREAMS  # xp may stop at the last real column (one scale group)
    rows = f32_tile_rows(r1 - r0, length * 4)
    buf = tile_buffer(rows, length)
    for t0 in range(r0, r1, rows):
        nr = min(rows, r1 - t0)
        for i in range(nr):
            dequant_row(codes, t0 + i, lut, buf[i])
        tile_product_f32(xp, xt, buf, nr, y, t0, n0, n1, n_cols, bias, has_bias, relu)


@njit(nogil=True)
def gemm_i8(
    codes, xq, xsum, inv_s, sc, code_lut, abs_lut, asym, has_offset, n_cols, r0, r1, n0, n1, y
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
            dequant_row(codes, t0 + i, code_lut, buf[i])
            if asym:
                dequant_row(codes, t0 + i, abs_lut, abs_buf[i])
        if plain:  # exact sums straight into y, scaled once below
            tile_matmul_blocked(xq, buf, nr, y, t0, n0, n1, n_cols, NO_BIAS, False, False)
        else:
            tile_product_i8(xq, buf, abs_buf, nr, t0, n0, n1, xsum, inv_s, sc, asym, has_offset, y)
    if plain:
        scale_rows_i8(y, sc, inv_s, r0, r1, n0, n1)


# ---------------------------------------------------------------------------------------------
# int8 GEMM with byte dot products: tiles re-encoded as i2, multiplied by i2's kernels
# ---------------------------------------------------------------------------------------------
I2_TILE_GEMM_I8 = _vnni.AVAILABLE
"""Where ``i2``'s byte dot products run (AVX-512 VNNI or AVX2, :mod:`ternref.packed._vnni`) the
int8 GEMM (eight or more activation rows) runs :func:`gemm_i8_i2`: ``i2``'s 2-bit fields are
what ``vpdpbusd`` / ``vpmaddubsw`` multiply directly, and re-encoding a tile of trits costs a
few operations per weight, paid once per tile for every activation row. Elsewhere,
:func:`gemm_i8` (decoded float32 tiles) is used. On the Zen 2 VM (AVX2, 2026-12-08) batch 64
at 4096 took 18.5 ms this way, against 29.2 ms with :func:`gemm_i8` (``bench_kernels.py``)."""

I2_TILE_BYTES = 1 << 18
"""Bytes of one re-encoded tile (256 KiB of ``i2`` rows: 256 rows at ``K = 4096``, every row
of the MLP's 256 x 256 layer). Each tile ends in an epilogue per activation row over the tile's
outputs, which costs the same whatever the tile's width: with 32-row tiles the MLP's layer at
batch 359 took 0.35 ms, against 0.15 ms in one tile (measured 2026-12-03, AMD EPYC Zen 5)."""


@njit(nogil=True)
def to_i2_rows(codes, r0, r1, n_groups, out):
    """``out[r - r0]`` = row ``r`` in ``i2``'s byte layout (:mod:`ternref.packed.i2`: field
    ``2 s`` of byte ``32 b + j`` holds weight ``128 b + 32 s + j`` as ``q = c + 1``), with
    ``n_groups`` segments of ``4 out.shape[1] / n_groups`` weights (``i2``'s padding, code 0).

    Both formats keep weights in sub-blocks of 32 (``tq1``: trit ``n`` of the 32 bytes of block
    ``b`` holds weights ``160 b + 32 n ...``; ``i2``: field ``s`` of block ``b`` holds
    ``128 b + 32 s ...``), and every segment starts on a sub-block in both, so sub-block ``u``
    of a segment is copied lane by lane, trit ``t = c + 1`` into the field ``q = c + 1``. The
    real weights of a segment lie in the sub-blocks both segments have; the rest is padding."""
    sub_tq1 = codes.shape[1] * STREAMS // 32 // n_groups  # 32-weight sub-blocks per segment
    sub_i2 = out.shape[1] * i2.STREAMS // 32 // n_groups
    common = min(sub_tq1, sub_i2)
    for r in range(r0, r1):
        crow = codes[r]
        orow = out[r - r0]
        for g in range(n_groups):
            a_seg = g * sub_tq1
            for b in range(sub_i2 // i2.STREAMS):  # i2 block b of the segment: four sub-blocks
                u = b * i2.STREAMS
                dst = orow[(g * sub_i2 + u) // i2.STREAMS * 32 :][:32]
                if u + i2.STREAMS <= common:
                    _four_subblocks(crow, a_seg + u, dst)
                else:  # the segment's last block, partly past tq1's segment: code 0 there
                    _four_subblocks_tail(crow, a_seg + u, common - u, dst)


_POW3_U8 = np.array(POW3, np.uint8)
"""``3^n`` as uint8 for :func:`_trit`: an array, not the tuple :data:`POW3` (indexed by a
run-time ``n``, the tuple kept :func:`to_i2_rows` at 2 G weights/s, the array at 13)."""


@njit(nogil=True)
def _four_subblocks(crow, a, dst):
    """``dst[j]`` = the i2 byte of the tq1 sub-blocks ``a .. a + 3`` of ``crow``, lane ``j``."""
    s0 = crow[a // STREAMS * 32 :][:32]
    s1 = crow[(a + 1) // STREAMS * 32 :][:32]
    s2 = crow[(a + 2) // STREAMS * 32 :][:32]
    s3 = crow[(a + 3) // STREAMS * 32 :][:32]
    p0 = _POW3_U8[a % STREAMS]
    p1 = _POW3_U8[(a + 1) % STREAMS]
    p2 = _POW3_U8[(a + 2) % STREAMS]
    p3 = _POW3_U8[(a + 3) % STREAMS]
    for j in range(32):
        dst[j] = np.uint8(
            _trit(s0[j], p0) | (_trit(s1[j], p1) << 2) | (_trit(s2[j], p2) << 4)
            | (_trit(s3[j], p3) << 6)
        )  # fmt: skip


@njit(nogil=True)
def _four_subblocks_tail(crow, a, present, dst):
    """:func:`_four_subblocks` when only the first ``present`` of the four exist in ``tq1``
    (the others are padding: field ``q = 1``)."""
    for j in range(32):
        v = np.uint8(0)
        for s in range(i2.STREAMS):
            t = np.uint8(1)
            if s < present:
                t = _trit(crow[(a + s) // STREAMS * 32 + j], _POW3_U8[(a + s) % STREAMS])
            v |= np.uint8(t << np.uint8(2 * s))
        dst[j] = v


def to_i2_rows_numpy(codes, r0, r1, n_groups, width):
    """NumPy twin of :func:`to_i2_rows`: decode the rows, move every segment's weights to
    ``i2``'s segments of ``width / n_groups`` (code 0 elsewhere), encode as ``i2``."""
    c = decode({"codes": codes[r0:r1]}).reshape(r1 - r0, n_groups, -1)
    seg_i2 = width // n_groups
    out = np.zeros((r1 - r0, n_groups, seg_i2), np.int8)
    common = min(seg_i2, c.shape[2])
    out[:, :, :common] = c[:, :, :common]
    return i2.encode(out.reshape(r1 - r0, width))["codes"]


@njit(nogil=True)
def gemm_i8_i2(
    codes, xs, xsum, inv_s, sc, zeros, asym, has_offset, bias, has_bias, relu, r0, r1, y
):  # fmt: skip
    """Rows ``r0 .. r1 - 1`` of the int8 product from activation streams ``xs`` (N, 4, L2/4)
    in ``i2``'s layout: each tile of rows (:data:`I2_TILE_BYTES`) is re-encoded
    (:func:`to_i2_rows`) and multiplied by :func:`ternref.packed.i2.dot_i8_rows` (and, for
    asymmetric scales, :func:`ternref.packed.i2.zeros_i8_rows`). The sums are the exact
    integers of :func:`gemm_i8` and the epilogue the same float64 operations, so the result
    equals this format's twin bit for bit."""
    n_groups = sc.shape[2]
    rows = min(max(r1 - r0, 1), max(4, I2_TILE_BYTES // xs.shape[2] // 4 * 4))
    tile = np.empty((rows, xs.shape[2]), np.uint8)
    for t0 in range(r0, r1, rows):
        t1 = min(r1, t0 + rows)
        part = tile[: t1 - t0]
        to_i2_rows(codes, t0, t1, n_groups, part)
        if asym:
            i2.zeros_i8_rows(part, t0, xs, t0, t1, zeros)
        i2.dot_i8_rows(part, t0, xs, xsum, inv_s, sc, zeros, asym, has_offset, bias, has_bias,
                       relu, t0, t1, y)  # fmt: skip


@njit(nogil=True)
def conv_f32(codes, lut, xflat, src, geo, bias, has_bias, relu, p0, p1, y):
    """Output positions ``p0 .. p1 - 1`` of the convolution (float32 activations), without an
    im2col matrix: gather blocks of receptive fields, multiply them by decoded tiles of weight
    rows (:func:`dequant_row`, :func:`~ternref.packed._gemm.tile_matmul_act`), store NCHW
    (:mod:`ternref.packed._conv`)."""
    length = src.shape[0]
    n_cols = product_columns(geo, length)  # the real columns of one-group weights
    m = lut.shape[0]
    rows = conv_tile_rows(m, 4 * length)
    buf = np.empty((rows, length), np.float32)
    block = np.empty((X_BLOCK, length), np.float32)
    out = np.empty((X_BLOCK, m), np.float32)
    if rows >= m:  # one tile holds every row: decode it once
        for i in range(m):
            dequant_row(codes, i, lut, buf[i])
    for q0 in range(p0, p1, X_BLOCK):
        nq = min(X_BLOCK, p1 - q0)
        gather_f32(xflat, src, geo, q0, nq, block)
        for t0 in range(0, m, rows):
            nr = min(rows, m - t0)
            if rows < m:
                for i in range(nr):
                    dequant_row(codes, t0 + i, lut, buf[i])
            tile_matmul_act(block[:nq], buf, nr, out, t0, n_cols, NO_BIAS, False, False)
        store_nchw(out, nq, q0, geo, bias, has_bias, relu, y)


@njit(nogil=True)
def conv_i8(
    codes, sc, code_lut, abs_lut, asym, has_offset, xflat, src, geo, bias, has_bias, relu, p0, p1, y
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
                    dequant_row(codes, t0 + i, code_lut, buf[i])
                    if asym:
                        dequant_row(codes, t0 + i, abs_lut, abs_buf[i])
            if plain:  # exact sums straight into out, scaled once below
                tile_matmul_act(block[:nq], buf, nr, out[:nq], t0, n_cols, NO_BIAS, False, False)
            else:
                tile_product_i8(
                    block[:nq], buf, abs_buf, nr, t0, 0, nq, xsum, inv_s, sc, asym, has_offset, out
                )
        if plain:
            scale_rows_i8(out, sc, inv_s, 0, m, 0, nq)
        store_nchw(out, nq, q0, geo, bias, has_bias, relu, y)


def dequant_tile_numpy(codes, r0, lut, out):
    """NumPy twin of :func:`dequant_row` for the rows ``r0 .. r0 + len(out) - 1``."""
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
