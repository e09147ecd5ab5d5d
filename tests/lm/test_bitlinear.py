"""BitLinear (BitNet b1.58's layer): forward against the released code written out in NumPy,
backward against central finite differences of the straight-through surrogate (float64), and the
weight rule taken from ``ternref.projections.bitnet``."""

import numpy as np
import pytest

from ternref.methods.bitlinear import BitLinear
from ternref.methods.bitnet import BitNetActivation
from ternref.methods.twn import TWNQuantizer
from ternref.nn import numerical_gradient, rel_error
from ternref.projections import bitnet as bitnet_projection

F64 = np.float64


def reference_forward(x, w, gain, eps_norm=1e-5):
    """Figure 3 of the BitNet b1.58 FAQ, in NumPy: RMSNorm, activation_quant, weight_quant."""
    x2 = x.reshape(-1, x.shape[-1])
    h = gain * x2 / np.sqrt(np.mean(x2 * x2, axis=-1, keepdims=True) + eps_norm)
    s = 127.0 / np.maximum(np.abs(h).max(axis=-1, keepdims=True), 1e-5)
    h_q = np.clip(np.round(h * s), -128, 127) / s
    w_q = bitnet_projection(w).dense()  # the projection the layer must use, not a copy of it
    return (h_q @ w_q.T).reshape(*x.shape[:-1], w.shape[0]), h, h_q, w_q


def layer_with(rng, d_in, d_out, **kw):
    layer = BitLinear(d_in, d_out, rng=rng, dtype=F64, **kw)
    layer.weight.data[...] = rng.standard_normal((d_out, d_in))
    if layer.input_norm is not None:
        layer.input_norm.weight.data[...] = 1 + 0.3 * rng.standard_normal(d_in)
    return layer


@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 7), (1, 1, 7)])
def test_forward_is_the_released_code(shape):
    rng = np.random.default_rng(0)
    layer = layer_with(rng, 7, 5)
    x = rng.standard_normal(shape)
    y = layer.forward(x)
    ref, *_ = reference_forward(x, layer.weight.data, layer.input_norm.weight.data)
    assert y.shape == (*shape[:-1], 5)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    # the weights the product used are exactly ternary times one scale
    t = layer.to_ternary()
    assert set(np.unique(t.codes)) <= {-1, 0, 1}
    np.testing.assert_array_equal(layer._w_hat, t.dense())


def surrogate_check(layer, x, rng):
    """Compare the layer's backward with finite differences of the STE surrogate.

    The surrogate is ``(h(x; g) + c_a) @ (w + c_w).T`` with ``c_a = Q_a(h) - h`` and
    ``c_w = Q_w(w) - w`` frozen at the base point: its true gradient is the STE gradient.
    """
    w0 = layer.weight.data.copy()
    gain = layer.input_norm.weight if layer.input_norm is not None else None
    g0 = gain.data.copy() if gain is not None else None
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(dy)
    dw = layer.weight.grad.copy()
    dg = gain.grad.copy() if gain is not None else None

    def norm(x_, g_):
        x2 = x_.reshape(-1, x_.shape[-1])
        if g_ is None:
            return x2
        return g_ * x2 / np.sqrt(np.mean(x2 * x2, axis=-1, keepdims=True) + 1e-5)

    h0 = norm(x, g0)
    quant_h = layer.activation_quantizer.forward(h0) if layer.activation_quantizer else h0
    c_a = quant_h - h0
    c_w = layer.weight_quantizer.to_ternary(w0).dense() - w0

    def surrogate(x_, w_, g_):
        return ((norm(x_, g_) + c_a) @ (w_ + c_w).T).reshape(y.shape)

    np.testing.assert_allclose(surrogate(x, w0, g0), y, rtol=1e-12, atol=1e-12)
    errors = {
        "dx": rel_error(dx, numerical_gradient(lambda a: surrogate(a, w0, g0), x.copy(), dy)),
        "dw": rel_error(dw, numerical_gradient(lambda a: surrogate(x, a, g0), w0.copy(), dy)),
    }
    if gain is not None:
        errors["dg"] = rel_error(
            dg, numerical_gradient(lambda a: surrogate(x, w0, a), g0.copy(), dy)
        )
    return errors


@pytest.mark.parametrize(
    "shape, kw",
    [
        ((4, 6), {}),
        ((2, 3, 5), {}),  # odd width, leading axes
        ((1, 1, 5), {}),  # one token
        ((3, 5), {"activation_quantizer": None}),  # SubLN, float activations
        ((3, 5), {"input_norm": False}),  # int8 activations, no SubLN
        ((2, 2, 6), {"weight_quantizer": TWNQuantizer(0.7, "tensor")}),  # another method
    ],
)
def test_backward_matches_the_straight_through_surrogate(shape, kw):
    rng = np.random.default_rng(1)
    layer = layer_with(rng, shape[-1], 4, **kw)
    x = rng.standard_normal(shape)
    errors = surrogate_check(layer, x, rng)
    assert max(errors.values()) < 1e-7, errors


def test_backward_uses_the_quantized_input_and_weights():
    """Planted-bug guard: dW must be dy^T h_q (quantized input), dx must use the ternary w."""
    rng = np.random.default_rng(2)
    layer = layer_with(rng, 6, 3)
    x = rng.standard_normal((5, 6)) * 3
    y = layer.forward(x)
    _, h, h_q, w_q = reference_forward(x, layer.weight.data, layer.input_norm.weight.data)
    dy = rng.standard_normal(y.shape)
    layer.zero_grad()
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, dy.T @ h_q, rtol=1e-12)
    assert not np.allclose(layer.weight.grad, dy.T @ h, rtol=1e-6)  # h_q != h is visible


def test_all_zero_input_gives_finite_output_and_gradient():
    layer = layer_with(np.random.default_rng(3), 4, 2)
    x = np.zeros((2, 4))
    y = layer.forward(x)
    assert np.all(y == 0)
    dx = layer.backward(np.ones_like(y))
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(layer.weight.grad))


def test_float32_in_float32_out_and_int8_codes():
    layer = BitLinear(8, 3, rng=np.random.default_rng(4))
    x = np.random.default_rng(5).standard_normal((2, 4, 8)).astype(np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32 and layer.weight.data.dtype == np.float32
    assert isinstance(layer.activation_quantizer, BitNetActivation)
    assert layer.activation_quantizer.last_codes.dtype == np.int8
    assert layer.activation_quantizer.last_codes.shape == (8, 8)  # one row per token


def test_from_linear_shares_the_weight_parameter():
    from ternref.nn import Linear

    lin = Linear(5, 3, bias=False, rng=np.random.default_rng(0))
    bit = BitLinear.from_linear(lin, lin.weight_quantizer or BitLinear(5, 3).weight_quantizer)
    assert bit.weight is lin.weight
    with pytest.raises(TypeError, match="plain Linear"):
        BitLinear.from_linear(bit, bit.weight_quantizer)


def test_bad_arguments():
    with pytest.raises(ValueError, match="expected input"):
        BitLinear(4, 2).forward(np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="activation_quantizer"):
        BitLinear(4, 2, activation_quantizer="int4")
    with pytest.raises(TypeError, match="input_norm"):
        BitLinear(4, 2, input_norm=1)
    with pytest.raises(ValueError, match="eps"):
        BitLinear(4, 2, eps=0.0)
    with pytest.raises(RuntimeError, match="before forward"):
        BitLinear(4, 2).backward(np.zeros((1, 2), np.float32))
