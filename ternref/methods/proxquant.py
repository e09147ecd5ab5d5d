"""ProxQuant — quantized training by proximal gradient on the full-precision weights.

Bai, Wang, Liberty, "ProxQuant: Quantized Neural Networks via Proximal Operators", ICLR 2019,
arXiv:1810.00861. Official code: github.com/allenbai01/ProxQuant (``reg.py``,
``main_binary_reg.py``, ``scripts/train-cifar10-pq-ternary.sh``).

The key difference from STE
---------------------------
Straight-through training evaluates the gradient at the *quantized* point,
``theta <- theta - eta grad L(q(theta))``, which ProxQuant shows is (lazy-projection) dual
averaging. ProxQuant instead runs a proximal gradient method on the regularized problem
``L(theta) + lambda_t R(theta)``::

    theta_{t+1} = prox_{eta_t lambda_t R}( theta_t - eta_t grad L(theta_t) )

so **the training forward pass uses the full-precision theta itself** and the gradient is the
true gradient at theta: the weight quantizer is the identity during training (no surrogate
derivative at all). Quantization enters only through the prox step after each optimizer step
(``ProxQuantCallback.on_step_end``), with the ternary regularizer of the official code
(``BinOp.prox_operator(reg, 'ternary')``)::

    theta <- (theta + lambda' q(theta)) / (1 + lambda'),      lambda' = lr * lambda_t

the exact prox of ``(lambda'/2) ||theta - q||^2`` with ``q = q(theta)`` held fixed (methods.md
P14), followed by clipping to [-1, 1] (``BinOp.clip``). ``q`` is the official ``ternarize``:
``Delta = 0.7 mean|theta|``, weights ``>= Delta`` become the mean of the positive survivors,
weights ``<= -Delta`` the mean of the negative survivors (two scales; ``ternref.projections``'
ProxQuant projection). ``lr`` is the first parameter group's current learning rate, as the
official ``optimizer.param_groups[0]['lr']``.

Homotopy and freezing (official ``main_binary_reg.py``)
------------------------------------------------------
* ``lambda_t = reg_rate * epoch`` with the official *0-based* epoch: no prox during the first
  epoch, ``reg_rate`` during the second, ... (ternref epochs are 1-based, so
  ``lambda = reg_rate * (epoch - 1)``).
* At the end of epoch ``freeze_epoch`` the ternary weights are hard-ternarized,
  ``theta <- q(theta)``, and frozen (``requires_grad = False``, as ``ternary_freeze``); from then
  on the forward pass uses those ternary values, no prox or clipping runs, and only the other
  parameters (biases, batch-norm, full-precision layers) keep training. ``freeze_epoch=None``
  never freezes.

Evaluation mode and ``to_ternary`` use ``q(theta)`` (after freezing: the frozen ternary
weights): what the deployed model would be, and what the official code reports as the
"binarized" validation accuracy that selects the best checkpoint. So ``fit``'s test accuracy is
the accuracy of the ternary network even while training runs in full precision.

Defaults: paper versus ternref
------------------------------
* ``reg_rate``: the official ternary CIFAR-10 script uses ``reg_rate = 1e-4`` with Adam
  lr 0.01, 600 epochs, freeze at epoch 400 (about 390 steps per epoch). The total pull toward
  ``q`` is roughly ``sum_t lr * lambda_t ~ lr * reg_rate * steps_per_epoch * E^2 / 2`` which is
  about 30 there (the weights end up at ``q``). A 30-epoch digits run with Adam lr 1e-3 and 45
  steps per epoch gets a total pull of about ``2e-3`` with ``reg_rate = 1e-4``: the prox step
  does nothing measurable, ``theta`` stays as far from ``q(theta)`` as in plain full-precision
  training, and the ternary network is merely full-precision training followed by one
  ternarization (which the easy digits set forgives). ternref's default ``reg_rate = 2.0`` gives
  a total pull comparable to the paper's (about 40 by epoch 30 at a constant learning rate), so
  that the homotopy really moves ``theta`` to ``q``; each epoch record carries
  ``proxquant_gap = ||theta - q(theta)|| / ||theta||`` to watch it. Pass ``reg_rate=1e-4`` for
  the paper's value. ``freeze_epoch``: the paper freezes at 2/3 of training (400 of 600);
  ternref's default ``None`` never freezes (the run length is not known to the method); set it
  explicitly, e.g. 20 for a 30-epoch run.
* Layers: the official ternary runs skip the first conv, every FC layer and the downsample
  convs (``if_binary_tern``); ternref's ``quantize_model`` keeps the first and last layers in
  full precision by default.
* Optimizer: Adam (lr 0.01) for the ternary CIFAR-10 script; any ternref optimizer works. The
  official code warm-starts from a full-precision model.

References
----------
.. [1] Y. Bai, Y.-X. Wang, E. Liberty, "ProxQuant: Quantized Neural Networks via Proximal
   Operators", ICLR 2019, arXiv:1810.00861.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, quantized_layers, register
from ternref.projections.proxquant import prox_ternary
from ternref.projections.proxquant import proxquant as proxquant_projection
from ternref.ternary import Ternary
from ternref.train import Callback


class ProxQuantQuantizer(WeightQuantizer):
    """Identity in training (gradient at theta); ``q(theta)`` in evaluation; frozen after freeze."""

    def __init__(self):
        super().__init__()
        self.frozen: Ternary | None = None

    def project(self, w):
        return self.frozen if self.frozen is not None else proxquant_projection(w)

    def forward(self, w):
        self._w = w
        if self.training and self.frozen is None:
            # prox-gradient: the loss and its gradient are evaluated at the latent theta
            self.ternary = None
            return w
        self.ternary = self.project(w)
        return self.ternary.dense()

    def backward(self, dw_hat):
        # Before freezing the forward pass is the identity, so this is the exact gradient; after
        # freezing the weight has requires_grad = False and the layer drops it.
        return dw_hat

    def freeze(self, weight) -> None:
        """``ternary_freeze``: theta <- q(theta), then no more updates of the weight."""
        self.frozen = proxquant_projection(weight.data)
        weight.data[...] = self.frozen.dense()
        weight.requires_grad = False

    def extra_repr(self):
        return f"frozen={self.frozen is not None}"


class ProxQuantCallback(Callback):
    """Prox step + clip after each optimizer step; homotopy lambda_t; freeze at freeze_epoch."""

    def __init__(self, model, reg_rate, freeze_epoch, clip):
        self.layers = quantized_layers(model)
        self.reg_rate = reg_rate
        self.freeze_epoch = freeze_epoch
        self.clip = clip
        self.epoch = 1  # the epoch being trained, 1-based
        self.frozen = False

    @property
    def lam(self) -> float:
        """lambda_t = reg_rate * (official 0-based epoch)."""
        return self.reg_rate * (self.epoch - 1)

    def on_step_end(self, model, optimizer):
        if self.frozen:
            return
        lam = optimizer.lr * self.lam
        for layer in self.layers:
            theta = layer.weight.data
            if lam > 0:
                # theta <- (theta + lam q(theta)) / (1 + lam), official prox_operator('ternary')
                theta[...] = prox_ternary(theta, lam)
            if self.clip is not None:
                np.clip(theta, -self.clip, self.clip, out=theta)

    def on_epoch_end(self, model, epoch, record):
        record["proxquant_lambda"] = self.lam
        # relative distance to the ternary point, ||theta - q(theta)|| / ||theta|| (0 if frozen)
        gaps = [
            float(np.linalg.norm(layer.weight.data - layer.weight_quantizer.to_ternary(
                layer.weight.data).dense()))
            / max(float(np.linalg.norm(layer.weight.data)), 1e-12)
            for layer in self.layers
        ]  # fmt: skip
        record["proxquant_gap"] = float(np.mean(gaps)) if gaps else 0.0
        if self.freeze_epoch is not None and epoch == self.freeze_epoch and not self.frozen:
            for layer in self.layers:
                layer.weight_quantizer.freeze(layer.weight)
            self.frozen = True
        self.epoch = epoch + 1


@register
@dataclass
class ProxQuant(Method):
    """ProxQuant (Bai, Wang, Liberty 2019): prox-gradient at full precision, ternary prox.

    Parameters
    ----------
    reg_rate : float >= 0
        Homotopy slope, ``lambda_t = reg_rate * (epoch - 1)``. Paper (ternary CIFAR-10 script):
        1e-4; ternref default 2.0 for short digits runs (see the module docstring).
    freeze_epoch : int or None
        Hard-ternarize and freeze the ternary weights at the end of this epoch (paper: 400 of
        600); ``None`` never freezes.
    clip : float or None
        Clip the latent weights to ``[-clip, clip]`` after each prox step (official: 1).
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="proxquant",
        paper="Bai, Wang, Liberty: ProxQuant: Quantized Neural Networks via Proximal Operators",
        year=2019,
        arxiv="1810.00861",
        ternary="W",
        projection="0.7*mean|W| threshold, asymmetric mean scales (official ternarize)",
        estimator="none: forward and gradient at full-precision theta",
        optimizer="prox step theta <- (theta + lr*lambda_t*q(theta)) / (1 + lr*lambda_t), "
        "lambda_t = reg_rate*epoch, clip, freeze",
    )
    reg_rate: float = 2.0
    freeze_epoch: int | None = None
    clip: float | None = 1.0

    def validate(self):
        _validate.real_number(self.reg_rate, "reg_rate", low=0.0)
        if self.freeze_epoch is not None:
            _validate.integer(self.freeze_epoch, "freeze_epoch", low=1)
        if self.clip is not None:
            _validate.real_number(self.clip, "clip", low=0.0, low_open=True)

    def weight_quantizer(self, layer):
        return ProxQuantQuantizer()

    def callbacks(self, model):
        return [ProxQuantCallback(model, self.reg_rate, self.freeze_epoch, self.clip)]
