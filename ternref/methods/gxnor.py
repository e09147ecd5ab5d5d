"""GXNOR-Net — discrete state transition (no latent weights) and ternary activations.

Deng, Jiao, Pei, Wu, Li, "GXNOR-Net: Training deep neural networks with ternary weights and
activations without full-precision memory under a unified discretization framework",
Neural Networks 100:49-58, 2018, arXiv:1705.09283. Official Theano code:
github.com/AcrossV/Gated-XNOR (``New/mnist_GXNOR.py``).

**No latent weights.** The weight ``Parameter`` of a quantized layer *is* the discrete state: every
entry lies in Z_1 = {-H, 0, H} (H = 1) at all times, and the forward pass uses it directly::

    W_hat = W                                          (so dL/dW = dL/dW_hat exactly; no STE)

There is no scale factor; the BatchNorm after the layer absorbs it (``to_ternary``: codes = W / H,
alpha = H = 1).

**Discrete state transition (DST).** The optimizer (Adam in the official code) proposes its
ordinary step; a callback replaces it by a stochastic move on the grid
(``ternref.projections.gxnor_dst_update``)::

    after_backward:  W_before = W
    optimizer.step:  W = W_before + Delta               (Delta = Adam's proposed update)
    on_step_end:     kappa = sign(Delta) floor(|Delta| / L),  nu = Delta - kappa L
                     W = clip(W_before + (kappa + sign(Delta) Bernoulli(tanh(m |nu| / L))) L,
                              -H, H)                     (m = 3, L = 2H / 2^N = H for N = 1)

**Ternary activation** (replaces the ReLU in front of a quantized layer, ``replaces_relu``): the
paper's phi_r(x) = sign(x) * 1[|x| > r] with r = 1 (0 on |x| <= r;
``ternref.projections.gxnor_activation``; the official code's C rounding sends |x| = r to the
nonzero state instead, ``form="code"`` there, a difference only at |x| = r exactly), and GXNOR's
rectangular window derivative ``estimators.gxnor_window``: d phi / dx := 1/(2a)
1[r - a < |x| < r + a], a = 1/2 (height 1 on 0.5 < |x| < 1.5), zero inside the zero zone.

Paper recipe (MNIST script): Adam, lr 0.1 decayed exponentially to 1e-7 over 4000 epochs, batch
10000, BatchNorm (momentum 0.1, eps 1e-4) after every layer, squared hinge loss, all layers
ternary; CNN 32C5-MP2-64C5-MP2-512FC-10. ternref records the loss choice (``hinge_loss=True``
makes :meth:`GXNOR.loss` return the squared hinge loss; the default ``None`` lets ternref compare
methods under one loss) and, like the other methods, keeps the first and last layers in full
precision by default (``keep_full_precision="none"`` for the paper's setting).

Choices (paper vs code vs ternref):

* **Initialisation on the grid.** The code draws uniform weights in [-H, H] and discretizes them
  (``weight_tune``). ternref does the same when the method is attached: W = nearest state of
  U(-H, H) samples (``init="uniform"``: P(0) = 1/2, P(+-H) = 1/4), drawn from the method's
  ``rng``. ``init="project"`` instead projects the layer's existing weights onto the grid (useful
  for weights of magnitude ~H, e.g. pretrained and rescaled; PyTorch's default init, |w| <
  1/sqrt(fan_in), would project to all zeros).
* The code's random-restart search (``update_type`` after 15 epochs without improvement) is not
  implemented.
* The DST randomness comes from the method's ``rng`` (a ``numpy.random.Generator``; ``None``
  means ``np.random.default_rng(0)``), so runs are reproducible.
* Because the weights are discrete, weight decay in the optimizer acts only through the proposed
  step; do not use decoupled weight decay on these layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods import estimators
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, quantized_layers, register
from ternref.nn.module import Module
from ternref.packed.layers import expect_state_keys, register_inference_layer
from ternref.projections.gxnor import gxnor as gxnor_projection
from ternref.projections.gxnor import gxnor_activation, gxnor_dst_update
from ternref.train import Callback


class GXNORQuantizer(WeightQuantizer):
    """The weights are the states: W_hat = W (checked to be on {-H, 0, H}); identity backward."""

    def __init__(self, H: float = 1.0):
        super().__init__()
        self.H = H

    def project(self, w):
        t = gxnor_projection(w, H=self.H)
        if not np.array_equal(t.dense(), w):
            raise ValueError(
                "GXNOR weights must lie on the discrete space {-H, 0, H}; a weight was changed "
                "outside the DST callback (pass the callbacks of quantize_model to fit)"
            )
        return t

    def backward(self, dw_hat):
        # W_hat = W exactly: the true derivative, not a surrogate
        return dw_hat

    def extra_repr(self):
        return f"H={self.H}"


@register_inference_layer
class GXNORActivation(Module):
    """phi(x) = sign(x) 1[|x| > r] (paper); backward = the window 1/(2a) 1[r - a < |x| < r + a].

    Packed export: a registered inference layer (``ternref.packed``), state ``r`` and ``a``.
    """

    def __init__(self, r: float = 1.0, a: float = 0.5):
        super().__init__()
        self.r = r
        self.a = a
        self._x = None

    def forward(self, x):
        self._x = x
        return gxnor_activation(x, r=self.r)

    def backward(self, dy):
        if self._x is None:
            raise RuntimeError("GXNORActivation.backward called before forward")
        return estimators.gxnor_window(dy, self._x, r=self.r, a=self.a)

    def extra_repr(self):
        return f"r={self.r}, a={self.a}"

    def export_state(self):
        """``({"r": r, "a": a}, {})`` for ``ternref.packed`` (``a`` only shapes the backward)."""
        return {"r": float(self.r), "a": float(self.a)}, {}

    @classmethod
    def from_export_state(cls, params, arrays):
        """Rebuild from :meth:`export_state` output (checked: exactly ``r``, ``a`` > 0)."""
        expect_state_keys("GXNORActivation", params, arrays, ("r", "a"), ())
        r = _validate.real_number(params["r"], "r", low=0.0, low_open=True)
        a = _validate.real_number(params["a"], "a", low=0.0, low_open=True)
        return cls(r=r, a=a)


class DiscreteStateTransition(Callback):
    """Replace the optimizer's step on every GXNOR weight by a DST move on the grid."""

    def __init__(self, model: Module, rng: np.random.Generator, H: float, m: float, tau: str):
        self.layers = [
            layer
            for layer in quantized_layers(model)
            if isinstance(layer.weight_quantizer, GXNORQuantizer)
        ]
        self.rng = rng
        self.H = H
        self.m = m
        self.tau = tau
        self._before: list[np.ndarray] | None = None

    def after_backward(self, model, optimizer):
        self._before = [layer.weight.data.copy() for layer in self.layers]

    def on_step_end(self, model, optimizer):
        if self._before is None:
            raise RuntimeError("DST: on_step_end called without after_backward")
        for layer, before in zip(self.layers, self._before):
            delta = layer.weight.data - before  # the optimizer's proposed update
            layer.weight.data[...] = gxnor_dst_update(
                before, delta, self.rng, H=self.H, m=self.m, tau=self.tau
            )
        self._before = None


