"""LAT: the loss-aware (diagonally weighted) ternary projection.

Hou and Kwok, "Loss-aware Weight Quantization of Deep Networks", ICLR 2018, arXiv:1802.08635
(extends LAB, Hou, Yao and Kwok, ICLR 2017, to ternary: LAT, and to two scales: LAT2).

LAT takes a proximal Newton step with a diagonal Hessian estimate ``D`` (Adam's
``sqrt(v) + 1e-8``; that part lives in ``ternref.methods``). The step reduces to a projection of
the full-precision iterate ``w`` in the ``D``-weighted norm:

.. math::

    \\min_{\\alpha > 0,\\; b \\in \\{-1,0,1\\}^n} \\sum_i d_i (w_i - \\alpha b_i)^2 .

Two closed forms alternate (methods.md section 2.5 and section 4 P11):

* fixed ``b``:  ``alpha = sum_i d_i |w_i| b_i^2 / sum_i d_i b_i^2`` (``d``-weighted mean over the
  support);
* fixed ``alpha``: ``b = I_{alpha/2}(w) = sign(w) [|w| > alpha/2]``, whatever ``d`` is.

``variant="exact"`` (LAT_e) finds the global optimum by sorting ``|w|`` and scanning top-``|w|``
prefixes for the largest ``(sum d a)^2 / sum d`` (shared with :func:`ternref.projections.exact`).
``variant="approx"`` (LAT_a) alternates the two closed forms from initial codes.
``two_scales=True`` (LAT2) gives the positive and negative levels their own scales; the problem
then splits into a positive and a negative half, each solved the same way.

Paper versus official code (houlu369/Loss-aware-weight-quantization, ``FNN/laq.py``)
-----------------------------------------------------------------------------------
* ``findalpha`` (LAT_e in the code) only accepts prefixes ``k < n`` whose candidate threshold
  ``c_k = (sum d a)/(sum d)/2`` strictly separates ``a_(k) > c_k > a_(k+1)``, and falls back to
  ``alpha = 0.7 * (d-weighted mean |w|)`` when there is none. That misses the optimum when it is
  the full support (for example ``n = 1``, or all ``|w|`` equal) and when ``c_k`` equals a
  magnitude exactly. ``variant="exact"`` here is the true optimum (candidates at every boundary
  between distinct magnitudes, including ``k = n``); :func:`lat_findalpha` reproduces the code's
  rule for comparison. Both agree whenever the optimum is a strict crossing with ``k < n``.
* LAT_a in the code: ``alpha`` from the previous codes, then at most 10 alternations, stopping
  when ``|alpha_new - alpha| < 1e-6``; the result is the last pair ``(alpha_t, b_t)`` with
  ``b_t = I_{alpha_t/2}(w)``. Here ``tol`` is *relative*
  (``|alpha_new - alpha| <= tol * alpha_new``) so the result does not depend on the units of
  ``w``, and the loop also stops when the codes stop changing (a fixed point).
  The scale for given codes is the least-squares ``max(0, sum d w b / sum d b^2)``, which
  equals the code's ``sum d |w| |b| / sum d |b|`` when ``sign(b) = sign(w)`` on the support
  (always true after the first step).
* Initial codes: the code's ``initialize_b`` uses ``Delta_0 = 0.7 mean|W|`` (TWN's rule); that is
  the default ``init_codes`` here. LAT2a in the code builds its first positive set from
  ``Wb >= 0`` (zeros included); here both scales start from the given codes.
* Empty support during the alternation: ``alpha = 0`` (no NaN); the next step then keeps every
  nonzero weight.

References
----------
.. [1] L. Hou and J. T. Kwok, "Loss-aware Weight Quantization of Deep Networks", ICLR 2018,
       arXiv:1802.08635.
.. [2] Official code: https://github.com/houlu369/Loss-aware-weight-quantization
       (``FNN/laq.py``: ``findalpha``, ``quantization``, ``initialize_b``).
"""

