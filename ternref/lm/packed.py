"""Packed inference of a trained ternary language model: BitNet b1.58 as W1.58A8 on the i2 kernels.

:func:`pack_lm` turns a ternary :class:`~ternref.nn.TransformerLM` (BitNet b1.58 made by
:func:`~ternref.methods.bitlinear.quantize_transformer`, any other weight-ternary method, or a
model read by :func:`ternref.lm.load_lm`) into an inference copy whose block projections run
the packed kernels of :mod:`ternref.packed`: every :class:`~ternref.methods.bitlinear.BitLinear`
becomes a :class:`PackedBitLinear`, every other ternary projection a
:class:`~ternref.interop.llama.PackedProjection`. The token embedding, attention, the final
norm and the output head stay float32, as in the paper; the copy keeps no dense float copy of
any ternary weight (only the 2-bit codes and their scales) and its ``forward`` and
``generate`` (KV cache) are those of ``TransformerLM``.

One packed BitLinear, next to the BitNet papers
-----------------------------------------------
For one token (one row ``x`` of the input, D features) and output row ``j``, with the weight
``W_hat = beta * c`` (codes ``c`` in {-1, 0, +1}, ``beta = mean|W|`` the absmean scale)::

    h     = g * x / sqrt(mean(x^2) + eps)     SubLN: the layer's own RMSNorm, in float32
    gamma = max_i |h_i|                       the absmax of the token
    s     = 127 / gamma                       float32 (division rounded once)
    h_q   = clip(round(h * s), -127, 127)     int8 codes, round half to even
    D_j   = sum_i c_ji h_q,i                  an exact integer (the i2 kernel's sum)
    y_j   = D_j * beta * gamma / 127          float64, rounded to float32 once

The last line is Eq. (11) of BitNet (Wang et al. 2023, arXiv:2310.11453), ``y = W~ x~ *
beta gamma / Q_b``, with ``Q_b = 127``, which BitNet b1.58 (Ma et al. 2024, arXiv:2402.17764)
keeps: the product of two integer tensors, rescaled once. The released training code (and
:class:`BitLinear` in evaluation mode) computes the same thing in the other order, as a fake
quantization in float32: ``y = (h_q / s) @ (beta c)^T``.

What is exact and what is not
-----------------------------
* **The activation codes are BitLinear's, bit for bit** (float32 models). The kernels'
  quantizer (:func:`ternref.packed.quantize_activations` and its jitted copies) and
  BitLinear's (:func:`ternref.projections.bitnet_activation`) both form ``s = float32(127) /
  gamma`` in float32, the product ``h * s`` in float32 and round half to even; they differ in
  two places, both handled here:

  - clip: BitLinear clips to [-128, 127], the kernels to [-127, 127]. Never reached: ``|h_i| <=
    gamma``, so ``|h_i s| <= gamma * fl(127 / gamma) <= 127 (1 + 2^-24)^2 < 127.5`` and the
    rounded value is at most 127 in magnitude.
  - eps: BitLinear clamps ``gamma`` from below at ``eps`` (1e-5, the code's ``clamp(min=
    1e-5)``), the kernels do not. A token with ``0 < gamma < eps`` (a SubLN output that small
    needs gains below 1e-5) gets BitLinear's codes ``round(h * 127 / eps)`` computed by
    ``bitnet_activation`` itself, multiplied by the float32 kernel; an all-zero token gives
    ``y = 0`` in both.

  ``tests/lm/test_lm_packed.py`` checks this through the jitted kernels: the packed layer's
  output equals ``float32(D * beta * gamma / 127)`` with ``D`` formed in int64 from
  ``bitnet_activation``'s codes, bit for bit, on the GEMV (one token) and GEMM paths.
* **The output is not BitLinear's bit for bit**: BitLinear sums ``(h_q / s)(beta c)`` in float32
  in BLAS's order and rescales by ``1 / s`` instead of ``gamma / 127`` (one float32 rounding
  apart); the packed sum is exact. Per layer the difference is within ``(D + 4) u sum_i
  |h_q,i c_ji| beta gamma / 127`` (``u = 2^-24``; tested). Through a whole model the
  difference of the residual stream can move a later token's activation across a rounding
  boundary of ``round(h * s)``, which changes one code by one; the greedy tokens stay the
  same unless two logits are that close (the tests show 64 identical tokens and bound the
  logit difference).
* **Float-activation projections** (TWN, TTQ, LAT, ... on plain ``Linear`` layers) run the
  float32 i2 kernel: the same products as BLAS on ``W_hat = t.dense()``, summed in another
  order (float32 rounding).

``activations`` of :func:`pack_lm` can override what each layer computes with
(``"int8"`` everywhere: W1.58A8 post-training for a model trained with float activations;
``"float32"``: BitLinear without its activation quantizer); the default keeps what the model
was trained with, which is the only setting whose tokens match the unpacked model.

References
----------
S. Ma et al., "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits",
arXiv:2402.17764, 2024; "The Era of 1-bit LLMs: Training Tips, Code and FAQ" (microsoft/unilm,
``bitnet/``). H. Wang et al., "BitNet: Scaling 1-bit Transformers for Large Language Models",
arXiv:2310.11453, 2023 (Eq. 11, the rescaled integer product).
"""

