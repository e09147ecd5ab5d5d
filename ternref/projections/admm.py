"""ADMM's projection step: onto {-alpha, 0, +alpha}^n with the scale alpha unknown.

Leng, Dou, Li, Zhu and Jin, "Extremely Low Bit Neural Network: Squeeze the Last Bit Out with
ADMM", AAAI 2018, arXiv:1707.09870.

ADMM trains ``min_W f(W) + I_C(G)  s.t.  W = G`` by alternating an SGD step on ``W``, a projection
``G <- Pi_C(W + mu)`` and a dual step ``mu <- mu + W - G`` (that loop is in ``ternref.methods``).
For ternary weights ``C = {alpha Q : alpha > 0, Q in {-1, 0, 1}^n}`` and the projection

.. math::

    \\min_{\\alpha, Q} \\lVert V - \\alpha Q \\rVert_2^2

has no closed form; the paper alternates the two partial minimisations:

.. math::

    \\alpha \\leftarrow \\frac{V^\\top Q}{Q^\\top Q}, \\qquad
    Q \\leftarrow \\Pi_{\\{-1,0,1\\}}(V / \\alpha) \\;(\\text{round to the nearest level}) .

Rounding ``V/alpha`` to the nearest of {-1, 0, 1} is the threshold ``|v| > alpha/2``; the exact
midpoint ``|v| = alpha/2`` (equal error either way) goes to 0, the library's tie rule. This is
the LAT_a alternation with ``D = I`` (methods.md section 2.7), and each half-step can only lower
the error, so the error never increases (methods.md section 4 P11).

Assumed details (not stated in what could be checked of the paper; tagged [R] in methods.md)
-----------------------------------------------------------------------------------------------
* Initial ``Q``: TWN's codes ``sign(V) [|V| > 0.7 mean|V|]`` (the paper says only "a few
  iterations").
* Stopping: when ``Q`` stops changing (a fixed point of both half-steps) or after ``max_iter``
  alternations, or when ``alpha`` moves by at most ``tol`` relative. The returned scale is the
  least-squares ``V^T Q / Q^T Q`` for the returned ``Q`` (the alternation always ends with the
  ``alpha`` step).
* An empty ``Q`` (only for an all-zero ``V``) gives ``alpha = 0``.

References
----------
.. [1] C. Leng, Z. Dou, H. Li, S. Zhu and R. Jin, "Extremely Low Bit Neural Network: Squeeze the
       Last Bit Out with ADMM", AAAI 2018, arXiv:1707.09870.
"""

from __future__ import annotations

import numpy as np

from ternref import _validate
from ternref.projections._registry import register
from ternref.projections.threshold import _codes, _granularity, _rows, _ternary, _weights
from ternref.projections.twn import _twn_rows
from ternref.ternary import Ternary


def _alpha_for(rows, q):
    """alpha = V^T Q / Q^T Q per row (0 for an empty Q); >= 0 whenever sign(Q) = sign(V)."""
    num = (rows * q).sum(axis=1, dtype=np.float64)
    den = np.count_nonzero(q, axis=1).astype(np.float64)
    alpha = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return np.maximum(alpha, 0.0)


def _round_to_levels(rows, alpha):
    """Q = nearest of {-1, 0, 1} to V / alpha, i.e. sign(V) [|V| > alpha / 2] (midpoint -> 0)."""
    keep = np.abs(rows) > (alpha / 2)[:, None]
    keep &= (alpha > 0)[:, None]  # alpha = 0: every level is 0, keep nothing
    return _codes(rows, keep)


def admm_step(v, codes, granularity: str = "tensor") -> Ternary:
    """One alternation of the ADMM projection: ``alpha <- V^T Q / Q^T Q``, ``Q <- round(V/alpha)``.

    Parameters
    ----------
    v : ndarray of float
        The point to project (``W + mu`` in ADMM).
    codes : ndarray of int, shape of ``v``
        Current ``Q`` in {-1, 0, +1}.
    granularity : {"tensor", "channel"}

    Returns
    -------
    Ternary
        ``(alpha, Q_new)``; ``||V - alpha Q_new||^2 <= ||V - alpha_old Q||^2`` for any
        ``alpha_old``.
    """
    v = _weights(v, "v")
    granularity = _granularity(granularity)
    q = np.asarray(codes)
    if not np.issubdtype(q.dtype, np.integer) or q.shape != v.shape or np.any(np.abs(q) > 1):
        raise ValueError(
            f"codes must be integers in {{-1, 0, 1}} of shape {v.shape}, got "
            f"{_validate.describe(codes)}"
        )
    rows = _rows(v, granularity)
    alpha = _alpha_for(rows, _rows(q, granularity))
    return _ternary(_round_to_levels(rows, alpha), alpha, v.shape, v.dtype, granularity)


@register(
    "admm",
    paper="Leng, Dou, Li, Zhu & Jin, Extremely Low Bit Neural Network: Squeeze the Last Bit "
    "Out with ADMM (projection step)",
    year=2018,
    arxiv="1707.09870",
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
    summary="ADMM projection: alternate alpha = V'Q/Q'Q and Q = round(V/alpha) from TWN codes.",
)
def admm(v, max_iter: int = 20, tol: float = 0.0, granularity: str = "tensor") -> Ternary:
    """Project onto ``alpha * {-1, 0, 1}^n`` (unknown ``alpha``) by alternating minimisation.

    Parameters
    ----------
    v : ndarray of float32 or float64, at least 1-D
        The point to project.
    max_iter : int >= 1
        Maximum alternations.
    tol : float >= 0
        Also stop when every ``alpha`` moved by at most ``tol`` times its new value (0: only a
        fixed point of ``Q`` or ``max_iter`` stops).
    granularity : {"tensor", "channel"}
        One ``alpha`` per tensor (paper: per layer) or per output channel.

    Returns
    -------
    Ternary
        A feasible point; a local minimiser where both half-steps are fixed.

    References
    ----------
    .. [1] C. Leng et al., arXiv:1707.09870, 2018.
    """
    v = _weights(v, "v")
    max_iter = _validate.integer(max_iter, "max_iter", low=1)
    tol = _validate.real_number(tol, "tol", low=0.0)
    granularity = _granularity(granularity)
    rows = _rows(v, granularity)
    keep, _ = _twn_rows(np.abs(rows), 0.7)
    q = _codes(rows, keep)  # Q_0 from TWN's threshold (assumed; see module docstring)
    alpha = _alpha_for(rows, q)
    for _ in range(max_iter):
        new_q = _round_to_levels(rows, alpha)  # Q <- round(V / alpha)
        new_alpha = _alpha_for(rows, new_q)  # alpha <- V^T Q / Q^T Q
        done = np.array_equal(new_q, q) or np.all(np.abs(new_alpha - alpha) <= tol * new_alpha)
        q, alpha = new_q, new_alpha
        if done:
            break
    return _ternary(q, alpha, v.shape, v.dtype, granularity)
