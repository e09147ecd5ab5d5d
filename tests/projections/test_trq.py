"""TRQ (Li et al. 2021): stem + residual binarization is the ternary 2a sign(w) 1[|w| > a]."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.trq import trq, trq_parts

values = st.floats(-100, 100, allow_subnormal=False)
TINY = float(np.float32(1e-37))  # subnormals start at 1.2e-38


@given(hnp.arrays(np.float64, st.integers(1, 40), elements=values))
def test_stem_plus_residual_identity(w):
    stem, residual, a = trq_parts(w)
    closed_form = 2 * a * np.sign(w) * (np.abs(w) > a)
    assert np.array_equal(stem + residual, closed_form)
    assert np.array_equal(trq(w).dense(), closed_form)


@given(
    hnp.arrays(np.float32, st.integers(1, 30), elements=st.floats(-8, 8, width=32)),
    st.floats(0.01, 5),
)
def test_identity_with_given_alpha(w, alpha):
    a = np.float32(alpha)
    t = trq(w, alpha=alpha)
    assert t.dtype == np.float32
    assert np.array_equal(t.dense(), 2 * a * np.sign(w) * (np.abs(w) > a))


def test_default_alpha_is_mean_abs_and_level_is_twice_it():
    w = np.array([1.0, -2.0, 3.0, -6.0])  # mean|w| = 3
    t = trq(w)
    assert float(t.alpha_pos) == 6.0
    assert np.array_equal(t.codes, [0, 0, 0, -1])  # |w| = 3 is a tie -> 0


def test_parts_hand_case_and_tie_goes_against_the_stem():
    w = np.array([1.0, -1.0, 3.0, -3.0, 0.5, 0.0])
    stem, residual, a = trq_parts(w, alpha=1.0)
    assert np.array_equal(stem, [1, -1, 1, -1, 1, 1])
    assert np.array_equal(residual, [-1, 1, 1, -1, -1, -1])
    assert np.array_equal(trq(w, alpha=1.0).dense(), [0, 0, 2, -2, 0, 0])


def test_zero_input_and_zero_alpha():
    assert np.all(trq(np.zeros(4)).dense() == 0)
    t = trq(np.array([1.0, -2.0]), alpha=0.0)
    assert np.all(t.dense() == 0) and np.all(t.codes == 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        trq(np.ones(3), alpha=-1.0)
    with pytest.raises(TypeError, match="alpha"):
        trq(np.ones(3), alpha="1")
    with pytest.raises(ValueError, match="finite"):
        trq(np.array([np.nan]))


@given(
    hnp.arrays(np.float32, st.integers(1, 30), elements=st.floats(-TINY, TINY, width=32)),
    st.sampled_from([0.0, 1e-45, 1e-39, 1e-38]),
)
def test_signed_zeros_and_subnormals_follow_the_literal_recursion(w, alpha):
    """The int8 sign arithmetic of ``trq`` equals the stem/residual recursion written with
    ``np.where`` (sgn(-0) = +1, ties against the stem) where the residual is subnormal or zero."""
    a = np.float32(alpha)
    s_stem = np.where(w >= 0, 1, -1)
    r = w - a * s_stem.astype(np.float32)
    s_res = np.where(r > 0, 1, np.where(r < 0, -1, -s_stem))
    want = (s_stem + s_res) // 2 if a > 0 else np.zeros_like(s_stem)
    assert np.array_equal(trq(w, alpha=alpha).codes, want)
