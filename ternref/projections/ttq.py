"""TTQ: the Trained Ternary Quantization assignment (forward only).

Zhu, Han, Mao and Dally, "Trained Ternary Quantization", ICLR 2017, arXiv:1612.01064.

TTQ keeps two *asymmetric, learned* scales per layer, ``W_p`` for the positive level and ``W_n``
for the magnitude of the negative level, and assigns each weight with a threshold that is a
fraction ``t`` of the largest magnitude:

.. math::

    \\Delta = t \\cdot \\max_i |w_i|, \\qquad
    \\hat w_i = \\begin{cases} +W_p & w_i > \\Delta \\\\ 0 & |w_i| \\le \\Delta \\\\
                              -W_n & w_i < -\\Delta \\end{cases}

with ``t = 0.05`` in the paper's CIFAR-10 and ImageNet experiments. This module is the
projection only; learning ``W_p, W_n`` (and TTQ's scaled straight-through gradient) lives in
``ternref.methods``.

Paper versus official code (methods.md section 2.2)
---------------------------------------------------
* The paper first normalises ``w~ = w / max|w|`` and thresholds ``w~`` at ``t``; the TensorFlow
  code (czhu95/ternarynet, ``tw_ternarize``) thresholds ``w`` at ``t * max|w|``. The supports are
  identical; this module uses the code form.
* Ties: in the official code a weight exactly at ``+-Delta`` falls through every mask and comes out
  as ``sign(w) * 1``, unscaled (``mask_z`` is 1 there and ``mask_np`` is 1). That is an artefact;
  here ties go to 0 (strict ``>``), DESIGN.md principle 7.
* Fixed-sparsity mode (``sparsity=p``): the code's ``p_ternarize`` keeps the top
  ``int(n (1 - p))`` magnitudes of ``tanh(x)`` but then uses a strict ``>`` against the smallest
  kept one, so it keeps one weight fewer than intended. Here the ``round(p n)`` smallest magnitudes
  (ties at the cut included, so the zero fraction is at least ``p``) become 0. ``tanh`` is monotone
  and odd, so dropping it does not change the support.
* Scales: TTQ initialises ``W_p = W_n = 1`` and trains them. As a projection with no trained
  values, this module uses the least-squares scales for the chosen support: ``W_p`` = mean of
  ``w`` over the positive support, ``W_n`` = mean of ``|w|`` over the negative support (0 for an
  empty side). Pass ``alpha_pos``/``alpha_neg`` to use trained values.

References
----------
.. [1] C. Zhu, S. Han, H. Mao and W. J. Dally, "Trained Ternary Quantization", ICLR 2017,
       arXiv:1612.01064.
.. [2] Official code: https://github.com/czhu95/ternarynet (``examples/Ternary-Net/ternary.py``).
"""

from __future__ import annotations

import numpy as np

from ternref import _validate
from ternref.projections._registry import register
from ternref.projections.threshold import (
    _codes,
    _granularity,
    _rows,
    _safe_mean,
    _ternary,
    _weights,
)
from ternref.ternary import Ternary


def _sparsity_threshold(a: np.ndarray, p: float) -> np.ndarray:
    """Per-row threshold that zeroes the ``round(p m)`` smallest magnitudes of each row."""
    m = a.shape[1]
    n_zero = int(round(p * m))
    if n_zero == 0:
        return np.zeros(a.shape[0], dtype=np.float64)  # keep every nonzero weight
    # The n_zero-th smallest magnitude; everything <= it becomes 0.
    return np.partition(a, n_zero - 1, axis=1)[:, n_zero - 1].astype(np.float64)


@register(
    "ttq",
    paper="Zhu, Han, Mao & Dally, Trained Ternary Quantization",
    year=2017,
    arxiv="1612.01064",
    symmetric=False,
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
    summary="TTQ assignment: Delta = t*max|w|, asymmetric scales (least squares unless given).",
)
def ttq(
    w,
    t: float = 0.05,
    sparsity: float | None = None,
    alpha_pos: float | None = None,
    alpha_neg: float | None = None,
    granularity: str = "tensor",
) -> Ternary:
    """TTQ's asymmetric ternary assignment.

    Parameters
    ----------
    w : ndarray of float32 or float64, at least 1-D
        Latent weights.
    t : float in [0, 1)
        Threshold as a fraction of ``max|w|`` (paper default 0.05). Ignored when ``sparsity``
        is given.
    sparsity : float in [0, 1], optional
        Fixed-sparsity mode: zero the ``round(sparsity * n)`` smallest magnitudes (per scale
        group). Ties at the cut also go to 0, so the zero fraction can exceed ``sparsity``.
    alpha_pos, alpha_neg : float >= 0, optional
        Trained values ``W_p`` and ``W_n``. Each one omitted is the least-squares value for the
        support: mean of ``w`` over ``{w > Delta}``, mean of ``|w|`` over ``{w < -Delta}``.
    granularity : {"tensor", "channel"}
        TTQ uses one pair of scales per layer; ``"channel"`` gives one pair per output channel.

    Returns
    -------
    Ternary
        Asymmetric (``alpha_pos`` may differ from ``alpha_neg``), scales in ``w``'s dtype.

    References
    ----------
    .. [1] C. Zhu, S. Han, H. Mao and W. J. Dally, "Trained Ternary Quantization", ICLR 2017,
           arXiv:1612.01064.
    """
    w = _weights(w)
    t = _validate.real_number(t, "t", low=0.0, high=1.0, high_open=True)
    if sparsity is not None:
        sparsity = _validate.real_number(sparsity, "sparsity", low=0.0, high=1.0)
    if alpha_pos is not None:
        alpha_pos = _validate.real_number(alpha_pos, "alpha_pos", low=0.0)
    if alpha_neg is not None:
        alpha_neg = _validate.real_number(alpha_neg, "alpha_neg", low=0.0)
    granularity = _granularity(granularity)

    rows = _rows(w, granularity)
    a = np.abs(rows)
    if sparsity is None:
        delta = t * a.max(axis=1).astype(np.float64)  # Delta = t * max|w|
    else:
        delta = _sparsity_threshold(a, sparsity)
    pos = rows > delta[:, None]  # I_p = {w > Delta}
    neg = rows < -delta[:, None]  # I_n = {w < -Delta}

    n_rows = rows.shape[0]
    if alpha_pos is None:  # least squares: W_p = mean of w over I_p
        w_p = _safe_mean((rows * pos).sum(axis=1, dtype=np.float64), np.count_nonzero(pos, axis=1))
    else:
        w_p = np.full(n_rows, alpha_pos)
    if alpha_neg is None:  # least squares: W_n = mean of |w| over I_n
        w_n = _safe_mean((a * neg).sum(axis=1, dtype=np.float64), np.count_nonzero(neg, axis=1))
    else:
        w_n = np.full(n_rows, alpha_neg)
    return _ternary(_codes(rows, pos | neg), w_p, w.shape, w.dtype, granularity, w_n)
