"""EC2T: Entropy-Constrained Trained Ternarization (entropy-penalized centroid assignment).

Paper
-----
Arturo Marban, Daniel Becking, Simon Wiedemann, Wojciech Samek, "Learning Sparse & Ternary Neural
Networks with Entropy-Constrained Trained Ternarization (EC2T)", arXiv:2004.01077, CVPR Workshops
2020. Official engine code: d-becking/efficientCNNs, ``model_quantization/quantizer.py`` ("engine
for entropy controlled ternary quantization"; functions ``get_pmf``, ``get_distances``,
``apply_entropy_constraint``, ``quantize``), re-read at commit 750247d.

What is implemented
-------------------
Each layer has two learned centroids ``w_p, w_n >= 0``; the candidate values are
``c in {-w_n, 0, +w_p}``. Every weight goes to the centroid of least cost::

    cost_c(w) = (w - c)^2 + lambda * I_c,        I_c = -log2 P_c

``P_c`` is the empirical PMF of a *preliminary* nearest-neighbour assignment (``lambda = 0``),
with ``P_0`` forced to at least 1/2 (``spars_bound``): if ``P_0 < 1/2`` the deficit ``1/2 - P_0`` is
taken from ``P_n`` and ``P_p`` in proportion to their sizes. So ``I_0 <= I_p, I_n``: the zero
centroid is always the cheapest in information, and a larger ``lambda`` pushes more weights to 0.

* ``lambda = 0`` is nearest-centroid assignment: thresholds at ``w_p / 2`` and ``-w_n / 2``.
* The zero fraction is non-decreasing in ``lambda`` (for fixed centroids, the PMF does not depend on
  ``lambda``, and ``w`` goes to 0 iff ``(w^2 - (w - c)^2) <= lambda (I_c - I_0)`` for both ``c``,
  whose right side grows with ``lambda``).
* :func:`ec2t_lambda_max` gives the code's ``Lambda_max``: the smallest ``lambda`` at which the most
  extreme weight on either side ties with 0, i.e. for the positive side
  ``(w_max^2 - (w_max - w_p)^2) / (I_p - I_0)`` (and likewise with ``|w_min|, w_n, I_n``); the code
  then uses ``lambda = Lambda_max * lambda_max_divider * lambda_decay``.

Paper vs code vs ternref choices
--------------------------------
* **Ties.** The code's ``argmin`` over ``(w_n, w_0, w_p)`` sends a tie between ``-w_n`` and 0 to
  ``-w_n`` but a tie between 0 and ``w_p`` to 0 (first index wins). ternref sends every tie with
  the zero centroid to 0 (strict ``<`` to leave 0), so the rule is odd-symmetric. A tie between
  ``-w_n`` and ``+w_p`` (both cheaper than 0; only possible for ``w != 0``) goes to the centroid on
  ``w``'s side.
* **Empty PMF cells.** When a centroid receives no weight in the preliminary assignment the code
  substitutes a count of 1 for the missing entries; ternref keeps ``P_c = 0``, so ``I_c = inf`` and
  (for ``lambda > 0``) nothing is assigned to that centroid. For ``lambda = 0`` the information term
  is skipped entirely, as in the code (``if Lambda == 0``).
* **Default centroids.** ``w_p``/``w_n`` are learned in EC2T (initialized from a pretrained model;
  the official code starts them at ``max(W) c`` and ``|min(W)| c``, ``c`` from a grid). So that
  ``ec2t(w)`` is callable on its own, ternref defaults them to the per-sign means of the weights
  beyond ``0.7 mean|w|`` (TWN's threshold rule applied to each sign separately); 0 if a side is
  empty. This default is a convenience, not part of the paper.
* ``lambda_max`` uses the extreme weights ``max W`` and ``|min W|`` as the code does; the code's
  per-layer ``lambda_decay``, its floor on the centroids and its centroid gradients belong to the
  training method (``ternref.methods.ec2t`` lists every difference).

Gradients (TTQ-style scaled STE on the latent weights; per-region sums for the centroids) belong to
the training method.

References
----------
Marban, A., Becking, D., Wiedemann, S., Samek, W. (2020). Learning Sparse & Ternary Neural Networks
with Entropy-Constrained Trained Ternarization (EC2T). CVPR Workshops 2020. arXiv:2004.01077.
"""

from __future__ import annotations

import numpy as np

from ternref._jit import njit
from ternref._validate import float_tensor, real_number
from ternref.projections._registry import register
from ternref.ternary import Ternary

