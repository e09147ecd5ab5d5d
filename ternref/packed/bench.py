"""Kernel benchmark: packed ``linear`` against NumPy float32 BLAS, measured in one process.

For each size ``M = K`` and batch ``N`` it times (median of ``reps`` runs after a warm-up):
NumPy ``W @ x`` (batch 1) or ``X @ W.T``; then ``ternref.packed.linear`` for ``i2`` with float32
and int8 activations, ``tq1`` and ``bitplanes`` with float32 activations. It prints the time, the
speed ratio against NumPy (> 1 means faster than NumPy), the bytes of weights read (packed codes
plus scales, or the float32 matrix) and the achieved GB/s of weight traffic, and the machine.
Times include everything ``linear`` does (padding, activation quantization).

Run as ``python benchmarks/bench_kernels.py`` or ``ternref bench``; it never asserts a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

CASES = (("i2", "float32"), ("i2", "int8"), ("tq1", "float32"), ("bitplanes", "float32"))


def machine_info() -> dict:
    """CPU model (from /proc/cpuinfo), cores, numba threads and threading layer, load average."""
    import numba

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "load_avg": load,
    }


# After a call, OpenBLAS's worker threads busy-wait for ~2^28 cycles (~0.1 s) before sleeping,
# and an OpenMP pool spins briefly too. On a 2-core machine a kernel timed right after the other
# library then gets one core instead of two (measured at 8192x8192: right after NumPy's W @ x the
# i2 GEMV alternates 6.2 and 2.2 ms; after a 0.3 s pause it takes 2.2 ms every time).
# Each measurement therefore starts after this pause, when the other pool is asleep.
SETTLE_SECONDS = 0.3


def _median_ms(fn, reps: int) -> tuple[float, float]:
    """(median, minimum) wall time in ms; the minimum is the least disturbed by other load."""
    time.sleep(SETTLE_SECONDS)
    fn()  # warm-up (and JIT compile on first use)
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times)), 1e3 * float(np.min(times))


def run(sizes=(1024, 4096, 8192), batches=(1, 64), reps=7, seed=0, out=print) -> list[dict]:
    """Run the benchmark and return one dict per (size, batch, case)."""
    import numba

    from ternref.packed import linear, pack
    from ternref.ternary import Ternary

    # first compile, so that its cost (if not cached) is not in a warm-up of a big size
    small = Ternary(np.zeros((4, 8), np.int8), np.float32(1.0))
    for fmt, act in CASES:
        linear(np.ones(8, np.float32), pack(small, fmt), act)

    info = machine_info()
    out(
        f"machine: {info['cpu']}, {info['cores']} cores, numba {info['numba']} with "
        f"{info['numba_threads']} threads ({numba.threading_layer()}), numpy {info['numpy']}, "
        f"load average {info['load_avg']}"
    )
    out(
        f"median of {reps} runs after 2 warm-up runs; ratio = NumPy time / this time; "
        "GB/s = weight bytes / median time; 'min ms' and its ratio use the fastest run"
    )
    header = (
        f"{'M=K':>6} {'N':>4} {'kernel':<18} {'ms':>9} {'ratio':>7} {'weight MB':>10} "
        f"{'GB/s':>7} {'bits/w':>7} {'min ms':>9} {'ratio':>7}"
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
        packs = {fmt: pack(t, fmt) for fmt in {f for f, _ in CASES}}
        del codes
        for n in batches:
            x = rng.standard_normal((n, size)).astype(np.float32)
            xv = x[0]
            if n == 1:
                ms_np, min_np = _median_ms(lambda w=w, xv=xv: w @ xv, reps)
                name_np = "numpy W @ x"
            else:
                ms_np, min_np = _median_ms(lambda w=w, x=x: x @ w.T, reps)
                name_np = "numpy X @ W.T"
            row = dict(size=size, batch=n, kernel=name_np, ms=ms_np, ratio=1.0, bytes=w.nbytes)
            row.update(min_ms=min_np, min_ratio=1.0)
            row["bits"] = 32.0
            rows.append(row)
            out(_fmt(row))
            xin = xv if n == 1 else x
            for fmt, act in CASES:
                p = packs[fmt]
                ms, min_ms = _median_ms(lambda p=p, act=act, xin=xin: linear(xin, p, act), reps)
                row = dict(
                    size=size,
                    batch=n,
                    kernel=f"{fmt} {act}",
                    ms=ms,
                    ratio=ms_np / ms,
                    bytes=p.nbytes,
                    bits=p.bits_per_weight_with_scales,
                    min_ms=min_ms,
                    min_ratio=min_np / min_ms,
                )
                rows.append(row)
                out(_fmt(row))
        del w, packs
    out(f"load average at the end: {machine_info()['load_avg']}")
    return rows


def _fmt(row: dict) -> str:
    gbs = row["bytes"] / (row["ms"] * 1e-3) / 1e9
    return (
        f"{row['size']:>6} {row['batch']:>4} {row['kernel']:<18} {row['ms']:>9.3f} "
        f"{row['ratio']:>6.2f}x {row['bytes'] / 1e6:>10.2f} {gbs:>7.1f} {row['bits']:>7.3f} "
        f"{row['min_ms']:>9.3f} {row['min_ratio']:>6.2f}x"
    )


def main(argv=None) -> int:
    """Command-line entry point (``ternref bench``)."""
    ap = argparse.ArgumentParser(
        prog="ternref bench", description="Packed ternary kernels vs NumPy float32 BLAS."
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions (median), >= 7")
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: all)")
    args = ap.parse_args(argv)
    if args.reps < 1 or any(s < 1 for s in args.sizes) or any(b < 1 for b in args.batches):
        ap.error("sizes, batches and reps must be positive")
    if args.threads is not None:
        import numba

        numba.set_num_threads(args.threads)
    run(sizes=tuple(args.sizes), batches=tuple(args.batches), reps=args.reps)
    return 0
