"""Layer semantics other than gradients: BatchNorm statistics, MaxPool ties, Dropout, dtypes,
defaults, containers and boundary errors."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref.nn import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)

# ---------------------------------------------------------------------------------- BatchNorm


def test_batchnorm2d_training_matches_hand_computation_and_updates_running_stats():
    rng = np.random.default_rng(0)
    bn = BatchNorm2d(3, eps=1e-3, momentum=0.25, dtype=np.float64)
    gamma, beta = np.array([1.0, 2.0, -0.5]), np.array([0.0, 1.0, 3.0])
    bn.weight.data[:] = gamma
    bn.bias.data[:] = beta
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    for _ in range(3):
        x = rng.standard_normal((4, 3, 2, 5)) * 3 + 1
        y = bn(x)
        for c in range(3):
            v = x[:, c].ravel()  # the m = 4*2*5 = 40 values of channel c
            mu = v.sum() / v.size
            var_biased = ((v - mu) ** 2).sum() / v.size
            var_unbiased = ((v - mu) ** 2).sum() / (v.size - 1)
            expect = gamma[c] * (x[:, c] - mu) / math.sqrt(var_biased + 1e-3) + beta[c]
            np.testing.assert_allclose(y[:, c], expect, rtol=1e-12, atol=1e-12)
            # torch.nn.BatchNorm2d: running = (1 - momentum) * running + momentum * batch_stat,
            # with the unbiased variance in the running estimate
            rm[c] = 0.75 * rm[c] + 0.25 * mu
            rv[c] = 0.75 * rv[c] + 0.25 * var_unbiased
        np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12)
        np.testing.assert_allclose(bn.running_var, rv, rtol=1e-12)
    assert bn.num_batches_tracked == 3


def test_batchnorm1d_eval_uses_running_stats_and_does_not_update_them():
    bn = BatchNorm1d(2, eps=1e-5, dtype=np.float64)
    bn.running_mean[:] = [1.0, -2.0]
    bn.running_var[:] = [4.0, 0.25]
    bn.weight.data[:] = [2.0, 1.0]
    bn.bias.data[:] = [0.5, 0.0]
    bn.eval()
    x = np.array([[1.0, -2.0], [3.0, -1.5], [5.0, 0.0]])
    y = bn(x)
    expect = np.stack(
        [2 * (x[:, 0] - 1) / math.sqrt(4 + 1e-5) + 0.5, (x[:, 1] + 2) / math.sqrt(0.25 + 1e-5)],
        axis=1,
    )
    np.testing.assert_allclose(y, expect, rtol=1e-12)
    np.testing.assert_array_equal(bn.running_mean, [1.0, -2.0])
    np.testing.assert_array_equal(bn.running_var, [4.0, 0.25])
    # a single example is fine in eval mode
    assert bn(x[:1]).shape == (1, 2)


def test_batchnorm_training_output_is_normalised_per_channel():
    rng = np.random.default_rng(1)
    bn = BatchNorm1d(4, dtype=np.float64)
    x = rng.standard_normal((50, 4, 3)) * np.array([1.0, 5.0, 0.1, 20.0])[:, None] + 7
    y = bn(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0, atol=1e-12)
    var = x.var(axis=(0, 2))
    np.testing.assert_allclose(y.var(axis=(0, 2)), var / (var + bn.eps), rtol=1e-12)


def test_batchnorm_constant_channel_gives_no_nan():
    bn = BatchNorm2d(2)
    x = np.zeros((3, 2, 2, 2), np.float32)
    y = bn(x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(bn.backward(np.ones_like(y))))


def test_batchnorm_refuses_one_value_per_channel_in_training():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm1d(3)(np.ones((1, 3), np.float32))


def test_batchnorm_defaults_are_pytorch_defaults():
    bn = BatchNorm2d(5)
    assert bn.eps == 1e-5 and bn.momentum == 0.1
    np.testing.assert_array_equal(bn.weight.data, np.ones(5))
    np.testing.assert_array_equal(bn.bias.data, np.zeros(5))
    np.testing.assert_array_equal(bn.running_mean, np.zeros(5))
    np.testing.assert_array_equal(bn.running_var, np.ones(5))
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]


# ------------------------------------------------------------------------------------ MaxPool


def test_maxpool_ties_route_the_gradient_to_the_first_maximum_only():
    x = np.array(
        [
            [5.0, 5.0, 1.0, 2.0],
            [5.0, 5.0, 2.0, 2.0],
            [0.0, 3.0, 7.0, 1.0],
            [3.0, 3.0, 1.0, 7.0],
        ]
    )[None, None]
    pool = MaxPool2d(2)
    y = pool(x)
    np.testing.assert_array_equal(y[0, 0], [[5.0, 2.0], [3.0, 7.0]])
    dx = pool.backward(np.array([[[[10.0, 20.0], [30.0, 40.0]]]]))
    expect = np.array(
        [
            [10.0, 0.0, 0.0, 20.0],  # window (0,0): all four tie -> (0,0); (0,1): first 2 at (0,3)
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 30.0, 40.0, 0.0],  # window (1,0): 3s at (2,1),(3,0),(3,1) -> (2,1)
            [0.0, 0.0, 0.0, 0.0],  # window (1,1): 7s at (2,2),(3,3) -> (2,2)
        ]
    )
    np.testing.assert_array_equal(dx[0, 0], expect)


@settings(max_examples=40)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_maxpool_ties_exactly_one_winner_per_window(k, s, seed):
    # integer-valued inputs in {0, 1, 2}: ties everywhere. Each window passes dy = 1 to exactly
    # one element, the first maximum in row-major order; overlapping windows add up.
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(2, 2, 6, 7)).astype(np.float64)
    pool = MaxPool2d(k, s)
    y = pool(x)
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(dy)
    expect = np.zeros_like(x)
    for n in range(2):
        for c in range(2):
            for i in range(y.shape[2]):
                for j in range(y.shape[3]):
                    win = x[n, c, i * s : i * s + k, j * s : j * s + k]
                    a, b = np.unravel_index(np.argmax(win), win.shape)  # first max, row-major
                    assert y[n, c, i, j] == win.max()
                    expect[n, c, i * s + a, j * s + b] += dy[n, c, i, j]
    np.testing.assert_allclose(dx, expect, rtol=1e-14, atol=1e-14)


def test_pool_shapes_floor_mode_and_default_stride():
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 9)).astype(np.float32)
    assert MaxPool2d(2)(x).shape == (2, 3, 3, 4)
    assert MaxPool2d(3, 2)(x).shape == (2, 3, 3, 4)
    assert AvgPool2d((2, 3))(x).shape == (2, 3, 3, 3)
    np.testing.assert_allclose(AvgPool2d(2)(x)[0, 0, 0, 0], x[0, 0, :2, :2].mean(), rtol=1e-6)
    assert MaxPool2d(2)(x).dtype == np.float32 and AvgPool2d(2)(x).dtype == np.float32


# ------------------------------------------------------------------------------------ Dropout


def test_dropout_scales_survivors_and_preserves_the_mean():
    rng = np.random.default_rng(0)
    p = 0.3
    drop = Dropout(p, rng)
    x = np.full((400, 500), 2.0)
    y = drop(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2.0 / (1 - p), rtol=1e-12)
    # E[y] = x: keep fraction ~ Binomial(200000, 0.7)/200000, sd ~ 0.001 -> 5 sd bound
    assert abs(kept.mean() - (1 - p)) < 0.005
    assert abs(y.mean() - 2.0) < 2.0 * 0.005 / (1 - p)


def test_dropout_backward_reuses_the_exact_mask():
    rng = np.random.default_rng(1)
    drop = Dropout(0.5, rng)
    x = rng.standard_normal((6, 7)) + 3.0  # no zeros in x
    y = drop(x)
    dy = rng.standard_normal(x.shape)
    dx = drop.backward(dy)
    mask = (y != 0) * 2.0
    np.testing.assert_array_equal(dx, dy * mask)
    np.testing.assert_allclose(y, x * mask, rtol=1e-15)
    # a second forward draws a new mask
    assert not np.array_equal(drop(x) != 0, y != 0)


def test_dropout_eval_is_identity_and_p0_is_identity():
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    drop = Dropout(0.9, np.random.default_rng(0)).eval()
    np.testing.assert_array_equal(drop(x), x)
    np.testing.assert_array_equal(drop.backward(x), x)
    np.testing.assert_array_equal(Dropout(0.0, np.random.default_rng(0))(x), x)
    assert Dropout(0.5, np.random.default_rng(0))(x).dtype == np.float32


def test_dropout_is_reproducible_with_the_same_seed():
    x = np.ones((10, 10))
    a = Dropout(0.5, np.random.default_rng(42))(x)
    b = Dropout(0.5, np.random.default_rng(42))(x)
    np.testing.assert_array_equal(a, b)


def test_dropout_argument_checks():
    with pytest.raises(ValueError, match="p must be"):
        Dropout(1.0)
    with pytest.raises(TypeError, match="Generator"):
        Dropout(0.5, rng=42)


# -------------------------------------------------------------------------- Linear and Conv2d


def test_linear_is_x_wT_plus_b():
    rng = np.random.default_rng(0)
    lin = Linear(3, 2, rng=rng, dtype=np.float64)
    x = rng.standard_normal((4, 3))
    w, b = lin.weight.data, lin.bias.data
    expect = np.array([[sum(x[n, i] * w[k, i] for i in range(3)) + b[k] for k in range(2)]
                       for n in range(4)])  # fmt: skip
    np.testing.assert_allclose(lin(x), expect, rtol=1e-13)


def test_default_init_is_pytorch_uniform_fan_in():
    rng = np.random.default_rng(0)
    conv = Conv2d(8, 16, 3, rng=rng)
    bound = 1 / math.sqrt(8 * 9)
    for p in (conv.weight.data, conv.bias.data):
        assert p.dtype == np.float32
        assert np.abs(p).max() <= bound
    # U(-b, b): mean 0, variance b^2/3 (1152 samples)
    assert abs(conv.weight.data.mean()) < 0.1 * bound
    np.testing.assert_allclose(conv.weight.data.var(), bound**2 / 3, rtol=0.1)
    lin = Linear(100, 50, rng=rng)
    assert np.abs(lin.weight.data).max() <= 0.1 and np.abs(lin.weight.data).max() > 0.09


def test_same_seed_same_weights_and_rng_none_works():
    a = Linear(5, 4, rng=np.random.default_rng(3))
    b = Linear(5, 4, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert Conv2d(1, 2, 3).weight.shape == (2, 1, 3, 3)
    with pytest.raises(TypeError, match="Generator"):
        Linear(2, 2, rng=0)


def test_outputs_keep_the_input_dtype():
    rng = np.random.default_rng(0)
    layers32 = [Linear(4, 3, rng=rng), ReLU(), Flatten(), Dropout(0.5, rng), BatchNorm1d(4)]
    x32 = rng.standard_normal((2, 4)).astype(np.float32)
    for layer in layers32:
        y = layer(x32)
        assert y.dtype == np.float32, type(layer).__name__
        assert layer.backward(np.ones_like(y)).dtype == np.float32
    # float32 parameters, float64 input -> float64 output (and vice versa)
    x64 = x32.astype(np.float64)
    assert Linear(4, 3, rng=rng)(x64).dtype == np.float64
    assert Linear(4, 3, rng=rng, dtype=np.float64)(x32).dtype == np.float32
    conv = Conv2d(1, 2, 3, rng=rng, dtype=np.float64)
    img = rng.standard_normal((2, 1, 5, 5)).astype(np.float32)
    assert conv(img).dtype == np.float32
    assert conv.backward(np.ones((2, 2, 3, 3), np.float32)).dtype == np.float32
    assert conv.weight.grad.dtype == np.float64


def test_no_bias():
    lin = Linear(3, 2, bias=False, rng=np.random.default_rng(0))
    assert lin.bias is None and [n for n, _ in lin.named_parameters()] == ["weight"]
    conv = Conv2d(1, 2, 3, bias=False, rng=np.random.default_rng(0))
    x = np.zeros((1, 1, 4, 4), np.float32)
    np.testing.assert_array_equal(conv(x), 0)


def test_gradients_accumulate_across_backward_calls():
    rng = np.random.default_rng(0)
    lin = Linear(3, 2, rng=rng, dtype=np.float64)
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    lin(x)
    lin.backward(dy)
    once = lin.weight.grad.copy()
    lin(x)
    lin.backward(dy)
    np.testing.assert_allclose(lin.weight.grad, 2 * once)
    lin.zero_grad()
    np.testing.assert_array_equal(lin.weight.grad, 0)


def test_conv2d_reused_workspaces_give_the_results_of_a_fresh_layer():
    # Conv2d writes each forward's im2col matrix over the previous one and keeps one dcols
    # buffer for its backward: results must not depend on what those buffers held before
    rng = np.random.default_rng(0)
    reused = Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(1))
    for shape in [(4, 2, 6, 6), (4, 2, 6, 6), (2, 2, 5, 7), (4, 2, 6, 6)]:
        fresh = Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(1))
        x = rng.standard_normal(shape).astype(np.float32)
        y = reused(x)
        np.testing.assert_array_equal(y, fresh(x))
        dy = rng.standard_normal(y.shape).astype(np.float32)
        reused.zero_grad()
        np.testing.assert_array_equal(reused.backward(dy), fresh.backward(dy))
        np.testing.assert_array_equal(reused.weight.grad, fresh.weight.grad)


def _conv_net(rng):
    return Sequential(
        Conv2d(2, 3, 3, padding=1, rng=rng, dtype=np.float64),
        BatchNorm2d(3, dtype=np.float64),
        ReLU(),
        Flatten(),
        Linear(3 * 5 * 5, 4, rng=rng, dtype=np.float64),
    )


def _mlp(rng):
    return Sequential(
        Linear(2 * 5 * 5, 7, rng=rng, dtype=np.float64),
        BatchNorm1d(7, dtype=np.float64),
        ReLU(),
        Linear(7, 4, rng=rng, dtype=np.float64),
    )


def _pool_first(rng):  # no parameters in layer 0: the default backward_params runs backward
    return Sequential(MaxPool2d(1), Flatten(), Sequential(_mlp(rng)))


@pytest.mark.parametrize("build", [_conv_net, _mlp, _pool_first], ids=["conv", "mlp", "pool"])
def test_backward_params_accumulates_exactly_the_gradients_of_backward(build):
    rng = np.random.default_rng(0)
    model = build(rng)
    x = rng.standard_normal((6, 2 * 5 * 5) if build is _mlp else (6, 2, 5, 5))
    dy = rng.standard_normal((6, 4))
    model(x)
    model.backward(dy)
    full = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model(x)
    assert model.backward_params(dy) is None
    got = [p.grad for p in model.parameters()]
    assert len(got) == len(full) > 0
    for g, want in zip(got, full):
        np.testing.assert_array_equal(g, want)


def test_frozen_parameter_gets_no_gradient():
    rng = np.random.default_rng(0)
    lin = Linear(3, 2, rng=rng, dtype=np.float64)
    lin.weight.requires_grad = False
    lin(rng.standard_normal((4, 3)))
    lin.backward(np.ones((4, 2)))
    np.testing.assert_array_equal(lin.weight.grad, 0)
    np.testing.assert_array_equal(lin.bias.grad, 4)


# ------------------------------------------------------------------- boundary validation


@pytest.mark.parametrize(
    ("layer", "x", "expected"),
    [
        (Linear(4, 3), np.ones((2, 5), np.float32), r"Linear.*\(\*, 4\).*got shape \(2, 5\)"),
        (Linear(4, 3), np.ones((4,), np.float32), r"Linear.*got shape \(4,\)"),
        (Conv2d(3, 8, 3), np.ones((2, 1, 8, 8), np.float32), r"Conv2d.*\(\*, 3, \*, \*\)"),
        (BatchNorm2d(4), np.ones((2, 3, 5, 5), np.float32), r"BatchNorm2d.*\(N, 4, \*, \*\)"),
        (BatchNorm1d(4), np.ones((2, 3), np.float32), r"BatchNorm1d.*\(N, 4\)"),
        (MaxPool2d(2), np.ones((2, 3, 5), np.float32), r"MaxPool2d.*got shape \(2, 3, 5\)"),
        (Flatten(), np.ones((3,), np.float32), r"Flatten.*\(N, \.\.\.\)"),
    ],
)
def test_shape_mismatch_names_the_layer_and_shapes(layer, x, expected):
    with pytest.raises(ValueError, match=expected):
        layer(x)


def test_input_kind_errors():
    with pytest.raises(TypeError, match="floating"):
        Linear(2, 2)(np.ones((1, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="larger than the padded input"):
        Conv2d(1, 1, 5)(np.ones((1, 1, 3, 3), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        Linear(2, 2).backward(np.ones((1, 2)))
    lin = Linear(2, 3)
    lin(np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"dy must have the output shape \(4, 3\)"):
        lin.backward(np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match="in_features"):
        Linear(0, 2)
    with pytest.raises(TypeError, match="weight_quantizer"):
        Linear(2, 2, weight_quantizer=lambda w: w)(np.ones((1, 2), np.float32))


# ---------------------------------------------------------------------------------- Sequential


def test_sequential_container_protocol():
    rng = np.random.default_rng(0)
    layers = [Flatten(), Linear(12, 5, rng=rng), ReLU(), Linear(5, 2, rng=rng)]
    seq = Sequential(*layers)
    assert len(seq) == 4 and seq[1] is layers[1] and list(seq) == layers
    assert seq.layers == layers
    head = seq[:2]
    assert isinstance(head, Sequential) and head.layers == layers[:2]
    x = rng.standard_normal((3, 3, 4)).astype(np.float32)
    manual = x
    for layer in layers:
        manual = layer(manual)
    np.testing.assert_array_equal(seq(x), manual)
    names = [n for n, _ in seq.named_parameters()]
    assert names == ["1.weight", "1.bias", "3.weight", "3.bias"]
    seq.eval()
    assert not any(m.training for m in seq.modules())
    with pytest.raises(TypeError, match="Module"):
        Sequential(Linear(2, 2), "relu")