#: Lower bound forced on the preliminary probability of the zero centroid (``spars_bound``).
SPARS_BOUND = 0.5


def _centroids(w, w_p, w_n):
    if w_p is None or w_n is None:
        # TWN-style per-sign means beyond Delta = 0.7 mean|w| (ternref's default, see module doc)
        delta = 0.7 * np.mean(np.abs(w))
        pos = w[w > delta]
        neg = w[w < -delta]
        default_p = float(np.mean(pos)) if pos.size else 0.0
        default_n = float(-np.mean(neg)) if neg.size else 0.0
    w_p = default_p if w_p is None else real_number(w_p, "w_p", low=0.0)
    w_n = default_n if w_n is None else real_number(w_n, "w_n", low=0.0)
    return w_p, w_n


def _nearest(w, w_p, w_n):
    """Preliminary nearest-centroid codes (ties with 0 go to 0)."""
    d_n, d_0, d_p = (w + w_n) ** 2, w**2, (w - w_p) ** 2
    return _argmin_codes(w, d_n, d_0, d_p)


def _argmin_codes(w, c_n, c_0, c_p):
    leave_zero = np.minimum(c_n, c_p) < c_0
    positive = (c_p < c_n) | ((c_p == c_n) & (w >= 0))
    return np.where(leave_zero, np.where(positive, 1, -1), 0).astype(np.int8)


def ec2t_pmf(w, w_p=None, w_n=None) -> np.ndarray:
    """``(P_n, P_0, P_p)`` of the preliminary nearest-centroid assignment with ``P_0 >= 1/2``.

    Parameters
    ----------
    w : ndarray of float
        One layer's latent weights.
    w_p, w_n : float >= 0, optional
        Centroid magnitudes (defaults: see the module docstring).

    Returns
    -------
    ndarray, shape (3,), float64
        Probabilities summing to 1, with ``P_0 >= 0.5`` (``spars_bound``).

    References
    ----------
    Marban et al. (2020), arXiv:2004.01077; code ``get_pmf``.
    """
    w = float_tensor(w, "w")
    w_p, w_n = _centroids(w, w_p, w_n)
    codes = _nearest(w.astype(np.float64), w_p, w_n)
    return _pmf_from_counts(*(np.count_nonzero(codes == k) for k in (-1, 0, 1)))


def _pmf_from_counts(n_neg: int, n_zero: int, n_pos: int) -> np.ndarray:
    """:func:`ec2t_pmf` from the counts of the preliminary codes -1, 0, +1."""
    n = n_neg + n_zero + n_pos
    p = np.array([n_neg / n, n_zero / n, n_pos / n], dtype=np.float64)
    if p[1] < SPARS_BOUND:
        deficit = SPARS_BOUND - p[1]
        side = p[0] + p[2]
        p[0], p[2] = p[0] - p[0] / side * deficit, p[2] - p[2] / side * deficit
        p[1] = SPARS_BOUND
    return p


def _information(p):
    with np.errstate(divide="ignore"):
        return -np.log2(p)


@register(
    "ec2t",
    paper="Marban, Becking, Wiedemann, Samek. Learning Sparse & Ternary Neural Networks with "
    "Entropy-Constrained Trained Ternarization (CVPR Workshops)",
    year=2020,
    arxiv="2004.01077",
    symmetric=False,
    deterministic=True,
    claims=(
        "range",
        "sign_preserving",
        "coordinate_monotone",
        "monotone",
        "odd",
        "scale_equivariant",
        "dtype_preserving",
        "zero_safe",
    ),
    summary="EC2T: argmin_c (w - c)^2 + lambda * (-log2 P_c) over {-w_n, 0, w_p} "
    "(claims for lam = 0 and default centroids)",
)
def ec2t(w, w_p=None, w_n=None, lam=0.0) -> Ternary:
    """Assign each weight to ``argmin_c (w - c)^2 + lam * I_c`` over ``c in {-w_n, 0, +w_p}``.

    Parameters
    ----------
    w : ndarray of float32 or float64, any shape
        One layer's latent weights.
    w_p, w_n : float >= 0, optional
        Learned centroid magnitudes (positive level ``w_p``, negative level ``-w_n``). Default:
        per-sign means beyond ``0.7 mean|w|`` (a ternref convenience, see module docstring).
    lam : float >= 0, default 0.0
        Strength of the entropy constraint; 0 gives nearest-centroid assignment.

    Returns
    -------
    Ternary
        Codes and the asymmetric per-tensor scales ``alpha_pos = w_p``, ``alpha_neg = w_n`` in
        ``w``'s dtype.

    References
    ----------
    Marban et al. (2020), arXiv:2004.01077; code ``apply_entropy_constraint``, ``quantize``.
    """
    w = float_tensor(w, "w")
    lam = real_number(lam, "lam", low=0.0)
    w_p, w_n = _centroids(w, w_p, w_n)
    info = _information(ec2t_pmf(w, w_p, w_n)) if lam > 0 else None
    codes = _assign(w.astype(np.float64), w_p, w_n, lam, info)
    return Ternary(codes, np.asarray(w_p, dtype=w.dtype), np.asarray(w_n, dtype=w.dtype))


