"""The ternary tensor: integer codes, scales, and their granularity.

DESIGN.md principle 2 keeps four objects apart, and this module holds three of them:

* ``w`` -- latent full-precision weights (never stored here);
* ``codes`` -- int8 array with values in {-1, 0, +1}, the shape of ``w``;
* scales -- ``alpha_pos`` (the value of a +1 code) and ``alpha_neg`` (the magnitude of a -1 code,
  so the level is ``-alpha_neg``), equal when the projection is symmetric, and an optional
  ``offset`` (RTN's beta) added to every entry;
* ``w_hat = dense()`` -- the dequantized tensor::

      w_hat = alpha_pos * [codes == +1] - alpha_neg * [codes == -1] + offset

Granularity says how many scales there are and which entries share one:

``"tensor"``
    one scale for the whole tensor; scales have shape ``()``.
``"channel"``
    one scale per output channel (axis 0, the row of ``W`` in ``y = x @ W.T``, or the filter of a
    conv weight shaped ``(out, in, kh, kw)``); scales have shape ``(out,) + (1,) * (ndim - 1)`` so
    they broadcast against ``codes``.
``"group"``
    one scale per group of ``group_size`` consecutive weights along the reduction axis: the tensor
    is viewed as ``(out, K)`` with ``K = prod(shape[1:])`` (C order, so for a conv weight the groups
    run over ``in, kh, kw`` flattened) and each row is cut into ``ceil(K / group_size)`` groups, the
    last one possibly shorter. Scales have shape ``(out, n_groups)``; :meth:`Ternary.expand` maps
    them to the full shape. This matches FGQ (Mellempudi et al. 2017) and the packed row layout.

A ``Ternary`` is immutable in spirit: its arrays are made read-only on construction.
"""

from __future__ import annotations

import math

import numpy as np

from ternref._validate import describe

GRANULARITIES = ("tensor", "channel", "group")

# Bits used for one stored float scale. ternref stores scales as float32 in packed files.
SCALE_BITS = 32


