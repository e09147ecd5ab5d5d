"""Losses: values against direct formulas, gradients against finite differences, stability."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref.nn import (
    CrossEntropyLoss,
    DistillationLoss,
    SquaredHingeLoss,
    accuracy,
    numerical_gradient,
    rel_error,
)

seeds = st.integers(0, 2**32 - 1)
FD = settings(max_examples=40)
TOL = 1e-6


def fd_grad(loss, z, other):
    """Finite-difference dL/dz of the scalar loss."""
    return numerical_gradient(lambda zz: loss.forward(zz, other), z)


@FD
@given(st.integers(1, 6), st.integers(2, 6), st.floats(0.1, 3.0), seeds)
def test_cross_entropy_value_and_gradient(n, c, scale, seed):
    # scale <= 3: a very confident row has dL/dz ~ 1e-6, below central-difference resolution
    # of a loss that is a difference of O(10) numbers (huge logits: see the stability test)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, c)) * scale
    t = rng.integers(0, c, n)
    loss = CrossEntropyLoss()
    value = loss.forward(z, t)
    # direct definition: -(1/N) sum log(exp(z_t) / sum_j exp(z_j))
    direct = -np.mean([math.log(math.exp(z[i, t[i]]) / sum(math.exp(v) for v in z[i]))
                       for i in range(n)])  # fmt: skip
    assert math.isclose(value, direct, rel_tol=1e-10, abs_tol=1e-12)
    assert rel_error(loss.backward(), fd_grad(loss, z.copy(), t)) < TOL


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [1e4, 1e4 - 2.0, 0.0], [-1e4, -1e4, -1e4]])
    t = np.array([1, 1, 2])
    loss = CrossEntropyLoss()
    value = loss.forward(z, t)
    # row 0: lse = 1e4, loss = 1e4; row 1: lse = 1e4 + log(1 + e^-2), loss = 2 + log(1 + e^-2);
    # row 2: uniform, loss = log 3
    expect = (1e4 + 2 + math.log1p(math.exp(-2)) + math.log(3)) / 3
    assert math.isclose(value, expect, rel_tol=1e-12)
    g = loss.backward()
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g.sum(axis=1), 0, atol=1e-15)  # softmax - onehot sums to 0
    np.testing.assert_allclose(g[0], np.array([1.0, -1.0, 0.0]) / 3, atol=1e-15)
    z32 = z.astype(np.float32)
    assert math.isfinite(loss.forward(z32, t)) and loss.backward().dtype == np.float32


def test_cross_entropy_target_checks():
    loss = CrossEntropyLoss()
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss.forward(z, np.array([0, 3]))
    with pytest.raises(TypeError, match="integer"):
        loss.forward(z, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        loss.forward(z, np.array([0, 1, 2]))
    with pytest.raises(RuntimeError, match="before forward"):
        CrossEntropyLoss().backward()


@FD
@given(st.integers(1, 6), st.integers(2, 6), st.sampled_from(["mean", "batch_mean"]), seeds)
def test_squared_hinge_value_and_gradient(n, c, reduction, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, c)) * 2
    # keep every margin 1 - t*y away from the kink at 0 so central differences are exact
    t = rng.integers(0, c, n)
    sign = -np.ones((n, c))
    sign[np.arange(n), t] = 1
    margin = 1 - sign * z
    z = np.where(np.abs(margin) < 1e-3, z + 0.01 * sign, z)
    loss = SquaredHingeLoss(reduction)
    value = loss.forward(z, t)
    total = sum(max(0.0, 1 - sign[i, j] * z[i, j]) ** 2 for i in range(n) for j in range(c))
    assert math.isclose(value, total / (n * c if reduction == "mean" else n), rel_tol=1e-12)
    assert rel_error(loss.backward(), fd_grad(loss, z.copy(), t)) < TOL


def test_squared_hinge_matches_the_theano_expression_and_takes_pm1_targets():
    # T.mean(T.sqr(T.maximum(0., 1. - target * output))) with target = 2*onehot - 1
    z = np.array([[0.5, -2.0, 1.5], [3.0, 0.2, -0.1]])
    labels = np.array([2, 0])
    target = 2 * np.eye(3)[labels] - 1
    theano = np.mean(np.square(np.maximum(0.0, 1.0 - target * z)))
    loss = SquaredHingeLoss()
    assert math.isclose(loss.forward(z, labels), theano, rel_tol=1e-14)
    g_labels = loss.backward()
    assert math.isclose(loss.forward(z, target), theano, rel_tol=1e-14)
    np.testing.assert_array_equal(loss.backward(), g_labels)
    assert math.isclose(SquaredHingeLoss("batch_mean").forward(z, labels), 3 * theano)
    with pytest.raises(ValueError, match="-1, \\+1"):
        loss.forward(z, target * 0.5)


@FD
@given(
    st.integers(1, 5),
    st.integers(2, 5),
    st.floats(0.5, 8.0),
    st.sampled_from(["kl", "soft_ce"]),
    seeds,
)
def test_distillation_value_and_gradient(n, c, temp, kind, seed):
    rng = np.random.default_rng(seed)
    zs, zt = rng.standard_normal((n, c)) * 3, rng.standard_normal((n, c)) * 3
    loss = DistillationLoss(temp, kind)
    value = loss.forward(zs, zt)

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    total = 0.0
    for i in range(n):
        ps, pt = softmax(zs[i] / temp), softmax(zt[i] / temp)
        total += -np.sum(pt * np.log(ps)) + (np.sum(pt * np.log(pt)) if kind == "kl" else 0.0)
    assert math.isclose(value, temp**2 * total / n, rel_tol=1e-10, abs_tol=1e-12)
    assert rel_error(loss.backward(), fd_grad(loss, zs.copy(), zt)) < TOL


def test_distillation_kl_is_zero_at_the_teacher_and_kinds_share_gradients():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 5))
    loss = DistillationLoss(temperature=2.0)
    assert abs(loss.forward(z, z)) < 1e-12
    np.testing.assert_allclose(loss.backward(), 0, atol=1e-15)
    zs = rng.standard_normal((4, 5))
    kl, ce = DistillationLoss(3.0, "kl"), DistillationLoss(3.0, "soft_ce")
    assert ce.forward(zs, z) > kl.forward(zs, z) > 0
    np.testing.assert_array_equal(kl.backward(), ce.backward())
    with pytest.raises(ValueError, match="shape"):
        kl.forward(zs, z[:, :3])
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(0.0)


def test_accuracy():
    z = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert accuracy(z, np.array([1, 0, 0, 0])) == 0.75
    assert accuracy(z, np.array([0, 1, 0, 1])) == 0.0
