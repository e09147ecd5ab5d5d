"""RTN — Reparameterized Ternary Network: x_hat = alpha * t + beta for weights and activations.

Li, Dong, Zhang, Bai, Chen, Wang, "RTN: Reparameterized Ternary Network", AAAI 2020,
arXiv:1912.02057.

RTN reparameterizes every quantized vector (weights *and* activations) as a fixed ternary code
scaled and shifted by full-precision, learnable parameters (``ternref.projections.rtn``)::

    u = (x - beta) / alpha,    t = sign(u) * 1[|u| > delta]    (delta = 1/2: nearest level)
    x_hat = alpha * t + beta              levels {beta - alpha, beta, beta + alpha}

which "decouples the range and magnitude from the direction": alpha and beta move and stretch
the three levels (and so the sparsity) during training, and they keep receiving gradient even
where the code's straight-through estimator saturates. Gradients, for a fixed code t::

    dL/d alpha = sum g * t          (d x_hat / d alpha = t)
    dL/d beta  = sum g              (d x_hat / d beta  = 1)

summed over the entries sharing the parameter (an output channel for weights, the whole tensor
for activations), and an STE for t:

* weights: identity STE, dL/dw = g (as TWN/TTQ; a clipped STE would freeze every latent weight
  beyond the outer levels);
* activations: the STE of ``u -> t`` clipped to the levels' range, 1[|u| <= 1]; with
  du/dx = 1/alpha and dx_hat/dt = alpha this gives dL/dx = g * 1[|x - beta| <= alpha].

``to_ternary`` returns the ``Ternary`` with ``alpha_pos = alpha`` and ``offset = beta`` (its
``dense()`` is ``alpha * t + beta``, what the forward pass uses). The hardware encoding of the
paper computes ``sum (alpha t_i + beta) x_i = alpha sum t_i x_i + beta sum x_i`` with bitwise
ops; that is an inference-kernel matter, not part of training.

Assumptions (the paper's body could not be checked; methods.md marks the details [R]):

* **Granularity.** Weights: one (alpha, beta) per output channel by default (``granularity=
  "tensor"`` for one per layer); activations: one (alpha, beta) per layer (a per-feature offset
  would break the ``beta sum x_i`` factorisation of the encoding).
* **The code t** is the projection module's nearest-level rule on the reparameterized input,
  ``t = T((x - beta) / alpha)``. Whether the paper takes it on ``(x - beta) / alpha`` or on ``x``
  itself is not settled: the method section and any official code were out of reach, and the
  abstract supports both readings (``ternref.projections.rtn`` lists what was checked).
* **Initialisation.** Weights: alpha = 1.4 mean|w| per channel and beta = 0, so that the initial
  threshold alpha/2 is TWN's 0.7 mean|w|. Activations: ``act_alpha = 1, act_beta = 1``: the
  levels {0, 1, 2} suit the non-negative input the activation quantizer sees after a ReLU.
* **Placement.** The activation quantizer goes *after* the ReLU in front of each quantized layer
  (``replaces_relu = False``): RTN's learnable offset is precisely what lets three levels cover a
  one-sided (post-ReLU) range instead of wasting the negative level ("squashing" issue).
* alpha is kept >= ``min_alpha`` (1e-6) after every step by a callback, since the projection
  needs alpha > 0.
* Full-precision layers: first and last (``quantize_model``'s default), as is usual for
  ResNet-18 on ImageNet in the paper's comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, register
from ternref.nn.module import Module, Parameter
from ternref.packed.layers import expect_state_keys, register_inference_layer
from ternref.projections.rtn import rtn as rtn_projection
from ternref.projections.rtn import rtn_codes
from ternref.train import Callback

MIN_ALPHA = 1e-6


def _expand(p: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A scalar or per-channel (out,) parameter as an array broadcastable against ``like``."""
    return p if p.ndim == 0 else p.reshape((p.shape[0],) + (1,) * (like.ndim - 1))


