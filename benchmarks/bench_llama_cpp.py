"""Generation speed of one ternary TransformerLM in ternref (float and packed) and in llama.cpp.

Builds a byte-level :class:`ternref.nn.TransformerLM` (default: 6 blocks, width 512, 8 query / 4
key-value heads, SwiGLU 1536, vocabulary 256, context 256; random weights), ternarizes its seven
projections per block with ``ternref.projections.bitnet`` (absmean per tensor, BitNet b1.58's
reference rule), writes it as a TQ2_0 ``llama`` GGUF (:func:`ternref.interop.save_llama`) and
generates ``--new`` tokens greedily after a prompt with

* ternref, float: the projections as float ``w_hat`` (NumPy BLAS), KV cache;
* ternref, packed: the projections as :class:`ternref.interop.llama.PackedProjection` (i2,
  Numba kernels), float32 activations, and again with int8 activations;
* llama.cpp through ``llama-cpp-python``: TQ2_0 weights, Q8_K activations, F32 KV cache.

All with ``--threads`` threads (BLAS, Numba and llama.cpp), one process, timed alternately
(round-robin, ``--repeats`` rounds, median reported) so a change of the machine's load hits all
alike. Before timing it checks that llama.cpp and ternref produce the same greedy tokens. Prints
tokens per second (prompt excluded: generation only, one token per step) and ratios.

With ``--bitnet [PATH]`` it times a BitNet b1.58 model *trained by ternref* instead: a
llama.cpp ``bitnet`` GGUF written by :func:`ternref.interop.save_bitnet` (default: the test
model ``tests/interop/data/bitnet-shared-256.gguf.xz``, trained with ``ternref lm train
--method bitnet --subln shared``), read back by ternref and run as

* ternref, BitLinear: the model as trained (dense float product with the ternary ``w_hat``,
  int8 activations per token), KV cache;
* ternref, packed: :func:`ternref.interop.bitnet.pack_bitnet` (i2 Numba kernels, int8
  activations per token);
* llama.cpp: TQ2_0 weights, Q8_K activations, F32 KV cache.

Usage::

    pip install llama-cpp-python          # compiles llama.cpp (see README, Interoperability)
    python benchmarks/bench_llama_cpp.py                      # 2 threads
    python benchmarks/bench_llama_cpp.py --threads 1 --dim 1024 --layers 8 --ffn 2816
    python benchmarks/bench_llama_cpp.py --bitnet             # the ternref-trained BitNet
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=1536)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--new", type=int, default=64, help="tokens generated per run (64)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bitnet", nargs="?", const=str(BITNET_DEFAULT), default=None,
                   metavar="PATH", help="time a ternref-trained BitNet b1.58 bitnet GGUF "
                   "(.gguf or .gguf.xz; default: the test model)")  # fmt: skip
    return p.parse_args(argv)


BITNET_DEFAULT = (Path(__file__).resolve().parent.parent / "tests" / "interop" / "data"
                  / "bitnet-shared-256.gguf.xz")  # fmt: skip


def main(argv=None) -> int:
    args = parse(argv)
    # thread counts must be fixed before NumPy's BLAS starts
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numba
    import numpy as np

    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError):
        print("needs llama-cpp-python: pip install llama-cpp-python", file=sys.stderr)
        return 2
    from ternref._machine import summary
    from ternref.interop import llama as ll
    from ternref.interop import load_gguf
    from ternref.nn import TransformerLM

    numba.set_num_threads(args.threads)

    def build():
        rng = np.random.default_rng(args.seed)
        return TransformerLM(256, dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                             n_kv_heads=args.kv_heads, ffn_dim=args.ffn,
                             max_seq_len=args.context, init_std=0.05, rng=rng).eval()  # fmt: skip

    if args.bitnet:
        from ternref.interop import bitnet as bn

        path = Path(args.bitnet)
        if path.suffix == ".xz":
            import lzma
            import shutil

            plain = Path(tempfile.mkdtemp()) / path.stem
            with lzma.open(path) as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
            path = plain
        contenders = {
            "ternref BitLinear": load_gguf(path),
            "ternref packed (int8 act)": bn.pack_bitnet(load_gguf(path)),
        }
        m = contenders["ternref BitLinear"]
        args.context, args.dim, args.layers, args.ffn = m.max_seq_len, m.dim, m.n_layers, m.ffn_dim
        args.heads, args.kv_heads = m.n_heads, m.n_kv_heads
        what = "ternref-trained BitNet b1.58 (bitnet GGUF, shared SubLN)"
    else:
        model = build()
        path = Path(tempfile.mkdtemp()) / "bench-tq2_0.gguf"
        ll.save_llama(model, path, ll.ternarize(model, "bitnet"), projection="bitnet")
        tern = ll.ternaries(load_gguf(path))
        contenders = {
            "ternref float": ll.set_projection_weights(build(), tern),
            "ternref packed (f32 act)": ll.pack_projections(build(), tern),
            "ternref packed (int8 act)": ll.pack_projections(build(), tern, activations="int8"),
        }
        what = "random ternarized llama"
    cpp = llama_cpp.Llama(model_path=str(path), n_ctx=args.context, n_batch=args.context,
                          n_threads=args.threads, n_threads_batch=args.threads,
                          logits_all=True, type_k=0, type_v=0, verbose=False)  # fmt: skip
    prompt = list(b"It is a truth universally acknowledged, that a single man")
    n_new = min(args.new, args.context - len(prompt))

    def run_ternref(m):
        ids = np.array([prompt])
        caches = m.new_caches(1, len(prompt) + n_new)
        logits = m.forward(ids, caches)[:, -1]
        out = []
        t0 = time.perf_counter()
        for _ in range(n_new):
            nxt = int(np.argmax(logits[0]))
            out.append(nxt)
            logits = m.forward(np.array([[nxt]]), caches)[:, -1]
        return out, time.perf_counter() - t0

    def run_cpp():
        cpp.reset()
        cpp.eval(prompt)
        out = []
        t0 = time.perf_counter()
        for _ in range(n_new):
            nxt = int(np.argmax(cpp.scores[cpp.n_tokens - 1]))
            out.append(nxt)
            cpp.eval([nxt])
        return out, time.perf_counter() - t0

    runners = {name: (lambda m=m: run_ternref(m)) for name, m in contenders.items()}
    runners["llama.cpp TQ2_0"] = run_cpp
    tokens = {name: run()[0] for name, run in runners.items()}  # warm-up (JIT) and check
    first = next(iter(contenders))
    ref = tokens[first]
    for name, toks in tokens.items():
        same = next((i for i, (a, b) in enumerate(zip(ref, toks)) if a != b), len(ref))
        print(f"{name:<26} greedy tokens equal to {first} for {same} of {len(ref)}")
    times = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            times[name].append(run()[1])
    print(f"\n{summary()}")
    print(f"{args.threads} thread(s); {what}: {args.layers} blocks, "
          f"width {args.dim}, heads {args.heads}/{args.kv_heads}, SwiGLU {args.ffn}, vocab 256; "
          f"{n_new} tokens after a {len(prompt)}-token prompt, median of "
          f"{args.repeats}")  # fmt: skip
    base = np.median(times["llama.cpp TQ2_0"])
    for name, ts in times.items():
        med = float(np.median(ts))
        print(f"{name:<26} {n_new / med:8.1f} tokens/s   {med / base:6.2f}x llama.cpp's time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
