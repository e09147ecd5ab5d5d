"""TernGrad: stochastic ternarization of *gradients* for communication.

Paper
-----
Wei Wen, Cong Xu, Feng Yan, Chunpeng Wu, Yandan Wang, Yiran Chen, Hai Li, "TernGrad: Ternary
Gradients to Reduce Communication in Distributed Deep Learning", arXiv:1705.07878, NeurIPS 2017.
Official TensorFlow code: github.com/wenwei202/terngrad (``terngrad/inception/bingrad_common.py``).

What is implemented
-------------------
Layer-wise stochastic ternarization (``s``, ``b`` and ``g~`` as defined in the paper; the
official ``stochastical_binarize_gradients`` computes the same)::

    s   = max |g|                                  (one scalar per tensor / layer)
    b_k ~ Bernoulli(|g_k| / s)                     (independent per entry)
    g~  = s * sign(g) o b

``E[g~] = g`` (unbiased) and ``|g~_k| in {0, s}`` (methods.md P13).

Optional gradient clipping (``clip=c``), as in the paper and in the official
``clip_gradients_by_stddev(grads, clip_factor=2.5)``: before ternarizing, every entry is clipped to
``[-c sigma, c sigma]`` with ``sigma = sqrt(mean((g - mean g)^2))`` (the population standard
deviation of the tensor). ``c = 2.5`` is the official code's default (checked in
``bingrad_common.py``); the paper's text was not re-read here. ``clip=None`` (the default) skips it.
With clipping the estimate is unbiased for the *clipped* gradient.

Paper vs code vs ternref choices
--------------------------------
* Scale with clipping: ternref uses ``s = max|clip(g)|`` (the paper's definition of s applied to
  the clipped tensor). The official ``gradient_binarizing_scalers`` uses ``s = c sigma`` when a clip
  factor is set; the two agree whenever at least one entry was clipped, and both are unbiased.
* Gate: the code draws ``u ~ U(0, s)`` and keeps ``u < |g|``; ternref draws ``u ~ U[0, 1)`` and
  keeps ``u < |g|/s`` (the same event). An entry with ``|g| = s`` is kept with probability one,
  ``g = 0`` never.
* All-zero gradient: ``s = 0``, all codes 0 (no division by zero).

This is a gradient quantizer, registered with ``input_kind="gradient"``.

References
----------
Wen, W., Xu, C., Yan, F., Wu, C., Wang, Y., Chen, Y., Li, H. (2017). TernGrad: Ternary Gradients
to Reduce Communication in Distributed Deep Learning. NeurIPS 2017. arXiv:1705.07878.
"""

from __future__ import annotations

import numpy as np

from ternref._validate import float_tensor, generator, real_number
from ternref.projections._registry import register
from ternref.ternary import Ternary

#: The clipping factor c of the official code (gradients clipped to +-c*sigma).
PAPER_CLIP = 2.5


def clip_by_stddev(g, c: float) -> np.ndarray:
    """Clip ``g`` to ``[-c*sigma, c*sigma]``, ``sigma`` the population std of ``g`` (TernGrad).

    Parameters
    ----------
    g : ndarray of float
        One layer's gradient.
    c : float > 0
        Clipping factor (2.5 in the paper).

    Returns
    -------
    ndarray
        Clipped copy of ``g``, same dtype.

    References
    ----------
    Wen et al. (2017), arXiv:1705.07878, section on gradient clipping.
    """
    g = float_tensor(g, "g")
    c = real_number(c, "c", low=0.0, low_open=True)
    sigma = np.sqrt(np.mean(np.square(g - np.mean(g))))
    bound = g.dtype.type(c * sigma)
    return np.clip(g, -bound, bound)


@register(
    "terngrad",
    paper="Wen, Xu, Yan, Wu, Wang, Chen, Li. TernGrad: Ternary Gradients to Reduce "
    "Communication in Distributed Deep Learning (NeurIPS)",
    year=2017,
    arxiv="1705.07878",
    symmetric=True,
    deterministic=False,
    # Sample by sample under a fixed generator: the gate u < |g|/max|g| is odd, scale free and
    # nondecreasing in |g_k|; each position has its own u (not monotone, not permutation
    # equivariant).
    claims=(
        "range",
        "sign_preserving",
        "coordinate_monotone",
        "odd",
        "scale_equivariant",
        "idempotent",
        "dtype_preserving",
        "zero_safe",
    ),
    refutes=("monotone", "permutation_equivariant"),
    summary="TernGrad: g~ = max|g| * sign(g) * Bernoulli(|g| / max|g|), unbiased",
    input_kind="gradient",
)
def terngrad(g, rng, *, clip=None) -> Ternary:
    """Ternarize a gradient tensor stochastically and without bias: ``s * sign(g) * b``.

    Parameters
    ----------
    g : ndarray of float32 or float64, any shape
        One layer's gradient.
    rng : numpy.random.Generator
        Source of the Bernoulli gates.
    clip : float, optional
        If given, clip ``g`` to ``+-clip * std(g)`` first (the paper uses 2.5, see
        :data:`PAPER_CLIP`).

    Returns
    -------
    Ternary
        Codes ``sign(g) * b`` and the per-tensor scale ``s = max|g|`` (of the clipped gradient),
        in ``g``'s dtype. ``E[dense] = g`` (or the clipped ``g``).

    References
    ----------
    Wen et al. (2017), arXiv:1705.07878.
    """
    g = float_tensor(g, "g")
    rng = generator(rng, "rng")
    if clip is not None:
        g = clip_by_stddev(g, real_number(clip, "clip", low=0.0, low_open=True))
    s = np.max(np.abs(g))
    u = rng.random(g.shape)
    if s > 0:
        # b_k ~ Bernoulli(|g_k| / s)
        keep = u < np.abs(g) / s
    else:
        keep = np.zeros(g.shape, dtype=bool)
    codes = (np.sign(g) * keep).astype(np.int8)
    return Ternary(codes, np.asarray(s, dtype=g.dtype))
