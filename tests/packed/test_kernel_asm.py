"""The int8 GEMV kernels use the CPU's integer dot-product instructions (issue: no int32
multiply in the inner loop). Checked in the machine code LLVM generated, on CPUs that have them:
``i2`` with AVX-512 VNNI runs the hand-written ``vpdpbusd`` loop of ``ternref.packed._vnni``
(64 byte products per instruction), with AVX2 alone its ``vpmaddubsw`` form (32 per
instruction), and so does ``tq1``'s int8 GEMM, which re-encodes tiles as ``i2``; with
``TERNREF_VNNI=0``, and in ``tq1``'s GEMV, LLVM's own vectorization of the plain loops
(``vpmaddwd`` / ``vpdpwssd``).

Run in a fresh interpreter with an empty Numba cache: ``inspect_asm`` only works on code compiled
in the process, not on code loaded from the cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _cpu_flags()
HAS_VNNI = bool(FLAGS & {"avx512_vnni", "avx_vnni"})
HAS_AVX512_VNNI = {"avx512_vnni", "avx512bw", "avx512vl"} <= FLAGS
HAS_AVX2 = "avx2" in FLAGS

SCRIPT = r"""
import json, re, numpy as np
from ternref import Ternary
from ternref.packed import _vnni, i2, tq1, linear, pack
rng = np.random.default_rng(0)
t = Ternary(rng.integers(-1, 2, (8, 512)).astype(np.int8), np.float32(0.5))
x = rng.standard_normal((1, 512)).astype(np.float32)
for fmt in ("i2", "tq1"):
    linear(x, pack(t, fmt), "int8")
found = {"i2_vnni": _vnni.ISA}
kernels = [("i2", i2._field_sums_i8), ("tq1", tq1._code_sums_i8)]
if tq1.I2_TILE_GEMM_I8:  # tq1's int8 GEMM on tiles re-encoded as i2 (9 rows: the GEMM path)
    linear(rng.standard_normal((9, 512)).astype(np.float32), pack(t, "tq1"), "int8")
    kernels.append(("tq1_gemm_i2_tiles", tq1.gemm_i8_i2))
for name, fn in kernels:
    asm = "\n".join(fn.inspect_asm(sig) for sig in fn.signatures)
    found[name] = {op: len(re.findall(r"\b" + op + r"\b", asm))
                   for op in ("vpdpwssd", "vpdpbusd", "vpmaddwd", "vpmaddubsw", "vpmulld")}
print(json.dumps(found))
"""


def _instructions(tmp_path, vnni: str = "1") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}
    env["TERNREF_VNNI"] = vnni
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "empty-cache")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not HAS_AVX2, reason="the CPU has no AVX2 (no vpmaddwd to look for)")
@pytest.mark.parametrize("vnni", ["1", "0"])
def test_int8_gemv_inner_loops_use_integer_dot_instructions(tmp_path, vnni):
    found = _instructions(tmp_path, vnni)
    isa = found.pop("i2_vnni")
    expected = None if vnni == "0" else "avx512vnni" if HAS_AVX512_VNNI else "avx2"
    assert isa == expected, (isa, vnni, HAS_AVX512_VNNI)
    uses_vnni = isa is not None
    for fmt, counts in found.items():
        dot = counts["vpdpwssd"] + counts["vpdpbusd"] + counts["vpmaddwd"] + counts["vpmaddubsw"]
        assert dot > 0, f"{fmt}: no integer dot-product instruction in the int8 GEMV: {counts}"
        assert counts["vpmulld"] == 0, f"{fmt}: an int32 multiply in the int8 GEMV: {counts}"
    assert ("tq1_gemm_i2_tiles" in found) == uses_vnni, found
    if uses_vnni:
        # the hand-written byte dot product (ternref.packed._vnni), also inside tq1's GEMM
        op = "vpdpbusd" if isa == "avx512vnni" else "vpmaddubsw"
        assert found["i2"][op] > 0, found["i2"]
        assert found["tq1_gemm_i2_tiles"][op] > 0, found["tq1_gemm_i2_tiles"]
    elif HAS_VNNI:
        # the plain loop: LLVM fuses vpmaddwd + vpaddd into VNNI's 16-bit form
        assert found["i2"]["vpdpwssd"] + found["i2"]["vpdpbusd"] > 0, found["i2"]
