"""TTQ — Trained Ternary Quantization: learned asymmetric scales W_p, W_n and a scaled STE.

Zhu, Han, Mao, Dally, "Trained Ternary Quantization", ICLR 2017, arXiv:1612.01064.
Official TensorFlow code: github.com/czhu95/ternarynet (``examples/Ternary-Net/ternary.py``,
``tw_ternarize``); PyTorch port: github.com/TropComplique/trained-ternary-quantization.

Forward (assignment by ``ternref.projections.ttq``, the code form of the paper's Eq. 6)::

    Delta = t * max|w|                                   t = 0.05 (paper, CIFAR-10 / ImageNet)
    w_hat = +W_p  on I_p = {w > Delta}
             0    on I_0 = {|w| <= Delta}
            -W_n  on I_n = {w < -Delta}

with ``W_p, W_n > 0`` two trained scalars per layer (``Parameter`` attributes ``w_p``, ``w_n`` of
the quantizer, so ``model.parameters()`` hands them to the optimizer).

Backward (``estimators.ttq_scaled_ste``):

* scales (Eq. 7, by the chain rule): dL/dW_p = sum_{I_p} g,  dL/dW_n = -sum_{I_n} g;
* latent weights (Eq. 8, "scaled STE"): dL/dw = W_p g on I_p, g on I_0, W_n g on I_n.

Paper vs code vs ternref
------------------------
* Sign of dL/dW_n: the printed Eq. 7 and the PyTorch port use +sum_{I_n} g; the official code
  differentiates ``-W_n`` with autodiff and gets the minus sign. ternref follows the chain rule
  (methods.md §2.2, §5.2); a finite-difference test pins it.
* Threshold: the paper normalises w~ = w / max|w| and thresholds at t; the code thresholds w at
  t * max|w| (same support). ternref uses the code form. Ties |w| = Delta go to 0 (the official
  code leaves them at an unscaled +-1, an artefact).
* **Initial scales (differs from the code).** The official code initialises W_p = W_n = 1.0, and
  the paper fine-tunes from a pretrained full-precision model whose weights it has normalised
  by their maximum, so that 1.0 is the right order of magnitude. Trained from scratch in an MLP
  without BatchNorm, latent weights are ~U(+-1/sqrt(fan_in)) ~ 0.06, and levels of +-1.0 would
  multiply that layer's output by ~20. ternref's default ``scale_init="mean"`` starts each scale
  at the mean |w| over its side of the initial assignment (the least-squares value for that
  support, what the projection returns without trained values), so training starts from a
  faithful ternary approximation of the initial weights; ``scale_init=1.0`` gives the official
  initialisation.
* **How the scales are trained.** The PyTorch port uses three optimizers (model, latent weights,
  scales). ternref uses the one optimizer ``fit`` is given, built from ``model.parameters()``,
  which includes every quantizer's ``w_p`` and ``w_n``: the scales get the same update rule and
  learning rate as the weights (with Adam the step of a scalar is ~lr whatever the size of its
  summed gradient; with plain SGD the summed gradient can be large, so prefer Adam or give the
  scales their own parameter group: ``ternref.optim`` supports ``[{"params": weights},
  {"params": scales, "lr": ...}]``). After every step a callback clamps the scales at 0, the
  constraint W_p, W_n >= 0 that makes them the magnitudes of the levels (a projected gradient
  step; inactive in normal training).
* Fixed-sparsity mode (the code's ``p_ternarize``): ``sparsity=p`` zeroes the ``round(p n)``
  smallest magnitudes instead of using ``t``.
* Layers kept in full precision: the paper keeps the first convolution and the last fully
  connected layer in full precision, which is ``quantize_model``'s default ``"first_last"``.
* Optimizer in the paper: SGD/Adam fine-tuning on CIFAR (from a pretrained FP model), from
  scratch for AlexNet on ImageNet; the learning rate of the scales is not stated separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, quantized_layers, register
from ternref.methods.estimators import ttq_scaled_ste
from ternref.nn.module import Parameter
from ternref.projections import ttq as ttq_projection
from ternref.train import Callback


class TTQQuantizer(WeightQuantizer):
    """w -> {+W_p, 0, -W_n} with learned ``w_p``, ``w_n``; TTQ's scaled STE backward.

    Parameters
    ----------
    t : float
        Threshold fraction, Delta = t * max|w|.
    w_p, w_n : float
        Initial scales (> 0).
    sparsity : float, optional
        Fixed-sparsity assignment instead of ``t``.
    dtype : float dtype
        Of the scale parameters (the layer's weight dtype).
    """

    def __init__(self, t: float, w_p: float, w_n: float, sparsity=None, dtype=np.float32):
        super().__init__()
        self.t = t
        self.sparsity = sparsity
        self.w_p = Parameter(np.asarray(w_p, dtype=dtype), "w_p")
        self.w_n = Parameter(np.asarray(w_n, dtype=dtype), "w_n")

    def project(self, w):
        return ttq_projection(
            w,
            t=self.t,
            sparsity=self.sparsity,
            alpha_pos=float(self.w_p.data),
            alpha_neg=float(self.w_n.data),
        )

    def backward(self, dw_hat):
        if self.ternary is None:
            raise RuntimeError("TTQQuantizer.backward called before forward")
        dw, d_wp, d_wn = ttq_scaled_ste(
            dw_hat, self.ternary.codes, float(self.w_p.data), float(self.w_n.data)
        )
        # Eq. 7: the scales' gradients are sums over their supports (accumulated, like any grad)
        if self.w_p.requires_grad:
            self.w_p.grad += d_wp
        if self.w_n.requires_grad:
            self.w_n.grad += d_wn
        return dw

    def extra_repr(self):
        return f"t={self.t}, w_p={float(self.w_p.data):.4g}, w_n={float(self.w_n.data):.4g}"


def initial_scales(w: np.ndarray, t: float, sparsity=None) -> tuple[float, float]:
    """Mean |w| over each side of TTQ's initial assignment (least squares for that support).

    An empty side gets the mean |w| of the other side (or of all weights), never 0, so that
    both levels can be learned.
    """
    tern = ttq_projection(w, t=t, sparsity=sparsity)
    w_p, w_n = float(tern.alpha_pos), float(tern.alpha_neg)
    fallback = max(w_p, w_n) or float(np.mean(np.abs(w))) or 1.0
    return (w_p or fallback), (w_n or fallback)


class ClampScales(Callback):
    """After each step, W_p <- max(W_p, 0) and W_n <- max(W_n, 0) (the levels are magnitudes)."""

    def __init__(self, quantizers):
        self.quantizers = list(quantizers)

    def on_step_end(self, model, optimizer):
        for q in self.quantizers:
            np.maximum(q.w_p.data, 0, out=q.w_p.data)
            np.maximum(q.w_n.data, 0, out=q.w_n.data)


@register
@dataclass
class TTQ(Method):
    """Trained Ternary Quantization (Zhu et al. 2017): learned W_p / W_n, scaled STE.

    Parameters
    ----------
    t : float in [0, 1)
        Threshold factor, Delta = t * max|w| (paper: 0.05).
    scale_init : "mean" or float > 0
        Initial W_p, W_n: ``"mean"`` = mean |w| over each side of the initial assignment
        (ternref's default, see the module docstring), or a constant (official code: 1.0).
    sparsity : float in [0, 1], optional
        Fixed-sparsity assignment (the code's ``p_ternarize``) instead of ``t``.
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="ttq",
        paper="Zhu, Han, Mao, Dally: Trained Ternary Quantization",
        year=2017,
        arxiv="1612.01064",
        ternary="W",
        projection="t*max|W| threshold, learned asymmetric levels +W_p / -W_n",
        estimator="scaled STE (W_p, 1, W_n); dW_p = sum_Ip g, dW_n = -sum_In g",
        optimizer="same optimizer for latent weights and scales; scales clamped >= 0",
    )
    t: float = 0.05
    scale_init: str | float = "mean"
    sparsity: float | None = None

    def validate(self):
        _validate.real_number(self.t, "t", low=0.0, high=1.0, high_open=True)
        if isinstance(self.scale_init, str):
            _validate.one_of(self.scale_init, "scale_init", ("mean",))
        else:
            _validate.real_number(self.scale_init, "scale_init", low=0.0, low_open=True)
        if self.sparsity is not None:
            _validate.real_number(self.sparsity, "sparsity", low=0.0, high=1.0)

    def weight_quantizer(self, layer):
        w = layer.weight.data
        if self.scale_init == "mean":
            w_p, w_n = initial_scales(w, self.t, self.sparsity)
        else:
            w_p = w_n = float(self.scale_init)
        return TTQQuantizer(self.t, w_p, w_n, sparsity=self.sparsity, dtype=w.dtype)

    def callbacks(self, model):
        qs = [
            layer.weight_quantizer
            for layer in quantized_layers(model)
            if isinstance(layer.weight_quantizer, TTQQuantizer)
        ]
        return [ClampScales(qs)]
