"""STTN (Xu et al. 2020): two binary kernels merged into one ternary kernel."""

import numpy as np
import pytest

from ternref import methods, nn
from ternref.data import load_digits
from ternref.methods.sttn import STTNActivation, STTNQuantizer
from ternref.nn.gradcheck import numerical_gradient
from ternref.optim import Adam
from ternref.train import fit


def _kernels(rng, shape=(5, 7)):
    # values in (-1, 1) and away from 0 so that sgn is locally constant for finite differences
    w1 = rng.uniform(0.05, 0.95, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    w2 = rng.uniform(0.05, 0.95, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return w1, w2


def _alpha(w1, w2):
    # alpha_c = (||W1_c||_1 + ||W2_c||_1) / (2n), written out channel by channel
    n = w1[0].size
    return np.array([(np.abs(w1[c]).sum() + np.abs(w2[c]).sum()) / (2 * n) for c in range(len(w1))])


def test_merged_ternary_equals_sum_of_binary_kernels_exactly():
    # methods.md P15: T = B1 + B2 with B_k = alpha * sgn(W_k), bit for bit
    rng = np.random.default_rng(0)
    w1, w2 = _kernels(rng)
    q = STTNQuantizer(w2)
    w_hat = q(w1)
    alpha = _alpha(w1, w2)[:, None]
    b1 = alpha * np.where(w1 >= 0, 1.0, -1.0)
    b2 = alpha * np.where(w2 >= 0, 1.0, -1.0)
    np.testing.assert_array_equal(w_hat, b1 + b2)
    # ternary per channel: {-2 alpha, 0, 2 alpha}; zero exactly where the signs disagree
    np.testing.assert_array_equal(w_hat == 0, np.sign(w1) != np.sign(w2))
    t = q.to_ternary(w1)
    np.testing.assert_array_equal(t.dense(), b1 + b2)
    np.testing.assert_allclose(np.squeeze(t.alpha_pos), 2 * alpha[:, 0], rtol=1e-12)


@pytest.mark.parametrize("shape", [(5, 7), (3, 2, 2, 2)])  # Linear and Conv2d weights
@pytest.mark.parametrize("clip", [1.0, 0.5])
def test_backward_is_ste_plus_exact_alpha_coupling(clip, shape):
    rng = np.random.default_rng(1)
    w1, w2 = _kernels(rng, shape)
    g = rng.standard_normal(w1.shape)
    q = STTNQuantizer(w2, clip=clip)
    q(w1)
    d1 = q.backward(g)
    d2 = q.weight2.grad.copy()
    alpha = _alpha(w1, w2).reshape((-1,) + (1,) * (w1.ndim - 1))
    # the alpha-coupling part is the exact derivative of sum(g * W_hat) with signs held fixed,
    # which finite differences measure (sgn is locally constant away from 0)
    fd1 = numerical_gradient(lambda w: STTNQuantizer(w2).forward(w), w1.copy(), g)
    fd2 = numerical_gradient(lambda w: STTNQuantizer(w).forward(w1), w2.copy(), g)
    np.testing.assert_allclose(d1, alpha * g * (np.abs(w1) <= clip) + fd1, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(d2, alpha * g * (np.abs(w2) <= clip) + fd2, rtol=1e-6, atol=1e-9)
    # and the coupling itself, by hand: sgn(W_k,i)/(2n) * sum_j g_j (sgn W1_j + sgn W2_j)
    n = w1[0].size
    axes = tuple(range(1, w1.ndim))
    s = (g * (np.sign(w1) + np.sign(w2))).sum(axis=axes, keepdims=True) / (2 * n)
    np.testing.assert_allclose(fd1, np.sign(w1) * s, rtol=1e-6, atol=1e-9)


def test_activation_forward_ties_and_clipped_ste():
    x = np.array([-2.0, -1.0, -0.6, -0.5, -0.2, 0.0, 0.4, 0.5, 0.9, 1.0, 1.5], dtype=np.float32)
    act = STTNActivation()
    y = act(x)
    # code's rule: -1 below -0.5; -0.5 -> 0; +0.5 -> +1
    np.testing.assert_array_equal(y, [-1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 1])
    assert y.dtype == np.float32
    dy = np.arange(1, 12, dtype=np.float32)
    np.testing.assert_array_equal(
        act.backward(dy), dy * np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    )


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="init_factor"):
        methods.get("sttn", init_factor=0.0)
    with pytest.raises(ValueError, match="clip"):
        methods.get("sttn", clip=-1.0)
    with pytest.raises(ValueError, match="no hyper-parameter"):
        methods.get("sttn", alpha=1.0)
    with pytest.raises(TypeError, match="activations"):
        methods.get("sttn", activations="yes")


def test_attach_initialises_kernels_apart_and_replaces_relu():
    model = nn.mlp([64, 32, 32, 10], rng=np.random.default_rng(0))
    w = model.layers[3].weight.data.copy()  # the middle Linear (Flatten, L, ReLU, L, ReLU, L)
    methods.quantize_model(model, methods.get("sttn"))
    layer = methods.quantized_layers(model)[0]
    delta = 0.7 * np.mean(np.abs(w), axis=1, keepdims=True)
    np.testing.assert_allclose(layer.weight.data, w + delta, rtol=1e-6)
    np.testing.assert_allclose(layer.weight_quantizer.weight2.data, w - delta, rtol=1e-6)
    # initial support = TWN's |W| > 0.7 mean|W| (per channel)
    t = layer.weight_quantizer.to_ternary(layer.weight.data)
    np.testing.assert_array_equal(t.codes != 0, np.abs(w) > delta)
    assert sum(isinstance(m, nn.ReLU) for m in model.layers) == 1
    assert sum(isinstance(m, STTNActivation) for m in model.layers) == 1
    ids = {id(p) for p in model.parameters()}
    assert id(layer.weight_quantizer.weight2) in ids


def test_training_smoke_digits():
    data = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = methods.quantize_model(model, methods.get("sttn"))
    opt = Adam(model.parameters(), lr=1e-3)
    hist = fit(model, data, opt, epochs=4, batch_size=64, callbacks=callbacks, progress=False)
    # measured 0.95 (4 epochs, batch 64, Adam 1e-3)
    assert hist.last["test_acc"] >= 0.88
    assert 0.0 < hist.last["sparsity"] < 1.0
    layer = methods.quantized_layers(model)[0]
    q = layer.weight_quantizer
    assert np.all(np.abs(layer.weight.data) <= 1) and np.all(np.abs(q.weight2.data) <= 1)
    dense = q.to_ternary(layer.weight.data).dense()
    for row in dense:
        assert len(np.unique(row)) <= 3
    x = np.random.default_rng(2).standard_normal((5, layer.in_features)).astype(np.float32)
    model.eval()
    np.testing.assert_array_equal(layer.forward(x), x @ dense.T + layer.bias.data)
