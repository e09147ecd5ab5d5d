"""LAT — loss-aware ternarization (proximal Newton with Adam's diagonal Hessian).

Hou & Kwok, "Loss-aware Weight Quantization of Deep Networks", ICLR 2018, arXiv:1802.08635
(extends LAB, Hou, Yao, Kwok, ICLR 2017). Official code: github.com/houlu369/
Loss-aware-weight-quantization, ``FNN/laq.py`` and ``FNN/mnist.py``.

The step
--------
LAT minimizes the loss over ternary weights ``w_hat_l = alpha_l b_l`` by a proximal Newton step
with a diagonal Hessian estimate ``D``::

    min_w_hat  grad l(w_hat^{t-1})^T (w_hat - w_hat^{t-1})
               + 1/2 (w_hat - w_hat^{t-1})^T D^{t-1} (w_hat - w_hat^{t-1})
    s.t.       w_hat_l = alpha_l b_l,  alpha_l > 0,  b_l in {-1, 0, 1}^{n_l}

which is the ``D``-weighted projection of a full-precision iterate ``w``:
``min_{alpha, b} sum_i d_i (w_i - alpha b_i)^2`` (``ternref.projections.lat``). Following the
official code, the full-precision iterate is the latent weight updated by Adam with the gradient
taken *at the quantized weights* (``theano.grad(loss, wrt=Wb)``), clipped to [-1, 1] after each
update; the forward pass of the next batch projects it with the current ``D``:

* ``variant="exact"`` (LAT_e): the global optimum by sorting (top-|w| prefix maximizing
  ``(sum d a)^2 / sum d``; ternref's exact optimum, see ``ternref.projections.lat`` for how the
  official ``findalpha`` differs on corner cases);
* ``variant="approx"`` (LAT_a): alternate ``alpha = sum d|w||b| / sum d|b|`` and
  ``b = sign(w) 1[|w| > alpha/2]``, at most 10 times, *starting from the previous step's codes*
  (the official ``Wb``); the very first start is ``initialize_b``'s ``0.7 mean|W|`` threshold;
* ``two_scales=True`` (LAT2e / LAT2a): separate ``alpha_+`` over positives, ``alpha_-`` over
  negatives, each with threshold ``alpha_+-/2``.

The diagonal Hessian ``D`` is Adam's second moment
---------------------------------------------------
The official code keeps its own accumulator ``acc_W`` for each quantized weight,
``acc <- 0.999 acc + 0.001 g^2`` with ``g = dloss/dWb`` (``mnist.py``, "update 2nd momentum"),
starting at 0, and sets ``D = sqrt(acc) + 1e-8`` (``laq.py``). Its Adam (``optimizer.adam``)
updates ``W`` with *the same* gradient ``g``, beta2 = 0.999 and ``v_0 = 0``, and keeps ``v``
un-bias-corrected (the correction is folded into the step size). So Adam's raw ``v`` of ``W`` is
``acc_W``, term for term. In ternref the LAT quantizer's backward is the identity, so the latent
weight's gradient is ``dL/dw_hat`` and ``ternref.optim.Adam``'s raw state ``"v"`` is that same
recursion; the quantizer reads ``optimizer.state_for(weight)["v"]`` (a test checks ``v`` against
an independent accumulator). This holds when

* beta2 = 0.999 (ternref's default; other values give an EMA with that rate instead);
* Adam has no *coupled* L2 weight decay (it would add ``wd * w`` to ``g``; decoupled AdamW
  decay does not touch ``v``);
* nothing else adds to the weight gradient.

Timing matches too: Theano's forward pass of a batch reads ``acc`` before that batch's update;
ternref's forward reads ``v`` after the previous step. Before the first optimizer step Adam has
no ``"v"``: ternref uses ``D = 1``. The official ``acc`` is 0 there, so ``D = 1e-8 * 1``; since
``(alpha, b)`` are invariant to scaling ``D`` (methods.md P11), ``D = 1`` gives the same result.

The quantizer gets the optimizer from :class:`LATCallback`'s ``on_train_begin``; the callback
refuses an optimizer that is not ``ternref.optim.Adam`` (SGD has no ``v``) or that did not
create a ``"v"`` state for the weight after a step.

Paper recipe (MNIST, official ``mnist.py``; recorded, not imposed)
-----------------------------------------------------------------
MLP 784-3x2048-10 with BatchNorm after *every* layer (the output layer too) and *every* layer
ternarized; squared hinge loss on +-1 targets (``ternref.nn.SquaredHingeLoss``); Adam, batch
100, 50 epochs, learning rate 0.01 (argparse default) x0.1 at epochs 15 and 25
(``ternref.optim.MultiStepLR``); weights initialized ``U(+-sqrt(1.5 / (fan_in + fan_out)))``.
ternref's defaults differ: cross-entropy, the recipe's learning rate, ternref's initializer, and
``quantize_model`` keeps the first and last layers in full precision unless told
``keep_full_precision="none"``. Evaluation mode and ``to_ternary`` project with the current ``D``
and (LAT_a) the last training codes, without updating them, so both give the same ternary form.

References
----------
.. [1] L. Hou and J. T. Kwok, "Loss-aware Weight Quantization of Deep Networks", ICLR 2018,
   arXiv:1802.08635.
.. [2] L. Hou, Q. Yao and J. T. Kwok, "Loss-aware Binarization of Deep Networks", ICLR 2017,
   arXiv:1611.01600.
.. [3] D. P. Kingma and J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
   arXiv:1412.6980.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, quantized_layers, register
from ternref.optim import Adam
from ternref.projections.lat import lat as lat_projection
from ternref.train import Callback

#: Added to sqrt(v) in the diagonal Hessian (official laq.py).
D_EPS = 1e-8
#: LAT_a alternations per projection (official laq.py: theano.scan n_steps=10).
MAX_ALTERNATIONS = 10


class LATQuantizer(WeightQuantizer):
    """``w -> argmin_{alpha, b} sum d (w - alpha b)^2`` with ``d = sqrt(v) + 1e-8``; identity STE.

    ``second_moment`` is a callable returning Adam's raw ``v`` for this weight (or ``None``
    before the first step, meaning ``D = 1``); :class:`LATCallback` sets it.
    """

    def __init__(self, variant: str, two_scales: bool):
        super().__init__()
        self.variant = variant
        self.two_scales = two_scales
        self.second_moment = lambda: None
        self.prev_codes: np.ndarray | None = None  # LAT_a starts from these (official Wb)

    def hessian(self, w: np.ndarray) -> np.ndarray | None:
        """The diagonal ``D = sqrt(v) + 1e-8``, or ``None`` (all ones) before Adam's first step."""
        v = self.second_moment()
        if v is None:
            return None
        if v.shape != w.shape:
            raise ValueError(f"Adam's v has shape {v.shape}, the weight has shape {w.shape}")
        return np.sqrt(v) + D_EPS

    def project(self, w):
        return lat_projection(
            w,
            self.hessian(w),
            variant=self.variant,
            two_scales=self.two_scales,
            init_codes=self.prev_codes if self.variant == "approx" else None,
            max_iter=MAX_ALTERNATIONS,
        )

    def forward(self, w):
        w_hat = super().forward(w)
        if self.training:
            self.prev_codes = self.ternary.codes.copy()
        return w_hat

    def extra_repr(self):
        return f"variant={self.variant!r}, two_scales={self.two_scales}"


