"""twn: the 0.7 rule against a plain-Python statement, per-channel 0.75 variant, ties, errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.twn import twn


def twn_by_hand(values, factor):
    """TWN on one flat list of floats, written with a Python loop (independent statement)."""
    mags = [abs(v) for v in values]
    delta = factor * sum(mags) / len(mags)
    kept = [m for m in mags if m > delta]
    alpha = sum(kept) / len(kept) if kept else 0.0
    codes = [(1 if v > 0 else -1) if abs(v) > delta else 0 for v in values]
    return codes, alpha


@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
        elements=st.floats(-100, 100, allow_subnormal=False),
    ),
    st.sampled_from([0.0, 0.5, 0.7, 0.75, 0.99]),
)
def test_matches_python_loop(w, factor):
    codes, alpha = twn_by_hand(w.ravel().tolist(), factor)
    t = twn(w, factor=factor)
    np.testing.assert_array_equal(t.codes.ravel(), codes)
    assert float(t.alpha_pos) == pytest.approx(alpha, rel=1e-12, abs=1e-300)


def test_hand_built():
    # mean|w| = (3 + 1 + 0.2 + 2.5 + 0)/5 = 1.34, Delta = 0.938: keep 3, -1, -2.5; alpha = 6.5/3
    w = np.array([3.0, -1.0, 0.2, -2.5, 0.0], dtype=np.float32)
    t = twn(w)
    np.testing.assert_array_equal(t.codes, [1, -1, 0, -1, 0])
    assert t.alpha_pos == np.float32(6.5 / 3)
    assert t.dtype == np.float32 and t.symmetric and t.granularity == "tensor"


def test_tie_at_threshold_goes_to_zero():
    # mean|w| = 1, factor 0.5 -> Delta = 0.5 exactly; the 0.5 entries sit on it.
    w = np.array([0.5, -0.5, 1.5, -1.5, 0.5, 1.5, -0.5, 1.5])
    t = twn(w, factor=0.5)
    np.testing.assert_array_equal(t.codes, [0, 0, 1, -1, 0, 1, 0, 1])
    assert t.alpha_pos == 1.5


def test_channel_variant_of_the_official_code():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    t = twn(w, factor=0.75, granularity="channel")
    assert t.granularity == "channel" and t.alpha_pos.shape == (4, 1, 1, 1)
    for i in range(4):
        codes, alpha = twn_by_hand(w[i].ravel().astype(np.float64).tolist(), 0.75)
        np.testing.assert_array_equal(t.codes[i].ravel(), codes)
        assert float(t.alpha_pos[i, 0, 0, 0]) == pytest.approx(alpha, rel=1e-6)


def test_zero_input_and_negative_zero():
    for dtype in (np.float32, np.float64):
        t = twn(np.array([[0.0, -0.0], [-0.0, 0.0]], dtype=dtype), granularity="channel")
        assert np.all(t.codes == 0) and np.all(t.alpha_pos == 0) and t.dtype == dtype
        assert np.all(np.isfinite(t.dense()))


def test_idempotent_on_its_output_exactly():
    w = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    t = twn(w)
    assert twn(t.dense()) == t


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    [
        ({"w": np.array([1.0, np.nan])}, ValueError, "w"),
        ({"w": np.array([np.inf, 1.0], dtype=np.float32)}, ValueError, "w"),
        ({"w": np.zeros((0, 3))}, ValueError, "w"),
        ({"w": np.arange(4)}, TypeError, "w"),
        ({"w": [1, 2]}, TypeError, "w"),
        ({"w": np.ones(3), "factor": 1.0}, ValueError, "factor"),
        ({"w": np.ones(3), "factor": -0.1}, ValueError, "factor"),
        ({"w": np.ones(3), "factor": "0.7"}, TypeError, "factor"),
        ({"w": np.ones(3), "granularity": "row"}, ValueError, "granularity"),
    ],
)
def test_bad_inputs(kwargs, error, word):
    with pytest.raises(error, match=word):
        twn(**kwargs)
