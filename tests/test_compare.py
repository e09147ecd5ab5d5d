"""``ternref compare``: the table, its files, and failures reported per row."""

import csv
import json
import math
import re
import subprocess
import sys
import time
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
    "float_inference_seconds",
    "packed_inference_seconds",
    "packed_speedup",
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


MLP_SIZES = [64, 256, 256, 10]  # the digits mlp recipe: 8x8 images, two hidden layers, 10 classes


def expected_bits_per_weight(ternaries, fmt="i2"):
    """Bits per weight of packed ternary layers from the format's definition alone: each row of
    each scale group padded to the format's BLOCK at BITS_PER_CODE bits, plus every stored scale
    at its dtype's size, over the real weights."""
    from ternref.packed import FORMATS

    module = FORMATS[fmt]
    bits = weights = 0
    for t in ternaries:
        m, k = t.shape[0], math.prod(t.shape[1:])
        logical = t.group_size if t.granularity == "group" else k
        padded = -(-k // logical) * (-(-logical // module.BLOCK) * module.BLOCK)
        bits += module.BITS_PER_CODE * m * padded + 8 * t.dtype.itemsize * t.n_scales
        weights += m * k
    return bits / weights


def method_ternaries(name):
    """The Ternary of every quantized layer of a freshly built digits mlp under ``name`` (the
    granularity and number of scales do not depend on the values)."""
    from ternref.methods.base import quantized_layers
    from ternref.recipes import build_model

    model = build_model("mlp", (1, 8, 8), 10, np.random.default_rng(0))
    methods.quantize_model(model, methods.get(name))
    layers = quantized_layers(model)
    return [layer.weight_quantizer.to_ternary(layer.weight.data) for layer in layers]


def table_cells(text, n_rows):
    """The text table as {method: {column: cell}}, cut at the column widths of the dash line."""
    lines = text.splitlines()
    starts = [m.start() for m in re.finditer(r"-+", lines[1])]
    ends = [m.end() for m in re.finditer(r"-+", lines[1])]
    header = [lines[0][a:b].strip() for a, b in zip(starts, ends)]
    rows = {}
    for line in lines[2 : 2 + n_rows]:
        cells = [line[a:b].strip() for a, b in zip(starts, ends)]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def printed_number(cell):
    """(value, half of the last printed digit) of a cell such as '91.64', '+0.00', '95.6 KiB'."""
    number, _, unit = cell.partition(" ")
    decimals = len(number.partition(".")[2])
    scale = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2}[unit]
    return float(number) * scale, 0.5 * 10.0**-decimals * scale


def assert_printed(cell, value, factor=1.0):
    got, half = printed_number(cell)
    assert abs(got - factor * value) <= half * (1 + 1e-9), (cell, value)


