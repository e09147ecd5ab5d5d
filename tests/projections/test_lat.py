"""lat: weighted brute force, d = c I gives the codes of exact, scaling d, LAT_a descent."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.exact import exact
from ternref.projections.lat import lat, lat_findalpha, lat_step, weighted_error

CODES = {
    n: np.array(list(itertools.product((-1, 0, 1), repeat=n)), dtype=np.float64)
    for n in range(1, 8)
}


def brute_force(w, d, two_scales):
    """min over all 3^n codes of the d-weighted error, with the closed-form scale(s) per code."""
    T = CODES[w.size]
    if two_scales:
        P, N = (T > 0).astype(float), (T < 0).astype(float)
        ap = np.maximum(np.divide(P @ (d * w), P @ d, out=np.zeros(len(T)), where=P @ d > 0), 0)
        an = np.maximum(np.divide(-(N @ (d * w)), N @ d, out=np.zeros(len(T)), where=N @ d > 0), 0)
        w_hat = ap[:, None] * P - an[:, None] * N
    else:
        den = (T * T) @ d
        a = np.maximum(np.divide(T @ (d * w), den, out=np.zeros(len(T)), where=den > 0), 0)
        w_hat = a[:, None] * T
    return float((((w - w_hat) ** 2) @ d).min())


pairs = st.integers(1, 7).flatmap(
    lambda n: st.tuples(
        hnp.arrays(np.float64, n, elements=st.floats(-4, 4, allow_subnormal=False)),
        hnp.arrays(np.float64, n, elements=st.floats(0.05, 5, allow_subnormal=False)),
    )
)


@given(pairs, st.booleans())
def test_exact_variant_equals_weighted_brute_force(wd, two_scales):
    w, d = wd
    t = lat(w, d, two_scales=two_scales)
    best = brute_force(w, d, two_scales)
    assert abs(weighted_error(w, d, t) - best) <= 1e-9 * (float(np.sum(d * w * w)) + 1e-300)
    assert t.symmetric or two_scales


@given(
    hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(-3, 3)),
    st.floats(0.01, 100),
)
def test_constant_metric_gives_the_codes_of_exact(w, c):
    t = lat(w, np.full(w.shape, c))
    e = exact(w)
    np.testing.assert_array_equal(t.codes, e.codes)
    assert float(t.alpha_pos) == pytest.approx(float(e.alpha_pos), rel=1e-12)


@given(pairs, st.sampled_from([0.5, 3.0, 1e-3, 1024.0]), st.booleans())
def test_exact_invariant_to_scaling_d(wd, c, two_scales):
    w, d = wd
    a, b = lat(w, d, two_scales=two_scales), lat(w, c * d, two_scales=two_scales)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_allclose(a.alpha_pos, b.alpha_pos, rtol=1e-12)
    np.testing.assert_allclose(a.alpha_neg, b.alpha_neg, rtol=1e-12)


@given(pairs, st.booleans(), st.data())
def test_alternation_never_increases_the_weighted_error(wd, two_scales, data):
    w, d = wd
    codes = np.array(
        data.draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=w.size, max_size=w.size)),
        dtype=np.int8,
    )
    # Error of the starting point: the given codes with their best scale(s) (step's first half).
    T = codes.astype(float)
    if two_scales:
        P, N = T > 0, T < 0
        ap = max(np.sum(d * w * P) / np.sum(d * P), 0) if P.any() else 0.0
        an = max(-np.sum(d * w * N) / np.sum(d * N), 0) if N.any() else 0.0
        prev = float(np.sum(d * (w - ap * P + an * N) ** 2))
    else:
        den = np.sum(d * T * T)
        a = max(np.sum(d * w * T) / den, 0) if den > 0 else 0.0
        prev = float(np.sum(d * (w - a * T) ** 2))
    tol = 1e-12 * (float(np.sum(d * w * w)) + 1e-300)
    for _ in range(6):
        t = lat_step(w, d, codes, two_scales=two_scales)
        err = weighted_error(w, d, t)
        assert err <= prev + tol
        prev, codes = err, t.codes


def test_approx_reaches_the_exact_optimum_on_gaussian_data():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(5000)
    d = rng.uniform(0.5, 2.0, w.shape)
    e_a = weighted_error(w, d, lat(w, d, variant="approx"))
    e_e = weighted_error(w, d, lat(w, d))
    assert e_e <= e_a <= e_e * 1.001


def test_findalpha_official_rule():
    rng = np.random.default_rng(1)
    w = rng.standard_normal(200)
    d = rng.uniform(0.5, 2.0, w.shape)
    # A strict crossing with k < n exists here, so the official rule finds the optimum.
    assert lat_findalpha(w, d) == lat(w, d)
    # The official rule never considers the full support: n = 1 falls back to 0.7 |w|.
    t = lat_findalpha(np.array([2.0]))
    assert t.alpha_pos == pytest.approx(1.4) and lat(np.array([2.0])).alpha_pos == 2.0


def test_two_scales_hand_built():
    w = np.array([3.0, 1.0, -0.2, -0.3])
    t = lat(w, two_scales=True)
    # positives {3, 1}: k=1 -> 9, k=2 -> 8: keep {3}; negatives {0.3, 0.2}: k=2 -> 0.125 > 0.09.
    np.testing.assert_array_equal(t.codes, [1, 0, -1, -1])
    assert t.alpha_pos == 3.0 and t.alpha_neg == pytest.approx(0.25)


def test_zero_input_is_safe():
    for variant in ("exact", "approx"):
        for two in (False, True):
            t = lat(np.zeros((2, 2), np.float32), variant=variant, two_scales=two)
            assert np.all(t.codes == 0) and np.all(np.isfinite(t.dense()))
            assert t.dtype == np.float32


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    [
        ({"w": np.array([np.nan])}, ValueError, "w"),
        ({"w": np.ones(3), "d": np.ones(3) * -1}, ValueError, "d"),
        ({"w": np.ones(3), "d": np.ones(4)}, ValueError, "d"),
        ({"w": np.ones(3), "variant": "fast"}, ValueError, "variant"),
        ({"w": np.ones(3), "max_iter": 0}, ValueError, "max_iter"),
        ({"w": np.ones(3), "tol": -1.0}, ValueError, "tol"),
        ({"w": np.ones(3), "two_scales": 1}, TypeError, "two_scales"),
        ({"w": np.ones(3), "variant": "approx", "init_codes": np.ones(3)}, TypeError, "init_codes"),
        (
            {"w": np.ones(3), "variant": "approx", "init_codes": np.full(3, 2)},
            ValueError,
            "init_codes",
        ),
    ],
)
def test_bad_inputs(kwargs, error, word):
    with pytest.raises(error, match=word):
        lat(**kwargs)
