"""TernaryConnect — stochastic ternarization of the weights in training.

Lin, Courbariaux, Memisevic, Bengio, "Neural Networks with Few Multiplications", ICLR 2016,
arXiv:1510.03009. Official Theano code: github.com/hantek/BinaryConnect, branch ``ternary``
(``layer.py``, ``binarize_weights``; ``mnist.py``), adapted from BinaryConnect.

Forward in training (``ternref.projections.tc`` applied to w / H)::

    w_hat = H * sign(w) * Bernoulli(clip(|w| / H, 0, 1))      (paper §3.2, with H = 1)

so E[w_hat] = clip(w, -H, H). Backward: the clipped STE dL/dw := dL/dw_hat * 1[|w| <= H]
(``estimators.clipped_ste``), and after every optimizer step the latent weights are clipped to
[-H, H] (a callback). The official code applies the raw gradient dL/dw_hat and clips after the
update, which, as its comment says, is the same as clipping in the forward pass and
back-propagating through the clip: the two coincide because the weights never leave [-H, H].

The bound H (the ``bound`` hyper-parameter)
-------------------------------------------
The paper writes the rule with weights in [-1, 1] (H = 1). The official code uses a layer-wise
H = W0 = sqrt(6 / (fan_in + fan_out)) / 2, half of the Glorot-uniform bound it initialises with
(``self.high``), samples ``W0 * sign(W) * Bernoulli(clip(|W| / W0, 0, 1))`` and clips the
weights to [-W0, W0]. Its networks use BatchNorm after every layer, which makes the scale of
w_hat irrelevant, so both forms are the same network there. ternref's default MLP has no
BatchNorm, where w_hat in {-1, 0, 1} (H = 1) would multiply a 256-unit layer's output by ~16,
so the default is the code's ``bound="glorot"``; ``bound=1.0`` gives the paper's text. For a
conv weight the fans are ternref's (fan_out = out * kh * kw); the code divides fan_out by the
pooling area.

Test time (deterministic, ternref's choice)
-------------------------------------------
The paper and its MNIST script evaluate with the real-valued weights (``binary_test=False``
whenever ``stochastic=True``). A real-valued layer is not ternary and cannot be exported, so
ternref evaluates the *mode* of the training distribution,
``H * tc_deterministic(w / H) = H * sign(w) * 1[|w| > H/2]`` (ties at H/2 go to 0). That is
what the code's deterministic option computes, except that the code compares the unnormalised
W with +-0.5 although W lies in [-W0, W0] (which would give all zeros). Evaluation mode,
``to_ternary`` and export all use this form.

Not implemented: the paper's quantized back-propagation (the layer inputs in dL/dW = delta x^T
rounded to powers of two; ``ternref.projections.tc.power_of_two``) needs the layer's cached input
and is not a weight-quantizer hook; the squared hinge loss of the code is available as
``ternref.nn.SquaredHingeLoss``. The code's recipe: SGD lr 0.3 decayed to 0.01, batch 200,
BatchNorm, every layer (first and last included) ternary; ternref keeps the first and last layers
in full precision by default like the other methods (``keep_full_precision="none"`` for the
paper's setting).

Randomness: the method's ``seed`` seeds a ``numpy.random.SeedSequence``; each quantized layer gets
its own child generator, so the same seed reproduces the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, quantized_layers, register
from ternref.methods.estimators import clipped_ste
from ternref.nn.init import compute_fans
from ternref.projections import tc as tc_projection
from ternref.projections import tc_deterministic
from ternref.ternary import Ternary
from ternref.train import Callback


class TCQuantizer(WeightQuantizer):
    """Stochastic ternary weights in training, their mode in evaluation; clipped STE.

    Parameters
    ----------
    bound : float > 0
        H: w_hat in {-H, 0, +H} and latent weights live in [-H, H].
    rng : numpy.random.Generator
        Source of the Bernoulli draws.
    """

    def __init__(self, bound: float, rng: np.random.Generator):
        super().__init__()
        self.bound = _validate.real_number(bound, "bound", low=0.0, low_open=True)
        self.rng = _validate.generator(rng)

    def project(self, w):
        h = w.dtype.type(self.bound)
        if self.training:
            codes = tc_projection(w / h, self.rng).codes  # sign(w) * Bernoulli(|w|/H)
        else:
            codes = tc_deterministic(w / h).codes  # sign(w) * 1[|w| > H/2]
        return Ternary(codes, np.asarray(self.bound, dtype=w.dtype))

    def backward(self, dw_hat):
        if self._w is None:
            raise RuntimeError("TCQuantizer.backward called before forward")
        return clipped_ste(dw_hat, self._w, clip=self.bound)  # g * 1[|w| <= H]

    def extra_repr(self):
        return f"bound={self.bound:.4g}"


class ClipLatentWeights(Callback):
    """After each optimizer step, w <- clip(w, -H, H) for every TernaryConnect layer."""

    def __init__(self, layers):
        self.layers = list(layers)

    def on_step_end(self, model, optimizer):
        for layer in self.layers:
            h = layer.weight_quantizer.bound
            np.clip(layer.weight.data, -h, h, out=layer.weight.data)


@register
@dataclass
class TC(Method):
    """TernaryConnect (Lin et al. 2016): w_hat = H sign(w) Bernoulli(|w|/H), clipped STE.

    Parameters
    ----------
    bound : "glorot" or float > 0
        H. ``"glorot"`` = sqrt(6 / (fan_in + fan_out)) / 2 per layer (official code); ``1.0`` is
        the paper's text (which relies on BatchNorm).
    seed : int >= 0
        Seed of the Bernoulli draws (one child generator per layer).
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="tc",
        paper="Lin, Courbariaux, Memisevic, Bengio: Neural Networks with Few Multiplications",
        year=2016,
        arxiv="1510.03009",
        ternary="W",
        projection="H*sign(w)*Bernoulli(|w|/H) in training; H*sign(w)*1[|w|>H/2] at test",
        estimator="clipped STE 1[|w| <= H]",
        optimizer="SGD/Adam on latent weights, clipped to [-H, H] after each step",
    )
    bound: str | float = "glorot"
    seed: int = 0

    def validate(self):
        if isinstance(self.bound, str):
            _validate.one_of(self.bound, "bound", ("glorot",))
        else:
            _validate.real_number(self.bound, "bound", low=0.0, low_open=True)
        _validate.integer(self.seed, "seed", low=0)

    def layer_bound(self, layer) -> float:
        """H for ``layer``: the code's sqrt(6 / (fan_in + fan_out)) / 2, or the fixed bound."""
        if self.bound == "glorot":
            fan_in, fan_out = compute_fans(layer.weight.data.shape)
            return math.sqrt(6.0 / (fan_in + fan_out)) / 2.0
        return float(self.bound)

    def weight_quantizer(self, layer):
        if getattr(self, "_seeds", None) is None:
            self._seeds = np.random.SeedSequence(self.seed)
        (child,) = self._seeds.spawn(1)
        return TCQuantizer(self.layer_bound(layer), np.random.default_rng(child))

    def callbacks(self, model):
        layers = [
            layer
            for layer in quantized_layers(model)
            if isinstance(layer.weight_quantizer, TCQuantizer)
        ]
        return [ClipLatentWeights(layers)]
