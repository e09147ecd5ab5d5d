"""Exact least-squares ternarization by sorting (the problem TWN approximates).

Solves, per tensor or per output channel,

.. math::

    \\min_{\\alpha \\ge 0,\\; T \\in \\{-1,0,1\\}^n} \\sum_i d_i (w_i - \\alpha T_i)^2

exactly, with ``d = 1`` (TWN's objective, Li et al. 2016, arXiv 1605.04711) or a positive
diagonal metric ``d`` (LAT's loss-aware objective, Hou & Kwok 2018, arXiv 1802.08635).
methods.md section 4 P8 (Euclidean) and P11 (weighted) derive it:

1. For a fixed support ``I`` the best scale is the weighted mean magnitude over it,
   ``alpha*(I) = sum_I d_i |w_i| / sum_I d_i``, and the error is
   ``sum_i d_i w_i^2 - (sum_I d_i |w_i|)^2 / sum_I d_i``.
2. For a fixed ``alpha`` the best support is ``{|w_i| > alpha/2}``, independent of ``d``: keeping
   ``w_i`` pays iff ``(|w_i| - alpha)^2 < w_i^2``. So the optimal support is a *top-|w| prefix*.
3. Sort ``a_(1) >= a_(2) >= ...`` (carrying ``d`` along) and pick

   .. math::

       k^* = \\arg\\max_k \\frac{\\big(\\sum_{j \\le k} d_{(j)} a_{(j)}\\big)^2}
                               {\\sum_{j \\le k} d_{(j)}},
       \\qquad \\alpha^* = \\frac{\\sum_{j \\le k^*} d_{(j)} a_{(j)}}{\\sum_{j \\le k^*} d_{(j)}} .

   With ``d = 1`` this is ``S_k^2 / k`` with ``S_k`` the sum of the ``k`` largest magnitudes.
   Cost: one sort, O(n log n).

Ties and the threshold rule
---------------------------
The result must be a threshold rule, ``T_i = sign(w_i) [|w_i| > Delta]``, so a prefix may not split
a run of equal magnitudes: only ``k`` at a boundary ``a_(k) > a_(k+1)`` (or ``k = n``) is a
candidate. Nothing is lost: inside a run of equal magnitudes ``a`` the objective
``(S + a D)^2 / (K + D)`` (``D`` the weight added so far) is quasi-convex in ``D``, so its maximum
over the run is at an end. Zero magnitudes never enter the support (adding one lowers the
objective). The implied threshold is ``Delta* = a_(k*+1)`` (any value in
``[a_(k*+1), a_(k*))`` gives the same codes). If two candidates score exactly equal the smaller
``k`` (sparser) wins. An all-zero row gets ``alpha = 0`` and all codes 0.

Numerics: magnitudes are summed in float64; the score is maximised as
``S_k / sqrt(D_k)`` (same argmax, no squaring, so no overflow for large weights); the scale is
cast back to the input dtype. Scaling ``w`` by a power of two scales every partial sum exactly,
so the result is exactly scale equivariant for such factors.

References
----------
.. [1] F. Li, B. Zhang and B. Liu, "Ternary Weight Networks", arXiv:1605.04711, 2016.
.. [2] L. Hou and J. T. Kwok, "Loss-aware Weight Quantization of Deep Networks", ICLR 2018,
       arXiv:1802.08635.
"""

from __future__ import annotations

import numpy as np

from ternref import _validate
from ternref.projections._registry import register
from ternref.projections.threshold import _codes, _granularity, _rows, _ternary, _weights
from ternref.ternary import Ternary


def _metric(d, w: np.ndarray, name: str = "d") -> np.ndarray:
    """Validate a diagonal metric: same shape as ``w``, finite, strictly positive."""
    d = _validate.float_array(d, name)
    if d.shape != w.shape:
        raise ValueError(f"{name} must have the shape of w {w.shape}, got shape {d.shape}")
    if np.any(d <= 0):
        raise ValueError(
            f"{name} must be > 0 everywhere (a diagonal metric), got minimum {float(d.min())}"
        )
    return d


#: Rows with at least this many entries take the bucketed search (:func:`_exact_row_buckets`);
#: shorter rows are sorted whole (:func:`_exact_rows_sorted`, the definition as written above).
BUCKET_MIN_SIZE = 8192
#: Magnitude buckets of the bucketed search.
N_BUCKETS = 2048


def _exact_rows(a: np.ndarray, d: np.ndarray | None = None, min_bucket_size=None):
    """Exact (weighted) least-squares support and scale for each row of magnitudes ``a``.

    Rows of ``BUCKET_MIN_SIZE`` entries or more (``min_bucket_size`` overrides it, for tests)
    take :func:`_exact_row_buckets`, which finds the same optimum without sorting the row; the
    others :func:`_exact_rows_sorted`. Both return ``(keep, alpha)`` as documented there.
    """
    limit = BUCKET_MIN_SIZE if min_bucket_size is None else min_bucket_size
    if a.shape[1] < limit:
        return _exact_rows_sorted(a, d)
    keep = np.empty(a.shape, dtype=bool)
    alpha = np.empty(a.shape[0])
    for r in range(a.shape[0]):
        keep[r], alpha[r] = _exact_row_buckets(a[r], None if d is None else d[r])
    return keep, alpha


