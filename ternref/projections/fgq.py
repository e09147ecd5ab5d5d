"""FGQ: fine-grained ternarization, one scale per group of N consecutive weights.

Mellempudi, Kundu, Mudigere, Das, Kaul and Dubey, "Ternary Neural Networks with Fine-Grained
Quantization", arXiv:1705.01462, 2017.

FGQ solves TWN's least-squares problem separately on small groups of the weight tensor,

.. math::

    \\hat W_g = \\alpha_g \\operatorname{sign}(W_g)\\,[\\,|W_g| > \\Delta_g\\,], \\qquad
    \\alpha_g = \\operatorname{mean}_{|w| > \\Delta_g} |w| ,

with ``N`` in {4, 8, 16, 32, 64}. Smaller groups mean more scales and less error: ``N = 4``
ternarizes ResNet-101/50 to within 3.7/4.2 % top-1 of full precision with 8-bit activations and no
retraining (methods.md section 2.8).

Groups (the :class:`~ternref.Ternary` ``"group"`` granularity): the tensor is viewed as
``(out, K)``, ``K = prod(shape[1:])`` in C order, so groups run along the reduction axis (for a
conv weight ``(out, in, kh, kw)`` over ``in, kh, kw`` flattened); each row is cut into
``ceil(K / N)`` groups, the last one possibly shorter. A 1-D tensor is ``(n, 1)``: every weight is
its own group.

``Delta_g`` per group: the paper derives it from an "improved theoretical formulation" of the TWN
objective (methods.md tags the details [R]: the exact formula could not be checked).
``solver="exact"`` (default) solves each group exactly by sorting
(:func:`ternref.projections.exact`, the optimum the paper's formulation approximates);
``solver="twn"`` uses TWN's ``0.7 * mean|W_g|`` per group. Because every group is solved exactly,
finer nested groupings never increase the error, and ``N = 1`` gives zero error (methods.md
section 4 P9).

Vectorised: the ``(out, K)`` view is zero-padded to a multiple of ``N`` and reshaped to
``(out * groups, N)``; padding never enters a support (a zero magnitude is never kept) and the
TWN mean divides by the true group length.

References
----------
.. [1] N. Mellempudi, A. Kundu, D. Mudigere, D. Das, B. Kaul and P. Dubey, "Ternary Neural
       Networks with Fine-Grained Quantization", arXiv:1705.01462, 2017.
"""

from __future__ import annotations

import math

import numpy as np

from ternref import _validate
from ternref.projections._registry import register
from ternref.projections.exact import _exact_rows
from ternref.projections.threshold import _weights
from ternref.projections.twn import _twn_rows
from ternref.ternary import Ternary

SOLVERS = ("exact", "twn")


@register(
    "fgq",
    paper="Mellempudi et al., Ternary Neural Networks with Fine-Grained Quantization",
    year=2017,
    arxiv="1705.01462",
    symmetric=True,
    deterministic=True,
    claims=(
        "range",
        "sign_preserving",
        "coordinate_monotone",
        "monotone",
        "odd",
        "scale_equivariant",
        "idempotent",
        "dtype_preserving",
        "optimal",
        "zero_safe",
    ),
    refutes=("permutation_equivariant",),
    summary="FGQ: exact least-squares ternarization per group of N=4 weights along the row.",
)
def fgq(w, group_size: int = 4, solver: str = "exact") -> Ternary:
    """Ternarize each group of ``group_size`` consecutive weights (per output row) separately.

    Parameters
    ----------
    w : ndarray of float32 or float64, at least 1-D
        Weights; axis 0 is the output channel, the rest is the reduction axis.
    group_size : int >= 1
        ``N``, the number of weights sharing a scale (paper: 4 to 64).
    solver : {"exact", "twn"}
        Exact least squares per group, or TWN's 0.7 rule per group.

    Returns
    -------
    Ternary
        Granularity ``"group"``; scales of shape ``(out, ceil(K / group_size))``.

    References
    ----------
    .. [1] N. Mellempudi et al., arXiv:1705.01462, 2017.
    """
    w = _weights(w)
    group_size = _validate.integer(group_size, "group_size", low=1)
    solver = _validate.one_of(solver, "solver", SOLVERS)
    out = w.shape[0]
    k = math.prod(w.shape[1:]) if w.ndim > 1 else 1
    n_groups = -(-k // group_size)
    padded = np.zeros((out, n_groups * group_size), dtype=w.dtype)
    padded[:, :k] = w.reshape(out, k)
    groups = padded.reshape(out * n_groups, group_size)  # one row per group

    a = np.abs(groups)
    if solver == "exact":
        keep, alpha = _exact_rows(a)
    else:
        lengths = np.full(n_groups, group_size)
        lengths[-1] = k - (n_groups - 1) * group_size  # the last group may be shorter
        keep, alpha = _twn_rows(a, 0.7, counts=np.tile(lengths, out))

    codes = (np.sign(groups) * keep).astype(np.int8).reshape(out, -1)[:, :k].reshape(w.shape)
    scales = alpha.astype(w.dtype).reshape(out, n_groups)
    return Ternary(codes, scales, granularity="group", group_size=group_size)