class Ternary:
    """Ternary codes with their scales.

    Parameters
    ----------
    codes : ndarray of int8, any shape with at least one element
        Values in {-1, 0, +1}. Other integer dtypes are accepted if their values are in range
        and are converted to int8.
    alpha_pos : float or ndarray of float
        Scale of the +1 code. Shape as described by ``granularity`` (scalars, shapes that
        broadcast, and flat ``(out,)`` vectors for ``"channel"`` are normalised).
    alpha_neg : float or ndarray of float, optional
        Magnitude of the -1 level. ``None`` (default) means symmetric: ``alpha_neg = alpha_pos``.
    granularity : {"tensor", "channel", "group"}
        Which entries share a scale (see the module docstring).
    group_size : int, optional
        Required for ``"group"``, forbidden otherwise.
    offset : float or ndarray of float, optional
        Added to every entry of ``dense()`` (RTN's beta). Same granularity as the scales.

    Raises
    ------
    ValueError
        Codes outside {-1, 0, +1}, negative or non-finite scales, or scale shapes that do not
        match the granularity.
    TypeError
        Codes that are not integers, scales that are not floating point.
    """

    __slots__ = (
        "codes",
        "alpha_pos",
        "alpha_neg",
        "granularity",
        "group_size",
        "offset",
        "symmetric",
    )

    def __init__(
        self,
        codes,
        alpha_pos,
        alpha_neg=None,
        *,
        granularity: str = "tensor",
        group_size: int | None = None,
        offset=None,
    ):
        codes = np.asarray(codes)
        if not np.issubdtype(codes.dtype, np.integer):
            raise TypeError(f"codes must be an integer array (int8), got {describe(codes)}")
        if codes.size == 0:
            raise ValueError(f"codes must not be empty, got shape {codes.shape}")
        if codes.ndim == 0:
            codes = codes.reshape(1)
        if np.any((codes < -1) | (codes > 1)):
            bad = np.unique(codes[(codes < -1) | (codes > 1)])[:5]
            raise ValueError(f"codes must be in {{-1, 0, +1}}, got values {bad.tolist()}")
        codes = codes.astype(np.int8, copy=True)

        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if granularity == "group":
            if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
                raise TypeError(
                    f"group_size must be a positive int for granularity 'group', "
                    f"got {describe(group_size)}"
                )
            if group_size < 1:
                raise ValueError(f"group_size must be >= 1, got {group_size}")
            group_size = int(group_size)
        elif group_size is not None:
            raise ValueError(
                f"group_size is only meaningful for granularity 'group', got group_size="
                f"{group_size!r} with granularity {granularity!r}"
            )

        alpha_pos = self._normalise_scale(
            alpha_pos, "alpha_pos", codes.shape, granularity, group_size
        )
        symmetric = alpha_neg is None
        if symmetric:
            alpha_neg = alpha_pos
        else:
            alpha_neg = self._normalise_scale(
                alpha_neg, "alpha_neg", codes.shape, granularity, group_size
            )
            if alpha_neg.dtype != alpha_pos.dtype:
                raise TypeError(
                    f"alpha_pos and alpha_neg must share a dtype, got {alpha_pos.dtype} "
                    f"and {alpha_neg.dtype}"
                )
            symmetric = bool(np.array_equal(alpha_pos, alpha_neg))
        for name, scale in (("alpha_pos", alpha_pos), ("alpha_neg", alpha_neg)):
            if not np.all(np.isfinite(scale)):
                raise ValueError(f"{name} must be finite, got {scale.ravel()[:5].tolist()}...")
            if np.any(scale < 0):
                raise ValueError(
                    f"{name} must be >= 0 (a negative scale would flip signs), "
                    f"got minimum {float(scale.min())}"
                )
        if offset is not None:
            offset = self._normalise_scale(offset, "offset", codes.shape, granularity, group_size)
            if not np.all(np.isfinite(offset)):
                raise ValueError("offset must be finite")
            if offset.dtype != alpha_pos.dtype:
                offset = offset.astype(alpha_pos.dtype)

        for arr in (codes, alpha_pos, alpha_neg, offset):
            if arr is not None:
                arr.flags.writeable = False
        self.codes = codes
        self.alpha_pos = alpha_pos
        self.alpha_neg = alpha_neg
        self.granularity = granularity
        self.group_size = group_size
        self.offset = offset
        self.symmetric = symmetric

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def scale_shape(shape, granularity: str, group_size: int | None = None) -> tuple:
        """The canonical shape of the scales of a tensor of ``shape`` at this granularity."""
        if granularity == "tensor":
            return ()
        if granularity == "channel":
            return (shape[0],) + (1,) * (len(shape) - 1)
        rows = shape[0]
        k = math.prod(shape[1:]) if len(shape) > 1 else 1
        return (rows, -(-k // group_size))

    @classmethod
    def _normalise_scale(cls, scale, name, shape, granularity, group_size) -> np.ndarray:
        arr = np.asarray(scale)
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{name} must be floating point, got {describe(scale)}")
        target = cls.scale_shape(shape, granularity, group_size)
        if granularity == "tensor":
            if arr.size != 1:
                raise ValueError(
                    f"{name} must hold one value for granularity 'tensor', got shape {arr.shape}"
                )
            return arr.reshape(()).copy()
        if granularity == "channel":
            if arr.size != shape[0] or (arr.ndim > 1 and arr.shape[0] != shape[0]):
                raise ValueError(
                    f"{name} must hold one value per output channel ({shape[0]}) for "
                    f"granularity 'channel', got shape {arr.shape}"
                )
            return arr.reshape(target).copy()
        if arr.shape != target:
            raise ValueError(
                f"{name} must have shape {target} (rows, groups of {group_size}) for "
                f"granularity 'group' on a tensor of shape {shape}, got shape {arr.shape}"
            )
        return arr.copy()

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> tuple:
        """Shape of the codes and of ``dense()``."""
        return self.codes.shape

    @property
    def dtype(self) -> np.dtype:
        """Float dtype of the scales, and so of ``dense()``."""
        return self.alpha_pos.dtype

    def expand(self, scale: np.ndarray) -> np.ndarray:
        """Broadcast a scale array of this granularity to the full shape of the codes."""
        if self.granularity != "group":
            return np.broadcast_to(scale, self.shape)
        rows = self.shape[0]
        k = math.prod(self.shape[1:]) if self.codes.ndim > 1 else 1
        full = np.repeat(scale, self.group_size, axis=1)[:, :k]
        return full.reshape(rows, k).reshape(self.shape)

    def dense(self) -> np.ndarray:
        """The dequantized tensor ``w_hat = alpha_pos*[c=+1] - alpha_neg*[c=-1] + offset``."""
        if self.symmetric and self.offset is None:
            # codes in {-1, 0, +1} times a finite alpha >= 0: exactly the values of the general
            # form below (+-alpha, and +0.0), in one pass instead of four (training projects
            # every quantized layer at every step)
            return np.multiply(self.codes, self.expand(self.alpha_pos), dtype=self.dtype)
        if self.offset is None and self.granularity == "tensor":
            # asymmetric, one scale pair: look the three levels up (codes + 1 in {0, 1, 2})
            levels = np.array([-self.alpha_neg, 0, self.alpha_pos], dtype=self.dtype)
            return levels[self.codes + np.int8(1)]
        pos = self.expand(self.alpha_pos)
        neg = self.expand(self.alpha_neg)
        w_hat = np.where(self.codes > 0, pos, np.where(self.codes < 0, -neg, 0)).astype(
            self.dtype, copy=False
        )
        if self.offset is not None:
            w_hat = w_hat + self.expand(self.offset)
        return w_hat

    @property
    def sparsity(self) -> float:
        """Fraction of codes equal to 0."""
        return float(np.count_nonzero(self.codes == 0)) / self.codes.size

    @property
    def n_scales(self) -> int:
        """Number of float values stored beside the codes (both scales and the offset)."""
        n = self.alpha_pos.size * (1 if self.symmetric else 2)
        if self.offset is not None:
            n += self.offset.size
        return int(n)

    def storage_bits(self, bits_per_code: float = 2.0) -> float:
        """Storage cost in bits: ``bits_per_code`` per weight plus 32 bits per stored scale.

        ``bits_per_code`` is 2 for the ``i2`` and ``bitplanes`` packings and 1.6 for base-3
        ``tq1``; log2(3) = 1.585 is the entropy bound for uniformly used codes.
        """
        return float(bits_per_code) * self.codes.size + SCALE_BITS * self.n_scales

    # ------------------------------------------------------------------ comparison and repr
    def __eq__(self, other) -> bool:
        if not isinstance(other, Ternary):
            return NotImplemented
        same_offset = (self.offset is None and other.offset is None) or (
            self.offset is not None
            and other.offset is not None
            and np.array_equal(self.offset, other.offset)
        )
        return (
            self.granularity == other.granularity
            and self.group_size == other.group_size
            and self.shape == other.shape
            and self.dtype == other.dtype
            and np.array_equal(self.codes, other.codes)
            and np.array_equal(self.alpha_pos, other.alpha_pos)
            and np.array_equal(self.alpha_neg, other.alpha_neg)
            and same_offset
        )

    __hash__ = None

    def __repr__(self) -> str:
        gran = self.granularity + (f"[{self.group_size}]" if self.group_size else "")
        kind = "symmetric" if self.symmetric else "asymmetric"
        return (
            f"Ternary(shape={self.shape}, {gran}, {kind}, dtype={self.dtype}, "
            f"sparsity={self.sparsity:.3f})"
        )
