"""Foreign and broken GGUF files: every one refused with a clear error, or (requantized
tensors, on request) dequantized with a warning that says so.

Broken files are made from a good one with gguf's own reader (in place, ``mode="r+"``) or by
copying it through gguf's reader and writer with a change (``gguf_helpers.rewrite``).
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from ternref import Ternary, methods, nn
from ternref.interop import load_gguf, read_tensors, save_gguf
from ternref.packed import unpack

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import GGUFValueType as V  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from gguf_helpers import fp16_scales, rewrite  # noqa: E402

TERNARY = "layers.3.weight"  # the hidden 256x256 layer of the digits MLP


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A twn-quantized digits MLP (untrained: the file format is the point) and its file."""
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    methods.quantize_model(model, methods.get("twn"))
    model.eval()
    path = tmp_path_factory.mktemp("gguf") / "good.gguf"
    save_gguf(model, path)
    return model, path


def _copy(path, tmp_path, name="broken.gguf"):
    out = tmp_path / name
    out.write_bytes(path.read_bytes())
    return out


def _w_hat(model):
    layer = model.layers[3]
    return layer.weight_quantizer.to_ternary(layer.weight.data).dense()


# ------------------------------------------------------------------------------ not GGUF at all


def test_truncated_files_are_refused(good, tmp_path):
    _, path = good
    blob = path.read_bytes()
    reader = gguf.GGUFReader(path)
    last = max(reader.tensors, key=lambda t: t.data_offset)
    cuts = {
        "empty": 0,
        "magic only": 4,
        "inside the metadata": 200,
        "inside the tensor infos": reader.data_offset - 10,
        "inside the ternary tensor": next(
            t for t in reader.tensors if t.name == TERNARY
        ).data_offset
        + 100,
        "one byte short of the last tensor": last.data_offset + last.n_bytes - 1,
    }
    del reader
    for what, cut in cuts.items():
        broken = tmp_path / "cut.gguf"
        broken.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match="truncated or corrupt") as err:
            load_gguf(broken)
        assert "refusing to load" in str(err.value), what


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    np.savez(path.with_suffix(".npz"), a=np.zeros(3))
    path.write_bytes(path.with_suffix(".npz").read_bytes())
    with pytest.raises(ValueError, match="not a readable GGUF file.*magic"):
        load_gguf(path)


def test_an_unknown_tensor_type_id_is_refused(good, tmp_path):
    broken = _copy(good[1], tmp_path)
    reader = gguf.GGUFReader(broken, "r+")
    t = next(t for t in reader.tensors if t.name == TERNARY)
    t.field.parts[4][0] = 250  # the type id in the tensor info: no GGML type has it
    reader.data.flush()
    del reader, t
    with pytest.raises(ValueError, match="a type the gguf library .* does not know"):
        load_gguf(broken)


# ------------------------------------------------------------------------------ other models


def test_a_gguf_without_ternref_metadata_is_refused_and_read_tensors_reads_it(tmp_path):
    # (llama files are TransformerLMs now: tests/interop/test_llama_gguf.py; gpt2 is foreign)
    path = tmp_path / "gpt2.gguf"
    w = np.random.default_rng(1).normal(size=(4, 256)).astype(np.float32)
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_uint32("gpt2.block_count", 1)
    writer.add_tensor("token_embd.weight", w)
    writer.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(w, Q.Q8_0), raw_dtype=Q.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"general.architecture 'gpt2': not a ternref model"):
        load_gguf(path)
    with pytest.raises(ValueError, match="is Q8_0; pass dequantize=True"):
        read_tensors(path)
    tensors = read_tensors(path, dequantize=True)
    np.testing.assert_array_equal(tensors["token_embd.weight"], w)
    assert np.abs(tensors["blk.0.attn_q.weight"] - w).max() < 0.05  # Q8_0's own error


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1])
def test_a_requantized_ternary_tensor_is_refused_or_dequantized_on_request(good, tmp_path, qtype):
    model, path = good
    requantized = gguf.quants.quantize(_w_hat(model), qtype)
    broken = tmp_path / "requantized.gguf"
    rewrite(gguf, path, broken, replace={TERNARY: (requantized, qtype)})
    with pytest.raises(ValueError, match=f"'{TERNARY}' is {qtype.name}, not a ternary type"):
        load_gguf(broken)
    with pytest.warns(UserWarning, match=rf"dequantized {TERNARY} \({qtype.name}\)"):
        loaded = load_gguf(broken, dequantize=True)
    layer = loaded.layers[3]
    assert isinstance(layer, nn.Linear)  # a full-precision layer now
    np.testing.assert_array_equal(layer.weight.data, gguf.quants.dequantize(requantized, qtype))


