"""BitLinear, the layer of BitNet b1.58, and attaching ternary methods to a TransformerLM.

Ma, Wang, Wang, Huang, Ma, Wang, Dong, Wang, Xue, Wei, "The Era of 1-bit LLMs: All Large Language
Models are in 1.58 Bits", arXiv:2402.17764, 2024; the released training code is Figure 3 of
"The Era of 1-bit LLMs: Training Tips, Code and FAQ" (microsoft/unilm, ``bitnet/``, 2024), read
for this module. Its ``BitLinear(nn.Linear).forward`` is, line for line::

    x_norm  = RMSNorm(x)                                            the "SubLN"
    x_quant = x_norm + (activation_quant(x_norm) - x_norm).detach()  int8 absmax per token, STE
    w_quant = w + (weight_quant(w) - w).detach()                     absmean ternary, STE
    y       = F.linear(x_quant, w_quant)                             no bias

with ``activation_quant(x) = clamp(round(x s), -128, 127) / s``, ``s = 127 / clamp(max|x|,
1e-5)`` per token (row), and ``weight_quant(w) = clamp(round(w u), -1, 1) / u``,
``u = 1 / clamp(mean|w|, 1e-5)`` per tensor. :class:`BitLinear` computes exactly that: the
weights through the absmean projection (``ternref.projections.bitnet``, used by
:class:`ternref.methods.bitnet.BitNetQuantizer`; not re-implemented here), the activations
through :class:`ternref.methods.bitnet.BitNetActivation` (``bitnet_activation``, one scale per
row of the ``(N, in)`` input, i.e. per token).

Backward, derived
-----------------
Shapes: x (N, D) (leading axes flattened; every row is one token), w (M, D). Forward::

    r_n  = 1 / sqrt(mean_d x_nd^2 + eps)        xhat = x r          h = g * xhat     (RMSNorm)
    h_q  = Q_a(h)       (int8 per row)          w_q  = Q_w(w)       (ternary)
    y    = h_q w_q^T

The straight-through estimator replaces the Jacobians of the two rounding functions by the
identity: the ``detach`` trick makes ``x_quant`` equal ``Q_a(x_norm)`` in value and ``x_norm``
in derivative. So, for dy = dL/dy (N, M)::

    dL/dh_q = dy w_q                            (N, D)     Linear's dx, with the ternary w_q
    dL/dw   := dL/dw_q = dy^T h_q               (M, D)     Linear's dW, at the quantized input
    dL/dh   := dL/dh_q                                      STE through Q_a
    dL/dg   = sum_n dL/dh_n * xhat_n                        RMSNorm's gain
    dL/dx_n = r_n (u_n - xhat_n mean_d(u_n xhat_n)),  u = g * dL/dh         (RMSNorm's backward)

The last line is :class:`ternref.nn.RMSNorm`'s derivation. Every piece is an existing layer
(``RMSNorm``, ``BitNetActivation``, ``Linear`` with a weight quantizer), so the backward is
their composition, which ``tests/lm/test_bitlinear.py`` checks against central finite
differences of the straight-through *surrogate* ``y(x, w) = (h(x) + c_a) (w + c_w)^T`` with
the offsets ``c_a = Q_a(h) - h`` and ``c_w = Q_w(w) - w`` frozen at the point (the function
whose true gradient the STE computes; ``detach`` in PyTorch).

Choices
-------
* **The RMSNorm's gain.** The released code writes ``RMSNorm(x)`` without saying whether it has
  a learned gain. Step 2 of the same text ("remove RMSNorm before attention and SwiGLU because
  BitLinear has built-in RMSNorm") moves the block's norm into the layer, and the block's norm
  has a gain (LLaMA's ``RMSNorm.weight``), so ternref gives every BitLinear a learned gain
  (ones at init; no weight decay on it in ``ternref.lm``). Its ``eps`` is the model's
  ``norm_eps`` (1e-5 by default; the code does not give the value).
* **The weight rule** is that of ``ternref.projections.bitnet`` (the reference rule,
  ``clip(round(w / max(mean|w|, 1e-5)), -1, 1)``); this module calls the projection and does
  not duplicate it.
* **Which layers.** The seven projections of every block (attention ``q, k, v, o`` and SwiGLU's
  ``gate, up, down``); the token embedding, the final norm and the output head stay in full
  precision (the paper's Hugging Face answer: the head needs high-precision probabilities).

Other methods on the same transformer
-------------------------------------
:func:`quantize_transformer` attaches any weight-ternary method of ternref to those same seven
projections: its weight quantizer goes on each projection, exactly as :func:`quantize_model`
does for an MLP, and its callbacks (TTQ's scale clamp, LAT's link to Adam's ``v``, ...) work
unchanged because they find the layers with :func:`quantized_layers`. With
``bitlinear=True`` (the default for BitNet b1.58 only) each projection becomes a
:class:`BitLinear` carrying the method's weight quantizer, and the blocks' pre-norms are
removed (``subln="shared"``: q/k/v and gate/up share the kept block norms, o and down keep
a SubLN each, llama.cpp's ``bitnet`` placement); with ``bitlinear=False`` the projections stay
``Linear`` layers with a weight quantizer (float activations, block norms kept: how TWN, TTQ
and LAT quantize a network).
"""

