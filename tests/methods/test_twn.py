"""TWN method (the template): identity STE, per-tensor / per-channel projection, training smoke.

Li, Zhang, Liu, "Ternary Weight Networks", arXiv:1605.04711 (2016).
"""

import numpy as np
import pytest

from ternref import nn, optim
from ternref.data import load_digits
from ternref.methods import get, quantize_model, quantized_layers
from ternref.methods.twn import TWNQuantizer
from ternref.train import fit


def test_projection_per_tensor_hand_built():
    # mean|w| = 3.65 / 5 = 0.73 -> Delta = 0.7 * 0.73 = 0.511; |-0.5| < Delta goes to 0.
    # support {1.0, -2.0} -> alpha = (1 + 2) / 2 = 1.5
    w = np.array([[0.1, -0.5, 1.0, -2.0, 0.05]])
    q = TWNQuantizer(0.7, "tensor")
    w_hat = q(w)
    np.testing.assert_allclose(w_hat, [[0.0, 0.0, 1.5, -1.5, 0.0]], rtol=0, atol=1e-15)
    assert q.ternary.codes.tolist() == [[0, 0, 1, -1, 0]]


def test_projection_per_channel_factor_075_hand_built():
    # row 0: mean|w| = 4.0 / 6 -> Delta = 0.5; support {1.5, -1.2, 0.6} -> alpha = 3.3 / 3 = 1.1
    # row 1: mean|w| = 1.5 / 6 -> Delta = 0.1875; support {0.6, -0.3, 0.45} -> alpha = 0.45
    w = np.array([[1.5, -0.3, 0.0, -1.2, 0.4, 0.6], [0.6, -0.3, 0.0, 0.05, -0.1, 0.45]])
    q = TWNQuantizer(0.75, "channel")
    w_hat = q(w)
    expected = np.array([[1.1, 0, 0, -1.1, 0, 1.1], [0.45, -0.45, 0, 0, 0, 0.45]])
    np.testing.assert_allclose(w_hat, expected, rtol=1e-12, atol=0)
    assert q.ternary.granularity == "channel"


def test_identity_ste_backward():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 7))
    g = rng.standard_normal((5, 7))
    q = TWNQuantizer(0.7, "tensor")
    q(w)
    np.testing.assert_array_equal(q.backward(g), g)


def test_linear_gets_gradient_at_w_hat_and_applies_it_to_w():
    # dL/dw := dL/dw_hat = dy.T @ x, computed with the ternary weights in the forward pass.
    rng = np.random.default_rng(2)
    layer = nn.Linear(6, 4, rng=rng, dtype=np.float64, weight_quantizer=TWNQuantizer(0.7, "tensor"))
    x = rng.standard_normal((3, 6))
    dy = rng.standard_normal((3, 4))
    y = layer.forward(x)
    w_hat = layer.weight_quantizer.to_ternary(layer.weight.data).dense()
    np.testing.assert_allclose(y, x @ w_hat.T + layer.bias.data, rtol=1e-12)
    layer.zero_grad()
    dx = layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, dy.T @ x, rtol=1e-12)
    np.testing.assert_allclose(dx, dy @ w_hat, rtol=1e-12)


def test_to_ternary_is_what_forward_uses():
    w = np.random.default_rng(3).standard_normal((8, 5)).astype(np.float32)
    for gran in ("tensor", "channel"):
        q = TWNQuantizer(0.7, gran)
        q.eval()
        w_hat = q(w)
        assert w_hat.dtype == np.float32
        np.testing.assert_array_equal(q.to_ternary(w).dense(), w_hat)


def test_all_zero_weights_no_nan():
    q = TWNQuantizer(0.7, "tensor")
    w_hat = q(np.zeros((3, 4), dtype=np.float32))
    assert np.all(w_hat == 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"factor": -0.1},
        {"factor": 1.0},
        {"granularity": "group"},
        {"granularity": "row"},
        {"lr": 0.1},
    ],
)
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        get("twn", **kwargs)


def test_unknown_method_name():
    with pytest.raises(ValueError, match="unknown method"):
        get("twn-nope")


def test_smoke_training_digits():
    ds = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = quantize_model(model, get("twn"))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    history = fit(model, ds, opt, epochs=4, batch_size=32, callbacks=callbacks, progress=False)
    # measured 0.961 after 4 epochs (seed 0)
    assert history.last["test_acc"] >= 0.92
    (layer,) = quantized_layers(model)
    t = layer.weight_quantizer.to_ternary(layer.weight.data)
    assert len(np.unique(t.dense())) <= 3
    assert 0.0 < t.sparsity < 1.0
    assert 0.0 < history.last["sparsity"] < 1.0
    model.eval()
    model.forward(ds.x_test[:5])
    np.testing.assert_array_equal(layer._w_hat, t.dense())
