"""BitNet b1.58: absmean weight ternarization and absmax int8 activations.

Ma, Wang, Wang, Huang, Ma, Wang, Dong, Wang, Xue and Wei, "The Era of 1-bit LLMs: All Large
Language Models are in 1.58 Bits", arXiv:2402.17764, 2024 (post-survey).

Weights (absmean, per tensor)
-----------------------------
.. math::

    \\gamma = \\frac{1}{nm}\\sum_{ij} |W_{ij}|, \\qquad
    \\tilde W = \\operatorname{RoundClip}\\Big(\\frac{W}{\\gamma + \\epsilon}, -1, 1\\Big), \\qquad
    \\hat W = \\gamma \\tilde W

with ``RoundClip(x, a, b) = max(a, min(b, round(x)))``. The implied threshold is
``Delta = (gamma + eps) / 2`` (about half the mean magnitude; methods.md section 4 P15).

Choices and pitfalls (methods.md section 2.19):

* ``round`` is round-half-to-even in both NumPy and PyTorch, so a weight with
  ``|w| / (gamma + eps) == 0.5`` exactly goes to 0, and ``1.5`` to 2, clipped to 1. This matches
  the library-wide tie rule (ties at the threshold go to 0) and is pinned by a test.
* Paper versus the released training code (the FAQ PDF in microsoft/unilm): the paper divides
  by ``gamma + eps``; the code uses ``gamma.clamp(min=1e-5)`` and dequantizes with that clamped
  value. They differ only when ``mean|W| < 1e-5``. This module follows the paper: codes from
  ``W / (gamma + eps)``, scale ``alpha = gamma``.
* The scale is ``mean|W|`` over *all* weights, not the least-squares scale over the support, so
  the projection is **not idempotent**: on ``Pi(W) = gamma T`` with density ``p`` (fraction of
  nonzero codes) the new mean is ``p gamma``, the codes are unchanged and
  ``Pi(Pi(W)) = p Pi(W)`` (methods.md section 4 P7).
* ``eps`` breaks exact scale equivariance when ``mean|W|`` is comparable to ``eps`` (for
  ``W`` scaled down towards ``eps`` the codes drift to 0), so the registry refutes it; with
  ``eps = 0`` it holds.
* All-zero ``W``: ``gamma = 0``; with ``eps > 0`` every code is 0 and ``alpha = 0``; with
  ``eps = 0`` the codes are defined as 0 (no division by zero).

Activations (absmax, per token)
-------------------------------
``s = 127 / max(max_j |x_j|, eps)`` per row (token), ``q = clip(round(x s), -128, 127)`` as int8,
and ``x ~= q / s``. The clamp makes an all-zero row safe (``q = 0``).

References
----------
.. [1] S. Ma, H. Wang, L. Ma, L. Wang, W. Wang, S. Huang, L. Dong, R. Wang, J. Xue and F. Wei,
       "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits", arXiv:2402.17764,
       2024.
.. [2] "The Era of 1-bit LLMs: Training Tips, Code and FAQ", microsoft/unilm, ``bitnet/``.
"""

from __future__ import annotations

import numpy as np

from ternref import _validate
from ternref.projections._registry import register
from ternref.projections.threshold import _granularity, _rows, _ternary, _weights
from ternref.ternary import Ternary


@register(
    "bitnet",
    paper="Ma et al., The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits",
    year=2024,
    arxiv="2402.17764",
    symmetric=True,
    deterministic=True,
    claims=(
        "range",
        "sign_preserving",
        "coordinate_monotone",
        "monotone",
        "odd",
        "permutation_equivariant",
        "dtype_preserving",
        "zero_safe",
    ),
    refutes=("idempotent", "scale_equivariant"),
    summary="BitNet b1.58 absmean: codes = RoundClip(W/(mean|W|+eps)), alpha = mean|W|.",
)
def bitnet(w, eps: float = 1e-5, granularity: str = "tensor") -> Ternary:
    """BitNet b1.58 absmean ternarization.

    Parameters
    ----------
    w : ndarray of float32 or float64, at least 1-D
        Latent weights.
    eps : float >= 0
        Added to ``gamma = mean|W|`` before dividing (paper default 1e-5).
    granularity : {"tensor", "channel"}
        The paper uses one ``gamma`` per tensor; ``"channel"`` computes it per output channel.

    Returns
    -------
    Ternary
        Codes ``clip(round(W / (gamma + eps)), -1, 1)`` with scale ``gamma``.

    References
    ----------
    .. [1] S. Ma et al., "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits",
           arXiv:2402.17764, 2024.
    """
    w = _weights(w)
    eps = _validate.real_number(eps, "eps", low=0.0)
    granularity = _granularity(granularity)
    rows = _rows(w, granularity)
    gamma = np.abs(rows).mean(axis=1, dtype=np.float64)  # gamma = mean|W|
    denom = gamma + eps
    safe = np.where(denom > 0, denom, 1.0)
    # RoundClip(W / (gamma + eps), -1, 1); np.round is half-to-even like torch.round.
    codes = np.clip(np.round(rows / safe[:, None]), -1, 1)
    codes = np.where(denom[:, None] > 0, codes, 0).astype(np.int8)
    return _ternary(codes, gamma, w.shape, w.dtype, granularity)


def bitnet_activation(x, eps: float = 1e-5):
    """BitNet's 8-bit absmax activation quantizer, one scale per row (token).

    Parameters
    ----------
    x : ndarray of float32 or float64, at least 1-D
        Activations; the last axis holds the features of one token.
    eps : float > 0
        Lower clamp of ``max|x|`` (the code's ``clamp(min=1e-5)``), so an all-zero row is safe.

    Returns
    -------
    q : ndarray of int8, shape of ``x``
        ``clip(round(x * s), -128, 127)`` (round half to even).
    scale : ndarray, shape ``x.shape[:-1] + (1,)``, dtype of ``x``
        ``s = 127 / max(max|x|, eps)`` per row; ``x ~= q / scale``.

    References
    ----------
    .. [1] S. Ma et al., "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits",
           arXiv:2402.17764, 2024.
    """
    x = _weights(x, "x")
    eps = _validate.real_number(eps, "eps", low=0.0, low_open=True)
    absmax = np.maximum(np.abs(x).max(axis=-1, keepdims=True), x.dtype.type(eps))
    scale = (x.dtype.type(127.0) / absmax).astype(x.dtype)
    q = np.clip(np.round(x * scale), -128, 127).astype(np.int8)
    return q, scale
