"""Gradient estimators: what the backward pass does with the ternary step.

The projection w -> w_hat is piecewise constant, so its true derivative is zero almost
everywhere. Every STE-family method replaces d w_hat / d w by a surrogate; each surrogate below
is one small function whose docstring states the rule (methods.md §2.18, §4 P12). ``g`` is
always the upstream gradient dL/dw_hat (or dL/dy for activations), same shape as ``w``.

References
----------
.. [1] Bengio, Léonard, Courville, "Estimating or Propagating Gradients Through Stochastic
   Neurons for Conditional Computation", arXiv:1308.3432, 2013 (identity STE).
.. [2] Hubara, Courbariaux, Soudry, El-Yaniv, Bengio, "Binarized Neural Networks", NeurIPS 2016,
   arXiv:1602.02830 (clipped STE, 1[|w| <= 1]).
.. [3] Zhu, Han, Mao, Dally, "Trained Ternary Quantization", ICLR 2017, arXiv:1612.01064
   (scaled STE, Eq. 7-8).
.. [4] Deng, Jiao, Pei, Wu, Li, "GXNOR-Net", Neural Networks 2018, arXiv:1705.09283
   (rectangular window derivative of the ternary neuron).
.. [5] Liu et al., "Bi-Real Net", ECCV 2018, arXiv:1808.00278 (ApproxSign).
"""

from __future__ import annotations

import numpy as np

from ternref import _validate


def identity_ste(g: np.ndarray) -> np.ndarray:
    """Identity STE [1]: dL/dw := dL/dw_hat."""
    return g


def clipped_ste(g: np.ndarray, w: np.ndarray, clip: float = 1.0) -> np.ndarray:
    """Clipped ("hard-tanh") STE [2]: dL/dw := dL/dw_hat * 1[|w| <= clip].

    The gradient is cut where the latent weight is beyond ``clip``, so weights that have left
    the quantizer's range stop drifting. TernaryBERT uses ``clip = 2.5`` (with a strict
    inequality, which differs only on a measure-zero set).
    """
    _validate.real_number(clip, "clip", low=0.0, low_open=True)
    return g * (np.abs(w) <= clip)


def ttq_scaled_ste(
    g: np.ndarray, codes: np.ndarray, w_p: float, w_n: float
) -> tuple[np.ndarray, float, float]:
    """TTQ's gradients [3] for w_hat = W_p on I_p, 0 on I_0, -W_n on I_n.

    * latent weights (Eq. 8, "scaled STE"): dL/dw = W_p*g on I_p, 1*g on I_0, W_n*g on I_n;
    * scales (Eq. 7, by the chain rule): dL/dW_p = sum_{I_p} g and dL/dW_n = -sum_{I_n} g,
      because the level on I_n is -W_n.

    The minus sign of dL/dW_n follows the official TensorFlow code (autodiff of -W_n); the
    printed Eq. 7 and the popular PyTorch port use +sum_{I_n} g (methods.md §2.2, §5.2). ternref
    takes the chain rule, and a finite-difference test pins it.

    Returns
    -------
    (dw, dW_p, dW_n)
    """
    pos = codes > 0
    neg = codes < 0
    # the factor looked up in g's dtype by sign(code) + 1: the values of the former
    # np.where(pos, w_p, np.where(neg, w_n, 1.0)).astype(g.dtype), without two float64 arrays
    levels = np.array([w_n, 1.0, w_p], dtype=g.dtype)
    dw = g * np.take(levels, np.sign(codes) + 1)
    # float64 sums over I_p and I_n; np.where instead of g[pos] (a boolean gather of a random
    # mask runs ~10x slower): the same terms, summed in another order (a float64 rounding
    # difference)
    zero = g.dtype.type(0)
    d_wp = float(np.sum(np.where(pos, g, zero), dtype=np.float64))
    d_wn = -float(np.sum(np.where(neg, g, zero), dtype=np.float64))
    return dw, d_wp, d_wn


