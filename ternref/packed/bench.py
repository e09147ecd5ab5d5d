"""Benchmarks of packed inference against float, measured the way a program meets them.

Two benchmarks, both printing ratios measured in one process, and the machine
(:func:`ternref._machine.summary`: CPU, SIMD flags, caches, threads):

``kernels`` (``ternref bench``, ``benchmarks/bench_kernels.py``)
    ``ternref.packed.linear`` against NumPy's float32 BLAS product of the same shape: GEMV
    (``W @ x``) and GEMM (``X @ W.T``), for ``i2`` and ``tq1`` with float32 and int8
    activations and ``bitplanes`` with float32. It also prints G weights/s per core beside
    bitnet.cpp's published 72 (its W2A8 GEMV kernel, one thread, [1, 2048] x [2048, 2048]).
``models`` (``ternref bench --models``, ``benchmarks/bench_inference.py``)
    A float model against its ``packed.export`` (TWN weights, first and last layers in full
    precision, random initialisation): the digits MLP and LeNet-5 at Fashion-MNIST shapes,
    batch 1 and a test-set batch (359 / 1000), ``i2`` and ``tq1``, float32 and int8
    activations. A third column runs ``packed.export`` of the *float* model (every layer in
    full precision: the same inference plan, BatchNorm folding and fused ReLU, no ternary
    kernel), which says how much of the speed-up is the inference plan and how much is the
    ternary kernels.

How it measures: every callable of one configuration is called once before timing (the JIT
compiles or loads its cache then: a one-time cost a program pays once), then the callables run
*interleaved*, one after the other, with no pause between calls, exactly as a program that
alternates NumPy and packed products would run them: at least ``reps`` rounds, and more until
the timed calls of the configuration add up to :data:`MIN_SECONDS` (so a 15 us model gets
thousands of rounds and a stable median); each reported time is the median over the rounds.
Nothing here sleeps, and no test asserts a time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

KERNEL_CASES = (("i2", "float32"), ("i2", "int8"), ("tq1", "float32"), ("tq1", "int8"),
                ("bitplanes", "float32"))  # fmt: skip

BITNET_CPP_GWEIGHTS_PER_CORE = 72.0
"""bitnet.cpp's W2A8 GEMV, [1, 2048] x [2048, 2048] in 0.058 ms on one thread (published)."""


MIN_SECONDS = 0.5
"""Each configuration keeps running rounds until its timed calls add up to this many seconds
(at least ``reps`` rounds, at most :data:`MAX_ROUNDS`): a median of 9 calls of a 15 us model
moved by 1.5x between runs on the project's 2-core VM; of a few thousand it moves by far less."""

MAX_ROUNDS = 5000


