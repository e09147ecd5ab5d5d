"""BitNet b1.58 method: absmean weights, int8 absmax activation layer, identity STE, training.

Ma et al., "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits", arXiv:2402.17764.
"""

import numpy as np
import pytest

from ternref import nn, optim
from ternref.data import load_digits
from ternref.methods import get, quantize_model, quantized_layers
from ternref.methods.bitnet import BitNetActivation, BitNetQuantizer
from ternref.train import fit


def test_weight_projection_hand_built():
    # gamma = mean|w| = 3.65 / 5 = 0.73; w / gamma = [0.14, -0.68, 1.37, -2.74, 0.07]
    w = np.array([[0.1, -0.5, 1.0, -2.0, 0.05]])
    q = BitNetQuantizer()
    np.testing.assert_allclose(q(w), 0.73 * np.array([[0, -1, 1, -1, 0]]), rtol=1e-12)


def test_method_uses_the_released_rule_by_default_and_the_paper_on_request():
    # gamma = 1 exactly; 0.5 + 2e-6 sits inside the band 0.5 < |w| < 0.5 (1 + 1e-5) where the
    # released code (w * 1) gives 1 and the paper (w / (1 + 1e-5)) gives 0.
    w = np.array([[0.5 + 2e-6, 1.5 - 2e-6, 0.5, 1.5]])
    assert np.abs(w).mean() == 1.0
    layer = nn.Linear(4, 1, rng=np.random.default_rng(0))
    default = get("bitnet")
    assert default.form == "code"
    code = default.weight_quantizer(layer)
    np.testing.assert_array_equal(code.to_ternary(w).codes, [[1, 1, 0, 1]])
    paper = get("bitnet", form="paper").weight_quantizer(layer)
    np.testing.assert_array_equal(paper.to_ternary(w).codes, [[0, 1, 0, 1]])


def test_weight_backward_is_identity():
    w = np.random.default_rng(0).standard_normal((4, 5))
    g = np.random.default_rng(1).standard_normal((4, 5))
    q = BitNetQuantizer()
    q(w)
    np.testing.assert_array_equal(q.backward(g), g)


def test_activation_quantizer_hand_built():
    x = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [2.0, 1.0, 0.0]], dtype=np.float32)
    act = BitNetActivation()
    y = act.forward(x)
    # row 0: s = 127 / 1; x s = [63.5, -127, 31.75] -> round half to even [64, -127, 32]
    np.testing.assert_allclose(y[0], np.array([64, -127, 32]) / 127, rtol=1e-6)
    np.testing.assert_array_equal(y[1], 0)  # all-zero row: clamped scale, no NaN
    # row 2: s = 127 / 2; x s = [127, 63.5, 0] -> [127, 64, 0] (63.5 rounds to even)
    np.testing.assert_allclose(y[2], np.array([127, 64, 0]) / 63.5, rtol=1e-6)
    assert y.dtype == np.float32
    assert act.last_codes.dtype == np.int8
    assert np.abs(y - x).max() <= 0.5 * (2.0 / 127) + 1e-7  # half a step of the coarsest row
    dy = np.arange(9, dtype=np.float32).reshape(3, 3)
    np.testing.assert_array_equal(act.backward(dy), dy)  # identity STE


def test_activation_quantizer_conv_input_is_per_example():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    x[1] *= 100
    y = BitNetActivation().forward(x)
    assert y.shape == x.shape
    for n in range(2):
        s = 127 / np.abs(x[n]).max()
        np.testing.assert_allclose(y[n], np.round(x[n] * s) / s, rtol=1e-12)


def test_quantize_model_inserts_one_activation_quantizer_before_each_ternary_layer():
    model = nn.mlp([64, 32, 32, 32, 10], rng=np.random.default_rng(0))
    quantize_model(model, get("bitnet"))
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == [
        "Flatten",
        "Linear",
        "ReLU",
        "BitNetActivation",
        "Linear",
        "ReLU",
        "BitNetActivation",
        "Linear",
        "ReLU",
        "Linear",
    ]
    plain = nn.mlp([64, 32, 32, 10], rng=np.random.default_rng(0))
    quantize_model(plain, get("bitnet", quantize_activations=False))
    assert not any(isinstance(m, BitNetActivation) for m in plain.layers)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"eps": 0.0}, "eps"),
        ({"granularity": "group"}, "granularity"),
        ({"form": "hf"}, "form"),
        ({"gamma": 1}, "gamma"),
    ],
)
def test_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        get("bitnet", **kwargs)


def test_quantize_activations_must_be_bool():
    with pytest.raises(TypeError, match="quantize_activations"):
        get("bitnet", quantize_activations="yes")


def test_smoke_training_digits():
    ds = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = quantize_model(model, get("bitnet"))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    history = fit(model, ds, opt, epochs=5, batch_size=32, callbacks=callbacks, progress=False)
    # measured 0.975 after 5 epochs (seed 0)
    assert history.last["test_acc"] >= 0.93
    (layer,) = quantized_layers(model)
    t = layer.weight_quantizer.to_ternary(layer.weight.data)
    assert len(np.unique(t.dense())) <= 3
    assert 0.0 < t.sparsity < 1.0
    model.eval()
    model.forward(ds.x_test[:5])
    np.testing.assert_array_equal(layer._w_hat, t.dense())
