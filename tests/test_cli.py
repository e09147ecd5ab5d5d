"""The ``ternref`` command, run as a user runs it: in a subprocess."""

import json
import subprocess
import sys

import pytest

import ternref


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


def test_train_is_reproducible_for_a_seed():
    a = json.loads(run("train", "--epochs", "2", "--quiet", "--json").stdout)
    b = json.loads(run("train", "--epochs", "2", "--quiet", "--json").stdout)
    assert a["test_accuracy"] == b["test_accuracy"]


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


def test_bench_runs_a_small_size():
    out = run("bench", "--sizes", "64", "--batches", "1", "--reps", "7")
    assert out.returncode == 0, out.stderr
    assert "i2 float32" in out.stdout and "numpy W @ x" in out.stdout
