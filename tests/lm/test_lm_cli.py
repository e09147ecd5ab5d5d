"""``ternref lm train / eval / generate``, run as a user runs them: in a subprocess, tiny sizes."""

import json
import subprocess
import sys

import numpy as np
import pytest

TINY = [
    "--layers",
    "1",
    "--dim",
    "16",
    "--heads",
    "2",
    "--kv-heads",
    "1",
    "--context",
    "24",
    "--batch-size",
    "2",
    "--steps",
    "4",
    "--eval-every",
    "2",
    "--eval-bytes",
    "64",
]


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "ternref", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("method", [None, pytest.param("bitnet", marks=pytest.mark.slow)])
def test_train_save_eval_generate(tmp_path, method):
    model = tmp_path / "m.npz"
    log = tmp_path / "log.jsonl"
    extra = ["--method", method] if method else []
    out = run("lm", "train", *TINY, *extra, "--save", str(model), "--log", str(log), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout[out.stdout.index("{\n") :])
    assert result["settings"]["method"] == method
    assert result["settings"]["two_stage"] is (method is not None)  # the defaults per kind
    assert 0 < result["bits_per_byte"] < 9 and result["heldout_bytes"] == 68477
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]
    assert "held-out" in out.stdout  # the plain progress lines of a log (no terminal here)

    ev = run("lm", "eval", str(model), "--json")
    assert ev.returncode == 0, ev.stderr[-2000:]
    scored = json.loads(ev.stdout)
    assert scored["bits_per_byte"] == pytest.approx(result["bits_per_byte"], rel=1e-12)
    assert scored["method"] == method

    gen = run("lm", "generate", str(model), "--prompt", "Elizabeth", "--bytes", "8", "--json")
    assert gen.returncode == 0, gen.stderr[-2000:]
    text = json.loads(gen.stdout)["text"]
    assert text.startswith("Elizabeth")
    again = run("lm", "generate", str(model), "--prompt", "Elizabeth", "--bytes", "8", "--json")
    assert json.loads(again.stdout)["text"] == text  # greedy: deterministic


@pytest.mark.slow
def test_same_seed_same_result_and_quiet(tmp_path):
    a = run("lm", "train", *TINY, "--method", "twn", "--seed", "3", "--quiet", "--json")
    b = run("lm", "train", *TINY, "--method", "twn", "--seed", "3", "--quiet", "--json")
    assert a.returncode == 0, a.stderr[-2000:]
    assert a.stdout.startswith("{")  # --quiet: nothing but the result
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert ra["bits_per_byte"] == rb["bits_per_byte"]
    assert ra["train_tokens"] == 4 * 2 * 24


@pytest.mark.slow
def test_resume_from_checkpoint(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    first = run("lm", "train", *TINY, "--checkpoint", str(ckpt), "--quiet", "--json")
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run("lm", "train", *TINY, "--checkpoint", str(ckpt), "--resume", "--quiet",
                  "--json")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # the checkpoint is at the last step: resuming only evaluates, with the same result
    assert json.loads(resumed.stdout)["bits_per_byte"] == json.loads(first.stdout)["bits_per_byte"]
    other = run("lm", "train", *TINY, "--seed", "1", "--checkpoint", str(ckpt), "--resume")
    assert other.returncode == 2 and "other settings" in other.stderr


@pytest.mark.parametrize(
    "args, match",
    [
        (["lm", "train", "--steps", "0"], "--steps must be >= 1"),
        (["lm", "train", "--method", "nope", *TINY], "unknown method"),
        (["lm", "train", "--hp", "factor=0.5", *TINY], "--hp needs --method"),
        (["lm", "train", "--method", "kd", *TINY], "teacher"),
        (["lm", "train", "--resume", *TINY], "--checkpoint"),
        (["lm", "eval", "/nonexistent/model.npz"], "no such file"),
        (["lm", "generate", "/nonexistent/model.npz"], "no such file"),
    ],
)
def test_user_errors_are_one_line(args, match):
    out = run(*args)
    assert out.returncode == 2
    assert match in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_generate_refuses_too_long_and_eval_refuses_a_non_model(tmp_path):
    model = tmp_path / "m.npz"
    assert run("lm", "train", *TINY, "--save", str(model), "--quiet").returncode == 0
    out = run("lm", "generate", str(model), "--bytes", "100")
    assert out.returncode == 2 and "exceeds the model's context" in out.stderr
    junk = tmp_path / "junk.npz"
    np.savez(junk, x=np.zeros(2))
    out = run("lm", "eval", str(junk))
    assert out.returncode == 2 and "refusing to load" in out.stderr


def test_lm_without_verb_prints_help():
    out = run("lm")
    assert out.returncode == 2 and "train" in out.stdout


@pytest.mark.slow
def test_shared_subln_train_then_export_gguf(tmp_path):
    """``--subln shared`` trains the llama.cpp bitnet placement; ``lm export-gguf`` writes it
    and refuses the default placement with the reason."""
    pytest.importorskip("gguf")
    from ternref.interop import load_gguf
    from ternref.lm import load_lm

    small = ["--layers", "1", "--dim", "256", "--heads", "4", "--kv-heads", "2", "--ffn", "512",
             "--context", "16", "--batch-size", "2", "--steps", "2", "--eval-every", "0",
             "--quiet"]  # fmt: skip
    model = tmp_path / "shared.npz"
    out = run("lm", "train", *small, "--method", "bitnet", "--subln", "shared", "--save",
              str(model))  # fmt: skip
    assert out.returncode == 0, out.stderr
    gguf_path = tmp_path / "shared.gguf"
    out = run("lm", "export-gguf", str(model), str(gguf_path))
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout
    ids = np.arange(12)[None]
    saved, _ = load_lm(model)
    back = load_gguf(gguf_path)
    assert np.abs(back(ids) - saved(ids)).max() < 0.1 * np.abs(saved(ids)).max()

    default = tmp_path / "default.npz"
    out = run("lm", "train", *small, "--method", "bitnet", "--save", str(default))
    assert out.returncode == 0, out.stderr
    out = run("lm", "export-gguf", str(default), str(tmp_path / "no.gguf"))
    assert out.returncode != 0
    assert "per-projection SubLN" in out.stderr and "--subln shared" in out.stderr
    assert not (tmp_path / "no.gguf").exists()
