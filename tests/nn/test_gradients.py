"""Every layer's backward against central differences (float64, relative error < 1e-6).

Hypothesis picks the shapes, strides, paddings and batch sizes; the values come from a Generator
seeded by hypothesis, so a failure prints everything needed to reproduce it.
"""

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
    Module,
    Parameter,
    ReLU,
    Sequential,
    check_layer_gradients,
    mlp,
)

F64 = np.float64
TOL = 1e-6
seeds = st.integers(0, 2**32 - 1)
FD = settings(max_examples=50)


class ScaleQuantizer(Module):
    """Test-local weight quantizer ``w_hat = c * w`` with a learned scalar ``c``.

    dL/dc = sum(dL/dw_hat * w), dL/dw = c * dL/dw_hat (exact, not an STE), so finite
    differences can check both the hook's chain rule and the child's parameter gradient.
    """

    def __init__(self, c=1.7):
        super().__init__()
        self.c = Parameter(np.array(c, dtype=F64), "c")
        self._w = None

    def forward(self, w):
        self._w = w
        return self.c.data * w

    def backward(self, dw_hat):
        self.c.grad += np.sum(dw_hat * self._w)
        return self.c.data * dw_hat


@FD
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 5), st.booleans(), seeds)
def test_linear(n, fin, fout, bias, seed):
    rng = np.random.default_rng(seed)
    layer = Linear(fin, fout, bias=bias, rng=rng, dtype=F64)
    assert check_layer_gradients(layer, rng.standard_normal((n, fin)), rng) < TOL


@st.composite
def conv_case(draw):
    n, cin, cout = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(max(1, k[0] - 2 * p[0]), 6))
    w = draw(st.integers(max(1, k[1] - 2 * p[1]), 6))
    return (n, cin, h, w), cout, k, s, p


@FD
@given(conv_case(), st.booleans(), seeds)
def test_conv2d(case, bias, seed):
    shape, cout, k, s, p = case
    rng = np.random.default_rng(seed)
    layer = Conv2d(shape[1], cout, k, stride=s, padding=p, bias=bias, rng=rng, dtype=F64)
    assert check_layer_gradients(layer, rng.standard_normal(shape), rng) < TOL


@st.composite
def pool_case(draw):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = None if draw(st.booleans()) else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h, w = draw(st.integers(k[0], 7)), draw(st.integers(k[1], 7))
    return (n, c, h, w), k, s


@FD
@given(pool_case(), seeds)
def test_maxpool_without_ties(case, seed):
    shape, k, s = case
    rng = np.random.default_rng(seed)
    # distinct values 0.01 apart: no ties, and a step of h = 1e-6 never changes the argmax
    x = (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01).astype(F64)
    assert check_layer_gradients(MaxPool2d(k, s), x, rng) < TOL


@FD
@given(pool_case(), seeds)
def test_avgpool(case, seed):
    shape, k, s = case
    rng = np.random.default_rng(seed)
    assert check_layer_gradients(AvgPool2d(k, s), rng.standard_normal(shape), rng) < TOL


@FD
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), seeds)
def test_relu_away_from_the_kink(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)
    assert check_layer_gradients(ReLU(), x, rng) < TOL


@FD
@given(st.lists(st.integers(1, 4), min_size=2, max_size=4), seeds)
def test_flatten(shape, seed):
    rng = np.random.default_rng(seed)
    assert check_layer_gradients(Flatten(), rng.standard_normal(shape), rng) < TOL


@FD
@given(st.integers(2, 6), st.integers(1, 4), st.integers(0, 2), st.booleans(), seeds)
def test_batchnorm1d_training_couples_the_batch(n, c, length, eval_mode, seed):
    # training mode: mu and var depend on every row, so dx has the full coupling term
    rng = np.random.default_rng(seed)
    shape = (n, c) if length == 0 else (n, c, length)
    if not eval_mode and n * max(length, 1) < 3:
        # with m = 2 values per channel xhat = +-1 whatever x is, so dx ~ eps-sized and below
        # finite-difference resolution; m >= 3 keeps the check meaningful
        shape = (3, *shape[1:])
    bn = BatchNorm1d(c, dtype=F64)
    bn.weight.data[:] = rng.uniform(0.5, 2.0, c)
    bn.bias.data[:] = rng.standard_normal(c)
    if eval_mode:
        bn.running_mean[:] = rng.standard_normal(c)
        bn.running_var[:] = rng.uniform(0.5, 2.0, c)
        bn.eval()
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0) + rng.standard_normal()
    assert check_layer_gradients(bn, x, rng) < TOL


@FD
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), seeds)
def test_batchnorm2d_training(n, c, h, w, seed):
    if n * h * w < 3:
        n = 3  # see the BatchNorm1d test: m = 2 makes dx vanish
    rng = np.random.default_rng(seed)
    bn = BatchNorm2d(c, dtype=F64)
    bn.weight.data[:] = rng.uniform(0.5, 2.0, c)
    bn.bias.data[:] = rng.standard_normal(c)
    x = rng.standard_normal((n, c, h, w)) * 2.0 + 1.0
    assert check_layer_gradients(bn, x, rng) < TOL


