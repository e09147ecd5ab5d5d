"""TRQ — Ternary Neural Networks with Residual Quantization (stem + residual binarization).

Li, Ding, Liu, Zhang, Guo, "TRQ: Ternary Neural Networks with Residual Quantization", AAAI 2021,
35(10):8538-8546, doi:10.1609/aaai.v35i10.17036 (no arXiv version).

Instead of thresholding w, TRQ binarizes a *stem* and then binarizes the *residual* the stem
leaves, with one shared scale (``ternref.projections.trq``)::

    stem     = alpha * sgn(w)
    residual = alpha * sgn(w - stem)
    w_hat    = stem + residual = 2 alpha * sign(w) * 1[|w| > alpha]        (methods.md P15)

so one residual level is a ternary quantizer with threshold Delta = alpha and level 2 alpha.

Scale (two modes, ``scale``):

* ``"mean"`` (default): alpha = mean|w| over the layer, recomputed every forward: the
  least-squares scale of the binary stem (BWN/XNOR-Net), not differentiated (like TWN's);
* ``"learned"``: alpha is a ``Parameter`` of the quantizer initialised to mean|w|, with
  d w_hat / d alpha = 2 t for the fixed code t (w_hat = 2 alpha t), so dL/d alpha = 2 sum g t;
  it is kept >= 0 by a callback.

Backward for the latent weights: identity STE, dL/dw = dL/dw_hat (the paper's STE variant could
not be checked).

Assumptions and scope (the paper body could not be read; methods.md marks its scaling [R]):

* The closed-form default and the shared stem/residual scale are ternref's reading of the
  abstract ("recursively performs quantization on full-precision weights ... combining the
  binarized stem and residual parts"); separate stem and residual scales would give four levels.
* **Weights only.** TRQ's residual scheme is defined on the weights; its activation quantizer in
  the experiments could not be checked, so ternref's TRQ is a weight-ternary method
  (``info.ternary = "W"``).
* Per-tensor alpha (the projection's granularity).
* First and last layers in full precision (``quantize_model``'s default), as in the ResNet/VGG
  experiments of most ternary papers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, quantized_layers, register
from ternref.nn.module import Parameter
from ternref.projections.trq import trq as trq_projection
from ternref.train import Callback


class TRQQuantizer(WeightQuantizer):
    """w -> stem + residual = 2 alpha sign(w) 1[|w| > alpha]; identity STE.

    Parameters
    ----------
    alpha : float or None
        ``None``: closed-form alpha = mean|w| every forward. A number: initial value of a
        learned ``Parameter`` ``self.alpha``.
    dtype : float dtype
        Of the learned alpha.
    """

    def __init__(self, alpha=None, dtype=np.float32):
        super().__init__()
        self.alpha = None if alpha is None else Parameter(np.asarray(alpha, dtype=dtype), "alpha")

    def project(self, w):
        if self.alpha is None:
            return trq_projection(w)
        return trq_projection(w, alpha=max(float(self.alpha.data), 0.0))

    def backward(self, dw_hat):
        if self.alpha is not None and self.alpha.requires_grad:
            if self.ternary is None:
                raise RuntimeError("TRQQuantizer.backward called before forward")
            # w_hat = 2 alpha t for the fixed code t, so d w_hat / d alpha = 2 t
            self.alpha.grad += 2.0 * np.sum(dw_hat * self.ternary.codes, dtype=np.float64)
        return dw_hat  # identity STE

    def extra_repr(self):
        return "alpha=mean|w|" if self.alpha is None else f"alpha={float(self.alpha.data):.4g}"


class ClampAlpha(Callback):
    """After each step keep every learned TRQ alpha >= 0."""

    def __init__(self, quantizers):
        self.quantizers = [q for q in quantizers if q.alpha is not None]

    def on_step_end(self, model, optimizer):
        for q in self.quantizers:
            np.maximum(q.alpha.data, 0.0, out=q.alpha.data)


@register
@dataclass
class TRQ(Method):
    """TRQ (Li et al. 2021): binarized stem + binarized residual, shared alpha; identity STE.

    Parameters
    ----------
    scale : {"mean", "learned"}
        Closed-form alpha = mean|w| each forward (default) or a learned alpha initialised to it.
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="trq",
        paper="Li, Ding, Liu, Zhang, Guo: TRQ: Ternary Neural Networks with Residual Quantization",
        year=2021,
        arxiv=None,
        ternary="W",
        projection="alpha [sgn(w) + sgn(w - alpha sgn w)] = 2 alpha sign(w) 1[|w| > alpha]",
        estimator="identity STE (learned alpha: dL/d alpha = 2 sum g t)",
        optimizer="SGD/Adam on latent weights",
    )
    scale: str = "mean"

    def validate(self):
        _validate.one_of(self.scale, "scale", ("mean", "learned"))

    def weight_quantizer(self, layer):
        w = layer.weight.data
        if self.scale == "mean":
            return TRQQuantizer(None)
        return TRQQuantizer(float(np.mean(np.abs(w))), dtype=w.dtype)

    def callbacks(self, model):
        qs = [
            layer.weight_quantizer
            for layer in quantized_layers(model)
            if isinstance(layer.weight_quantizer, TRQQuantizer)
        ]
        return [ClampAlpha(qs)] if any(q.alpha is not None for q in qs) else []
