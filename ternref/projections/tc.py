"""TernaryConnect: stochastic ternarization of weights (and power-of-two rounding for backprop).

Paper
-----
Zhouhan Lin, Matthieu Courbariaux, Roland Memisevic, Yoshua Bengio, "Neural Networks with Few
Multiplications", arXiv:1510.03009, ICLR 2016. Official Theano code: github.com/hantek/BinaryConnect
(``layer.py``).

What is implemented (forward only)
----------------------------------
Stochastic ternarization (the paper's "ternary connect", section 3.2). With the latent weight
clipped to ``[-1, 1]`` (the layer-wise bound H = 1 of BinaryConnect)::

    w_c = clip(w, -1, 1)
    t   = sign(w_c) * 1[u < |w_c|],    u ~ U[0, 1)          (one independent u per weight)

so ``P(t = sign w) = |w|`` and ``P(t = 0) = 1 - |w|``. There is no scale: alpha = 1. The sample is
unbiased, ``E[t] = w_c``, with ``Var[t] = |w_c| (1 - |w_c|)`` (methods.md P13).

Paper vs code vs ternref choices
--------------------------------
* ``u < |w|`` with ``u`` drawn from ``Generator.random`` (support ``[0, 1)``): a weight with
  ``|w| >= 1`` is +-1 with probability one, ``w = 0`` is 0 with probability one.
* A third-party ``TernaryConnectStochastic`` snippet computes ``sign(x) - sign(z - |x|)``; that is
  wrong for negative ``x`` (it yields -2 or 0). ternref uses ``sign(w) * 1[u < |w|]``.
* Test time: methods.md records the paper as evaluating with the real-valued (or deterministically
  ternarized) weights [R, unverified]. ternref offers :func:`tc_deterministic`, the *mode* of the
  stochastic sample: ``sign(w_c) * 1[|w_c| > 1/2]`` (round to the nearest of {-1, 0, 1}); a weight
  at exactly 1/2 has both outcomes equally likely and goes to 0 (ternref's tie rule). This mirrors
  the BinaryConnect code's deterministic test option (``binary_test`` with ``stochastic_test=0``),
  which uses the mode ``sign(w)`` of the stochastic binary sample.
* Quantized back-propagation (section 4): the layer input ``x`` used in ``dL/dW = delta x^T`` is
  replaced by a power of two. methods.md recalls "round to the nearest power of two with a
  limited exponent range" [R]; the official ``quantized_bprop`` instead rounds *stochastically*
  between the two neighbouring powers (``p_up = |x| / 2^floor(log2|x|) - 1``), which is unbiased,
  and has no exponent limit. :func:`power_of_two` implements both: deterministic (nearest in the
  log domain, ``2^floor(log2|x| + 1/2)``) without ``rng``, the official stochastic rounding with
  ``rng``; ``min_exp``/``max_exp`` optionally clip the exponent. Zero stays zero.

The backward rule (clipped STE, ``dL/dw = dL/dt * 1[|w| <= 1]``) and the clip of the latent weights
after each update belong to the training method, not to this module.

References
----------
Lin, Z., Courbariaux, M., Memisevic, R., Bengio, Y. (2016). Neural Networks with Few
Multiplications. ICLR 2016. arXiv:1510.03009.
"""

from __future__ import annotations

import numpy as np

from ternref._validate import float_array, float_tensor, generator, integer
from ternref.projections._registry import register
from ternref.ternary import Ternary

_PAPER = "Lin, Courbariaux, Memisevic, Bengio. Neural Networks with Few Multiplications (ICLR)"


@register(
    "tc",
    paper=_PAPER,
    year=2016,
    arxiv="1510.03009",
    symmetric=True,
    deterministic=False,
    # Sample by sample under a fixed generator: the gate u < |w_c| depends on |w| only (odd,
    # coordinate monotone, idempotent on {-1, 0, 1}); each position has its own u (not monotone,
    # not permutation equivariant); clip and alpha = 1 (not scale equivariant).
    claims=(
        "range",
        "sign_preserving",
        "coordinate_monotone",
        "odd",
        "idempotent",
        "dtype_preserving",
        "zero_safe",
    ),
    refutes=("monotone", "scale_equivariant", "permutation_equivariant"),
    summary="TernaryConnect: t = sign(w) * Bernoulli(|w|) on w clipped to [-1, 1], alpha = 1",
)
def tc(w, rng) -> Ternary:
    """Stochastically ternarize ``w``: ``t = sign(w_c) * 1[u < |w_c|]``, ``w_c = clip(w, -1, 1)``.

    Parameters
    ----------
    w : ndarray of float32 or float64, any shape
        Latent weights. Values outside ``[-1, 1]`` are clipped first (they then map to +-1
        deterministically).
    rng : numpy.random.Generator
        Source of the uniform draws ``u ~ U[0, 1)``, one per weight. The same seed gives the same
        sample.

    Returns
    -------
    Ternary
        Codes in {-1, 0, +1}, scale ``alpha = 1`` (per tensor) in ``w``'s dtype. ``E[dense] = w_c``
        and ``Var[dense] = |w_c| (1 - |w_c|)`` elementwise.

    References
    ----------
    Lin, Courbariaux, Memisevic, Bengio (2016), arXiv:1510.03009, section 3.2.
    """
    w = float_tensor(w, "w")
    rng = generator(rng, "rng")
    w_c = np.clip(w, -1.0, 1.0)
    u = rng.random(w.shape)
    # P(t = sign w) = |w_c|: the Bernoulli gate fires when the uniform draw falls below |w_c|.
    codes = (np.sign(w_c) * (u < np.abs(w_c))).astype(np.int8)
    return Ternary(codes, np.asarray(1.0, dtype=w.dtype))


