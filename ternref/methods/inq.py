"""INQ — Incremental Network Quantization, ternary (2-bit) case.

Zhou, Yao, Guo, Xu, Chen, "Incremental Network Quantization: Towards Lossless CNNs with
Low-Precision Weights", ICLR 2017, arXiv:1702.03044.

INQ does not train through a quantizer with a surrogate gradient. It repeats three operations on
a (pretrained) network until every weight is quantized (paper, section 2.2-2.3):

1. **weight partition**: among the weights not yet quantized, the largest-magnitude ones join
   the quantized set, so that the *accumulated* portion of quantized weights reaches the next
   entry of ``portions`` (paper: 50%, 75%, 87.5%, 100% [R]);
2. **group-wise quantization**: the newly chosen weights are replaced by their value in the
   layer's codebook ``P = {-2^n1, 0, +2^n1}`` (ternary: ``b = 2`` bits including zero,
   ``n1 = floor(log2(4 s / 3))``, ``s = max|W|``; ``ternref.projections.inq``), which is the
   rule ``w -> 2^n1 sign(w) 1[|w| >= 2^(n1-1)]`` (paper's Eq. 4; ties at the threshold go to the
   nonzero level, as the paper's ``>=``);
3. **re-training**: the remaining full-precision weights are trained with the ordinary loss while
   the quantized ones are held fixed: their gradients are masked by the binary matrix ``T_l``
   (paper's Eq. 5-6, ``W <- W - gamma * dE/dW * T``), done here in ``after_backward``.

So the training-time forward pass uses the *mixed* tensor: quantized values where frozen, the
latent full-precision values elsewhere. The backward pass is the true gradient of that mixed
tensor with respect to the free weights (the identity, no straight-through approximation); the
frozen entries get no gradient.

Choices (paper vs ternref)
--------------------------
* **Codebook fixed per layer.** ``n1`` is computed once, from the weights at the start of
  training (the paper computes it from the pretrained layer), and kept for every stage, so the
  levels of weights frozen early never change. ``to_ternary`` uses the same ``2^n1``.
* **Values pinned, not only gradients masked.** Adam (and SGD with momentum or weight decay)
  moves a parameter even when its gradient is zero, so after every optimizer step the frozen
  entries are written back to their quantized values (``on_step_end``). The paper's masked SGD
  update needs no such step; the result is the same.
* **Stage boundaries by epoch.** The paper re-trains each stage to convergence (its ImageNet
  runs use a fixed number of epochs per stage; the exact counts are not restated here [R]).
  ternref advances to the next portion every ``epochs_per_stage`` epochs: portion 1 is applied
  before the first epoch, portion ``k+1`` at the end of epoch ``k * epochs_per_stage``. After the
  last portion (100%) every quantized weight is fixed and only the other parameters (biases,
  full-precision layers) keep training.
* **Evaluation = deployment.** Eval-mode forward and ``to_ternary`` quantize *all* weights with
  the layer's codebook (what the deployed model would be once INQ finishes), so test accuracy
  reported before the last stage measures the fully quantized network, not the mixed one.
* **Partition ties** at the cut are broken by position (``ternref.projections.inq_partition``).
* Layers kept in full precision: the paper quantizes every layer of its ImageNet networks;
  ternref's default ``quantize_model`` keeps the first and last in full precision (pass
  ``keep_full_precision="none"`` for the paper's setting).
* Optimizer: the paper uses SGD with momentum 0.9 and weight decay 5e-4 on ImageNet, with a
  small learning rate for each re-training stage [R]; any ternref optimizer works.

References
----------
.. [1] A. Zhou, A. Yao, Y. Guo, L. Xu, Y. Chen, "Incremental Network Quantization: Towards
   Lossless CNNs with Low-Precision Weights", ICLR 2017, arXiv:1702.03044.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, quantized_layers, register
from ternref.projections.inq import PAPER_PORTIONS, inq_exponent, inq_partition
from ternref.ternary import Ternary
from ternref.train import Callback


def _fixed_codebook_codes(w: np.ndarray, alpha: float) -> np.ndarray:
    """INQ's ternary rule for the fixed level ``alpha = 2^n1``: sign(w) * 1[|w| >= alpha/2]."""
    return (np.sign(w) * (np.abs(w) >= alpha / 2)).astype(np.int8)