def test_batchnorm2d_eval():
    rng = np.random.default_rng(3)
    bn = BatchNorm2d(3, dtype=F64)
    bn.running_mean[:] = [0.5, -1.0, 2.0]
    bn.running_var[:] = [0.3, 1.5, 4.0]
    bn.weight.data[:] = [1.5, -0.5, 2.0]
    bn.eval()
    assert check_layer_gradients(bn, rng.standard_normal((2, 3, 3, 3)), rng) < TOL


def test_dropout_eval_is_identity_for_gradients():
    rng = np.random.default_rng(0)
    assert check_layer_gradients(Dropout(0.5, rng).eval(), rng.standard_normal((4, 5)), rng) < TOL


@FD
@given(
    st.sampled_from(["linear", "conv"]),
    st.floats(0.2, 3.0),
    st.booleans(),
    seeds,
)
def test_weight_quantizer_hook_gradients(kind, c, assign_later, seed):
    rng = np.random.default_rng(seed)
    q = ScaleQuantizer(c)
    if kind == "linear":
        layer = Linear(4, 3, rng=rng, dtype=F64, weight_quantizer=None if assign_later else q)
        x = rng.standard_normal((3, 4))
    else:
        layer = Conv2d(2, 3, 3, padding=1, rng=rng, dtype=F64,
                       weight_quantizer=None if assign_later else q)  # fmt: skip
        x = rng.standard_normal((2, 2, 4, 4))
    if assign_later:
        layer.weight_quantizer = q
    # the learned scale is reached through Module.children()
    assert any(p is q.c for p in layer.parameters())
    assert check_layer_gradients(layer, x, rng) < TOL


def test_weight_quantizer_forward_uses_w_hat_and_keeps_latent_weights():
    rng = np.random.default_rng(1)
    layer = Conv2d(2, 3, 3, rng=rng, dtype=F64, weight_quantizer=ScaleQuantizer(0.5))
    plain = Conv2d(2, 3, 3, rng=rng, dtype=F64)
    plain.weight.data[...] = 0.5 * layer.weight.data
    plain.bias.data[...] = layer.bias.data
    latent = layer.weight.data.copy()
    x = rng.standard_normal((2, 2, 5, 5))
    np.testing.assert_allclose(layer(x), plain(x), rtol=1e-13)
    np.testing.assert_array_equal(layer.weight.data, latent)
    dy = rng.standard_normal((2, 3, 3, 3))
    # dx uses w_hat, so it equals the plain layer's dx with weights 0.5*w
    np.testing.assert_allclose(layer.backward(dy), plain.backward(dy), rtol=1e-12)
    # dL/dw = c * dL/dw_hat (chain rule through the quantizer)
    np.testing.assert_allclose(layer.weight.grad, 0.5 * plain.weight.grad, rtol=1e-12)


def test_sequential_models_end_to_end():
    rng = np.random.default_rng(7)
    net = mlp([6, 5, 4, 3], rng=rng, batchnorm=True, dtype=F64)
    assert check_layer_gradients(net, rng.standard_normal((5, 2, 3)), rng) < TOL
    # a scaled-down small_cnn (same layer sequence, few parameters so FD stays fast)
    cnn = Sequential(
        Conv2d(1, 2, 3, padding=1, bias=False, rng=rng, dtype=F64),
        BatchNorm2d(2, dtype=F64),
        ReLU(),
        MaxPool2d(2),
        # no bias: BatchNorm1d downstream would make its gradient exactly 0 (FD noise only)
        Conv2d(2, 3, 2, stride=1, bias=False, rng=rng, dtype=F64),
        AvgPool2d(2),
        Flatten(),
        Linear(3, 4, bias=False, rng=rng, dtype=F64),
        BatchNorm1d(4, dtype=F64),
        ReLU(),
        Linear(4, 3, rng=rng, dtype=F64),
    )
    # continuous inputs: ties inside a pooling window have probability zero
    assert check_layer_gradients(cnn, rng.standard_normal((4, 1, 6, 6)), rng) < TOL


def test_sequential_backward_runs_in_reverse():
    rng = np.random.default_rng(0)
    seq = Sequential(Linear(3, 4, rng=rng, dtype=F64), ReLU(), Linear(4, 2, rng=rng, dtype=F64))
    x = rng.standard_normal((5, 3)) + 0.1
    assert check_layer_gradients(seq, x, rng) < TOL


def test_check_layer_gradients_detects_a_wrong_backward():
    class WrongReLU(ReLU):
        def backward(self, dy):
            return super().backward(dy) * 1.01  # 1% off

    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.0, (3, 4))
    assert check_layer_gradients(WrongReLU(), x, rng) > 1e-3

    class WrongLinear(Linear):
        def backward(self, dy):
            dx = super().backward(dy)
            self.bias.grad *= 2
            return dx

    assert check_layer_gradients(WrongLinear(4, 2, rng=rng, dtype=F64), x, rng) > 1e-3


def test_check_layer_gradients_requires_float64():
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="float64"):
        check_layer_gradients(Linear(2, 2, rng=rng), np.ones((1, 2)), rng)
    with pytest.raises(TypeError, match="float64"):
        check_layer_gradients(ReLU(), np.ones((1, 2), np.float32), rng)
