"""Initialisers (fans, bounds, moments), model builders (shapes, structure), gradcheck helpers."""

import math

import numpy as np
import pytest

from ternref.nn import (
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    compute_fans,
    glorot_normal,
    glorot_uniform,
    kaiming_normal,
    kaiming_uniform,
    lenet5,
    mlp,
    numerical_gradient,
    rel_error,
    small_cnn,
    xavier_uniform,
)

# ----------------------------------------------------------------------------------------- init


def test_fans_of_linear_and_conv_shapes():
    assert compute_fans((10, 784)) == (784, 10)
    assert compute_fans((64, 32, 5, 5)) == (32 * 25, 64 * 25)
    assert compute_fans((8, 3, 3, 1)) == (9, 24)
    with pytest.raises(ValueError, match="at least 2"):
        compute_fans((5,))


@pytest.mark.parametrize(
    ("fn", "kwargs", "kind", "scale"),
    [
        # bound (uniform) or std (normal) for shape (64, 32, 5, 5): fan_in 800, fan_out 1600
        (kaiming_uniform, {}, "uniform", math.sqrt(2) * math.sqrt(3 / 800)),
        (kaiming_uniform, {"mode": "fan_out"}, "uniform", math.sqrt(2) * math.sqrt(3 / 1600)),
        (kaiming_normal, {"gain": 1.0}, "normal", 1 / math.sqrt(800)),
        (glorot_uniform, {}, "uniform", math.sqrt(6 / 2400)),
        (glorot_uniform, {"gain": 0.5}, "uniform", math.sqrt(1.5 / 2400)),  # the LAT init
        (glorot_normal, {}, "normal", math.sqrt(2 / 2400)),
    ],
)
def test_initialiser_scales(fn, kwargs, kind, scale):
    w = fn((64, 32, 5, 5), np.random.default_rng(0), **kwargs)
    assert w.shape == (64, 32, 5, 5) and w.dtype == np.float32
    n = w.size  # 51200 samples: sample std within ~1% of the truth
    if kind == "uniform":
        assert np.abs(w).max() <= scale * (1 + 1e-6)
        assert np.abs(w).max() > 0.99 * scale
        np.testing.assert_allclose(w.std(), scale / math.sqrt(3), rtol=0.02)
    else:
        np.testing.assert_allclose(w.std(), scale, rtol=0.02)
    assert abs(w.mean()) < 5 * w.std() / math.sqrt(n)


def test_initialisers_need_a_generator_and_honour_dtype_and_seed():
    for fn in (kaiming_uniform, kaiming_normal, glorot_uniform, glorot_normal):
        with pytest.raises(TypeError, match="Generator"):
            fn((3, 4), 0)
        with pytest.raises(TypeError, match="Generator"):
            fn((3, 4), None)
        assert fn((3, 4), np.random.default_rng(0), dtype=np.float64).dtype == np.float64
        np.testing.assert_array_equal(
            fn((3, 4), np.random.default_rng(5)), fn((3, 4), np.random.default_rng(5))
        )
    assert xavier_uniform is glorot_uniform
    with pytest.raises(ValueError, match="mode"):
        kaiming_uniform((3, 4), np.random.default_rng(0), mode="fan_avg")


# --------------------------------------------------------------------------------------- models


def _types(model):
    return [type(m).__name__ for m in model.layers]


def test_mlp_structure_and_shapes():
    rng = np.random.default_rng(0)
    net = mlp([64, 32, 16, 10], rng=rng)
    assert _types(net) == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert net(np.zeros((5, 1, 8, 8), np.float32)).shape == (5, 10)
    bn = mlp([64, 32, 10], rng=rng, batchnorm=True, dropout=0.2)
    assert _types(bn) == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert bn.layers[1].bias is None and bn.layers[-1].bias is not None
    assert mlp([4, 3], rng=rng).layers[-1].weight.shape == (3, 4)
    with pytest.raises(ValueError, match="at least 2"):
        mlp([4])


