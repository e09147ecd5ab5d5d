"""INQ — Incremental Network Quantization, ternary (2-bit) case.

Zhou, Yao, Guo, Xu, Chen, "Incremental Network Quantization: Towards Lossless CNNs with
Low-Precision Weights", ICLR 2017, arXiv:1702.03044. Official code: the modified Caffe of
AojunZhou/Incremental-Network-Quantization (read at commit c7f6a60: ``src/caffe/blob.cpp``
``FromProto``, ``src/caffe/net.cpp`` ``CopyTrainedLayersFrom``, ``src/caffe/solvers/
sgd_solver.cpp`` ``ComputeUpdateValue``, ``src/caffe/util/power2.cpp``, ``run.py``).

INQ does not train through a quantizer with a surrogate gradient. It repeats three operations on
a (pretrained) network until every weight is quantized (paper, section 2.2-2.3):

1. **weight partition**: among the weights not yet quantized, the largest-magnitude ones join
   the quantized set, so that the *accumulated* portion of quantized weights reaches the next
   entry of ``portions``. For 2-bit (ternary) weights the paper's schedule has ten stages,
   0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 1 (``TERNARY_PORTIONS``, the default); its
   5-bit schedule 0.5, 0.75, 0.875, 1 is ``FIVE_BIT_PORTIONS`` (``ternref.projections.inq``
   says where each comes from);
2. **group-wise quantization**: the newly chosen weights are replaced by their value in the
   layer's codebook ``P = {-2^n1, 0, +2^n1}`` (ternary: ``b = 2`` bits including zero,
   ``n1 = floor(log2(4 s / 3))``, ``s = max|W|`` of the layer's weights, biases excluded;
   ``ternref.projections.inq``), which is the rule ``w -> 2^n1 sign(w) 1[|w| >= 2^(n1-1)]``
   (paper's Eq. 4; ties at the threshold go to the nonzero level, as the paper's ``>=``);
3. **re-training**: the remaining full-precision weights are trained with the ordinary loss while
   the quantized ones are held fixed: their gradients are masked by the binary matrix ``T_l``
   (paper's Eq. 5-6, ``W <- W - gamma * dE/dW * T``), done here in ``after_backward``.

So the training-time forward pass uses the *mixed* tensor: quantized values where frozen, the
latent full-precision values elsewhere. The backward pass is the true gradient of that mixed
tensor with respect to the free weights (the identity, no straight-through approximation); the
frozen entries get no gradient.

Paper vs official code: which weights stay quantized
----------------------------------------------------
The paper's Algorithm 1 grows the quantized group ``A^(1)`` monotonically: once quantized, a
weight stays fixed to the end, and the masks are nested (``partition="nested"``, the default).
The official Caffe code does something else. It runs each stage as a separate Caffe training
job that loads the previous stage's model; loading (``Blob::FromProto``) *resets every mask to
1*, recomputes ``n1`` from the current ``max|W|``, *re-ranks all weights of the layer by |w|*
(the already quantized ones included, at their quantized values) and quantizes and masks the top
portion. A weight quantized to ``+-2^n1`` ranks near the top and is chosen again, but a weight
quantized to **0** sorts to the bottom and becomes **trainable again** until a later portion
reaches it. (The code is written for 5 bits, where few of the largest weights round to 0; with
the ternary codebook every chosen weight below ``2^(n1-1)`` rounds to 0, so the difference is
large.) ``partition="rerank"`` reproduces this: at each stage the frozen set is rebuilt from
scratch by ``inq_partition`` over all weights, with ``n1`` recomputed.

ternref follows the paper by default because the paper defines the method and its schedule:
with re-ranking, the fraction of weights actually held fixed after stage k is *not* the
accumulated portion the schedule names (the re-freed zeros are missing), the frozen weights'
levels can change between stages (a new ``n1``), and the quantized group is not the monotone
``A^(1)`` of Algorithm 1. The official behaviour is one keyword away.

Other differences with the official code (not reproduced):

* the Caffe solver restarts each stage with the base learning rate and its step policy (AlexNet:
  SGD, lr 0.003, x0.2 every 15,000 iterations, 63,000 iterations per stage, momentum 0.9,
  weight decay 5e-4; the last stage runs 1 iteration), where ternref runs one schedule across
  all stages;
* the mask multiplies the update after the momentum step (only in the GPU path of
  ``ComputeUpdateValue``); ternref masks the gradient and writes frozen values back after the
  step (below), which holds them fixed under any optimizer;
* its cut takes every weight with ``|w| >=`` a sorted value, ties included (about one weight more
  than ``ceil(portion * n)``); ternref takes exactly ``ceil(portion * n)``, ties by position;
* its nearest-level search sends a tie at ``2^(n1-1)`` to 0; ternref keeps the paper's ``>=``.

Choices (paper vs ternref)
--------------------------
* **Codebook fixed per layer** (``partition="nested"``). ``n1`` is computed once, from the
  weights at the start of training (the paper computes it from the pretrained layer), and kept
  for every stage, so the levels of weights frozen early never change. ``to_ternary`` uses the
  same ``2^n1``.
* **Values pinned, not only gradients masked.** Adam (and SGD with momentum or weight decay)
  moves a parameter even when its gradient is zero, so after every optimizer step the frozen
  entries are written back to their quantized values (``on_step_end``). The paper's masked SGD
  update needs no such step; the result is the same.
* **Stages over the run.** The paper re-trains each stage to convergence (about 30 epochs in
  all for its ternary ImageNet runs). By default (``epochs_per_stage=None``) ternref spreads the
  stages evenly over the optimizer steps of the run ``fit`` is about to do (it learns the
  length from ``Callback.on_fit_begin``): with ``K`` portions and ``T`` steps, portion 1 is
  applied before the first step and portion ``k+1`` after step ``round_down(k T / (K - 1))``, so
  the last portion (100%) is applied after the last step, as the official code's final
  one-iteration stage does, and a run of any length passes through every stage (several
  stages fall on one step when ``T < K - 1``). ``epochs_per_stage=e`` instead advances one
  portion at the end of every ``e`` epochs (portion ``k+1`` at the end of epoch ``k e``); after
  the last portion only the other parameters (biases, full-precision layers) keep training.
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

import bisect
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, quantized_layers, register
from ternref.projections.inq import TERNARY_PORTIONS, inq_exponent, inq_partition
from ternref.ternary import Ternary
from ternref.train import Callback

#: How the frozen set evolves between stages: the paper's nested masks or the official code's
#: re-ranking of every weight at each stage.
PARTITIONS = ("nested", "rerank")


def _fixed_codebook_codes(w: np.ndarray, alpha: float) -> np.ndarray:
    """INQ's ternary rule for the fixed level ``alpha = 2^n1``: sign(w) * 1[|w| >= alpha/2]."""
    return (np.sign(w) * (np.abs(w) >= alpha / 2)).astype(np.int8)


