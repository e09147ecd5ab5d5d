"""ADMM ternarization — "Extremely Low Bit Neural Network: Squeeze the Last Bit Out with ADMM".

Leng, Dou, Li, Zhu, Jin, AAAI 2018, arXiv:1707.09870. No official code was released; the
formulation below is the paper's (methods.md section 2.7; items marked [R] are recalled from the
paper, not re-checked).

Problem and iterations
----------------------
Training is the constrained problem ``min_W f(W) s.t. W in C``, ``C = C_1 x ... x C_L``,
``C_l = {-alpha_l, 0, +alpha_l}^{n_l}`` with a free scale ``alpha_l > 0`` per layer. With a copy
``G`` of the weights and the indicator ``I_C``, ADMM splits it as
``min f(W) + I_C(G) s.t. W = G`` and works on the (scaled) augmented Lagrangian::

    L_rho(W, G, mu) = f(W) + I_C(G) + (rho/2) ||W - G + mu||^2 - (rho/2) ||mu||^2

iterating (paper, section "Decouple with ADMM")::

    W^{k+1}  = argmin_W f(W) + (rho/2) ||W - G^k + mu^k||^2       (W-step, approximate)
    G^{k+1}  = Pi_C(W^{k+1} + mu^k)                                 (G-step, projection)
    mu^{k+1} = mu^k + W^{k+1} - G^{k+1}                             (dual step)

* **W-step.** Solved approximately by the ordinary optimizer: the penalty's gradient
  ``rho (W - G + mu)`` is added to the loss gradient in ``after_backward`` and the optimizer
  takes ``admm_interval`` steps before the next G- and dual step. The training forward pass
  therefore uses the **full-precision W** (no surrogate gradient: the quantizer is the identity
  in training, its backward the exact derivative).
* **G-step.** ``Pi_C`` with unknown ``alpha``: ``min_{alpha, Q} ||V - alpha Q||^2``,
  ``Q in {-1, 0, 1}^n``, solved in the paper by alternating ``alpha = V^T Q / Q^T Q`` and
  ``Q = round-to-nearest-level(V / alpha)`` (threshold ``alpha/2``) [R]; that is LAT_a with
  ``D = I``. ternref uses ``ternref.projections.admm`` (see its docstring for how it is solved).
* **Dual step** exactly as above, after every G-step.

Choices (paper unknown or silent, marked)
-----------------------------------------
* ``admm_interval``: how many optimizer steps form one approximate W-step. The paper does not
  give the number in what was checked [R]; ternref's default is 20 steps (about half an epoch
  of the digits set at batch 32; with growth 1.3, 5 steps left a larger residual than 20).
* ``rho`` and its growth: the paper reports ``rho`` in about ``1e-4 .. 1e-3`` for ImageNet
  networks initialized from pretrained weights [R]. ``rho`` is multiplied by ``rho_growth`` at
  the end of every epoch (an increasing penalty makes ``W`` and ``G`` meet; the exact schedule of
  the paper is not known here [R]). When ``rho`` changes, the scaled dual is rescaled,
  ``mu <- mu * rho_old / rho_new``, so that the unscaled multiplier ``rho * mu`` is unchanged
  (Boyd et al. 2011, section 3.4.1). ternref's defaults (``rho = 1e-2``, ``rho_growth = 1.6``)
  were chosen on from-scratch digits runs (MLP, Adam lr 1e-3, cosine, 30 epochs, batch 32):
  the relative residual ``||W - G|| / ||W||`` (recorded each epoch as ``admm_residual``) falls
  from 0.45 to below 1e-4, i.e. ``W`` itself becomes ternary; with a constant ``rho = 1e-2`` it
  stays near 0.4, with growth 1.3 near 0.28. With Adam the size of ``rho`` only sets the balance
  between loss and penalty; with plain SGD the penalty is a quadratic of curvature ``rho``, so
  keep ``lr * rho < 2`` (use a smaller ``rho_growth`` or fewer epochs).
* Initialization: ``G^0 = Pi_C(W^0)``, ``mu^0 = 0`` at the start of training (the paper starts
  from a pretrained full-precision network).
* **Evaluation and export use G**, the ADMM iterate that lies in ``C`` (what the paper deploys):
  evaluation-mode forward and ``to_ternary`` return the last ``G`` whatever array is passed in
  (``Pi_C(w)`` before the first G-step). At convergence ``W = G``.
* The extragradient W-step variant of the paper is not implemented.
* Layers: the paper quantizes all layers of its ImageNet networks [R]; ternref's
  ``quantize_model`` keeps the first and last in full precision by default.

References
----------
.. [1] C. Leng, Z. Dou, H. Li, S. Zhu, R. Jin, "Extremely Low Bit Neural Network: Squeeze the
   Last Bit Out with ADMM", AAAI 2018, arXiv:1707.09870.
.. [2] S. Boyd, N. Parikh, E. Chu, B. Peleato, J. Eckstein, "Distributed Optimization and
   Statistical Learning via the Alternating Direction Method of Multipliers", Foundations and
   Trends in Machine Learning 3(1), 2011.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, quantized_layers, register
from ternref.projections.admm import admm as admm_projection
from ternref.ternary import Ternary
from ternref.train import Callback


class ADMMQuantizer(WeightQuantizer):
    """Holds ``G`` (a ``Ternary`` in ``C``) and the scaled dual ``mu`` of one layer.

    Identity in training (the W-step trains full-precision W); ``G`` in evaluation.
    """

    def __init__(self):
        super().__init__()
        self.G: Ternary | None = None
        self.mu: np.ndarray | None = None

    def project(self, w):
        return self.G if self.G is not None else admm_projection(w)

    def forward(self, w):
        self._w = w
        if self.training:
            self.ternary = None
            return w
        self.ternary = self.project(w)
        return self.ternary.dense()

    # -- ADMM steps on this layer -----------------------------------------------------------
    def start(self, w: np.ndarray) -> None:
        """G^0 = Pi_C(W^0), mu^0 = 0."""
        self.G = admm_projection(w)
        self.mu = np.zeros_like(w)

    def penalty_gradient(self, w: np.ndarray, rho: float) -> np.ndarray:
        """d/dW (rho/2) ||W - G + mu||^2 = rho (W - G + mu)."""
        return rho * (w - self.G.dense() + self.mu)

    def g_and_dual_step(self, w: np.ndarray) -> None:
        """G <- Pi_C(W + mu); mu <- mu + W - G."""
        self.G = admm_projection(w + self.mu)
        self.mu += w - self.G.dense()

    def extra_repr(self):
        return f"started={self.G is not None}"


class ADMMCallback(Callback):
    """Penalty gradient, G- and dual steps every ``admm_interval`` steps, rho growth per epoch."""

    def __init__(self, model, rho, rho_growth, admm_interval):
        self.layers = quantized_layers(model)
        self.rho = rho
        self.rho_growth = rho_growth
        self.admm_interval = admm_interval
        self.steps = 0

    def on_train_begin(self, model, optimizer):
        for layer in self.layers:
            if layer.weight_quantizer.G is None:
                layer.weight_quantizer.start(layer.weight.data)

    def after_backward(self, model, optimizer):
        for layer in self.layers:
            q = layer.weight_quantizer
            layer.weight.grad += q.penalty_gradient(layer.weight.data, self.rho).astype(
                layer.weight.grad.dtype, copy=False
            )

    def on_step_end(self, model, optimizer):
        self.steps += 1
        if self.steps % self.admm_interval == 0:
            for layer in self.layers:
                layer.weight_quantizer.g_and_dual_step(layer.weight.data)

    def on_epoch_end(self, model, epoch, record):
        residual = [
            float(np.linalg.norm(layer.weight.data - layer.weight_quantizer.G.dense()))
            / max(float(np.linalg.norm(layer.weight.data)), 1e-12)
            for layer in self.layers
        ]
        record["admm_rho"] = self.rho
        record["admm_residual"] = float(np.mean(residual)) if residual else 0.0
        new_rho = self.rho * self.rho_growth
        for layer in self.layers:
            # keep the unscaled multiplier rho * mu fixed when rho changes (Boyd et al. 3.4.1)
            layer.weight_quantizer.mu *= self.rho / new_rho
        self.rho = new_rho


@register
@dataclass
class ADMM(Method):
    """ADMM ternarization (Leng et al. 2018): W-step by the optimizer, G = Pi_C(W + mu), dual.

    Parameters
    ----------
    rho : float > 0
        Initial penalty (paper: about 1e-4 to 1e-3 on ImageNet [R]; ternref default 1e-2).
    rho_growth : float >= 1
        Factor applied to ``rho`` after every epoch (1 keeps it constant; ternref default 1.6,
        the paper's schedule is not known [R]).
    admm_interval : int >= 1
        Optimizer steps per approximate W-step, i.e. between two G/dual updates.
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="admm",
        paper="Leng, Dou, Li, Zhu, Jin: Extremely Low Bit Neural Network: Squeeze the Last Bit "
        "Out with ADMM",
        year=2018,
        arxiv="1707.09870",
        ternary="W",
        projection="G = argmin ||W + mu - alpha Q||^2 over alpha > 0, Q in {-1,0,1}^n",
        estimator="none: forward and gradient at full-precision W",
        optimizer="ADMM: optimizer steps on f(W) + rho/2 ||W - G + mu||^2; G-step; dual step",
    )
    rho: float = 1e-2
    rho_growth: float = 1.6
    admm_interval: int = 20

    def validate(self):
        _validate.real_number(self.rho, "rho", low=0.0, low_open=True)
        _validate.real_number(self.rho_growth, "rho_growth", low=1.0)
        _validate.integer(self.admm_interval, "admm_interval", low=1)

    def weight_quantizer(self, layer):
        return ADMMQuantizer()

    def callbacks(self, model):
        return [ADMMCallback(model, self.rho, self.rho_growth, self.admm_interval)]
