"""BitNet b1.58: absmean weight ternarization and absmax int8 activations.

Ma, Wang, Wang, Huang, Ma, Wang, Dong, Wang, Xue and Wei, "The Era of 1-bit LLMs: All Large
Language Models are in 1.58 Bits", arXiv:2402.17764, 2024 (post-survey).

Weights (absmean, per tensor)
-----------------------------
Two forms exist, and they are not the same function.

**The released code** (``form="code"``, the default). The "Training Tips, Code and FAQ" BitLinear of
microsoft/unilm ``bitnet/``, Hugging Face's ``WeightQuant`` (``transformers/integrations/
bitnet.py``) and bitnet.cpp's checkpoint converter (``weight_quant``) all compute::

    s     = 1 / max(mean|W|, 1e-5)          (the FAQ: scale = 1.0 / w.abs().mean().clamp_(min=1e-5))
    W~    = clip(round(W * s), -1, 1)
    W_hat = W~ / s

in the weight's dtype (Hugging Face and bitnet.cpp call ``.float()`` first, so float32 for a
bf16 or fp16 checkpoint). The scale that multiplies the codes back is ``1 / s``, which is
``max(mean|W|, 1e-5)`` up to the last bit of its float. Every deployed BitNet b1.58 checkpoint was
made with this rule, so it is ternref's default: codes ``round(W * s)`` with ``s`` computed in
``w``'s dtype exactly as above (a reciprocal, then a product: ``W * fl(1/g)`` and ``W / g`` can
differ in the last bit, which changes a code only for a weight on a rounding boundary; a test has
one), and ``alpha = fl(1 / s)``, so that ``dense()`` equals ``W~ / s`` bit for bit (``+-1 / s``
is the correctly rounded ``fl(1/s)``).

**The paper** (``form="paper"``)::

    gamma = mean|W|,   W~ = RoundClip(W / (gamma + eps), -1, 1),   W_hat = gamma W~

with ``RoundClip(x, a, b) = max(a, min(b, round(x)))``, computed here in float64.

*Where they differ.* For ``gamma >= 1e-5`` the paper's argument is the code's divided by
``1 + eps/gamma``. ``round`` maps ``[0.5, 1.5)`` to 1 (0.5 itself to 0, see below) and
everything from 1.5 up to 2 or more, which the clip sends back to 1; so for the *codes* only the
boundary ``|W|/gamma = 0.5`` matters: the weights with ``0.5 < |W|/gamma < 0.5 (1 + eps/gamma)``
get ``+-1`` from the code and 0 from the paper. (At ``|W|/gamma = 1.5`` the unclipped rounding
jumps from 1 to 2, but both sides clip to 1: no code changes there.) The band is tiny but never
empty in real weights: with ``mean|W|`` about 0.03 it is ``eps/gamma ~ 3e-4`` wide, and issue 16
counted 265 of 3,538,944 codes (7.5e-5) that differ on the first twelve linear weight matrices of
all-MiniLM-L6-v2. It is *not* true that the forms "differ only when mean|W| < 1e-5" (what this
docstring said before). Below ``gamma = 1e-5`` the code divides by the constant 1e-5 and the
paper by ``gamma + 1e-5``. The scales differ too: the paper multiplies back by ``gamma`` (an
all-zero ``W`` gets scale 0), the code by ``max(gamma, 1e-5)`` (an all-zero ``W`` gets scale
1e-5 with all-zero codes, so ``w_hat`` is 0 either way). A test pins both forms on weights
placed exactly at, one ulp above and one ulp below ``|W|/gamma = 0.5`` and ``1.5``.

The implied threshold is ``Delta = gamma/2`` (about half the mean magnitude; methods.md
section 4 P15), ``(gamma + eps)/2`` for the paper's form.

Choices and pitfalls (methods.md section 2.19):

* ``round`` is round-half-to-even in both NumPy (``np.round``) and PyTorch (``torch.round``), so
  a weight with ``|W| s == 0.5`` exactly goes to 0 and one with ``|W| s == 1.5`` to 2, clipped to
  1. This happens to match the library-wide tie rule (ties at the threshold go to 0); tests pin
  it.
* ``mean|W|`` is accumulated in float64 and rounded once to ``w``'s dtype. PyTorch reduces a
  float32 tensor in float32 in its own order, so its ``mean|W|`` can differ from the correctly
  rounded one in the last bit; nothing here can reproduce a particular reduction order.
* The scale is ``mean|W|`` over *all* weights, not the least-squares scale over the support, so
  the projection is **not idempotent**: on ``Pi(W) = alpha T`` with density ``p`` (fraction of
  nonzero codes) the new mean is ``p alpha``, the codes are unchanged and ``Pi(Pi(W)) = p Pi(W)``
  (methods.md section 4 P7; ``max(p alpha, eps) / alpha`` times ``Pi(W)`` for the code's form).
* ``eps`` breaks exact scale equivariance when ``mean|W|`` is comparable to ``eps`` (for ``W``
  scaled down towards ``eps`` the codes drift to 0), so the registry refutes it; with ``eps = 0``
  it holds.
* All-zero ``W`` (or ``eps = 0`` and ``gamma = 0``): every code is 0, no division by zero.

Activations (absmax, per token)
-------------------------------
``s = 127 / max(max_j |x_j|, eps)`` per row (token), ``q = clip(round(x s), -128, 127)`` as int8,
and ``x ~= q / s``: the code's ``activation_quant``, the same product-with-a-reciprocal form. The
clamp makes an all-zero row safe (``q = 0``).

References
----------
.. [1] S. Ma, H. Wang, L. Ma, L. Wang, W. Wang, S. Huang, L. Dong, R. Wang, J. Xue and F. Wei,
       "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits", arXiv:2402.17764,
       2024.
.. [2] "The Era of 1-bit LLMs: Training Tips, Code and FAQ", microsoft/unilm, ``bitnet/`` (a PDF;
       its Figure 3, ``weight_quant`` and ``activation_quant``, was extracted from the PDF at
       unilm commit 768a3c8 for this module). Read as well, with the same arithmetic after
       ``.float()``: Hugging Face ``transformers``,
       ``src/transformers/integrations/bitnet.py`` (``WeightQuant.forward``, commit 0b4060e7) and
       microsoft/BitNet, ``utils/convert-hf-to-gguf-bitnet.py`` (``BitnetModel.weight_quant``,
       commit 09074a0e).
"""