class INQQuantizer(WeightQuantizer):
    """Holds one layer's INQ state: codebook level ``alpha = 2^n1`` and the frozen mask.

    Attributes
    ----------
    alpha : float or None
        The layer's nonzero level ``2^n1``; set by :meth:`start` (``None`` before).
    frozen : ndarray of bool or None
        Weights already quantized (and fixed).
    frozen_values : ndarray or None
        Their quantized values (0 where not frozen).
    """

    def __init__(self):
        super().__init__()
        self.alpha: float | None = None
        self.frozen: np.ndarray | None = None
        self.frozen_values: np.ndarray | None = None

    # -- state ------------------------------------------------------------------------------
    def start(self, w: np.ndarray) -> None:
        """Fix the codebook from the current (pretrained) weights; nothing frozen yet."""
        s = float(np.max(np.abs(w)))
        self.alpha = math.ldexp(1.0, inq_exponent(s)) if s > 0 else 0.0
        self.frozen = np.zeros(w.shape, dtype=bool)
        self.frozen_values = np.zeros_like(w)

    def freeze_to(self, w: np.ndarray, fraction: float) -> None:
        """Weight partition + group-wise quantization up to the accumulated ``fraction``.

        ``w`` is modified in place: newly frozen entries take their quantized values.
        """
        if self.alpha is None:
            self.start(w)
        new = inq_partition(w, fraction, self.frozen) & ~self.frozen
        q = self.alpha * _fixed_codebook_codes(w[new], self.alpha)
        self.frozen_values[new] = q
        self.frozen |= new
        w[new] = q

    @property
    def frozen_fraction(self) -> float:
        return 0.0 if self.frozen is None else float(np.mean(self.frozen))

    # -- passes -----------------------------------------------------------------------------
    def project(self, w):
        """Inference form: every weight on the codebook ``{0, +-alpha}``."""
        if self.alpha is None:  # before training: the codebook of the current weights
            s = float(np.max(np.abs(w)))
            alpha = math.ldexp(1.0, inq_exponent(s)) if s > 0 else 0.0
        else:
            alpha = self.alpha
        return Ternary(_fixed_codebook_codes(w, alpha), np.asarray(alpha, dtype=w.dtype))

    def forward(self, w):
        self._w = w
        if not self.training:
            self.ternary = self.project(w)
            return self.ternary.dense()
        self.ternary = None
        if self.frozen is None:
            return w
        # Mixed tensor of the re-training phase: quantized where frozen, latent elsewhere.
        return np.where(self.frozen, self.frozen_values, w).astype(w.dtype, copy=False)

    def backward(self, dw_hat):
        # d(mixed)/dw is the identity on free entries and 0 on frozen ones (Eq. 6's mask T);
        # the mask itself is applied in INQCallback.after_backward so that it also covers
        # anything else added to the gradient.
        return dw_hat

    def extra_repr(self):
        return f"alpha={self.alpha}, frozen={self.frozen_fraction:.3f}"


class INQCallback(Callback):
    """Partition schedule, gradient masks and pinning of the frozen weights."""

    def __init__(self, model, portions, epochs_per_stage):
        self.layers = quantized_layers(model)
        self.portions = tuple(portions)
        self.epochs_per_stage = epochs_per_stage
        self.stage = -1

    def _advance_to(self, stage: int) -> None:
        while self.stage < stage:
            self.stage += 1
            for layer in self.layers:
                layer.weight_quantizer.freeze_to(layer.weight.data, self.portions[self.stage])

    def on_train_begin(self, model, optimizer):
        for layer in self.layers:
            if layer.weight_quantizer.alpha is None:
                layer.weight_quantizer.start(layer.weight.data)
        self._advance_to(0)

    def after_backward(self, model, optimizer):
        for layer in self.layers:
            layer.weight.grad[layer.weight_quantizer.frozen] = 0

    def on_step_end(self, model, optimizer):
        for layer in self.layers:
            q = layer.weight_quantizer
            layer.weight.data[q.frozen] = q.frozen_values[q.frozen]

    def on_epoch_end(self, model, epoch, record):
        record["inq_frozen"] = (
            float(np.mean([layer.weight_quantizer.frozen_fraction for layer in self.layers]))
            if self.layers
            else 0.0
        )
        stage = min(epoch // self.epochs_per_stage, len(self.portions) - 1)
        self._advance_to(stage)


@register
@dataclass
class INQ(Method):
    """Incremental Network Quantization (Zhou et al. 2017), ternary codebook {0, +-2^n1}.

    Parameters
    ----------
    portions : tuple of float
        Accumulated portions of quantized weights per stage, increasing, ending at 1.0
        (paper: 0.5, 0.75, 0.875, 1.0).
    epochs_per_stage : int
        Epochs of re-training between two partitions (the paper re-trains to convergence).
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="inq",
        paper="Zhou, Yao, Guo, Xu, Chen: Incremental Network Quantization",
        year=2017,
        arxiv="1702.03044",
        ternary="W",
        projection="power-of-two codebook {0, +-2^n1}, n1 = floor(log2(4 max|W| / 3))",
        estimator="none: exact gradient of the free weights, frozen ones masked",
        optimizer="incremental partition by magnitude + re-training of the free weights",
    )
    portions: tuple = PAPER_PORTIONS
    epochs_per_stage: int = 5

    def validate(self):
        _validate.integer(self.epochs_per_stage, "epochs_per_stage", low=1)
        try:
            portions = tuple(float(p) for p in self.portions)
        except TypeError:
            raise TypeError(
                f"portions must be a sequence of floats, got {_validate.describe(self.portions)}"
            ) from None
        if not portions:
            raise ValueError("portions must hold at least one accumulated portion, got ()")
        for p in portions:
            _validate.real_number(p, "portions entry", low=0.0, high=1.0, low_open=True)
        if any(b <= a for a, b in zip(portions, portions[1:])):
            raise ValueError(f"portions must be strictly increasing, got {portions}")
        if portions[-1] != 1.0:
            raise ValueError(
                f"portions must end at 1.0 (every weight quantized), got {portions[-1]}"
            )
        self.portions = portions

    def weight_quantizer(self, layer):
        return INQQuantizer()

    def callbacks(self, model):
        return [INQCallback(model, self.portions, self.epochs_per_stage)]
