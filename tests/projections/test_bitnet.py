"""bitnet: absmean codes, Pi(Pi(w)) = p Pi(w), half-to-even ties, int8 absmax activations."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.bitnet import bitnet, bitnet_activation

vectors = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
    elements=st.floats(-10, 10, allow_subnormal=False),
)


@given(vectors)
def test_reprojection_multiplies_by_the_density(w):
    t = bitnet(w)
    p = np.count_nonzero(t.codes) / t.codes.size
    again = bitnet(t.dense())
    np.testing.assert_array_equal(again.codes, t.codes)
    np.testing.assert_allclose(again.dense(), p * t.dense(), rtol=1e-12)


@given(vectors)
def test_nonzero_iff_above_half_gamma_away_from_ties(w):
    gamma = float(np.mean(np.abs(w)))
    t = bitnet(w, eps=0.0)
    half = gamma / 2
    clear = np.abs(np.abs(w) - half) > 1e-9 * (gamma + 1e-300)
    np.testing.assert_array_equal((t.codes != 0)[clear], (np.abs(w) > half)[clear])
    assert float(t.alpha_pos) == pytest.approx(gamma, rel=1e-12)


def test_round_half_to_even_at_exactly_half_is_zero():
    # gamma = mean(|0.5|, |1.5|) = 1; w / gamma = 0.5 -> 0 (half to even), 1.5 -> 2 -> clipped 1.
    t = bitnet(np.array([0.5, 1.5, -0.5, -1.5]), eps=0.0)
    np.testing.assert_array_equal(t.codes, [0, 1, 0, -1])


def test_not_idempotent_concrete():
    w = np.array([1.0, 0.1, -2.0, 0.0], dtype=np.float32)
    t = bitnet(w)
    assert t.codes.tolist() == [1, 0, -1, 0]
    assert bitnet(t.dense()).alpha_pos == pytest.approx(0.5 * float(t.alpha_pos), rel=1e-6)


def test_eps_and_zero_input():
    t = bitnet(np.zeros((2, 3), dtype=np.float32))
    assert np.all(t.codes == 0) and t.alpha_pos == 0 and t.dtype == np.float32
    t = bitnet(np.zeros(3), eps=0.0)
    assert np.all(t.codes == 0) and np.all(np.isfinite(t.dense()))
    # eps dominates tiny weights: mean|w| = 1e-6 << 1e-5, every code rounds to 0.
    assert np.all(bitnet(np.array([1e-6, -1e-6])).codes == 0)


def test_activation_against_a_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 16)).astype(np.float32)
    x[1, 2] = 0.0  # an all-zero token
    q, s = bitnet_activation(x)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (3, 4, 1)
    for idx in np.ndindex(3, 4):
        row = x[idx].astype(np.float64)
        scale = 127.0 / max(np.abs(row).max(), 1e-5)
        expected = np.clip(np.round(row * scale), -128, 127)
        np.testing.assert_array_equal(q[idx], expected)
        assert s[idx][0] == pytest.approx(scale, rel=1e-6)
    assert np.all(q[1, 2] == 0)
    err = np.abs(x - q / s)
    assert np.all(err <= 0.5 / s + 1e-7)
    assert np.abs(q).max() == 127


@pytest.mark.parametrize(
    ("fn", "kwargs", "error", "word"),
    [
        (bitnet, {"w": np.array([np.nan])}, ValueError, "w"),
        (bitnet, {"w": np.array([1, 2])}, TypeError, "w"),
        (bitnet, {"w": np.ones(2), "eps": -1e-5}, ValueError, "eps"),
        (bitnet_activation, {"x": np.array([np.inf])}, ValueError, "x"),
        (bitnet_activation, {"x": np.ones(2), "eps": 0.0}, ValueError, "eps"),
    ],
)
def test_bad_inputs(fn, kwargs, error, word):
    with pytest.raises(error, match=word):
        fn(**kwargs)
