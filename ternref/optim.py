"""Optimizers (SGD, Adam) and learning-rate schedules for the autograd-free stack.

Optimizers update ``Parameter.data`` in place from ``Parameter.grad``. Their per-parameter state
(momentum buffer, Adam's moments) is reachable with :meth:`Optimizer.state_for`, because some
quantization methods read it: LAT (Hou & Kwok 2018) uses Adam's second moment ``v`` as the
diagonal Hessian of its proximal Newton step.

Parameters can be given as a list, or as parameter groups (dicts with a ``"params"`` list and
per-group overrides such as ``"lr"``), as in PyTorch: TTQ trains its learned scales with their own
learning rate. Schedules scale every group's initial learning rate by the same factor.

References
----------
.. [1] Sutskever, Martens, Dahl, Hinton, "On the importance of initialization and momentum in
   deep learning", ICML 2013 (momentum and Nesterov momentum in the form used here, as PyTorch).
.. [2] Kingma & Ba, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980, ICLR 2015.
.. [3] Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101, ICLR 2019.
"""

from __future__ import annotations

import math

import numpy as np

from ternref import _optim_kernels, _validate
from ternref.nn.module import Parameter


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``step`` and ``zero_grad``."""

    defaults: dict = {}

    def __init__(self, params, **defaults):
        params = list(params)
        if not params:
            raise ValueError("params must contain at least one Parameter, got an empty list")
        if isinstance(params[0], dict):
            groups = [dict(g) for g in params]
        else:
            groups = [{"params": params}]
        self.param_groups = []
        seen = set()
        for group in groups:
            group["params"] = list(group["params"])
            for p in group["params"]:
                if not isinstance(p, Parameter):
                    raise TypeError(
                        f"params must hold ternref.nn.Parameter objects, got {type(p).__name__}"
                    )
                if id(p) in seen:
                    raise ValueError(f"parameter {p.name!r} appears in more than one group")
                seen.add(id(p))
            for key, value in defaults.items():
                group.setdefault(key, value)
            group["lr"] = _validate.real_number(group["lr"], "lr", low=0.0)
            group.setdefault("initial_lr", group["lr"])
            self.param_groups.append(group)
        self._state: dict[int, dict] = {}

    @property
    def lr(self) -> float:
        """Learning rate of the first group (the only one, usually)."""
        return self.param_groups[0]["lr"]

    def parameters(self) -> list[Parameter]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_for(self, param: Parameter) -> dict:
        """The mutable state dict of ``param`` (empty until the first step)."""
        return self._state.setdefault(id(param), {})

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    self._update(p, group, self.state_for(p))

    def _update(self, p: Parameter, group: dict, state: dict) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay.

    With gradient ``g`` (plus ``weight_decay * w``), momentum ``mu`` and buffer ``b``::

        b <- mu * b + g                 (b = g on the first step)
        d  = g + mu * b  if nesterov else b
        w <- w - lr * d

    which is PyTorch's ``torch.optim.SGD`` with ``dampening=0``.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        _validate.real_number(momentum, "momentum", low=0.0, high=1.0, high_open=True)
        _validate.real_number(weight_decay, "weight_decay", low=0.0)
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0, got momentum=0")
        super().__init__(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )

    def _update(self, p, group, state):
        g = p.grad
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p.data
        mu = group["momentum"]
        if mu:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = np.array(g, copy=True)
            else:
                buf = state["momentum_buffer"]
                buf *= mu
                buf += g
            buf = state["momentum_buffer"]
            g = g + mu * buf if group["nesterov"] else buf
        p.data -= (group["lr"] * g).astype(p.data.dtype, copy=False)


class Adam(Optimizer):
    """Adam with bias correction; ``decoupled=True`` gives AdamW's decoupled weight decay.

    Per parameter, with gradient ``g`` and step count ``t``::

        m <- b1 * m + (1 - b1) * g
        v <- b2 * v + (1 - b2) * g**2
        w <- w - lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)

    ``weight_decay`` adds ``wd * w`` to ``g`` (L2, Adam) or, with ``decoupled=True``, multiplies
    ``w`` by ``1 - lr * wd`` before the update (AdamW, Loshchilov & Hutter 2019). State keys:
    ``"m"``, ``"v"`` (the raw, un-corrected moments) and ``"step"``.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ):
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            _validate.real_number(b, f"betas[{i}]", low=0.0, high=1.0, high_open=True)
        _validate.real_number(eps, "eps", low=0.0, low_open=True)
        _validate.real_number(weight_decay, "weight_decay", low=0.0)
        super().__init__(
            params,
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            decoupled=decoupled,
        )

    def _update(self, p, group, state):
        b1, b2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        g = p.grad
        if wd and not group["decoupled"]:
            g = g + wd * p.data
        if not state:
            state["step"] = 0
            state["m"] = np.zeros_like(p.data)
            state["v"] = np.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        if wd and group["decoupled"]:
            p.data *= 1 - lr * wd
        # Fold both bias corrections into the step size and eps (same result, fewer array ops).
        step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        eps_hat = group["eps"] * math.sqrt(1 - b2**t)
        # the moments and the step: one Numba pass, equal bit for bit to its NumPy twin
        # ternref._optim_kernels.adam_update_numpy, which reads as the three lines above
        _optim_kernels.adam_update(p.data, g, state["m"], state["v"], b1, b2, step_size, eps_hat)


