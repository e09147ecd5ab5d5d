"""ProxQuant: the ternarizer it regularizes towards, and its two proximal operators.

Bai, Wang and Liberty, "ProxQuant: Quantized Neural Networks via Proximal Operators", ICLR 2019,
arXiv:1810.00861.

ProxQuant trains the full-precision weights ``theta`` with a prox-gradient method on a regularized
loss, ``theta <- prox_{eta lambda R}(theta - eta grad L(theta))``, where ``R`` measures the distance
from ``theta`` to the quantized set and ``lambda`` grows with the epoch (homotopy). This module
holds the forward pieces; the training loop is in ``ternref.methods``.

The ternarizer ``q`` (official ``reg.py``, ``ternarize(A, delta_method='mean')``)
--------------------------------------------------------------------------------
.. math::

    \\Delta = 0.7 \\cdot \\operatorname{mean}|\\theta|, \\qquad
    q(\\theta)_i = \\begin{cases}
        \\operatorname{mean}\\{\\theta_j : \\theta_j \\ge \\Delta\\} & \\theta_i \\ge \\Delta \\\\
        0 & |\\theta_i| < \\Delta \\\\
        \\operatorname{mean}\\{\\theta_j : \\theta_j \\le -\\Delta\\} & \\theta_i \\le -\\Delta
    \\end{cases}

Two asymmetric scales, each the mean of the surviving weights themselves (so ``alpha_neg`` is the
mean magnitude of the negative survivors). Note the tie rule: the code keeps ``|theta| == Delta``
(``>=``), the opposite of TWN's strict ``>``; this module follows the code and a test pins it.
An all-zero tensor has ``Delta = 0``: the code would then call every zero a "survivor" of both
signs with mean 0; here all codes are 0 and both scales 0 (same ``dense()``). An empty side (no
positive, or no negative, survivor) gets scale 0 (the code's ``mean`` of an empty tensor is NaN,
but it is never written).

The proximal operators (arrays, not registered projections)
-----------------------------------------------------------
* Ternary (what ``prox_operator(reg, 'ternary')`` computes):
  ``x = (v + lambda q(v)) / (1 + lambda)``, the exact minimiser of
  ``0.5 ||x - v||^2 + (lambda/2) ||x - q||^2`` with ``q = q(v)`` held fixed. It satisfies
  ``(x - v) + lambda (x - q) = 0``, lies on the segment ``[v, q]``, is ``v`` for ``lambda = 0``
  and tends to ``q`` as ``lambda -> inf`` (methods.md section 4 P14).
* L1 ("soft threshold towards the quantized point", ``soft_threshold`` in ``reg.py``):
  ``x = q + sign(v - q) max(|v - q| - lambda, 0)``, the prox of ``lambda ||x - q||_1`` with ``q``
  fixed.

References
----------
.. [1] Y. Bai, Y.-X. Wang and E. Liberty, "ProxQuant: Quantized Neural Networks via Proximal
       Operators", ICLR 2019, arXiv:1810.00861.
.. [2] Official code: https://github.com/allenbai01/ProxQuant (``reg.py``).
"""

from __future__ import annotations

import numpy as np

from ternref import _validate
from ternref.projections._registry import register
from ternref.projections.threshold import (
    _granularity,
    _rows,
    _safe_mean,
    _ternary,
    _weights,
)
from ternref.ternary import Ternary


