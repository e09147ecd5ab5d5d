"""FGQ — Ternary Neural Networks with Fine-Grained Quantization (group-wise scales), STE.

Mellempudi, Kundu, Mudigere, Das, Kaul, Dubey, "Ternary Neural Networks with Fine-Grained
Quantization", arXiv:1705.01462 (2017).

Every forward pass ternarizes each group of N consecutive weights of a row (along the reduction
axis: ``in`` for a Linear, ``in, kh, kw`` flattened for a conv) separately
(``ternref.projections.fgq``)::

    W_hat_g = alpha_g * sign(W_g) * 1[|W_g| > Delta_g],    alpha_g = mean_{|w| > Delta_g} |w|

with Delta_g the exact least-squares threshold of the group (``solver="exact"``, the optimum of
the TWN objective the paper's "improved theoretical formulation" approximates; methods.md §2.8
could not check the paper's formula) or TWN's 0.7 mean|W_g| (``solver="twn"``). Backward: the
identity STE, dL/dW := dL/dW_hat (the thresholds and scales are recomputed each forward and
not differentiated). The scales are ``(out, ceil(K / N))`` floats, exported with the codes.

Group size (the ``group_size`` hyper-parameter, N)
--------------------------------------------------
The paper reports two regimes: N = 4 needs **no retraining** (ResNet-101/50 within 3.7 / 4.2 %
top-1 of full precision with 8-bit activations, 75 % of the multiplications removed), and
N = 64 (about 99 % of the multiplications removed) needs **fine-tuning** (ResNet-50 within 4 %
after < 30 % extra training). ternref's method trains with the STE, so its default is the
fine-tuning regime, N = 64; pass ``group_size=4`` for the post-training regime (and
``ternref.projections.fgq`` directly to ternarize a trained network without retraining).

Other choices: activations stay in float (the paper uses 8-bit or 4-bit activations; see the
``bitnet`` method's int8 activation layer); first and last layers in full precision by default
(``keep_full_precision``), a common convention the paper's ResNet experiments do not contradict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, register
from ternref.projections import fgq as fgq_projection
from ternref.projections.fgq import SOLVERS


class FGQQuantizer(WeightQuantizer):
    """w -> group-wise ternary (one alpha per N weights of a row); identity STE (inherited)."""

    def __init__(self, group_size: int = 64, solver: str = "exact"):
        super().__init__()
        self.group_size = group_size
        self.solver = solver

    def project(self, w):
        return fgq_projection(w, group_size=self.group_size, solver=self.solver)

    def extra_repr(self):
        return f"group_size={self.group_size}, solver={self.solver!r}"


@register
@dataclass
class FGQ(Method):
    """FGQ (Mellempudi et al. 2017): ternary per group of N weights, least squares, STE.

    Parameters
    ----------
    group_size : int >= 1
        N, weights per scale along the reduction axis (default 64, the paper's fine-tuned
        setting; 4 is its no-retraining setting).
    solver : {"exact", "twn"}
        Threshold per group: exact least squares, or TWN's 0.7 * mean|W_g|.
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="fgq",
        paper="Mellempudi et al.: Ternary Neural Networks with Fine-Grained Quantization",
        year=2017,
        arxiv="1705.01462",
        ternary="W",
        projection="least-squares ternary per group of N weights along the row",
        estimator="identity STE",
        optimizer="fine-tuning on latent weights (SGD/Adam)",
    )
    group_size: int = 64
    solver: str = "exact"

    def validate(self):
        _validate.integer(self.group_size, "group_size", low=1)
        _validate.one_of(self.solver, "solver", SOLVERS)

    def weight_quantizer(self, layer):
        return FGQQuantizer(self.group_size, self.solver)