def test_compare_cli_writes_table_and_files(tmp_path):
    """The files and the table hold the same numbers, and the numbers are the right ones for
    what ran: agreement 1.0, bits per weight of i2 on the mlp's layer sizes, bytes of float32
    parameters, accuracies and sparsities that are fractions of the test set and the weights."""
    from ternref.data import load_dataset

    start = time.perf_counter()
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
    wall = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    table = out.stdout.splitlines()
    assert table[0].split()[:3] == ["method", "paper", "ternary"]
    assert [line.split()[0] for line in table[2:5]] == ["fp", "twn", "inq"]

    doc = json.loads((tmp_path / "compare.json").read_text())
    assert set(doc["settings"]) == SETTINGS_KEYS
    assert doc["settings"]["command"].startswith("ternref compare --methods twn,inq")
    assert doc["settings"]["seed_values"] == [0] and doc["settings"]["epochs"] == 1
    assert [r["method"] for r in doc["rows"]] == ["fp", "twn", "inq"]
    n_test = len(load_dataset("digits").y_test)
    n_float = sum(a * b + b for a, b in zip(MLP_SIZES, MLP_SIZES[1:]))
    for row in doc["rows"]:
        assert set(row) == ROW_KEYS
        assert row["status"] == "ok" and 0.5 < row["accuracy_mean"] <= 1.0
        assert row["accuracies"] == [row["accuracy_mean"]] and row["accuracy_std"] == 0.0
        assert row["accuracy_mean"] * n_test == round(row["accuracy_mean"] * n_test)
        assert row["packed_agreement"] == 1.0  # float activations: the same predictions
        assert row["float_bytes"] == 4 * n_float
        assert 0 < row["train_seconds_per_epoch"] < wall
        assert 0 < row["packed_inference_seconds"] < wall
        assert 0 < row["float_inference_seconds"] < wall
        ratio = row["float_inference_seconds"] / row["packed_inference_seconds"]
        assert row["packed_speedup"] == pytest.approx(ratio)
    fp = doc["rows"][0]
    assert fp["gap_to_fp"] == 0.0 and fp["sparsity"] is None and fp["bits_per_weight"] is None
    assert fp["packed_bytes"] >= 4 * n_float  # a full-precision export stores every float
    for row in doc["rows"][1:]:
        ternaries = method_ternaries(row["method"])
        n_ternary = sum(t.codes.size for t in ternaries)
        assert 0 < row["sparsity"] < 1
        assert row["sparsity"] * n_ternary == round(row["sparsity"] * n_ternary)
        assert row["bits_per_weight"] == expected_bits_per_weight(ternaries)
        assert row["gap_to_fp"] == pytest.approx(row["accuracy_mean"] - fp["accuracy_mean"])
        # the file: the float layers, the codes and scales, and a small header
        least = 4 * (n_float - n_ternary) + row["bits_per_weight"] * n_ternary / 8
        assert least <= row["packed_bytes"] <= least + 16 * 1024

    # the printed table shows the JSON's numbers, to the printed precision
    cells = table_cells(out.stdout, len(doc["rows"]))
    for row in doc["rows"]:
        c = cells[row["method"]]
        assert_printed(c["test acc (%)"], row["accuracy_mean"], 100)
        assert_printed(c["gap (pt)"], row["gap_to_fp"], 100)
        assert_printed(c["packed size"], row["packed_bytes"])
        assert_printed(c["train s/ep"], row["train_seconds_per_epoch"])
        assert_printed(c["packed infer s"], row["packed_inference_seconds"])
        assert_printed(c["float infer s"], row["float_inference_seconds"])
        assert c["packed speed-up"] == f"{row['packed_speedup']:.2f}x"
        for column, key in (("sparsity", "sparsity"), ("bits/w", "bits_per_weight")):
            if row[key] is None:
                assert c[column] == ""
            else:
                assert_printed(c[column], row[key])

    csv_lines = (tmp_path / "compare.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,paper,year,ternary,status")
    assert len(csv_lines) == 4
    for record, row in zip(csv.DictReader(csv_lines), doc["rows"]):
        for key, cell in record.items():
            value = row[key]
            if value is None:
                assert cell == "", key
            elif isinstance(value, (int, float)):
                assert float(cell) == value, key
            else:
                assert cell == str(value), key
    md = (tmp_path / "compare.md").read_text()
    assert "| method | paper |" in md and "Command: `ternref compare" in md
    md_rows = [line for line in md.splitlines() if line.startswith("| ")][1:]
    for line, row in zip(md_rows, doc["rows"]):
        md_cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert md_cells == list(cells[row["method"]].values())


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


@pytest.fixture(scope="module")
def two_seeds():
    """``compare`` of fp and TWN over seeds 0 and 1 (1 epoch), with every trained model kept:
    ``(result, {(method, seed): model})``."""
    import ternref.compare as cmp

    models = {}
    real = cmp._run_one

    def keep_model(name, dataset, args, seed, *rest, **kwargs):
        run = real(name, dataset, args, seed, *rest, **kwargs)
        models[name, seed] = run["model"]
        return run

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cmp, "_run_one", keep_model)
        result = compare("digits", "mlp", ["twn"], epochs=1, seeds=2, progress=False)
    return result, models


def _accuracy(model, data):
    """Test accuracy by a direct forward pass in evaluation mode (not ternref.train.evaluate)."""
    model.eval()
    return float(np.mean(np.argmax(model.forward(data.x_test), axis=1) == data.y_test))