def test_lenet5_is_32c5_mp2_64c5_mp2_512fc_10():
    net = lenet5(np.random.default_rng(0))
    assert isinstance(net, Sequential)
    assert _types(net) == [
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
        "Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear",
    ]  # fmt: skip
    shapes = [p.shape for p in net.parameters()]
    assert (32, 1, 5, 5) in shapes and (64, 32, 5, 5) in shapes
    assert (512, 1600) in shapes and (10, 512) in shapes
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    y = net(x)
    assert y.shape == (3, 10) and y.dtype == np.float32
    dx = net.backward(np.ones_like(y))
    assert dx.shape == x.shape
    weight_layers = [m for m in net.modules() if isinstance(m, (Linear, Conv2d))]
    assert len(weight_layers) == 4


def test_small_cnn_shapes():
    net = small_cnn(np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((4, 1, 8, 8)).astype(np.float32)
    assert net(x).shape == (4, 10)
    assert net.backward(np.ones((4, 10), np.float32)).shape == x.shape
    assert sum(isinstance(m, (BatchNorm1d, BatchNorm2d)) for m in net.modules()) == 3
    net.eval()
    assert net(x[:1]).shape == (1, 10)  # eval mode works with a batch of one


def test_models_are_reproducible():
    a, b = small_cnn(np.random.default_rng(3)), small_cnn(np.random.default_rng(3))
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)


def test_a_few_sgd_steps_fit_a_small_batch():
    # a learning sanity check of the whole stack: plain SGD on one fixed batch drives the loss
    # down (a sign error anywhere in a backward would make it go up)
    rng = np.random.default_rng(0)
    net = small_cnn(rng)
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    t = rng.integers(0, 10, 16)
    loss = CrossEntropyLoss()
    first = None
    for _ in range(30):
        net.zero_grad()
        value = loss.forward(net(x), t)
        first = value if first is None else first
        net.backward(loss.backward())
        for p in net.parameters():
            p.data -= 0.1 * p.grad
    assert value < 0.2 * first


# ------------------------------------------------------------------------------------ gradcheck


def test_numerical_gradient_of_known_functions():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    g = numerical_gradient(lambda v: np.sum(v**3), x)
    np.testing.assert_allclose(g, 3 * x**2, rtol=1e-8)
    df = np.array([[1.0, 2.0], [3.0, 4.0]])
    g = numerical_gradient(np.sin, x, df)  # d/dx sum(sin(x) * df) = cos(x) * df
    np.testing.assert_allclose(g, np.cos(x) * df, rtol=1e-8)
    np.testing.assert_array_equal(x, [[1.0, -2.0], [0.5, 3.0]])  # restored
    scalar = np.array(2.0)
    np.testing.assert_allclose(numerical_gradient(lambda v: v * v, scalar), 4.0, rtol=1e-8)


def test_rel_error():
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert math.isclose(rel_error([1.0, 0.0], [0.0, 0.0]), 1.0)
    assert math.isclose(rel_error([2.0], [1.0]), 1 / 3)
    with pytest.raises(ValueError, match="shapes"):
        rel_error(np.zeros(2), np.zeros(3))


def test_unused_imports_are_exercised():
    # the public layers exported by ternref.nn that no other test here builds: their values
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 4, 6)).astype(np.float32)  # signs of both kinds, odd N

    np.testing.assert_array_equal(ReLU()(x), np.maximum(x, 0))
    np.testing.assert_array_equal(Flatten()(x), x.reshape(3, 48))  # C order: (c, h, w)
    windows = x.reshape(3, 2, 2, 2, 3, 2)  # (n, c, oh, a, ow, b): 2x2 windows of stride 2
    np.testing.assert_array_equal(MaxPool2d(2)(x), windows.max(axis=(3, 5)))

    # inverted dropout: each element kept with probability 1 - p (its generator's uniform draw
    # >= p) and scaled by 1 / (1 - p); in evaluation mode the identity
    p = 0.25
    drop = Dropout(p, np.random.default_rng(7))
    big = rng.standard_normal((200, 1, 10, 10)).astype(np.float32)
    y = drop(big)
    keep = np.random.default_rng(7).random(big.shape, dtype=np.float32) >= p
    np.testing.assert_array_equal(y, np.where(keep, big * np.float32(1 / (1 - p)), 0))
    assert abs(keep.mean() - (1 - p)) < 4 * math.sqrt(p * (1 - p) / keep.size)
    scale = np.float32(1 / (1 - p))
    np.testing.assert_array_equal(drop.backward(np.ones_like(big)), np.where(keep, scale, 0))
    drop.eval()
    np.testing.assert_array_equal(drop(big), big)
