"""exact: equal to brute force over all 3^n codes, never worse than TWN or binary, P10 constants."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.exact import (
    _exact_row_buckets,
    _exact_rows,
    _exact_rows_sorted,
    exact,
)
from ternref.projections.twn import twn


def all_codes(n):
    return np.array(list(itertools.product((-1, 0, 1), repeat=n)), dtype=np.float64)


CODES = {n: all_codes(n) for n in range(1, 9)}


def brute_force_error(w, d=None):
    """min over all 3^n codes T of min_alpha>=0 sum d (w - alpha T)^2, alpha in closed form."""
    w = np.asarray(w, dtype=np.float64).ravel()
    d = np.ones_like(w) if d is None else np.asarray(d, dtype=np.float64).ravel()
    T = CODES[w.size]
    num = T @ (d * w)  # sum d w T
    den = (T * T) @ d  # sum d T^2
    alpha = np.maximum(np.divide(num, den, out=np.zeros_like(num), where=den > 0), 0)
    err = ((w[None, :] - alpha[:, None] * T) ** 2) @ d
    return float(err.min())


def error(w, t, d=None):
    diff = np.asarray(w, np.float64) - t.dense().astype(np.float64)
    return float(np.sum((1.0 if d is None else d) * diff * diff))


small_vectors = hnp.arrays(
    np.float64,
    st.integers(1, 8),
    elements=st.one_of(
        st.sampled_from([0.0, 1.0, -1.0, 0.5, -0.5, 2.0]),
        st.floats(-10, 10, allow_subnormal=False),
    ),
)


@given(small_vectors)
def test_exact_equals_brute_force(w):
    t = exact(w)
    best = brute_force_error(w)
    scale = float(np.sum(w * w)) + 1e-300
    assert error(w, t) <= best + 1e-9 * scale
    assert error(w, t) >= best - 1e-9 * scale


@given(small_vectors, st.data())
def test_weighted_exact_equals_brute_force(w, data):
    d = data.draw(
        hnp.arrays(np.float64, w.shape, elements=st.floats(0.01, 10, allow_subnormal=False))
    )
    t = exact(w, d=d)
    best = brute_force_error(w, d)
    scale = float(np.sum(d * w * w)) + 1e-300
    assert abs(error(w, t, d) - best) <= 1e-9 * scale


@given(hnp.arrays(np.float64, st.integers(1, 60), elements=st.floats(-5, 5)))
def test_exact_never_worse_than_twn_or_binary(w):
    e = error(w, exact(w))
    e_twn = error(w, twn(w))
    binary = float(np.sum(w * w)) - float(np.sum(np.abs(w))) ** 2 / w.size  # alpha = mean|w|
    tol = 1e-9 * (float(np.sum(w * w)) + 1e-300)
    assert e <= e_twn + tol
    assert e <= binary + tol
    assert 0.0 <= e <= float(np.sum(w * w)) + tol


# ------------------------------------------------------------- bucketed search == full sort
# Large rows skip the full sort (_exact_row_buckets); it must find the optimum the sorted scan
# finds: the same support, the same scale up to the order of the float64 additions.
row_magnitudes = hnp.arrays(
    np.float64,
    st.integers(1, 300),
    elements=st.one_of(
        st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]),  # ties and zeros
        st.floats(0, 10, allow_subnormal=False),
    ),
)


@given(row_magnitudes, st.sampled_from([1, 2, 3, 7, 64, 2048]), st.booleans(), st.data())
def test_bucketed_search_equals_the_full_sort(a, n_buckets, weighted, data):
    d = None
    if weighted:
        d = data.draw(hnp.arrays(np.float64, a.shape, elements=st.floats(0.01, 10)))
    keep, alpha = _exact_row_buckets(a, d, n_buckets)
    want_keep, want_alpha = _exact_rows_sorted(a[None], None if d is None else d[None])
    np.testing.assert_array_equal(keep, want_keep[0])
    assert alpha == pytest.approx(float(want_alpha[0]), rel=1e-12, abs=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_bucketed_search_on_large_rows_like_a_layer(dtype, weighted):
    # what LAT projects at every step: uniform-initialised fc weights, d = sqrt(v) + 1e-8
    rng = np.random.default_rng(int(weighted))
    for shape, spread in [((2, 50_000), 0.025), ((1, 30_000), 1.0)]:
        w = rng.uniform(-spread, spread, shape).astype(dtype)
        w[:, :100] = np.round(w[:, :100], 2)  # some exact ties
        a = np.abs(w)
        d = (np.sqrt(rng.uniform(0, 1e-6, shape)) + 1e-8).astype(dtype) if weighted else None
        keep, alpha = _exact_rows(a, d)  # rows this long take the bucketed search
        want_keep, want_alpha = _exact_rows_sorted(a, d)
        np.testing.assert_array_equal(keep, want_keep)
        np.testing.assert_allclose(alpha, want_alpha, rtol=1e-12)


def test_hand_built_and_threshold_rule():
    # |w| sorted 3, 2.5, 1, 0.2: S_k^2/k = 9, 15.125, 14.08, 11.0 -> k* = 2, alpha = 2.75
    w = np.array([3.0, -1.0, 0.2, -2.5, 0.0], dtype=np.float32)
    t = exact(w)
    np.testing.assert_array_equal(t.codes, [1, 0, 0, -1, 0])
    assert t.alpha_pos == np.float32(2.75)
    assert t.dtype == np.float32


def test_ties_are_never_split():
    # Three equal magnitudes: a prefix of one or two of them would not be a threshold rule.
    w = np.array([4.0, 1.0, -1.0, 1.0, 0.0])
    t = exact(w)
    kept = np.abs(w)[t.codes != 0]
    dropped = np.abs(w)[t.codes == 0]
    assert kept.min() > dropped.max()
    # S^2/k: k=1 -> 16, k=4 -> 49/4 = 12.25, so only 4 is kept.
    np.testing.assert_array_equal(t.codes, [1, 0, 0, 0, 0])
    w = np.array([2.0, 1.5, -1.5, 1.5])  # k=1: 4, k=4: 6.5^2/4 = 10.56 -> all kept
    np.testing.assert_array_equal(exact(w).codes, [1, 1, -1, 1])


def test_all_zero_and_single_element():
    t = exact(np.zeros((3, 2), dtype=np.float32))
    assert np.all(t.codes == 0) and t.alpha_pos == 0 and t.dtype == np.float32
    t = exact(np.array([-0.3]))
    assert t.codes.tolist() == [-1] and t.alpha_pos == 0.3


def test_channel_granularity_is_per_row_tensor():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 2, 2)).astype(np.float32)
    t = exact(w, granularity="channel")
    assert t.alpha_pos.shape == (5, 1, 1, 1)
    for i in range(5):
        ti = exact(w[i])
        np.testing.assert_array_equal(t.codes[i], ti.codes)
        assert t.alpha_pos[i, 0, 0, 0] == ti.alpha_pos


@pytest.mark.parametrize(
    ("name", "sample", "delta_over_mean", "alpha_over_mean", "zeros"),
    [
        ("gaussian", lambda r, n: r.standard_normal(n), 0.767, 1.53, 0.46),
        ("uniform", lambda r, n: r.uniform(-1, 1, n), 2 / 3, 4 / 3, 1 / 3),
        ("laplace", lambda r, n: r.laplace(0, 1, n), 1.0, 2.0, 0.63),
    ],
)
def test_distribution_constants(name, sample, delta_over_mean, alpha_over_mean, zeros):
    """methods.md P10 on 10^6 seeded samples (constants derived independently of this code)."""
    w = sample(np.random.default_rng(1234), 10**6).astype(np.float32)
    t = exact(w)
    mean_abs = float(np.mean(np.abs(w), dtype=np.float64))
    delta = float(np.abs(w)[t.codes == 0].max())  # Delta* = a_(k*+1)
    assert delta / mean_abs == pytest.approx(delta_over_mean, rel=0.01)
    assert float(t.alpha_pos) / mean_abs == pytest.approx(alpha_over_mean, rel=0.01)
    assert t.sparsity == pytest.approx(zeros, abs=0.01)
    # P8.4 fixed point: a_(k*+1) <= alpha*/2 <= a_(k*)
    assert delta <= float(t.alpha_pos) / 2 <= float(np.abs(w)[t.codes != 0].min())


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    [
        ({"w": np.array([1.0, np.nan])}, ValueError, "w"),
        ({"w": np.array([1.0, np.inf])}, ValueError, "w"),
        ({"w": np.array([], dtype=np.float32)}, ValueError, "w"),
        ({"w": np.array([1, 2, 3])}, TypeError, "w"),
        ({"w": np.array(1.0)}, ValueError, "w"),
        ({"w": np.ones(3), "granularity": "group"}, ValueError, "granularity"),
        ({"w": np.ones(3), "d": np.ones(2)}, ValueError, "d"),
        ({"w": np.ones(3), "d": np.array([1.0, 0.0, 1.0])}, ValueError, "d"),
        ({"w": np.ones(3), "d": np.array([1, 1, 1])}, TypeError, "d"),
    ],
)
def test_bad_inputs(kwargs, error, word):
    with pytest.raises(error, match=word):
        exact(**kwargs)