def test_seeds_give_distinct_runs_and_their_mean_and_std(two_seeds):
    from ternref.data import load_dataset

    result, models = two_seeds
    data = load_dataset("digits")
    assert sorted(models) == [("fp", 0), ("fp", 1), ("twn", 0), ("twn", 1)]
    for name in ("fp", "twn"):
        first, second = (models[name, seed].parameters() for seed in (0, 1))
        assert all(not np.array_equal(a.data, b.data) for a, b in zip(first, second)), name
    for row in result.records():
        per_seed = [_accuracy(models[row["method"], seed], data) for seed in (0, 1)]
        assert row["accuracies"] == per_seed
        assert row["accuracy_mean"] == pytest.approx((per_seed[0] + per_seed[1]) / 2, abs=1e-15)
        assert row["accuracy_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2, abs=1e-15)
        cell = table_cells(result.to_text(), 2)[row["method"]]["test acc (%)"]
        mean, _, std = cell.partition(" ± ")
        assert_printed(mean, row["accuracy_mean"], 100)
        assert_printed(std, row["accuracy_std"], 100)


def test_row_values_are_recomputed_from_the_trained_models(two_seeds, tmp_path):
    """Sparsity from the codes of the exported models, packed size from saving the export of
    seed 0, bits per weight from its layer sizes and the i2 format, agreement 1.0 from its
    predictions, float bytes from the parameters."""
    from ternref import packed
    from ternref.data import load_dataset

    result, models = two_seeds
    data = load_dataset("digits")
    for row in result.records():
        exported = {seed: packed.export(models[row["method"], seed]) for seed in (0, 1)}
        terms = {
            seed: [t for layer in m.modules() for t in getattr(layer, "terms", None) or ()]
            for seed, m in exported.items()
        }
        path = tmp_path / f"{row['method']}.npz"
        packed.save(path, exported[0])
        assert row["packed_bytes"] == path.stat().st_size
        model = models[row["method"], 0]
        assert row["float_bytes"] == 4 * sum(p.data.size for p in model.parameters())
        loaded = packed.load(path)
        same = np.argmax(loaded.forward(data.x_test), 1) == np.argmax(model.forward(data.x_test), 1)
        assert row["packed_agreement"] == float(np.mean(same)) == 1.0
        if row["method"] == "fp":
            assert terms[0] == [] and row["sparsity"] is None and row["bits_per_weight"] is None
            continue
        ternaries = [packed.unpack(t) for t in terms[0]]
        assert [t.shape for t in ternaries] == [(256, 256)]  # first and last layer stay float
        assert row["bits_per_weight"] == expected_bits_per_weight(ternaries)
        sparsity = [
            sum(int(np.count_nonzero(packed.unpack(t).codes == 0)) for t in terms[seed])
            / sum(t.shape[0] * t.shape[1] for t in terms[seed])
            for seed in (0, 1)
        ]
        assert sparsity[0] != sparsity[1]
        assert row["sparsity"] == pytest.approx(np.mean(sparsity), abs=1e-15)


def test_packed_agreement_measures_the_exported_models_predictions(monkeypatch):
    """An export that swaps the logits of classes 0 and 1 changes exactly the predictions of
    those classes: the agreement is the rest of the test set, and the table notes it."""
    from ternref import packed
    from ternref.data import load_dataset

    real_export, trained = packed.export, []

    def swapped_export(model, *args, **kwargs):
        trained.append(model)
        out = real_export(model, *args, **kwargs)
        last = out.layers[-1]
        last.weight.data[[0, 1]] = last.weight.data[[1, 0]]
        last.bias.data[[0, 1]] = last.bias.data[[1, 0]]
        return out

    monkeypatch.setattr(packed, "export", swapped_export)
    result = compare("digits", "mlp", [], epochs=1, progress=False)
    (row,) = result.records()
    predicted = np.argmax(trained[0].forward(load_dataset("digits").x_test), axis=1)
    expected = float(np.mean(predicted > 1))
    assert 0.5 < expected < 1.0
    assert row["packed_agreement"] == expected
    assert f"agree with the trained model on {100 * expected:.2f}% of the test set" in (
        result.to_text()
    )


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