@register
@dataclass
class GXNOR(Method):
    """GXNOR-Net (Deng et al. 2018): discrete weights in {-1, 0, 1} moved by DST; ternary neurons.

    Parameters
    ----------
    H : float > 0
        Weight range; the states are {-H, 0, H} (paper: 1).
    m : float > 0
        Nonlinearity of the transition probability tanh(m |nu| / L) (code ``th``: 3).
    tau : {"tanh", "linear"}
        Transition probability; "linear" is the unbiased variant.
    r : float > 0
        Activation threshold (1).
    a : float > 0
        Half-width of the activation's derivative window (1/2).
    activations : bool
        Ternarize activations (the paper: yes).
    init : {"uniform", "project"}
        Grid initialisation of the weights (see the module docstring).
    hinge_loss : bool
        ``loss()`` returns the paper's squared hinge loss instead of ``None``.
    rng : numpy.random.Generator or None
        Randomness of the initialisation and of the transitions (``None``: seed 0).
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="gxnor",
        paper="Deng, Jiao, Pei, Wu, Li: GXNOR-Net (ternary weights and activations without "
        "full-precision memory)",
        year=2018,
        arxiv="1705.09283",
        ternary="W+A",
        projection="weights are states of {-1, 0, 1} (no latent weights, no scale)",
        estimator="exact dL/dW (W_hat = W); window 1[0.5 < |x| < 1.5] for activations",
        optimizer="Adam step replaced by discrete state transition, tanh(3|nu|/L)",
    )
    H: float = 1.0
    m: float = 3.0
    tau: str = "tanh"
    r: float = 1.0
    a: float = 0.5
    activations: bool = True
    init: str = "uniform"
    hinge_loss: bool = False
    rng: np.random.Generator | None = None

    replaces_relu: ClassVar[bool] = True

    def __post_init__(self):
        self._rng = None

    def validate(self):
        _validate.real_number(self.H, "H", low=0.0, low_open=True)
        _validate.real_number(self.m, "m", low=0.0, low_open=True)
        _validate.one_of(self.tau, "tau", ("tanh", "linear"))
        _validate.real_number(self.r, "r", low=0.0, low_open=True)
        _validate.real_number(self.a, "a", low=0.0, low_open=True)
        _validate.one_of(self.init, "init", ("uniform", "project"))
        for name in ("activations", "hinge_loss"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"{name} must be a bool, got {_validate.describe(getattr(self, name))}"
                )
        if self.rng is not None:
            _validate.generator(self.rng, "rng")

    def generator(self) -> np.random.Generator:
        """The method's random generator (created once; ``rng=None`` means seed 0)."""
        if self._rng is None:
            self._rng = self.rng if self.rng is not None else np.random.default_rng(0)
        return self._rng

    def weight_quantizer(self, layer):
        w = layer.weight.data
        if self.init == "uniform":
            w0 = self.generator().uniform(-self.H, self.H, size=w.shape).astype(w.dtype)
        else:
            w0 = w
        layer.weight.data[...] = gxnor_projection(w0, H=self.H).dense()
        return GXNORQuantizer(self.H)

    def activation_quantizer(self, layer):
        return GXNORActivation(self.r, self.a) if self.activations else None

    def callbacks(self, model):
        return [DiscreteStateTransition(model, self.generator(), self.H, self.m, self.tau)]

    def loss(self):
        if self.hinge_loss:
            from ternref.nn.losses import SquaredHingeLoss

            return SquaredHingeLoss()
        return None