from __future__ import annotations

import copy

import numpy as np

from ternref._validate import describe, one_of, real_number
from ternref.interop.llama import PackedProjection
from ternref.lm.io import _terms_of
from ternref.methods.bitlinear import PROJECTIONS, BitLinear, projections
from ternref.methods.bitnet import BitNetActivation
from ternref.nn.layers import Linear
from ternref.nn.norms import RMSNorm
from ternref.nn.transformer import TransformerLM
from ternref.packed import FORMATS, pack
from ternref.packed.layers import PackedLinear
from ternref.projections.bitnet import bitnet_activation

__all__ = ["ACTIVATIONS", "PackedBitLinear", "pack_lm", "pack_projection", "packed_nbytes"]

#: ``activations`` of :func:`pack_lm`: as trained, or one kind for every packed projection.
ACTIVATIONS = ("trained", "int8", "float32")


class PackedBitLinear(PackedProjection):
    """BitLinear for inference: SubLN in float32, then the packed product with int8 activations.

    ``y = D * beta * gamma / 127`` per token (see the module docstring for the equations, the
    paper they come from, and what is exact).

    Parameters
    ----------
    packed : ternref.packed.Packed or sequence of Packed
        The ternary weight ``(out, in)`` (several terms are summed).
    input_norm : RMSNorm or None
        The SubLN (its learned gain); ``None`` for a BitLinear without one.
    activations : {"int8", "float32"}
        ``"int8"``: BitNet's absmax per token (W1.58A8); ``"float32"``: unquantized.
    eps : float > 0, default 1e-5
        BitLinear's lower clamp of ``max|h|`` (``BitNetActivation.eps``).
    bias : ndarray (out,), optional

    Notes
    -----
    Shapes: x (..., in) -> y (..., out), float32. Inference only.
    """

    def __init__(self, packed, input_norm: RMSNorm | None = None, activations: str = "int8",
                 eps: float = 1e-5, bias=None):  # fmt: skip
        super().__init__(packed, activations, bias)
        if input_norm is not None and not isinstance(input_norm, RMSNorm):
            raise TypeError(f"input_norm must be an RMSNorm or None, got {describe(input_norm)}")
        if input_norm is not None and input_norm.dim != self.in_features:
            raise ValueError(
                f"input_norm has {input_norm.dim} features, the weight {self.in_features}"
            )
        self.input_norm = input_norm
        self.eps = real_number(eps, "eps", low=0.0, low_open=True)
        self._eps32 = np.float32(self.eps)
        # the same packed terms with float32 activations, for tokens with max|h| < eps
        self._float_layer = PackedLinear(list(self.layer.terms), self.layer.bias, "float32")

    def forward(self, x):
        x = np.asarray(x)
        if x.dtype != np.float32 or x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self!r}: expected float32 input of shape (..., {self.in_features}), got "
                f"{x.dtype} {x.shape}"
            )
        lead = x.shape[:-1]
        h = x.reshape(-1, self.in_features)  # one row per token
        if self.input_norm is not None:
            h = self.input_norm(h)  # SubLN: g * x / rms(x), the same float32 RMSNorm
        h = np.ascontiguousarray(h)
        y = self.layer.forward(h)  # int8: h_q per token in the kernel, exact D, D beta gamma/127
        if self.layer.activations == "int8":
            gamma = np.max(np.abs(h), axis=1)
            tiny = (gamma > 0) & (gamma < self._eps32)
            if tiny.any():  # BitLinear's clamp max(gamma, eps): its codes, the float kernel
                q, s = bitnet_activation(h[tiny], eps=self.eps)
                y[tiny] = self._float_layer.forward(q.astype(np.float32) / s)
        return y.reshape(*lead, self.out_features)

    @property
    def ternary(self):
        raise ValueError(f"{self!r} normalises its input (SubLN): it is not a plain ternary")

    def __repr__(self) -> str:
        terms = len(self.layer.terms)
        return (
            f"PackedBitLinear({self.in_features}, {self.out_features}, "
            f"{self.layer.packed.format}, subln={self.input_norm is not None}, "
            f"activations={self.layer.activations}"
            + (f", terms={terms}" if terms > 1 else "")
            + (", bias=True" if self.layer.bias is not None else "")
            + ")"
        )


