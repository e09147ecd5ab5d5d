"""GXNOR-Net: discrete weight space, discrete state transition (DST), ternary activations.

Paper
-----
Lei Deng, Peng Jiao, Jing Pei, Zhenzhi Wu, Guoqi Li, "GXNOR-Net: Training deep neural networks
with ternary weights and activations without full-precision memory under a unified discretization
framework", arXiv:1705.09283, Neural Networks 100:49-58, 2018. Official Theano code:
github.com/AcrossV/Gated-XNOR (``New/mnist_GXNOR.py``).

What is implemented
-------------------
**Discrete weight space** (paper section 2)::

    Z_N = {-H + k L : k = 0, ..., 2^N},    L = 2H / 2^N

``N = 1, H = 1`` gives {-1, 0, 1}. There is no scale factor (batch norm absorbs it).
:func:`gxnor` projects real weights onto ``Z_1`` (nearest state, returned as a ``Ternary`` with
``alpha = H``); :func:`gxnor_snap` does the same for any ``N`` and returns a dense array, since
``Z_N`` has ``2^N + 1`` levels.

**Discrete state transition** (:func:`gxnor_dst_update`, code ``discrete_grads``): GXNOR keeps no
full-precision hidden weights. A proposed real update ``Delta`` (the code uses Adam's step) moves
the discrete weight by whole steps plus one stochastic step::

    kappa = sign(Delta) * floor(|Delta| / L)          (whole steps)
    nu    = Delta - kappa L                            (remainder, |nu| < L)
    tau   = tanh(m |nu| / L)                           (transition probability, m = 3)
    W    <- clip(W + (kappa + sign(Delta) * Bernoulli(tau)) L, -H, H)

followed by a snap to the nearest state (``weight_tune``) to remove floating-point drift. With the
linear ``tau = |nu| / L`` (``tau="linear"``) the step is unbiased before clipping,
``E[(kappa + sign(Delta) b) L] = Delta``; the paper's ``tanh`` makes it biased upward (faster
transitions), e.g. ``E = tanh(0.9) = 0.716`` for ``Delta = 0.3``, ``L = 1`` (methods.md P13).

**Ternary activation** (:func:`gxnor_activation`). The paper defines the ternary neuron with a
dead zone that includes its edges::

    phi_r(x) = +1 if x > r,   0 if |x| <= r,   -1 if x < -r        i.e. sign(x) * 1[|x| > r]

(paper, multi-step activation discretization, ternary case; this transcription is methods.md
section 2.4's and issue 16's reading of the paper, whose body could not be re-read from here:
only its abstract was reachable). This is ternref's default (``form="paper"``), and it is also
ternref's tie rule (a value exactly at the threshold goes to 0, DESIGN.md principle 7).

The official code (``mnist_GXNOR.py`` ``discrete_neuron_3states``, AcrossV/Gated-XNOR, re-read
at commit faea1b0) computes::

    phi(x) = round(hardsig(2(x - 1)) + hardsig(2(x + 1)) - 1),  hardsig(z) = clip((z + 1)/2, 0, 1)

For ``x >= -1/2`` the inner value is ``clip(x - 1/2, 0, 1)``, which is exactly 1/2 at ``x = 1``;
the code's ``round`` is C's ``round`` (the ``round_custom`` op's ``c_code``), which rounds halves
*away from zero*, so ``phi(1) = 1`` and, by symmetry, ``phi(-1) = -1``: the code's neuron is
``sign(x) * 1[|x| >= r]`` with ``r = 1``, the tie going to the nonzero state. ``form="code"``
reproduces it (pinned by a test against a literal transcription). The code's float arithmetic
also fires for the single double just below +1 (``1 + 0.4999999999999999`` rounds to 1.5);
``form="code"`` keeps the exact comparison, so it differs from the code only there. The two forms
differ only at ``|x| = r`` exactly. ``r`` is a parameter; the code has ``r = 1``.

Its derivative is replaced by the window :func:`gxnor_activation_window`
``1[r - a < |x| < r + a]`` (``a = 1/2`` in the code: the slope-1 ramps of the two hard sigmoids,
``1/2 < |x| < 3/2``); the paper's general window has height ``1/(2a)`` on ``[r - a, r + a]``, equal
to 1 for ``a = 1/2`` (the closed and open windows differ only at ``|x| = r +- a``). The same window
serves both forms of ``phi``.

Paper vs code vs ternref choices
--------------------------------
* ``weight_tune`` in the code snaps with ``T.round`` on the state index ``(W + H)/L``, whose halves
  round away from zero, i.e. toward ``+H`` (``-0.5 -> 0`` but ``+0.5 -> +1`` for ``N = 1``). It only
  meets such ties when discretizing the uniform initialization. ternref's :func:`gxnor`/
  :func:`gxnor_snap` send ties to the state of smaller magnitude (ternref's tie rule), which keeps
  the projection odd. Inside :func:`gxnor_dst_update` all values are on the grid up to rounding
  error, so the rule never matters there.
* The code's random-restart search (``update_type``, jump toward a random state after 15 epochs
  without improvement) is a training-loop heuristic and is not implemented here.

References
----------
Deng, L., Jiao, P., Pei, J., Wu, Z., Li, G. (2018). GXNOR-Net: Training deep neural networks with
ternary weights and activations without full-precision memory under a unified discretization
framework. Neural Networks, 100, 49-58. arXiv:1705.09283.
"""

