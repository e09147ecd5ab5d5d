"""The :class:`Packed` weight: a :class:`~ternref.ternary.Ternary` stored in a bit format.

Row and group layout (shared by every format)
---------------------------------------------
A weight of shape ``(out, ...)`` is viewed as the matrix ``(M, K) = (out, prod(shape[1:]))``
(a conv weight ``(out, in, kh, kw)`` becomes ``(out, in*kh*kw)``, C order, the column order of
``im2col``); the original shape is kept for :func:`unpack`.

Each row is cut into ``G`` *segments*, one per scale group: ``G = 1`` (the whole row) for
``"tensor"`` and ``"channel"`` granularity, ``G = ceil(K / group_size)`` for ``"group"``. Every
segment is padded with code 0 to ``seg``, the smallest multiple of the format's ``BLOCK`` (i2:
128, tq1: 160, bitplanes: 64) holding ``group_size`` (or ``K``) weights, so a block never
straddles two scales and a packed row has ``L = G * seg`` weights::

    row of K = 300 weights, group_size = 100, i2 (BLOCK = 128): G = 3, seg = 128, L = 384
    | w0 .. w99  pad x28 | w100 .. w199  pad x28 | w200 .. w299  pad x28 |
    |<----- group 0 ---->|<----- group 1 ------->|<----- group 2 ------->|

Group sizes that are a multiple of the block cost no padding beyond the row's last block; other
group sizes pay for the padding (``bits_per_weight`` reports it). Activations are laid out the
same way (zeros in the padding) by :func:`pad_activations`, so padded weights multiply zeros.

Scales are kept exactly as the :class:`Ternary` holds them (canonical shape and dtype), so
:func:`unpack` restores an equal object; the kernels read float64 ``(M, G)`` copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ternref._validate import describe, one_of
from ternref.packed import bitplanes, i2, tq1
from ternref.ternary import Ternary

FORMATS = {"i2": i2, "tq1": tq1, "bitplanes": bitplanes}
"""Format name -> module with ``BLOCK``, ``ARRAYS``, ``encode``, ``decode`` and the kernels."""


@dataclass(eq=False)
class Packed:
    """Ternary weights in a packed bit format, with their scales.

    Attributes
    ----------
    format : {"i2", "tq1", "bitplanes"}
    shape : tuple of int
        ``(M, K)``: output rows and the reduction length.
    orig_shape : tuple of int
        Shape of the original codes (e.g. ``(out, in, kh, kw)`` for a conv weight).
    arrays : dict of str -> ndarray
        The packed codes: ``{"codes": uint8 (M, L/4)}`` (i2), ``{"codes": uint8 (M, L/5)}``
        (tq1), ``{"pos", "neg": uint64 (M, L/64)}`` (bitplanes).
    granularity : {"tensor", "channel", "group"}
    group_size : int or None
    alpha_pos, alpha_neg, offset : ndarray
        As in :class:`Ternary` (canonical shapes); ``alpha_neg`` is None when symmetric and
        ``offset`` None when absent.
    """

    format: str
    shape: tuple
    orig_shape: tuple
    arrays: dict
    granularity: str
    group_size: int | None
    alpha_pos: np.ndarray
    alpha_neg: np.ndarray | None = None
    offset: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def module(self):
        return FORMATS[self.format]

    @property
    def n_groups(self) -> int:
        """Number of row segments G (one per scale group)."""
        return segments(self.shape[1], self.granularity, self.group_size, self.module.BLOCK)[0]

    @property
    def segment(self) -> int:
        """Padded length of one segment (a multiple of the format's block)."""
        return segments(self.shape[1], self.granularity, self.group_size, self.module.BLOCK)[1]

    @property
    def padded_length(self) -> int:
        """``L = G * seg``: weights per packed row, padding included."""
        return self.n_groups * self.segment

    @property
    def symmetric(self) -> bool:
        return self.alpha_neg is None

    @property
    def dtype(self) -> np.dtype:
        """Float dtype of the scales."""
        return self.alpha_pos.dtype

    # -- storage -------------------------------------------------------------------------------
    @property
    def code_nbytes(self) -> int:
        """Bytes of the packed codes (padding included)."""
        return int(sum(a.nbytes for a in self.arrays.values()))

    @property
    def scale_nbytes(self) -> int:
        """Bytes of the stored scales and offset."""
        return int(
            sum(a.nbytes for a in (self.alpha_pos, self.alpha_neg, self.offset) if a is not None)
        )

    @property
    def nbytes(self) -> int:
        """Total bytes: codes plus scales."""
        return self.code_nbytes + self.scale_nbytes

    @property
    def bits_per_weight(self) -> float:
        """Bits of packed codes per real weight (padding counts against it)."""
        return 8.0 * self.code_nbytes / (self.shape[0] * self.shape[1])

    @property
    def bits_per_weight_with_scales(self) -> float:
        """Bits per real weight, codes and scales together."""
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])

    def __repr__(self) -> str:
        gran = self.granularity + (f"[{self.group_size}]" if self.group_size else "")
        kind = "symmetric" if self.symmetric else "asymmetric"
        return (
            f"Packed({self.format}, shape={self.shape}, orig_shape={self.orig_shape}, {gran}, "
            f"{kind}, {self.bits_per_weight:.3f} bits/weight)"
        )

    # -- what the kernels read -------------------------------------------------------------------
    def kernel_scales(self) -> dict:
        """Scales as one float64 ``(3, M, G)`` array ``sc`` (``alpha_pos``, ``alpha_neg``,
        ``offset``; zeros when there is no offset), the float32 value table
        ``lut`` ``(M, G, 3)`` of codes -1, 0, +1, and the tables ``code_lut`` (-1, 0, 1) and
        ``abs_lut`` (1, 0, 1), float32 too, that the int8 GEMM decodes with (cached)."""
        if "scales" not in self._cache:
            m = self.shape[0]
            g = self.n_groups

            def rows(a):
                # tensor () and channel (M, 1, ..., 1) broadcast along the row; group is (M, G)
                a = a.reshape(m, -1) if a.ndim else a
                return np.ascontiguousarray(np.broadcast_to(a, (m, g)))

            ap = rows(self.alpha_pos)
            an = ap if self.alpha_neg is None else rows(self.alpha_neg)
            off = np.zeros_like(ap) if self.offset is None else rows(self.offset)
            # dense() = where(c>0, a_pos, where(c<0, -a_neg, 0)) + offset, in the scale dtype
            if self.offset is None:
                lut = np.stack([-an, np.zeros_like(ap), ap], axis=-1)
            else:
                lut = np.stack([-an + off, off, ap + off], axis=-1)
            self._cache["scales"] = {
                "sc": np.ascontiguousarray(np.stack([ap, an, off]), dtype=np.float64),
                "lut": np.ascontiguousarray(lut, dtype=np.float32),
                # value tables of the int8 GEMM: the signed code and its magnitude (float32:
                # the int8 GEMM multiplies exact small integers in float32, see _gemm)
                "code_lut": np.ascontiguousarray(
                    np.broadcast_to(np.array([-1, 0, 1], np.float32), (m, g, 3))
                ),
                "abs_lut": np.ascontiguousarray(
                    np.broadcast_to(np.array([1, 0, 1], np.float32), (m, g, 3))
                ),
            }
        return self._cache["scales"]

    def validate(self) -> None:
        """Check arrays, dtypes and shapes against the format and granularity; raise ValueError."""
        if self.format not in FORMATS:
            raise ValueError(f"unknown packed format {self.format!r}; known: {sorted(FORMATS)}")
        mod = self.module
        m, k = self.shape
        if math.prod(self.orig_shape) != m * k or self.orig_shape[0] != m:
            raise ValueError(f"orig_shape {self.orig_shape} does not match shape {self.shape}")
        if set(self.arrays) != set(mod.ARRAYS):
            raise ValueError(
                f"format {self.format!r} needs arrays {list(mod.ARRAYS)}, got {sorted(self.arrays)}"
            )
        per_word = {"i2": 4, "tq1": 5, "bitplanes": 64}[self.format]
        dtype = np.uint64 if self.format == "bitplanes" else np.uint8
        want = (m, self.padded_length // per_word)
        for name, arr in self.arrays.items():
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != want:
                raise ValueError(
                    f"packed array {name!r} must be {np.dtype(dtype)} of shape {want}, "
                    f"got {describe(arr)}"
                )
        target = Ternary.scale_shape(self.orig_shape, self.granularity, self.group_size)
        for name in ("alpha_pos", "alpha_neg", "offset"):
            arr = getattr(self, name)
            if arr is None:
                if name == "alpha_pos":
                    raise ValueError("alpha_pos is required")
                continue
            if (
                not isinstance(arr, np.ndarray)
                or not np.issubdtype(arr.dtype, np.floating)
                or arr.shape != target
                or arr.dtype != self.alpha_pos.dtype
            ):
                raise ValueError(
                    f"{name} must be a floating array of shape {target} and dtype "
                    f"{self.alpha_pos.dtype}, got {describe(arr)}"
                )


def segments(k: int, granularity: str, group_size: int | None, block: int) -> tuple[int, int]:
    """``(G, seg)``: number of row segments and their padded length (a multiple of ``block``)."""
    if granularity == "group":
        g = -(-k // group_size)
        logical = group_size
    else:
        g = 1
        logical = k
    return g, -(-logical // block) * block


def _segment_layout(a: np.ndarray, k: int, g: int, seg: int, logical: int, fill=0) -> np.ndarray:
    """Scatter the columns of ``a`` (R, K) into the padded segment layout (R, G * seg)."""
    rows = a.shape[0]
    out = np.full((rows, g, seg), fill, dtype=a.dtype)
    full = (g - 1) * logical
    out[:, : g - 1, :logical] = a[:, :full].reshape(rows, g - 1, logical)
    out[:, g - 1, : k - full] = a[:, full:]
    return out.reshape(rows, g * seg)


def pad_activations(x2d: np.ndarray, p: Packed) -> np.ndarray:
    """Lay the columns of ``x2d`` (N, K) out like the packed rows of ``p`` (zeros in padding)."""
    g, seg = p.n_groups, p.segment
    logical = p.shape[1] if g == 1 else p.group_size
    return _segment_layout(x2d, p.shape[1], g, seg, logical)


def pack(t: Ternary, format: str = "i2") -> Packed:
    """Pack a :class:`Ternary` into a bit format.

    Parameters
    ----------
    t : Ternary
        Codes and scales at any granularity (symmetric, asymmetric, with or without offset).
    format : {"i2", "tq1", "bitplanes"}
        The bit layout; see :mod:`ternref.packed.i2`, :mod:`ternref.packed.tq1`,
        :mod:`ternref.packed.bitplanes`.

    Returns
    -------
    Packed
        ``unpack(pack(t)) == t`` exactly.
    """
    if not isinstance(t, Ternary):
        raise TypeError(f"t must be a ternref.Ternary, got {describe(t)}")
    one_of(format, "format", FORMATS)
    mod = FORMATS[format]
    orig_shape = tuple(int(s) for s in t.shape)
    m = orig_shape[0]
    k = math.prod(orig_shape[1:]) if len(orig_shape) > 1 else 1
    g, seg = segments(k, t.granularity, t.group_size, mod.BLOCK)
    logical = k if g == 1 else t.group_size
    codes = _segment_layout(t.codes.reshape(m, k), k, g, seg, logical)
    return Packed(
        format=format,
        shape=(m, k),
        orig_shape=orig_shape,
        arrays=mod.encode(codes),
        granularity=t.granularity,
        group_size=t.group_size,
        alpha_pos=np.array(t.alpha_pos),
        alpha_neg=None if t.symmetric else np.array(t.alpha_neg),
        offset=None if t.offset is None else np.array(t.offset),
    )


def unpack(p: Packed) -> Ternary:
    """The :class:`Ternary` that :func:`pack` packed (exact inverse)."""
    if not isinstance(p, Packed):
        raise TypeError(f"p must be a ternref.packed.Packed, got {describe(p)}")
    m, k = p.shape
    padded = p.module.decode(p.arrays)  # (M, G * seg)
    g, seg = p.n_groups, p.segment
    logical = k if g == 1 else p.group_size
    per_seg = padded.reshape(m, g, seg)
    full = (g - 1) * logical
    codes = np.empty((m, k), np.int8)
    codes[:, :full] = per_seg[:, : g - 1, :logical].reshape(m, full)
    codes[:, full:] = per_seg[:, g - 1, : k - full]
    return Ternary(
        codes.reshape(p.orig_shape),
        p.alpha_pos,
        p.alpha_neg,
        granularity=p.granularity,
        group_size=p.group_size,
        offset=p.offset,
    )