def _exact_row_buckets(a: np.ndarray, d: np.ndarray | None, n_buckets: int = N_BUCKETS):
    """The optimum of :func:`_exact_rows_sorted` for one row, sorting only a few buckets of it.

    LAT projects every quantized layer at every training step; a stable argsort of LeNet-5's
    819,200 fc1 weights alone took longer than the layer's products. The optimal support is a
    top-|w| prefix (module docstring), so it is enough to look at prefixes in a few places:

    1. Bucket the magnitudes by value, ``j = floor(a * B / max(a))`` (monotone in ``a``, so equal
       magnitudes share a bucket and every bucket holds larger magnitudes than the ones below),
       and sum ``d a`` and ``d`` per bucket: ``s_j``, ``e_j``. ``S_j, D_j`` are those sums over
       the buckets above ``j``.
    2. Every nonempty bucket ``j >= 1`` ends at a boundary between distinct nonzero magnitudes,
       so ``L = max_j (S_j + s_j) / sqrt(D_j + e_j)`` is the score of a real candidate.
    3. A prefix that ends inside bucket ``j`` keeps ``x <= s_j`` of the ``d a`` mass and ``y`` of
       the ``d`` mass, with ``x <= hi_j y`` (every magnitude in the bucket is ``<= hi_j``, the
       bucket's upper edge). Its score ``(S_j + x) / sqrt(D_j + y)`` is at most
       ``g(y) = (S_j + min(hi_j y, s_j)) / sqrt(D_j + y)``; for ``y <= s_j / hi_j`` the
       derivative of ``g`` has the sign of ``y - (S_j - 2 hi_j D_j) / hi_j`` (down, then up),
       and beyond that point the numerator is constant, so ``g``'s maximum is at ``y = 0`` or
       ``y = s_j / hi_j``: ``U_j = max(S_j / sqrt(D_j), (S_j + s_j) / sqrt(D_j + s_j / hi_j))``.
    4. A bucket with ``U_j < L`` cannot hold the optimum. The others (typically a handful
       around the optimal threshold) are sorted and scanned exactly as
       :func:`_exact_rows_sorted` scans the whole row, their prefix sums offset by ``S_j, D_j``.

    Only the order of the floating-point additions differs from the full sort (the sums are in
    float64, the comparison in step 4 has a relative margin of 1e-9 so rounding never prunes the
    optimum); ``tests/projections/test_exact.py`` checks both paths against each other.

    Returns
    -------
    keep : ndarray of bool, shape (m,)
    alpha : float
    """
    m = a.shape[0]
    top = float(a.max())
    if not top > 0:  # all zero: no support, alpha 0 (as the sorted path)
        return np.zeros(m, dtype=bool), 0.0
    a64 = a.astype(np.float64)
    inv_width = n_buckets / top
    idx = np.minimum((a64 * inv_width).astype(np.intp), n_buckets - 1)
    if d is None:
        e = np.bincount(idx, minlength=n_buckets).astype(np.float64)
        s = np.bincount(idx, weights=a64, minlength=n_buckets)
    else:
        d64 = d.astype(np.float64)
        e = np.bincount(idx, weights=d64, minlength=n_buckets)
        s = np.bincount(idx, weights=d64 * a64, minlength=n_buckets)
    nonempty = np.bincount(idx, minlength=n_buckets) > 0
    # sums over the buckets strictly above j
    s_above = np.concatenate([np.cumsum(s[::-1])[::-1][1:], [0.0]])
    e_above = np.concatenate([np.cumsum(e[::-1])[::-1][1:], [0.0]])
    full = np.where(nonempty, (s_above + s) / np.sqrt(np.maximum(e_above + e, 1e-300)), -1.0)
    full[0] = -1.0  # bucket 0 may end at a zero magnitude: not a candidate by itself
    lower = full.max()
    hi = (np.arange(1, n_buckets + 1) / inv_width) * (1 + 1e-12)  # upper edges, rounded up
    with np.errstate(divide="ignore", invalid="ignore"):
        at_top = np.where(e_above > 0, s_above / np.sqrt(e_above), 0.0)
        at_mass = (s_above + s) / np.sqrt(e_above + s / hi)
    upper = np.maximum(at_top, np.nan_to_num(at_mass, nan=0.0))
    cand = nonempty & (upper >= lower * (1 - 1e-9))
    sel = np.flatnonzero(cand[idx])
    # the selected entries in descending magnitude (ties by position, as the sorted path)
    order = sel[np.argsort(-a[sel], kind="stable")]
    a_s, j_s = a[order], idx[order]
    w_s = np.ones(len(order)) if d is None else d64[order]
    cs_num = np.cumsum(w_s * a64[order])
    cs_den = np.cumsum(w_s)
    # prefix sums restarted at each bucket (a run of equal j in j_s), then offset by the buckets
    # above: the sums of the sorted path's prefixes that end inside those buckets
    starts = np.flatnonzero(np.r_[True, j_s[1:] != j_s[:-1]])
    run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(order)]))
    base_num = np.r_[0.0, cs_num][starts][run]
    base_den = np.r_[0.0, cs_den][starts][run]
    num = s_above[j_s] + (cs_num - base_num)
    den = e_above[j_s] + (cs_den - base_den)
    boundary = np.ones(len(order), dtype=bool)
    boundary[:-1] = a_s[:-1] > a_s[1:]  # the last entry of a bucket is always a boundary
    valid = boundary & (a_s > 0)
    if not valid.any():  # unreachable when top > 0 (the top bucket is always selected)
        return np.zeros(m, dtype=bool), 0.0
    score = np.where(valid, num / np.sqrt(den), -1.0)
    k = int(np.argmax(score))  # first maximum: the sparser support on an exact tie
    return a >= a_s[k], float(num[k] / den[k])


