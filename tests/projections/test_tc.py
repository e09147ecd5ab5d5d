"""TernaryConnect (Lin et al. 2016): statistics of the stochastic sample, test-time mode, and the
power-of-two rounding of quantized back-propagation. Expected values come from the definitions
(E[t] = w, Var[t] = |w|(1 - |w|)) and from brute-force searches, never from the functions."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.tc import power_of_two, tc, tc_deterministic

W_GRID = np.array([-1.0, -0.9, -0.5, -0.25, -0.01, 0.0, 0.1, 0.3, 0.5, 0.77, 0.99, 1.0])
N_SAMPLES = 100_000


def _samples(w, seed=0):
    tiled = np.broadcast_to(w, (N_SAMPLES, w.size)).copy()
    return tc(tiled, np.random.default_rng(seed)).dense()


def test_mean_and_variance_match_bernoulli_within_5_sigma():
    t = _samples(W_GRID)
    var = np.abs(W_GRID) * (1 - np.abs(W_GRID))
    # E[t] = w: the sample mean has std sqrt(var / K)
    assert np.all(np.abs(t.mean(axis=0) - W_GRID) <= 5 * np.sqrt(var / N_SAMPLES) + 1e-12)
    # Var[t] = |w|(1 - |w|): the sample variance has std <= sqrt(E[(t - w)^4] / K) <= sqrt(|w| / K)
    bound = 5 * np.sqrt(np.abs(W_GRID) / N_SAMPLES) + 1e-12
    assert np.all(np.abs(t.var(axis=0) - var) <= bound)


def test_samples_lie_in_zero_or_sign_and_extremes_are_deterministic():
    t = _samples(W_GRID, seed=3)
    assert set(np.unique(t)) <= {-1.0, 0.0, 1.0}
    assert np.all(t * np.sign(W_GRID) >= 0)  # never the opposite sign
    assert np.all(t[:, W_GRID == 0] == 0)
    assert np.all(t[:, W_GRID == 1] == 1) and np.all(t[:, W_GRID == -1] == -1)


def test_values_beyond_one_are_clipped_first():
    t = tc(np.array([3.0, -7.0, 1.5]), np.random.default_rng(0))
    assert np.array_equal(t.dense(), [1.0, -1.0, 1.0])


def test_same_seed_same_sample_and_scale_is_one_in_input_dtype():
    w = np.random.default_rng(1).uniform(-1, 1, size=(16, 9)).astype(np.float32)
    a = tc(w, np.random.default_rng(42))
    b = tc(w, np.random.default_rng(42))
    c = tc(w, np.random.default_rng(43))
    assert a == b
    assert not np.array_equal(a.codes, c.codes)
    assert a.dtype == np.float32 and float(a.alpha_pos) == 1.0


def test_all_zero_gives_zero():
    t = tc(np.zeros((3, 4), dtype=np.float32), np.random.default_rng(0))
    assert np.all(t.dense() == 0) and np.all(np.isfinite(t.dense()))


def test_deterministic_variant_is_the_mode_with_ties_to_zero():
    w = np.array([-2.0, -0.51, -0.5, -0.49, 0.0, 0.49, 0.5, 0.5000001, 0.9, 1.0, 4.0])
    expected = [-1, -1, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert np.array_equal(tc_deterministic(w).codes, expected)
    assert float(tc_deterministic(w).alpha_pos) == 1.0


@given(hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(-4, 4)))
def test_deterministic_variant_is_most_probable_sample(w):
    # mode of {sign w with prob |w_c|, 0 with prob 1 - |w_c|}: sign w iff |w_c| > 1/2 (tie -> 0)
    p = np.minimum(np.abs(w), 1.0)
    expected = np.where(p > 1 - p, np.sign(w), 0.0)
    assert np.array_equal(tc_deterministic(w).dense(), expected)


# ------------------------------------------------------------------ power of two


@given(hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(1e-30, 1e30)))
def test_power_of_two_nearest_in_log_domain_by_brute_force(mag):
    x = mag * np.where(np.arange(mag.size) % 2, -1.0, 1.0)
    q = power_of_two(x)
    for xi, qi in zip(x, q):
        candidates = np.arange(-110, 110)
        dist = np.abs(np.log2(abs(xi)) - candidates)
        best = candidates[dist <= dist.min() + 1e-12]
        # ties (|x| = sqrt(2) 2^k) round up
        assert qi == np.sign(xi) * 2.0 ** best.max()


def test_power_of_two_exact_cases_and_zero():
    x = np.array([0.0, 1.0, -4.0, 3.0, 2.8, -0.3, 2 * np.sqrt(2) * (1 + 1e-12)])
    assert np.array_equal(power_of_two(x), [0.0, 1.0, -4.0, 4.0, 2.0, -0.25, 4.0])
    assert np.array_equal(power_of_two(x, np.random.default_rng(0))[:3], [0.0, 1.0, -4.0])


def test_power_of_two_exponent_range():
    x = np.array([1e-6, 1000.0, -1000.0, 3.0])
    assert np.array_equal(power_of_two(x, min_exp=-3, max_exp=4), [0.125, 16.0, -16.0, 4.0])
    with pytest.raises(ValueError, match="min_exp"):
        power_of_two(x, min_exp=2, max_exp=1)


def test_power_of_two_stochastic_is_unbiased_between_neighbours():
    x = np.array([3.0, -0.3, 5.5, 1.25, 100.0])
    n = 100_000
    q = power_of_two(np.broadcast_to(x, (n, x.size)).copy(), np.random.default_rng(7))
    lo = 2.0 ** np.floor(np.log2(np.abs(x)))
    assert np.all((np.abs(q) == lo) | (np.abs(q) == 2 * lo))
    assert np.all(np.sign(q) == np.sign(x))
    # |q| - lo is lo * Bernoulli(p), std lo * sqrt(p(1-p)) <= lo / 2
    assert np.all(np.abs(q.mean(axis=0) - x) <= 5 * (lo / 2) / np.sqrt(n))


def test_power_of_two_keeps_dtype():
    assert power_of_two(np.array([3.0], dtype=np.float32)).dtype == np.float32


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("bad_rng", [None, 0, np.random.RandomState(0)])
def test_rng_must_be_a_generator(bad_rng):
    with pytest.raises(TypeError, match="rng"):
        tc(np.zeros(3), bad_rng)


@pytest.mark.parametrize(
    ("w", "err", "msg"),
    [
        (np.array([0.1, np.nan]), ValueError, "finite"),
        (np.array([0.1, np.inf]), ValueError, "finite"),
        (np.zeros(0), ValueError, "empty"),
        (np.array([1, 0, -1]), TypeError, "floating"),
        (np.float64(0.3), ValueError, "at least 1 dimension"),
    ],
)
def test_bad_weights_are_refused(w, err, msg):
    with pytest.raises(err, match=msg):
        tc(w, np.random.default_rng(0))
    with pytest.raises(err, match=msg):
        tc_deterministic(w)