def _reduce(x: np.ndarray, param: np.ndarray) -> np.ndarray:
    """Sum ``x`` over the entries sharing one value of ``param`` (all, or all but axis 0)."""
    if param.ndim == 0:
        return np.asarray(np.sum(x, dtype=np.float64))
    return np.sum(x, axis=tuple(range(1, x.ndim)), dtype=np.float64)


class RTNQuantizer(WeightQuantizer):
    """w -> alpha * t + beta with learnable ``alpha``, ``beta``; identity STE for t.

    Parameters
    ----------
    alpha, beta : ndarray, shape () or (out,)
        Initial scale (> 0) and offset.
    delta : float
        Threshold on (w - beta) / alpha (1/2: nearest level).
    """

    def __init__(self, alpha: np.ndarray, beta: np.ndarray, delta: float = 0.5):
        super().__init__()
        self.alpha = Parameter(np.array(alpha, copy=True), "alpha")
        self.beta = Parameter(np.array(beta, copy=True), "beta")
        self.delta = delta

    def project(self, w):
        alpha = np.maximum(self.alpha.data, MIN_ALPHA).astype(w.dtype)
        return rtn_projection(w, alpha, self.beta.data.astype(w.dtype), self.delta)

    def backward(self, dw_hat):
        if self.ternary is None:
            raise RuntimeError("RTNQuantizer.backward called before forward")
        t = self.ternary.codes
        # d w_hat / d alpha = t, d w_hat / d beta = 1, summed over the entries sharing them
        if self.alpha.requires_grad:
            self.alpha.grad += _reduce(dw_hat * t, self.alpha.data).astype(self.alpha.grad.dtype)
        if self.beta.requires_grad:
            self.beta.grad += _reduce(dw_hat, self.beta.data).astype(self.beta.grad.dtype)
        return dw_hat  # identity STE for t

    def extra_repr(self):
        return f"granularity={'tensor' if self.alpha.data.ndim == 0 else 'channel'}"


