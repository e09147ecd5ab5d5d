"""Optimizers and schedules against hand-written reference recurrences."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ternref import _optim_kernels
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


# ------------------------------------------------------------- the Adam kernel and its twin


def _adam_arrays(rng, shape, dtype, special):
    g = rng.standard_normal(shape).astype(dtype)
    m = (0.1 * rng.standard_normal(shape)).astype(dtype)
    v = np.abs(rng.standard_normal(shape)).astype(dtype)
    w = rng.standard_normal(shape).astype(dtype)
    if special and g.size:  # NaN/inf gradients, zero moments (0/0 and x/0 with eps_hat = 0)
        flat = rng.integers(0, g.size, size=min(g.size, 4))
        g.reshape(-1)[flat] = np.array([np.nan, np.inf, -np.inf, 0.0], dtype)[: flat.size]
        v.reshape(-1)[flat[:2]] = 0.0
        m.reshape(-1)[flat[:1]] = 0.0
    return w, g, m, v


@given(
    st.sampled_from([(0,), (1,), (7,), (33,), (3, 5), (2, 3, 4), (1, 1, 5, 5)]),
    st.sampled_from([np.float32, np.float64]),
    st.booleans(),
    st.sampled_from([(0.9, 0.999, 1e-3, 1e-8 * math.sqrt(1 - 0.999)), (0.5, 0.25, 0.3, 0.0)]),
    st.integers(0, 2**32 - 1),
)
def test_adam_kernel_equals_its_numpy_twin_bit_for_bit(shape, dtype, special, consts, seed):
    # the kernel does the twin's float operations in the twin's order, in the arrays' dtype
    b1, b2, step_size, eps_hat = consts
    rng = np.random.default_rng(seed)
    got = _adam_arrays(rng, shape, dtype, special)
    want = tuple(a.copy() for a in got)
    with np.errstate(all="ignore"):
        _optim_kernels.adam_update(*got, b1, b2, step_size, eps_hat)
        _optim_kernels.adam_update_numpy(*want, b1, b2, step_size, eps_hat)
    for name, a, b in zip("wgmv", got, want):
        assert a.dtype == b.dtype == dtype, name
        # equal bytes: NaN payloads, signed zeros and infinities included
        assert a.tobytes() == b.tobytes(), name


def test_adam_update_falls_back_to_the_twin_for_other_layouts_and_dtypes():
    rng = np.random.default_rng(0)
    for w, g, m, v in (
        _adam_arrays(rng, (6,), np.float16, False),  # no kernel for float16
        tuple(a[::2] for a in _adam_arrays(rng, (12,), np.float32, False)),  # strided
        (*_adam_arrays(rng, (5,), np.float32, False)[:1],  # float64 gradient, float32 state
         rng.standard_normal(5), np.zeros(5, np.float32), np.zeros(5, np.float32)),
    ):  # fmt: skip
        want = tuple(np.array(a, copy=True) for a in (w, g, m, v))
        _optim_kernels.adam_update(w, g, m, v, 0.9, 0.999, 1e-3, 1e-8)
        _optim_kernels.adam_update_numpy(*want, 0.9, 0.999, 1e-3, 1e-8)
        for a, b in zip((w, g, m, v), want):
            np.testing.assert_array_equal(a, b)


def test_adam_kernel_runs_as_plain_python_with_jit_disabled(run_without_jit):
    run_without_jit(
        """
        import numpy as np
        from ternref import _optim_kernels as K
        assert not hasattr(K._adam_kernel, "py_func"), "jit was not disabled"
        rng = np.random.default_rng(0)
        got = [rng.standard_normal(9).astype(np.float32) for _ in range(4)]
        got[3] = np.abs(got[3])
        want = [a.copy() for a in got]
        K.adam_update(*got, 0.9, 0.999, 1e-3, 1e-8)
        K.adam_update_numpy(*want, 0.9, 0.999, 1e-3, 1e-8)
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
        print("ok")
        """
    )
