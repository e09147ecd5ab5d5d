"""``ternref export MODEL.npz --to gguf OUT.gguf``: the report, the refusals, the options."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ternref import Ternary, nn, packed
from ternref.cli import main
from ternref.interop import load_gguf, read_metadata
from ternref.packed import PackedLinear, pack

pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")

sys.path.insert(0, str(Path(__file__).parent))
from gguf_helpers import fp16_reference  # noqa: E402


def _npz(tmp_path, t: Ternary) -> Path:
    rng = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Flatten(),
        PackedLinear(pack(t), None),
        nn.ReLU(),
        nn.Linear(t.shape[0], 3, rng=rng).eval(),
    )
    path = tmp_path / "model.npz"
    packed.save(path, model)
    return path


def test_export_writes_a_gguf_that_loads_to_the_same_model(tmp_path, capsys):
    rng = np.random.default_rng(1)
    t = Ternary(rng.integers(-1, 2, (8, 256)).astype(np.int8), np.float32(0.3))
    npz, out = _npz(tmp_path, t), tmp_path / "model.gguf"
    assert main(["export", str(npz), "--to", "gguf", str(out), "--method", "twn"]) == 0
    printed = capsys.readouterr().out
    assert "layers.1.weight              TQ2_0" in printed and f"wrote {out}" in printed
    x = rng.normal(size=(5, 256)).astype(np.float32)
    want = fp16_reference(packed.load(npz)).forward(x)
    np.testing.assert_array_equal(load_gguf(out).forward(x), want)
    assert read_metadata(out)["ternref.method"] == "twn"


def test_export_refuses_what_does_not_map_and_names_the_flag(tmp_path, capsys):
    rng = np.random.default_rng(2)
    t = Ternary(rng.integers(-1, 2, (4, 100)).astype(np.int8), np.float32(0.3), np.float32(0.5))
    npz, out = _npz(tmp_path, t), tmp_path / "model.gguf"
    assert main(["export", str(npz), "--to", "gguf", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ternref: error: save_gguf: tensor 'layers.1.weight'")
    assert "--split" in err and "--pad" in err and "split=True" not in err
    assert not out.exists()
    args = ["export", str(npz), "--to", "gguf", str(out), "--split", "--pad", "--json"]
    assert main([*args, "--quant", "tq1_0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["quant"] == "tq1_0" and report["bytes"] == out.stat().st_size
    parts = [r["name"] for r in report["tensors"] if r["ggml_type"] == "TQ1_0"]
    assert parts == ["layers.1.weight.pos", "layers.1.weight.neg"]
    assert len(report["conversions"]) == 2  # padded, and split


def test_export_of_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.npz"), "--to", "gguf", "x.gguf"]) == 2
    assert "no such file" in capsys.readouterr().err
