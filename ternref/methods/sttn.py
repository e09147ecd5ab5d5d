"""STTN — Soft Threshold Ternary Networks: two binary kernels whose sum is ternary.

Xu, He, Zhao, Hu, Wang, Cheng, "Soft Threshold Ternary Networks", IJCAI 2020, arXiv:2204.01234.
Official PyTorch code: github.com/WeixiangXu/STTN (``util.py`` ``BinOp``, ``main.py``,
``merge_from_bwx2_to_ternary.py``, ``TerActivateFunc``; re-read at commit 295bd64).

Weights (an *indirect* projection: there is no hard threshold Delta). Each quantized layer trains
two latent kernels W1, W2 of the same shape; the forward pass uses (``ternref.projections.sttn``)::

    W_k <- clamp(W_k, -1, 1)                               (after every step, BinOp.clampConvParams)
    alpha_c = (||W1_c||_1 + ||W2_c||_1) / (2n)             (shared, per output channel; n = fan-in)
    B_k = alpha * sgn(W_k)                                 (two binary kernels)
    W_hat = B1 + B2 = alpha (sgn W1 + sgn W2)  in {-2 alpha, 0, +2 alpha}

so a weight is 0 exactly where the two signs disagree: the threshold is "soft", learned implicitly
by where W1 and W2 disagree. Training computes ``x @ B1.T + x @ B2.T``, which is ``x @ W_hat.T``;
ternref computes the merged form directly (it is the same number, methods.md P15, and the test
pins ``W_hat == B1 + B2`` bit for bit).

Backward (``estimators.sttn_coupled``): with ``g = dL/dW_hat`` (so dL/dB1 = dL/dB2 = g), ternref
takes the exact chain rule through the shared alpha, with an STE for sgn::

    dL/dW_k,i = alpha * g_i * 1[|W_k,i| <= 1]                                  (STE through sgn)
              + sgn(W_k,i) / (2n) * sum_{j in channel} g_j (sgn W1_j + sgn W2_j)   (d alpha / d W_k)

(the paper derives d alpha / d W_k,i = sgn(W_k,i)/(2n)); a test checks the second term, and the
whole gradient for a fixed sign pattern, against finite differences.

The official ``util.py`` ``BinOp.updateBinaryGradWeight`` (read at commit 295bd64; ``main.py``
calls it after ``loss.backward()`` and ``restore()``, so ``W_k`` is the clamped latent kernel and
``g`` is dL/dB_k) computes instead::

    dL/dW_k,i = g_i + sgn(W_k,i) / n * sum_{j in channel} g_j sgn(W_k,j)

It differs from ternref's in three places:

* **no alpha on the straight-through term** (``g``, where the chain rule through
  ``B_k = alpha sgn(W_k)`` gives ``alpha g``);
* **division by n, not 2n**, and
* **only the kernel's own sum**: ``sum_j g_j sgn(W_k,j)`` over kernel k's signs, where the exact
  coupling sums ``g_j (sgn W1_j + sgn W2_j)`` over both kernels. The two agree where the kernels
  agree; at the positions where they disagree (the zeros of the ternary kernel, whose output
  does not depend on alpha) the exact sum gets 0 and the official one ``g_j sgn(W_k,j)``.

Its STE clip, ``1[|W_k| <= 1.96]``, never acts: the weights were clamped to [-1, 1] before the
gradient is formed. ternref's ``1[|W_k| <= clip]`` with ``clip = 1`` does not act either (the
clamp callback keeps |W_k| <= 1). ``torch.sign(0) = 0`` in the official sums; ternref's forward
uses sgn(0) = +1 (``projections.sttn``), and its coupling sum uses the same values.
ternref keeps the exact chain rule of its forward pass (an STE only where sgn has no
derivative); the official rule is recorded here and not implemented.

Activations (``ternref.projections.sttn_activation``, the official CUDA kernel): -1 for x < -0.5,
0 for -0.5 <= x < 0.5, +1 for x >= 0.5, with a clipped STE, dL/dx = dL/dy * 1[|x| <= 1].

Design of the two kernels in ternref's layer interface: W1 is the layer's own ``weight``
``Parameter`` (the layer still calls ``weight_quantizer(weight.data)``) and W2 is a ``Parameter``
``weight2`` of the quantizer, so ``model.parameters()`` and the optimizer see both; the
quantizer's ``backward`` returns dL/dW1 and accumulates dL/dW2 into ``weight2.grad``. The clamp
of both kernels to [-1, 1] is a callback after each optimizer step.

Choices (paper vs code vs ternref):

* **Initialisation of (W1, W2).** If W1 = W2 the two kernels receive identical gradients and stay
  equal forever (no zeros ever appear), so they must start apart. ternref starts from the layer's
  (random or pretrained) weights W and sets W1 = W + Delta, W2 = W - Delta with
  Delta = ``init_factor`` * mean|W| per output channel (default 0.7, TWN's rule): the signs then
  agree exactly where |W| > Delta, so the initial merged kernel has TWN's support. The official
  code initialises the two binary kernels from a pretrained model in a way we could not check;
  this is ternref's assumption.
* **sgn(0) = +1** (``projections.sttn``), so each B_k is truly binary.
* **Activation placement.** In the XNOR-Net-style blocks of the official code a BatchNorm sits
  in front of each ternary activation, so its input is centred. In a ternref MLP the ternary
  activation *replaces* the ReLU in front of a quantized layer (``replaces_relu = True``):
  placed after a ReLU, the negative level -1 could never occur. Use ``nn.mlp(...,
  batchnorm=True)`` for the paper's BN -> activation order.
* **Loss.** The paper trains with a teacher-student loss (KL / soft cross-entropy to a
  full-precision teacher, ``TS_Loss``); ternref's STTN is the quantizer alone and can be combined
  with the ``kd`` method's distillation loss.
* **Full-precision layers.** The paper keeps the first and last layers (and the 1x1 downsample
  convs) in full precision: ``quantize_model``'s default ``keep_full_precision="first_last"``.
  Optimizer in the code: Adam (ImageNet ResNet-18, lr 1e-3 decayed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods import estimators
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, quantized_layers, register
from ternref.nn.module import Module, Parameter
from ternref.packed.layers import expect_state_keys, register_inference_layer
from ternref.projections.sttn import sttn as sttn_projection
from ternref.projections.sttn import sttn_activation
from ternref.train import Callback


class STTNQuantizer(WeightQuantizer):
    """(W1 = layer weight, W2 = ``self.weight2``) -> B1 + B2; exact-coupling backward.

    Parameters
    ----------
    w2 : ndarray
        Initial second kernel, the layer weight's shape (at least 2-D).
    clip : float
        STE clip of the sgn derivative, 1[|W_k| <= clip].
    """

    def __init__(self, w2: np.ndarray, clip: float = 1.0):
        super().__init__()
        self.weight2 = Parameter(np.array(w2, copy=True), "weight2")
        self.clip = clip

    def project(self, w):
        return sttn_projection(w, self.weight2.data.astype(w.dtype, copy=False))

    def backward(self, dw_hat):
        w1 = self._w
        w2 = self.weight2.data.astype(w1.dtype, copy=False)
        # W_hat = B1 + B2, so dL/dB1 = dL/dB2 = dL/dW_hat
        d1, d2 = estimators.sttn_coupled(dw_hat, dw_hat, w1, w2, clip=self.clip)
        if self.weight2.requires_grad:
            self.weight2.grad += d2.astype(self.weight2.grad.dtype, copy=False)
        return d1

    def to_ternary(self, w):
        return sttn_projection(w, self.weight2.data.astype(w.dtype, copy=False))

    def extra_repr(self):
        return f"clip={self.clip}"


@register_inference_layer
class STTNActivation(Module):
    """Ternary activation y in {-1, 0, +1} (thresholds -0.5 / +0.5); clipped STE 1[|x| <= 1].

    Packed export: a registered inference layer (``ternref.packed``), state ``clip``.
    """

    def __init__(self, clip: float = 1.0):
        super().__init__()
        self.clip = clip
        self._x = None

    def forward(self, x):
        self._x = x
        return sttn_activation(x)

    def backward(self, dy):
        if self._x is None:
            raise RuntimeError("STTNActivation.backward called before forward")
        return estimators.clipped_ste(dy, self._x, self.clip)

    def extra_repr(self):
        return f"clip={self.clip}"

    def export_state(self):
        """``({"clip": clip}, {})`` for ``ternref.packed`` (``clip`` only shapes the backward)."""
        return {"clip": float(self.clip)}, {}

    @classmethod
    def from_export_state(cls, params, arrays):
        """Rebuild from :meth:`export_state` output (checked: exactly ``clip`` > 0)."""
        expect_state_keys("STTNActivation", params, arrays, ("clip",), ())
        return cls(clip=_validate.real_number(params["clip"], "clip", low=0.0, low_open=True))


class ClampKernels(Callback):
    """After each optimizer step clamp W1 and W2 of every STTN layer to [-1, 1] (in place)."""

    def __init__(self, model: Module):
        self.layers = [
            layer
            for layer in quantized_layers(model)
            if isinstance(layer.weight_quantizer, STTNQuantizer)
        ]

    def on_step_end(self, model, optimizer):
        for layer in self.layers:
            np.clip(layer.weight.data, -1.0, 1.0, out=layer.weight.data)
            w2 = layer.weight_quantizer.weight2.data
            np.clip(w2, -1.0, 1.0, out=w2)


@register
@dataclass
class STTN(Method):
    """Soft Threshold Ternary Networks (Xu et al. 2020): W_hat = alpha (sgn W1 + sgn W2).

    Parameters
    ----------
    init_factor : float > 0
        W1 = W + Delta, W2 = W - Delta at attach time, Delta = init_factor * mean|W| per output
        channel (ternref's assumption, see the module docstring).
    clip : float > 0
        STE clip of sgn for the latent kernels (1, the clamp range).
    activations : bool
        Ternarize the input of each quantized layer (the paper: yes).
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="sttn",
        paper="Xu, He, Zhao, Hu, Wang, Cheng: Soft Threshold Ternary Networks",
        year=2020,
        arxiv="2204.01234",
        ternary="W+A",
        projection="two binary kernels, alpha (sgn W1 + sgn W2), shared per-channel alpha",
        estimator="clipped STE through sgn + exact d alpha / d W coupling; clipped STE for A",
        optimizer="Adam on W1, W2 clamped to [-1, 1]; teacher-student KL in the paper",
    )
    init_factor: float = 0.7
    clip: float = 1.0
    activations: bool = True

    replaces_relu: ClassVar[bool] = True

    def validate(self):
        _validate.real_number(self.init_factor, "init_factor", low=0.0, low_open=True)
        _validate.real_number(self.clip, "clip", low=0.0, low_open=True)
        if not isinstance(self.activations, bool):
            raise TypeError(
                f"activations must be a bool, got {_validate.describe(self.activations)}"
            )

    def weight_quantizer(self, layer):
        w = layer.weight.data
        if w.ndim < 2:
            raise ValueError(f"STTN needs a weight of at least 2 dimensions, got {w.shape}")
        axes = tuple(range(1, w.ndim))
        delta = self.init_factor * np.mean(np.abs(w), axis=axes, keepdims=True)
        w1 = np.clip(w + delta, -1.0, 1.0).astype(w.dtype)
        w2 = np.clip(w - delta, -1.0, 1.0).astype(w.dtype)
        layer.weight.data[...] = w1
        return STTNQuantizer(w2, clip=self.clip)

    def activation_quantizer(self, layer):
        return STTNActivation(clip=1.0) if self.activations else None

    def callbacks(self, model):
        return [ClampKernels(model)]
