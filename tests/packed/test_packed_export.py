"""Packed layers and export: predictions of the exported model equal the trained model's,
BatchNorm folding (incl. negative multipliers) exact up to rounding, layers inference-only."""

import numpy as np
import pytest

from ternref import Ternary
from ternref.nn import (
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
from ternref.nn.module import Module
from ternref.packed import PackedConv2d, PackedLinear, export, fold_batchnorm, pack, unpack


class ThresholdQuantizer(Module):
    """Test-local weight quantizer: TWN-style threshold 0.7 mean|w|, scales = mean |w| of the
    kept weights, with the requested granularity and (a)symmetry (+ optional offset)."""

    def __init__(self, granularity="channel", asymmetric=False, offset=False, group_size=None):
        super().__init__()
        self.granularity, self.asymmetric = granularity, asymmetric
        self.offset, self.group_size = offset, group_size

    def to_ternary(self, w):
        m = w.shape[0]
        w2 = w.reshape(m, -1).astype(np.float64)
        k = w2.shape[1]
        if self.granularity == "tensor":
            idx = [np.s_[:, :]]
        elif self.granularity == "channel":
            idx = [np.s_[r : r + 1, :] for r in range(m)]
        else:
            gs = self.group_size
            idx = [np.s_[r : r + 1, g : g + gs] for r in range(m) for g in range(0, k, gs)]
        codes = np.zeros(w2.shape, np.int8)
        shape = Ternary.scale_shape(w.shape, self.granularity, self.group_size)
        ap, an, off = (np.zeros(int(np.prod(shape))) for _ in range(3))
        for j, s in enumerate(idx):
            block = w2[s]
            delta = 0.7 * np.abs(block).mean()
            c = np.where(block > delta, 1, np.where(block < -delta, -1, 0))
            codes[s] = c
            pos, neg = block[c == 1], -block[c == -1]
            both = np.abs(block[c != 0])
            a = both.mean() if both.size else 0.0
            ap[j] = pos.mean() if (self.asymmetric and pos.size) else a
            an[j] = neg.mean() if (self.asymmetric and neg.size) else a
            off[j] = 0.01 * (j % 3 - 1) if self.offset else 0.0
        dt = w.dtype
        return Ternary(
            codes.reshape(w.shape),
            ap.reshape(shape).astype(dt),
            an.reshape(shape).astype(dt) if self.asymmetric else None,
            granularity=self.granularity,
            group_size=self.group_size,
            offset=off.reshape(shape).astype(dt) if self.offset else None,
        )

    def forward(self, w):
        return self.to_ternary(w).dense()

    def backward(self, g):
        return g


def _randomize_bn(bn, rng, negative=True):
    c = bn.num_features
    gamma = rng.uniform(0.5, 2.0, c) * (np.where(rng.random(c) < 0.4, -1, 1) if negative else 1)
    bn.weight.data = gamma.astype(np.float32)
    bn.bias.data = rng.standard_normal(c).astype(np.float32)
    bn.running_mean = rng.standard_normal(c).astype(np.float32) * 0.3
    bn.running_var = rng.uniform(0.2, 3.0, c).astype(np.float32)


def small_cnn(rng, quant, bias=True):
    q = lambda: quant() if callable(quant) else None  # noqa: E731
    model = Sequential(
        Conv2d(1, 6, 3, padding=1, rng=rng, bias=bias, weight_quantizer=q()),
        BatchNorm2d(6),
        ReLU(),
        MaxPool2d(2),
        Conv2d(6, 8, 3, stride=2, rng=rng, bias=False, weight_quantizer=q()),
        ReLU(),
        Flatten(),
        Dropout(0.3, rng=rng),
        Linear(8, 32, rng=rng, weight_quantizer=q()),
        BatchNorm1d(32),
        ReLU(),
        Linear(32, 10, rng=rng),  # a full-precision head stays as it is
    )
    for layer in model:
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            _randomize_bn(layer, rng)
    return model.eval()


QUANTS = {
    "tensor": lambda: ThresholdQuantizer("tensor"),
    "channel-asym": lambda: ThresholdQuantizer("channel", asymmetric=True),
    "channel-offset": lambda: ThresholdQuantizer("channel", asymmetric=True, offset=True),
    "group": lambda: ThresholdQuantizer("group", group_size=5),
}


@pytest.mark.parametrize("fmt", ["i2", "tq1", "bitplanes"])
@pytest.mark.parametrize("qname", sorted(QUANTS))
def test_exported_predictions_equal_trained_predictions(fmt, qname):
    rng = np.random.default_rng(0)
    model = small_cnn(rng, QUANTS[qname])
    packed = export(model, fmt)
    kinds = [type(layer).__name__ for layer in packed]
    assert kinds == [
        "PackedConv2d",  # BN2d folded
        "ReLU",
        "MaxPool2d",
        "PackedConv2d",
        "ReLU",
        "Flatten",  # Dropout dropped
        "PackedLinear",  # BN1d folded
        "ReLU",
        "Linear",
    ]
    x = rng.standard_normal((300, 1, 8, 8)).astype(np.float32)
    ref = model.forward(x)
    got = packed.forward(x)
    assert got.dtype == np.float32
    scale = np.abs(ref).max()
    assert np.allclose(got, ref, rtol=1e-4, atol=1e-4 * scale)
    assert np.array_equal(got.argmax(1), ref.argmax(1))


def test_int8_activation_agreement_rate_is_reported_and_high():
    rng = np.random.default_rng(1)
    model = small_cnn(rng, QUANTS["channel-asym"])
    x = rng.standard_normal((400, 1, 8, 8)).astype(np.float32)
    ref = model.forward(x).argmax(1)
    got = export(model, "i2", activations="int8").forward(x).argmax(1)
    rate = float(np.mean(got == ref))
    print(f"int8-activation argmax agreement with the float model: {rate:.3f}")
    assert rate >= 0.9


def test_fold_batchnorm_negative_multiplier_negates_codes_and_swaps_scales():
    codes = np.array([[1, -1, 0], [1, 0, -1]], np.int8)
    t = Ternary(codes, np.array([2.0, 3.0]), np.array([5.0, 7.0]), granularity="channel")
    bn = BatchNorm1d(2, eps=1e-5, dtype=np.float64).eval()
    bn.weight.data = np.array([-2.0, 0.5])
    bn.bias.data = np.array([1.0, -1.0])
    bn.running_mean = np.array([0.25, -0.5])
    bn.running_var = np.array([4.0, 1.0]) - 1e-5  # sqrt(var + eps) = 2, 1
    folded, bias = fold_batchnorm(t, np.array([1.0, 2.0]), bn)
    # row 0: a = -1 -> codes negated, alpha_pos = |a| * 5, alpha_neg = |a| * 2
    assert folded.codes.tolist() == [[-1, 1, 0], [1, 0, -1]]
    assert np.allclose(folded.alpha_pos.ravel(), [5.0, 1.5])
    assert np.allclose(folded.alpha_neg.ravel(), [2.0, 3.5])
    assert np.all(folded.alpha_pos >= 0) and np.all(folded.alpha_neg >= 0)
    # bias = a (b - mu) + beta
    assert np.allclose(bias, [-1.0 * (1.0 - 0.25) + 1.0, 0.5 * (2.0 + 0.5) - 1.0])
    # and the folded layer computes bn(W x + b) for any x
    x = np.random.default_rng(0).standard_normal((5, 3))
    z = x @ t.dense().T + [1.0, 2.0]
    assert np.allclose(x @ folded.dense().T + bias, bn.forward(z))


def test_fold_turns_tensor_scale_into_channel_and_keeps_groups():
    rng = np.random.default_rng(3)
    bn = BatchNorm1d(4, dtype=np.float64).eval()
    _randomize_bn(bn, rng)
    bn.weight.data = bn.weight.data.astype(np.float64)
    codes = rng.integers(-1, 2, (4, 10)).astype(np.int8)
    for t in (
        Ternary(codes, np.float64(0.5)),
        Ternary(
            codes, rng.random((4, 4)), granularity="group", group_size=3, offset=rng.random((4, 4))
        ),
    ):
        folded, bias = fold_batchnorm(t, None, bn)
        assert folded.granularity == ("channel" if t.granularity == "tensor" else "group")
        x = rng.standard_normal((6, 10))
        assert np.allclose(x @ folded.dense().T + bias, bn.forward(x @ t.dense().T))


def test_packed_layers_are_inference_only_and_check_inputs():
    t = Ternary(np.ones((3, 4), np.int8), np.float32(1.0))
    layer = PackedLinear(pack(t), bias=np.zeros(3, np.float32))
    with pytest.raises(NotImplementedError, match="inference-only"):
        layer.backward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="4 features"):
        layer.forward(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="bias"):
        PackedLinear(pack(t), bias=np.zeros(4, np.float32))
    conv = PackedConv2d(pack(Ternary(np.ones((2, 3, 2, 2), np.int8), np.float32(1.0))))
    with pytest.raises(ValueError, match="3, H, W"):
        conv.forward(np.ones((1, 2, 4, 4), np.float32))
    with pytest.raises(NotImplementedError):
        conv.backward(np.ones((1, 2, 3, 3), np.float32))