from __future__ import annotations

import numpy as np

from ternref._validate import float_array, float_tensor, generator, integer, one_of, real_number
from ternref.projections._registry import register
from ternref.ternary import Ternary

_MAX_BITS = 16


def _grid(n_bits, H):
    n_bits = integer(n_bits, "n_bits", low=1, high=_MAX_BITS)
    H = real_number(H, "H", low=0.0, low_open=True)
    return n_bits, H, 2.0 * H / 2**n_bits


def gxnor_states(n_bits: int = 1, H: float = 1.0) -> np.ndarray:
    """The discrete weight space ``Z_N = {-H + k L : k = 0..2^N}``, ``L = 2H / 2^N`` (float64).

    References
    ----------
    Deng et al. (2018), arXiv:1705.09283, section 2.
    """
    n_bits, H, L = _grid(n_bits, H)
    return -H + L * np.arange(2**n_bits + 1, dtype=np.float64)


def _snap_steps(w, H, L):
    """Signed number of steps ``j`` of the nearest state ``j L`` to ``clip(w, -H, H)``.

    Ties go to the smaller ``|j|``.
    """
    q = np.abs(np.clip(w.astype(np.float64), -H, H)) / L
    # round half toward zero: ceil(q - 1/2)
    j = np.ceil(q - 0.5)
    return np.sign(w) * j


def gxnor_snap(w, n_bits: int = 1, H: float = 1.0) -> np.ndarray:
    """Nearest state of ``Z_N`` to ``clip(w, -H, H)`` (dense; ties to the smaller magnitude).

    Parameters
    ----------
    w : ndarray of float32 or float64
        Real weights.
    n_bits : int >= 1, default 1
        ``N``; ``Z_N`` has ``2^N + 1`` states.
    H : float > 0, default 1.0
        Range ``[-H, H]``.

    Returns
    -------
    ndarray
        Same shape and dtype as ``w``, every entry in ``Z_N``.

    References
    ----------
    Deng et al. (2018), arXiv:1705.09283; code ``weight_tune`` (which rounds ties toward +H).
    """
    w = float_tensor(w, "w")
    n_bits, H, L = _grid(n_bits, H)
    return (_snap_steps(w, H, L) * L).astype(w.dtype)