def pack_projection(layer, format: str = "i2", activations: str = "trained", *,
                    name: str = "layer"):  # fmt: skip
    """The packed inference layer of one trained ternary projection.

    Parameters
    ----------
    layer : BitLinear or Linear with a ``weight_quantizer``
        Packed from ``weight_quantizer.to_ternary(weight)`` (``to_ternaries`` for residual
        methods: one packed term each); its bias, SubLN gain and activation ``eps`` are copied.
    format, activations
        As :func:`pack_lm`.
    name : str
        Used in error messages.

    Returns
    -------
    PackedBitLinear (for a BitLinear) or PackedProjection (for a Linear)
    """
    one_of(format, "format", FORMATS)
    one_of(activations, "activations", ACTIVATIONS)
    if not isinstance(layer, Linear) or layer.weight_quantizer is None:
        raise TypeError(
            f"{name} must be a BitLinear or a Linear with a weight quantizer (a ternary "
            f"projection), got {describe(layer)}"
        )
    terms = [pack(t, format) for t in _terms_of(layer.weight_quantizer, layer.weight.data)]
    bias = None if layer.bias is None else layer.bias.data.astype(np.float32)
    if not isinstance(layer, BitLinear):  # TWN, TTQ, LAT, ...: float activations
        return PackedProjection(terms, "float32" if activations == "trained" else activations,
                                bias)  # fmt: skip
    act = layer.activation_quantizer
    if act is not None and not isinstance(act, BitNetActivation):
        raise TypeError(
            f"{name}: a BitLinear's activations must be BitNet's int8 (BitNetActivation) or "
            f"float (None) to be packed, got {describe(act)}"
        )
    trained = "float32" if act is None else "int8"
    norm = None
    if layer.input_norm is not None:
        norm = RMSNorm(layer.in_features, layer.input_norm.eps)
        norm.weight.data[...] = layer.input_norm.weight.data  # the learned SubLN gain
    return PackedBitLinear(terms, norm, trained if activations == "trained" else activations,
                           eps=1e-5 if act is None else act.eps, bias=bias)  # fmt: skip


