"""Ternary.dense: the one-pass forms (symmetric; asymmetric per tensor) equal the general
formula, bit for bit."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.ternary import Ternary


def general_dense(t: Ternary) -> np.ndarray:
    """``alpha_pos [c = +1] - alpha_neg [c = -1]`` written out, as dense() defines it."""
    pos, neg = t.expand(t.alpha_pos), t.expand(t.alpha_neg)
    return np.where(t.codes > 0, pos, np.where(t.codes < 0, -neg, 0)).astype(t.dtype)


@given(
    hnp.arrays(np.int8, hnp.array_shapes(min_dims=2, max_dims=3, max_side=5),
               elements=st.integers(-1, 1)),
    st.sampled_from([np.float16, np.float32, np.float64]),
    st.sampled_from(["tensor", "channel"]),
    st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_symmetric_dense_equals_the_general_formula(codes, dtype, granularity, seed):
    rng = np.random.default_rng(seed)
    n = 1 if granularity == "tensor" else codes.shape[0]
    alpha = rng.uniform(0, 3, n).astype(dtype)
    alpha[rng.random(n) < 0.2] = 0  # a zero scale gives +0.0 everywhere in both forms
    t = Ternary(codes, alpha if n > 1 else alpha[0], granularity=granularity)
    got, want = t.dense(), general_dense(t)
    assert got.dtype == want.dtype == dtype and got.shape == codes.shape
    np.testing.assert_array_equal(got, want)
    assert not np.signbit(got[codes == 0]).any()  # +0.0, never -0.0, where the code is 0


@given(
    hnp.arrays(np.int8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
               elements=st.integers(-1, 1)),
    st.sampled_from([np.float16, np.float32, np.float64]),
    st.floats(0, 3), st.floats(0, 3),
)  # fmt: skip
def test_asymmetric_tensor_dense_equals_the_general_formula(codes, dtype, pos, neg):
    t = Ternary(codes, np.asarray(pos, dtype), np.asarray(neg, dtype))
    got, want = t.dense(), general_dense(t)
    assert got.dtype == want.dtype == dtype and got.shape == codes.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