from __future__ import annotations

import numpy as np

from ternref import _validate
from ternref.projections._registry import register
from ternref.projections.exact import _exact_rows, _metric
from ternref.projections.threshold import _codes, _granularity, _rows, _ternary, _weights
from ternref.projections.twn import _twn_rows
from ternref.ternary import Ternary

VARIANTS = ("exact", "approx")


# ------------------------------------------------------------------------------ closed forms
def _scales_for_codes(rows, d_rows, b, two_scales):
    """Least-squares scale(s) for fixed codes ``b``: ``alpha = sum d w b / sum d b^2`` (>= 0)."""
    if not two_scales:
        num = (d_rows * rows * b).sum(axis=1, dtype=np.float64)
        den = (d_rows * (b != 0)).sum(axis=1, dtype=np.float64)
        alpha = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        alpha = np.maximum(alpha, 0.0)
        return alpha, alpha
    pos, neg = b > 0, b < 0
    num_p = np.where(pos, d_rows * rows, 0).sum(axis=1, dtype=np.float64)
    den_p = np.where(pos, d_rows, 0).sum(axis=1, dtype=np.float64)
    num_n = np.where(neg, -d_rows * rows, 0).sum(axis=1, dtype=np.float64)
    den_n = np.where(neg, d_rows, 0).sum(axis=1, dtype=np.float64)
    alpha_p = np.divide(num_p, den_p, out=np.zeros_like(num_p), where=den_p > 0)
    alpha_n = np.divide(num_n, den_n, out=np.zeros_like(num_n), where=den_n > 0)
    return np.maximum(alpha_p, 0.0), np.maximum(alpha_n, 0.0)


def _codes_for_scales(rows, alpha_p, alpha_n):
    """Best codes for fixed scales: ``+1 if w > alpha_p/2``, ``-1 if w < -alpha_n/2`` (ties -> 0).

    With ``alpha = 0`` every nonzero weight is kept (``|w| > 0``), which restarts an alternation
    that lost its whole support.
    """
    pos = rows > (alpha_p / 2)[:, None]
    neg = rows < -(alpha_n / 2)[:, None]
    return (pos.astype(np.int8) - neg.astype(np.int8)).astype(np.int8)


def _prepare(w, d, granularity):
    w = _weights(w)
    granularity = _granularity(granularity)
    d = np.ones_like(w) if d is None else _metric(d, w)
    return w, d, granularity, _rows(w, granularity), _rows(d, granularity)


def _init(init_codes, w, rows, granularity):
    if init_codes is None:  # official initialize_b: Delta_0 = 0.7 mean|W|
        keep, _ = _twn_rows(np.abs(rows), 0.7)
        return _codes(rows, keep)
    codes = np.asarray(init_codes)
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"init_codes must be an integer array in {{-1, 0, 1}}, got {codes.dtype}")
    if codes.shape != w.shape:
        raise ValueError(f"init_codes must have the shape of w {w.shape}, got {codes.shape}")
    if np.any(np.abs(codes) > 1):
        raise ValueError("init_codes must have values in {-1, 0, +1}")
    return _rows(codes.astype(np.int8), granularity)


def _build(b, alpha_p, alpha_n, w, granularity, two_scales):
    return _ternary(b, alpha_p, w.shape, w.dtype, granularity, alpha_n if two_scales else None)


# ------------------------------------------------------------------------------ public API
def weighted_error(w, d, t: Ternary) -> float:
    """The LAT objective ``sum_i d_i (w_i - w_hat_i)^2`` in float64 (``d=None``: Euclidean)."""
    w = np.asarray(w, dtype=np.float64)
    diff = w - t.dense().astype(np.float64)
    d = 1.0 if d is None else np.asarray(d, dtype=np.float64)
    return float(np.sum(d * diff * diff))


