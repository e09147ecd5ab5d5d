"""proxquant: the code's >= tie rule, survivor means, the ternary and L1 prox operators."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.proxquant import prox_soft, prox_ternary, proxquant

vectors = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
    elements=st.floats(-10, 10, allow_subnormal=False),
)
lams = st.floats(0, 1e3, allow_subnormal=False)


def ternarize_by_hand(values):
    """The official ``ternarize`` written as a loop (Delta = 0.7 mean|v|, >= keeps ties)."""
    delta = 0.7 * sum(abs(v) for v in values) / len(values)
    pos = [v for v in values if v >= delta]
    neg = [v for v in values if v <= -delta]
    out = []
    for v in values:
        if delta > 0 and v >= delta:
            out.append(sum(pos) / len(pos))
        elif delta > 0 and v <= -delta:
            out.append(sum(neg) / len(neg))
        else:
            out.append(0.0)
    return out


@given(vectors)
def test_matches_the_official_rule(w):
    got = proxquant(w).dense().ravel()
    np.testing.assert_allclose(got, ternarize_by_hand(w.ravel().tolist()), rtol=1e-12, atol=0)


def test_hand_built():
    # mean|w| = 5/6, Delta = 0.5833: positives {2, 0.7} -> 1.35, negatives {-1} -> 1.0
    t = proxquant(np.array([2.0, 0.7, 0.3, -1.0, -0.5, -0.5]))
    np.testing.assert_array_equal(t.codes, [1, 1, 0, -1, 0, 0])
    assert t.alpha_pos == pytest.approx(1.35) and t.alpha_neg == pytest.approx(1.0)
    assert not t.symmetric


def test_ties_at_delta_are_kept_unlike_twn():
    # |w| = [1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0, 0]: sum 4, mean 0.4, Delta = 0.28 -> no tie.
    # Build mean|w| = 10/7 so Delta = 1.0 exactly sits on the entries equal to 1.
    w = np.array([1.0, -1.0, 4.0, 4.0, 0.0, 0.0, 0.0])  # sum|w| = 10, n = 7, Delta = 0.7*10/7
    assert 0.7 * np.abs(w).mean() == 1.0
    np.testing.assert_array_equal(proxquant(w).codes, [1, -1, 1, 1, 0, 0, 0])


def test_all_zero_and_one_sided():
    t = proxquant(np.zeros((2, 3), dtype=np.float32))
    assert np.all(t.codes == 0) and t.dtype == np.float32 and np.all(np.isfinite(t.dense()))
    t = proxquant(np.array([1.0, 2.0, 3.0]))
    assert t.alpha_neg == 0.0


@given(vectors, lams)
def test_prox_ternary_stationarity_and_segment(v, lam):
    q = proxquant(v).dense()
    x = prox_ternary(v, lam)
    scale = np.maximum(np.abs(v), np.abs(q)) + 1e-300
    # (x - v) + lam (x - q) = 0
    np.testing.assert_array_less(
        np.abs((x - v) + lam * (x - q)), 1e-12 * (1 + lam) * scale + 1e-300
    )
    # x on the segment [v, q], and ||x - q|| = ||v - q|| / (1 + lam)
    lo, hi = np.minimum(v, q), np.maximum(v, q)
    assert np.all(x >= lo - 1e-12 * scale) and np.all(x <= hi + 1e-12 * scale)
    np.testing.assert_allclose(
        np.linalg.norm(x - q),
        np.linalg.norm(v - q) / (1 + lam),
        rtol=1e-9,
        atol=1e-14 * float(np.linalg.norm(scale)),
    )


@given(vectors)
def test_prox_ternary_limits(v):
    np.testing.assert_array_equal(prox_ternary(v, 0.0), v)
    q = proxquant(v).dense()
    np.testing.assert_allclose(prox_ternary(v, 1e12), q, rtol=1e-9, atol=1e-10)


@given(vectors, lams)
def test_prox_soft_moves_towards_q_by_lam_without_overshoot(v, lam):
    q = proxquant(v).dense()
    x = prox_soft(v, lam)
    np.testing.assert_allclose(np.abs(x - q), np.maximum(np.abs(v - q) - lam, 0), atol=1e-12)
    assert np.all(np.sign(x - q) * np.sign(v - q) >= 0)  # same side of q as v (or on it)


def test_prox_dtype_and_errors():
    v = np.random.default_rng(0).standard_normal(10).astype(np.float32)
    assert prox_ternary(v, 0.5).dtype == np.float32 and prox_soft(v, 0.5).dtype == np.float32
    with pytest.raises(ValueError, match="lam"):
        prox_ternary(v, -1.0)
    with pytest.raises(TypeError, match="lam"):
        prox_soft(v, "1")
    with pytest.raises(ValueError, match="v"):
        prox_soft(np.array([np.nan]), 1.0)
    with pytest.raises(TypeError, match="w"):
        proxquant(np.array([1, 2]))
    with pytest.raises(ValueError, match="granularity"):
        proxquant(np.ones(2), granularity="group")
