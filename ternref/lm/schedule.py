"""AdamW for language models, with BitNet b1.58's two-stage learning rate and weight decay.

The recipe (Ma, Wang, Wei, "The Era of 1-bit LLMs: Training Tips, Code and FAQ", microsoft/unilm
``bitnet/``, 2024, section 1 and Figure 1 c-d, read for this module)
-----------------------------------------------------------------------------------------------
* **Learning rate**: two linear warm-up-then-linear-decay schedules with different peaks, the
  first followed for the first half of training and the second for the second half. In
  Figure 1c both rise linearly over the warm-up and fall linearly to about 0 at the last step;
  at the halfway point the rate drops from the first line to the second (1.5e-3 -> 1e-3 peaks
  for the 700M model: the rate drops from about 7.7e-4 to 5.2e-4).
* **Weight decay**: 0.1 in the first stage (LLaMA's value), 0 in the second (Figure 1d): in
  1-bit training the latent weight's magnitude is the confidence of its ternary value, and
  decay makes the codes flip; removing it lets them settle.
* Table 2 of the FAQ: AdamW, betas (0.9, 0.95), 375 warm-up steps, 100B tokens; BitNet b1.58:
  1.5e-3 -> 1e-3 (700M), 1.2e-3 -> 8e-4 (1.3B, 3B, 3.9B), weight decay 0.1 -> 0; the LLaMA
  baselines: one stage, 2.5e-4 (700M) or 2e-4, weight decay 0.1 throughout. The FAQ also says
  full-precision models did not benefit from the higher rate nor from the mid-way drop. The
  second peak is 2/3 of the first at every size; :class:`TwoStageSchedule` takes that ratio
  as its default.
* The BitNet b1.58 2B4T report (arXiv:2504.12285) keeps the two stages (a high rate, then a
  cool-down from a lower rate) with a cosine weight decay peaking at 0.1 in stage 1 and 0 in
  stage 2 (as summarised in ternref's shared reference notes; not re-read here).

What ternref does with it is in :class:`TwoStageSchedule` (its ``two_stage=False`` form is
the LLaMA baseline's one-stage linear schedule with constant weight decay) and
:func:`adamw`. Weight decay applies to matrices (embeddings and projections) only, not to norm
gains or learned scales (LLaMA / nanoGPT practice; the FAQ does not say which tensors decay).
"""

from __future__ import annotations

import math

import numpy as np

from ternref import _validate
from ternref.optim import Adam

#: FAQ Table 2: AdamW betas.
BETAS = (0.9, 0.95)
#: FAQ Table 2: the second peak over the first, at every model size (1e-3 / 1.5e-3, 8e-4 / 1.2e-3).
STAGE2_RATIO = 2.0 / 3.0