def test_a_requantized_full_precision_tensor_is_refused_or_dequantized(good, tmp_path):
    model, path = good
    w = model.layers[1].weight.data
    broken = tmp_path / "q8.gguf"
    rewrite(
        gguf, path, broken, replace={"layers.1.weight": (gguf.quants.quantize(w, Q.Q8_0), Q.Q8_0)}
    )
    with pytest.raises(ValueError, match="is Q8_0, but ternref stores this tensor as floats"):
        load_gguf(broken)
    with pytest.warns(UserWarning, match=r"layers\.1\.weight \(Q8_0\)"):
        load_gguf(broken, dequantize=True)


# ------------------------------------------------------------------------------ inconsistent


def test_a_tensor_whose_shape_disagrees_with_its_metadata_is_refused(good, tmp_path):
    model, path = good
    broken = tmp_path / "shape.gguf"
    rewrite(gguf, path, broken, set_kv={"ternref.layers.3.weight.shape": ([256, 512], V.ARRAY)})
    with pytest.raises(ValueError, match=r"'layers.3.weight' has shape \[256, 256\], its metadata"):
        load_gguf(broken)
    wide = gguf.quants.quantize(np.ones((256, 512), np.float32), Q.TQ2_0)
    rewrite(gguf, path, broken, replace={TERNARY: (wide, Q.TQ2_0)})
    with pytest.raises(ValueError, match=r"has shape \[256, 512\], its metadata says \[256, 256\]"):
        load_gguf(broken)
    rewrite(
        gguf, path, broken, replace={"layers.5.weight": (np.zeros((10, 255), np.float32), None)}
    )
    with pytest.raises(ValueError, match=r"'layers.5.weight' has shape \[10, 255\]"):
        load_gguf(broken)


def test_missing_extra_and_unknown_things_are_refused(good, tmp_path):
    _, path = good
    broken = tmp_path / "b.gguf"
    cases = [
        ({"drop_tensors": ["layers.3.bias"]}, "tensor 'layers.3.bias' is missing"),
        ({"add": {"stray": (np.zeros(3, np.float32), None)}}, r"unexpected tensors \['stray'\]"),
        ({"set_kv": {"ternref.layers.9.type": ("ReLU", V.STRING)}}, "unknown metadata keys"),
        ({"set_kv": {"ternref.format_version": (2, V.UINT32)}}, "format_version 2 is not 1"),
        ({"set_kv": {"ternref.layers.2.type": ("Softmax", V.STRING)}}, "unknown layer type"),
        ({"set_kv": {"ternref.layers.3.has_bias": ("yes", V.STRING)}}, "must be bool"),
        ({"drop_kv": ["ternref.layers.3.weight.granularity"]}, "granularity' is missing"),
        (
            {"set_kv": {"ternref.layers.3.weight.tensors": (["layers.3.w"], V.ARRAY)}},
            "weight.tensors",
        ),
    ]
    for change, message in cases:
        rewrite(gguf, path, broken, **change)
        with pytest.raises(ValueError, match=message):
            load_gguf(broken)


def test_corrupt_ternary_bytes_and_scales_are_refused(good, tmp_path):
    model, path = good
    broken = _copy(path, tmp_path)
    reader = gguf.GGUFReader(broken, "r+")
    t = next(t for t in reader.tensors if t.name == TERNARY)
    t.data[5, 3] = 0xFF  # four codes with the unused pattern 0b11
    reader.data.flush()
    del reader, t
    with pytest.raises(ValueError, match=f"'{TERNARY}'.*unused bit pattern"):
        load_gguf(broken)

    broken = _copy(path, tmp_path, "scales.gguf")
    reader = gguf.GGUFReader(broken, "r+")
    t = next(t for t in reader.tensors if t.name == TERNARY)
    d = t.data[7, 64:66].view(np.float16)
    d[0] = d[0] * np.float16(2)  # one row's d differs: but twn's scale is per tensor
    reader.data.flush()
    del reader, t, d
    with pytest.raises(ValueError, match="rows hold different scales d.*'tensor'"):
        load_gguf(broken)


def test_the_good_file_loads(good):
    model, path = good
    loaded = load_gguf(path)
    layer = model.layers[3]
    t = layer.weight_quantizer.to_ternary(layer.weight.data)
    assert unpack(loaded.layers[3].packed) == fp16_scales(t)
    assert isinstance(t, Ternary)