def _codebook_level(w: np.ndarray) -> float:
    """``2^n1`` with ``n1 = floor(log2(4 max|w| / 3))``; 0 for an all-zero layer."""
    s = float(np.max(np.abs(w)))
    return math.ldexp(1.0, inq_exponent(s)) if s > 0 else 0.0


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
        self.alpha = _codebook_level(w)
        self.frozen = np.zeros(w.shape, dtype=bool)
        self.frozen_values = np.zeros_like(w)

    def freeze_to(self, w: np.ndarray, fraction: float, rerank: bool = False) -> None:
        """Weight partition + group-wise quantization up to the accumulated ``fraction``.

        ``w`` is modified in place: newly frozen entries take their quantized values. With
        ``rerank`` (the official Caffe code) every mask is reset first and ``n1`` recomputed
        from the current ``w``, so all weights are ranked again by ``|w|``, the frozen ones at
        their quantized values; without it (the paper) the frozen set only grows.
        """
        if self.alpha is None or rerank:
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
        # before training: the codebook of the current weights
        alpha = _codebook_level(w) if self.alpha is None else self.alpha
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
    """Partition schedule, gradient masks and pinning of the frozen weights.

    ``epochs_per_stage=None`` spreads the stages over the optimizer steps of the run (its length
    comes from :meth:`on_fit_begin`); an integer advances one stage every that many epochs.
    """

    def __init__(self, model, portions, epochs_per_stage=None, partition="nested"):
        self.layers = quantized_layers(model)
        self.portions = tuple(portions)
        self.epochs_per_stage = epochs_per_stage
        self.rerank = partition == "rerank"
        self.stage = -1
        self.steps = 0
        self.stage_starts: list[int] | None = None  # optimizer steps before each stage

    def _advance_to(self, stage: int) -> None:
        while self.stage < stage:
            self.stage += 1
            for layer in self.layers:
                layer.weight_quantizer.freeze_to(
                    layer.weight.data, self.portions[self.stage], rerank=self.rerank
                )

    def on_fit_begin(self, epochs, steps_per_epoch):
        if self.epochs_per_stage is None:
            total, k = epochs * steps_per_epoch, len(self.portions)
            # stage i starts after i T / (K - 1) steps: the first before training, the last
            # (every weight quantized) after the last step
            self.stage_starts = [0] if k == 1 else [i * total // (k - 1) for i in range(k)]

    def on_train_begin(self, model, optimizer):
        if self.epochs_per_stage is None and self.stage_starts is None:
            raise RuntimeError(
                "INQ with epochs_per_stage=None spreads its stages over the run and needs its "
                "length: fit() gives it through on_fit_begin(epochs, steps_per_epoch); a "
                "hand-written loop must call that first, or set epochs_per_stage"
            )
        for layer in self.layers:
            if layer.weight_quantizer.alpha is None:
                layer.weight_quantizer.start(layer.weight.data)
        self.steps = 0
        self._advance_to(0)

    def after_backward(self, model, optimizer):
        for layer in self.layers:
            layer.weight.grad[layer.weight_quantizer.frozen] = 0

    def on_step_end(self, model, optimizer):
        for layer in self.layers:
            q = layer.weight_quantizer
            layer.weight.data[q.frozen] = q.frozen_values[q.frozen]
        if self.stage_starts is not None:
            self.steps += 1
            # the last stage whose start has been reached
            self._advance_to(bisect.bisect_right(self.stage_starts, self.steps) - 1)

    def on_epoch_end(self, model, epoch, record):
        if self.epochs_per_stage is not None:
            stage = min(epoch // self.epochs_per_stage, len(self.portions) - 1)
            self._advance_to(stage)
        record["inq_stage"] = self.stage + 1  # stages done so far, 1-based
        record["inq_frozen"] = (
            float(np.mean([layer.weight_quantizer.frozen_fraction for layer in self.layers]))
            if self.layers
            else 0.0
        )


@register
@dataclass
class INQ(Method):
    """Incremental Network Quantization (Zhou et al. 2017), ternary codebook {0, +-2^n1}.

    Parameters
    ----------
    portions : tuple of float
        Accumulated portions of quantized weights per stage, increasing, ending at 1.0.
        Default: the paper's ternary (2-bit) schedule ``TERNARY_PORTIONS`` = 0.2, 0.4, 0.6,
        0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 1; ``FIVE_BIT_PORTIONS`` = 0.5, 0.75, 0.875, 1 is the
        paper's 5-bit schedule (both in ``ternref.projections.inq``).
    epochs_per_stage : int or None
        ``None`` (default): the stages are spread evenly over the optimizer steps of the run, so
        any run length passes through all of them. An integer: one stage every that many
        epochs (the paper re-trains each stage to convergence).
    partition : {"nested", "rerank"}
        ``"nested"`` (default, the paper): once quantized, a weight stays fixed. ``"rerank"``
        (the official Caffe code): at each stage every mask is reset, ``n1`` recomputed and all
        weights ranked again by ``|w|``, so weights quantized to 0 become trainable again.
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="inq",
        paper="Zhou, Yao, Guo, Xu, Chen: Incremental Network Quantization",
        year=2017,
        arxiv="1702.03044",
        ternary="W",
        projection="power-of-two codebook {0, +-2^n1}, n1 = floor(log2(4 max|W| / 3))",
        estimator="none: exact gradient of the free weights, frozen ones masked",
        optimizer="incremental partition by magnitude (ternary schedule, 10 stages) + "
        "re-training of the free weights",
    )
    portions: tuple = TERNARY_PORTIONS
    epochs_per_stage: int | None = None
    partition: str = "nested"

    def validate(self):
        if self.epochs_per_stage is not None:
            _validate.integer(self.epochs_per_stage, "epochs_per_stage", low=1)
        _validate.one_of(self.partition, "partition", PARTITIONS)
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
        return [INQCallback(model, self.portions, self.epochs_per_stage, self.partition)]