@register(
    "tc_deterministic",
    paper=_PAPER,
    year=2016,
    arxiv="1510.03009",
    symmetric=True,
    deterministic=True,
    claims=(
        "range",
        "sign_preserving",
        "coordinate_monotone",
        "monotone",
        "odd",
        "permutation_equivariant",
        "idempotent",
        "dtype_preserving",
        "zero_safe",
    ),
    refutes=("scale_equivariant",),
    summary="TernaryConnect test-time mode: sign(w) * 1[|clip(w)| > 1/2], alpha = 1 "
    "(ternref's choice)",
)
def tc_deterministic(w) -> Ternary:
    """The most probable TernaryConnect sample: ``sign(w_c) * 1[|w_c| > 1/2]``, alpha = 1.

    This is ternref's deterministic test-time variant (the paper evaluates real-valued weights, see
    the module docstring). ``|w_c| = 1/2`` exactly maps to 0 (strict ``>``).

    Parameters
    ----------
    w : ndarray of float32 or float64, any shape
        Latent weights; clipped to ``[-1, 1]`` first.

    Returns
    -------
    Ternary
        Codes in {-1, 0, +1}, scale 1 (per tensor) in ``w``'s dtype.

    References
    ----------
    Lin, Courbariaux, Memisevic, Bengio (2016), arXiv:1510.03009.
    """
    w = float_tensor(w, "w")
    w_c = np.clip(w, -1.0, 1.0)
    codes = (np.sign(w_c) * (np.abs(w_c) > 0.5)).astype(np.int8)
    return Ternary(codes, np.asarray(1.0, dtype=w.dtype))


def power_of_two(x, rng=None, *, min_exp=None, max_exp=None) -> np.ndarray:
    """Round ``x`` to a signed power of two (TernaryConnect's quantized back-propagation).

    Without ``rng`` (deterministic, nearest in the log domain)::

        q = sign(x) * 2^e,   e = floor(log2|x| + 1/2)

    With ``rng`` (the official code's stochastic rounding, unbiased: ``E[q] = x``)::

        e_lo = floor(log2|x|),  p_up = |x| / 2^e_lo - 1,  e = e_lo + Bernoulli(p_up)

    In both cases ``x = 0`` gives 0, and ``e`` is clipped to ``[min_exp, max_exp]`` when those are
    given (the paper's limited exponent range; the official code has no limit). Clipping the
    exponent makes the stochastic rounding biased for ``|x|`` outside ``[2^min_exp, 2^max_exp]``.

    Parameters
    ----------
    x : ndarray of float32 or float64
        Values to round (layer inputs in the paper).
    rng : numpy.random.Generator, optional
        If given, round stochastically as in the official ``quantized_bprop``.
    min_exp, max_exp : int, optional
        Bounds on the exponent ``e``.

    Returns
    -------
    ndarray
        Same shape and dtype as ``x``; every nonzero entry is ``+-2^e``.

    References
    ----------
    Lin, Courbariaux, Memisevic, Bengio (2016), arXiv:1510.03009, section 4; official code
    github.com/hantek/BinaryConnect ``layer.py`` (``quantized_bprop``).
    """
    x = float_array(x, "x")
    if rng is not None:
        rng = generator(rng, "rng")
    lo = None if min_exp is None else integer(min_exp, "min_exp")
    hi = None if max_exp is None else integer(max_exp, "max_exp")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"min_exp must be <= max_exp, got min_exp={lo} and max_exp={hi}")
    mag = np.abs(x).astype(np.float64)
    nonzero = mag > 0
    safe = np.where(nonzero, mag, 1.0)
    # frexp gives safe = m * 2^q with m in [1/2, 1), so floor(log2 safe) = q - 1 exactly.
    _, q = np.frexp(safe)
    e_lo = (q - 1).astype(np.float64)
    if rng is None:
        # nearest in the log domain: round up iff log2|x| - e_lo >= 1/2, i.e. |x| >= sqrt(2) 2^e_lo
        e = e_lo + (safe >= np.ldexp(np.sqrt(2.0), (q - 1)))
    else:
        p_up = safe / np.ldexp(1.0, q - 1) - 1.0
        e = e_lo + (rng.random(x.shape) < p_up)
    if lo is not None or hi is not None:
        e = np.clip(e, lo, hi)
    out = np.where(nonzero, np.sign(x) * np.ldexp(1.0, e.astype(np.int64)), 0.0)
    return out.astype(x.dtype)
