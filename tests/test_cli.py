"""The ``ternref`` command, run as a user runs it: in a subprocess."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import ternref
from ternref.packed.io import HEADER_KEY


def run(*args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "ternref", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_version():
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"ternref {ternref.__version__}"


def test_no_command_prints_help_and_fails():
    out = run()
    assert out.returncode == 2
    assert "train" in out.stdout


def test_train_mlp_on_digits_reaches_a_useful_accuracy():
    out = run("train", "--epochs", "5", "--quiet", "--json", "--seed", "1")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["model"] == "mlp" and result["dataset"] == "digits"
    assert result["epochs"] == 5 and result["seed"] == 1
    # 5 epochs of the default recipe give about 96-97 %; a broken stack gives ~10 %.
    assert result["test_accuracy"] > 0.9


def _train_and_save(path, seed):
    """``ternref train`` (TWN, 1 epoch) with a seed; its JSON result and the saved arrays."""
    out = run(
        "train", "--method", "twn", "--epochs", "1", "--quiet", "--json", "--seed", str(seed),
        "--save", str(path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for timing in ("seconds_per_epoch", "seconds_total", "saved"):
        del result[timing]
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != HEADER_KEY}
    return result, arrays


def _compare_run_of_seed(seed, tmp_path):
    """The arrays ``ternref compare`` trains for TWN on digits with ``seed`` (1 epoch), saved
    as ``ternref train --save`` saves them."""
    from ternref import packed
    from ternref.compare import _run_one
    from ternref.data import load_dataset
    from ternref.recipes import recipe

    class NoBar:
        def update(self, n):
            pass

        def set_postfix(self, **kwargs):
            pass

    r = recipe("mlp", "digits")
    args = {
        "model": "mlp", "epochs": 1, "batch_size": r.batch_size, "optimizer": r.optimizer,
        "lr": r.lr, "schedule": r.schedule, "keep_full_precision": "first_last",
    }  # fmt: skip
    run = _run_one("twn", load_dataset("digits"), args, seed, NoBar())
    path = tmp_path / "compare.npz"
    packed.save(path, packed.export(run["model"]))
    with np.load(path) as f:
        return run["accuracy"], {k: f[k] for k in f.files if k != HEADER_KEY}


def test_train_seed_decides_the_run(tmp_path):
    """Equal seeds give the same run (every number and every saved array); another seed gives
    another initialisation and shuffle, so every trained array differs; and the run of a seed is
    the one ``ternref compare`` makes for that seed (the seed decides initialisation *and*
    shuffling in both, so a seed applied to only one of them fails here)."""
    first, weights = _train_and_save(tmp_path / "a.npz", seed=3)
    again, weights_again = _train_and_save(tmp_path / "b.npz", seed=3)
    other, weights_other = _train_and_save(tmp_path / "c.npz", seed=4)
    assert first == again
    assert weights.keys() == weights_again.keys() == weights_other.keys()
    for key in weights:
        assert np.array_equal(weights[key], weights_again[key]), key
    assert first["seed"] == 3 and other["seed"] == 4
    # weights and biases of the full-precision layers, ternary codes and scale: all moved
    same = [k for k in weights if np.array_equal(weights[k], weights_other[k])]
    assert same == [], f"seed 4 reproduced seed 3's {same}"
    assert other["train_accuracy"] != first["train_accuracy"]
    accuracy, weights_compare = _compare_run_of_seed(3, tmp_path)
    assert accuracy == first["test_accuracy"]
    assert weights_compare.keys() == weights.keys()
    for key in weights:
        assert np.array_equal(weights[key], weights_compare[key]), key


def test_unknown_model_is_one_clear_error():
    out = run("train", "--model", "resnet")
    assert out.returncode == 2
    assert "invalid choice: 'resnet'" in out.stderr
    assert "Traceback" not in out.stderr


def test_model_that_does_not_fit_the_dataset_is_one_line():
    out = run("train", "--model", "lenet5", "--dataset", "digits", "--quiet")
    assert out.returncode == 2
    assert out.stderr.startswith("ternref: error:")
    assert "lenet5" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_number_is_one_line():
    out = run("train", "--epochs", "0", "--quiet")
    assert out.returncode == 2
    assert "ternref: error:" in out.stderr and "--epochs" in out.stderr


def test_missing_data_lists_where_it_looked(tmp_path):
    env = {"PATH": "", "TERNREF_DATA": str(tmp_path), "HOME": str(tmp_path)}
    out = run("train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"), env=env)
    assert out.returncode == 2
    assert out.stderr.startswith("ternref: error:")
    assert str(tmp_path / "nowhere") in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_train_cnn_on_digits():
    out = run("train", "--model", "cnn", "--epochs", "3", "--quiet", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["test_accuracy"] > 0.85


def test_methods_lists_every_registered_method():
    from ternref import methods

    out = run("methods")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "paper", "year"]
    listed = {line.split()[0] for line in lines[2:]}
    assert listed == set(methods.names())
    rows = json.loads(run("methods", "--json").stdout)
    assert {r["name"] for r in rows} == set(methods.names())
    assert all("hyperparameters" in r for r in rows)


def test_train_with_a_method_reports_sparsity():
    out = run(
        "train", "--method", "twn", "--hp", "factor=0.7", "--epochs", "3", "--quiet", "--json"
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["method"] == "twn" and result["hyperparameters"]["factor"] == 0.7
    assert 0 < result["sparsity"] < 1
    assert result["test_accuracy"] > 0.85


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--method", "twn", "--hp", "colour=red"], "no hyper-parameter"),
        (["--method", "twn", "--hp", "factor=-1"], "factor must be >= 0"),
        (["--hp", "factor=1"], "--hp needs --method"),
        (["--method", "twn", "--hp", "factor"], "NAME=VALUE"),
    ],
)
def test_bad_method_arguments_are_one_line(args, fragment):
    out = run("train", "--quiet", "--epochs", "1", *args)
    assert out.returncode == 2
    assert out.stderr.startswith("ternref: error:") and fragment in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_train_save_then_eval_gives_the_same_accuracy(tmp_path):
    path = tmp_path / "twn.npz"
    out = run("train", "--method", "twn", "--epochs", "2", "--quiet", "--json", "--save", str(path))
    assert out.returncode == 0, out.stderr
    trained = json.loads(out.stdout)
    assert trained["saved"]["bytes"] == path.stat().st_size
    out = run("eval", str(path), "--json")
    assert out.returncode == 0, out.stderr
    evaluated = json.loads(out.stdout)
    # The packed model predicts exactly like the trained one (float activations).
    assert evaluated["test_accuracy"] == trained["test_accuracy"]


def test_eval_refuses_a_corrupt_file_in_one_line(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 this is not a model")
    out = run("eval", str(path))
    assert out.returncode == 2
    assert out.stderr.startswith("ternref: error:") and "Traceback" not in out.stderr
    out = run("eval", str(tmp_path / "missing.npz"))
    assert out.returncode == 2 and "no such file" in out.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--min-seconds", "-1"], "--min-seconds must be >= 0"),
        (["--min-seconds", "nan"], "--min-seconds must be >= 0"),
        (["--reps", "0"], "must be positive"),
    ],
)
def test_bad_bench_arguments_are_refused(args, fragment):
    out = run("bench", "--sizes", "64", *args)
    assert out.returncode == 2 and fragment in out.stderr, out.stderr


BENCH_ROW = re.compile(
    r"^\s*(?P<size>\d+)\s+(?P<batch>\d+)\s+(?P<kernel>\S+(?: \S+)*?)\s+(?P<ms>[\d.]+)\s+"
    r"(?P<ratio>[\d.]+)x\s+(?P<gw>[\d.]+)\s+(?P<mb>[\d.]+)\s+(?P<bits>[\d.]+)$"
)


def _packed_bytes(fmt, size):
    """Bytes the bench's weight (size x size, one float32 scale per row) takes in ``fmt``, from
    the format's definition: rows padded to its block, its bits per code, 4 bytes per scale."""
    from ternref.packed import FORMATS

    module = FORMATS[fmt]
    padded = -(-size // module.BLOCK) * module.BLOCK
    return size * padded * module.BITS_PER_CODE / 8 + 4 * size


def _ratio_interval(num, den, half_ulp=0.0005):
    """Where num / den lies when both were printed with 3 decimals."""
    return (num - half_ulp) / (den + half_ulp), (num + half_ulp) / max(den - half_ulp, 1e-12)


def test_bench_prints_one_consistent_row_per_kernel():
    """``ternref bench`` on two sizes (one awkward for every block) and two batches: one row per
    (size, batch, kernel) in order, bytes and bits per weight equal to what the format and
    ``pack`` give for the weight, and the ratio and G weights/s columns follow from the times."""
    from ternref import Ternary
    from ternref.packed import pack
    from ternref.packed.bench import KERNEL_CASES

    sizes, batches = (300, 64), (1, 3)
    out = run(
        "bench", "--sizes", *map(str, sizes), "--batches", *map(str, batches), "--reps", "7",
        "--threads", "2",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "SIMD:" in lines[0] and "caches:" in lines[0]
    assert "ternref.packed 2" in lines[1] and "numba" in lines[1]
    rows = [m.groupdict() for m in map(BENCH_ROW.match, lines) if m]
    expected_order = [
        (size, n, numpy_name)
        for size in sizes
        for n in batches
        for numpy_name in ["numpy W @ x" if n == 1 else "numpy X @ W.T"]
        + [f"{fmt} {act}" for fmt, act in KERNEL_CASES]
    ]
    assert [(int(r["size"]), int(r["batch"]), r["kernel"]) for r in rows] == expected_order
    for i, r in enumerate(rows):
        size, n, kernel, ms = int(r["size"]), int(r["batch"]), r["kernel"], float(r["ms"])
        numpy_row = rows[i - i % (1 + len(KERNEL_CASES))]
        if kernel.startswith("numpy"):
            n_bytes, bits = 4 * size * size, 32.0
            assert r["ratio"] == "1.00"
        else:
            fmt = kernel.split()[0]
            n_bytes = _packed_bytes(fmt, size)
            codes = np.zeros((size, size), np.int8)
            p = pack(Ternary(codes, np.ones(size, np.float32), granularity="channel"), fmt)
            assert p.nbytes == n_bytes and p.bits_per_weight_with_scales == 8 * n_bytes / size**2
            bits = 8 * n_bytes / size**2
            assert ms > 0, r  # a packed product takes microseconds, not zero
            low, high = _ratio_interval(float(numpy_row["ms"]), ms)
            assert low - 0.005 <= float(r["ratio"]) <= high + 0.005, (r, numpy_row)
        assert r["bits"] == f"{bits:.3f}" and r["mb"] == f"{n_bytes / 1e6:.2f}", r
        if ms > 0:  # weights per second per core, over the 2 threads (1 for the serial GEMV)
            from ternref.packed import FORMATS
            from ternref.packed.kernels import GEMM_MIN_BATCH

            serial = (
                kernel.endswith("int8") and n < GEMM_MIN_BATCH
                and getattr(FORMATS[kernel.split()[0]], "STREAM_GEMM_I8", False)
            )  # fmt: skip
            per = 1 if serial else 2
            low, high = _ratio_interval(n * size * size / 1e6 / per, ms)  # M weights / ms = G/s
            assert low - 0.05 <= float(r["gw"]) <= high + 0.05, r
