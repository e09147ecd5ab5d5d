"""Time the core projections on 10^6 float32 weights (median of repeated runs).

Targets (DESIGN: benchmarks print, they never assert): ``exact`` < 0.5 s and ``twn`` < 20 ms on
10^6 float32 values. Run with ``python benchmarks/bench_projections.py``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np

from ternref.projections import bitnet, exact, fgq, ttq, twn

N = 10**6
RUNS = 9


def median_seconds(fn, w, runs=RUNS):
    fn(w)  # warm-up (allocations, page faults)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(w)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    w = np.random.default_rng(0).standard_normal(N).astype(np.float32)
    w2 = w.reshape(1000, 1000)
    cases = [
        ("twn (tensor)", twn, w, 0.020),
        ("exact (tensor)", exact, w, 0.5),
        ("exact (channel, 1000x1000)", lambda x: exact(x, granularity="channel"), w2, None),
        ("ttq", ttq, w, None),
        ("bitnet", bitnet, w, None),
        ("fgq (N=4)", fgq, w2, None),
    ]
    print(
        f"machine: {platform.platform()}, processor {platform.processor() or 'unknown'!r}, "
        f"{os.cpu_count()} CPUs, python {platform.python_version()}, numpy {np.__version__}"
    )
    print(f"input: {N} float32 N(0,1) values; median of {RUNS} runs after one warm-up\n")
    results = {}
    for name, fn, x, target in cases:
        t = median_seconds(fn, x)
        results[name] = t
        verdict = (
            ""
            if target is None
            else (f"  target < {target * 1e3:.0f} ms: {'met' if t < target else 'MISSED'}")
        )
        print(f"{name:<30s} {t * 1e3:9.2f} ms{verdict}")
    print()
    print(f"exact {results['exact (tensor)']:.4f} s, twn {results['twn (tensor)'] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
