"""Ternary Residual Networks — a ternary layer plus a ternary residual edge, w ~ a1 T1 + a2 T2.

Kundu, Banerjee, Mellempudi, Mudigere, Das, Kaul, Dubey, "Ternary Residual Networks",
arXiv:1707.04679 (2017). Built on FGQ (Mellempudi et al. 2017, arXiv:1705.01462; see
:mod:`ternref.methods.fgq`).

Each term ternarizes what the previous ones missed (the residual), with the same projection
(``ternref.projections.residual.residual``, greedy)::

    a1 T1 = Pi(w)
    a2 T2 = Pi(w - a1 T1)            (the residual edge; n_terms = 2, the paper's setting)
    w_hat = a1 T1 + a2 T2

At inference the layer is two ternary layers fed the same input whose outputs add
(y = x (a1 T1)^T + x (a2 T2)^T + b): the "residual edge" of the paper. The projection Pi is TWN's
0.7 rule (``base="twn"``) or the exact least-squares ternarization (``base="exact"``), per tensor,
per output channel, or per group of ``group_size`` weights along the reduction axis (FGQ's
grouping, ``granularity="group"``, via ``ternref.projections.fgq`` with the matching solver).

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
from ternref.projections import fgq
from ternref.projections.residual import residual as residual_projection
from ternref.ternary import Ternary


def residual_terms(w, n_terms: int, base: str, granularity: str, group_size=None):
    """The greedy terms ``(T1, ..., Tn)``; for groups, each term is FGQ of the last residual."""
    if granularity != "group":
        return residual_projection(w, n_terms=n_terms, base=base, granularity=granularity)
    terms, remainder = [], w
    for _ in range(n_terms):
        term = fgq(remainder, group_size=group_size, solver=base)  # T_j ternarizes the residual
        terms.append(term)
        remainder = (remainder - term.dense()).astype(w.dtype)
    return tuple(terms)


class ResidualQuantizer(WeightQuantizer):
    """w -> a1 T1 + a2 T2 + ... (a ternary term and ternary residual edges); identity STE.

    After a forward pass, ``self.ternaries`` holds the terms and ``self.ternary`` the first one
    (kept for code that reads one layer's main codes).
    """

    def __init__(self, n_terms=2, base="twn", granularity="tensor", group_size=None):
        super().__init__()
        self.n_terms = n_terms
        self.base = base
        self.granularity = granularity
        self.group_size = group_size
        self.ternaries: tuple[Ternary, ...] | None = None

    def to_ternaries(self, w) -> tuple[Ternary, ...]:
        """The terms ``(T1, T2, ...)``, ``T_{j+1} = Pi(w - sum_{i<=j} T_i.dense())``."""
        return residual_terms(w, self.n_terms, self.base, self.granularity, self.group_size)

    def project(self, w):
        raise NotImplementedError(
            "a residual layer is a1*T1 + a2*T2, a sum of ternary terms; use to_ternaries(w)"
        )

    def forward(self, w):
        self._w = w
        self.ternaries = self.to_ternaries(w)
        self.ternary = self.ternaries[0]
        w_hat = self.ternaries[0].dense()
        for term in self.ternaries[1:]:
            w_hat = w_hat + term.dense()  # w_hat = a1 T1 + a2 T2 + ...
        return w_hat

    def to_ternary(self, w):
        """Not representable: raises ``NotImplementedError`` (use :meth:`to_ternaries`)."""
        raise NotImplementedError(
            "ResidualQuantizer holds a sum of ternary terms (w_hat = a1*T1 + a2*T2); a single "
            "Ternary cannot represent it. Use to_ternaries(w) -> (T1, T2): a packed export "
            "writes one packed layer per term, all reading the same input, outputs added."
        )

    def extra_repr(self):
        extra = f", group_size={self.group_size}" if self.granularity == "group" else ""
        return (
            f"n_terms={self.n_terms}, base={self.base!r}, granularity={self.granularity!r}{extra}"
        )


@register
@dataclass
class Residual(Method):
    """Ternary Residual Networks (Kundu et al. 2017): w_hat = a1 T1 + a2 T2, identity STE.

    Parameters
    ----------
    n_terms : int >= 1
        Ternary terms per layer (the paper's one residual edge: 2; 1 is plain TWN / exact).
    base : {"twn", "exact"}
        Projection of every term: TWN's 0.7 rule or exact least squares.
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
    n_terms: int = 2
    base: str = "twn"
    granularity: str = "tensor"
    group_size: int | None = None

    def validate(self):
        _validate.integer(self.n_terms, "n_terms", low=1)
        _validate.one_of(self.base, "base", ("twn", "exact"))
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
        return ResidualQuantizer(self.n_terms, self.base, self.granularity, self.group_size)