from __future__ import annotations

import numpy as np

from ternref import _validate
from ternref.projections._registry import register
from ternref.projections.threshold import _granularity, _rows, _ternary, _weights
from ternref.ternary import Ternary

#: The two weight rules: the released training code's (default) and the paper's.
FORMS = ("code", "paper")


def _released_rule(rows: np.ndarray, gamma: np.ndarray, eps: float):
    """Codes and scales of the released code: s = 1/max(gamma, eps), clip(round(W s)), W~ / s.

    ``rows`` is ``(groups, n)`` in the weight dtype, ``gamma`` the float64 ``mean|W|`` per row.
    """
    dtype = rows.dtype.type
    clamped = np.maximum(gamma.astype(rows.dtype), dtype(eps))  # max(mean|W|, 1e-5)
    with np.errstate(divide="ignore", over="ignore"):
        s = (dtype(1) / clamped).astype(rows.dtype)  # s = 1 / max(mean|W|, 1e-5)
    usable = np.isfinite(s)  # 1/0 (eps = 0, all-zero row) or 1/subnormal overflows
    s_rows = np.where(usable, s, dtype(0))[:, None]
    # W~ = clip(round(W * s), -1, 1); np.round is half-to-even like torch.round
    codes = np.clip(np.round(rows * s_rows), -1, 1)
    alpha = np.where(usable, dtype(1) / np.where(usable, s, dtype(1)), clamped)  # W_hat = W~ / s
    tiny = ~usable & (clamped > 0)
    if np.any(tiny):  # the dtype cannot hold 1/gamma: the same rule in float64 for those rows
        wide = rows[tiny].astype(np.float64) * (1.0 / clamped[tiny].astype(np.float64))[:, None]
        codes[tiny] = np.clip(np.round(wide), -1, 1)
    return codes.astype(np.int8), alpha


def _paper_rule(rows: np.ndarray, gamma: np.ndarray, eps: float):
    """Codes and scales of the paper: RoundClip(W / (gamma + eps), -1, 1) and gamma (float64)."""
    denom = gamma + eps
    safe = np.where(denom > 0, denom, 1.0)
    codes = np.clip(np.round(rows / safe[:, None]), -1, 1)  # half-to-even like torch.round
    codes = np.where(denom[:, None] > 0, codes, 0).astype(np.int8)
    return codes, gamma


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
    summary="BitNet b1.58 absmean, the released code's rule: s = 1/max(mean|W|, 1e-5), "
    "codes = clip(round(W s), -1, 1), alpha = 1/s (form='paper': W/(mean|W|+eps), mean|W|).",
)
def bitnet(w, eps: float = 1e-5, granularity: str = "tensor", form: str = "code") -> Ternary:
    """BitNet b1.58 absmean ternarization (the released code's rule by default).

    Parameters
    ----------
    w : ndarray of float32 or float64, at least 1-D
        Latent weights.
    eps : float >= 0
        ``form="code"``: the lower clamp of ``gamma = mean|W|`` (the code's ``clamp(min=1e-5)``);
        ``form="paper"``: added to ``gamma`` before dividing. Default 1e-5 in both.
    granularity : {"tensor", "channel"}
        BitNet uses one ``gamma`` per tensor; ``"channel"`` computes it per output channel.
    form : {"code", "paper"}
        ``"code"`` (default) reproduces the released training code, Hugging Face and
        bitnet.cpp bit for bit; ``"paper"`` is the paper's ``W / (gamma + eps)``. They give
        different codes for ``0.5 < |W|/gamma < 0.5 (1 + eps/gamma)`` (module docstring).

    Returns
    -------
    Ternary
        ``"code"``: codes ``clip(round(W s), -1, 1)`` with ``s = 1 / max(gamma, eps)`` in ``w``'s
        dtype and scale ``1 / s`` (so ``dense() == codes / s``); ``"paper"``: codes
        ``clip(round(W / (gamma + eps)), -1, 1)`` and scale ``gamma``. Round half to even.

    References
    ----------
    .. [1] S. Ma et al., "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits",
           arXiv:2402.17764, 2024.
    .. [2] "The Era of 1-bit LLMs: Training Tips, Code and FAQ", microsoft/unilm ``bitnet/``.
    """
    w = _weights(w)
    eps = _validate.real_number(eps, "eps", low=0.0)
    granularity = _granularity(granularity)
    form = _validate.one_of(form, "form", FORMS)
    rows = _rows(w, granularity)
    gamma = np.abs(rows).mean(axis=1, dtype=np.float64)  # gamma = mean|W|
    rule = _released_rule if form == "code" else _paper_rule
    codes, alpha = rule(rows, gamma, eps)
    return _ternary(codes, alpha, w.shape, w.dtype, granularity)


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
