"""residual: T2 ternarizes the residual, each term never increases the error, n_terms=1 = base."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.exact import exact
from ternref.projections.residual import residual
from ternref.projections.twn import twn

tensors = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
    elements=st.floats(-10, 10, allow_subnormal=False),
)


@given(tensors, st.sampled_from(["twn", "exact"]))
def test_terms_fit_successive_residuals_and_never_increase_error(w, base):
    terms = residual(w, n_terms=4, base=base)
    project = twn if base == "twn" else exact
    remainder = w
    prev = float(np.sum(w * w))
    for t in terms:
        assert t == project(remainder)  # T_j ternarizes what the earlier terms left
        remainder = remainder - t.dense()
        err = float(np.sum(remainder**2))
        assert err <= prev + 1e-9 * (float(np.sum(w * w)) + 1e-300)
        prev = err


def test_one_term_is_the_base_and_two_terms_are_better():
    w = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    (t,) = residual(w, n_terms=1)
    assert t == twn(w)
    t1, t2 = residual(w)
    e1 = np.sum((w - t1.dense()) ** 2)
    e2 = np.sum((w - t1.dense() - t2.dense()) ** 2)
    assert e2 < 0.5 * e1
    assert t2.dtype == np.float32
    assert len(np.unique(t1.dense() + t2.dense())) > 3  # not a single ternary tensor


def test_errors():
    with pytest.raises(ValueError, match="n_terms"):
        residual(np.ones(3), n_terms=0)
    with pytest.raises(ValueError, match="base"):
        residual(np.ones(3), base="bitnet")
    with pytest.raises(TypeError, match="w"):
        residual(np.arange(3))
