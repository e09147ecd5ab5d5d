"""threshold: the fixed (Delta, alpha) operator, ties to zero, fixed grid not scale equivariant."""

import numpy as np
import pytest

from ternref.projections.threshold import _codes, _row_counts, threshold


def test_hand_built_default_is_nearest_grid_point():
    w = np.array([0.7, -0.2, -3.0, 0.5, -0.5, 0.0, -0.0, 0.51], dtype=np.float32)
    t = threshold(w)
    np.testing.assert_array_equal(t.codes, [1, 0, -1, 0, 0, 0, 0, 1])  # |w| == 0.5 -> 0
    assert t.alpha_pos == 1.0 and t.dtype == np.float32


def test_given_delta_and_alpha():
    w = np.array([[0.3, -0.25], [0.1, -1.0]])
    t = threshold(w, delta=0.25, alpha=2.0)
    np.testing.assert_array_equal(t.dense(), [[2.0, 0.0], [0.0, -2.0]])
    assert t.dtype == np.float64


def test_float32_weights_compare_against_the_exact_float64_threshold():
    # float32(0.1) = 0.10000000149 > 0.1, so it is kept even though float32(0.1) == float32(delta).
    w = np.array([0.1], dtype=np.float32)
    assert threshold(w, delta=0.1).codes.tolist() == [1]


def test_not_scale_equivariant():
    w = np.array([0.4, 1.0])
    assert threshold(2 * w).codes.tolist() == [1, 1]
    assert threshold(w).codes.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    [
        ({"w": np.array([np.nan])}, ValueError, "w"),
        ({"w": np.array([1], dtype=np.int8)}, TypeError, "w"),
        ({"w": np.ones(2), "delta": -1.0}, ValueError, "delta"),
        ({"w": np.ones(2), "delta": np.inf}, ValueError, "delta"),
        ({"w": np.ones(2), "alpha": -0.5}, ValueError, "alpha"),
        ({"w": np.ones(2), "alpha": None}, TypeError, "alpha"),
    ],
)
def test_bad_inputs(kwargs, error, word):
    with pytest.raises(error, match=word):
        threshold(**kwargs)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_codes_and_row_counts_equal_their_float_definitions(dtype):
    """``_codes`` is ``sign(w) * keep`` (kept zeros and signed zeros stay 0) and ``_row_counts``
    is ``count_nonzero(axis=1)``, for one row and for several."""
    rng = np.random.default_rng(0)
    for shape in ((1, 1000), (7, 33), (1, 1)):
        w = rng.standard_normal(shape).astype(dtype)
        w.flat[:3] = [0.0, -0.0, 0.0][: w.size]
        keep = rng.random(shape) < 0.6
        keep.flat[:3] = True
        got = _codes(w, keep)
        assert got.dtype == np.int8
        np.testing.assert_array_equal(got, (np.sign(w) * keep).astype(np.int8))
        np.testing.assert_array_equal(_row_counts(keep), np.count_nonzero(keep, axis=1))
