"""Ternary Residual Networks: a weight as a sum of ternary terms, each fitting the last residual.

Kundu, Banerjee, Mellempudi, Mudigere, Das, Kaul and Dubey, "Ternary Residual Networks",
arXiv:1707.04679, 2017.

A ternary layer that loses too much accuracy gets extra low-precision *residual edges*:

.. math::

    W \\approx \\alpha_1 T_1 + \\alpha_2 T_2 + \\dots, \\qquad
    \\alpha_1 T_1 = \\Pi(W), \\quad \\alpha_{j+1} T_{j+1} = \\Pi\\Big(W - \\sum_{i \\le j}
    \\alpha_i T_i\\Big),

each term a ternarization of what the previous terms missed (greedy). The paper chooses *which*
layers get residual edges with a perturbation analysis (not implemented here: it needs a trained
network); this module builds the terms for one tensor, with ``Pi`` TWN's 0.7 rule (the paper
builds on FGQ/TWN-style ternarization) or the exact least-squares projection.

Why it is not a registered projection: the registry contract is ``fn(w) -> Ternary`` with at
most three levels per scale group, and a sum of two ternary terms has up to nine levels (five
when the scales are nested). So :func:`residual` returns a tuple of :class:`~ternref.Ternary`
terms, and the approximation is ``sum(t.dense() for t in terms)``. Registering only the first term
would just be TWN again.

Properties the tests pin: each added term never increases the error ``||W - sum||^2`` (both bases
use the least-squares scale for their support, which gives ``||r||^2 - S^2/k <= ||r||^2`` on the
residual ``r``), and ``n_terms=1`` equals the base projection.

References
----------
.. [1] A. Kundu, K. Banerjee, N. Mellempudi, D. Mudigere, D. Das, B. Kaul and P. Dubey,
       "Ternary Residual Networks", arXiv:1707.04679, 2017.
"""

from __future__ import annotations

from ternref import _validate
from ternref.projections.exact import exact
from ternref.projections.threshold import _granularity, _weights
from ternref.projections.twn import twn
from ternref.ternary import Ternary

BASES = {"twn": twn, "exact": exact}


def residual(
    w, n_terms: int = 2, base: str = "twn", granularity: str = "tensor"
) -> tuple[Ternary, ...]:
    """Greedy ternary residual expansion ``w ~= sum_j alpha_j T_j``.

    Parameters
    ----------
    w : ndarray of float32 or float64, at least 1-D
        Weights.
    n_terms : int >= 1
        Number of ternary terms (the paper: one residual edge, so 2).
    base : {"twn", "exact"}
        Projection used for every term.
    granularity : {"tensor", "channel"}
        Passed to the base projection.

    Returns
    -------
    tuple of Ternary
        ``n_terms`` terms of ``w``'s shape and dtype; ``sum(t.dense() for t in terms)`` is the
        approximation. Terms after an exact fit are all-zero.

    References
    ----------
    .. [1] A. Kundu et al., "Ternary Residual Networks", arXiv:1707.04679, 2017.
    """
    w = _weights(w)
    n_terms = _validate.integer(n_terms, "n_terms", low=1)
    project = BASES[_validate.one_of(base, "base", tuple(BASES))]
    granularity = _granularity(granularity)
    terms = []
    remainder = w
    for _ in range(n_terms):
        term = project(remainder, granularity=granularity)  # T_j ternarizes the residual
        terms.append(term)
        remainder = (remainder - term.dense()).astype(w.dtype)
    return tuple(terms)
