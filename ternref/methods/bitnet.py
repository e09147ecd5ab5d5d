"""BitNet b1.58 — absmean ternary weights and 8-bit absmax activations, identity STE.

Ma, Wang, Ma, Wang, Wang, Huang, Dong, Wang, Xue, Wei, "The Era of 1-bit LLMs: All Large
Language Models are in 1.58 Bits", arXiv:2402.17764 (2024; after the survey). Training code:
"The Era of 1-bit LLMs: Training Tips, Code and FAQ" (microsoft/unilm, ``bitnet/``).

Weights (``ternref.projections.bitnet``, per tensor), by default the released training code's
rule (the FAQ's ``weight_quant``, which Hugging Face and bitnet.cpp reproduce)::

    s = 1 / max(mean|W|, 1e-5),   W~ = clip(round(W * s), -1, 1),   W_hat = W~ / s

``form="paper"`` gives the paper's ``W~ = RoundClip(W / (gamma + eps), -1, 1)``, ``W_hat = gamma
W~``; the two differ for the weights with ``0.5 < |W|/gamma < 0.5 (1 + eps/gamma)`` (see the
projection's docstring). Every released checkpoint was made with the code's rule, so it is the
default here too.

Activations (``ternref.projections.bitnet_activation``), in a layer of their own
(:class:`BitNetActivation`) placed in front of every ternary layer::

    s = 127 / max(max|x|, eps) per token (row),   x_hat = clip(round(x s), -128, 127) / s

Both backward passes are the identity STE, which is what the code's
``x + (quant(x) - x).detach()`` computes for weights and activations alike.

Choices
-------
* "Per token" is per row of a Linear input (N, features). For a Conv2d input (N, C, H, W)
  ternref takes one scale per example (absmax over C, H, W); the paper has no convolutions.
* The paper quantizes activations right after a normalisation (BitLinear's SubLN / RMSNorm);
  ternref's MLPs have none, so the quantizer sees ReLU outputs (>= 0, codes 0..127).
* The scale is mean|W| over all weights, not the least-squares scale, so the projection is not
  idempotent (methods.md P7); the implied threshold is gamma/2, round-half-to-even at ties
  (``np.round`` and ``torch.round`` both round halves to even).
* Layers: the paper ternarizes every ``nn.Linear`` of the Transformer blocks; the embedding and
  the output head (``lm_head``) stay in full precision in the released models. ternref's default
  ``keep_full_precision="first_last"`` is the analogue (input layer and classifier in full
  precision).
* Recipe (paper / FAQ): AdamW, a large learning rate with a two-stage schedule and weight decay
  removed in the second stage; ternref uses whatever optimizer ``fit`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, register
from ternref.nn.module import Module
from ternref.packed.layers import expect_state_keys, register_inference_layer
from ternref.projections import bitnet as bitnet_projection
from ternref.projections.bitnet import FORMS, bitnet_activation


class BitNetQuantizer(WeightQuantizer):
    """w -> absmean ternary (clip(round(w s), -1, 1) / s, s = 1/max(mean|w|, eps)); identity STE.

    ``form="paper"`` uses the paper's ``gamma * RoundClip(w / (gamma + eps))`` instead.
    """

    def __init__(self, eps: float = 1e-5, granularity: str = "tensor", form: str = "code"):
        super().__init__()
        self.eps = eps
        self.granularity = granularity
        self.form = form

    def project(self, w):
        return bitnet_projection(w, eps=self.eps, granularity=self.granularity, form=self.form)

    def extra_repr(self):
        return f"eps={self.eps}, granularity={self.granularity!r}, form={self.form!r}"


@register_inference_layer
class BitNetActivation(Module):
    """8-bit absmax fake quantization of the activations, one scale per row; identity STE.

    Forward: ``x -> q / s`` with ``(q, s) = bitnet_activation(x)`` computed on ``x`` viewed as
    ``(N, -1)`` (per token for a Linear input, per example for a conv input). Output has ``x``'s
    shape and dtype. Backward: ``dL/dx := dL/dx_hat``.

    Packed export (``ternref.packed``): a registered inference layer (state: ``eps``), kept as
    a layer of its own in front of the packed layer rather than folded into the kernel's
    ``activations="int8"``. The two quantizers are not the same function: this one computes
    the scale in the input dtype with ``max(max|x|, eps)``, the kernel computes ``127 / max|x|``
    in float32 (no eps; an all-zero row gets scale 0) and dequantizes with ``max|x| / 127``.
    For float32 rows with ``max|x| >= eps`` the int8 codes are the same bit for bit
    (``tests/lm/test_lm_packed.py``; :mod:`ternref.lm.packed` relies on it and handles the
    rows below ``eps``); float64 rows, tiny rows and the float rescaling differ. Keeping the
    layer makes the packed model reproduce the trained evaluation forward.
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.last_codes: np.ndarray | None = None

    def forward(self, x):
        x = _validate.float_array(x, "BitNetActivation input")
        rows = x.reshape(x.shape[0], -1)
        q, s = bitnet_activation(rows, eps=self.eps)
        self.last_codes = q  # int8, for inspection and for an integer kernel
        return (q.astype(x.dtype) / s).reshape(x.shape)

    def backward(self, dy):
        return dy  # identity STE through round and clip

    def extra_repr(self):
        return f"bits=8, eps={self.eps}"

    def export_state(self):
        """``({"eps": eps}, {})`` for ``ternref.packed`` (see the class docstring)."""
        return {"eps": float(self.eps)}, {}

    @classmethod
    def from_export_state(cls, params, arrays):
        """Rebuild from :meth:`export_state` output (checked: exactly ``eps`` > 0)."""
        expect_state_keys("BitNetActivation", params, arrays, ("eps",), ())
        return cls(eps=_validate.real_number(params["eps"], "eps", low=0.0, low_open=True))