from __future__ import annotations

import numpy as np

from ternref import _validate
from ternref.methods.base import Method, quantized_layers
from ternref.methods.bitnet import BitNet, BitNetActivation, BitNetQuantizer
from ternref.nn.layers import Linear, _check_dy, _need_cache
from ternref.nn.module import Module
from ternref.nn.norms import RMSNorm
from ternref.ternary import Ternary

__all__ = ["BitLinear", "Identity", "PROJECTIONS", "SUBLN", "projections", "quantize_transformer"]

#: The projections of a TransformerBlock, as (child, attribute) paths: attention, then SwiGLU.
PROJECTIONS = (
    ("attn", "q_proj"),
    ("attn", "k_proj"),
    ("attn", "v_proj"),
    ("attn", "o_proj"),
    ("ffn", "gate_proj"),
    ("ffn", "up_proj"),
    ("ffn", "down_proj"),
)


class Identity(Module):
    """``y = x``, ``dx = dy``: what a removed block norm becomes in a BitNet b1.58 model."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


class BitLinear(Linear):
    """BitNet b1.58's linear layer: RMSNorm, int8 absmax per token, absmean ternary weights.

    ``y = Q_a(RMSNorm(x)) @ Q_w(w).T`` with straight-through estimators for both quantizers
    (see the module docstring for the released code it follows and the derived backward).

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default False
        BitNet has none (kept for generality; the bias is added after the product).
    rng : numpy.random.Generator, optional
        For the initialisation of the weight (PyTorch's default, as :class:`Linear`).
    weight_quantizer : Module, optional
        ``w -> w_hat`` with a straight-through backward; default
        :class:`ternref.methods.bitnet.BitNetQuantizer` (absmean, per tensor). Another
        method's quantizer (TWN, TTQ, ...) makes a BitLinear with that method's weights.
    activation_quantizer : Module or None, optional
        Applied to the normalised input, one row per token; default
        :class:`ternref.methods.bitnet.BitNetActivation` (int8 absmax, STE). ``None``: float
        activations.
    input_norm : bool, default True
        The SubLN (an :class:`ternref.nn.RMSNorm` with a learned gain, ones at init).
    norm_eps : float, default 1e-5
    eps : float, default 1e-5
        Of the default quantizers (the code's ``clamp(min=1e-5)``).
    dtype : float dtype, default float32

    Attributes
    ----------
    weight : Parameter (out_features, in_features)
        The latent full-precision weights.
    input_norm : RMSNorm or None
    activation_quantizer : Module or None
    weight_quantizer : Module

    Notes
    -----
    Shapes: x (..., in) -> y (..., out); the layer flattens the leading axes to rows (tokens).
    ``backward_params`` runs the full backward, since the norm's gain needs ``dL/dh``.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = False, rng=None,
        weight_quantizer: Module | None = None, activation_quantizer="default",
        input_norm: bool = True, norm_eps: float = 1e-5, eps: float = 1e-5, dtype=np.float32,
    ):  # fmt: skip
        eps = _validate.real_number(eps, "eps", low=0.0, low_open=True)
        if weight_quantizer is None:
            weight_quantizer = BitNetQuantizer(eps)
        super().__init__(in_features, out_features, bias=bias, rng=rng,
                         weight_quantizer=weight_quantizer, dtype=dtype)  # fmt: skip
        if isinstance(activation_quantizer, str) and activation_quantizer == "default":
            activation_quantizer = BitNetActivation(eps)
        if activation_quantizer is not None and not isinstance(activation_quantizer, Module):
            raise TypeError(
                "activation_quantizer must be a Module, None or 'default', got "
                f"{_validate.describe(activation_quantizer)}"
            )
        if not isinstance(input_norm, bool):
            raise TypeError(f"input_norm must be a bool, got {_validate.describe(input_norm)}")
        self.input_norm = RMSNorm(in_features, norm_eps, dtype=dtype) if input_norm else None
        self.activation_quantizer = activation_quantizer
        self._rows = None

    @classmethod
    def from_linear(cls, layer: Linear, weight_quantizer: Module, activation_quantizer="default",
                    input_norm: bool = True, norm_eps: float = 1e-5) -> BitLinear:  # fmt: skip
        """A BitLinear that *shares* ``layer``'s weight (and bias) Parameter objects."""
        if not isinstance(layer, Linear) or isinstance(layer, BitLinear):
            raise TypeError(f"layer must be a plain Linear, got {_validate.describe(layer)}")
        new = cls(
            layer.in_features, layer.out_features, bias=False, rng=np.random.default_rng(0),
            weight_quantizer=weight_quantizer, activation_quantizer=activation_quantizer,
            input_norm=input_norm, norm_eps=norm_eps, dtype=layer.weight.data.dtype,
        )  # fmt: skip
        new.weight = layer.weight
        new.bias = layer.bias
        return new

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (..., in) -> y (..., out)."""
        x = _validate.float_array(x, "BitLinear input", finite=False)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self!r}: expected input of shape (..., {self.in_features}), got {x.shape}"
            )
        lead = x.shape[:-1]
        h = x.reshape(-1, self.in_features)  # one row per token
        if self.input_norm is not None:
            h = self.input_norm(h)  # SubLN: h = g * x / rms(x)
        if self.activation_quantizer is not None:
            h = self.activation_quantizer(h)  # h_q = Q_a(h), per row
        y = super().forward(h)  # h_q @ Q_w(w).T (+ b)
        self._rows = lead
        return y.reshape(*lead, self.out_features)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy (..., out) -> dx (..., in); accumulates dw (through the STE) and the gain's grad."""
        lead = _need_cache(self, self._rows)
        dy = _check_dy(self, dy, (*lead, self.out_features))
        dh = super().backward(dy.reshape(-1, self.out_features))  # dy @ w_q; dw_q = dy^T h_q
        if self.activation_quantizer is not None:
            dh = self.activation_quantizer.backward(dh)  # STE: dL/dh := dL/dh_q
        if self.input_norm is not None:
            dh = self.input_norm.backward(dh)  # r (u - xhat mean(u xhat)), u = g dL/dh
        return dh.reshape(*lead, self.in_features)

    def backward_params(self, dy: np.ndarray) -> None:
        self.backward(dy)

    def to_ternary(self) -> Ternary:
        """The ternary weights used in evaluation mode (codes and scale), for export."""
        return self.weight_quantizer.to_ternary(self.weight.data)

    def extra_repr(self) -> str:
        act = "int8" if isinstance(self.activation_quantizer, BitNetActivation) else (
            "float" if self.activation_quantizer is None
            else type(self.activation_quantizer).__name__
        )  # fmt: skip
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"subln={self.input_norm is not None}, activations={act}, "
            f"weights={type(self.weight_quantizer).__name__}"
        )


