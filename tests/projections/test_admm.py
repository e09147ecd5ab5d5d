"""admm: the alternation never increases the error, output feasible, fixed point, hand cases."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.admm import admm, admm_step
from ternref.projections.exact import exact

vectors = hnp.arrays(
    np.float64, st.integers(1, 40), elements=st.floats(-10, 10, allow_subnormal=False)
)


def sq_error(v, t):
    return float(np.sum((v - t.dense().astype(np.float64)) ** 2))


@given(vectors, st.data())
def test_each_alternation_never_increases_the_error(v, data):
    codes = np.array(
        data.draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=v.size, max_size=v.size)),
        dtype=np.int8,
    )
    # Start: the given codes with alpha = V'Q/Q'Q clipped at 0 (the step's first half), by hand.
    den = float(np.sum(codes != 0))
    a = max(float(v @ codes) / den, 0.0) if den else 0.0
    prev = float(np.sum((v - a * codes) ** 2))
    tol = 1e-12 * (float(v @ v) + 1e-300)
    for _ in range(8):
        t = admm_step(v, codes)
        err = sq_error(v, t)
        assert err <= prev + tol
        # Q is the nearest level to v / alpha for the alpha it came with: feasible by design.
        assert set(np.unique(t.codes)) <= {-1, 0, 1}
        prev, codes = err, t.codes


@given(vectors)
def test_output_is_feasible_and_a_fixed_point(v):
    t = admm(v)
    d = t.dense()
    alpha = float(t.alpha_pos)
    assert np.all(np.isin(d, [-alpha, 0.0, alpha]))
    # At the returned point both half-steps are fixed: alpha = V'Q/Q'Q and Q = round(V/alpha).
    again = admm_step(v, t.codes)
    np.testing.assert_array_equal(again.codes, t.codes)
    assert float(again.alpha_pos) == pytest.approx(alpha, rel=1e-12, abs=0)
    assert sq_error(v, exact(v)) <= sq_error(v, t) + 1e-9 * (float(v @ v) + 1e-300)


def test_hand_built_converges_to_the_optimum():
    v = np.array([3.0, -1.0, 0.2, -2.5, 0.0])
    t = admm(v)
    # TWN start keeps {3, -1, -2.5}: alpha = 6.5/3 = 2.1667; round keeps |v| > 1.083 -> {3, -2.5}
    # alpha = 2.75; |v| > 1.375 -> same: fixed point, the exact optimum.
    np.testing.assert_array_equal(t.codes, [1, 0, 0, -1, 0])
    assert t.alpha_pos == 2.75


def test_midpoint_goes_to_zero():
    # codes [1, 1, 0]: alpha = (2 + 1)/2 = 1.5 ... pick v so alpha/2 hits an entry exactly.
    v = np.array([3.0, 1.0, 1.0])
    t = admm_step(v, np.array([1, 0, 0]))  # alpha = 3, threshold 1.5: both 1.0 drop
    np.testing.assert_array_equal(t.codes, [1, 0, 0])
    t = admm_step(np.array([2.0, 1.0]), np.array([1, 0]))  # alpha = 2, |v| = 1 = alpha/2 -> 0
    np.testing.assert_array_equal(t.codes, [1, 0])


def test_channel_and_zero_and_errors():
    w = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    t = admm(w, granularity="channel")
    assert t.alpha_pos.shape == (3, 1) and t.dtype == np.float32
    for i in range(3):
        np.testing.assert_array_equal(t.codes[i], admm(w[i]).codes)
    z = admm(np.zeros(4))
    assert np.all(z.codes == 0) and z.alpha_pos == 0
    with pytest.raises(ValueError, match="max_iter"):
        admm(w, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        admm(w, tol=-1.0)
    with pytest.raises(ValueError, match="v"):
        admm(np.array([np.inf]))
    with pytest.raises(ValueError, match="codes"):
        admm_step(w, np.full(w.shape, 2))
