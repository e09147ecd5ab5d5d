"""Generation speed of a ternary language model: float, unpacked ternary, packed i2 (issue 11).

Three models of the same architecture, by default that of ``ternref lm train`` (4 layers,
width 256, 8 query heads sharing 4 key/value heads, SwiGLU width 768, byte vocabulary, tied
embeddings, context 128):

* **float**: the full-precision ``TransformerLM`` (BLAS for every projection);
* **ternary**: the same model made BitNet b1.58 by ``quantize_transformer`` (every projection a
  ``BitLinear``: SubLN, int8 absmax activations as a float32 fake quantization, absmean
  ternary weights as a dense float32 ``w_hat``, so BLAS again), in evaluation mode;
* **packed**: ``ternref.lm.pack_lm`` of that ternary model (i2 codes, int8 activations: the
  W1.58A8 setting; SubLN, attention, embedding and head in float32).

Each generates greedily with the KV cache (``TransformerLM.generate``): a prompt of
``--prompt`` tokens (run once through the model, filling the caches) and ``--new`` tokens one
at a time; tokens per second counts the new tokens over the whole call (prompt included).
The three are timed in interleaved rounds (float, ternary, packed, float, ...), so a change of
the shared machine's load hits all three; the medians and their ratios are printed, with the
machine. Before timing, one untimed call of each compiles the kernels, and the packed tokens
are compared with the ternary model's (they are the same function; see
``ternref/lm/packed.py`` for what is exact).

Weights: random (``TransformerLM``'s N(0, 0.02) initialisation, seed ``--seed``), or the model
saved by ``ternref lm train --method bitnet --save FILE`` with ``--model FILE`` (its float
counterpart is then a float model of the same size with random weights: speed does not depend
on the values).

Usage::

    python benchmarks/bench_lm_generate.py                      # default size, 7 rounds
    python benchmarks/bench_lm_generate.py --rounds 11 --new 112
    python benchmarks/bench_lm_generate.py --model bitnet.npz
    TERNREF_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/bench_lm_generate.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def build(args):
    from ternref import methods
    from ternref.lm import load_lm
    from ternref.methods.bitlinear import quantize_transformer
    from ternref.nn import TransformerLM

    def fresh(seed):
        return TransformerLM(args.vocab, dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                             n_kv_heads=args.kv_heads, ffn_dim=args.ffn,
                             max_seq_len=args.context, rng=np.random.default_rng(seed))  # fmt: skip

    if args.model:
        ternary, header = load_lm(args.model)
        c = header["config"]
        args.vocab, args.dim, args.layers = c["vocab_size"], c["dim"], c["n_layers"]
        args.heads, args.kv_heads, args.ffn = c["n_heads"], c["n_kv_heads"], c["ffn_dim"]
        args.context = c["max_seq_len"]
        weights = f"{args.model} ({(header['method'] or {}).get('name', 'float')})"
    else:
        ternary = fresh(args.seed)
        quantize_transformer(ternary, methods.get("bitnet"))
        weights = f"random, N(0, 0.02) initialisation, seed {args.seed}"
    floatm = fresh(args.seed)
    return floatm.eval(), ternary.eval(), weights


def timed(model, prompt, n_new):
    t0 = time.perf_counter()
    out = model.generate(prompt, n_new)
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="a BitNet model saved by `ternref lm train`")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=None)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    p.add_argument("--new", type=int, default=112, help="new tokens per generation")
    p.add_argument("--batch", type=int, default=1, help="sequences generated together")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--format", default="i2", choices=["i2", "tq1", "bitplanes"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from ternref._machine import summary
    from ternref.lm import pack_lm
    from ternref.lm.packed import packed_nbytes

    floatm, ternary, weights = build(args)
    if args.prompt + args.new > args.context:
        p.error(f"--prompt + --new must fit in the context ({args.context})")
    packed = pack_lm(ternary, format=args.format)
    rng = np.random.default_rng(args.seed + 1)
    prompt = rng.integers(0, args.vocab, (args.batch, args.prompt))
    models = {"float": floatm, "ternary (BitLinear)": ternary,
              f"packed {args.format} int8": packed}  # fmt: skip

    print(summary())
    print(f"model: {args.layers} layers, width {floatm.dim}, {floatm.n_heads} heads / "
          f"{floatm.n_kv_heads} kv heads, SwiGLU {floatm.ffn_dim}, vocabulary {args.vocab}, "
          f"context {floatm.max_seq_len}; weights: {weights}")  # fmt: skip
    sizes = packed_nbytes(packed)
    dense = sum(p.data.nbytes for p in floatm.parameters())
    print(f"sizes: float model {dense / 1e6:.2f} MB; packed model {sizes['packed'] / 1e6:.2f} MB "
          f"of packed projections + {sizes['float'] / 1e6:.2f} MB float (embedding, norms, "
          "SubLN gains)")  # fmt: skip
    print(f"greedy generation with the KV cache: batch {args.batch}, prompt {args.prompt} "
          f"tokens + {args.new} new, {args.rounds} interleaved rounds (after one untimed call "
          "each)")  # fmt: skip

    outputs = {name: timed(m, prompt, args.new)[1] for name, m in models.items()}  # warm-up
    want, got = outputs["ternary (BitLinear)"], outputs[f"packed {args.format} int8"]
    same = np.array_equal(want, got)
    where = "" if same else f" (first difference at new token {int(np.argmax(want != got))})"
    print(f"packed tokens == ternary tokens: {'yes' if same else 'NO'}{where}")

    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, m in models.items():
            times[name].append(timed(m, prompt, args.new)[0])
    new_tokens = args.batch * args.new
    rate = {name: new_tokens / statistics.median(t) for name, t in times.items()}
    print(f"\n{'model':<22} {'tokens/s':>9} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, t in times.items():
        print(f"{name:<22} {rate[name]:>9.1f} {statistics.median(t):>9.3f} {min(t):>7.3f} "
              f"{max(t):>7.3f}")  # fmt: skip
    pk = f"packed {args.format} int8"
    print(f"\npacked / float speed: {rate[pk] / rate['float']:.2f}x;  packed / ternary: "
          f"{rate[pk] / rate['ternary (BitLinear)']:.2f}x;  ternary / float: "
          f"{rate['ternary (BitLinear)'] / rate['float']:.2f}x")  # fmt: skip
    if rate[pk] < rate["float"]:
        print(
            "packed generation is SLOWER than float here: at this width one token's product "
            "takes microseconds and the per-call costs dominate (each BitLinear has its own "
            "SubLN: 29 RMSNorms per token against the float model's 9); try --dim 1024"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
