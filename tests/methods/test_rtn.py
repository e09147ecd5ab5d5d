"""RTN (Li et al. 2020): x_hat = alpha * t + beta, learnable alpha and beta (W and A)."""

import numpy as np
import pytest

from ternref import methods, nn
from ternref.data import load_digits
from ternref.methods.rtn import RTNActivation, RTNQuantizer
from ternref.nn.gradcheck import numerical_gradient
from ternref.optim import Adam
from ternref.train import fit


def test_forward_is_nearest_of_three_shifted_levels():
    # alpha = 2, beta = 0.5: levels {-1.5, 0.5, 2.5}; boundaries at -0.5 and 1.5 (ties -> beta)
    w = np.array([[-3.0, -1.0, -0.5, 0.0, 1.0, 1.5, 1.6, 9.0]])
    q = RTNQuantizer(np.asarray(2.0), np.asarray(0.5))
    np.testing.assert_array_equal(q(w), [[-1.5, -1.5, 0.5, 0.5, 0.5, 0.5, 2.5, 2.5]])
    t = q.to_ternary(w)
    np.testing.assert_array_equal(t.codes, [[-1, -1, 0, 0, 0, 0, 1, 1]])
    assert float(t.offset) == 0.5 and float(t.alpha_pos) == 2.0
    np.testing.assert_array_equal(t.dense(), q(w))


@pytest.mark.parametrize("shape", [(4, 9), (4, 2, 3, 3)])  # Linear and Conv2d weights
@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_scale_and_offset_gradients_match_finite_differences(per_channel, shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape)
    g = rng.standard_normal(w.shape)
    shape = (4,) if per_channel else ()
    q = RTNQuantizer(rng.uniform(0.8, 1.5, shape), rng.uniform(-0.2, 0.2, shape))
    q(w)
    dw = q.backward(g)
    np.testing.assert_array_equal(dw, g)  # identity STE for t
    # w_hat is linear in (alpha, beta) for a fixed code, so the differences are exact
    for p in (q.alpha, q.beta):
        fd = numerical_gradient(lambda _: q.forward(w), p.data, g)
        np.testing.assert_allclose(p.grad, fd, rtol=1e-7, atol=1e-9)
    # and by hand: d/d alpha = sum g t, d/d beta = sum g over each channel (or the tensor)
    t = q.ternary.codes
    axis = tuple(range(1, w.ndim)) if per_channel else None
    np.testing.assert_allclose(q.alpha.grad, (g * t).sum(axis=axis), rtol=1e-12)
    np.testing.assert_allclose(q.beta.grad, g.sum(axis=axis), rtol=1e-12)


def test_activation_gradients_and_clipped_ste():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 4, size=(6, 5))
    act = RTNActivation(alpha=1.3, beta=1.1, dtype=np.float64)
    y = act(x)
    # three levels beta -+ alpha, beta, each the nearest to x
    levels = np.array([1.1 - 1.3, 1.1, 1.1 + 1.3])
    nearest = levels[np.argmin(np.abs(x[..., None] - levels), axis=-1)]
    np.testing.assert_allclose(y, nearest, rtol=1e-12)
    dy = rng.standard_normal(x.shape)
    dx = act.backward(dy)
    np.testing.assert_array_equal(dx, dy * (np.abs(x - 1.1) <= 1.3))
    for p in (act.alpha, act.beta):
        fd = numerical_gradient(lambda _: act.forward(x), p.data, dy)
        np.testing.assert_allclose(p.grad, fd, rtol=1e-7, atol=1e-9)


def test_bad_hyperparameters():
    for kwargs, match in (
        ({"granularity": "group"}, "granularity"),
        ({"delta": 1.0}, "delta"),
        ({"act_alpha": 0.0}, "act_alpha"),
        ({"alpha_init_factor": -1.0}, "alpha_init_factor"),
        ({"gamma": 1.0}, "no hyper-parameter"),
    ):
        with pytest.raises(ValueError, match=match):
            methods.get("rtn", **kwargs)


def test_attach_initialisation_and_placement():
    model = nn.mlp([64, 16, 16, 10], rng=np.random.default_rng(0))
    w = [m for m in model.layers if isinstance(m, nn.Linear)][1].weight.data.copy()
    methods.quantize_model(model, methods.get("rtn"))
    kinds = [type(m).__name__ for m in model.layers]
    # the activation quantizer goes after the ReLU (its offset covers the one-sided range)
    assert kinds == ["Flatten", "Linear", "ReLU", "RTNActivation", "Linear", "ReLU", "Linear"]
    q = methods.quantized_layers(model)[0].weight_quantizer
    np.testing.assert_allclose(q.alpha.data, 1.4 * np.abs(w).mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(q.beta.data, 0)
    names = {id(p) for p in model.parameters()}
    assert {id(q.alpha), id(q.beta), id(model.layers[3].alpha)} <= names
    assert methods.info("rtn").ternary == "W+A"


def test_training_smoke_digits():
    data = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = methods.quantize_model(model, methods.get("rtn"))
    opt = Adam(model.parameters(), lr=1e-3)
    hist = fit(model, data, opt, epochs=4, batch_size=64, callbacks=callbacks, progress=False)
    # measured 0.96 (4 epochs, batch 64, Adam 1e-3)
    assert hist.last["test_acc"] >= 0.88
    assert 0.0 < hist.last["sparsity"] < 1.0
    layer = methods.quantized_layers(model)[0]
    q = layer.weight_quantizer
    assert np.all(q.alpha.data > 0)
    t = q.to_ternary(layer.weight.data)
    assert t.offset is not None
    dense = t.dense()
    for row in dense:
        assert len(np.unique(row)) <= 3
    x = np.random.default_rng(2).standard_normal((5, layer.in_features)).astype(np.float32)
    model.eval()
    np.testing.assert_array_equal(layer.forward(x), x @ dense.T + layer.bias.data)