def test_packed_conv_matches_dense_conv():
    rng = np.random.default_rng(4)
    q = ThresholdQuantizer("channel")
    conv = Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0), rng=rng, weight_quantizer=q)
    conv.eval()
    t = q.to_ternary(conv.weight.data)
    pc = PackedConv2d(pack(t, "tq1"), conv.stride, conv.padding, conv.bias.data)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    assert np.allclose(pc.forward(x), conv.forward(x), atol=1e-5)
    assert unpack(pc.packed) == t


def test_export_refuses_unknown_layers_and_bad_quantizers():
    class Odd(Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="Odd"):
        export(Sequential(Odd()))
    with pytest.raises(TypeError, match="Sequential"):
        export(Linear(2, 2))

    class Bad(ThresholdQuantizer):
        def to_ternary(self, w):
            return Ternary(np.ones((1, 1), np.int8), np.float32(1.0))

    with pytest.raises(ValueError, match="to_ternary"):
        export(Sequential(Linear(2, 3, weight_quantizer=Bad())))


def test_export_leaves_the_trained_model_untouched():
    rng = np.random.default_rng(5)
    model = small_cnn(rng, QUANTS["tensor"])
    before = [p.data.copy() for p in model.parameters()]
    export(model)
    assert all(np.array_equal(a, p.data) for a, p in zip(before, model.parameters()))