def gxnor_window(g: np.ndarray, x: np.ndarray, r: float = 1.0, a: float = 0.5) -> np.ndarray:
    """GXNOR's derivative of the ternary neuron phi_r(x) = sign(x) * 1[|x| > r] [4].

    ``phi_r`` is the paper's definition (0 on ``|x| <= r``), as
    ``ternref.projections.gxnor_activation`` computes it by default; the official code's neuron
    is ``1[|x| >= r]`` (``form="code"`` there). The two differ only at ``|x| = r``, where this
    window is 1/(2a) either way.

    d phi / dx := 1/(2a) * 1[r - a < |x| < r + a]: a rectangle of width 2a around each jump,
    of height 1/(2a) so that it integrates to the jump height 1 (the paper writes the window on
    the closed interval; the open one differs only at |x| = r +- a). The official code uses
    r = 1, a = 0.5 (height 1 on 0.5 < |x| < 1.5). Unlike TTQ's estimator it is zero inside the
    zero zone, so a neuron far from its thresholds receives no gradient.
    """
    _validate.real_number(r, "r", low=0.0, low_open=True)
    _validate.real_number(a, "a", low=0.0, low_open=True)
    ax = np.abs(x)
    window = (ax > r - a) & (ax < r + a)
    return g * (window * (1.0 / (2.0 * a))).astype(g.dtype, copy=False)


def approx_sign(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bi-Real Net's ApproxSign derivative [5]: 2 - 2|x| on |x| < 1, else 0 (integrates to 2)."""
    return g * np.clip(2.0 - 2.0 * np.abs(x), 0.0, None).astype(g.dtype, copy=False)


def sttn_coupled(
    g1: np.ndarray, g2: np.ndarray, w1: np.ndarray, w2: np.ndarray, clip: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Exact-coupling gradient of STTN's two binary kernels (Xu et al. 2020, arXiv 2204.01234).

    With B_k = alpha * sgn(W_k) (sgn(0) = +1, as ``projections.sttn``), the shared
    per-output-channel scale alpha = (||W_1||_1 + ||W_2||_1) / (2n), n = fan-in, and upstream
    gradients g_k = dL/dB_k::

        dL/dW_k,i = alpha * g_k,i * 1[|W_k,i| <= clip]                  (STE through sgn)
                  + sign(W_k,i) / (2n) * sum_j (g_1,j sgn W_1,j + g_2,j sgn W_2,j)

    where the sum runs over the output channel of i. The second term is the chain rule through
    alpha (d alpha / d W_k,i = sign(W_k,i) / (2n), the derivative of |W_k,i|, 0 at 0); the sum
    uses the forward's sgn values, so an exact-zero weight counts as +1 there.

    This is *not* the official ``updateBinaryGradWeight``, which computes
    ``g_k + sgn(W_k) / n * sum_j g_k,j sgn(W_k,j)``: no alpha on the straight-through term, a
    division by n instead of 2n, and each kernel's own sum instead of the sum over both (they
    differ at the zeros of the merged kernel, where sgn W_1 = -sgn W_2). Its 1.96 clip never
    acts, since the latent kernels are clamped to [-1, 1] first. ``ternref.methods.sttn``
    records the comparison.

    Arrays are shaped ``(out, ...)``; the reduction is over all axes but the first.
    """
    _validate.real_number(clip, "clip", low=0.0, low_open=True)
    axes = tuple(range(1, w1.ndim))
    n = w1[0].size
    # values of sgn in the forward pass (sgn(0) = +1) and derivatives of |W| (sign(0) = 0)
    b1, b2 = np.where(w1 >= 0, 1.0, -1.0), np.where(w2 >= 0, 1.0, -1.0)
    s1, s2 = np.sign(w1), np.sign(w2)
    alpha = (
        np.abs(w1).sum(axis=axes, keepdims=True) + np.abs(w2).sum(axis=axes, keepdims=True)
    ) / (2 * n)
    coupling = (g1 * b1 + g2 * b2).sum(axis=axes, keepdims=True) / (2 * n)
    d1 = alpha * g1 * (np.abs(w1) <= clip) + s1 * coupling
    d2 = alpha * g2 * (np.abs(w2) <= clip) + s2 * coupling
    return d1.astype(g1.dtype, copy=False), d2.astype(g2.dtype, copy=False)
