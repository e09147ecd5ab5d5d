"""ADMM method: penalty gradient, G feasible, dual update, fixed point, rho growth, smoke training.

Leng, Dou, Li, Zhu, Jin, "Extremely Low Bit Neural Network: Squeeze the Last Bit Out with ADMM",
AAAI 2018, arXiv:1707.09870.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref import nn, optim
from ternref.data import load_digits
from ternref.methods import get, quantize_model, quantized_layers
from ternref.methods.admm import ADMMCallback, ADMMQuantizer
from ternref.projections import admm as admm_projection
from ternref.train import fit


def _setup(seed=0, **hp):
    model = nn.mlp([12, 16, 16, 3], rng=np.random.default_rng(seed))
    callbacks = quantize_model(model, get("admm", **hp))
    (cb,) = [c for c in callbacks if isinstance(c, ADMMCallback)]
    (layer,) = quantized_layers(model)
    return model, cb, layer


def _assert_in_C(t):
    """G in C = {-alpha, 0, +alpha}^n for one alpha >= 0."""
    assert t.symmetric
    alpha = float(t.alpha_pos)
    assert alpha >= 0
    assert set(np.unique(t.codes).tolist()) <= {-1, 0, 1}
    assert set(np.unique(t.dense()).tolist()) <= {-alpha, 0.0, alpha}


def _sgd_steps(model, cb, opt, rng, n):
    for _ in range(n):
        opt.zero_grad()
        out = model.forward(rng.standard_normal((4, 12)).astype(np.float32))
        model.backward(rng.standard_normal(out.shape).astype(np.float32))
        cb.after_backward(model, opt)
        opt.step()
        cb.on_step_end(model, opt)


def test_training_forward_is_w_and_eval_is_g():
    rng = np.random.default_rng(0)
    layer = nn.Linear(6, 4, rng=rng, dtype=np.float64, weight_quantizer=ADMMQuantizer())
    q = layer.weight_quantizer
    q.start(layer.weight.data)
    x = rng.standard_normal((3, 6))
    np.testing.assert_allclose(layer.forward(x), x @ layer.weight.data.T + layer.bias.data)
    layer.weight.data += 0.1  # W moves; G stays until the next G-step
    layer.eval()
    np.testing.assert_allclose(layer.forward(x), x @ q.G.dense().T + layer.bias.data)
    np.testing.assert_array_equal(q.to_ternary(layer.weight.data).dense(), q.G.dense())


def test_penalty_gradient_added_after_backward():
    rng = np.random.default_rng(1)
    model, cb, layer = _setup(rho=0.7)
    cb.on_train_begin(model, None)
    q = layer.weight_quantizer
    q.mu[...] = rng.standard_normal(q.mu.shape).astype(np.float32)
    out = model.forward(rng.standard_normal((4, 12)).astype(np.float32))
    model.zero_grad()
    model.backward(np.ones_like(out))
    loss_grad = layer.weight.grad.astype(np.float64)
    cb.after_backward(model, None)
    w, g, mu = (a.astype(np.float64) for a in (layer.weight.data, q.G.dense(), q.mu))
    # d/dW [f(W) + rho/2 ||W - G + mu||^2] = grad f + rho (W - G + mu)
    np.testing.assert_allclose(layer.weight.grad, loss_grad + 0.7 * (w - g + mu), rtol=1e-5)


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), interval=st.integers(1, 3), steps=st.integers(1, 8))
def test_g_always_feasible_and_dual_update_exact(seed, interval, steps):
    rng = np.random.default_rng(seed)
    model, cb, layer = _setup(seed % 5, rho=0.5, admm_interval=interval)
    opt = optim.SGD(model.parameters(), lr=0.2)
    cb.on_train_begin(model, opt)
    q = layer.weight_quantizer
    _assert_in_C(q.G)
    np.testing.assert_array_equal(q.mu, 0)
    for _ in range(steps):
        mu_old = q.mu.copy()
        g_old = q.G
        _sgd_steps(model, cb, opt, rng, 1)
        w = layer.weight.data
        _assert_in_C(q.G)
        if cb.steps % interval == 0:
            # G-step projects W + mu (not W), then mu <- mu + W - G
            assert q.G == admm_projection(w + mu_old)
            np.testing.assert_array_equal(q.mu, mu_old + (w - q.G.dense()))
        else:
            assert q.G is g_old
            np.testing.assert_array_equal(q.mu, mu_old)


def test_g_step_uses_w_plus_mu():
    q = ADMMQuantizer()
    w = np.array([1.0, 1.0, -1.0, 0.0, 0.0, 0.2])
    q.start(w)
    q.mu = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.9])  # pushes the last weight over the threshold
    w_plus_mu = w + q.mu
    q.g_and_dual_step(w)
    np.testing.assert_array_equal(q.G.codes, [1, 1, -1, 0, 0, 1])
    assert q.G == admm_projection(w_plus_mu)
    assert q.G != admm_projection(w)


@pytest.mark.parametrize("mu_scale", [0.0, 0.01])
def test_fixed_point_w_equals_g_keeps_mu_constant(mu_scale):
    rng = np.random.default_rng(2)
    codes = rng.integers(-1, 2, size=(8, 8))
    w = 0.25 * codes.astype(np.float64)  # W is already in C
    q = ADMMQuantizer()
    q.start(w)
    np.testing.assert_array_equal(q.G.dense(), w)
    # a dual that does not move the projection: small entries only where W is 0
    q.mu = mu_scale * 0.25 * rng.standard_normal(w.shape) * (codes == 0)
    mu = q.mu.copy()
    for _ in range(3):
        q.g_and_dual_step(w)
        np.testing.assert_array_equal(q.G.dense(), w)  # G = W
        np.testing.assert_array_equal(q.mu, mu)  # mu constant


def test_rho_grows_per_epoch_and_unscaled_dual_is_kept():
    rng = np.random.default_rng(4)
    model, cb, layer = _setup(rho=0.1, rho_growth=2.0)
    cb.on_train_begin(model, None)
    q = layer.weight_quantizer
    q.mu[...] = rng.standard_normal(q.mu.shape)
    y = 0.1 * q.mu.astype(np.float64)  # unscaled multiplier rho * mu
    record = {}
    cb.on_epoch_end(model, 1, record)
    assert record["admm_rho"] == 0.1 and cb.rho == 0.2
    np.testing.assert_allclose(cb.rho * q.mu, y, rtol=1e-6)
    assert 0 <= record["admm_residual"]


@pytest.mark.parametrize(
    "kwargs",
    [{"rho": 0.0}, {"rho_growth": 0.5}, {"admm_interval": 0}, {"beta": 0.1}],
)
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        get("admm", **kwargs)


def test_smoke_training_digits():
    ds = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = quantize_model(model, get("admm"))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    history = fit(model, ds, opt, epochs=5, batch_size=32, callbacks=callbacks, progress=False)
    # measured 0.972 after 5 epochs (seed 0)
    assert history.last["test_acc"] >= 0.92
    (layer,) = quantized_layers(model)
    t = layer.weight_quantizer.to_ternary(layer.weight.data)
    _assert_in_C(t)
    assert len(np.unique(t.dense())) <= 3
    assert 0.0 < t.sparsity < 1.0
    assert 0.0 < history.last["sparsity"] < 1.0
    model.eval()
    model.forward(ds.x_test[:5])
    np.testing.assert_array_equal(layer._w_hat, t.dense())
