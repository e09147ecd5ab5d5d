"""INQ: Incremental Network Quantization, ternary (2-bit) case.

Paper
-----
Aojun Zhou, Anbang Yao, Yiwen Guo, Lin Xu, Yurong Chen, "Incremental Network Quantization: Towards
Lossless CNNs with Low-Precision Weights", arXiv:1702.03044, ICLR 2017.

What is implemented
-------------------
The codebook of a layer is ``P = {+-2^n1, ..., +-2^n2, 0}`` with (paper, section 2.1)::

    s  = max |W|                          (per layer)
    n1 = floor(log2(4 s / 3))
    n2 = n1 + 1 - 2^(b-1) / 2             (b bits including the zero code)

For b = 2 bits, ``n2 = n1`` and ``P = {-2^n1, 0, +2^n1}``: a ternary set with ``alpha = 2^n1``.
The quantization rule (section 2.1; methods.md marks it [R], not re-read here) maps ``w`` to
``beta * sign(w)`` when ``(alpha' + beta)/2 <= |w| < 3 beta / 2`` for adjacent levels
``alpha' < beta`` of the sorted ``P+`` (with 0), and to 0 otherwise. For ternary
(``alpha' = 0``, ``beta = 2^n1``)::

    w_hat = 2^n1 * sign(w) * 1[|w| >= 2^(n1 - 1)]

The upper bound ``|w| < 3 * 2^n1 / 2`` always holds, because ``n1`` is chosen so that
``(3/4) 2^n1 <= s < (3/2) 2^n1``; so ``max|W|`` maps to ``+-2^n1`` (methods.md P15).

Paper vs code vs ternref choices
--------------------------------
* **Tie rule:** the paper's rule is ``>=``: a weight with ``|w| = 2^(n1-1)`` exactly becomes
  nonzero. This departs from ternref's default strict ``>`` on purpose (DESIGN.md principle 7) and
  is pinned by a test.
* ``n1`` is computed exactly: the float ``log2`` estimate is corrected so that
  ``2^n1 <= 4s/3 < 2^(n1+1)`` holds in exact arithmetic (``3 * 2^n1 <= 4 s``).
* The official Caffe code (AojunZhou/Incremental-Network-Quantization, ``src/caffe/blob.cpp``
  ``FromProto`` and ``src/caffe/util/power2.cpp`` ``weightCluster_zero``, read at commit
  c7f6a60) computes the same ``n1 = floor(log2(max|W| * 4/3))`` from the layer's weights only
  (``net.cpp`` quantizes blob 0 of each layer and skips the bias), and quantizes each chosen
  weight to the *nearest* of ``{0, +-2^(n1-7), ..., +-2^n1}`` (it is written for 5 bits; the
  ternary case would search ``2^n1`` alone). Nearest-level is the paper's rule except at ties:
  the search keeps the first minimum (zero is tried first, then the levels upwards, with a
  strict ``>``), so a weight exactly at ``2^(n1-1)`` stays 0 in the code and becomes ``2^n1``
  by the paper's ``>=``. ternref follows the paper.
* The third-party csyhhu ``INQ.py`` uses ``floor(log2|w|)`` per weight (round down instead of the
  nearest-level rule); ternref follows the paper.
* All-zero layer: ``s = 0`` has no ``n1``; ternref returns all-zero codes with scale 0.

The incremental procedure (partition by magnitude, quantize the largest part, retrain the rest
with the quantized part frozen) belongs to the training method (``ternref.methods.inq``, whose
docstring compares it with the official code's stage-by-stage re-ranking); :func:`inq_partition`
provides its masks and the two schedules below its accumulated portions.

Schedules (accumulated portion of quantized weights after each stage)
---------------------------------------------------------------------
* :data:`TERNARY_PORTIONS` = 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 1: the paper's
  schedule for 2-bit (ternary) weights, ten stages (about 30 epochs of ImageNet re-training in
  the paper). The default of the ternary method. Source: issue 16's reading of the paper; the
  paper body could not be opened here (only its abstract); a third-party PyTorch INQ found by
  code search uses the same list as its default with ``bit_width=2``.
* :data:`FIVE_BIT_PORTIONS` = 0.5, 0.75, 0.875, 1: the paper's schedule for its 5-bit
  experiments (methods.md section 2.10 [R]). It is *not* the paper's schedule "for every bit
  width", as this module once said. The official Caffe script ``run.py`` (5-bit AlexNet) uses
  yet another one: 0.3, 0.6, 0.8, 1 (it rewrites ``partition = int(count * 0.7) - 1`` to 0.4,
  0.2 and 0 between runs).

References
----------
Zhou, A., Yao, A., Guo, Y., Xu, L., Chen, Y. (2017). Incremental Network Quantization: Towards
Lossless CNNs with Low-Precision Weights. ICLR 2017. arXiv:1702.03044.
"""

from __future__ import annotations

import math

import numpy as np

from ternref._validate import float_tensor, real_number
from ternref.projections._registry import register
from ternref.ternary import Ternary

#: Accumulated portions of quantized weights for 2-bit (ternary) weights, the paper's ten stages.
TERNARY_PORTIONS = (0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 1.0)

#: Accumulated portions of the paper's 5-bit experiments (four stages) [R].
FIVE_BIT_PORTIONS = (0.5, 0.75, 0.875, 1.0)