@register(
    "gxnor",
    paper="Deng, Jiao, Pei, Wu, Li. GXNOR-Net: Training deep neural networks with ternary "
    "weights and activations without full-precision memory (Neural Networks)",
    year=2018,
    arxiv="1705.09283",
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
    summary="GXNOR: nearest state of Z_1 = {-H, 0, H}, i.e. H sign(w) 1[|w| > H/2]",
)
def gxnor(w, n_bits: int = 1, H: float = 1.0) -> Ternary:
    """Project ``w`` onto GXNOR's ternary weight space ``Z_1 = {-H, 0, H}`` (nearest state).

    Parameters
    ----------
    w : ndarray of float32 or float64, any shape
        Real weights (e.g. the uniform initialization the code discretizes at epoch 0).
    n_bits : int, default 1
        Must be 1: ``Z_N`` for ``N > 1`` has ``2^N + 1 > 3`` levels and is not ternary; use
        :func:`gxnor_snap` for it.
    H : float > 0, default 1.0
        The weight range ``[-H, H]``; it is the scale of the returned codes.

    Returns
    -------
    Ternary
        Codes ``sign(w) 1[|w| > H/2]`` (ties at ``H/2`` go to 0) and per-tensor scale ``H``.

    References
    ----------
    Deng et al. (2018), arXiv:1705.09283.
    """
    w = float_tensor(w, "w")
    n_bits, H, L = _grid(n_bits, H)
    if n_bits != 1:
        raise ValueError(
            f"n_bits must be 1 for a ternary projection (Z_{n_bits} has {2**n_bits + 1} levels); "
            f"use gxnor_snap(w, n_bits={n_bits}) for the multi-level space"
        )
    # nearest of {-H, 0, H}; |w| = H/2 is a tie and goes to 0 (H/2 is exact in floating point)
    codes = (np.sign(w) * (np.abs(w) > H / 2)).astype(np.int8)
    return Ternary(codes, np.asarray(H, dtype=w.dtype))


def gxnor_transition_probability(nu, L: float, m: float = 3.0, tau: str = "tanh") -> np.ndarray:
    """DST transition probability ``tau(nu) = tanh(m |nu| / L)`` (or ``|nu| / L`` if linear).

    Parameters
    ----------
    nu : ndarray of float
        Remainders ``Delta - kappa L`` (``|nu| < L``).
    L : float > 0
        Step between states.
    m : float > 0, default 3.0
        Nonlinearity (``th`` in the code).
    tau : {"tanh", "linear"}
        ``"tanh"`` is the paper's; ``"linear"`` makes the transition unbiased.

    Returns
    -------
    ndarray
        Probabilities in ``[0, 1]``.

    References
    ----------
    Deng et al. (2018), arXiv:1705.09283, DST; code ``discrete_grads``.
    """
    nu = float_array(nu, "nu", allow_empty=True)
    L = real_number(L, "L", low=0.0, low_open=True)
    m = real_number(m, "m", low=0.0, low_open=True)
    one_of(tau, "tau", ("tanh", "linear"))
    ratio = np.abs(nu) / L
    return np.tanh(m * ratio) if tau == "tanh" else np.minimum(ratio, 1.0)


def gxnor_dst_update(
    w_discrete,
    delta_w,
    rng,
    n_bits: int = 1,
    H: float = 1.0,
    m: float = 3.0,
    tau: str = "tanh",
) -> np.ndarray:
    """One discrete state transition: move ``w_discrete`` on ``Z_N`` by the proposed ``delta_w``.

    Parameters
    ----------
    w_discrete : ndarray of float32 or float64
        Current weights, every entry a state of ``Z_N`` (checked to within rounding).
    delta_w : ndarray of float, same shape
        Proposed real-valued update (e.g. the optimizer's step ``updates[W] - W``).
    rng : numpy.random.Generator
        Source of the Bernoulli transitions.
    n_bits : int >= 1, default 1
        ``N``.
    H : float > 0, default 1.0
        Range of the weights.
    m : float > 0, default 3.0
        Nonlinearity of ``tau`` (``th = 3`` in the code).
    tau : {"tanh", "linear"}, default "tanh"
        Transition probability; ``"linear"`` gives an unbiased step.

    Returns
    -------
    ndarray
        New weights, same shape and dtype as ``w_discrete``, every entry in ``Z_N``.

    Raises
    ------
    ValueError
        If ``w_discrete`` is not on ``Z_N`` or the shapes differ.

    References
    ----------
    Deng et al. (2018), arXiv:1705.09283; code ``discrete_grads``.
    """
    w = float_array(w_discrete, "w_discrete")
    d = float_array(delta_w, "delta_w")
    rng = generator(rng, "rng")
    n_bits, H, L = _grid(n_bits, H)
    if d.shape != w.shape:
        raise ValueError(
            f"delta_w must have the shape of w_discrete {w.shape}, got shape {d.shape}"
        )
    steps = _snap_steps(w, H, L)
    off_grid = (np.abs(w) > H * (1 + 1e-6)) | (
        np.abs(w.astype(np.float64) - steps * L) > 1e-5 * max(H, 1.0)
    )
    if np.any(off_grid):
        bad = w[off_grid].ravel()[:5].tolist()
        raise ValueError(
            f"w_discrete must lie on Z_{n_bits} (steps of {L} in [-{H}, {H}]), got values {bad}"
        )
    d64 = d.astype(np.float64)
    direction = np.sign(d64)
    kappa = direction * np.floor(np.abs(d64) / L)  # whole steps
    nu = d64 - kappa * L  # remainder, |nu| < L
    prob = gxnor_transition_probability(nu, L, m, tau)
    gate = rng.random(w.shape) < prob  # Bernoulli(tau)
    moved = steps + kappa + direction * gate  # in units of L
    # clip to [-H, H] = [-2^(N-1), 2^(N-1)] steps; integers, so no snap error
    half = 2 ** (n_bits - 1)
    moved = np.clip(moved, -half, half)
    return (moved * L).astype(w.dtype)


