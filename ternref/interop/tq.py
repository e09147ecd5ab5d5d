"""llama.cpp's ternary block types TQ2_0 and TQ1_0, built from ternref's own packed encoders.

Both types cut every row of a tensor into blocks of ``QK = 256`` consecutive weights and give
each block one fp16 scale ``d``: weight ``w`` of a block is ``d * c_w`` with ``c_w`` in
{-1, 0, +1}. This module needs no ``gguf`` import: it turns ternref codes and scales into the
bytes of such blocks and back, and :mod:`ternref.interop.gguf_io` hands those bytes to the
``gguf`` library's writer. The tests check every byte against ``gguf.quants``' own quantizer
and dequantizer.

TQ2_0: 66 bytes per 256 weights (2.0625 bits per weight)
--------------------------------------------------------
::

    | qs: 64 bytes                                                  | d: fp16 (2 bytes, LE) |
    | i2 block of weights 0..127    | i2 block of weights 128..255  |                       |
    | bytes 0..31                   | bytes 32..63                  | bytes 64..65          |

    byte 32 h + j (h = 0, 1; j = 0..31), bits 2 s .. 2 s + 1 (s = 0..3, least significant
    first) = q = c + 1 of weight 128 h + 32 s + j

The 64 code bytes are exactly two consecutive 128-weight blocks of ternref's ``i2`` format
(:mod:`ternref.packed.i2`: same code ``q = c + 1``, same 32-lane interleave, same bit order), so
:func:`encode` calls :func:`ternref.packed.i2.encode` for them and :func:`decode` calls
:func:`ternref.packed.i2.decode` (which refuses the unused pattern ``0b11``; ggml would read it
as +2).

TQ1_0: 54 bytes per 256 weights (1.6875 bits per weight)
--------------------------------------------------------
::

    | qs part 1: 32 bytes | qs part 2: 16 bytes | qh: 4 bytes     | d: fp16 (2 bytes, LE) |
    | weights 0..159      | weights 160..239    | weights 240..255|                       |
    | bytes 0..31         | bytes 32..47        | bytes 48..51    | bytes 52..53          |

    part 1: byte j (0..31) holds the 5 trits of weights j + 32 n,        n = 0..4
    part 2: byte j (0..15) holds the 5 trits of weights 160 + j + 16 n,  n = 0..4
    qh:     byte j (0..3)  holds the 4 trits of weights 240 + j + 4 n,   n = 0..3

Every byte stores the trits ``t_n = c + 1`` as the base-3 number
``v = 81 t_0 + 27 t_1 + 9 t_2 + 3 t_3 + t_4`` (trit 0 most significant; ``qh`` bytes have no
``t_4``, i.e. ``t_4 = 0``) in the fixed-point form ``byte = ceil(256 v / 243)``, decoded with
``t_n = ((byte * 3**n) mod 256 * 3) >> 8``. Part 1 is exactly one 160-weight block of ternref's
``tq1`` format (:mod:`ternref.packed.tq1`), so :func:`encode` calls
:func:`ternref.packed.tq1.encode` for it; parts 2 and 3 are the same byte code with 16 and 4
lanes instead of 32 (:func:`encode_trits`).

Scales and the row layout
-------------------------
ternref keeps a scale per tensor, per output row, or per group of ``group_size`` weights of a
row (:mod:`ternref.ternary`); a TQ block always has its own ``d``. A granularity maps onto blocks
by writing the same ``d`` into every block it covers (:class:`RowLayout`):

* ``"tensor"`` and ``"channel"``: every block of the tensor / of the row holds that scale;
  needs a row length ``K`` that is a multiple of 256;
* ``"group"``: block ``b`` of a row lies in group ``(256 b) // group_size``; needs
  ``group_size`` and ``K`` to be multiples of 256, so that no block straddles two groups.

Otherwise the layout can be *padded* (the caller must ask): every scale segment (the row, or
each group) is padded with code 0 to the next multiple of 256, the segment layout of
:mod:`ternref.packed.packed` with a 256-weight block. Padding codes multiply nothing, so the
product is unchanged, but the stored tensor is wider (``L = G * seg`` columns) than the weight
(``K``); a reader must drop the padding columns (:meth:`RowLayout.logical_columns`). The only
value a TQ tensor cannot hold exactly is the scale: ``d`` is fp16, so every scale is rounded to
the nearest fp16 number (relative error at most 2**-11 in fp16's normal range).

References
----------
Compilade (2024). Ternary packing for TriLMs and BitNet b1.58. llama.cpp pull request #8151,
https://github.com/ggml-org/llama.cpp/pull/8151 (``block_tq1_0`` / ``block_tq2_0`` in
``ggml-common.h``; the NumPy reference in ``gguf-py/gguf/quants.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ternref._validate import describe, one_of
from ternref.packed import i2, tq1
from ternref.packed.packed import _segment_layout, segments
from ternref.ternary import Ternary

QK = 256
"""Weights per block in both types (ggml's ``QK_K``)."""

TYPE_SIZE = {"tq2_0": 66, "tq1_0": 54}
"""Bytes per 256-weight block."""

QUANTS = tuple(TYPE_SIZE)

_FP16_LE = np.dtype("<f2")


# ------------------------------------------------------------------------------------ trits


def encode_trits(codes: np.ndarray, lanes: int) -> np.ndarray:
    """Pack codes ``(R, n * lanes)``, ``n`` in 1..5, into ``(R, lanes)`` base-3 bytes.

    Byte ``j`` holds the codes of columns ``j + lanes * i`` (``i = 0 .. n-1``) as trits
    ``t_i = c + 1``, ``v = sum_i t_i 3**(4 - i)`` (the missing low trits are 0), stored as
    ``ceil(256 v / 243)``. With ``lanes = 32, n = 5`` this is :func:`ternref.packed.tq1.encode`.
    """
    rows, width = codes.shape
    n = width // lanes
    if n * lanes != width or not 1 <= n <= 5:
        raise ValueError(f"encode_trits: width {width} is not n * {lanes} with n in 1..5")
    t = (codes.astype(np.int32) + 1).reshape(rows, n, lanes)
    v = np.zeros((rows, lanes), np.int32)
    for i in range(n):
        v += t[:, i] * 3 ** (4 - i)
    return ((v * 256 + 242) // 243).astype(np.uint8)  # ceil(v * 256 / 243)


def decode_trits(raw: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`encode_trits` for ``n`` trits per byte: codes ``(R, n * lanes)``.

    Raises ValueError for a byte that is not the encoding of the trits it decodes to (also when
    a trit beyond the ``n`` used ones is not 0), since no encoder writes such a byte.
    """
    t = np.stack([tq1.decode_trit(raw, i) for i in range(n)], axis=1)  # (R, n, lanes)
    codes = (t.astype(np.int8) - 1).reshape(raw.shape[0], -1)
    if not np.array_equal(encode_trits(codes, raw.shape[1]), raw):
        raise ValueError("a TQ1_0 byte encodes no ternary word (corrupt data)")
    return codes


# ------------------------------------------------------------------------------------ blocks


def encode(codes: np.ndarray, d: np.ndarray, quant: str) -> np.ndarray:
    """Bytes of TQ2_0 / TQ1_0 rows.

    Parameters
    ----------
    codes : int8 ndarray (M, L)
        Codes in {-1, 0, +1}, ``L`` a multiple of 256.
    d : ndarray (M, L / 256)
        The scale of every block, converted to fp16 here (round to nearest even).
    quant : {"tq2_0", "tq1_0"}

    Returns
    -------
    uint8 ndarray (M, L / 256 * type size)
        What ``gguf.quants.quantize`` would return for ``d * codes`` (see the tests), and what a
        GGUF file holds for the tensor.
    """
    one_of(quant, "quant", QUANTS)
    m, length = codes.shape
    if length % QK:
        raise ValueError(f"row length must be a multiple of {QK}, got {length}")
    nb = length // QK
    if d.shape != (m, nb):
        raise ValueError(f"d must have shape {(m, nb)} (one scale per block), got {d.shape}")
    d_bytes = np.ascontiguousarray(d.astype(_FP16_LE)).view(np.uint8).reshape(m, nb, 2)
    if quant == "tq2_0":
        # 64 code bytes = the two 128-weight i2 blocks of weights 0..127 and 128..255
        qs = i2.encode(codes)["codes"].reshape(m, nb, 64)
        return np.concatenate([qs, d_bytes], axis=2).reshape(m, nb * 66)
    blocks = codes.reshape(m * nb, QK)
    part1 = tq1.encode(blocks[:, :160])["codes"]  # one tq1 block: weights j + 32 n
    part2 = encode_trits(blocks[:, 160:240], lanes=16)  # weights 160 + j + 16 n
    qh = encode_trits(blocks[:, 240:], lanes=4)  # weights 240 + j + 4 n, four trits
    qs = np.concatenate([part1, part2, qh], axis=1).reshape(m, nb, 52)
    return np.concatenate([qs, d_bytes], axis=2).reshape(m, nb * 54)


def decode(raw: np.ndarray, quant: str) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode`: ``(codes int8 (M, L), d float16 (M, L / 256))``.

    Raises ValueError for bytes no encoder writes (the TQ2_0 pattern ``0b11``, a TQ1_0 byte that
    encodes no ternary word) and for a row that is not a whole number of blocks.
    """
    one_of(quant, "quant", QUANTS)
    size = TYPE_SIZE[quant]
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.ndim != 2:
        raise ValueError(f"raw must be a 2-D uint8 array, got {describe(raw)}")
    m, nbytes = raw.shape
    if nbytes % size:
        raise ValueError(f"{quant.upper()} rows must be whole {size}-byte blocks, got {nbytes}")
    nb = nbytes // size
    blocks = raw.reshape(m, nb, size)
    d = np.ascontiguousarray(blocks[:, :, size - 2 :]).view(_FP16_LE).reshape(m, nb)
    if quant == "tq2_0":
        qs = np.ascontiguousarray(blocks[:, :, :64]).reshape(m, nb * 64)
        codes = i2.decode({"codes": qs})
    else:
        qs = np.ascontiguousarray(blocks[:, :, :52]).reshape(m * nb, 52)
        part1 = tq1.decode({"codes": np.ascontiguousarray(qs[:, :32])})
        part2 = decode_trits(qs[:, 32:48], 5)
        qh = decode_trits(qs[:, 48:], 4)
        codes = np.concatenate([part1, part2, qh], axis=1).reshape(m, nb * QK)
    return codes, d.astype(np.float16)


# ------------------------------------------------------------------------------------ layout


def misfit(k: int, granularity: str, group_size: int | None) -> str | None:
    """Why rows of ``k`` weights at this granularity need padding to map onto 256-weight
    blocks, or None when they map exactly."""
    if k % QK:
        return f"its rows hold {k} weights, not a multiple of {QK}"
    if granularity == "group" and group_size % QK:
        return f"its scale groups hold {group_size} weights, not a multiple of {QK}"
    return None


@dataclass(frozen=True)
class RowLayout:
    """Where the weights and scales of a ``(M, K)`` ternary matrix go in rows of TQ blocks.

    Attributes
    ----------
    k : int
        Logical row length (``prod(shape[1:])`` of the weight).
    granularity : {"tensor", "channel", "group"}
    group_size : int or None
    padded : bool
        Every scale segment (the row, or each group) padded with code 0 to a multiple of 256.
    """

    k: int
    granularity: str
    group_size: int | None
    padded: bool

    def __post_init__(self):
        if not self.padded and misfit(self.k, self.granularity, self.group_size):
            reason = misfit(self.k, self.granularity, self.group_size)
            raise ValueError(f"an unpadded layout needs whole blocks, but {reason}")

    @property
    def n_groups(self) -> int:
        """Number of scales per row (1 for tensor and channel granularity)."""
        return 1 if self.granularity != "group" else -(-self.k // self.group_size)

    @property
    def segment(self) -> int:
        """Padded length of a scale segment (only meaningful when ``padded``)."""
        return segments(self.k, self.granularity, self.group_size, QK)[1]

    @property
    def length(self) -> int:
        """``L``: columns of the stored tensor (``K`` unpadded, ``G * seg`` padded)."""
        return self.n_groups * self.segment if self.padded else self.k

    @property
    def n_blocks(self) -> int:
        return self.length // QK

    def block_group(self) -> np.ndarray:
        """int64 ``(L / 256,)``: the scale group of every block of a row."""
        b = np.arange(self.n_blocks)
        if self.granularity != "group":
            return np.zeros_like(b)
        if self.padded:
            return b // (self.segment // QK)
        return (b * QK) // self.group_size

    def logical_columns(self) -> np.ndarray:
        """int64 ``(K,)``: the stored column of every weight column (drops the padding)."""
        cols = np.arange(self.k)
        if not self.padded:
            return cols
        logical = self.k if self.granularity != "group" else self.group_size
        return (cols // logical) * self.segment + cols % logical

    # -- Ternary <-> blocks --------------------------------------------------------------------
    def to_blocks(self, t: Ternary) -> tuple[np.ndarray, np.ndarray]:
        """``(codes int8 (M, L), scales float64 (M, L / 256))`` of a symmetric ``Ternary``
        without offset, laid out like this; the scales are exact (not yet rounded to fp16)."""
        if not t.symmetric or t.offset is not None:
            raise ValueError("to_blocks needs a symmetric Ternary without offset")
        m = t.shape[0]
        codes = t.codes.reshape(m, self.k)
        if self.padded:
            g = self.n_groups
            logical = self.k if g == 1 else self.group_size
            codes = _segment_layout(codes, self.k, g, self.segment, logical)
        # (M, G) scales: () for tensor, (M, 1, ...) for channel, (M, G) for group
        s = np.asarray(t.alpha_pos, np.float64)
        s = np.broadcast_to(s.reshape(m, -1) if s.ndim else s, (m, self.n_groups))
        return np.ascontiguousarray(codes), s[:, self.block_group()]

    def from_blocks(self, codes: np.ndarray, d: np.ndarray, shape: tuple) -> Ternary:
        """The symmetric ``Ternary`` of ``shape`` whose blocks these are (inverse of
        :meth:`to_blocks`, scales as float32 values of the fp16 ``d``).

        Raises ValueError when the blocks do not follow the layout: different ``d`` inside one
        scale group (or across rows for ``"tensor"``), nonzero codes in the padding, or
        negative or non-finite scales.
        """
        d = d.astype(np.float32)
        groups = self.block_group()
        first = np.array([np.flatnonzero(groups == g)[0] for g in range(self.n_groups)])
        scales = d[:, first]  # (M, G): the first block of every group
        if not np.array_equal(d, scales[:, groups]):
            raise ValueError(
                f"blocks of one scale group hold different scales d, but the layout says "
                f"granularity {self.granularity!r}"
                + (f" with groups of {self.group_size}" if self.group_size else "")
            )
        if self.granularity == "tensor" and not np.all(scales == scales[0, 0]):
            raise ValueError("rows hold different scales d, but the granularity is 'tensor'")
        if not np.all(np.isfinite(scales)) or np.any(scales < 0):
            raise ValueError("scales d must be finite and >= 0 (ternref never writes others)")
        cols = self.logical_columns()
        if self.padded:
            pad = np.ones(self.length, bool)
            pad[cols] = False
            if np.any(codes[:, pad] != 0):
                raise ValueError("padding columns hold nonzero codes (ternref writes code 0)")
        logical = codes[:, cols].reshape(shape)
        if self.granularity == "tensor":
            return Ternary(logical, scales[0, 0], granularity="tensor")
        if self.granularity == "channel":
            return Ternary(logical, scales[:, 0], granularity="channel")
        return Ternary(logical, scales, granularity="group", group_size=self.group_size)

    def bits_per_weight(self, quant: str) -> float:
        """Stored bits per logical weight (padding and the fp16 scales included)."""
        return 8.0 * TYPE_SIZE[quant] * self.n_blocks / self.k


def row_length(shape: tuple) -> int:
    """``K = prod(shape[1:])``: the reduction length of a weight of ``shape``."""
    return math.prod(shape[1:]) if len(shape) > 1 else 1
