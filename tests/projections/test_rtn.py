"""RTN (Li et al. 2020): x_hat = alpha t + beta is the nearest of the three reparameterized
levels."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.rtn import rtn, rtn_activation, rtn_codes


def _nearest_level(x, alpha, beta):
    """Brute force: the level of {beta - alpha, beta, beta + alpha} closest to x (ties -> beta)."""
    levels = np.array([beta - alpha, beta, beta + alpha])
    d = np.abs(x - levels)
    best = np.flatnonzero(d == d.min())
    return levels[1] if 1 in best else levels[best[0]]


@given(
    hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(-10, 10)),
    st.floats(0.05, 5),
    st.floats(-3, 3),
)
def test_dense_is_the_nearest_reparameterized_level(x, alpha, beta):
    t = rtn(x, alpha=alpha, beta=beta)
    expected = [_nearest_level(xi, alpha, beta) for xi in x]
    # (x - beta)/alpha in floating point may differ from the exact distance test by one rounding;
    # compare away from the two decision boundaries beta +- alpha/2
    far = np.abs(np.abs(x - beta) - alpha / 2) > 1e-9 * (1 + np.abs(x))
    assert np.allclose(t.dense()[far], np.array(expected)[far], rtol=0, atol=1e-12)
    assert t.offset is not None and float(t.offset) == beta


def test_default_hand_case_and_ties_to_middle_level():
    w = np.array([-0.7, -0.5, 0.2, 0.5, 0.51, 3.0])
    t = rtn(w)
    assert np.array_equal(t.codes, [-1, 0, 0, 0, 1, 1])
    assert np.array_equal(t.dense(), [-1, 0, 0, 0, 1, 1])


def test_offset_shifts_levels_and_threshold():
    w = np.array([0.0, 1.0, 1.75, 2.0, 2.25, 3.1])
    t = rtn(w, alpha=0.5, beta=2.0)
    # u = (w - 2)/0.5 = [-4, -2, -0.5, 0, 0.5, 2.2]
    assert np.array_equal(t.codes, [-1, -1, 0, 0, 0, 1])
    assert np.allclose(t.dense(), [1.5, 1.5, 2.0, 2.0, 2.0, 2.5])


def test_delta_parameter():
    w = np.array([0.2, 0.35, -0.35, 0.3])
    assert np.array_equal(rtn_codes(w, delta=0.3), [0, 1, -1, 0])


def test_per_channel_scale_and_offset():
    w = np.array([[0.2, 0.9, -0.9], [2.0, 4.5, 1.0]], dtype=np.float32)
    t = rtn(w, alpha=np.array([1.0, 2.0]), beta=np.array([0.0, 3.0]))
    assert t.granularity == "channel" and t.dtype == np.float32
    # row 1: u = (w - 3)/2 = [-0.5, 0.75, -1]
    assert np.array_equal(t.codes, [[0, 1, -1], [0, 1, -1]])
    assert np.allclose(t.dense(), [[0, 1, -1], [3, 5, 1]])


def test_activation_matches_the_projection():
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    y = rtn_activation(x, alpha=0.7, beta=-0.2)
    assert y.dtype == np.float32
    assert np.array_equal(y, rtn(x, alpha=0.7, beta=-0.2).dense())
    assert set(np.unique(y)) <= {np.float32(-0.9), np.float32(-0.2), np.float32(0.5)}


def test_zero_input():
    assert np.all(rtn(np.zeros(3)).dense() == 0)
    assert np.all(rtn_activation(np.zeros(3), beta=0.25) == 0.25)


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha must be > 0"):
        rtn(np.ones(3), alpha=0.0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        rtn(np.ones((2, 3)), alpha=np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="alpha must be a scalar or have shape"):
        rtn(np.ones((2, 3)), alpha=np.ones(3))
    with pytest.raises(ValueError, match="same granularity"):
        rtn(np.ones((2, 3)), alpha=np.ones(2), beta=0.0)
    with pytest.raises(ValueError, match="delta"):
        rtn(np.ones(3), delta=-0.1)
    with pytest.raises(ValueError, match="finite"):
        rtn(np.array([np.inf]))
