"""TRQ (Li et al. 2021): binarized stem + binarized residual = ternary with threshold alpha."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref import methods, nn
from ternref.data import load_digits
from ternref.methods.trq import TRQQuantizer
from ternref.nn.gradcheck import numerical_gradient
from ternref.optim import Adam
from ternref.train import fit


@settings(max_examples=50)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 5), st.integers(1, 7)),
        elements=st.floats(-10, 10, allow_nan=False),
    )
)
def test_stem_plus_residual_is_ternary_with_threshold_alpha(w):
    # P15: alpha [sign(w) + sign(w - alpha sign w)] = 2 alpha sign(w) 1[|w| > alpha]
    alpha = np.mean(np.abs(w))
    w_hat = TRQQuantizer()(w)
    np.testing.assert_allclose(w_hat, 2 * alpha * np.sign(w) * (np.abs(w) > alpha), rtol=1e-12)
    # the literal stem + residual, away from the ties sgn(0) and |w| = alpha
    clear = (w != 0) & (np.abs(np.abs(w) - alpha) > 1e-9 * max(alpha, 1))
    by_parts = alpha * (np.sign(w) + np.sign(w - alpha * np.sign(w)))
    np.testing.assert_allclose(w_hat[clear], by_parts[clear], rtol=1e-12)


def test_identity_ste_and_learned_alpha_gradient():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 8))
    g = rng.standard_normal(w.shape)
    q = TRQQuantizer()
    q(w)
    np.testing.assert_array_equal(q.backward(g), g)
    q = TRQQuantizer(alpha=0.7, dtype=np.float64)
    q(w)
    q.backward(g)
    fd = numerical_gradient(lambda _: q.forward(w), q.alpha.data, g)
    np.testing.assert_allclose(q.alpha.grad, fd, rtol=1e-7)
    t = np.sign(w) * (np.abs(w) > 0.7)
    np.testing.assert_allclose(q.alpha.grad, 2 * np.sum(g * t), rtol=1e-12)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="scale"):
        methods.get("trq", scale="max")
    with pytest.raises(ValueError, match="no hyper-parameter"):
        methods.get("trq", alpha=1.0)
    assert methods.info("trq").ternary == "W"


@pytest.mark.parametrize("scale", ["mean", "learned"])
def test_training_smoke_digits(scale):
    data = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = methods.quantize_model(model, methods.get("trq", scale=scale))
    opt = Adam(model.parameters(), lr=1e-3)
    hist = fit(model, data, opt, epochs=4, batch_size=64, callbacks=callbacks, progress=False)
    # measured 0.96 (mean) / 0.95 (learned) after 4 epochs, batch 64, Adam 1e-3
    assert hist.last["test_acc"] >= 0.88
    assert 0.0 < hist.last["sparsity"] < 1.0
    layer = methods.quantized_layers(model)[0]
    t = layer.weight_quantizer.to_ternary(layer.weight.data)
    dense = t.dense()
    assert len(np.unique(dense)) <= 3
    x = np.random.default_rng(2).standard_normal((5, layer.in_features)).astype(np.float32)
    model.eval()
    np.testing.assert_array_equal(layer.forward(x), x @ dense.T + layer.bias.data)
