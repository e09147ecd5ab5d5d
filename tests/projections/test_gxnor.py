"""GXNOR-Net (Deng et al. 2018): the discrete space Z_N, nearest-state projection, and the
discrete state transition (DST)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.gxnor import (
    gxnor,
    gxnor_dst_update,
    gxnor_snap,
    gxnor_states,
    gxnor_transition_probability,
)


def test_states():
    assert np.array_equal(gxnor_states(1, 1.0), [-1, 0, 1])
    assert np.array_equal(gxnor_states(2, 2.0), [-2, -1, 0, 1, 2])
    assert np.allclose(gxnor_states(3, 1.0), np.linspace(-1, 1, 9))


def test_ternary_projection_hand_case():
    w = np.array([-3.0, -0.51, -0.5, -0.2, 0.0, 0.5, 0.5000001, 0.9])
    t = gxnor(w)
    assert np.array_equal(t.codes, [-1, -1, 0, 0, 0, 0, 1, 1])
    assert float(t.alpha_pos) == 1.0
    t = gxnor(w.astype(np.float32), H=0.25)
    assert np.array_equal(t.codes, [-1, -1, -1, -1, 0, 1, 1, 1]) and t.dtype == np.float32
    assert float(t.alpha_pos) == 0.25


@given(
    hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(-5, 5)),
    st.integers(1, 4),
    st.sampled_from([0.5, 1.0, 3.0]),
)
def test_snap_is_nearest_state_with_ties_to_smaller_magnitude(w, n_bits, H):
    states = gxnor_states(n_bits, H)
    got = gxnor_snap(w, n_bits, H)
    for wi, gi in zip(w, got):
        d = np.abs(np.clip(wi, -H, H) - states)
        best = states[d <= d.min() + 1e-12]
        assert np.isclose(gi, best[np.argmin(np.abs(best))], atol=1e-12)


def test_projection_refuses_multilevel_space():
    with pytest.raises(ValueError, match="gxnor_snap"):
        gxnor(np.ones(3), n_bits=2)


# ------------------------------------------------------------------ DST


@given(st.integers(1, 3), st.sampled_from([0.5, 1.0, 2.0]), st.integers(0, 2**31), st.data())
def test_dst_iterates_stay_on_the_grid_and_in_range(n_bits, H, seed, data):
    rng = np.random.default_rng(seed)
    states = gxnor_states(n_bits, H)
    w = rng.choice(states, size=20)
    for _ in range(5):
        delta = data.draw(hnp.arrays(np.float64, 20, elements=st.floats(-3 * H, 3 * H)))
        w = gxnor_dst_update(w, delta, rng, n_bits=n_bits, H=H)
        assert np.all(np.abs(w) <= H)
        assert np.all(np.min(np.abs(w[:, None] - states[None, :]), axis=1) <= 1e-12)


def test_dst_moves_whole_steps_plus_one_stochastic_step():
    # N=2, H=2: L = 1. Delta = 1.3 from 0: one whole step, then a second with prob tanh(0.9)
    rng = np.random.default_rng(0)
    out = gxnor_dst_update(np.zeros(10_000), np.full(10_000, 1.3), rng, n_bits=2, H=2.0)
    assert set(np.unique(out)) == {1.0, 2.0}
    out = gxnor_dst_update(np.zeros(1000), np.full(1000, -1.3), rng, n_bits=2, H=2.0)
    assert set(np.unique(out)) == {-1.0, -2.0}
    assert np.all(gxnor_dst_update(np.ones(5), np.zeros(5), rng) == 1.0)  # no update, no move
    assert np.all(gxnor_dst_update(np.ones(5), np.full(5, 7.0), rng) == 1.0)  # clipped at H


def test_dst_linear_tau_is_unbiased_within_5_sigma():
    # N=3, H=4: L = 1, start at 0 so no clipping for |Delta| < 3
    n = 100_000
    deltas = np.array([0.3, -0.7, 1.25, -2.5, 0.05])
    out = gxnor_dst_update(
        np.zeros((n, 5)),
        np.broadcast_to(deltas, (n, 5)).copy(),
        np.random.default_rng(1),
        n_bits=3,
        H=4.0,
        tau="linear",
    )
    p = np.abs(deltas - np.trunc(deltas))  # fractional part = remainder / L
    assert np.all(np.abs(out.mean(axis=0) - deltas) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_dst_tanh_tau_is_biased_upward_as_in_methods_p13():
    # Delta = 0.3 with L = 1 from W = 0: E = tanh(3 * 0.3) = 0.7163
    n = 100_000
    out = gxnor_dst_update(np.zeros(n), np.full(n, 0.3), np.random.default_rng(2))
    p = np.tanh(0.9)
    assert abs(p - 0.7163) < 1e-4
    assert abs(out.mean() - p) <= 5 * np.sqrt(p * (1 - p) / n)
    assert out.mean() > 0.3 + 0.1


def test_transition_probability():
    nu = np.array([0.0, 0.25, -0.5, 0.999])
    assert np.allclose(gxnor_transition_probability(nu, 1.0), np.tanh(3 * np.abs(nu)))
    assert np.allclose(gxnor_transition_probability(nu, 0.5, tau="linear"), [0, 0.5, 1, 1])
    assert np.allclose(gxnor_transition_probability(nu, 1.0, m=1.0), np.tanh(np.abs(nu)))


def test_dst_same_seed_same_result_and_dtype():
    w = np.array([-1.0, 0.0, 1.0, 0.0], dtype=np.float32)
    d = np.array([0.4, -0.4, -0.2, 0.9], dtype=np.float32)
    a = gxnor_dst_update(w, d, np.random.default_rng(5))
    assert a.dtype == np.float32
    assert np.array_equal(a, gxnor_dst_update(w, d, np.random.default_rng(5)))


def test_dst_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="must lie on Z_1"):
        gxnor_dst_update(np.array([0.3, 0.0]), np.zeros(2), rng)
    with pytest.raises(ValueError, match="must lie on Z_1"):
        gxnor_dst_update(np.array([2.0, 0.0]), np.zeros(2), rng)
    with pytest.raises(ValueError, match="shape"):
        gxnor_dst_update(np.zeros(2), np.zeros(3), rng)
    with pytest.raises(TypeError, match="rng"):
        gxnor_dst_update(np.zeros(2), np.zeros(2), 0)
    with pytest.raises(ValueError, match="tau"):
        gxnor_dst_update(np.zeros(2), np.zeros(2), rng, tau="sigmoid")
    with pytest.raises(ValueError, match="H"):
        gxnor(np.zeros(2), H=0.0)
    with pytest.raises(ValueError, match="n_bits"):
        gxnor_snap(np.zeros(2), n_bits=0)