def lat_step(w, d, codes, *, two_scales: bool = False, granularity: str = "tensor") -> Ternary:
    """One LAT_a alternation: ``alpha <- argmin err(alpha, codes)``, then ``b <- I_{alpha/2}(w)``.

    Each step never increases the ``D``-weighted error:
    ``err(alpha_new, b_new) <= err(alpha_new, b_old) <= err(alpha_old, b_old)``, because each half
    is an exact minimisation over one block of variables.

    Parameters
    ----------
    w : ndarray of float
        Full-precision weights.
    d : ndarray of float, shape of ``w``, or None
        Positive diagonal metric; ``None`` means all ones (then this is the ADMM alternation).
    codes : ndarray of int, shape of ``w``
        Current codes ``b`` in {-1, 0, +1}.
    two_scales : bool
        LAT2: separate positive and negative scales.
    granularity : {"tensor", "channel"}

    Returns
    -------
    Ternary
        ``(alpha_new, b_new)``; its ``codes`` feed the next step.
    """
    w, d, granularity, rows, d_rows = _prepare(w, d, granularity)
    b = _init(codes, w, rows, granularity)
    alpha_p, alpha_n = _scales_for_codes(rows, d_rows, b, two_scales)
    b = _codes_for_scales(rows, alpha_p, alpha_n)
    return _build(b, alpha_p, alpha_n, w, granularity, two_scales)


def _lat_exact_rows(rows, d_rows, two_scales):
    a = np.abs(rows)
    if not two_scales:
        keep, alpha = _exact_rows(a, d_rows)
        return _codes(rows, keep), alpha, alpha
    # LAT2: positives only ever choose {0, +alpha_p}, negatives {0, -alpha_n}; solve each half.
    keep_p, alpha_p = _exact_rows(np.where(rows > 0, a, 0), d_rows)
    keep_n, alpha_n = _exact_rows(np.where(rows < 0, a, 0), d_rows)
    b = keep_p.astype(np.int8) - keep_n.astype(np.int8)
    return b, alpha_p, alpha_n


@register(
    "lat",
    paper="Hou & Kwok, Loss-aware Weight Quantization of Deep Networks (LAT_e)",
    year=2018,
    arxiv="1802.08635",
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
    summary="LAT: argmin sum d (w - alpha b)^2 (d = 1 when called as fn(w)).",
)
def lat(
    w,
    d=None,
    variant: str = "exact",
    two_scales: bool = False,
    init_codes=None,
    max_iter: int = 10,
    tol: float = 1e-6,
    granularity: str = "tensor",
) -> Ternary:
    """Loss-aware ternarization: the ``D``-weighted projection onto ``alpha * {-1, 0, 1}^n``.

    Parameters
    ----------
    w : ndarray of float32 or float64, at least 1-D
        The full-precision iterate (after the Newton step).
    d : ndarray of float, shape of ``w``, optional
        Positive diagonal Hessian estimate (``sqrt(v) + 1e-8`` in the paper). ``None`` means all
        ones, for which LAT is the exact Euclidean projection.
    variant : {"exact", "approx"}
        LAT_e (global optimum by sorting) or LAT_a (alternation from ``init_codes``).
    two_scales : bool
        LAT2: separate ``alpha_pos`` (over positives) and ``alpha_neg`` (over negatives).
    init_codes : ndarray of int, shape of ``w``, optional
        Starting codes for ``"approx"``; default ``sign(w) [|w| > 0.7 mean|w|]``.
    max_iter : int >= 1
        Maximum alternations for ``"approx"`` (official code: 10).
    tol : float >= 0
        ``"approx"`` stops when every scale moved by at most ``tol`` times its new value.
    granularity : {"tensor", "channel"}
        The paper uses one scale per layer.

    Returns
    -------
    Ternary
        Symmetric unless ``two_scales``; scales in ``w``'s dtype.

    References
    ----------
    .. [1] L. Hou and J. T. Kwok, "Loss-aware Weight Quantization of Deep Networks", ICLR 2018,
           arXiv:1802.08635.
    """
    variant = _validate.one_of(variant, "variant", VARIANTS)
    if not isinstance(two_scales, (bool, np.bool_)):
        raise TypeError(f"two_scales must be a bool, got {_validate.describe(two_scales)}")
    max_iter = _validate.integer(max_iter, "max_iter", low=1)
    tol = _validate.real_number(tol, "tol", low=0.0)
    w, d, granularity, rows, d_rows = _prepare(w, d, granularity)

    if variant == "exact":
        b, alpha_p, alpha_n = _lat_exact_rows(rows, d_rows, two_scales)
        return _build(b, alpha_p, alpha_n, w, granularity, two_scales)

    b = _init(init_codes, w, rows, granularity)
    alpha_p = alpha_n = None
    for _ in range(max_iter):
        new_p, new_n = _scales_for_codes(rows, d_rows, b, two_scales)  # alpha <- LS for b
        new_b = _codes_for_scales(rows, new_p, new_n)  # b <- I_{alpha/2}(w)
        converged = np.array_equal(new_b, b) or (
            alpha_p is not None
            and np.all(np.abs(new_p - alpha_p) <= tol * new_p)
            and np.all(np.abs(new_n - alpha_n) <= tol * new_n)
        )
        alpha_p, alpha_n, b = new_p, new_n, new_b
        if converged:
            break
    return _build(b, alpha_p, alpha_n, w, granularity, two_scales)