@register
@dataclass
class BitNet(Method):
    """BitNet b1.58 (Ma et al. 2024): absmean ternary weights, int8 absmax activations, STE.

    Parameters
    ----------
    eps : float > 0
        The lower clamp of mean|W| (``form="code"``; added to it for ``form="paper"``) and of
        max|x| (activations); code: 1e-5.
    granularity : {"tensor", "channel"}
        One gamma per weight tensor (paper) or per output channel.
    quantize_activations : bool
        Insert the 8-bit activation quantizer in front of each ternary layer (paper: yes).
    form : {"code", "paper"}
        Weight rule: the released training code's (default, what every BitNet checkpoint was made
        with) or the paper's ``W / (mean|W| + eps)``.
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="bitnet",
        paper="Ma et al.: The Era of 1-bit LLMs (BitNet b1.58)",
        year=2024,
        arxiv="2402.17764",
        ternary="W",
        projection="absmean: clip(round(W s),-1,1)/s, s = 1/max(mean|W|,1e-5) (released code); "
        "int8 absmax activations",
        estimator="identity STE (weights and activations)",
        optimizer="AdamW (paper); any",
    )
    eps: float = 1e-5
    granularity: str = "tensor"
    quantize_activations: bool = True
    form: str = "code"

    def validate(self):
        _validate.real_number(self.eps, "eps", low=0.0, low_open=True)
        _validate.one_of(self.granularity, "granularity", ("tensor", "channel"))
        _validate.one_of(self.form, "form", FORMS)
        if not isinstance(self.quantize_activations, bool):
            raise TypeError(
                "quantize_activations must be a bool, got "
                f"{_validate.describe(self.quantize_activations)}"
            )

    def weight_quantizer(self, layer):
        return BitNetQuantizer(self.eps, self.granularity, self.form)

    def activation_quantizer(self, layer):
        return BitNetActivation(self.eps) if self.quantize_activations else None