def test_full_precision_convolutions_of_the_plan_run_in_chunks_with_bounded_scratch(monkeypatch):
    """A batch larger than one im2col chunk gives the float model's output, and the plan keeps
    one chunk-sized im2col matrix per convolution (none on the layer)."""
    from ternref.nn import Conv2d, Flatten, Linear, ReLU, Sequential
    from ternref.packed import layers as packed_layers

    monkeypatch.setattr(
        packed_layers, "CONV_SCRATCH_BYTES", 3 * 4 * 18 * 6 * 6
    )  # 3 images of conv1
    monkeypatch.setattr(packed_layers, "DIRECT_MAX_TAPS", 0)  # both through im2col
    rng = np.random.default_rng(0)
    model = Sequential(
        Conv2d(2, 4, 3, rng=rng), ReLU(), Conv2d(4, 3, 3, padding=1, rng=rng), Flatten(),
        Linear(3 * 6 * 6, 5, rng=rng),
    )  # fmt: skip
    model.eval()
    exported = export(model)
    for n in (1, 3, 7, 8):
        x = rng.standard_normal((n, 2, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(exported.forward(x), model.forward(x), rtol=1e-5, atol=1e-5)
    convs = [layer for layer in exported.layers if type(layer) is Conv2d]
    assert all(layer._cols_t is None for layer in convs)
    kept = []  # the scratch dicts held by the plan's steps (through their closures)
    todo = list(exported._plan)
    while todo:
        for cell in getattr(todo.pop(), "__closure__", None) or ():
            value = cell.cell_contents
            if isinstance(value, dict):
                kept.append(value)
            elif callable(value):
                todo.append(value)
    assert len(kept) == 2 and all(
        a.nbytes <= packed_layers.CONV_SCRATCH_BYTES for d in kept for a in d.values()
    )


def test_plan_maxpool_step_equals_the_layer_and_falls_back_where_it_has_no_kernel():
    """The plan's forward-only 2x2 pooling gives the layer's output (odd sizes, NaN, float64);
    3x3 windows, other dtypes and inputs the kernel cannot take run the layer itself."""
    from ternref.nn import MaxPool2d
    from ternref.packed.layers import _maxpool_step

    rng = np.random.default_rng(0)
    pool = MaxPool2d(2)
    step = _maxpool_step(pool)
    for dtype in (np.float32, np.float64, np.float16):
        x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
        x[0, 1, 2, 3] = np.nan
        got = step(x)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, pool.forward(x))
    three = MaxPool2d(3)
    x = rng.standard_normal((1, 2, 7, 7)).astype(np.float32)
    np.testing.assert_array_equal(_maxpool_step(three)(x), three.forward(x))
    with pytest.raises(ValueError):
        step(rng.standard_normal((2, 3, 7)).astype(np.float32))


def test_plan_is_rebuilt_when_the_layer_list_changes():
    """``PackedSequential.forward`` keeps its plan while the layers are the same objects and
    rebuilds it when one is replaced, appended or removed (the list is compared by identity)."""
    rng = np.random.default_rng(0)
    model = Sequential(Linear(4, 3, rng=rng), ReLU(), Linear(3, 2, rng=rng))
    model.eval()
    packed_model = export(model)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(packed_model.forward(x), model.forward(x), rtol=1e-5, atol=1e-6)
    plan = packed_model._plan
    packed_model.forward(x)
    assert packed_model._plan is plan
    replacement = Linear(3, 2, rng=rng)
    packed_model.layers[2] = replacement
    model.layers[2] = replacement
    np.testing.assert_allclose(packed_model.forward(x), model.forward(x), rtol=1e-5, atol=1e-6)
    assert packed_model._plan is not plan
    packed_model.layers.pop()  # Linear, ReLU: the output is the ReLU of the first layer
    assert packed_model.forward(x).shape == (5, 3)
    assert np.all(packed_model.forward(x) >= 0)