def lat_findalpha(w, d=None) -> Ternary:
    """LAT_e exactly as the official ``findalpha`` computes it (per tensor), for comparison.

    Sort ``|w|`` descending, ``c_k = (sum_{j<=k} d a)/(sum_{j<=k} d)/2``; keep the ``k < n`` with
    ``(a_(k) - c_k)(a_(k+1) - c_k) < 0`` and take the one maximising ``c_k^2 sum_{j<=k} d``; the
    threshold is that ``c_k`` and ``alpha = 2 c_k``. With no such ``k`` the threshold is
    ``0.7 c_n`` (so ``alpha = 0.7 * d-weighted mean |w|``). Codes use a strict ``>``.

    Parameters
    ----------
    w : ndarray of float
    d : ndarray of float, shape of ``w``, optional (all ones)

    Returns
    -------
    Ternary
        Per-tensor, symmetric.

    References
    ----------
    .. [1] L. Hou and J. T. Kwok, arXiv:1802.08635; ``FNN/laq.py`` ``findalpha`` in the official
           repository.
    """
    w = _weights(w)
    d = np.ones_like(w) if d is None else _metric(d, w)
    a, dd = np.abs(w).ravel().astype(np.float64), d.ravel().astype(np.float64)
    order = np.argsort(-a, kind="stable")
    a_s, d_s = a[order], dd[order]
    cum_d = np.cumsum(d_s)
    c = np.cumsum(d_s * a_s) / cum_d / 2
    crossing = (a_s[:-1] - c[:-1]) * (a_s[1:] - c[:-1]) < 0
    if crossing.any():
        idx = np.flatnonzero(crossing)
        thres = c[idx][np.argmax(c[idx] * c[idx] * cum_d[idx])]
    else:
        thres = 0.7 * c[-1]
    codes = _codes(w, np.abs(w) > np.float64(thres))
    return Ternary(codes, np.asarray(2 * thres, dtype=w.dtype))


@register(
    "lat_approx",
    paper="Hou & Kwok, Loss-aware Weight Quantization of Deep Networks (LAT_a)",
    year=2018,
    arxiv="1802.08635",
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
    summary="LAT_a: alternate alpha = d-weighted mean, b = I_{alpha/2}(w) from TWN codes.",
)
def lat_approx(w, d=None, **kwargs) -> Ternary:
    """``lat(w, d, variant="approx", ...)``: LAT_a, registered on its own for the property suite."""
    return lat(w, d, variant="approx", **kwargs)
