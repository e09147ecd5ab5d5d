"""What machine a measurement ran on: CPU model, SIMD flags, caches, threads, libraries, load.

Every benchmark prints this beside its numbers: the project's machines change kind from one day
to the next (an AMD EPYC one day, an Intel Xeon with AMX the next), and a ratio means little
without the CPU, its vector instructions, its caches and the thread limits it ran under.
"""

from __future__ import annotations

import os
import platform

#: The CPU flags that decide which kernels are fast (``/proc/cpuinfo`` spelling).
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_tile",
)


def _cpuinfo() -> dict:
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    key, value = (s.strip() for s in line.split(":", 1))
                    info.setdefault(key, value)
                if not line.strip() and info:
                    break  # the first processor is enough
    except OSError:
        pass
    return info


def _caches() -> str:
    """``L1d 48K, L2 2048K, L3 32768K`` from sysfs (CPU 0), or ``unknown``."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    parts = []
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return "unknown"
    for name in names:
        if not name.startswith("index"):
            continue
        try:
            with open(f"{base}/{name}/level") as f:
                level = f.read().strip()
            with open(f"{base}/{name}/type") as f:
                kind = f.read().strip()
            with open(f"{base}/{name}/size") as f:
                size = f.read().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        parts.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    return ", ".join(parts) or "unknown"


def describe() -> dict:
    """The machine and the thread settings of this process, as a dict of strings and ints."""
    import numba
    import numpy as np

    from ternref.packed import _threads

    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    env = {
        k: os.environ[k]
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS",
                  "TERNREF_NUM_THREADS", "MKL_NUM_THREADS")
        if k in os.environ
    }  # fmt: skip
    return {
        "cpu": cpu.get("model name", platform.processor() or platform.machine()),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "simd": " ".join(f for f in SIMD_FLAGS if f in flags) or "none of " + ",".join(SIMD_FLAGS),
        "caches": _caches(),
        "packed_threads": _threads.get_num_threads(),
        "thread_env": " ".join(f"{k}={v}" for k, v in env.items()) or "none set",
        "blas": _blas(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "python": platform.python_version(),
        "load_avg": load,
    }


def _blas() -> str:
    """NumPy's BLAS and, when threadpoolctl is installed, its thread count and kernel type."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "numpy's BLAS (install threadpoolctl to see which and how many threads)"
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            name = f"{lib.get('internal_api')} {lib.get('version')}"
            return f"{name} ({lib.get('architecture') or '?'}), {lib['num_threads']} threads"
    return "unknown"


def summary(info: dict | None = None) -> str:
    """One paragraph for a benchmark's header."""
    d = describe() if info is None else info
    return (
        f"machine: {d['cpu']}, {d['logical_cpus']} logical CPUs ({d['usable_cpus']} usable); "
        f"SIMD: {d['simd']}; caches: {d['caches']}\n"
        f"threads: ternref.packed {d['packed_threads']}, BLAS: {d['blas']}; thread variables: "
        f"{d['thread_env']}; numpy {d['numpy']}, numba {d['numba']}, Python {d['python']}; "
        f"load average {d['load_avg']}"
    )
