"""TWN — Ternary Weight Networks, trained with the straight-through estimator.

Li, Zhang, Liu, "Ternary Weight Networks", arXiv:1605.04711 (2016; NIPS-W EMDNN 2016).
Official code (2022 revision): github.com/Thinklab-SJTU/twns.

Every forward pass projects the latent weights (``ternref.projections.twn``)::

    Delta = factor * mean|W|                       (Eq. for the approximate threshold, 0.7)
    alpha = mean_{|W_i| > Delta} |W_i|             (least-squares scale for that support)
    W_hat = alpha * sign(W) * 1[|W| > Delta]

and the backward pass is the identity STE: dL/dW := dL/dW_hat, applied to the full-precision
copy (the official conv ``backward`` computes the gradient at the ternary weights and then
restores the float weights for the update). Delta and alpha are recomputed every forward and are
not differentiated.

Choices: the paper projects per layer with factor 0.7 (ternref's default); the official 2022
code projects per output channel with 0.75 (``granularity="channel", factor=0.75``). The paper
ternarizes every layer of LeNet-5 / VGG-7 / ResNet-18; ternref's default keeps the first and
last layers in full precision like the other methods, so that methods are compared on equal
terms (pass ``keep_full_precision="none"`` to ``quantize_model`` for the paper's setting).
Optimizer (paper README): SGD with momentum; LeNet-5 on MNIST with lr 1e-3, x0.1 every 15 of
100 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, register
from ternref.projections import twn as twn_projection


class TWNQuantizer(WeightQuantizer):
    """w -> TWN projection; identity STE backward (inherited)."""

    def __init__(self, factor: float, granularity: str):
        super().__init__()
        self.factor = factor
        self.granularity = granularity

    def project(self, w):
        return twn_projection(w, factor=self.factor, granularity=self.granularity)

    def extra_repr(self):
        return f"factor={self.factor}, granularity={self.granularity!r}"


@register
@dataclass
class TWN(Method):
    """Ternary Weight Networks (Li et al. 2016): threshold 0.7*mean|W|, least-squares scale, STE.

    Parameters
    ----------
    factor : float
        Threshold factor, Delta = factor * mean|W| (paper: 0.7; official 2022 code: 0.75).
    granularity : {"tensor", "channel"}
        One (Delta, alpha) per layer (paper) or per output channel (official 2022 code).
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="twn",
        paper="Li, Zhang, Liu: Ternary Weight Networks",
        year=2016,
        arxiv="1605.04711",
        ternary="W",
        projection="0.7*mean|W| threshold, least-squares alpha",
        estimator="identity STE",
        optimizer="SGD/Adam on latent weights",
    )
    factor: float = 0.7
    granularity: str = "tensor"

    def validate(self):
        # the projection needs factor < 1 (a nonzero tensor then never has an empty support)
        _validate.real_number(self.factor, "factor", low=0.0, high=1.0, high_open=True)
        _validate.one_of(self.granularity, "granularity", ("tensor", "channel"))

    def weight_quantizer(self, layer):
        return TWNQuantizer(self.factor, self.granularity)
