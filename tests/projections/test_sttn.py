"""STTN (Xu et al. 2020): the merged ternary kernel equals the sum of the two binary kernels."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.sttn import sttn, sttn_activation, sttn_alpha, sttn_binary_kernels


def _pair(seed, shape=(6, 3, 3, 3), dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(scale=0.7, size=shape).astype(dtype),
        rng.normal(scale=0.7, size=shape).astype(dtype),
    )


def test_alpha_by_hand_per_output_channel_with_clamp():
    w1, w2 = _pair(0, shape=(3, 4), dtype=np.float64)
    w1[0, 0] = 5.0  # clamped to 1 before the L1 norm
    alpha = sttn_alpha(w1, w2)
    for c in range(3):
        l1 = sum(min(abs(v), 1.0) for v in w1[c]) + sum(min(abs(v), 1.0) for v in w2[c])
        assert np.isclose(alpha[c, 0], l1 / (2 * 4), rtol=1e-14)
    assert alpha.shape == (3, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merged_kernel_equals_sum_of_binary_kernels_bit_for_bit(dtype):
    w1, w2 = _pair(1, dtype=dtype)
    b1, b2 = sttn_binary_kernels(w1, w2)
    t = sttn(w1, w2)
    assert t.granularity == "channel" and t.dtype == dtype
    assert np.array_equal(t.dense(), b1 + b2)
    # zero exactly where the two signs disagree
    assert np.array_equal(t.codes == 0, np.sign(w1) != np.sign(w2))


@given(
    hnp.arrays(np.float64, (4, 5), elements=st.floats(-3, 3)),
    hnp.arrays(np.float64, (4, 5), elements=st.floats(-3, 3)),
)
def test_merge_identity_and_range_for_any_pair(w1, w2):
    b1, b2 = sttn_binary_kernels(w1, w2)
    t = sttn(w1, w2)
    assert np.array_equal(t.dense(), b1 + b2)
    alpha = sttn_alpha(w1, w2)
    for c in range(4):
        # each training-time kernel is binary: every entry is +-alpha_c
        assert np.all(np.abs(b1[c]) == alpha[c, 0]) and np.all(np.abs(b2[c]) == alpha[c, 0])
        assert set(np.unique(t.dense()[c])) <= {-2 * alpha[c, 0], 0.0, 2 * alpha[c, 0]}


def test_layer_outputs_match_two_binary_branches():
    # x in small integers and alpha a power of two make every product and sum exact
    w1 = np.where(np.random.default_rng(2).random((5, 8)) < 0.5, -0.5, 0.5)
    w2 = np.where(np.random.default_rng(3).random((5, 8)) < 0.5, -0.5, 0.5)
    x = np.random.default_rng(4).integers(-3, 4, size=(8, 7)).astype(np.float64)
    b1, b2 = sttn_binary_kernels(w1, w2)
    assert np.all(sttn_alpha(w1, w2) == 0.5)
    assert np.array_equal(sttn(w1, w2).dense() @ x, b1 @ x + b2 @ x)
    # and for generic floats the two agree to rounding
    w1, w2 = _pair(5, shape=(5, 8), dtype=np.float64)
    b1, b2 = sttn_binary_kernels(w1, w2)
    assert np.allclose(sttn(w1, w2).dense() @ x, b1 @ x + b2 @ x, rtol=1e-13, atol=1e-13)


def test_sign_of_zero_is_plus_one_so_the_merge_stays_ternary():
    w1 = np.array([[0.0, 0.0, -0.0, 0.0]])
    w2 = np.array([[0.3, -0.3, 0.3, 0.0]])
    assert np.array_equal(sttn(w1, w2).codes, [[1, 0, 1, 1]])


def test_all_zero_pair_is_finite():
    t = sttn(np.zeros((2, 3)), np.zeros((2, 3)))
    assert np.all(t.dense() == 0) and np.all(np.isfinite(t.dense()))


def test_bad_pairs():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        sttn(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="same shape"):
        sttn(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(TypeError, match="share a dtype"):
        sttn(np.ones((2, 3)), np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="w2 must be finite"):
        sttn(np.ones((2, 3)), np.full((2, 3), np.nan))


def test_activation_exact_values_at_and_around_thresholds():
    x = np.array([-2.0, -0.5000001, -0.5, -0.4999999, 0.0, 0.4999999, 0.5, 0.5000001, 3.0])
    assert np.array_equal(sttn_activation(x), [-1, -1, 0, 0, 0, 0, 1, 1, 1])
    assert sttn_activation(x.astype(np.float32)).dtype == np.float32
