"""TWN: Ternary Weight Networks, the 0.7 rule.

Li, Zhang and Liu, "Ternary Weight Networks", arXiv:1605.04711, 2016 (NIPS 2016 workshop on
Efficient Methods for Deep Neural Networks; v3 revision 2022).

TWN wants the ternary tensor closest to ``w`` in Euclidean distance,

.. math::

    \\min_{\\alpha \\ge 0,\\; T \\in \\{-1,0,1\\}^n} \\lVert w - \\alpha T \\rVert_2^2 .

For a fixed support ``I = {i : |w_i| > Delta}`` the best scale is the mean magnitude over it,

.. math::

    \\alpha^*(\\Delta) = \\frac{1}{|I_\\Delta|} \\sum_{i \\in I_\\Delta} |w_i| ,

and the best ``Delta`` has no closed form (:func:`ternref.projections.exact` finds it by sorting).
TWN approximates it with a fixed fraction of the mean magnitude,

.. math::

    \\Delta \\approx 0.7 \\cdot \\frac{1}{n} \\sum_i |w_i| ,

a compromise between the optimum for a uniform distribution (2/3) and for a Gaussian (about
0.75, more precisely 0.767; methods.md section 4 P10).

Paper versus official code (methods.md section 2.1 and section 5 item 1)
------------------------------------------------------------------------
* Paper: one ``Delta`` and one ``alpha`` per layer (``granularity="tensor"``), factor 0.7.
* Official 2022 PyTorch code (Thinklab-SJTU/twns, ``util.py``): ``Delta()`` and ``Alpha()`` are
  computed per output channel (filter) with factor **0.75**. Call
  ``twn(w, factor=0.75, granularity="channel")`` for that variant.
* Ties ``|w_i| == Delta`` go to 0: the paper's ternary function uses a strict ``>``.

Numerics: means are accumulated in float64 (also for float32 input) and the scale is cast back
to the input dtype. An all-zero tensor (or channel) gives ``Delta = 0``, an empty support and
``alpha = 0``.

References
----------
.. [1] F. Li, B. Zhang and B. Liu, "Ternary Weight Networks", arXiv:1605.04711, 2016.
.. [2] Official code: https://github.com/Thinklab-SJTU/twns (``util.py``, 2022 revision).
"""

from __future__ import annotations

import numpy as np

from ternref import _validate
from ternref.projections._registry import register
from ternref.projections.threshold import (
    _codes,
    _granularity,
    _row_counts,
    _rows,
    _safe_mean,
    _ternary,
    _weights,
)
from ternref.ternary import Ternary


def _twn_rows(a: np.ndarray, factor: float, counts=None):
    """The 0.7 rule on each row of magnitudes ``a`` (shape ``(rows, m)``).

    ``counts`` (optional, per row) is the number of real entries when rows were padded with
    zeros (FGQ's last group); padding never enters the support because ``0 > Delta`` is false.
    Returns ``(keep, alpha)``: the boolean support and the float64 scale per row.
    """
    if counts is None:
        counts = a.shape[1]
    mean_abs = a.sum(axis=1, dtype=np.float64) / counts  # E|w| per row
    delta = factor * mean_abs  # Delta = factor * E|w|
    keep = a > delta[:, None]  # I_Delta = {|w| > Delta} (strict: ties -> 0)
    alpha = _safe_mean((a * keep).sum(axis=1, dtype=np.float64), _row_counts(keep))
    return keep, alpha


@register(
    "twn",
    paper="Li, Zhang & Liu, Ternary Weight Networks",
    year=2016,
    arxiv="1605.04711",
    symmetric=True,
    deterministic=True,
    claims=(
        "range",
        "sign_preserving",
        "coordinate_monotone",
        "monotone",
        "odd",
        "scale_equivariant",
        "permutation_equivariant",
        "idempotent",
        "dtype_preserving",
        "zero_safe",
    ),
    refutes=("optimal",),
    summary="TWN: Delta = 0.7*mean|w|, alpha = mean of |w| over |w| > Delta.",
)
def twn(w, factor: float = 0.7, granularity: str = "tensor") -> Ternary:
    """Ternarize with the TWN rule ``Delta = factor * mean|w|``, ``alpha = mean_{|w|>Delta} |w|``.

    Parameters
    ----------
    w : ndarray of float32 or float64, at least 1-D
        Latent weights; axis 0 is the output channel.
    factor : float in [0, 1)
        Threshold as a fraction of the mean magnitude. 0.7 in the paper, 0.75 in the 2022
        official code. Must be below 1 so that a nonzero tensor never has an empty support
        (``max|w| >= mean|w| > factor * mean|w|``).
    granularity : {"tensor", "channel"}
        One ``(Delta, alpha)`` per tensor (paper) or per output channel (official code).

    Returns
    -------
    Ternary
        Symmetric, of ``w``'s shape, scales in ``w``'s dtype.

    References
    ----------
    .. [1] F. Li, B. Zhang and B. Liu, "Ternary Weight Networks", arXiv:1605.04711, 2016.
    """
    w = _weights(w)
    factor = _validate.real_number(factor, "factor", low=0.0, high=1.0, high_open=True)
    granularity = _granularity(granularity)
    rows = _rows(w, granularity)
    keep, alpha = _twn_rows(np.abs(rows), factor)
    return _ternary(_codes(rows, keep), alpha, w.shape, w.dtype, granularity)
