"""ProxQuant method: full-precision forward, prox step formula, homotopy, freezing, smoke training.

Bai, Wang, Liberty, "ProxQuant", ICLR 2019, arXiv:1810.00861.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ternref import nn, optim
from ternref.data import load_digits
from ternref.methods import get, quantize_model, quantized_layers
from ternref.methods.proxquant import ProxQuantCallback, ProxQuantQuantizer
from ternref.train import fit


def _official_ternarize(a):
    """reg.py ``ternarize`` written out: Delta = 0.7 mean|a|; >= Delta -> mean of those, etc."""
    a = np.asarray(a, dtype=np.float64)
    delta = np.abs(a).mean() * 0.7
    out = a.copy()
    out[np.abs(a) < delta] = 0
    p, n = a >= delta, a <= -delta
    if p.any():
        out[p] = a[p].mean()
    if n.any():
        out[n] = a[n].mean()
    return out


def _setup(seed=0, **hp):
    model = nn.mlp([12, 16, 16, 3], rng=np.random.default_rng(seed))
    callbacks = quantize_model(model, get("proxquant", **hp))
    (cb,) = [c for c in callbacks if isinstance(c, ProxQuantCallback)]
    (layer,) = quantized_layers(model)
    return model, cb, layer


def test_training_forward_uses_full_precision_theta():
    rng = np.random.default_rng(0)
    layer = nn.Linear(6, 4, rng=rng, dtype=np.float64, weight_quantizer=ProxQuantQuantizer())
    x = rng.standard_normal((3, 6))
    dy = rng.standard_normal((3, 4))
    y = layer.forward(x)
    np.testing.assert_allclose(y, x @ layer.weight.data.T + layer.bias.data, rtol=1e-12)
    layer.zero_grad()
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, dy.T @ x, rtol=1e-12)  # gradient at theta


def test_eval_forward_and_to_ternary_use_official_ternarize():
    w = np.array([[0.9, -0.05, 0.3, -0.6, 0.02, -0.2, 0.5, 0.1]])
    # mean|w| = 2.67/8, Delta = 0.2336: positives {0.9, 0.3, 0.5} -> 0.5667, negatives {-0.6}
    q = ProxQuantQuantizer()
    q.eval()
    expected = np.array([[0.5 + 0.2 / 3, 0, 0.5 + 0.2 / 3, -0.6, 0, 0, 0.5 + 0.2 / 3, 0]])
    np.testing.assert_allclose(q(w), expected, rtol=1e-12)
    np.testing.assert_allclose(q(w), _official_ternarize(w), rtol=1e-12)
    np.testing.assert_array_equal(q.to_ternary(w).dense(), q(w))


@given(seed=st.integers(0, 2**16), lr=st.floats(1e-4, 1.0), epoch=st.integers(1, 50))
def test_step_applies_prox_formula_then_clip(seed, lr, epoch):
    rng = np.random.default_rng(seed)
    model, cb, layer = _setup(seed % 5, reg_rate=0.3)
    layer.weight.data[...] = (rng.standard_normal(layer.weight.shape) * 0.7).astype(np.float32)
    opt = optim.SGD(model.parameters(), lr=lr)
    cb.on_train_begin(model, opt)
    for e in range(1, epoch):
        cb.on_epoch_end(model, e, {})
    theta = layer.weight.data.astype(np.float64)
    lam = lr * 0.3 * (epoch - 1)  # lambda' = lr * reg_rate * (0-based epoch)
    x = (theta + lam * _official_ternarize(theta)) / (1 + lam)
    # stationarity of the prox of (lam/2)||x - q||^2 at v = theta: (x - v) + lam (x - q) = 0
    np.testing.assert_allclose((x - theta) + lam * (x - _official_ternarize(theta)), 0, atol=1e-12)
    cb.on_step_end(model, opt)
    np.testing.assert_allclose(layer.weight.data, np.clip(x, -1, 1), rtol=2e-6, atol=1e-7)


def test_first_epoch_has_no_prox_only_clip():
    model, cb, layer = _setup()
    layer.weight.data[0, :3] = [1.7, -3.0, 0.4]
    before = layer.weight.data.copy()
    cb.on_step_end(model, optim.SGD(model.parameters(), lr=0.1))
    np.testing.assert_array_equal(layer.weight.data, np.clip(before, -1, 1))


def test_large_lambda_lands_on_q():
    model, cb, layer = _setup(reg_rate=1e9)
    theta = layer.weight.data.astype(np.float64)
    cb.on_epoch_end(model, 1, {})
    cb.on_step_end(model, optim.SGD(model.parameters(), lr=1.0))
    # |x - q| = |theta - q| / (1 + lambda) <= 1e-9
    np.testing.assert_allclose(layer.weight.data, _official_ternarize(theta), rtol=1e-6, atol=1e-9)


def test_after_freeze_ternary_weights_never_change():
    rng = np.random.default_rng(3)
    model, cb, layer = _setup(freeze_epoch=2)
    opt = optim.Adam(model.parameters(), lr=0.05)
    cb.on_train_begin(model, opt)
    first = model.parameters()[0]

    def train_epoch(epoch):
        for _ in range(3):
            opt.zero_grad()
            out = model.forward(rng.standard_normal((4, 12)).astype(np.float32))
            model.backward(rng.standard_normal(out.shape).astype(np.float32))
            cb.after_backward(model, opt)
            opt.step()
            cb.on_step_end(model, opt)
        cb.on_epoch_end(model, epoch, {})

    train_epoch(1)
    assert layer.weight.requires_grad
    for _ in range(3):  # epoch 2's steps
        opt.zero_grad()
        out = model.forward(rng.standard_normal((4, 12)).astype(np.float32))
        model.backward(rng.standard_normal(out.shape).astype(np.float32))
        opt.step()
        cb.on_step_end(model, opt)
    before = layer.weight.data.copy()
    cb.on_epoch_end(model, 2, {})  # freeze_epoch: theta <- q(theta), frozen
    frozen = layer.weight.data.copy()
    np.testing.assert_allclose(frozen, _official_ternarize(before), rtol=1e-6)
    assert len(np.unique(frozen)) <= 3
    assert not layer.weight.requires_grad
    first_before = first.data.copy()
    train_epoch(3)
    train_epoch(4)
    np.testing.assert_array_equal(layer.weight.data, frozen)
    assert not np.array_equal(first.data, first_before)  # other layers still train
    # the training forward now uses the frozen ternary values, as do eval and to_ternary
    np.testing.assert_array_equal(layer.weight_quantizer(layer.weight.data), frozen)
    t = layer.weight_quantizer.to_ternary(layer.weight.data)
    np.testing.assert_array_equal(t.dense(), frozen)


@pytest.mark.parametrize(
    "kwargs",
    [{"reg_rate": -1.0}, {"freeze_epoch": 0}, {"clip": 0.0}, {"lam": 1.0}],
)
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        get("proxquant", **kwargs)


def test_smoke_training_digits():
    ds = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = quantize_model(model, get("proxquant", freeze_epoch=4))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    history = fit(model, ds, opt, epochs=5, batch_size=32, callbacks=callbacks, progress=False)
    # measured 0.972 after 5 epochs (seed 0), frozen after epoch 4
    assert history.last["test_acc"] >= 0.92
    (layer,) = quantized_layers(model)
    t = layer.weight_quantizer.to_ternary(layer.weight.data)
    assert len(np.unique(t.dense())) <= 3
    np.testing.assert_array_equal(layer.weight.data, t.dense())  # frozen at the ternary values
    assert 0.0 < t.sparsity < 1.0
    assert 0.0 < history.last["sparsity"] < 1.0
    model.eval()
    model.forward(ds.x_test[:5])
    np.testing.assert_array_equal(layer._w_hat, t.dense())
