"""Ternary Residual Networks — a ternary layer plus a ternary residual edge, w ~ a1 T1 + a2 T2.

Kundu, Banerjee, Mellempudi, Mudigere, Das, Kaul, Dubey, "Ternary Residual Networks",
arXiv:1707.04679 (2017). Built on FGQ (Mellempudi et al. 2017, arXiv:1705.01462; see
:mod:`ternref.methods.fgq`).

The second term ternarizes what the first one missed (the residual), with the same projection::

    T1 = Pi(w)                       (a1 T1 = Pi(w).dense())
    T2 = Pi(w - a1 T1)               (the residual edge)
    w_hat = a1 T1 + a2 T2

At inference the layer is two ternary layers fed the same input whose outputs add
(y = x (a1 T1)^T + x (a2 T2)^T + b): the "residual edge" of the paper. The projection Pi is TWN's
rule (Delta = factor * mean|w|, least-squares alpha) per tensor, per output channel, or per group
of ``group_size`` weights along the reduction axis (FGQ's grouping, ``granularity="group"``).

Backward: the identity STE, dL/dw := dL/dw_hat (both terms are functions of w; their scales and
thresholds are recomputed every forward and not differentiated).

Export: ``to_ternary`` raises
-----------------------------
A single :class:`~ternref.ternary.Ternary` cannot hold a1 T1 + a2 T2 (up to 9 distinct values),
so :meth:`ResidualQuantizer.to_ternary` raises ``NotImplementedError`` and
:meth:`ResidualQuantizer.to_ternaries` returns ``(T1, T2)``, whose dense sum is exactly what the
evaluation-mode forward uses. A packed export writes two packed layers (same input, outputs
added, the bias once).

Paper vs ternref
----------------
* The paper adds residual edges post-training ("no low-precision retraining is needed") to the
  branches a perturbation analysis finds sensitive, and can drop the least important ones.
  ternref gives *every* ternary layer exactly one residual term and trains with the STE (the same
  fine-tuning as FGQ); the selection heuristic is not implemented.
* Activations: the paper's "8-2" models use 8-bit activations; ternref keeps them in float (use
  the ``bitnet`` method's activation quantizer to study int8 activations).
* Layers: first and last layers in full precision by default (``keep_full_precision``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, register
from ternref.ternary import Ternary


def _project(w, factor: float, granularity: str, group_size: int | None) -> Ternary:
    """Pi: TWN's rule per tensor / channel, or FGQ's per group of ``group_size``."""
    if granularity == "group":
        from ternref.projections import fgq

        return fgq(w, group_size=group_size, factor=factor)
    from ternref.projections import twn

    return twn(w, factor=factor, granularity=granularity)


class ResidualQuantizer(WeightQuantizer):
    """w -> a1 T1 + a2 T2 (a ternary term and a ternary residual edge); identity STE.

    After a forward pass, ``self.ternaries`` holds ``(T1, T2)`` and ``self.ternary`` the first
    term (kept for code that reads one layer's main codes).
    """

    def __init__(self, factor: float = 0.7, granularity: str = "tensor", group_size=None):
        super().__init__()
        self.factor = factor
        self.granularity = granularity
        self.group_size = group_size
        self.ternaries: tuple[Ternary, Ternary] | None = None

    def to_ternaries(self, w) -> tuple[Ternary, Ternary]:
        """``(T1, T2)`` with ``T1 = Pi(w)`` and ``T2 = Pi(w - T1.dense())`` (deterministic)."""
        t1 = _project(w, self.factor, self.granularity, self.group_size)
        t2 = _project(w - t1.dense(), self.factor, self.granularity, self.group_size)
        return t1, t2

    def project(self, w):
        raise NotImplementedError(
            "a residual layer is a1*T1 + a2*T2, two ternary terms; use to_ternaries(w)"
        )

    def forward(self, w):
        self._w = w
        self.ternaries = self.to_ternaries(w)
        self.ternary = self.ternaries[0]
        t1, t2 = self.ternaries
        return t1.dense() + t2.dense()  # w_hat = a1 T1 + a2 T2

    def to_ternary(self, w):
        """Not representable: raises ``NotImplementedError`` (use :meth:`to_ternaries`)."""
        raise NotImplementedError(
            "ResidualQuantizer holds two ternary terms (w_hat = a1*T1 + a2*T2); a single "
            "Ternary cannot represent it. Use to_ternaries(w) -> (T1, T2): a packed export "
            "writes two packed layers that read the same input and whose outputs add."
        )

    def extra_repr(self):
        extra = f", group_size={self.group_size}" if self.granularity == "group" else ""
        return f"factor={self.factor}, granularity={self.granularity!r}{extra}"


@register
@dataclass
class Residual(Method):
    """Ternary Residual Networks (Kundu et al. 2017): w_hat = a1 T1 + a2 T2, identity STE.

    Parameters
    ----------
    factor : float in [0, 1)
        TWN threshold factor of each term, Delta = factor * mean|w| (per scale group).
    granularity : {"tensor", "channel", "group"}
        Scale groups of each term; ``"group"`` is FGQ's grouping (needs ``group_size``).
    group_size : int >= 1, optional
        Weights per group along the reduction axis, for ``granularity="group"``.
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="residual",
        paper="Kundu et al.: Ternary Residual Networks",
        year=2017,
        arxiv="1707.04679",
        ternary="W",
        projection="a1*T1 + a2*T2 with T2 ternarizing the residual w - a1*T1 (TWN rule)",
        estimator="identity STE",
        optimizer="SGD/Adam fine-tuning on latent weights",
    )
    factor: float = 0.7
    granularity: str = "tensor"
    group_size: int | None = None

    def validate(self):
        _validate.real_number(self.factor, "factor", low=0.0, high=1.0, high_open=True)
        _validate.one_of(self.granularity, "granularity", ("tensor", "channel", "group"))
        if self.granularity == "group":
            if self.group_size is None:
                raise ValueError("group_size is required when granularity='group'")
            _validate.integer(self.group_size, "group_size", low=1)
        elif self.group_size is not None:
            raise ValueError(
                f"group_size is only meaningful for granularity='group', got "
                f"granularity={self.granularity!r}, group_size={self.group_size!r}"
            )

    def weight_quantizer(self, layer):
        return ResidualQuantizer(self.factor, self.granularity, self.group_size)
