"""EC2T (Marban et al. 2020): entropy-penalized assignment, its lambda = 0 limit, monotone sparsity,
the spars_bound PMF and lambda_max."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref.projections.ec2t import (
    _ec2t_scaled_lambda,
    _ec2t_scaled_lambda_numpy,
    ec2t,
    ec2t_lambda_max,
    ec2t_pmf,
)

W = np.random.default_rng(0).normal(scale=0.5, size=2000)


def test_lambda_zero_thresholds_are_half_centroids_with_ties_to_zero():
    w = np.array([-0.3, -0.2, -0.19, 0.0, 0.39, 0.4, 0.41, 2.0])
    t = ec2t(w, w_p=0.8, w_n=0.4, lam=0.0)
    assert np.array_equal(t.codes, [-1, 0, 0, 0, 0, 0, 1, 1])
    assert float(t.alpha_pos) == 0.8 and float(t.alpha_neg) == 0.4
    assert np.allclose(t.dense(), [-0.4, 0, 0, 0, 0, 0, 0.8, 0.8])


def _pmf_by_hand(w, w_p, w_n):
    counts = {-1: 0, 0: 0, 1: 0}
    for x in w:
        d = {-1: (x + w_n) ** 2, 0: x**2, 1: (x - w_p) ** 2}
        best = min(d.values())
        counts[0 if d[0] == best else min(k for k in (-1, 1) if d[k] == best)] += 1
    p = np.array([counts[-1], counts[0], counts[1]], dtype=float) / len(w)
    if p[1] < 0.5:
        deficit = 0.5 - p[1]
        p = np.array(
            [p[0] - p[0] / (p[0] + p[2]) * deficit, 0.5, p[2] - p[2] / (p[0] + p[2]) * deficit]
        )
    return p


def test_pmf_forces_zero_probability_to_at_least_half():
    w = np.array([-1.0, -0.9, 1.0, 1.1, 0.95, 0.0, 0.05, 0.9])  # nearest: 2 neg, 2 zero, 4 pos
    p = ec2t_pmf(w, w_p=1.0, w_n=1.0)
    # P0 = 1/4 < 1/2: the deficit 1/4 is taken 1/3 from P_n = 1/4 and 2/3 from P_p = 1/2
    assert np.allclose(p, [0.25 - 0.25 / 3, 0.5, 0.5 - 0.5 / 3])
    assert np.isclose(p.sum(), 1.0)
    assert np.allclose(ec2t_pmf(W, 0.6, 0.5), _pmf_by_hand(W, 0.6, 0.5))


@pytest.mark.parametrize("lam", [0.01, 0.05, 0.2])
def test_assignment_against_brute_force_costs(lam):
    w_p, w_n = 0.6, 0.5
    i_n, i_0, i_p = -np.log2(_pmf_by_hand(W, w_p, w_n))
    expected = []
    for x in W:
        costs = {0: x**2 + lam * i_0, -1: (x + w_n) ** 2 + lam * i_n, 1: (x - w_p) ** 2 + lam * i_p}
        best = min(costs.values())
        expected.append(0 if costs[0] == best else (1 if costs[1] == best else -1))
    assert np.array_equal(ec2t(W, w_p, w_n, lam=lam).codes, expected)


@given(st.floats(0, 3), st.floats(0, 3))
def test_sparsity_is_non_decreasing_in_lambda(l1, l2):
    lo, hi = min(l1, l2), max(l1, l2)
    assert ec2t(W, 0.6, 0.5, lam=lo).sparsity <= ec2t(W, 0.6, 0.5, lam=hi).sparsity


def test_sparsity_range_over_lambda():
    s0 = ec2t(W, 0.6, 0.5, lam=0.0).sparsity
    s_big = ec2t(W, 0.6, 0.5, lam=50.0).sparsity
    assert s0 < 0.5 < s_big == 1.0


def test_lambda_max_is_where_the_extreme_weight_collapses():
    w_p, w_n = 0.6, 0.5
    lam_max = ec2t_lambda_max(W, w_p, w_n)
    i_n, i_0, i_p = -np.log2(_pmf_by_hand(W, w_p, w_n))
    e_p, e_n = W.max(), -W.min()
    by_hand = min(
        (e_p**2 - (e_p - w_p) ** 2) / (i_p - i_0), (e_n**2 - (e_n - w_n) ** 2) / (i_n - i_0)
    )
    assert math.isclose(lam_max, by_hand, rel_tol=1e-12)
    below = ec2t(W, w_p, w_n, lam=lam_max * (1 - 1e-6)).codes
    above = ec2t(W, w_p, w_n, lam=lam_max * (1 + 1e-6)).codes
    assert below[np.argmax(W)] == 1 and below[np.argmin(W)] == -1
    assert above[np.argmax(W)] == 0 or above[np.argmin(W)] == 0


def test_lambda_max_edge_cases():
    # no negative weights: only the positive side counts. P = (0, 2/3, 1/3), I_p - I_0 = 1,
    # gain at w = 0.2 is 0.2^2 - 0 = 0.04
    assert math.isclose(ec2t_lambda_max(np.array([0.1, 0.2, 0.0]), w_p=0.2, w_n=0.3), 0.04)
    assert ec2t_lambda_max(np.array([0.0, 0.0]), w_p=1.0, w_n=1.0) == math.inf
    assert ec2t_lambda_max(np.array([0.1, -0.1, 0.0, 0.0]), w_p=1.0, w_n=1.0) == 0.0


def test_default_centroids_are_per_sign_means_beyond_0_7_mean_abs():
    w = np.array([1.0, 0.1, -0.2, -3.0, 2.0, 0.0])  # mean|w| = 1.05, Delta = 0.735
    t = ec2t(w)
    assert float(t.alpha_pos) == 1.5 and float(t.alpha_neg) == 3.0
    assert np.all(ec2t(np.zeros(4)).dense() == 0)


def test_float32_kept():
    t = ec2t(W.astype(np.float32), 0.6, 0.5, lam=0.1)
    assert t.dtype == np.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match="lam"):
        ec2t(W, 0.5, 0.5, lam=-1.0)
    with pytest.raises(ValueError, match="w_p"):
        ec2t(W, -0.5, 0.5)
    with pytest.raises(TypeError, match="w_n"):
        ec2t(W, 0.5, "0.5")
    with pytest.raises(ValueError, match="finite"):
        ec2t(np.array([np.nan, 1.0]))


# ------------------------------------------------ the training step's kernel against its twin


@settings(deadline=None)
@given(
    st.integers(1, 400),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from(["normal", "ties", "positive", "negative", "zeros"]),
    st.sampled_from([0.0, 0.25, 0.5, 1.0, 0.37]),
    st.sampled_from([0.0, 0.25, 0.5, 1.0, 0.61]),
    st.sampled_from([0.0, 0.2, 1.0, 5.0]),
    st.integers(0, 2**31 - 1),
)
def test_scaled_lambda_kernel_equals_numpy_twin(n, dtype, kind, w_p, w_n, divider, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(scale=rng.uniform(0.05, 2.0), size=(n, 3))
    if kind == "ties":  # a quarter grid: weights exactly at w_p/2, -w_n/2 and on the grid
        w = np.round(w * 4) / 4
    elif kind == "positive":
        w = np.abs(w)
    elif kind == "negative":
        w = -np.abs(w)
    elif kind == "zeros":
        w[rng.random(w.shape) < 0.5] = 0.0
    w = w.astype(dtype)
    t, lam = _ec2t_scaled_lambda(w, w_p, w_n, divider, 0.7)
    t_ref, lam_ref = _ec2t_scaled_lambda_numpy(w, w_p, w_n, divider, 0.7)
    assert lam == lam_ref
    assert t.codes.dtype == t_ref.codes.dtype and np.array_equal(t.codes, t_ref.codes)
    assert t.alpha_pos == t_ref.alpha_pos and t.alpha_neg == t_ref.alpha_neg
    # and both are the public functions' composition
    lam_pub = ec2t_lambda_max(w, w_p, w_n) * divider * 0.7
    lam_pub = lam_pub if math.isfinite(lam_pub) else 0.0
    assert lam == lam_pub
    assert np.array_equal(t.codes, ec2t(w, w_p, w_n, lam=lam).codes)


def test_scaled_lambda_non_contiguous_and_other_dtypes():
    w = W.reshape(40, 50)[:, ::2]
    t, lam = _ec2t_scaled_lambda(w, 0.6, 0.5, 0.2, 1.0)
    t_ref, lam_ref = _ec2t_scaled_lambda_numpy(w, 0.6, 0.5, 0.2, 1.0)
    assert lam == lam_ref and lam > 0 and np.array_equal(t.codes, t_ref.codes)
    w16 = w.astype(np.float16)  # no kernel: the twin
    t16, lam16 = _ec2t_scaled_lambda(w16, 0.6, 0.5, 0.2, 1.0)
    assert t16.dense().dtype == np.float16
    assert np.array_equal(t16.codes, _ec2t_scaled_lambda_numpy(w16, 0.6, 0.5, 0.2, 1.0)[0].codes)