def interleaved_medians(fns: dict, reps: int, min_seconds: float = MIN_SECONDS) -> dict:
    """Median wall time (ms) of each callable, calling them in turn after one untimed call each
    (compilation): at least ``reps`` rounds, and more until the timed calls add up to
    ``min_seconds`` (at most :data:`MAX_ROUNDS` rounds). No pause anywhere: every call starts
    right after the previous callable's call returns."""
    if reps < 1:
        raise ValueError(f"reps must be a positive integer, got {reps!r}")
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    spent = 0.0
    rounds = 0
    while rounds < reps or (spent < min_seconds and rounds < MAX_ROUNDS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - t0
            times[name].append(elapsed)
            spent += elapsed
        rounds += 1
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


# ---------------------------------------------------------------------------------- kernels
def run(
    sizes=(1024, 4096, 8192), batches=(1, 64), reps=9, seed=0, out=print,
    min_seconds=MIN_SECONDS,
) -> list[dict]:  # fmt: skip
    """The kernel benchmark; returns one dict per (size, batch, case) and prints a table."""
    from ternref._machine import summary
    from ternref.packed import _threads, i2, linear, pack
    from ternref.packed.kernels import GEMM_MIN_BATCH, SERIAL_VNNI_GEMM_BELOW
    from ternref.ternary import Ternary

    out(summary())
    threads = _threads.get_num_threads()
    out(
        f"median of at least {reps} interleaved rounds, more until {min_seconds:g} s of calls per "
        "configuration (NumPy and every kernel called in turn, no pause); "
        f"ratio = NumPy time / this time; G w/s/core = weights per second / {threads} threads "
        f"(/ 1 where the byte-dot int8 kernels run serial: kernels.SERIAL_VNNI_GEMV, "
        f"SERIAL_VNNI_GEMM_BELOW); "
        f"bitnet.cpp's W2A8 GEMV: {BITNET_CPP_GWEIGHTS_PER_CORE:.0f} G w/s/core"
    )
    header = (
        f"{'M=K':>6} {'N':>4} {'kernel':<18} {'ms':>9} {'ratio':>7} {'G w/s/core':>11} "
        f"{'weight MB':>10} {'bits/w':>7}"
    )
    out(header)
    out("-" * len(header))
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        codes = rng.integers(-1, 2, (size, size)).astype(np.int8)
        alpha = (rng.random(size) + 0.5).astype(np.float32)
        t = Ternary(codes, alpha, granularity="channel")
        w = t.dense().astype(np.float32)
        packs = {fmt: pack(t, fmt) for fmt in {f for f, _ in KERNEL_CASES}}
        del codes, t
        for n in batches:
            x = rng.standard_normal((n, size)).astype(np.float32)
            numpy_name = "numpy W @ x" if n == 1 else "numpy X @ W.T"
            calls = _kernel_calls(numpy_name, w, x, packs, linear)
            ms = interleaved_medians(calls, reps, min_seconds)
            for name, t_ms in ms.items():
                is_numpy = name == numpy_name
                p = None if is_numpy else packs[name.split()[0]]
                # the vpdpbusd int8 kernels run serial: kernels.SERIAL_VNNI_GEMV and
                # kernels.SERIAL_VNNI_GEMM_BELOW (tq1's GEMM on i2 tiles: the i2 row length)
                int8 = not is_numpy and name.endswith("int8")
                vnni = int8 and getattr(p.module, "STREAM_GEMM_I8", False)
                tiles = int8 and n >= GEMM_MIN_BATCH and getattr(p.module, "I2_TILE_GEMM_I8", False)
                i2_length = -(-size // i2.BLOCK) * i2.BLOCK
                serial = (
                    vnni
                    and (n < GEMM_MIN_BATCH or n * size * p.padded_length < SERIAL_VNNI_GEMM_BELOW)
                ) or (tiles and n * size * i2_length < SERIAL_VNNI_GEMM_BELOW)
                used = 1 if serial else threads
                row = {
                    "size": size,
                    "batch": n,
                    "kernel": name,
                    "ms": t_ms,
                    "ratio": ms[numpy_name] / t_ms,
                    "gw_per_core": n * size * size / (t_ms * 1e-3) / 1e9 / used,
                    "bytes": w.nbytes if is_numpy else p.nbytes,
                    "bits": 32.0 if is_numpy else p.bits_per_weight_with_scales,
                }
                rows.append(row)
                out(
                    f"{size:>6} {n:>4} {name:<18} {t_ms:>9.3f} {row['ratio']:>6.2f}x "
                    f"{row['gw_per_core']:>11.1f} {row['bytes'] / 1e6:>10.2f} {row['bits']:>7.3f}"
                )
    return rows


def _kernel_calls(numpy_name, w, x, packs, linear) -> dict:
    """The callables of one (size, batch): NumPy's product, then every packed case."""
    xin = x[0] if x.shape[0] == 1 else x
    calls = {numpy_name: (lambda: w @ xin) if x.shape[0] == 1 else (lambda: x @ w.T)}
    for fmt, act in KERNEL_CASES:
        calls[f"{fmt} {act}"] = lambda p=packs[fmt], act=act: linear(xin, p, act)
    return calls


# ---------------------------------------------------------------------------------- models
MODELS = (("mlp", (1, 8, 8), 359), ("lenet5", (1, 28, 28), 1000))


def build_pair(name: str, shape: tuple, method: str = "twn", seed: int = 0):
    """The float model and the same network quantized by ``method`` (first/last layers in full
    precision), both in evaluation mode, with random weights (seeded) and BatchNorm statistics
    that are not the identity (so that folding is exercised)."""
    from ternref.methods import get, quantize_model
    from ternref.recipes import build_model

    fp = build_model(name, shape, 10, np.random.default_rng(seed))
    q = build_model(name, shape, 10, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    for a, b in zip(fp.layers, q.layers):
        if hasattr(a, "running_var"):
            a.running_mean[:] = rng.normal(0, 0.1, a.running_mean.shape)
            a.running_var[:] = rng.uniform(0.5, 2.0, a.running_var.shape)
            b.running_mean[:], b.running_var[:] = a.running_mean, a.running_var
    quantize_model(q, get(method))
    fp.eval()
    q.eval()
    return fp, q


def run_models(
    formats=("i2", "tq1"), reps=15, seed=0, out=print, min_seconds=MIN_SECONDS
) -> list[dict]:
    """The end-to-end benchmark; returns one dict per configuration and prints a table."""
    from ternref import packed
    from ternref._machine import summary

    out(summary())
    out(
        f"median ms of at least {reps} interleaved rounds (batch 1; a third of that for the large "
        f"batch), more until {min_seconds:g} s of calls per configuration (float model, its float "
        "inference export, the packed model, called in turn, no pause); "
        "speed-up = float ms / packed ms"
    )
    header = (
        f"{'model':<7} {'format':<6} {'activations':<11} {'batch':>5} {'float':>10} "
        f"{'float export':>12} {'packed':>10} {'speed-up':>9} {'vs export':>9}"
    )
    out(header)
    out("-" * len(header))
    rows = []
    for name, shape, big in MODELS:
        fp, q = build_pair(name, shape, seed=seed)
        fp_export = packed.export(fp)
        for fmt in formats:
            for act in ("float32", "int8"):
                pm = packed.export(q, format=fmt, activations=act)
                for batch in (1, big):
                    x = np.random.default_rng(seed + 2).standard_normal((batch, *shape))
                    x = x.astype(np.float32)
                    n_rounds = reps if batch == 1 else max(5, reps // 3)
                    models = {"float": fp, "export": fp_export, "packed": pm}
                    calls = {k: (lambda m=m, x=x: m.forward(x)) for k, m in models.items()}
                    ms = interleaved_medians(calls, n_rounds, min_seconds)
                    row = {"model": name, "format": fmt, "activations": act, "batch": batch}
                    row.update({k + "_ms": v for k, v in ms.items()})
                    row["speedup"] = ms["float"] / ms["packed"]
                    row["speedup_vs_export"] = ms["export"] / ms["packed"]
                    rows.append(row)
                    out(
                        f"{name:<7} {fmt:<6} {act:<11} {batch:>5} {ms['float']:>10.3f} "
                        f"{ms['export']:>12.3f} {ms['packed']:>10.3f} {row['speedup']:>8.2f}x "
                        f"{row['speedup_vs_export']:>8.2f}x"
                    )
    return rows


def main(argv=None) -> int:
    """Command-line entry point (``ternref bench``)."""
    ap = argparse.ArgumentParser(
        prog="ternref bench",
        description="Packed ternary kernels vs NumPy float32 BLAS; --models: packed models vs "
        "their float models, end to end.",
    )
    ap.add_argument("--models", action="store_true", help="the end-to-end model benchmark")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--formats", nargs="+", default=["i2", "tq1"], help="(--models) formats")
    ap.add_argument("--reps", type=int, default=9, help="least interleaved timed rounds (median)")
    ap.add_argument(
        "--min-seconds", type=float, default=MIN_SECONDS,
        help="more rounds until the timed calls of a configuration add up to this",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="packed kernel threads")
    args = ap.parse_args(argv)
    if args.reps < 1 or any(s < 1 for s in args.sizes) or any(b < 1 for b in args.batches):
        ap.error("sizes, batches and reps must be positive")
    if not args.min_seconds >= 0:
        ap.error(f"--min-seconds must be >= 0, got {args.min_seconds}")
    if args.threads is not None:
        from ternref.packed import set_num_threads

        if args.threads < 1:
            ap.error("--threads must be positive")
        set_num_threads(args.threads)
    if args.models:
        run_models(formats=tuple(args.formats), reps=args.reps, min_seconds=args.min_seconds)
    else:
        run(
            sizes=tuple(args.sizes), batches=tuple(args.batches), reps=args.reps,
            min_seconds=args.min_seconds,
        )  # fmt: skip
    return 0
