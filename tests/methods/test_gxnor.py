"""GXNOR-Net (Deng et al. 2018): discrete state transition, no latent weights, ternary neurons."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref import methods, nn
from ternref.data import load_digits
from ternref.methods.gxnor import GXNORActivation, GXNORQuantizer
from ternref.optim import Adam
from ternref.train import fit


def _on_grid(w):
    return bool(np.all(np.isin(w, (-1.0, 0.0, 1.0))))


def _one_step(model, callbacks, opt, x, y, loss):
    opt.zero_grad()
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    for cb in callbacks:
        cb.after_backward(model, opt)
    opt.step()
    for cb in callbacks:
        cb.on_step_end(model, opt)


def _small(seed, lr, batchnorm=True):
    model = nn.mlp([6, 8, 8, 3], rng=np.random.default_rng(seed), batchnorm=batchnorm)
    method = methods.get("gxnor", rng=np.random.default_rng(seed))
    callbacks = methods.quantize_model(model, method)
    for cb in callbacks:
        cb.on_train_begin(model, None)
    return model, callbacks, Adam(model.parameters(), lr=lr)


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**16),
    lr=st.floats(1e-4, 5.0),
    steps=st.integers(1, 4),
    scale=st.floats(0.01, 100.0),
)
def test_states_always_on_the_grid(seed, lr, steps, scale):
    # P13: DST iterates lie on Z_1 = {-1, 0, 1} whatever the size of the proposed update
    model, callbacks, opt = _small(seed, lr)
    rng = np.random.default_rng(seed + 1)
    layer = methods.quantized_layers(model)[0]
    assert _on_grid(layer.weight.data)
    loss = nn.CrossEntropyLoss()
    for _ in range(steps):
        x = (scale * rng.standard_normal((5, 6))).astype(np.float32)
        _one_step(model, callbacks, opt, x, rng.integers(0, 3, 5), loss)
        assert _on_grid(layer.weight.data)


def test_dst_replaces_the_adam_step():
    # Adam's first step is exactly -lr * sign(g) (m_hat / sqrt(v_hat) = g / |g|, eps aside), so
    # with lr = 5 > 2 the DST takes floor(5) whole steps and clips: W = -sign(g) where g != 0.
    model, callbacks, opt = _small(3, lr=5.0)
    layer = methods.quantized_layers(model)[0]
    w0 = layer.weight.data.copy()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    loss = nn.CrossEntropyLoss()
    # capture the gradient the DST step will use
    grads = {}

    class Spy(methods.base.Callback):
        def after_backward(self, model, optimizer):
            grads["g"] = layer.weight.grad.copy()

    _one_step(model, [Spy(), *callbacks], opt, x, y, loss)
    g = grads["g"]
    moved = np.abs(g) > 1e-5  # |g| >> Adam's eps
    assert moved.any()
    np.testing.assert_array_equal(layer.weight.data[moved], -np.sign(g[moved]))
    np.testing.assert_array_equal(layer.weight.data[g == 0], w0[g == 0])


def test_small_steps_transition_with_tanh_probability():
    # Adam's first step is +-lr; with lr = 0.1 < L = 1 each weight moves one state with
    # probability tanh(3 * 0.1) (unless clipped); count over many weights
    model = nn.mlp([64, 200, 200, 10], rng=np.random.default_rng(0), batchnorm=True)
    callbacks = methods.quantize_model(model, methods.get("gxnor"))
    opt = Adam(model.parameters(), lr=0.1)
    layer = methods.quantized_layers(model)[0]
    w0 = layer.weight.data.copy()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 64)).astype(np.float32)
    grads = {}

    class Spy(methods.base.Callback):
        def after_backward(self, model, optimizer):
            grads["g"] = layer.weight.grad.copy()

    _one_step(model, [Spy(), *callbacks], opt, x, rng.integers(0, 10, 64), nn.CrossEntropyLoss())
    g = grads["g"]
    # weights whose move is not blocked by the clip: direction -sign(g) stays inside [-1, 1]
    # (|g| > 1e-5 >> Adam's eps 1e-8, so the step is lr to 1e-3 relative)
    free = (np.abs(g) > 1e-5) & (np.abs(w0 - np.sign(g)) <= 1)
    changed = layer.weight.data[free] != w0[free]
    p = np.tanh(0.3)
    n = free.sum()
    assert n > 3000
    assert abs(changed.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_equal(
        layer.weight.data[free][changed], (w0 - np.sign(g))[free][changed]
    )


def test_activation_forward_and_window_backward():
    x = np.array([-2.0, -1.5, -1.2, -1.0, -0.7, -0.5, 0.0, 0.3, 0.6, 1.0, 1.4, 1.5, 3.0])
    act = GXNORActivation()
    # the paper's phi(x) = sign(x) 1[|x| > 1]: |x| = 1 is in the zero zone
    np.testing.assert_array_equal(act(x), [-1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    dy = np.arange(1.0, 14.0)
    window = np.array([0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0])  # 1[0.5 < |x| < 1.5]
    np.testing.assert_array_equal(act.backward(dy), dy * window)
    # a = 1/4: height 1/(2a) = 2 on 0.75 < |x| < 1.25
    act = GXNORActivation(a=0.25)
    act(x)
    np.testing.assert_array_equal(
        act.backward(dy), dy * 2 * np.array([0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    )


def test_quantizer_is_exact_identity_on_states():
    w = np.array([[1.0, 0.0, -1.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    q = GXNORQuantizer()
    np.testing.assert_array_equal(q(w), w)
    g = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(q.backward(g), g)
    t = q.to_ternary(w)
    np.testing.assert_array_equal(t.codes, w.astype(np.int8))
    assert float(t.alpha_pos) == 1.0
    with pytest.raises(ValueError, match="discrete space"):
        q(w + 0.25)


def test_initialisation_on_the_grid():
    model = nn.mlp([64, 300, 300, 10], rng=np.random.default_rng(0))
    methods.quantize_model(model, methods.get("gxnor", rng=np.random.default_rng(5)))
    w = methods.quantized_layers(model)[0].weight.data
    assert _on_grid(w)
    # nearest state of U(-1, 1): P(0) = 1/2, P(+1) = P(-1) = 1/4
    n = w.size
    for value, p in ((0.0, 0.5), (1.0, 0.25), (-1.0, 0.25)):
        assert abs(np.mean(w == value) - p) < 4 * np.sqrt(p * (1 - p) / n)
    # "project": nearest state of the layer's own weights
    model = nn.mlp([4, 3, 3, 2], rng=np.random.default_rng(0))
    layer = [m for m in model.layers if isinstance(m, nn.Linear)][1]
    layer.weight.data[...] = np.array([[0.4, 0.6, -0.7], [-0.2, 2.0, 0.5], [0, -0.51, 0.49]])
    methods.quantize_model(model, methods.get("gxnor", init="project"))
    np.testing.assert_array_equal(layer.weight.data, [[0, 1, -1], [0, 1, 0], [0, -1, 0]])


def test_attach_replaces_relu_and_loss_hook():
    model = nn.mlp([64, 16, 16, 10], rng=np.random.default_rng(0), batchnorm=True)
    methods.quantize_model(model, methods.get("gxnor"))
    kinds = [type(m).__name__ for m in model.layers]
    # Flatten, Linear, BN, [GXNOR activation replaces ReLU], Linear (ternary), BN, ReLU, Linear
    assert kinds == [
        "Flatten", "Linear", "BatchNorm1d", "GXNORActivation", "Linear", "BatchNorm1d", "ReLU",
        "Linear",
    ]  # fmt: skip
    assert methods.get("gxnor").loss() is None
    assert isinstance(methods.get("gxnor", hinge_loss=True).loss(), nn.SquaredHingeLoss)
    assert methods.info("gxnor").ternary == "W+A"


def test_bad_hyperparameters():
    for kwargs, match in (
        ({"H": 0.0}, "H"),
        ({"m": -1.0}, "m"),
        ({"tau": "sigmoid"}, "tau"),
        ({"init": "zeros"}, "init"),
        ({"a": 0.0}, "a"),
        ({"momentum": 0.9}, "no hyper-parameter"),
    ):
        with pytest.raises(ValueError, match=match):
            methods.get("gxnor", **kwargs)
    with pytest.raises(TypeError, match="rng"):
        methods.get("gxnor", rng=0)


def test_training_smoke_digits():
    data = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0), batchnorm=True)
    callbacks = methods.quantize_model(model, methods.get("gxnor"))
    opt = Adam(model.parameters(), lr=1e-3)
    hist = fit(model, data, opt, epochs=4, batch_size=64, callbacks=callbacks, progress=False)
    # measured 0.97 (4 epochs, batch 64, Adam 1e-3, MLP with BatchNorm as in the paper)
    assert hist.last["test_acc"] >= 0.88
    assert 0.0 < hist.last["sparsity"] < 1.0
    assert hist.last["flip_ratio"] > 0  # DST moved states
    layer = methods.quantized_layers(model)[0]
    assert _on_grid(layer.weight.data)
    dense = layer.weight_quantizer.to_ternary(layer.weight.data).dense()
    np.testing.assert_array_equal(dense, layer.weight.data)
    x = np.random.default_rng(2).standard_normal((5, layer.in_features)).astype(np.float32)
    model.eval()
    np.testing.assert_array_equal(layer.forward(x), x @ dense.T)