def _exact_rows_sorted(a: np.ndarray, d: np.ndarray | None = None):
    """Exact (weighted) least-squares support and scale for each row of magnitudes ``a``, by
    sorting every row (steps 1-3 of the module docstring, as written).

    Parameters
    ----------
    a : ndarray, shape (rows, m)
        Magnitudes ``|w|``, one scale group per row.
    d : ndarray, shape (rows, m), optional
        Positive weights; ``None`` means all ones.

    Returns
    -------
    keep : ndarray of bool, shape (rows, m)
        The optimal support ``{|w| > Delta*}``.
    alpha : ndarray of float64, shape (rows,)
        The optimal scale (0 for an all-zero row).
    """
    n_rows, m = a.shape
    if d is None:
        a_sorted = np.sort(a, axis=1)[:, ::-1]  # a_(1) >= a_(2) >= ... per row
        num = np.cumsum(a_sorted, axis=1, dtype=np.float64)  # S_k
        den = np.arange(1, m + 1, dtype=np.float64)  # D_k = k
        den = np.broadcast_to(den, (n_rows, m))
    else:
        order = np.argsort(-a, axis=1, kind="stable")
        a_sorted = np.take_along_axis(a, order, axis=1)
        d_sorted = np.take_along_axis(d, order, axis=1).astype(np.float64)
        num = np.cumsum(d_sorted * a_sorted, axis=1)  # sum_{j<=k} d_(j) a_(j)
        den = np.cumsum(d_sorted, axis=1)  # D_k = sum_{j<=k} d_(j)

    # Candidates: boundaries between distinct magnitudes, never a zero magnitude.
    boundary = np.ones((n_rows, m), dtype=bool)
    boundary[:, :-1] = a_sorted[:, :-1] > a_sorted[:, 1:]
    valid = boundary & (a_sorted > 0)
    score = np.where(valid, num / np.sqrt(den), -1.0)  # S_k / sqrt(D_k), same argmax as S^2/D
    k_star = np.argmax(score, axis=1)  # first maximum: the sparser support on an exact tie
    has_support = valid.any(axis=1)

    rows = np.arange(n_rows)
    smallest_kept = a_sorted[rows, k_star]  # a_(k*): keep |w| >= a_(k*), i.e. |w| > a_(k*+1)
    alpha = np.where(has_support, num[rows, k_star] / den[rows, k_star], 0.0)
    keep = (a >= smallest_kept[:, None]) & has_support[:, None]
    return keep, alpha


@register(
    "exact",
    paper="Exact least-squares ternarization (the TWN objective solved by sorting)",
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
        "optimal",
        "zero_safe",
    ),
    summary="Exact argmin over alpha, T of ||w - alpha T||^2 by sorting |w| (O(n log n)).",
)
def exact(w, d=None, granularity: str = "tensor") -> Ternary:
    """Exact (optionally diagonal-weighted) least-squares ternary projection.

    Parameters
    ----------
    w : ndarray of float32 or float64, at least 1-D
        Latent weights; axis 0 is the output channel.
    d : ndarray of float, shape of ``w``, optional
        Positive diagonal metric (LAT's ``D``). ``None`` means the Euclidean norm.
    granularity : {"tensor", "channel"}
        One scale per tensor or per output channel.

    Returns
    -------
    Ternary
        The minimiser of ``sum_i d_i (w_i - alpha T_i)^2``; symmetric; scales in ``w``'s dtype.

    References
    ----------
    .. [1] F. Li, B. Zhang and B. Liu, "Ternary Weight Networks", arXiv:1605.04711, 2016.
    .. [2] L. Hou and J. T. Kwok, "Loss-aware Weight Quantization of Deep Networks", ICLR 2018,
           arXiv:1802.08635.
    """
    w = _weights(w)
    granularity = _granularity(granularity)
    d_rows = None if d is None else _rows(_metric(d, w), granularity)
    rows = _rows(w, granularity)
    keep, alpha = _exact_rows(np.abs(rows), d_rows)
    return _ternary(_codes(rows, keep), alpha, w.shape, w.dtype, granularity)