@register(
    "proxquant",
    paper="Bai, Wang & Liberty, ProxQuant: Quantized Neural Networks via Proximal Operators",
    year=2019,
    arxiv="1810.00861",
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
    summary="ProxQuant ternarize: Delta = 0.7 mean|w| (>=), scales = means of the survivors.",
)
def proxquant(w, granularity: str = "tensor") -> Ternary:
    """ProxQuant's asymmetric ternarizer ``q``.

    Parameters
    ----------
    w : ndarray of float32 or float64, at least 1-D
        Full-precision weights ``theta``.
    granularity : {"tensor", "channel"}
        The code uses one ``Delta`` and one pair of scales per tensor.

    Returns
    -------
    Ternary
        Codes ``+1`` for ``w >= Delta``, ``-1`` for ``w <= -Delta`` (``Delta > 0``), else 0;
        ``alpha_pos`` = mean of the positive survivors, ``alpha_neg`` = mean magnitude of the
        negative survivors.

    Notes
    -----
    Idempotent: on ``q(w)`` the mean magnitude can only drop (small weights became 0), so the
    new threshold is at most the old one, which both survivor means exceed.

    References
    ----------
    .. [1] Y. Bai, Y.-X. Wang and E. Liberty, arXiv:1810.00861, 2019.
    """
    w = _weights(w)
    granularity = _granularity(granularity)
    rows = _rows(w, granularity)
    delta = 0.7 * np.abs(rows).mean(axis=1, dtype=np.float64)[:, None]  # Delta = 0.7 mean|w|
    live = delta > 0  # an all-zero row has no survivors
    pos = (rows >= delta) & live  # the code's ">=": ties at Delta are kept
    neg = (rows <= -delta) & live
    alpha_p = _safe_mean((rows * pos).sum(axis=1, dtype=np.float64), np.count_nonzero(pos, axis=1))
    alpha_n = _safe_mean(-(rows * neg).sum(axis=1, dtype=np.float64), np.count_nonzero(neg, axis=1))
    codes = pos.astype(np.int8) - neg.astype(np.int8)
    return _ternary(codes, alpha_p, w.shape, w.dtype, granularity, alpha_n)


def _lam(lam) -> float:
    return _validate.real_number(lam, "lam", low=0.0)


def prox_ternary(v, lam: float, granularity: str = "tensor") -> np.ndarray:
    """ProxQuant's ternary prox step ``x = (v + lam q(v)) / (1 + lam)``.

    Parameters
    ----------
    v : ndarray of float
        The point after the gradient step, ``theta - eta grad L``.
    lam : float >= 0
        Prox strength (``eta * lambda_t`` in training).
    granularity : {"tensor", "channel"}
        Passed to :func:`proxquant` for ``q``.

    Returns
    -------
    ndarray, shape and dtype of ``v``
        The exact minimiser of ``0.5 ||x - v||^2 + (lam / 2) ||x - q||^2`` with ``q = q(v)``.

    References
    ----------
    .. [1] Y. Bai, Y.-X. Wang and E. Liberty, arXiv:1810.00861, 2019 (``reg.py``,
           ``prox_operator(reg, 'ternary')``).
    """
    v = _weights(v, "v")
    lam = _lam(lam)
    q = proxquant(v, granularity=granularity).dense()
    return ((v + v.dtype.type(lam) * q) / v.dtype.type(1.0 + lam)).astype(v.dtype)


def prox_soft(v, lam: float, granularity: str = "tensor") -> np.ndarray:
    """L1 prox towards the ternarized point: ``x = q + sign(v - q) max(|v - q| - lam, 0)``.

    Parameters
    ----------
    v : ndarray of float
    lam : float >= 0
        Threshold of the soft shrinkage.
    granularity : {"tensor", "channel"}
        Passed to :func:`proxquant` for ``q``.

    Returns
    -------
    ndarray, shape and dtype of ``v``
        Moves each entry towards ``q(v)`` by ``lam``, never past it.

    References
    ----------
    .. [1] Y. Bai, Y.-X. Wang and E. Liberty, arXiv:1810.00861, 2019 (``reg.py``,
           ``soft_threshold``).
    """
    v = _weights(v, "v")
    lam = _lam(lam)
    q = proxquant(v, granularity=granularity).dense()
    r = v - q
    return (q + np.sign(r) * np.maximum(np.abs(r) - v.dtype.type(lam), 0)).astype(v.dtype)
