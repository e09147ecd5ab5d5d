"""``ternref compare``: the table, its files, and failures reported per row."""

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from ternref import methods
from ternref.compare import compare, copy_state, write_outputs
from ternref.methods.base import Method, MethodInfo, WeightQuantizer

ROW_KEYS = {
    "method",
    "paper",
    "year",
    "ternary",
    "status",
    "error",
    "accuracy_mean",
    "accuracy_std",
    "accuracies",
    "gap_to_fp",
    "sparsity",
    "packed_bytes",
    "float_bytes",
    "bits_per_weight",
    "train_seconds_per_epoch",
    "packed_inference_seconds",
    "packed_agreement",
}
SETTINGS_KEYS = {
    "command",
    "dataset",
    "model",
    "methods",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "schedule",
    "seeds",
    "seed_values",
    "keep_full_precision",
    "start",
    "machine",
    "date",
    "ternref",
    "numpy",
    "numba",
    "python",
}


def test_compare_cli_writes_table_and_files(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ternref",
            "compare",
            "--methods",
            "twn,inq",
            "--epochs",
            "1",
            "--out",
            str(tmp_path),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    table = out.stdout.splitlines()
    assert table[0].split()[:3] == ["method", "paper", "ternary"]
    assert [line.split()[0] for line in table[2:5]] == ["fp", "twn", "inq"]

    doc = json.loads((tmp_path / "compare.json").read_text())
    assert set(doc["settings"]) == SETTINGS_KEYS
    assert doc["settings"]["command"].startswith("ternref compare --methods twn,inq")
    assert doc["settings"]["seed_values"] == [0] and doc["settings"]["epochs"] == 1
    assert [r["method"] for r in doc["rows"]] == ["fp", "twn", "inq"]
    for row in doc["rows"]:
        assert set(row) == ROW_KEYS
        assert row["status"] == "ok" and 0.5 < row["accuracy_mean"] <= 1.0
    assert doc["rows"][0]["gap_to_fp"] == 0.0
    for row in doc["rows"][1:]:
        assert 0 < row["sparsity"] < 1
        assert row["gap_to_fp"] == pytest.approx(
            row["accuracy_mean"] - doc["rows"][0]["accuracy_mean"]
        )

    csv_lines = (tmp_path / "compare.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,paper,year,ternary,status")
    assert len(csv_lines) == 4
    md = (tmp_path / "compare.md").read_text()
    assert "| method | paper |" in md and "| twn |" in md and "Command: `ternref compare" in md


class Exploding(WeightQuantizer):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def project(self, w):
        self.calls += 1
        if self.calls > 3:
            raise RuntimeError("projection exploded on purpose")
        from ternref.projections import twn

        return twn(w)


@dataclass
class Broken(Method):
    info: ClassVar[MethodInfo] = MethodInfo(
        "broken", "Nobody: A method that raises", 2026, None, "W", "twn", "STE", "any"
    )

    def weight_quantizer(self, layer):
        return Exploding()


def test_a_method_raising_mid_run_gets_its_row_and_the_run_goes_on(monkeypatch, tmp_path):
    monkeypatch.setitem(methods.base._METHODS, "broken", Broken)
    seen = []
    result = compare(
        "digits",
        "mlp",
        ["broken", "twn"],
        epochs=1,
        progress=False,
        on_row=lambda r: seen.append(len(r.rows)),
    )
    assert seen == [1, 2, 3]  # the on_row hook ran after every row (the CLI writes files there)
    rows = {r["method"]: r for r in result.records()}
    assert rows["broken"]["status"] == "failed"
    assert "RuntimeError: projection exploded on purpose" in rows["broken"]["error"]
    assert rows["broken"]["accuracy_mean"] is None
    assert rows["twn"]["status"] == "ok" and rows["twn"]["accuracy_mean"] > 0.5
    text = result.to_text()
    assert "failed: RuntimeError: projection exploded on purpose" in text
    written = write_outputs(result, str(tmp_path))
    assert len(written) == 3
    doc = json.loads((tmp_path / "compare.json").read_text())
    assert [r["method"] for r in doc["rows"]] == ["fp", "broken", "twn"]


def test_interrupt_keeps_the_finished_rows(monkeypatch):
    import ternref.compare as cmp

    real = cmp._run_one

    def interrupt_on_twn(name, *args, **kwargs):
        if name == "twn":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(cmp, "_run_one", interrupt_on_twn)
    result = compare("digits", "mlp", ["inq", "twn"], epochs=1, progress=False)
    assert result.interrupted
    assert [r.method for r in result.rows] == ["fp", "inq"]
    assert "Interrupted" in result.to_markdown()


def test_seeds_give_mean_and_std():
    result = compare("digits", "mlp", ["twn"], epochs=1, seeds=2, progress=False)
    row = result.records()[1]
    assert len(row["accuracies"]) == 2
    assert row["accuracy_mean"] == pytest.approx(np.mean(row["accuracies"]))
    assert row["accuracy_std"] == pytest.approx(np.std(row["accuracies"]))
    assert "±" in result.to_text()


def test_unknown_methods_are_refused_before_training():
    with pytest.raises(ValueError, match="unknown method"):
        compare("digits", "mlp", ["nope"], epochs=1, progress=False)


def test_copy_state_copies_parameters_and_running_stats_without_sharing():
    from ternref.nn.models import lenet5

    rng = np.random.default_rng(0)
    source, target = lenet5(rng=rng), lenet5(rng=rng)
    source.train()(rng.standard_normal((4, 1, 28, 28)).astype(np.float32))  # moves BN stats
    copy_state(source, target)
    for a, b in zip(source.parameters(), target.parameters()):
        assert np.array_equal(a.data, b.data) and not np.shares_memory(a.data, b.data)
    pairs = zip(source.modules(), target.modules())
    bn_pairs = [(a, b) for a, b in pairs if hasattr(a, "running_var")]
    assert bn_pairs
    for a, b in bn_pairs:
        assert np.array_equal(a.running_mean, b.running_mean)
        assert np.array_equal(a.running_var, b.running_var)
        assert a.num_batches_tracked == b.num_batches_tracked == 1
    target.parameters()[0].data += 1.0
    assert not np.array_equal(source.parameters()[0].data, target.parameters()[0].data)


def test_copy_state_refuses_a_different_architecture():
    from ternref.nn.models import mlp

    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="architecture"):
        copy_state(mlp([4, 3, 2], rng=rng), mlp([4, 3, 3, 2], rng=rng))
    with pytest.raises(ValueError, match="shape"):
        copy_state(mlp([4, 3, 2], rng=rng), mlp([4, 5, 2], rng=rng))


def test_start_from_the_full_precision_baseline(monkeypatch):
    import ternref.compare as cmp

    real, starts = cmp._run_one, {}

    def spy(name, *args, **kwargs):
        starts[name] = kwargs.get("start_from")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(cmp, "_run_one", spy)
    result = compare("digits", "mlp", ["twn"], epochs=1, start="fp", progress=False)
    assert starts["fp"] is None and starts["twn"] is not None  # the trained baseline
    assert [r.status for r in result.rows] == ["ok", "ok"]
    assert result.settings["start"] == "fp"
    assert "starts from the trained full-precision baseline" in result.to_markdown()
    with pytest.raises(ValueError, match="start"):
        compare("digits", "mlp", ["twn"], epochs=1, start="pretrained", progress=False)
