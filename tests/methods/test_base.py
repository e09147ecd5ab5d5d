"""The methods framework: attaching a method to a model, the registry, per-epoch statistics."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from ternref import Ternary, methods, nn
from ternref.methods.base import Method, MethodInfo, TernaryStats, WeightQuantizer

INFO = MethodInfo("toy", "nobody", 2026, None, "W", "sign", "identity", "any")


class SignQuantizer(WeightQuantizer):
    """w_hat = 0.5 * sign(w): a fixed, easily checked projection."""

    def project(self, w):
        return Ternary(np.sign(w).astype(np.int8), np.asarray(0.5, dtype=w.dtype))


class Tag(nn.Module):
    """An identity layer standing in for an activation quantizer."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


@dataclass
class Toy(Method):
    info: ClassVar[MethodInfo] = INFO
    with_activation: bool = False
    replace: bool = False

    def weight_quantizer(self, layer):
        return SignQuantizer()

    def activation_quantizer(self, layer):
        return Tag() if self.with_activation else None

    @property
    def replaces_relu(self):
        return self.replace


def _model():
    return nn.mlp([4, 6, 5, 3], rng=np.random.default_rng(0))


@pytest.mark.parametrize(
    "keep, expected",
    [("first_last", [False, True, False]), ("first", [False, True, True]),
     ("last", [True, True, False]), ("none", [True, True, True])],
)  # fmt: skip
def test_keep_full_precision_chooses_the_layers(keep, expected):
    model = _model()
    methods.quantize_model(model, Toy(), keep_full_precision=keep)
    got = [layer.weight_quantizer is not None for layer in methods.weight_layers(model)]
    assert got == expected


def test_quantized_forward_uses_w_hat_and_eval_matches_to_ternary():
    model = _model()
    methods.quantize_model(model, Toy(), keep_full_precision="none")
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    first = methods.weight_layers(model)[0]
    expected = x @ (0.5 * np.sign(first.weight.data)).T + first.bias.data
    np.testing.assert_allclose(first.forward(x), expected, rtol=1e-6)
    t = first.weight_quantizer.to_ternary(first.weight.data)
    np.testing.assert_array_equal(t.dense(), 0.5 * np.sign(first.weight.data))


def test_activation_quantizers_are_inserted_or_replace_relu():
    model = _model()  # Flatten, Linear, ReLU, Linear, ReLU, Linear
    methods.quantize_model(model, Toy(with_activation=True))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Flatten", "Linear", "ReLU", "Tag", "Linear", "ReLU", "Linear"]

    model = _model()
    methods.quantize_model(model, Toy(with_activation=True, replace=True))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Flatten", "Linear", "Tag", "Linear", "ReLU", "Linear"]


def test_refuses_bad_models_and_options():
    with pytest.raises(ValueError, match="Sequential"):
        methods.quantize_model(nn.Linear(3, 2), Toy())
    model = _model()
    methods.quantize_model(model, Toy())
    with pytest.raises(ValueError, match="already quantized"):
        methods.quantize_model(model, Toy())
    with pytest.raises(ValueError, match="keep_full_precision"):
        methods.quantize_model(_model(), Toy(), keep_full_precision="middle")
    single = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="no layer to quantize"):
        methods.quantize_model(single, Toy())


def test_registry_errors_are_clear():
    with pytest.raises(ValueError, match="unknown method 'nope'.*twn"):
        methods.get("nope")
    with pytest.raises(ValueError, match="no hyper-parameter"):
        methods.get("twn", colour="red")
    with pytest.raises(ValueError, match="factor"):
        methods.get("twn", factor=-1.0)
    assert "twn" in methods.names()
    assert methods.info("twn").arxiv == "1605.04711"


def test_ternary_stats_counts_sparsity_and_flips_exactly():
    model = _model()
    methods.quantize_model(model, Toy(), keep_full_precision="none")
    layers = methods.weight_layers(model)
    stats = TernaryStats()
    stats.on_train_begin(model, None)
    # Zero two weights of the first layer and flip the sign of three in the second.
    layers[0].weight.data[0, :2] = 0.0
    layers[1].weight.data[0, :3] *= -1
    record = {}
    stats.on_epoch_end(model, 1, record)
    sizes = [layer.weight.data.size for layer in layers]
    assert record["layers"][0]["flip_ratio"] == 2 / sizes[0]
    assert record["layers"][1]["flip_ratio"] == 3 / sizes[1]
    assert record["layers"][0]["sparsity"] == 2 / sizes[0]
    assert record["flip_ratio"] == 5 / sum(sizes)
    assert record["sparsity"] == 2 / sum(sizes)
    # Nothing changed since: no flips in the next epoch.
    stats.on_epoch_end(model, 2, record)
    assert record["flip_ratio"] == 0.0