@register_inference_layer
class RTNActivation(Module):
    """x -> alpha * t + beta with learnable per-layer ``alpha``, ``beta``; clipped STE for t.

    Packed export: a registered inference layer (``ternref.packed``): params ``delta``, arrays
    ``alpha`` and ``beta`` (0-d, their trained dtype and values, so the rebuilt layer computes
    the same levels).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, delta: float = 0.5, dtype=np.float32):
        super().__init__()
        self.alpha = Parameter(np.asarray(alpha, dtype=dtype), "alpha")
        self.beta = Parameter(np.asarray(beta, dtype=dtype), "beta")
        self.delta = delta
        self._cache = None

    def forward(self, x):
        alpha = max(float(self.alpha.data), MIN_ALPHA)
        beta = float(self.beta.data)
        t = rtn_codes(x, alpha, beta, self.delta)
        self._cache = (x, t, alpha, beta)
        return (alpha * t + beta).astype(x.dtype)

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("RTNActivation.backward called before forward")
        x, t, alpha, beta = self._cache
        if self.alpha.requires_grad:
            self.alpha.grad += np.sum(dy * t, dtype=np.float64)
        if self.beta.requires_grad:
            self.beta.grad += np.sum(dy, dtype=np.float64)
        # STE of u -> t clipped to |u| <= 1, times du/dx = 1/alpha and dx_hat/dt = alpha
        return dy * (np.abs(x - beta) <= alpha)

    def extra_repr(self):
        return f"alpha={float(self.alpha.data):.4g}, beta={float(self.beta.data):.4g}"

    def export_state(self):
        """``({"delta": delta}, {"alpha": 0-d, "beta": 0-d})`` for ``ternref.packed``."""
        return {"delta": float(self.delta)}, {
            "alpha": np.array(self.alpha.data),
            "beta": np.array(self.beta.data),
        }

    @classmethod
    def from_export_state(cls, params, arrays):
        """Rebuild from :meth:`export_state` output (checked: ``delta`` in [0, 1); ``alpha``,
        ``beta`` finite 0-d float arrays of one dtype, ``alpha`` > 0)."""
        expect_state_keys("RTNActivation", params, arrays, ("delta",), ("alpha", "beta"))
        delta = _validate.real_number(params["delta"], "delta", low=0.0, high=1.0, high_open=True)
        alpha = _validate.float_array(arrays["alpha"], "alpha", ndim=0)
        beta = _validate.float_array(arrays["beta"], "beta", ndim=0)
        if alpha.dtype != beta.dtype:
            raise ValueError(f"alpha and beta must share a dtype, got {alpha.dtype}, {beta.dtype}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        return cls(alpha=alpha, beta=beta, delta=delta, dtype=alpha.dtype)


class ClampAlpha(Callback):
    """After each optimizer step keep every RTN alpha >= ``MIN_ALPHA`` (alpha is a magnitude)."""

    def __init__(self, model: Module):
        self.params = [
            m.alpha for m in model.modules() if isinstance(m, (RTNQuantizer, RTNActivation))
        ]

    def on_step_end(self, model, optimizer):
        for p in self.params:
            np.maximum(p.data, MIN_ALPHA, out=p.data)


@register
@dataclass
class RTN(Method):
    """Reparameterized Ternary Network (Li et al. 2020): x_hat = alpha t + beta, W and A.

    Parameters
    ----------
    granularity : {"channel", "tensor"}
        Weight (alpha, beta) per output channel (default, assumption) or per layer.
    delta : float in [0, 1)
        Threshold on the reparameterized input (1/2: nearest of the three levels).
    alpha_init_factor : float > 0
        Initial weight alpha = factor * mean|w| (1.4: threshold alpha/2 = TWN's 0.7 mean|w|).
    activations : bool
        Ternarize the input of each quantized layer (the paper: yes).
    act_alpha, act_beta : float
        Initial activation scale (> 0) and offset (levels {beta - alpha, beta, beta + alpha}).
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="rtn",
        paper="Li, Dong, Zhang, Bai, Chen, Wang: RTN: Reparameterized Ternary Network",
        year=2020,
        arxiv="1912.02057",
        ternary="W+A",
        projection="alpha * t + beta, t = nearest-level code of (x - beta)/alpha",
        estimator="d/d alpha = t, d/d beta = 1; identity STE (W), clipped STE (A)",
        optimizer="SGD/Adam on latent weights, alpha and beta",
    )
    granularity: str = "channel"
    delta: float = 0.5
    alpha_init_factor: float = 1.4
    activations: bool = True
    act_alpha: float = 1.0
    act_beta: float = 1.0

    def validate(self):
        _validate.one_of(self.granularity, "granularity", ("channel", "tensor"))
        _validate.real_number(self.delta, "delta", low=0.0, high=1.0, high_open=True)
        _validate.real_number(self.alpha_init_factor, "alpha_init_factor", low=0.0, low_open=True)
        if not isinstance(self.activations, bool):
            raise TypeError(
                f"activations must be a bool, got {_validate.describe(self.activations)}"
            )
        _validate.real_number(self.act_alpha, "act_alpha", low=0.0, low_open=True)
        _validate.real_number(self.act_beta, "act_beta")

    def weight_quantizer(self, layer):
        w = layer.weight.data
        if self.granularity == "channel":
            mean_abs = np.mean(np.abs(w).reshape(w.shape[0], -1), axis=1)
        else:
            mean_abs = np.asarray(np.mean(np.abs(w)))
        alpha = np.maximum(self.alpha_init_factor * mean_abs, MIN_ALPHA).astype(w.dtype)
        return RTNQuantizer(alpha, np.zeros_like(alpha), self.delta)

    def activation_quantizer(self, layer):
        if not self.activations:
            return None
        return RTNActivation(
            self.act_alpha, self.act_beta, self.delta, dtype=layer.weight.data.dtype
        )

    def callbacks(self, model):
        return [ClampAlpha(model)]
