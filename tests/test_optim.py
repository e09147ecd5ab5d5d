"""Optimizers and schedules against hand-written reference recurrences."""

import math

import numpy as np
import pytest

from ternref.nn.module import Parameter
from ternref.optim import SGD, Adam, CosineLR, MultiStepLR, StepLR


def _run(optimizer_cls, grads, w0, **kwargs):
    p = Parameter(np.array(w0, dtype=np.float64), "w")
    opt = optimizer_cls([p], **kwargs)
    for g in grads:
        p.grad[...] = g
        opt.step()
    return p.data, opt, p


GRADS = [np.array([0.5, -1.0, 2.0]), np.array([0.1, 0.3, -0.7]), np.array([-0.2, 0.0, 1.5])]
W0 = [1.0, -2.0, 0.5]


def test_sgd_plain_is_gradient_descent():
    w, _, _ = _run(SGD, GRADS, W0, lr=0.1)
    np.testing.assert_allclose(w, np.array(W0) - 0.1 * sum(GRADS))


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_reference_recurrence(nesterov):
    lr, mu, wd = 0.05, 0.9, 0.01
    w_ref = np.array(W0)
    buf = None
    for g in GRADS:
        g = g + wd * w_ref
        buf = g.copy() if buf is None else mu * buf + g
        d = g + mu * buf if nesterov else buf
        w_ref = w_ref - lr * d
    w, _, _ = _run(SGD, GRADS, W0, lr=lr, momentum=mu, nesterov=nesterov, weight_decay=wd)
    np.testing.assert_allclose(w, w_ref, rtol=1e-12)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_matches_textbook_bias_corrected_update(decoupled):
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    w_ref = np.array(W0)
    m = np.zeros(3)
    v = np.zeros(3)
    for t, g in enumerate(GRADS, start=1):
        if not decoupled:
            g = g + wd * w_ref
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        if decoupled:
            w_ref = w_ref * (1 - lr * wd)
        w_ref = w_ref - lr * m_hat / (np.sqrt(v_hat) + eps)
    w, opt, p = _run(Adam, GRADS, W0, lr=lr, weight_decay=wd, decoupled=decoupled)
    np.testing.assert_allclose(w, w_ref, rtol=1e-10)
    # LAT reads the raw second moment: it must be reachable per parameter.
    np.testing.assert_allclose(opt.state_for(p)["v"], v, rtol=1e-12)
    assert opt.state_for(p)["step"] == 3


def test_adam_keeps_float32():
    p = Parameter(np.ones(4, dtype=np.float32))
    opt = Adam([p], lr=0.1)
    p.grad[...] = 1.0
    opt.step()
    assert p.data.dtype == np.float32
    np.testing.assert_allclose(p.data, 0.9, rtol=1e-6)


def test_parameter_groups_have_their_own_lr():
    a = Parameter(np.zeros(2))
    b = Parameter(np.zeros(2))
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 1.0}], lr=0.1)
    a.grad[...] = 1
    b.grad[...] = 1
    opt.step()
    np.testing.assert_allclose(a.data, -0.1)
    np.testing.assert_allclose(b.data, -1.0)


def test_schedules_follow_their_formulas():
    p = Parameter(np.zeros(1))
    opt = SGD([p], lr=1.0)
    s = StepLR(opt, step_size=2, gamma=0.5)
    lrs = [opt.lr]
    for _ in range(5):
        s.step()
        lrs.append(opt.lr)
    assert lrs == [1, 1, 0.5, 0.5, 0.25, 0.25]

    opt = SGD([Parameter(np.zeros(1))], lr=2.0)
    s = CosineLR(opt, total_epochs=4)
    got = [opt.lr]
    for _ in range(4):
        s.step()
        got.append(opt.lr)
    want = [2.0 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(5)]
    np.testing.assert_allclose(got, want, atol=1e-15)

    opt = Adam([Parameter(np.zeros(1))], lr=1.0)
    s = MultiStepLR(opt, milestones=[15, 25])
    factors = []
    for _ in range(30):
        factors.append(opt.lr)
        s.step()
    assert factors[14] == 1.0 and factors[15] == pytest.approx(0.1)
    assert factors[25] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: SGD([p], lr=-1.0), "lr must be >= 0"),
        (lambda p: SGD([p], lr=0.1, momentum=1.5), "momentum"),
        (lambda p: SGD([p], lr=0.1, nesterov=True), "nesterov"),
        (lambda p: Adam([p], betas=(0.9, 1.0)), r"betas\[1\]"),
        (lambda p: Adam([], lr=0.1), "empty"),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make(Parameter(np.zeros(1)))


def test_non_parameters_are_refused():
    with pytest.raises(TypeError, match="Parameter"):
        SGD([np.zeros(3)], lr=0.1)