def _assign(x, w_p, w_n, lam, info):
    """Codes ``argmin_c (x - c)^2 + lam * I_c`` for float64 ``x`` (``info`` = ``I_c``, unused
    when ``lam == 0``)."""
    c_n, c_0, c_p = (x + w_n) ** 2, x**2, (x - w_p) ** 2
    if lam > 0:
        i_n, i_0, i_p = info
        c_n, c_0, c_p = c_n + lam * i_n, c_0 + lam * i_0, c_p + lam * i_p
    return _argmin_codes(x, c_n, c_0, c_p)


def _ec2t_scaled_lambda(w, w_p: float, w_n: float, divider: float, decay: float):
    """``(ec2t(w, w_p, w_n, lam), lam)``, ``lam = ec2t_lambda_max(w, w_p, w_n) * divider * decay``
    (0 when that is infinite): the training step of :class:`ternref.methods.ec2t.EC2T`.

    The same numbers as calling the two public functions. For float32/float64 ``w`` two Numba
    passes over the weights compute them (:func:`_ec2t_summary_kernel`: the preliminary codes'
    counts; :func:`_ec2t_assign_kernel`: the codes), besides ``w.max()`` and ``w.min()``, in
    float64 element by element with the same operations as the NumPy twin
    :func:`_ec2t_scaled_lambda_numpy`, so codes and ``lam`` are bit for bit the twin's
    (``tests/projections/test_ec2t.py``). The twin makes some twenty whole-array float64 passes;
    on LeNet-5's 512 x 1600 layer they were most of EC2T's extra time per training step.
    """
    w = float_tensor(w, "w")
    if w.dtype not in _KERNEL_DTYPES:
        return _ec2t_scaled_lambda_numpy(w, w_p, w_n, divider, decay)
    w_p, w_n = _centroids(w, w_p, w_n)
    flat = np.ascontiguousarray(w).reshape(-1)
    codes = np.empty(flat.shape, np.int8)
    info = _information(_pmf_from_counts(*_ec2t_summary_kernel(flat, w_p, w_n, codes)))
    # max over w > 0 and max of -w over w < 0 (NumPy's reductions vectorise, a float max in a
    # Numba loop does not without fastmath); float32 -> float64 is exact
    hi, lo = np.float64(flat.max()), np.float64(flat.min())
    lam_max = _lambda_max_from_extremes(
        hi if hi > 0 else None, -lo if lo < 0 else None, w_p, w_n, info
    )
    lam = lam_max * divider * decay if np.isfinite(lam_max) else 0.0
    if lam > 0:  # lam == 0: the preliminary nearest-centroid codes are the answer (_assign)
        i_n, i_0, i_p = info
        _ec2t_assign_kernel(flat, w_p, w_n, lam * i_n, lam * i_0, lam * i_p, codes)
    codes = codes.reshape(w.shape)
    return Ternary(codes, np.asarray(w_p, dtype=w.dtype), np.asarray(w_n, dtype=w.dtype)), lam


def _ec2t_scaled_lambda_numpy(w, w_p: float, w_n: float, divider: float, decay: float):
    """The NumPy twin of :func:`_ec2t_scaled_lambda` (whole-array passes, any float dtype)."""
    w = float_tensor(w, "w")
    w_p, w_n = _centroids(w, w_p, w_n)
    x = w.astype(np.float64)
    info = _information(ec2t_pmf(w, w_p, w_n))
    lam_max = _lambda_max(x, w_p, w_n, info)
    lam = lam_max * divider * decay if np.isfinite(lam_max) else 0.0
    codes = _assign(x, w_p, w_n, lam, info)
    return Ternary(codes, np.asarray(w_p, dtype=w.dtype), np.asarray(w_n, dtype=w.dtype)), lam