def pack_lm(
    model: TransformerLM, format: str = "i2", activations: str = "trained"
) -> TransformerLM:
    """A packed inference copy of a ternary language model (the original is not changed).

    Parameters
    ----------
    model : TransformerLM
        float32, with ternary projections: BitNet b1.58 (BitLinear: SubLN, int8 activations,
        absmean weights), another method attached by ``quantize_transformer`` (its weight
        quantizer on ``Linear`` or ``BitLinear`` projections), or a model from
        :func:`ternref.lm.load_lm`. Each projection is packed from its quantizer's
        ``to_ternary`` (``to_ternaries`` for residual methods), the ternary weights of the
        evaluation forward.
    format : {"i2", "tq1", "bitplanes"}, default "i2"
        Packed format (:mod:`ternref.packed`); i2 is the fast one.
    activations : {"trained", "int8", "float32"}, default "trained"
        ``"trained"``: every projection computes with what it was trained with (int8 for a
        BitLinear with BitNet's activation quantizer, float32 otherwise); this reproduces the
        model. ``"int8"`` / ``"float32"``: that kind for every packed projection (a different
        model from the trained one wherever it differs from how the layer was trained).

    Returns
    -------
    TransformerLM
        In evaluation mode. BitLinear projections are :class:`PackedBitLinear`, other ternary
        ones :class:`~ternref.interop.llama.PackedProjection`; embedding, block norms,
        attention, final norm and head are copies of the model's (float32). It holds no
        latent or dense ternary weight; it cannot be trained.

    Raises
    ------
    TypeError
        ``model`` is not a TransformerLM, or a BitLinear has an activation quantizer other
        than BitNet's.
    ValueError
        The model is not float32 (the kernels compute in float32; BitLinear's codes are only
        reproduced for float32 activations), it has no ternary projection, or a bad
        ``format`` / ``activations``.

    Notes
    -----
    What is exact (the int8 codes of every token, bit for bit) and what is not (the float32
    summation of the unpacked layer) is in the module docstring.
    """
    if not isinstance(model, TransformerLM):
        raise TypeError(f"model must be a ternref.nn.TransformerLM, got {describe(model)}")
    one_of(format, "format", FORMATS)
    one_of(activations, "activations", ACTIVATIONS)
    dtype = model.token_embd.weight.data.dtype
    if dtype != np.float32:
        raise ValueError(
            f"pack_lm packs float32 models (the packed kernels compute in float32, and only "
            f"then are BitLinear's int8 codes reproduced), got a {dtype} model"
        )
    memo = {}
    for index, (_owner, _attr, layer) in enumerate(projections(model)):
        child, attr = PROJECTIONS[index % len(PROJECTIONS)]
        name = f"blocks.{index // len(PROJECTIONS)}.{child}.{attr}"
        if isinstance(layer, Linear) and layer.weight_quantizer is not None:
            memo[id(layer)] = pack_projection(layer, format, activations, name=name)
        # float projections, and those packed already (read from GGUF), are copied as they are
    if not memo:
        raise ValueError(
            "pack_lm: the model has no ternary projection to pack (a float model; train it "
            "with a ternary method, e.g. `ternref lm train --method bitnet`)"
        )
    # Copy everything but the replaced projections: deepcopy's memo maps each of them to its
    # packed layer, so their latent weights are never copied (the copy holds only the codes),
    # and every forward cache of the trained model to None (inference needs none).
    # (Only objects the model holds: a memo key must outlive the copy, or its id is reused.)
    for module in model.modules():
        for attr in _FORWARD_CACHES:
            value = vars(module).get(attr)
            if isinstance(value, (np.ndarray, tuple)) and id(module) not in memo:
                memo[id(value)] = None
    return copy.deepcopy(model, memo).eval()


# what the layers of a TransformerLM keep from a forward for their backward
_FORWARD_CACHES = ("_cache", "_x", "_ids")


def packed_nbytes(model: TransformerLM) -> dict:
    """Bytes of a (packed) model: ``{"packed": codes and scales of the packed projections,
    "float": every float parameter (embedding, norms, head, float projections)}``."""
    if not isinstance(model, TransformerLM):
        raise TypeError(f"model must be a ternref.nn.TransformerLM, got {describe(model)}")
    packed = sum(m.layer.nbytes for m in model.modules() if isinstance(m, PackedProjection))
    floats = sum(p.data.nbytes for p in model.parameters())
    return {"packed": int(packed), "float": int(floats)}