def adamw(model, lr: float, weight_decay: float = 0.1, betas=BETAS, eps: float = 1e-8) -> Adam:
    """``ternref.optim.Adam`` with decoupled weight decay on the model's matrices only.

    Two parameter groups: every parameter with two or more dimensions (embeddings, projections,
    the untied head) decays; vectors and scalars (norm gains, TTQ's learned scales) do not.
    A :class:`TwoStageSchedule` then sets each group's ``lr`` and the first group's
    ``weight_decay`` every step.
    """
    params = model.parameters()
    decay = [p for p in params if p.data.ndim >= 2]
    rest = [p for p in params if p.data.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return Adam(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=True)


class TwoStageSchedule:
    """Per-step learning rate and weight decay: BitNet b1.58's two stages, or one stage.

    Parameters
    ----------
    optimizer : ternref.optim.Adam
        From :func:`adamw`: its first group is the decayed one.
    total_steps : int >= 1
        T, the number of optimizer steps.
    peak_lr : float > 0
        Peak of the first stage.
    warmup : int >= 0
        Linear warm-up steps (FAQ: 375 of 100k steps).
    weight_decay : float >= 0
        Stage 1's weight decay (FAQ: 0.1).
    two_stage : bool, default True
        False: one linear schedule at ``peak_lr`` with constant ``weight_decay`` (the LLaMA
        baseline of the FAQ).
    stage2_ratio : float in (0, 1], default 2/3
        Peak of the second stage over ``peak_lr`` (FAQ Table 2).

    Notes
    -----
    At step t = 0 .. T-1, with ``shape(t) = (t + 1) / warmup`` during the warm-up and
    ``(T - t) / (T - warmup)`` after it (so the last step runs at ``peak / (T - warmup)``, not
    0), and the switch at ``t_2 = T // 2``::

        lr(t) = peak_lr * shape(t)                   t <  t_2    weight decay = weight_decay
        lr(t) = stage2_ratio * peak_lr * shape(t)    t >= t_2    weight decay = 0

    :meth:`apply` sets step t's values into the optimizer's groups; the training loop calls it
    before each step, so the rate in the optimizer is always the one of the step about to run.
    """

    def __init__(self, optimizer: Adam, total_steps: int, peak_lr: float, warmup: int = 0,
                 weight_decay: float = 0.1, two_stage: bool = True,
                 stage2_ratio: float = STAGE2_RATIO):  # fmt: skip
        if not isinstance(optimizer, Adam):
            raise TypeError(f"optimizer must be a ternref.optim.Adam, got {optimizer!r}")
        self.optimizer = optimizer
        self.total_steps = _validate.integer(total_steps, "total_steps", low=1)
        self.peak_lr = _validate.real_number(peak_lr, "peak_lr", low=0.0, low_open=True)
        self.warmup = _validate.integer(warmup, "warmup", low=0, high=self.total_steps - 1)
        self.weight_decay = _validate.real_number(weight_decay, "weight_decay", low=0.0)
        if not isinstance(two_stage, bool):
            raise TypeError(f"two_stage must be a bool, got {_validate.describe(two_stage)}")
        self.two_stage = two_stage
        self.stage2_ratio = _validate.real_number(
            stage2_ratio, "stage2_ratio", low=0.0, high=1.0, low_open=True
        )
        self.switch = self.total_steps // 2 if two_stage else self.total_steps

    def shape(self, t: int) -> float:
        """The warm-up / linear-decay factor of step ``t``, in (0, 1]."""
        if t < self.warmup:
            return (t + 1) / self.warmup
        return (self.total_steps - t) / (self.total_steps - self.warmup)

    def lr(self, t: int) -> float:
        """Learning rate of step ``t``."""
        peak = self.peak_lr if t < self.switch else self.stage2_ratio * self.peak_lr
        return peak * self.shape(min(max(t, 0), self.total_steps - 1))

    def decay(self, t: int) -> float:
        """Weight decay of step ``t`` (0 in the second stage)."""
        return self.weight_decay if t < self.switch else 0.0

    def apply(self, t: int) -> None:
        """Write step ``t``'s learning rate (every group) and weight decay (first group)."""
        lr = self.lr(t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.param_groups[0]["weight_decay"] = self.decay(t)

    def describe(self) -> str:
        if not self.two_stage:
            return (f"one stage: warm-up {self.warmup}, linear decay from {self.peak_lr:g}, "
                    f"weight decay {self.weight_decay:g}")  # fmt: skip
        return (
            f"two stages: warm-up {self.warmup}, lr {self.peak_lr:g} -> "
            f"{self.stage2_ratio * self.peak_lr:g} at step {self.switch}, linear decay; "
            f"weight decay {self.weight_decay:g} -> 0"
        )


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients so that their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping (``torch.nn.utils.clip_grad_norm_``'s rule: multiply by
    ``max_norm / (norm + 1e-6)`` when that is below 1). A non-finite norm is returned as is and
    nothing is scaled (the caller decides; the training loop stops with an error).
    """
    max_norm = _validate.real_number(max_norm, "max_norm", low=0.0, low_open=True)
    total = math.sqrt(sum(float(np.vdot(p.grad, p.grad)) for p in params))
    if math.isfinite(total) and total > max_norm:
        factor = max_norm / (total + 1e-6)
        for p in params:
            p.grad *= p.grad.dtype.type(factor)
    return total
