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

from ternref._jit import njit
from ternref.packed import _vnni
from ternref.packed._conv import X_BLOCK, gather_f32, product_columns, store_nchw
from ternref.packed._gemm import (
    INT8_MAX,
    NO_BIAS,
    REASSOC,
    absmax_bits,
    add_group,
    add_group_int,
    add_group_numpy,
    conv_tile_rows,
    f32_tile_rows,
    finish_plain_f32,
    finish_plain_i8,
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

if _vnni.AVAILABLE:
    from ternref.packed._vnni import (
        i2_field_block,
        i2_field_dot,
        i2_field_dot_4acts,
        i2_field_dot_4rows,
    )

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
# GEMV kernels (a few rows of x): straight from the packed bytes, on activation streams
# ---------------------------------------------------------------------------------------------
STREAMS = 4
"""Sub-blocks per block: byte ``t`` of a row holds one weight of each of the 4 streams."""


def stream_index(l):
    """``(s, t)`` of padded column ``l``: weight ``l`` is decoded from byte ``t`` at bits
    ``2 s``, so activation ``x[l]`` goes to stream ``s``, position ``t``
    (``t = 32 (l // 128) + l % 32``, ``s = (l % 128) // 32``)."""
    return (l % BLOCK) // 32, 32 * (l // BLOCK) + l % 32


@njit(nogil=True)
def _field(byte, shift, mask):
    """The 2-bit (or, with ``mask`` 1, low-bit) field of ``byte`` at bit ``shift``, kept uint8:
    without the cast Numba computes it in int64, and LLVM then widens every byte to 64-bit lanes
    and converts with ``vcvtqq2ps`` (eight lanes an instruction) instead of ``vpmovzxbd`` +
    ``vcvtdq2ps`` (sixteen): the float32 code sums ran 1.4-1.9x faster with the cast (256 x 256
    to 4096 x 4096, measured 2026-12-03, AMD EPYC Zen 5; the same sums, bit for bit)."""
    return np.uint8((byte >> shift) & mask)


@njit(nogil=True, fastmath=REASSOC)
def _code_sums_f32(codes, t0, seg, x0, x1, x2, x3, r0, r1, out):
    """``out[r - r0] = Q = sum_t sum_s q_s(byte t) x_s[t]`` over bytes ``t0 .. t0 + seg - 1`` of
    rows ``r0 .. r1 - 1``, with ``q_s = (byte >> 2 s) & 3`` (``q = c + 1``): one reduction over
    contiguous streams per row, which LLVM vectorizes (``fastmath`` allows the reassociation)."""
    three = np.uint8(3)
    for r in range(r0, r1):
        cr = codes[r, t0 : t0 + seg]
        acc = np.float32(0.0)
        for t in range(seg):
            b = cr[t]
            acc += (
                np.float32(_field(b, np.uint8(0), three)) * x0[t]
                + np.float32(_field(b, np.uint8(2), three)) * x1[t]
                + np.float32(_field(b, np.uint8(4), three)) * x2[t]
                + np.float32(_field(b, np.uint8(6), three)) * x3[t]
            )
        out[r - r0] = acc


@njit(nogil=True, fastmath=REASSOC)
def _zero_sums_f32(codes, t0, seg, x0, x1, x2, x3, r0, r1, out):
    """``out[r - r0] = Z = sum_{c = 0} x``: the low bit of a 2-bit field is ``[q = 1]``."""
    one = np.uint8(1)
    for r in range(r0, r1):
        cr = codes[r, t0 : t0 + seg]
        acc = np.float32(0.0)
        for t in range(seg):
            b = cr[t]
            acc += (
                np.float32(_field(b, np.uint8(0), one)) * x0[t]
                + np.float32(_field(b, np.uint8(2), one)) * x1[t]
                + np.float32(_field(b, np.uint8(4), one)) * x2[t]
                + np.float32(_field(b, np.uint8(6), one)) * x3[t]
            )
        out[r - r0] = acc


@njit(nogil=True)
def _code_sums_i8(codes, t0, seg, x0, x1, x2, x3, r0, r1, out):
    """:func:`_code_sums_f32` for int8 streams, exact in int32 (``out`` int32); the plain loop
    that runs where :mod:`ternref.packed._vnni` cannot (neither AVX-512 VNNI nor AVX2). The
    operands have at most 2 and 8 bits, and LLVM turns ``sum int32(q) * int32(x)`` into ``vpmaddwd``
    (``vpdpwssd`` where the CPU has AVX-512 VNNI or AVX-VNNI): multiply-adds of 16-bit pairs
    into 32-bit lanes; the int32 store is what lets it narrow the (int64) Python sum."""
    for r in range(r0, r1):
        cr = codes[r, t0 : t0 + seg]
        acc = 0
        for t in range(seg):
            b = cr[t]
            acc += np.int32(b & np.uint8(3)) * np.int32(x0[t])
            acc += np.int32((b >> np.uint8(2)) & np.uint8(3)) * np.int32(x1[t])
            acc += np.int32((b >> np.uint8(4)) & np.uint8(3)) * np.int32(x2[t])
            acc += np.int32(b >> np.uint8(6)) * np.int32(x3[t])
        out[r - r0] = acc


@njit(nogil=True)
def _zero_sums_i8(codes, t0, seg, x0, x1, x2, x3, r0, r1, out):
    """:func:`_zero_sums_f32` for int8 streams (exact, int32)."""
    for r in range(r0, r1):
        cr = codes[r, t0 : t0 + seg]
        acc = 0
        for t in range(seg):
            b = cr[t]
            acc += np.int32(b & np.uint8(1)) * np.int32(x0[t])
            acc += np.int32((b >> np.uint8(2)) & np.uint8(1)) * np.int32(x1[t])
            acc += np.int32((b >> np.uint8(4)) & np.uint8(1)) * np.int32(x2[t])
            acc += np.int32((b >> np.uint8(6)) & np.uint8(1)) * np.int32(x3[t])
        out[r - r0] = acc


@njit(nogil=True)
def dot_f32(codes, xs, xsum, sc, zeros, asym, has_offset, bias, has_bias, relu, r0, r1, y):
    """``y[n, r]`` for rows ``r0 <= r < r1`` from the packed bytes, float32 activations.

    Parameters
    ----------
    codes : uint8 (M, L/4)
        Packed rows; every scale group padded to ``seg`` (a multiple of 128) weights.
    xs : float32 (N, 4, L/4)
        Activation streams: ``xs[n, s, t]`` multiplies the 2-bit field ``s`` of byte ``t``
        (see :func:`stream_index`; zeros in the padding).
    xsum : float64 (N, G)
        ``sum(x)`` over each group (the ``- sum x`` of the i2 identity, and the offset term).
    sc : float64 (3, M, G)
        ``alpha_pos``, ``alpha_neg`` and ``offset`` of row r, group g (offset all zero if none).
    zeros : float32 (N, M, G)
        For asymmetric scales, ``Z = sum [c = 0] x`` (:func:`zeros_f32`); ignored otherwise.
    asym, has_offset : bool
    bias : float32 (M,), has_bias : bool, relu : bool
        Added after the product (float32), then ReLU when ``relu``.
    r0, r1 : int
        The rows this call computes.
    y : float32 (N, M)
        Output; columns ``r0 .. r1 - 1`` are overwritten.

    Per group: ``Q = sum q x`` (:func:`_code_sums_f32`), then ``sum c x = Q - sum x`` and, with
    ``Z``, ``sum |c| x = sum x - Z`` give the group's value (:mod:`ternref.packed._gemm`). The
    row loop lives in a helper per (activation row, group) so that each stream slice is made
    once; a second reduction in the same loop (``Z``) made LLVM give up the vectorization,
    hence the separate :func:`zeros_f32`.
    """
    n_groups = sc.shape[2]
    seg = codes.shape[1] // n_groups  # bytes per group
    sums = np.empty(r1 - r0, np.float32)
    total = np.empty(r1 - r0, np.float64)
    plain = n_groups == 1 and not asym and not has_offset
    alpha = sc[0, r0:r1, 0].copy()  # contiguous: the epilogue vectorizes (finish_plain_f32)
    for n in range(xs.shape[0]):
        if plain:  # the common case: one pass, the same float64 operations
            x = xs[n]
            _code_sums_f32(codes, 0, seg, x[0], x[1], x[2], x[3], r0, r1, sums)
            finish_plain_f32(sums, xsum[n, 0], alpha, bias, has_bias, relu, r0, y[n])
            continue
        total[:] = 0.0
        for g in range(n_groups):
            t0, t1 = g * seg, (g + 1) * seg
            x = xs[n]
            _code_sums_f32(codes, t0, seg, x[0, t0:t1], x[1, t0:t1], x[2, t0:t1], x[3, t0:t1],
                           r0, r1, sums)  # fmt: skip
            add_group(total, sums, zeros, xsum, n, g, sc, r0, asym, has_offset)
        finish_rows(total, 1.0, bias, has_bias, relu, r0, y[n])


@njit(nogil=True)
def zeros_f32(codes, xs, r0, r1, zeros):
    """``zeros[n, r, g] = sum_{c = 0} x`` over group g of row r (``r0 <= r < r1``): what
    asymmetric scales need besides ``Q``."""
    n_groups = zeros.shape[2]
    seg = codes.shape[1] // n_groups
    sums = np.empty(r1 - r0, np.float32)
    for n in range(xs.shape[0]):
        for g in range(n_groups):
            t0, t1 = g * seg, (g + 1) * seg
            x = xs[n]
            _zero_sums_f32(codes, t0, seg, x[0, t0:t1], x[1, t0:t1], x[2, t0:t1], x[3, t0:t1],
                           r0, r1, sums)  # fmt: skip
            zeros[n, r0:r1, g] = sums


ROWS_PER_PASS = 4 if _vnni.AVAILABLE else 1
"""Activation rows :func:`dot_i8` multiplies per pass over the codes: 4 with the byte dot
products (:func:`ternref.packed._vnni.i2_field_block`: each decoded byte serves four activation
rows and each loaded activation vector four weight rows), else 1."""

STREAM_GEMM_I8 = _vnni.AVAILABLE
"""True when :func:`dot_i8` should also run the int8 products of large batches (with
``vpdpbusd``, or ``vpmaddubsw`` on AVX2, it beats the float32 tile product of :func:`gemm_i8`;
see :func:`ternref.packed.kernels.product`; on the Zen 2 VM, 2026-12-08, batch 64 at 4096:
12.4 ms against 39.2 ms, ``bench_kernels.py``)."""

if _vnni.AVAILABLE:

    @njit(nogil=True)
    def _field_sums_i8(codes, xs, n0, nb, t0, seg, mask, r0, r1, sums):
        """``sums[i, r - r0] = sum_t sum_s ((byte_t >> 2 s) & mask) x_s[t]`` of activation rows
        ``n0 + i < n0 + nb`` over bytes ``t0 .. t0 + seg - 1`` of rows ``r0 .. r1 - 1``: ``Q``
        with ``mask = 3``, ``Z`` with ``mask = 1``. Here with ``vpdpbusd``
        (:mod:`ternref.packed._vnni`): blocks of four weight rows by four activation rows when
        ``nb == 4`` (:func:`~ternref.packed._vnni.i2_field_block`), else four weight rows per
        pass against each activation row."""
        r4 = r0 + (r1 - r0) // 4 * 4
        if nb == 4:
            for r in range(r0, r4, 4):  # 4 weight rows x 4 activation rows per pass
                i2_field_block(codes, r, t0, seg, xs, n0, mask, sums, r - r0)
            for r in range(r4, r1):
                s0, s1, s2, s3 = i2_field_dot_4acts(codes, r, t0, seg, xs, n0, mask)
                sums[0, r - r0] = s0
                sums[1, r - r0] = s1
                sums[2, r - r0] = s2
                sums[3, r - r0] = s3
            return
        for i in range(nb):
            out = sums[i]
            for r in range(r0, r4, 4):
                s0, s1, s2, s3 = i2_field_dot_4rows(codes, r, t0, seg, xs, n0 + i, mask)
                out[r - r0] = s0
                out[r - r0 + 1] = s1
                out[r - r0 + 2] = s2
                out[r - r0 + 3] = s3
            for r in range(r4, r1):
                out[r - r0] = i2_field_dot(codes, r, t0, seg, xs, n0 + i, mask)

else:

    @njit(nogil=True)
    def _field_sums_i8(codes, xs, n0, nb, t0, seg, mask, r0, r1, sums):
        """The plain-loop form of the ``vpdpbusd`` kernel (same contract): one activation row
        at a time, :func:`_code_sums_i8` (``mask = 3``) or :func:`_zero_sums_i8` (``mask = 1``)."""
        t1 = t0 + seg
        for i in range(nb):
            x = xs[n0 + i]
            if mask == 3:
                _code_sums_i8(codes, t0, seg, x[0, t0:t1], x[1, t0:t1], x[2, t0:t1], x[3, t0:t1],
                              r0, r1, sums[i])  # fmt: skip
            else:
                _zero_sums_i8(codes, t0, seg, x[0, t0:t1], x[1, t0:t1], x[2, t0:t1], x[3, t0:t1],
                              r0, r1, sums[i])  # fmt: skip


@njit(nogil=True)
def dot_i8(codes, xs, xsum, inv_s, sc, zeros, asym, has_offset, bias, has_bias, relu, r0, r1, y):
    """:func:`dot_f32` for int8 activations: exact integer sums, then the float64 epilogue.

    ``xs`` int8 (N, 4, L/4), ``xsum`` int64 (N, G) and ``zeros`` int32 (:func:`zeros_i8`) as in
    :func:`dot_f32`; ``inv_s`` float64 (N,) rescales row n (``x ~= xq * inv_s``). The sums
    (:func:`_field_sums_i8`: ``vpdpbusd`` where the CPU has AVX-512 VNNI, ``vpmaddubsw`` where
    it has AVX2, else :func:`_code_sums_i8`) are exact in int32 for rows shorter than 2^22 weights
    (``|q x| <= 254``; :func:`ternref.packed.pack` refuses longer rows). Activation rows go
    :data:`ROWS_PER_PASS` at a time.
    """
    dot_i8_rows(codes, 0, xs, xsum, inv_s, sc, zeros, asym, has_offset, bias, has_bias, relu,
                r0, r1, y)  # fmt: skip


@njit(nogil=True)
def dot_i8_rows(
    codes, c0, xs, xsum, inv_s, sc, zeros, asym, has_offset, bias, has_bias, relu, r0, r1, y
):
    """:func:`dot_i8` where ``codes`` holds weight rows from ``c0`` on only (row ``r`` is
    ``codes[r - c0]``; ``sc``, ``zeros``, ``bias`` and ``y`` are indexed by ``r``): what
    :func:`ternref.packed.tq1.gemm_i8_i2` runs on each tile of rows it re-encodes as ``i2``."""
    n_groups = sc.shape[2]
    seg = codes.shape[1] // n_groups
    step = ROWS_PER_PASS
    sums = np.empty((step, r1 - r0), np.int32)
    total = np.empty((step, r1 - r0), np.float64)
    plain = n_groups == 1 and not asym and not has_offset
    alpha = sc[0, r0:r1, 0].copy()  # contiguous: the epilogue vectorizes (finish_plain_i8)
    for n0 in range(0, xs.shape[0], step):
        nb = min(step, xs.shape[0] - n0)
        if plain:  # the common case: one pass, the same float64 operations
            _field_sums_i8(codes, xs, n0, nb, 0, seg, 3, r0 - c0, r1 - c0, sums)
            for i in range(nb):
                n = n0 + i
                finish_plain_i8(
                    sums[i], xsum[n, 0], alpha, inv_s[n], bias, has_bias, relu, r0, y[n]
                )
            continue
        total[:] = 0.0
        for g in range(n_groups):
            _field_sums_i8(codes, xs, n0, nb, g * seg, seg, 3, r0 - c0, r1 - c0, sums)
            for i in range(nb):
                add_group_int(total[i], sums[i], zeros, xsum, n0 + i, g, sc, r0, asym, has_offset)
        for i in range(nb):
            finish_rows(total[i], inv_s[n0 + i], bias, has_bias, relu, r0, y[n0 + i])


@njit(nogil=True)
def zeros_i8(codes, xs, r0, r1, zeros):
    """:func:`zeros_f32` for int8 activations (exact int32 sums, :func:`_field_sums_i8`)."""
    zeros_i8_rows(codes, 0, xs, r0, r1, zeros)


@njit(nogil=True)
def zeros_i8_rows(codes, c0, xs, r0, r1, zeros):
    """:func:`zeros_i8` where ``codes`` holds weight rows from ``c0`` on (as in
    :func:`dot_i8_rows`)."""
    n_groups = zeros.shape[2]
    seg = codes.shape[1] // n_groups
    sums = np.empty((1, r1 - r0), np.int32)
    for n in range(xs.shape[0]):
        for g in range(n_groups):
            _field_sums_i8(codes, xs, n, 1, g * seg, seg, 1, r0 - c0, r1 - c0, sums)
            zeros[n, r0:r1, g] = sums[0]


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


def _fields(codes_rows, sub, mask):
    """``(codes >> 2 sub) & mask`` as int64: the 2-bit field ``sub`` of every byte."""
    return (codes_rows.astype(np.int64) >> (2 * sub)) & mask


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
            part = codes[r0:r1, g * seg : (g + 1) * seg]
            x = xs[n, :, g * seg : (g + 1) * seg].astype(wide)
            zeros[n, r0:r1, g] = sum(_fields(part, s, 1) @ x[s] for s in range(STREAMS))


zeros_i8_numpy = zeros_f32_numpy


def _dot_numpy(codes, xs, xsum, sc, zeros, asym, has_offset, bias, relu, r0, r1, y, inv_s):
    n_groups = sc.shape[2]
    seg = codes.shape[1] // n_groups
    rows = codes[r0:r1]
    for n in range(xs.shape[0]):
        yr = np.zeros(r1 - r0, np.float64)
        for g in range(n_groups):
            part = rows[:, g * seg : (g + 1) * seg]
            x = xs[n, :, g * seg : (g + 1) * seg]  # (4, seg)
            q_sum = sum(_fields(part, s, 3) @ x[s] for s in range(STREAMS))
            z_sum = zeros[n, r0:r1, g].astype(q_sum.dtype) if asym else 0
            add_group_numpy(yr, q_sum, z_sum, xsum[n, g], sc[:, r0:r1, g], asym, has_offset)
        finish_rows_numpy(yr, 1.0 if inv_s is None else inv_s[n], bias, relu, y[n, r0:r1])


# ---------------------------------------------------------------------------------------------
# GEMM kernels (many rows of x): decode a tile of rows, then a register-blocked product
# ---------------------------------------------------------------------------------------------
@njit(nogil=True)
def dequant_row(codes, r, lut, out_row):
    """Write row ``r`` as values into ``out_row`` (L,); ``lut`` (M, G, 3) holds the values of
    codes -1, 0, +1 (float32 ``offset - alpha_neg``, ``offset``, ``offset + alpha_pos`` for the
    float GEMM; int8 ``-1, 0, 1`` or ``1, 0, 1`` for the int8 GEMM)."""
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


@njit(nogil=True)
def dequant_panels(codes, m, lut, wt):
    """Rows ``0 .. m - 1`` decoded to float32 in the panel layout the AVX-512 block loads its
    vectors from (:func:`ternref.packed._f32_block.transpose_activations`): ``wt[p L + k, j]`` =
    value of weight ``(32 p + j, k)``, zero for rows past ``m``; ``lut`` as in
    :func:`dequant_row`. The code bytes of 32 rows are first put side by side (``ct[t, j]``),
    so that each field decoded fills 32 consecutive floats of a panel: decoding rows and then
    transposing the floats took 2.6x as long on LeNet-5's second convolution (37 against 14 us
    in ``tq1``, measured 2026-12-03)."""
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
                k = p * length + b * BLOCK + tb  # weight column 32 s + tb of block b, stream s
                d0, d1, d2, d3 = wt[k], wt[k + 32], wt[k + 64], wt[k + 96]
                for j in range(32):
                    q = cb[j]
                    q0 = np.uint8(q & np.uint8(3))
                    q1 = np.uint8((q >> np.uint8(2)) & np.uint8(3))
                    q2 = np.uint8((q >> np.uint8(4)) & np.uint8(3))
                    q3 = np.uint8(q >> np.uint8(6))
                    a0, a1, a2 = v0[j], v1[j], v2[j]
                    d0[j] = a0 if q0 == 0 else (a1 if q0 == 1 else a2)
                    d1[j] = a0 if q1 == 0 else (a1 if q1 == 1 else a2)
                    d2[j] = a0 if q2 == 0 else (a1 if q2 == 1 else a2)
                    d3[j] = a0 if q3 == 0 else (a1 if q3 == 1 else a2)


@njit(nogil=True)
def gemm_f32(codes, xp, xt, lut, n_cols, bias, has_bias, relu, r0, r1, n0, n1, y):
    """``y[n0:n1, r0:r1] = act(xp[n0:n1] @ W_hat[r0:r1].T + bias)`` (float32): decode tiles of
    rows into a float32 buffer (:func:`dequant_row`), multiply
    (:func:`~ternref.packed._gemm.tile_product_f32`: the AVX-512 block on ``xt``, the
    transposed activations, else the plain 4 x 4 loop on ``xp``; bias and ReLU in its stores)."""
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
    """:func:`dot_i8` for many rows of ``xq`` (the quantized activations as float32 integers,
    (N, L), padded layout): decode tiles of rows into their codes (``code_lut``; and ``|c|``
    with ``abs_lut`` when asymmetric), then :func:`~ternref.packed._gemm.tile_product_i8`
    (exact group sums, float64 epilogue)."""
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


@njit(nogil=True)
def _quantize_to_streams(block, nq, seg, xs, xsum, inv_s):
    """:func:`~ternref.packed._gemm.quantize_rows` of rows ``0 .. nq-1`` of ``block`` (padded
    layout, float32; left unchanged), written straight into the int8 activation streams ``xs``
    (N, 4, L/4): padded column ``l`` goes to stream ``(l % 128) // 32``, position
    ``32 (l // 128) + l % 32`` (:func:`stream_index`). The same float32 absmax scale and
    half-to-even rounding as ``quantize_rows``, bit for bit; the group sums ``xsum`` are then
    int32 sums of the streams (a segment of ``seg`` columns, a multiple of :data:`BLOCK`, is
    ``seg / 4`` positions of every stream). One pass that rounds and lays out, instead of
    rounding in place and copying: 2.1x faster on LeNet-5's 896-column receptive fields
    (measured 2026-12-02, AMD EPYC Zen 5)."""
    length = block.shape[1]
    cell = np.empty(1, np.int32)  # reinterprets the bits of max |x| as a float32
    as_float = cell.view(np.float32)
    per_segment = seg // STREAMS
    for q in range(nq):
        row = block[q]
        cell[0] = absmax_bits(row)
        amax = as_float[0]
        scale = np.float32(INT8_MAX) / amax if amax > 0 else np.float32(0.0)
        inv_s[q] = np.float64(amax) / INT8_MAX
        for s in range(STREAMS):
            stream = xs[q, s]
            for b in range(length // BLOCK):
                part = row[BLOCK * b + 32 * s : BLOCK * b + 32 * s + 32]
                dest = stream[32 * b : 32 * b + 32]
                for j in range(32):
                    v = min(max(np.rint(part[j] * scale), np.float32(-INT8_MAX)),
                            np.float32(INT8_MAX))  # fmt: skip
                    dest[j] = np.int8(np.int32(v))
        for g in range(length // seg):
            total = np.int64(0)
            for s in range(STREAMS):
                part = xs[q, s, g * per_segment : (g + 1) * per_segment]
                partial = np.int32(0)  # at most 127 * 2^20: no overflow (rows < 2^22 weights)
                for t in range(part.shape[0]):
                    partial += np.int32(part[t])
                total += partial
            xsum[q, g] = total


@njit(nogil=True)
def conv_i8_streams(
    codes, sc, code_lut, abs_lut, asym, has_offset, xflat, src, geo, bias, has_bias, relu, p0, p1, y
):
    """:func:`conv_i8` on the packed bytes (used where :data:`STREAM_GEMM_I8`, i.e. with
    ``vpdpbusd``): each block of receptive fields is gathered and quantized as in
    :func:`conv_i8`, copied into the int8 activation streams of the GEMV kernels
    (:func:`_quantize_to_streams`) and multiplied by :func:`dot_i8`: no decoded tile of weights.
    The same exact integer sums and float64 epilogue as :func:`conv_i8` (its twin is the same),
    then the float32 bias and ReLU of :func:`~ternref.packed._conv.store_nchw`. ``code_lut`` and
    ``abs_lut`` are unused (same signature as :func:`conv_i8`). Measured on LeNet-5's second
    convolution (2026-12-02, AMD EPYC Zen 5): 0.087 ms at batch 1 against 0.114 ms for
    :func:`conv_i8` (one thread), 53 ms against 66 ms at batch 1000 (two threads)."""
    length = src.shape[0]
    m = sc.shape[1]
    n_groups = sc.shape[2]
    seg = length // n_groups
    per_stream = length // STREAMS
    block = np.empty((X_BLOCK, length), np.float32)
    xs = np.empty((X_BLOCK, STREAMS, per_stream), np.int8)
    xsum = np.empty((X_BLOCK, n_groups), np.int64)
    inv_s = np.empty(X_BLOCK, np.float64)
    zeros = np.empty((X_BLOCK if asym else 0, m if asym else 0, n_groups), np.int32)
    out = np.empty((X_BLOCK, m), np.float32)
    no_bias = np.zeros(0, np.float32)
    for q0 in range(p0, p1, X_BLOCK):
        nq = min(X_BLOCK, p1 - q0)
        gather_f32(xflat, src, geo, q0, nq, block)
        _quantize_to_streams(block, nq, seg, xs, xsum, inv_s)
        if asym:
            zeros_i8(codes, xs[:nq], 0, m, zeros[:nq])
        dot_i8(codes, xs[:nq], xsum, inv_s, sc, zeros, asym, has_offset, no_bias, False, False,
               0, m, out)  # fmt: skip
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
        for s in range(4):
            q = ((codes[rows, b * 32 : b * 32 + 32] >> (2 * s)) & 3).astype(np.intp)
            out[:, base + 32 * s : base + 32 * s + 32] = np.take_along_axis(lut[rows, g, :], q, 1)