_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@njit(nogil=True)
def _code_of(x, c_n, c_0, c_p):
    """One element of :func:`_argmin_codes`, without branches (so that the loops vectorise).

    No NaN handling is needed: ``w`` is finite (``float_tensor``) and so are the centroids, so a
    cost is finite or (``lam I_c`` with ``P_c = 0``) ``+inf``, never NaN.
    """
    leave_zero = min(c_n, c_p) < c_0
    positive = (c_p < c_n) | ((c_p == c_n) & (x >= 0))
    return np.int8(leave_zero) * (np.int8(2) * np.int8(positive) - np.int8(1))


@njit(nogil=True)
def _ec2t_summary_kernel(w, w_p, w_n, codes):
    """Preliminary nearest-centroid codes of flat ``w`` (into ``codes``) and their counts
    ``(n_-1, n_0, n_+1)``, the input of :func:`_pmf_from_counts`."""
    n_neg = 0
    n_pos = 0
    for i in range(w.size):
        x = np.float64(w[i])
        d_n = x + w_n
        d_p = x - w_p
        k = _code_of(x, d_n * d_n, x * x, d_p * d_p)
        codes[i] = k
        n_neg += k < 0
        n_pos += k > 0
    return n_neg, w.size - n_neg - n_pos, n_pos


@njit(nogil=True)
def _ec2t_assign_kernel(w, w_p, w_n, li_n, li_0, li_p, codes):
    """Codes ``argmin_c (w - c)^2 + lam I_c`` of flat ``w`` into ``codes``; ``li_c = lam * I_c``
    (:func:`_assign`)."""
    for i in range(w.size):
        x = np.float64(w[i])
        d_n = x + w_n
        d_p = x - w_p
        codes[i] = _code_of(x, d_n * d_n + li_n, x * x + li_0, d_p * d_p + li_p)


def ec2t_lambda_max(w, w_p=None, w_n=None) -> float:
    """The largest useful ``lambda``: where the most extreme weight on one side ties with 0.

    For the positive side, with ``w_max = max w`` (over ``w > 0``)::

        lambda_p = (w_max^2 - (w_max - w_p)^2) / (I_p - I_0)

    and likewise ``lambda_n`` with ``|min w|``, ``w_n`` and ``I_n``. The result is
    ``min(lambda_p, lambda_n)``: above it, every weight on that side is assigned to 0 and the layer
    is no longer ternary. A side with no weights, or with ``I_c = I_0``, gives ``inf``; a side whose
    extreme weight is already 0 at ``lambda = 0`` gives 0.

    Parameters
    ----------
    w : ndarray of float
        One layer's latent weights.
    w_p, w_n : float >= 0, optional
        Centroid magnitudes (defaults as in :func:`ec2t`).

    Returns
    -------
    float
        ``lambda_max`` (may be ``inf``).

    References
    ----------
    Marban et al. (2020), arXiv:2004.01077; code ``apply_entropy_constraint``
    (``Lambda_p_max``, ``Lambda_n_max``).
    """
    w = float_tensor(w, "w")
    w_p, w_n = _centroids(w, w_p, w_n)
    info = _information(ec2t_pmf(w, w_p, w_n))
    return _lambda_max(w.astype(np.float64), w_p, w_n, info)


def _lambda_max(x, w_p, w_n, info) -> float:
    """:func:`ec2t_lambda_max` for float64 ``x`` and the information ``info = (I_n, I_0, I_p)``."""
    pos, neg = x[x > 0], -x[x < 0]
    return _lambda_max_from_extremes(
        pos.max() if pos.size else None, neg.max() if neg.size else None, w_p, w_n, info
    )


def _lambda_max_from_extremes(max_pos, max_neg, w_p, w_n, info) -> float:
    """:func:`_lambda_max` from ``max x`` over ``x > 0`` and ``max -x`` over ``x < 0`` (``None``
    for an empty side)."""
    i_n, i_0, i_p = info
    out = []
    for extreme, c, i_c in ((max_pos, w_p, i_p), (max_neg, w_n, i_n)):
        if extreme is None or not i_c > i_0:
            out.append(np.inf)
            continue
        extreme = np.float64(extreme)
        # cost(0) = cost(c) at the extreme weight: e^2 + lam I_0 = (e - c)^2 + lam I_c
        gain = extreme**2 - (extreme - c) ** 2
        out.append(max(gain, 0.0) / (i_c - i_0))
    return float(min(out))
