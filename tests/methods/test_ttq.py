"""TTQ method: scaled STE, learned-scale gradients (finite differences, the minus sign), training.

Zhu, Han, Mao, Dally, "Trained Ternary Quantization", ICLR 2017, arXiv:1612.01064.
"""

import numpy as np
import pytest

from ternref import nn, optim
from ternref.data import load_digits
from ternref.methods import get, quantize_model, quantized_layers
from ternref.methods.ttq import TTQQuantizer
from ternref.nn.gradcheck import numerical_gradient, rel_error
from ternref.train import fit


def test_forward_levels_hand_built():
    # max|w| = 2 -> Delta = 0.05 * 2 = 0.1
    w = np.array([[0.5, -0.05, -2.0, 0.1, 0.11, -0.2]])
    q = TTQQuantizer(0.05, w_p=0.7, w_n=1.3, dtype=np.float64)
    np.testing.assert_allclose(q(w), [[0.7, 0, -1.3, 0, 0.7, -1.3]], rtol=0, atol=1e-15)


def test_backward_hand_built():
    w = np.array([[0.5, -0.05, -2.0, 0.1, 0.11, -0.2]])
    g = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    q = TTQQuantizer(0.05, w_p=0.7, w_n=1.3, dtype=np.float64)
    q(w)
    dw = q.backward(g)
    # Eq. 8: W_p g on I_p, g on I_0, W_n g on I_n
    np.testing.assert_allclose(dw, [[0.7, 2.0, 3.9, 4.0, 3.5, 7.8]])
    assert float(q.w_p.grad) == pytest.approx(1.0 + 5.0)
    assert float(q.w_n.grad) == pytest.approx(-(3.0 + 6.0))


def test_scale_gradients_match_finite_differences_through_a_linear_layer():
    # w_hat is linear in (W_p, W_n) for a fixed assignment, so central differences are exact.
    rng = np.random.default_rng(0)
    layer = nn.Linear(9, 5, rng=rng, dtype=np.float64)
    layer.weight_quantizer = TTQQuantizer(0.05, w_p=0.4, w_n=0.9, dtype=np.float64)
    x = rng.standard_normal((4, 9))
    dy = rng.standard_normal((4, 5))
    layer.zero_grad()
    layer.forward(x)
    layer.backward(dy)
    q = layer.weight_quantizer

    def f(_):
        return layer.forward(x)

    for p in (q.w_p, q.w_n):
        numeric = numerical_gradient(f, p.data, dy)
        assert rel_error(p.grad, numeric) < 1e-8, p.name


def test_wn_gradient_has_the_chain_rule_minus_sign():
    # Every weight on I_n, upstream gradient +1: raising W_n lowers w_hat = -W_n, so dL/dW_n < 0.
    # (The printed Eq. 7 / the PyTorch port would give +4.)
    q = TTQQuantizer(0.05, w_p=1.0, w_n=1.0, dtype=np.float64)
    q(-np.ones((2, 2)))
    q.backward(np.ones((2, 2)))
    assert float(q.w_n.grad) == -4.0
    assert float(q.w_p.grad) == 0.0


def test_scale_init_mean_is_the_mean_magnitude_of_each_side():
    layer = nn.Linear(4, 2, rng=np.random.default_rng(0), dtype=np.float64)
    layer.weight.data[...] = [[0.5, -0.3, 0.01, 1.0], [-0.9, 0.2, -0.02, 0.4]]
    # max|w| = 1 -> Delta = 0.05: I_p = {0.5, 1.0, 0.2, 0.4}, I_n = {-0.3, -0.9}
    q = get("ttq").weight_quantizer(layer)
    assert float(q.w_p.data) == pytest.approx((0.5 + 1.0 + 0.2 + 0.4) / 4)
    assert float(q.w_n.data) == pytest.approx((0.3 + 0.9) / 2)
    q1 = get("ttq", scale_init=1.0).weight_quantizer(layer)
    assert float(q1.w_p.data) == 1.0 and float(q1.w_n.data) == 1.0


def test_scales_are_model_parameters_and_get_trained():
    model = nn.mlp([64, 32, 32, 10], rng=np.random.default_rng(0))
    quantize_model(model, get("ttq"))
    (layer,) = quantized_layers(model)
    q = layer.weight_quantizer
    ids = {id(p) for p in model.parameters()}
    assert id(q.w_p) in ids and id(q.w_n) in ids
    before = float(q.w_p.data), float(q.w_n.data)
    x = np.random.default_rng(1).standard_normal((8, 1, 8, 8)).astype(np.float32)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    opt.zero_grad()
    loss = nn.CrossEntropyLoss()
    loss.forward(model.forward(x), np.arange(8) % 10)
    model.backward(loss.backward())
    opt.step()
    assert (float(q.w_p.data), float(q.w_n.data)) != before


def test_clamp_callback_keeps_scales_nonnegative():
    model = nn.mlp([64, 32, 32, 10], rng=np.random.default_rng(0))
    callbacks = quantize_model(model, get("ttq"))
    (layer,) = quantized_layers(model)
    q = layer.weight_quantizer
    q.w_p.data[...] = -0.5
    q.w_n.data[...] = 0.25
    for cb in callbacks:
        cb.on_step_end(model, None)
    assert float(q.w_p.data) == 0.0 and float(q.w_n.data) == 0.25


def test_to_ternary_is_asymmetric_and_what_eval_forward_uses():
    w = np.random.default_rng(2).standard_normal((6, 7)).astype(np.float32)
    q = TTQQuantizer(0.05, w_p=0.3, w_n=0.8)
    q.eval()
    t = q.to_ternary(w)
    assert not t.symmetric
    np.testing.assert_array_equal(t.dense(), q(w))
    assert set(np.unique(t.dense()).tolist()) <= {np.float32(-0.8), 0.0, np.float32(0.3)}


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"t": 1.0}, "t"),
        ({"t": -0.1}, "t"),
        ({"scale_init": "ones"}, "scale_init"),
        ({"scale_init": 0.0}, "scale_init"),
        ({"sparsity": 1.5}, "sparsity"),
        ({"factor": 0.7}, "factor"),
    ],
)
def test_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        get("ttq", **kwargs)


def test_smoke_training_digits():
    ds = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = quantize_model(model, get("ttq"))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    history = fit(model, ds, opt, epochs=5, batch_size=32, callbacks=callbacks, progress=False)
    # measured 0.972 after 5 epochs (seed 0)
    assert history.last["test_acc"] >= 0.93
    (layer,) = quantized_layers(model)
    q = layer.weight_quantizer
    t = q.to_ternary(layer.weight.data)
    assert len(np.unique(t.dense())) <= 3
    assert 0.0 < t.sparsity < 1.0
    assert float(q.w_p.data) > 0 and float(q.w_n.data) > 0
    model.eval()
    model.forward(ds.x_test[:5])
    np.testing.assert_array_equal(layer._w_hat, t.dense())