class LATCallback(Callback):
    """Connects each LAT quantizer to Adam's ``v`` and clips the latent weights after a step."""

    def __init__(self, model, clip: float | None):
        self.layers = quantized_layers(model)
        self.clip = clip

    def on_train_begin(self, model, optimizer):
        if not isinstance(optimizer, Adam):
            raise TypeError(
                f"LAT needs Adam: its diagonal Hessian is Adam's second moment v, and "
                f"{type(optimizer).__name__} keeps no 'v' state; use ternref.optim.Adam"
            )
        owned = {id(p) for p in optimizer.parameters()}
        for layer in self.layers:
            weight = layer.weight
            if id(weight) not in owned:
                raise ValueError(
                    "LAT reads Adam's v of each ternary weight, but the optimizer was not "
                    "given this layer's weight; pass model.parameters() to Adam"
                )
            layer.weight_quantizer.second_moment = lambda opt=optimizer, p=weight: opt.state_for(
                p
            ).get("v")

    def on_step_end(self, model, optimizer):
        for layer in self.layers:
            if layer.weight_quantizer.second_moment() is None:
                raise TypeError(
                    f"LAT needs Adam's second moment: optimizer {type(optimizer).__name__} "
                    f"made no 'v' state for the weight after a step"
                )
            if self.clip is not None:
                np.clip(layer.weight.data, -self.clip, self.clip, out=layer.weight.data)


@register
@dataclass
class LAT(Method):
    """Loss-aware ternarization (Hou & Kwok 2018): D-weighted projection, D = sqrt(v_Adam) + 1e-8.

    Parameters
    ----------
    variant : {"exact", "approx"}
        LAT_e (exact weighted projection) or LAT_a (alternation from the previous codes).
    two_scales : bool
        LAT2: separate scales for the positive and negative levels.
    clip : float or None
        Latent weights are clipped to ``[-clip, clip]`` after each step (official code: 1);
        ``None`` disables clipping.
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="lat",
        paper="Hou & Kwok: Loss-aware Weight Quantization of Deep Networks",
        year=2018,
        arxiv="1802.08635",
        ternary="W",
        projection="argmin sum d (w - alpha b)^2, d = sqrt(Adam v) + 1e-8 (exact or alternating)",
        estimator="identity STE (gradient at w_hat applied to w)",
        optimizer="Adam (required: its v is the diagonal Hessian); latent clip to [-1, 1]",
    )
    variant: str = "exact"
    two_scales: bool = False
    clip: float | None = 1.0

    def validate(self):
        _validate.one_of(self.variant, "variant", ("exact", "approx"))
        if not isinstance(self.two_scales, (bool, np.bool_)):
            raise TypeError(f"two_scales must be a bool, got {_validate.describe(self.two_scales)}")
        if self.clip is not None:
            _validate.real_number(self.clip, "clip", low=0.0, low_open=True)

    def weight_quantizer(self, layer):
        return LATQuantizer(self.variant, bool(self.two_scales))

    def callbacks(self, model):
        return [LATCallback(model, self.clip)]
