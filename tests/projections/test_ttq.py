"""ttq: t * max|w| threshold, fixed-sparsity mode, least-squares or given asymmetric scales."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.ttq import ttq


def test_hand_built_least_squares_scales():
    # max|w| = 4, t = 0.25 -> Delta = 1: positives > 1: {4, 2} -> W_p = 3; negatives < -1: {-1.5}
    w = np.array([4.0, 2.0, 1.0, -1.0, -1.5, 0.5], dtype=np.float32)
    t = ttq(w, t=0.25)
    np.testing.assert_array_equal(t.codes, [1, 1, 0, 0, -1, 0])  # +-1.0 sit on Delta -> 0
    assert t.alpha_pos == np.float32(3.0) and t.alpha_neg == np.float32(1.5)
    assert not t.symmetric and t.dtype == np.float32
    np.testing.assert_array_equal(t.dense(), [3.0, 3.0, 0.0, 0.0, -1.5, 0.0])


def test_given_scales_are_used_verbatim():
    w = np.array([4.0, -3.0, 0.1])
    t = ttq(w, alpha_pos=0.5, alpha_neg=2.0)
    np.testing.assert_array_equal(t.dense(), [0.5, -2.0, 0.0])


def test_one_sided_tensor_has_zero_empty_side_scale():
    t = ttq(np.array([1.0, 2.0, 0.0]))
    assert t.alpha_neg == 0.0 and t.alpha_pos == 1.5


@given(
    hnp.arrays(np.float64, st.integers(1, 300), elements=st.floats(-1, 1), unique=True),
    st.floats(0, 1),
)
def test_sparsity_mode_hits_the_requested_fraction(w, p):
    t = ttq(w, sparsity=p)
    n_zero = int(round(p * w.size))
    extra_zeros = int(np.count_nonzero(w == 0))  # an exact zero is always code 0
    assert n_zero <= np.count_nonzero(t.codes == 0) <= max(n_zero, n_zero + extra_zeros)
    kept, dropped = np.abs(w)[t.codes != 0], np.abs(w)[t.codes == 0]
    if kept.size and dropped.size:
        assert kept.min() > dropped.max()  # a threshold rule on |w|


def test_sparsity_on_a_large_tensor():
    w = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    for p in (0.0, 0.3, 0.5, 0.9, 1.0):
        assert ttq(w, sparsity=p).sparsity == p


def test_channel_granularity():
    w = np.array([[1.0, -0.01, 0.5], [100.0, -50.0, 1.0]])
    t = ttq(w, t=0.05, granularity="channel")
    np.testing.assert_array_equal(t.codes, [[1, 0, 1], [1, -1, 0]])
    np.testing.assert_array_equal(t.alpha_pos.ravel(), [0.75, 100.0])


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    [
        ({"w": np.array([np.nan, 1.0])}, ValueError, "w"),
        ({"w": np.array([1, 2])}, TypeError, "w"),
        ({"w": np.ones(2), "t": 1.0}, ValueError, "t"),
        ({"w": np.ones(2), "t": -0.01}, ValueError, "t"),
        ({"w": np.ones(2), "sparsity": 1.5}, ValueError, "sparsity"),
        ({"w": np.ones(2), "alpha_pos": -1.0}, ValueError, "alpha_pos"),
        ({"w": np.ones(2), "alpha_neg": float("nan")}, ValueError, "alpha_neg"),
    ],
)
def test_bad_inputs(kwargs, error, word):
    with pytest.raises(error, match=word):
        ttq(**kwargs)
