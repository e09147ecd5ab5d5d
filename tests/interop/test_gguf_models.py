"""GGUF export of CNNs and of hand-built ternaries: conv geometry, folded BatchNorm, padding,
splitting, the dense fallback, fp16 range, F16 weights, metadata, and the report."""

import sys
from pathlib import Path

import numpy as np
import pytest

from ternref import Ternary, methods, nn, packed
from ternref.interop import load_gguf, read_metadata, read_tensors, save_gguf
from ternref.packed import PackedConv2d, PackedLinear, pack, unpack
from ternref.recipes import build_model

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")

sys.path.insert(0, str(Path(__file__).parent))
from gguf_helpers import fp16_reference, fp16_scales, layer_weight_from_gguf  # noqa: E402

QUANTS = ("tq2_0", "tq1_0")


def _randomize_batchnorm(model, rng):
    """Nontrivial eval-mode BatchNorm statistics, with some negative gammas (the fold then
    negates those rows' codes and swaps their scales)."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.weight.data = rng.uniform(0.5, 1.5, c).astype(np.float32) * rng.choice([-1, 1], c)
            m.bias.data = rng.normal(0, 0.1, c).astype(np.float32)
            m.running_mean = rng.normal(0, 0.2, c).astype(np.float32)
            m.running_var = rng.uniform(0.5, 2.0, c).astype(np.float32)
    return model.eval()


def _packed_mlp(t: Ternary, rng, activations="float32"):
    """Flatten -> PackedLinear(t) -> ReLU -> Linear, a packed model built by hand."""
    m, k = t.shape
    head = nn.Linear(m, 3, rng=rng)
    bias = rng.normal(size=m).astype(np.float32)
    model = nn.Sequential(
        nn.Flatten(), PackedLinear(pack(t), bias, activations), nn.ReLU(), head.eval()
    )
    model.training = False
    return model


# ------------------------------------------------------------------------------ convolutions


@pytest.mark.parametrize("quant", QUANTS)
def test_small_cnn_with_folded_batchnorm_round_trips(tmp_path, quant):
    rng = np.random.default_rng(0)
    model = nn.small_cnn(rng=rng)
    methods.quantize_model(model, methods.get("twn"), keep_full_precision="none")
    _randomize_batchnorm(model, rng)
    inference = packed.export(model)
    path = tmp_path / "cnn.gguf"
    with pytest.raises(ValueError, match=r"'layers\.0\.weight'.*rows hold 9 weights"):
        save_gguf(model, path, quant)
    report = save_gguf(model, path, quant, pad=True)

    x = rng.normal(size=(16, 1, 8, 8)).astype(np.float32)
    loaded = load_gguf(path)
    np.testing.assert_array_equal(loaded.forward(x), fp16_reference(inference).forward(x))
    want = model.forward(x)
    assert np.abs(loaded.forward(x) - want).max() <= 1e-2 * np.abs(want).max()

    convs = [m for m in loaded.layers if isinstance(m, PackedConv2d)]
    assert [(c.kernel_size, c.stride, c.padding) for c in convs] == [((3, 3), (1, 1), (1, 1))] * 2
    meta = read_metadata(path)
    assert meta["general.architecture"] == "ternref"
    assert meta["ternref.method"] == "twn"
    assert meta["ternref.layers.0.type"] == "PackedConv2d"
    assert meta["ternref.layers.0.weight.shape"] == [16, 1, 3, 3]
    assert meta["ternref.layers.0.folded_batchnorm"] is True
    assert meta["ternref.layers.0.weight.granularity"] == "channel"  # the fold made it per row
    assert meta["ternref.layers.0.weight.padded"] is True
    assert meta["ternref.layers.0.weight_quantizer"].startswith("TWNQuantizer(factor=0.7")
    assert meta["ternref.layers.0.stride"] == [1, 1]
    # padding costs bits: rows of 9 weights in one 256-weight block
    row = next(r for r in report.tensors if r.name == "layers.0.weight")
    assert row.stored_shape == (16, 256)
    assert row.bits_per_weight == pytest.approx(8 * {"tq2_0": 66, "tq1_0": 54}[quant] / 9)
    assert any("padded to 256" in c for c in report.conversions)
    # what gguf's dequantizer reads is the folded w_hat, up to the fp16 scales
    for i, layer in enumerate(inference.layers):
        if isinstance(layer, (PackedConv2d, PackedLinear)):
            seen = layer_weight_from_gguf(gguf, path, i)
            np.testing.assert_array_equal(seen, fp16_scales(unpack(layer.packed)).dense())


def test_lenet5_rows_of_800_and_1600_need_padding(tmp_path):
    rng = np.random.default_rng(1)
    model = build_model("lenet5", (1, 28, 28), 10, rng)
    methods.quantize_model(model, methods.get("twn"))
    _randomize_batchnorm(model, rng)
    with pytest.raises(ValueError, match=r"'layers\.3\.weight'.*800 weights, not a multiple"):
        save_gguf(model, tmp_path / "lenet.gguf")
    report = save_gguf(model, tmp_path / "lenet.gguf", pad=True)
    stored = {r.name: r.stored_shape for r in report.tensors}
    # BatchNorm folded into the first conv at export: conv, ReLU, pool, then the packed conv
    assert stored["layers.3.weight"] == (64, 1024)  # 32 * 5 * 5 = 800 -> 1024
    assert stored["layers.7.weight"] == (512, 1792)  # 64 * 5 * 5 = 1600 -> 1792
    assert stored["layers.0.weight"] == (32, 1, 5, 5)  # the first conv stays F32, 4-D
    x = rng.normal(size=(2, 1, 28, 28)).astype(np.float32)
    loaded = load_gguf(tmp_path / "lenet.gguf")
    np.testing.assert_array_equal(
        loaded.forward(x), fp16_reference(packed.export(model)).forward(x)
    )


# ------------------------------------------------------------------------------ conversions


def test_split_and_pad_keep_asymmetric_group_scales_with_offset(tmp_path):
    rng = np.random.default_rng(2)
    codes = rng.integers(-1, 2, (6, 300)).astype(np.int8)
    sshape = (6, 3)
    t = Ternary(
        codes,
        rng.uniform(0.1, 1, sshape).astype(np.float32),
        rng.uniform(0.1, 1, sshape).astype(np.float32),
        granularity="group",
        group_size=100,
        offset=rng.normal(0, 0.3, sshape).astype(np.float32),
    )
    model = _packed_mlp(t, rng)
    path = tmp_path / "m.gguf"
    with pytest.raises(ValueError) as err:
        save_gguf(model, path)
    for reason in ("asymmetric", "offset", "300 weights", "split=True", "pad=True"):
        assert reason in str(err.value)
    report = save_gguf(model, path, split=True, pad=True)
    names = [r.name for r in report.tensors if r.layer == 1 and r.role != "bias"]
    assert names == ["layers.1.weight.pos", "layers.1.weight.neg", "layers.1.weight.offset"]
    assert read_metadata(path)["ternref.layers.1.weight.tensors"] == names
    loaded = load_gguf(path)
    assert unpack(loaded.layers[1].packed) == fp16_scales(t)  # recombined, scales in fp16
    seen = layer_weight_from_gguf(gguf, path, 1)
    np.testing.assert_allclose(seen, fp16_scales(t).dense(), rtol=2.0**-23, atol=0)


@pytest.mark.parametrize("float_type", ["f32", "f16"])
def test_dense_fallback_stores_w_hat_and_loads_a_full_precision_layer(tmp_path, float_type):
    rng = np.random.default_rng(3)
    t = Ternary(rng.integers(-1, 2, (4, 100)).astype(np.int8), np.float32(0.7), np.float32(0.3))
    model = _packed_mlp(t, rng)
    path = tmp_path / "m.gguf"
    report = save_gguf(model, path, dense=True, float_type=float_type)
    row = next(r for r in report.tensors if r.name == "layers.1.weight")
    assert (row.role, row.ggml_type) == ("dense", float_type.upper())
    assert any("stored as a dense" in c for c in report.conversions)
    meta = read_metadata(path)
    assert meta["ternref.layers.1.type"] == "Linear"
    assert meta["ternref.layers.1.dequantized_from_ternary"] is True
    loaded = load_gguf(path)
    assert isinstance(loaded.layers[1], nn.Linear)
    want = t.dense().astype(np.float16 if float_type == "f16" else np.float32)
    np.testing.assert_array_equal(loaded.layers[1].weight.data, want.astype(np.float32))
    if float_type == "f32":
        assert row.max_abs_error == 0.0 and row.max_rel_scale_error == 0.0
    else:
        assert 0 < row.max_rel_scale_error <= 2.0**-11


def test_scales_outside_fp16_are_refused_or_stored_dense(tmp_path):
    rng = np.random.default_rng(4)
    codes = rng.integers(-1, 2, (2, 256)).astype(np.int8)
    for alpha, reason in ((1e5, "exceeds fp16"), (1e-9, "rounds to 0 in fp16")):
        model = _packed_mlp(Ternary(codes, np.float32(alpha)), rng)
        with pytest.raises(ValueError, match=reason):
            save_gguf(model, tmp_path / "m.gguf")
        report = save_gguf(model, tmp_path / "m.gguf", dense=True)
        assert any(reason in c for c in report.conversions)


def test_f16_full_precision_weights_and_f32_vectors(tmp_path):
    rng = np.random.default_rng(5)
    model = nn.mlp([64, 256, 256, 10], rng=rng)
    methods.quantize_model(model, methods.get("twn"))
    report = save_gguf(model.eval(), tmp_path / "m.gguf", float_type="f16")
    kinds = {r.name: r.ggml_type for r in report.tensors}
    assert kinds["layers.1.weight"] == "F16" and kinds["layers.1.bias"] == "F32"
    f16 = [r for r in report.tensors if r.ggml_type == "F16"]
    assert all(0 < r.max_rel_scale_error <= 2.0**-11 for r in f16)
    loaded = load_gguf(tmp_path / "m.gguf")
    w = model.layers[1].weight.data
    np.testing.assert_array_equal(loaded.layers[1].weight.data, w.astype(np.float16))


def test_int8_activations_and_the_packed_format_survive(tmp_path):
    rng = np.random.default_rng(6)
    t = Ternary(rng.integers(-1, 2, (8, 512)).astype(np.int8), np.float32(0.2))
    save_gguf(_packed_mlp(t, rng, activations="int8"), tmp_path / "m.gguf", "tq1_0")
    loaded = load_gguf(tmp_path / "m.gguf", format="bitplanes")
    assert loaded.layers[1].activations == "int8"
    assert loaded.layers[1].packed.format == "bitplanes"
    assert unpack(loaded.layers[1].packed) == fp16_scales(t)


# ------------------------------------------------------------------------------ inputs, metadata


def test_trained_packed_and_npz_models_write_the_same_tensors(tmp_path):
    rng = np.random.default_rng(7)
    model = nn.mlp([64, 256, 256, 10], rng=rng)
    methods.quantize_model(model, methods.get("residual"))
    model.eval()
    inference = packed.export(model, "tq1")
    packed.save(tmp_path / "m.npz", inference)
    save_gguf(model, tmp_path / "a.gguf")
    save_gguf(inference, tmp_path / "b.gguf")
    save_gguf(packed.load(tmp_path / "m.npz"), tmp_path / "c.gguf", method="residual")
    a, b, c = (read_tensors(tmp_path / f"{n}.gguf") for n in "abc")
    assert sorted(a) == sorted(b) == sorted(c)
    assert "layers.3.weight.term1" in a  # two residual terms, two TQ tensors
    for name in a:
        for other in (b, c):
            if isinstance(a[name], Ternary):
                assert a[name] == other[name]
            else:
                np.testing.assert_array_equal(a[name], other[name])
    meta_a, meta_b = read_metadata(tmp_path / "a.gguf"), read_metadata(tmp_path / "b.gguf")
    assert meta_a["ternref.method"] == "residual"
    assert "ternref.layers.3.weight_quantizer" in meta_a
    assert "ternref.method" not in meta_b and "ternref.layers.3.weight_quantizer" not in meta_b
    assert read_metadata(tmp_path / "c.gguf")["ternref.method"] == "residual"


def test_read_tensors_gives_each_tq_tensor_as_an_exact_ternary(tmp_path):
    rng = np.random.default_rng(8)
    t = Ternary(
        rng.integers(-1, 2, (3, 512)).astype(np.int8),
        rng.uniform(0.1, 1, 3).astype(np.float32),
        granularity="channel",
    )
    save_gguf(_packed_mlp(t, rng), tmp_path / "m.gguf", "tq1_0")
    tensors = read_tensors(tmp_path / "m.gguf")
    got = tensors["layers.1.weight"]
    assert (got.granularity, got.group_size, got.shape) == ("group", 256, (3, 512))
    raw = gguf.GGUFReader(tmp_path / "m.gguf").tensors
    tq_tensor = next(r for r in raw if r.name == "layers.1.weight")
    seen = gguf.quants.dequantize(np.array(tq_tensor.data), tq_tensor.tensor_type)
    np.testing.assert_array_equal(got.dense(), seen)
    np.testing.assert_array_equal(got.dense(), fp16_scales(t).dense())
    assert tensors["layers.1.bias"].dtype == np.float32


def test_save_gguf_checks_its_arguments(tmp_path):
    rng = np.random.default_rng(9)
    model = nn.mlp([4, 3], rng=rng)
    with pytest.raises(TypeError, match="Sequential"):
        save_gguf(model.layers[1], tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="quant"):
        save_gguf(model, tmp_path / "m.gguf", quant="q4_0")
    with pytest.raises(ValueError, match="float_type"):
        save_gguf(model, tmp_path / "m.gguf", float_type="bf16")
    with pytest.raises(TypeError, match="pad"):
        save_gguf(model, tmp_path / "m.gguf", pad="yes")
    with pytest.raises(ValueError, match="unknown method"):
        save_gguf(model, tmp_path / "m.gguf", method="nope")
    t = Ternary(np.ones((2, 256), np.int8), np.float32(1))
    odd = nn.Sequential(*_packed_mlp(t, rng).layers, nn.Dropout(0.5))  # packed: not exported
    with pytest.raises(TypeError, match="layer 4 is a Dropout"):
        save_gguf(odd, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
    report = save_gguf(model, tmp_path / "m.gguf", method=methods.get("twn", factor=0.75))
    meta = read_metadata(tmp_path / "m.gguf")
    assert (
        meta["ternref.method"] == "twn"
        and '"factor": 0.75' in meta["ternref.method.hyperparameters"]
    )
    assert "largest relative scale error" in report.to_text()
    assert report.to_dict()["tensors"][0]["name"] == "layers.1.weight"