def inq_exponent(s: float) -> int:
    """``n1 = floor(log2(4 s / 3))`` for ``s > 0``, exact (``2^n1 <= 4s/3 < 2^(n1+1)``).

    Parameters
    ----------
    s : float > 0
        The layer's ``max |W|``.

    Returns
    -------
    int
        The exponent of INQ's largest level.

    References
    ----------
    Zhou et al. (2017), arXiv:1702.03044, section 2.1.
    """
    s = real_number(s, "s", low=0.0, low_open=True)
    n1 = math.floor(math.log2(4.0 * s / 3.0))
    # 3 * 2^n and 4 * s are exact in binary floating point, so these comparisons are exact.
    while 3.0 * math.ldexp(1.0, n1) > 4.0 * s:
        n1 -= 1
    while 3.0 * math.ldexp(1.0, n1 + 1) <= 4.0 * s:
        n1 += 1
    return n1


@register(
    "inq",
    paper="Zhou, Yao, Guo, Xu, Chen. Incremental Network Quantization: Towards Lossless CNNs "
    "with Low-Precision Weights (ICLR)",
    year=2017,
    arxiv="1702.03044",
    symmetric=True,
    deterministic=True,
    claims=(
        "range",
        "sign_preserving",
        "coordinate_monotone",
        "monotone",
        "odd",
        "permutation_equivariant",
        "idempotent",
        "dtype_preserving",
        "zero_safe",
    ),
    summary="INQ ternary: 2^n1 * sign(w) * 1[|w| >= 2^(n1-1)], n1 = floor(log2(4 max|w| / 3))",
)
def inq(w) -> Ternary:
    """Project ``w`` onto INQ's 2-bit (ternary) power-of-two codebook ``{0, +-2^n1}``.

    Parameters
    ----------
    w : ndarray of float32 or float64, any shape
        One layer's weights.

    Returns
    -------
    Ternary
        Codes ``sign(w) * 1[|w| >= 2^(n1-1)]`` (note ``>=``: the paper's tie rule) and the
        per-tensor scale ``2^n1`` in ``w``'s dtype; scale 0 for an all-zero ``w``.

    References
    ----------
    Zhou et al. (2017), arXiv:1702.03044, section 2.1 (quantization rule) with b = 2.
    """
    w = float_tensor(w, "w")
    s = float(np.max(np.abs(w)))
    if s == 0.0:
        return Ternary(np.zeros(w.shape, dtype=np.int8), np.asarray(0.0, dtype=w.dtype))
    n1 = inq_exponent(s)
    threshold = math.ldexp(1.0, n1 - 1)
    # paper's rule: nonzero iff (0 + 2^n1)/2 <= |w| (the upper bound 3*2^n1/2 holds for all w)
    codes = (np.sign(w) * (np.abs(w).astype(np.float64) >= threshold)).astype(np.int8)
    return Ternary(codes, np.asarray(math.ldexp(1.0, n1), dtype=w.dtype))


def inq_partition(w, fraction, already_frozen=None) -> np.ndarray:
    """Mask of the weights quantized (frozen) once an accumulated ``fraction`` is reached.

    INQ's weight partition: at each step the largest-magnitude weights among those not yet
    frozen join the frozen set, until ``ceil(fraction * n)`` weights are frozen. Calling it with
    the accumulated portions of a schedule (:data:`TERNARY_PORTIONS`,
    :data:`FIVE_BIT_PORTIONS`) and passing each mask back as ``already_frozen`` gives nested
    masks; calling it without ``already_frozen`` ranks every weight afresh (the official Caffe
    code's behaviour at each stage, see ``ternref.methods.inq``).

    Parameters
    ----------
    w : ndarray of float
        Current latent weights of the layer (only the not-yet-frozen entries are ranked).
    fraction : float in [0, 1]
        Accumulated portion of weights that must be frozen after this step.
    already_frozen : ndarray of bool, optional
        Mask of weights frozen in earlier steps (same shape as ``w``); all stay frozen.

    Returns
    -------
    ndarray of bool
        ``already_frozen`` plus the largest-``|w|`` free weights, ``ceil(fraction * n)`` in total.
        Ties in ``|w|`` at the cut are broken by position (earlier C-order index first). (The
        Caffe code instead takes every weight with ``|w| >=`` the value at sorted position
        ``int(n (1 - fraction)) - 1``, i.e. about one weight more, and all ties.)

    Raises
    ------
    ValueError
        If ``already_frozen`` already holds more than ``ceil(fraction * n)`` weights (the portions
        must not decrease) or has the wrong shape.

    References
    ----------
    Zhou et al. (2017), arXiv:1702.03044, section 2.2 (weight partition).
    """
    w = float_tensor(w, "w")
    fraction = real_number(fraction, "fraction", low=0.0, high=1.0)
    n = w.size
    if already_frozen is None:
        frozen = np.zeros(w.shape, dtype=bool)
    else:
        frozen = np.asarray(already_frozen)
        if frozen.dtype != np.bool_:
            raise TypeError(f"already_frozen must be a boolean mask, got dtype {frozen.dtype}")
        if frozen.shape != w.shape:
            raise ValueError(
                f"already_frozen must have the shape of w {w.shape}, got {frozen.shape}"
            )
    target = math.ceil(fraction * n - 1e-9 * n)
    have = int(np.count_nonzero(frozen))
    if have > target:
        raise ValueError(
            f"already_frozen holds {have} weights but fraction={fraction} asks for {target} "
            f"of {n}: accumulated portions must not decrease"
        )
    flat_free = np.flatnonzero(~frozen.ravel())
    # largest |w| first; a stable sort on -|w| keeps earlier indices first among ties
    order = np.argsort(-np.abs(w.ravel()[flat_free]), kind="stable")
    new = frozen.copy().ravel()
    new[flat_free[order[: target - have]]] = True
    return new.reshape(w.shape)
