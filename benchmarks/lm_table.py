"""Bits per byte on the held-out text: float, BitNet b1.58, TWN, TTQ, LAT on one transformer.

Runs ``ternref lm train`` once per method, one after the other, with the same model, batches,
steps and seed, and writes into ``--out``:

* ``<name>.log`` (the run's output), ``<name>.jsonl`` (one JSON line per logged step and per
  evaluation: partial results survive an interrupted run), ``<name>.json`` (the final result),
  ``<name>.ckpt`` while a run is under way (removed when it finishes);
* ``table.md`` and ``table.json``: the table, with the command of every run.

Re-running the same command skips the finished runs and resumes an unfinished one from its
checkpoint. The machine is shared: start it as ``nice -n 15 python benchmarks/lm_table.py ...``;
``OPENBLAS_NUM_THREADS=1`` made a training step 2.4x faster on the loaded 2-core machine of
the committed results (two BLAS threads fighting other processes; see README there).

Usage::

    OPENBLAS_NUM_THREADS=1 nice -n 15 python benchmarks/lm_table.py \\
        --out benchmarks/results/lm-pride-250 --steps 250
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

RUNS = {  # name -> extra arguments of `ternref lm train`
    "float": [],
    "bitnet": ["--method", "bitnet"],
    "twn": ["--method", "twn"],
    "ttq": ["--method", "ttq"],
    "lat": ["--method", "lat"],
}
LABELS = {
    "float": "full precision (float32)",
    "bitnet": "BitNet b1.58 (BitLinear: SubLN, int8 activations, absmean ternary)",
    "twn": "TWN (ternary weights, float activations)",
    "ttq": "TTQ (ternary weights, float activations)",
    "lat": "LAT (ternary weights, float activations)",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset")
    parser.add_argument("--extra", default="", help="more `ternref lm train` arguments, quoted")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    for name in names:
        if name not in RUNS:
            parser.error(f"unknown run {name!r}; known: {', '.join(RUNS)}")
    results = {}
    for name in names:
        result_path = out / f"{name}.json"
        command = [sys.executable, "-m", "ternref", "lm", "train", *RUNS[name],
                   "--steps", str(args.steps), *shlex.split(args.extra),
                   "--log", str(out / f"{name}.jsonl"), "--checkpoint", str(out / f"{name}.ckpt"),
                   "--save", str(out / f"{name}.npz"), "--json"]  # fmt: skip
        if result_path.exists():
            results[name] = json.loads(result_path.read_text())
            print(f"{name}: done before ({results[name]['bits_per_byte']:.4f} bits/byte)")
            continue
        if (out / f"{name}.ckpt").exists():
            command.append("--resume")
        shown = "ternref " + " ".join(shlex.quote(a) for a in command[3:])
        print(f"{name}: {shown}", flush=True)
        with open(out / f"{name}.log", "a") as log:
            log.write(f"$ {shown}\n")
            log.flush()
            proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True)
            log.write(proc.stdout)
        if proc.returncode != 0:
            print(f"{name}: failed (exit {proc.returncode}); see {out / f'{name}.log'}")
            return proc.returncode
        # progress lines come first on stdout; the JSON result is the object that closes it
        result = json.loads(
            proc.stdout[proc.stdout.index("{\n") if not proc.stdout.startswith("{") else 0 :]
        )
        result["command"] = shown
        result_path.write_text(json.dumps(result, indent=2) + "\n")
        os.remove(out / f"{name}.ckpt")
        results[name] = result
        print(f"{name}: {result['bits_per_byte']:.4f} bits/byte", flush=True)
    write_table(out, results)
    return 0


def write_table(out: Path, results: dict) -> None:
    base = results.get("float", {}).get("bits_per_byte")
    rows = ["| run | held-out bits/byte | vs float | ternary sparsity | tokens/s | command |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    table = []
    for name, r in results.items():
        ratio = f"{100 * (r['bits_per_byte'] / base - 1):+.1f} %" if base else ""
        sparsity = f"{r['sparsity']:.3f}" if "sparsity" in r else ""
        rows.append(
            f"| {LABELS.get(name, name)} | {r['bits_per_byte']:.4f} | {ratio} | "
            f"{sparsity} | {r['tokens_per_second']:.0f} | `{r.get('command', '')}` |"
        )
        table.append({"run": name, "bits_per_byte": r["bits_per_byte"],
                      "relative_to_float": (r["bits_per_byte"] / base - 1) if base else None,
                      "sparsity": r.get("sparsity"), "tokens_per_second": r["tokens_per_second"],
                      "command": r.get("command")})  # fmt: skip
    (out / "table.md").write_text("\n".join(rows) + "\n")
    (out / "table.json").write_text(json.dumps(table, indent=2) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    raise SystemExit(main())
