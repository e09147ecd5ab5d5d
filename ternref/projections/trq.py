"""TRQ: Ternary Neural Networks with Residual Quantization (stem + residual binarization).

Paper
-----
Yue Li, Wenrui Ding, Chunlei Liu, Baochang Zhang, Guodong Guo, "TRQ: Ternary Neural Networks with
Residual Quantization", AAAI 2021, 35(10):8538-8546, doi:10.1609/aaai.v35i10.17036 (no arXiv id).

What is implemented
-------------------
TRQ does not threshold ``w`` directly: it binarizes a *stem*, then binarizes the *residual* the
stem leaves, and adds the two [V-abs: "recursively performs quantization on full-precision weights
for a refined reconstruction by combining the binarized stem and residual parts"; one residual
level gives a ternary quantizer]. With one shared scale ``alpha``::

    stem      = alpha * sgn(w)                     (binarized stem)
    r         = w - stem                           (residual)
    residual  = alpha * sgn_r(r)                   (binarized residual)
    w_hat     = stem + residual
              = alpha [sgn(w) + sgn(w - alpha sgn(w))]
              = 2 alpha * sign(w) * 1[|w| > alpha]             (methods.md P15)

so the stem-residual pair is a ternary quantizer with threshold ``Delta = alpha`` and level
``2 alpha``. :func:`trq` computes it literally as stem + residual (see :func:`trq_parts`) so a
reader can step through the recursion; the closed form is only used in the tests.

Assumptions and ternref choices (methods.md marks TRQ's scaling [R]; the paper body could not be
checked)
--------------------------------------------------------------------------------------------------
* **Scale.** ``alpha`` defaults to ``mean |w|`` over the tensor, the least-squares scale of the
  binarized stem (XNOR-Net / BWN: ``argmin_a ||w - a sgn w||^2 = mean|w|``). The paper learns or
  derives its scales; pass ``alpha`` to override. One scale is shared by stem and residual, which
  is what makes the sum ternary; separate stem/residual scales would give four levels.
* **Signs at zero.** The stem binarizer uses ``sgn(0) = +1`` (a binary stem must be +-1). A zero
  residual (``|w| = alpha`` exactly) is a tie between the two residual levels; ternref binarizes it
  *against* the stem (``sgn_r(0) = -sgn(w)``), so the tie lands on 0, ternref's strict-``>`` tie
  rule. A plain ``sign(0) = 0`` would give a fourth level ``+-alpha``.

The backward rule (STE variants in the paper) belongs to the training method.

References
----------
Li, Y., Ding, W., Liu, C., Zhang, B., Guo, G. (2021). TRQ: Ternary Neural Networks with Residual
Quantization. AAAI 2021, 35(10), 8538-8546. doi:10.1609/aaai.v35i10.17036.
"""

from __future__ import annotations

import numpy as np

from ternref._validate import float_tensor, real_number
from ternref.projections._registry import register
from ternref.ternary import Ternary


def _alpha(w, alpha):
    if alpha is None:
        # least-squares scale of the binary stem: argmin_a ||w - a sgn(w)||^2 = mean|w|
        return np.asarray(np.mean(np.abs(w)), dtype=w.dtype)
    return np.asarray(real_number(alpha, "alpha", low=0.0), dtype=w.dtype)


def trq_parts(w, alpha=None):
    """The stem, the residual and the scale of TRQ's one-level residual quantization.

    Parameters
    ----------
    w : ndarray of float32 or float64
        Latent weights.
    alpha : float >= 0, optional
        Shared scale; default ``mean |w|``.

    Returns
    -------
    stem : ndarray
        ``alpha * sgn(w)`` with ``sgn(0) = +1``.
    residual : ndarray
        ``alpha * sgn_r(w - stem)``, with a zero residual binarized against the stem.
    alpha : ndarray, shape ()
        The scale used, in ``w``'s dtype.

    References
    ----------
    Li et al. (2021), doi:10.1609/aaai.v35i10.17036.
    """
    w = float_tensor(w, "w")
    s_stem, s_res, a = _signs(w, alpha)
    stem = a * s_stem
    residual = a * s_res
    return stem.astype(w.dtype), residual.astype(w.dtype), a


def _signs(w, alpha):
    """``(sgn(w), sgn_r(w - stem), alpha)``: the binarizations of the stem and of the residual
    (int8, +-1) that :func:`trq_parts` scales, and the scale."""
    a = _alpha(w, alpha)
    # written with comparisons viewed as int8 (0 or 1): np.where with scalar branches took
    # 6x longer than the rest of the projection on LeNet-5's fc1 (819,200 weights)
    s_stem = np.int8(1) - np.int8(2) * (w < 0).view(np.int8)  # sgn(w), sgn(0) = +1
    r = w - a * s_stem  # the residual w - stem, in w's dtype
    s_res = (r > 0).view(np.int8) - (r < 0).view(np.int8)
    # r == 0 (|w| == alpha) is a tie and is binarized against the stem (-> 0 total)
    np.copyto(s_res, -s_stem, where=r == 0)
    return s_stem, s_res, a


@register(
    "trq",
    paper="Li, Ding, Liu, Zhang, Guo. TRQ: Ternary Neural Networks with Residual Quantization "
    "(AAAI)",
    year=2021,
    arxiv=None,
    symmetric=True,
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
    summary="TRQ: binarized stem + binarized residual = 2 alpha sign(w) 1[|w| > alpha], "
    "alpha = mean|w|",
)
def trq(w, alpha=None) -> Ternary:
    """TRQ ternarization as stem + residual: ``alpha [sgn(w) + sgn(w - alpha sgn w)]``.

    Parameters
    ----------
    w : ndarray of float32 or float64, any shape
        Latent weights.
    alpha : float >= 0, optional
        Shared stem/residual scale; default ``mean |w|`` (per tensor).

    Returns
    -------
    Ternary
        Codes ``(sgn(w) + sgn_r(residual)) / 2`` in {-1, 0, +1} and per-tensor scale ``2 alpha``,
        so ``dense() == stem + residual == 2 alpha sign(w) 1[|w| > alpha]`` exactly.

    References
    ----------
    Li et al. (2021), doi:10.1609/aaai.v35i10.17036.
    """
    w = float_tensor(w, "w")
    # sgn(stem) and sgn(residual) are the int8 signs of trq_parts, before the scaling by alpha:
    # summed and halved in int8 (a float floor division of the scaled parts, as this was first
    # written, made the projection 15x TWN's on LeNet-5's fc1)
    s_stem, s_res, a = _signs(w, alpha)
    if a > 0:
        codes = (s_stem + s_res) // np.int8(2)
    else:
        # alpha = 0: stem and residual are 0 whatever the signs; report all codes 0
        codes = np.zeros(w.shape, dtype=np.int8)
    return Ternary(codes, np.asarray(2 * a, dtype=w.dtype))
