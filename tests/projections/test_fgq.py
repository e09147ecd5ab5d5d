"""fgq: group layout against a loop over groups, N = 1 is exact, finer nested groups never worse."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.exact import exact
from ternref.projections.fgq import fgq
from ternref.projections.twn import twn

tensors = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=4, max_side=5),
    elements=st.floats(-10, 10, allow_subnormal=False),
)


def sq_error(w, t):
    return float(np.sum((w - t.dense().astype(np.float64)) ** 2))


@given(tensors, st.integers(1, 7), st.sampled_from(["exact", "twn"]))
def test_equals_a_loop_over_groups(w, n, solver):
    t = fgq(w, group_size=n, solver=solver)
    out, k = w.shape[0], math.prod(w.shape[1:]) if w.ndim > 1 else 1
    rows, codes = w.reshape(out, k), t.codes.reshape(out, k)
    assert t.granularity == "group" and t.alpha_pos.shape == (out, -(-k // n))
    base = exact if solver == "exact" else twn
    for r in range(out):
        for g, start in enumerate(range(0, k, n)):
            ref = base(rows[r, start : start + n])
            np.testing.assert_array_equal(codes[r, start : start + n], ref.codes)
            assert t.alpha_pos[r, g] == pytest.approx(float(ref.alpha_pos), rel=1e-12)


@given(tensors)
def test_group_size_one_has_zero_error(w):
    t = fgq(w, group_size=1)
    np.testing.assert_array_equal(t.dense(), w)


@given(tensors, st.sampled_from([(1, 2), (2, 4), (4, 8), (2, 8), (3, 6)]))
def test_finer_nested_groups_never_worse(w, sizes):
    fine, coarse = sizes  # coarse is a multiple of fine: every coarse group splits into fine ones
    e_fine, e_coarse = sq_error(w, fgq(w, fine)), sq_error(w, fgq(w, coarse))
    assert e_fine <= e_coarse + 1e-9 * (float(np.sum(w * w)) + 1e-300)


def test_conv_layout_and_padding():
    w = np.arange(1, 2 * 3 * 1 * 2 + 1, dtype=np.float32).reshape(2, 3, 1, 2)  # K = 6
    t = fgq(w, group_size=4)  # groups [0:4], [4:6] per output channel
    assert t.alpha_pos.shape == (2, 2) and t.dtype == np.float32
    # row 0 = 1..6: group [1,2,3,4] exact -> keep {4,3} (S^2/k: 16, 24.5, 27, 25) -> k=3? check:
    # k=1: 16, k=2: 49/2 = 24.5, k=3: 81/3 = 27, k=4: 100/4 = 25 -> keep {4, 3, 2}, alpha = 3
    np.testing.assert_array_equal(t.codes[0].ravel()[:4], [0, 1, 1, 1])
    assert t.alpha_pos[0, 0] == 3.0
    # last group [5, 6]: k=1: 36, k=2: 60.5 -> both, alpha = 5.5
    assert t.alpha_pos[0, 1] == 5.5


def test_errors_and_zero():
    assert np.all(fgq(np.zeros((2, 5))).codes == 0)
    with pytest.raises(ValueError, match="group_size"):
        fgq(np.ones((2, 4)), group_size=0)
    with pytest.raises(TypeError, match="group_size"):
        fgq(np.ones((2, 4)), group_size=2.0)
    with pytest.raises(ValueError, match="solver"):
        fgq(np.ones((2, 4)), solver="median")
    with pytest.raises(ValueError, match="w"):
        fgq(np.array([[np.nan]]))
