"""save/load: exact round trip, a corpus of corrupt files each refused with a clear message,
and the LeNet-5 file size against float32."""

import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ternref.nn import Conv2d, Linear, lenet5
from ternref.packed import export, load, save, unpack

sys.path.insert(0, str(Path(__file__).parent))
from test_packed_export import QUANTS, ThresholdQuantizer, small_cnn  # noqa: E402


@pytest.fixture(scope="module")
def packed_model():
    rng = np.random.default_rng(0)
    return export(small_cnn(rng, QUANTS["channel-offset"]), "tq1", activations="int8")


@pytest.fixture(scope="module")
def good_file(tmp_path_factory, packed_model):
    path = tmp_path_factory.mktemp("io") / "model.npz"
    save(path, packed_model)
    return path


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _write(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def _header(members):
    return json.loads(np.load(io.BytesIO(members["__header__.npy"])).tobytes())


def _with_header(members, header):
    raw = np.frombuffer(json.dumps(header).encode(), np.uint8)
    return {**members, "__header__.npy": _npy(raw)}


@pytest.mark.parametrize("fmt", ["i2", "tq1", "bitplanes"])
@pytest.mark.parametrize("qname", sorted(QUANTS))
def test_round_trip_is_exact(tmp_path, fmt, qname):
    rng = np.random.default_rng(1)
    model = export(small_cnn(rng, QUANTS[qname]), fmt)
    path = tmp_path / "m.npz"
    save(path, model)
    back = load(path)
    assert [type(a) for a in back] == [type(a) for a in model]
    for a, b in zip(model, back):
        if hasattr(a, "packed"):
            assert unpack(a.packed) == unpack(b.packed)
            assert np.array_equal(a.bias, b.bias) if a.bias is not None else b.bias is None
            assert a.activations == b.activations
    x = rng.standard_normal((20, 1, 8, 8)).astype(np.float32)
    assert np.array_equal(model.forward(x), back.forward(x))


def test_saved_file_has_no_pickles_and_a_json_header(good_file):
    members = _members(good_file)
    header = _header(members)
    assert header["format"] == "ternref-packed" and header["version"] == 1
    for name, data in members.items():
        arr = np.load(io.BytesIO(data), allow_pickle=False)  # would raise on an object array
        assert not arr.dtype.hasobject, name
    entry = header["layers"][0]
    assert entry["type"] == "PackedConv2d"
    assert set(entry["arrays"]["codes"]) == {"key", "shape", "dtype", "sha256"}


def _corruptions(path):
    """(name, bytes or members dict, expected message fragment)."""
    blob = path.read_bytes()
    m = _members(path)
    h = _header(m)
    key0 = h["layers"][0]["arrays"]["codes"]["key"]
    codes = np.load(io.BytesIO(m[key0 + ".npy"]))
    out = [
        ("empty file", b"", "not a readable .npz"),
        ("truncated", blob[: len(blob) // 2], "not a readable .npz"),
        ("not a zip", b"hello world" * 10, "not a readable .npz"),
    ]
    # a flipped byte inside an array's data: the zip CRC (or the SHA-256) catches it
    flipped = bytearray(blob)
    pos = blob.find(m[key0 + ".npy"][-16:])
    flipped[pos + 3] ^= 0xFF
    out.append(("flipped byte", bytes(flipped), "corrupt"))
    # same flip with a rebuilt zip (valid CRC): only the SHA-256 can catch it
    bad = codes.copy()
    bad.flat[0] ^= 1
    out.append(("bad checksum", {**m, key0 + ".npy": _npy(bad)}, "SHA-256"))
    out.append(("no header", {k: v for k, v in m.items() if k != "__header__.npy"}, "header"))
    out.append(
        ("header not json", {**m, "__header__.npy": _npy(np.frombuffer(b"{x", np.uint8))}, "JSON")
    )
    out.append(("wrong format name", _with_header(m, {**h, "format": "onnx"}), "format name"))
    out.append(("future version", _with_header(m, {**h, "version": 2}), "version"))
    out.append(("missing array", {k: v for k, v in m.items() if k != key0 + ".npy"}, "missing"))
    out.append(("extra array", {**m, "extra.npy": _npy(np.zeros(3))}, "extra"))
    obj = np.array([{"evil": 1}, None], dtype=object)
    out.append(("pickle", {**m, key0 + ".npy": _npy(obj)}, "pickle"))
    out.append(("wrong dtype", {**m, key0 + ".npy": _npy(codes.astype(np.int16))}, "dtype"))
    out.append(("wrong shape", {**m, key0 + ".npy": _npy(codes[:, :-1])}, "shape"))
    h2 = json.loads(json.dumps(h))
    h2["layers"][0]["type"] = "Transformer"
    out.append(("unknown layer", _with_header(m, h2), "unknown layer type"))
    h3 = json.loads(json.dumps(h))
    h3["layers"][0]["params"]["format"] = "q4_k"
    out.append(("unknown packed format", _with_header(m, h3), "unknown packed format"))
    h4 = json.loads(json.dumps(h))
    h4["layers"][0]["params"]["shape"] = [6, 200]
    h4["layers"][0]["params"]["orig_shape"] = [6, 1, 10, 20]
    out.append(("inconsistent geometry", _with_header(m, h4), "shape"))
    # unused i2/tq1 bit pattern with a matching checksum: decode refuses it
    bad = np.full_like(codes, 1)  # tq1 byte 1 encodes no 5-trit word
    h5 = json.loads(json.dumps(h))
    h5["layers"][0]["arrays"]["codes"]["sha256"] = hashlib.sha256(bad.tobytes()).hexdigest()
    out.append(("invalid codes", {**_with_header(m, h5), key0 + ".npy": _npy(bad)}, "5-trit"))
    # a non-zero code in the padding (tq1 K = 9 of a 160 block), checksum recomputed
    bad = codes.copy()
    bad[0, 31] = 255  # trits (2, 2, 2, 2, 2) for weights 31, 63, 95, 127, 159 of row 0
    h7 = json.loads(json.dumps(h))
    h7["layers"][0]["arrays"]["codes"]["sha256"] = hashlib.sha256(bad.tobytes()).hexdigest()
    out.append(("padding", {**_with_header(m, h7), key0 + ".npy": _npy(bad)}, "padding"))
    h6 = json.loads(json.dumps(h))
    h6["layers"][0]["params"]["stride"] = [0, 1]
    out.append(("bad stride", _with_header(m, h6), "stride"))
    return out


def test_corrupt_files_are_refused_with_clear_messages(tmp_path, good_file):
    cases = _corruptions(good_file)
    assert len(cases) >= 15
    for name, content, fragment in cases:
        path = tmp_path / f"{name.replace(' ', '_')}.npz"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            _write(path, content)
        with pytest.raises(ValueError, match="refusing to load") as err:
            load(path)
            pytest.fail(f"corrupt file accepted: {name}")
        assert fragment.lower() in str(err.value).lower(), (name, str(err.value))


def test_the_good_file_still_loads(good_file, packed_model):
    back = load(good_file)
    x = np.random.default_rng(2).standard_normal((4, 1, 8, 8)).astype(np.float32)
    assert np.array_equal(back.forward(x), packed_model.forward(x))


def test_save_refuses_unexported_models(tmp_path):
    from ternref.nn import Sequential

    model = Sequential(Linear(3, 2, weight_quantizer=ThresholdQuantizer()))
    with pytest.raises(ValueError, match="export"):
        save(tmp_path / "x.npz", model)


def test_lenet5_packed_file_is_at_least_10x_smaller_than_float32(tmp_path):
    rng = np.random.default_rng(0)
    model = lenet5(rng=rng)
    for layer in model:
        if isinstance(layer, (Linear, Conv2d)):
            layer.weight_quantizer = ThresholdQuantizer("channel")
    model.eval()
    float_path = tmp_path / "float.npz"
    np.savez(float_path, *[p.data for p in model.parameters()])
    for fmt in ("i2", "tq1"):
        path = tmp_path / f"{fmt}.npz"
        save(path, export(model, fmt))
        ratio = float_path.stat().st_size / path.stat().st_size
        print(f"LeNet-5 {fmt}: float32 {float_path.stat().st_size} B, packed "
              f"{path.stat().st_size} B, {ratio:.1f}x smaller")  # fmt: skip
        assert ratio >= 10