# ---------------------------------------------------------------------------------- schedules
class Schedule:
    """Sets every group's ``lr`` to ``initial_lr * factor(epoch)``; call :meth:`step` per epoch."""

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a ternref.optim.Optimizer, got {optimizer!r}")
        self.optimizer = optimizer
        self.epoch = 0
        self._apply()

    def factor(self, epoch: int) -> float:
        raise NotImplementedError

    def _apply(self) -> None:
        f = self.factor(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f

    def step(self) -> None:
        """Advance one epoch."""
        self.epoch += 1
        self._apply()


class ConstantLR(Schedule):
    """No change: factor 1 for every epoch."""

    def factor(self, epoch):
        return 1.0


class StepLR(Schedule):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        self.step_size = _validate.integer(step_size, "step_size", low=1)
        self.gamma = _validate.real_number(gamma, "gamma", low=0.0)
        super().__init__(optimizer)

    def factor(self, epoch):
        return self.gamma ** (epoch // self.step_size)


class MultiStepLR(Schedule):
    """Multiply by ``gamma`` at each epoch in ``milestones`` (LAT's MNIST recipe: 15 and 25)."""

    def __init__(self, optimizer, milestones, gamma: float = 0.1):
        self.milestones = sorted(_validate.integer(m, "milestones", low=1) for m in milestones)
        self.gamma = _validate.real_number(gamma, "gamma", low=0.0)
        super().__init__(optimizer)

    def factor(self, epoch):
        return self.gamma ** sum(epoch >= m for m in self.milestones)


class CosineLR(Schedule):
    """Cosine annealing from the initial rate to ``min_factor`` times it over ``total_epochs``.

    ``factor(e) = min_factor + (1 - min_factor) * (1 + cos(pi * e / total_epochs)) / 2``, as
    PyTorch's ``CosineAnnealingLR`` with ``T_max = total_epochs`` stepped once per epoch.
    """

    def __init__(self, optimizer, total_epochs: int, min_factor: float = 0.0):
        self.total_epochs = _validate.integer(total_epochs, "total_epochs", low=1)
        self.min_factor = _validate.real_number(min_factor, "min_factor", low=0.0, high=1.0)
        super().__init__(optimizer)

    def factor(self, epoch):
        e = min(epoch, self.total_epochs)
        cos = (1 + math.cos(math.pi * e / self.total_epochs)) / 2
        return self.min_factor + (1 - self.min_factor) * cos


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
SCHEDULES = ("constant", "step", "cosine")
