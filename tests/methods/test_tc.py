"""TernaryConnect method: stochastic forward, deterministic test form, clipped STE, clipping.

Lin, Courbariaux, Memisevic, Bengio, "Neural Networks with Few Multiplications", arXiv:1510.03009.
"""

import math

import numpy as np
import pytest

from ternref import nn, optim
from ternref.data import load_digits
from ternref.methods import get, quantize_model, quantized_layers
from ternref.methods.tc import TCQuantizer
from ternref.train import fit


def test_training_samples_are_unbiased_and_sign_preserving():
    h = 0.5
    w = np.array([-0.7, -0.5, -0.2, 0.0, 0.1, 0.35, 0.5, 0.9])
    q = TCQuantizer(h, np.random.default_rng(0))
    n = 4000
    samples = np.stack([q(w) for _ in range(n)])
    assert set(np.unique(samples).tolist()) <= {-h, 0.0, h}
    assert np.all(samples * np.sign(w) >= 0)  # never the opposite sign
    expected = np.clip(w, -h, h)  # E[w_hat] = clip(w, -H, H)
    p = np.abs(expected) / h
    std = h * np.sqrt(p * (1 - p) / n)  # Var[w_hat] = H^2 p (1 - p)
    assert np.all(np.abs(samples.mean(axis=0) - expected) <= 5 * std + 1e-12)
    # |w| >= H is deterministic
    assert np.all(samples[:, [0, 1, 6, 7]] == np.sign(w[[0, 1, 6, 7]]) * h)


def test_eval_form_is_the_mode_with_ties_to_zero():
    h = 0.5
    w = np.array([-0.7, -0.3, -0.25, -0.2, 0.0, 0.25, 0.26, 0.9])
    q = TCQuantizer(h, np.random.default_rng(0))
    q.eval()
    # H * sign(w) * 1[|w| > H/2]; |w| = 0.25 = H/2 goes to 0
    np.testing.assert_array_equal(q(w), [-0.5, -0.5, 0, 0, 0, 0, 0.5, 0.5])
    np.testing.assert_array_equal(q.to_ternary(w).dense(), q(w))


def test_to_ternary_is_deterministic_even_in_training_mode():
    w = np.random.default_rng(1).uniform(-0.1, 0.1, size=(5, 6)).astype(np.float32)
    q = TCQuantizer(0.1, np.random.default_rng(0))
    a, b = q.to_ternary(w), q.to_ternary(w)
    assert a == b
    assert q.training
    q.eval()
    np.testing.assert_array_equal(a.dense(), q(w))
    assert a.dense().dtype == np.float32


def test_clipped_ste_backward():
    w = np.array([-0.8, -0.5, 0.0, 0.49, 0.5, 0.51])
    g = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    q = TCQuantizer(0.5, np.random.default_rng(0))
    q(w)
    np.testing.assert_array_equal(q.backward(g), [0, 2, 3, 4, 5, 0])  # 1[|w| <= H]


def test_glorot_bound_and_callback_clips_latent_weights():
    model = nn.mlp([64, 256, 128, 10], rng=np.random.default_rng(0))
    callbacks = quantize_model(model, get("tc"))
    (layer,) = quantized_layers(model)
    h = layer.weight_quantizer.bound
    assert h == pytest.approx(math.sqrt(6.0 / (256 + 128)) / 2)
    layer.weight.data[0, :3] = [5.0, -5.0, 0.01]
    for cb in callbacks:
        cb.on_step_end(model, None)
    np.testing.assert_allclose(layer.weight.data[0, :3], [h, -h, 0.01], rtol=1e-6)
    assert np.abs(layer.weight.data).max() <= np.float32(h)


def test_fixed_bound_and_seed_reproducibility():
    w = np.random.default_rng(2).uniform(-1, 1, size=(3, 50))

    def draw(seed):
        model = nn.mlp([64, 50, 3, 10], rng=np.random.default_rng(0), dtype=np.float64)
        quantize_model(model, get("tc", bound=1.0, seed=seed))
        (layer,) = quantized_layers(model)
        assert layer.weight_quantizer.bound == 1.0
        return layer.weight_quantizer(w)

    np.testing.assert_array_equal(draw(3), draw(3))
    assert not np.array_equal(draw(3), draw(4))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"bound": 0.0}, "bound"),
        ({"bound": "he"}, "bound"),
        ({"seed": -1}, "seed"),
        ({"H": 1}, "H"),
    ],
)
def test_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        get("tc", **kwargs)


def test_smoke_training_digits():
    ds = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = quantize_model(model, get("tc"))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    history = fit(model, ds, opt, epochs=5, batch_size=32, callbacks=callbacks, progress=False)
    # measured 0.978 after 5 epochs (seed 0)
    assert history.last["test_acc"] >= 0.93
    (layer,) = quantized_layers(model)
    q = layer.weight_quantizer
    t = q.to_ternary(layer.weight.data)
    assert len(np.unique(t.dense())) <= 3
    assert 0.0 < t.sparsity < 1.0
    assert np.abs(layer.weight.data).max() <= np.float32(q.bound)
    model.eval()
    model.forward(ds.x_test[:5])
    np.testing.assert_array_equal(layer._w_hat, t.dense())