def projections(model) -> list[tuple[Module, str, Linear]]:
    """``(owner, attribute, layer)`` of the seven projections of every block, in order."""
    out = []
    for blk in model.blocks:
        for child, attr in PROJECTIONS:
            owner = getattr(blk, child)
            out.append((owner, attr, getattr(owner, attr)))
    return out


#: Where the SubLN sits in a BitLinear model (see :func:`quantize_transformer`).
SUBLN = ("projection", "shared")


def quantize_transformer(model, method: Method, bitlinear: bool | None = None,
                         subln: str = "projection") -> list:  # fmt: skip
    """Attach ``method`` to the projections of a :class:`ternref.nn.TransformerLM`, in place.

    Parameters
    ----------
    model : TransformerLM
        A float model (no quantizer attached yet).
    method : Method
        A weight-ternary method (``ternref.methods.get(name)``). BitNet b1.58 gives the paper's
        model; TWN, TTQ, LAT and the other weight methods attach to the same projections.
    bitlinear : bool, optional
        Make every projection a :class:`BitLinear` (SubLN, int8 activations, the method's
        ternary weights) and remove the blocks' pre-norms, as the BitNet b1.58 code does.
        ``None`` (default): True for ``bitnet``, False for the others (the weight quantizer
        goes on the unchanged ``Linear``; float activations). ``bitnet`` with
        ``quantize_activations=False`` gets a BitLinear with float activations.
    subln : {"projection", "shared"}, default "projection"
        Where the SubLN RMSNorms sit in a BitLinear model (``bitlinear`` true).
        ``"projection"``: one per projection, seven per block, the blocks' pre-norms removed
        (the released code's layer, the default). ``"shared"``: the placement of BitNet
        b1.58 2B4T and of llama.cpp's ``bitnet`` architecture, one norm per input that
        projections share: q, k, v read one normalised input (the block's ``attn_norm``,
        kept), gate and up another (``ffn_norm``, kept), and ``o_proj`` and ``down_proj``
        keep their own SubLN (``attn_sub_norm``, ``ffn_sub_norm`` in llama.cpp), so a block
        has four RMSNorms. Every projection still quantizes its (normalised) input to int8
        per token; q, k and v quantize the same input, hence identically. The backward is
        the composition of existing layers, unchanged: the block sums the three (two)
        projections' input gradients before its norm's backward (``MultiHeadAttention`` and
        ``SwiGLU`` add ``dx`` of q, k, v and of gate, up), then ``RMSNorm.backward``; o and
        down run BitLinear's own derived backward. ``tests/lm/test_quantize_transformer.py``
        checks the whole model against central finite differences of the STE surrogate.

    Returns
    -------
    list of Callback
        The method's callbacks followed by :class:`ternref.methods.base.TernaryStats`, for
        ``ternref.lm.train_lm`` (as :func:`quantize_model` returns them for ``fit``).

    Raises
    ------
    TypeError
        ``model`` is not a TransformerLM.
    ValueError
        The model is already quantized, or the method needs something a language model here
        does not have: a teacher (distillation), or ternary activations built for the ReLU
        positions of an MLP (``info.ternary == "W+A"``).
    """
    from ternref.methods.base import TernaryStats
    from ternref.nn.transformer import TransformerLM

    if not isinstance(model, TransformerLM):
        raise TypeError(f"model must be a ternref.nn.TransformerLM, got {type(model).__name__}")
    if not isinstance(method, Method):
        raise TypeError(f"method must be a ternref.methods.Method, got {type(method).__name__}")
    name = method.info.name
    if quantized_layers(model):
        raise ValueError("model is already quantized (a layer has a weight_quantizer)")
    if "teacher" in method.hyperparameters():
        raise ValueError(
            f"method {name!r} distils from a teacher; ternref's language-model training has no "
            "teacher path (use it on an MLP or CNN with `ternref train`)"
        )
    if method.info.ternary != "W":
        raise ValueError(
            f"method {name!r} also ternarizes activations with a quantizer built for the ReLU "
            "positions of an MLP or CNN; a transformer has none (weight-ternary methods only)"
        )
    is_bitnet = isinstance(method, BitNet)
    if bitlinear is None:
        bitlinear = is_bitnet
    if not isinstance(bitlinear, bool):
        raise TypeError(f"bitlinear must be a bool or None, got {_validate.describe(bitlinear)}")
    _validate.one_of(subln, "subln", SUBLN)
    if subln == "shared" and not bitlinear:
        raise ValueError(
            "subln='shared' places BitLinear SubLNs; it needs bitlinear=True (the default for "
            "bitnet), got bitlinear=False"
        )
    shared = subln == "shared"
    for owner, attr, layer in projections(model):
        quantizer = method.weight_quantizer(layer)
        act = method.activation_quantizer(layer)
        if bitlinear:
            if act is None and not is_bitnet:
                act = BitNetActivation()  # BitLinear is W1.58A8 whatever the weight rule
            # shared: q, k, v, gate, up read the block's norm; o and down keep a SubLN
            own_norm = not shared or attr in ("o_proj", "down_proj")
            new = BitLinear.from_linear(layer, quantizer, activation_quantizer=act,
                                        input_norm=own_norm, norm_eps=model.norm_eps)  # fmt: skip
            setattr(owner, attr, new)
        elif act is not None:  # bitnet without SubLN: int8 activations in front, norms kept
            new = BitLinear.from_linear(layer, quantizer, activation_quantizer=act,
                                        input_norm=False)  # fmt: skip
            setattr(owner, attr, new)
        else:
            layer.weight_quantizer = quantizer
    if bitlinear and not shared:
        for blk in model.blocks:  # "remove RMSNorm before attention and SwiGLU" (FAQ, step 2)
            blk.attn_norm = Identity()
            blk.ffn_norm = Identity()
    return [*method.callbacks(model), TernaryStats()]