#: The two ternary neurons: the paper's (|x| = r -> 0, default) and the official code's (-> +-1).
ACTIVATION_FORMS = ("paper", "code")


def gxnor_activation(x, r: float = 1.0, form: str = "paper") -> np.ndarray:
    """GXNOR's ternary activation ``phi_r(x) = sign(x) * 1[|x| > r]`` (the paper's definition).

    Parameters
    ----------
    x : ndarray of float32 or float64
        Pre-activations.
    r : float > 0, default 1.0
        Threshold (1 in the code).
    form : {"paper", "code"}, default "paper"
        ``"paper"``: ``|x| = r`` exactly gives 0 (``phi_r = 0`` on ``|x| <= r``). ``"code"``:
        ``sign(x) * 1[|x| >= r]``, what the official ``discrete_neuron_3states`` computes (its C
        ``round`` sends the half at ``x = +-1`` away from zero).

    Returns
    -------
    ndarray
        Values in {-1, 0, +1}, same shape and dtype as ``x``.

    References
    ----------
    Deng et al. (2018), arXiv:1705.09283; code ``discrete_neuron_3states``.
    """
    x = float_array(x, "x")
    r = real_number(r, "r", low=0.0, low_open=True)
    one_of(form, "form", ACTIVATION_FORMS)
    active = np.abs(x) > r if form == "paper" else np.abs(x) >= r
    return (np.sign(x) * active).astype(x.dtype)


def gxnor_activation_window(x, r: float = 1.0, a: float = 0.5) -> np.ndarray:
    """Window derivative of :func:`gxnor_activation` (either form): ``1[r - a < |x| < r + a]``.

    This is the surrogate ``d phi / d x`` used in backprop (the slope-1 ramps of the code's two
    hard sigmoids for ``r = 1, a = 1/2``). Its integral over each side is ``2a``, which equals the
    jump height 1 of ``phi`` for ``a = 1/2``; for other ``a`` the paper scales the window by
    ``1/(2a)`` (multiply the result yourself if you want that normalization).

    Parameters
    ----------
    x : ndarray of float32 or float64
        Pre-activations.
    r : float > 0, default 1.0
        Threshold of the activation.
    a : float > 0, default 0.5
        Half-width of the window.

    Returns
    -------
    ndarray
        0/1 values, same shape and dtype as ``x``.

    References
    ----------
    Deng et al. (2018), arXiv:1705.09283; code (gradient of ``hard_sigmoid`` inside
    ``discrete_neuron_3states``).
    """
    x = float_array(x, "x")
    r = real_number(r, "r", low=0.0, low_open=True)
    a = real_number(a, "a", low=0.0, low_open=True)
    ax = np.abs(x)
    return ((ax > r - a) & (ax < r + a)).astype(x.dtype)
