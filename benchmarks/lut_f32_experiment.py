"""Experiment (issue 17): a lookup-table float32 product for ternary weights, against the FMA block.

Not used by the library. It measures one idea for the float32 targets that the AVX-512 FMA
block of :mod:`ternref.packed._f32_block` cannot reach on two cores: that block does the same
multiply-adds as OpenBLAS's sgemm, so at best it ties. A ternary weight needs no multiply, and
a table of signed sums lets one instruction stand for several multiply-adds (the idea of T-MAC
and of bitnet.cpp's TL kernels, here with float32 sums):

* for every activation row ``n`` and every group ``j`` of three columns, a table of the 27 sums
  ``T[n, j, 9 (c0 + 1) + 3 (c1 + 1) + (c2 + 1)] = (c0 x0 + c1 x1) + c2 x2``, ``c in {-1, 0, 1}``
  (32 float32, two zmm registers; products by -1, 0, 1 are exact, so two roundings per entry);
* for every weight row ``r``, the byte ``idx[j, r]`` of its three codes (column-group major, so
  16 rows' indices are 16 contiguous bytes);
* ``Y[n, r] = alpha[r] * sum_j T[n, j, idx[j, r]]``: 16 weight rows at a time, one
  ``vpermi2ps`` (a 32-entry lookup in two registers) and one ``vaddps`` per 16 x 3
  multiply-adds, against 16 per ``vfmadd`` zmm.

The variant with groups of two columns (9 entries, one register, ``vpermps``) is measured too.
Both blocks hold 4 activation rows x 64 weight rows (16 accumulators) in LLVM IR through a Numba
``@intrinsic``, as the FMA block is. The tables are built per block of four activation rows into
a scratch buffer (4 x K/3 x 32 float32): built for the whole batch at once they are 10.7x the
activations and the build is a memory write (3.9 MB at 360 x 255).

What this does not cover (and why it is not in ``ternref.packed`` yet): symmetric weights with one
scale per row only (asymmetric or offset weights need a second table of ``|c|``-weighted sums,
several scale groups need triples that do not straddle a group); the index bytes are made from
int8 codes, not from the packed ``i2`` / ``tq1`` bytes; no NumPy twin or hypothesis proof; the
threaded rows only split the activation rows over :func:`ternref.packed._threads.parallel_chunks`.
Each variant's result is checked against ``x @ W.T`` before it is timed.

Usage: ``python benchmarks/lut_f32_experiment.py [--m 256] [--k 256] [--n 360] [--reps 9]``
(K is cut to a multiple of 3 for the 3-column variant and of 2 for the 2-column one).
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ternref.packed._f32_block import _I8, _I32, _V16, _element

ACT_ROWS = 4
"""Activation rows of one block."""

ROW_VECTORS = 4
"""Vectors of 16 weight rows of one block (64 rows)."""

_VI16 = ir.VectorType(_I32, 16)
_VB16 = ir.VectorType(_I8, 16)


def make_block(columns: int):
    """The intrinsic ``block(tables, idx, r0, n_groups, out)``: ``out[a, 16 b + l] = sum_j
    tables[a, j, idx[j, r0 + 16 b + l]]`` for ``a < ACT_ROWS``, ``b < ROW_VECTORS``, with
    tables of 9 entries in one register (``columns = 2``, ``vpermps``) or 27 in two
    (``columns = 3``, ``vpermi2ps``). ``tables`` (ACT_ROWS, J, 16 or 32) float32, ``idx``
    (J, M) uint8, ``out`` (ACT_ROWS, 64) float32, last axes contiguous."""
    two_registers = columns == 3

    def codegen(context, builder, signature, args):
        tables_type, idx_type, _, _, out_type = signature.args
        tables, idx, r0, n_groups, out = args
        ix = n_groups.type
        if two_registers:
            fn = ir.FunctionType(_V16, [_V16, _VI16, _V16])
            name = "llvm.x86.avx512.vpermi2var.ps.512"
        else:
            fn = ir.FunctionType(_V16, [_V16, _VI16])
            name = "llvm.x86.avx512.permvar.sf.512"
        lookup = cgutils.get_or_insert_function(builder.module, fn, name)
        group_stride = builder.extract_value(
            context.make_array(tables_type)(context, builder, tables).strides, 1
        )
        idx_stride = builder.extract_value(
            context.make_array(idx_type)(context, builder, idx).strides, 0
        )
        zero_ix = ir.Constant(ix, 0)
        table_first = [
            _element(context, builder, tables_type, tables, [ir.Constant(ix, a), zero_ix, zero_ix])
            for a in range(ACT_ROWS)
        ]
        idx_first = [
            _element(context, builder, idx_type, idx, [zero_ix, row])
            for row in (builder.add(r0, ir.Constant(ix, 16 * b)) for b in range(ROW_VECTORS))
        ]
        zero = ir.Constant(_V16, [0.0] * 16)
        # accumulators as allocas: mem2reg keeps them in registers (checked with inspect_asm)
        slots = [[cgutils.alloca_once_value(builder, zero) for _ in range(ROW_VECTORS)]
                 for _ in range(ACT_ROWS)]  # fmt: skip
        with cgutils.for_range(builder, n_groups) as loop:
            j = loop.index
            lanes = []
            for b in range(ROW_VECTORS):
                at = builder.bitcast(builder.gep(idx_first[b], [builder.mul(j, idx_stride)]),
                                     _VB16.as_pointer())  # fmt: skip
                lanes.append(builder.zext(builder.load(at, align=1), _VI16))
            for a in range(ACT_ROWS):
                at = builder.bitcast(builder.gep(table_first[a], [builder.mul(j, group_stride)]),
                                     _V16.as_pointer())  # fmt: skip
                low = builder.load(at, align=4)
                if two_registers:
                    high = builder.load(builder.gep(at, [ir.Constant(_I32, 1)]), align=4)
                for b in range(ROW_VECTORS):
                    operands = [low, lanes[b], high] if two_registers else [low, lanes[b]]
                    picked = builder.call(lookup, operands)
                    builder.store(builder.fadd(builder.load(slots[a][b]), picked), slots[a][b])
        for a in range(ACT_ROWS):
            for b in range(ROW_VECTORS):
                at = _element(context, builder, out_type, out,
                              [ir.Constant(ix, a), ir.Constant(ix, 16 * b)])  # fmt: skip
                builder.store(builder.load(slots[a][b]), builder.bitcast(at, _V16.as_pointer()),
                              align=4)  # fmt: skip
        return context.get_dummy_value()

    def typer(typingctx, tables, idx, r0, n_groups, out):
        n = types.intp
        return types.none(tables, idx, n, n, out), codegen

    return intrinsic(typer)


def sign_patterns(columns: int) -> np.ndarray:
    """``(columns, width)`` float32: entry ``e`` of a table is ``sum_c patterns[c, e] x_c``,
    ``e = sum_c 3^(columns - 1 - c) (code_c + 1)``; zero past the ``3^columns`` entries."""
    width = 16 if columns == 2 else 32
    patterns = np.zeros((columns, width), np.float32)
    for e, codes in enumerate(itertools.product((-1, 0, 1), repeat=columns)):
        patterns[:, e] = codes
    return patterns


def make_gemm(columns: int):
    """``gemm(x, idx, alpha, y)``: ``y = (x @ W.T) * alpha`` for the weight whose codes' groups
    of ``columns`` are ``idx`` (:func:`index_bytes`); N and M must be multiples of the block
    (4 and 64: the experiment leaves out the edges), K a multiple of ``columns``."""
    block = make_block(columns)
    patterns = sign_patterns(columns)
    width = patterns.shape[1]

    @numba.njit(nogil=True)
    def gemm(x, idx, alpha, y):
        n = x.shape[0]
        n_groups, m = idx.shape
        tables = np.empty((ACT_ROWS, n_groups, width), np.float32)  # one block's tables
        out = np.empty((ACT_ROWS, 16 * ROW_VECTORS), np.float32)
        for a0 in range(0, n, ACT_ROWS):
            for a in range(ACT_ROWS):
                row = x[a0 + a]
                for j in range(n_groups):
                    t = tables[a, j]
                    if columns == 2:
                        x0, x1 = row[2 * j], row[2 * j + 1]
                        for e in range(width):
                            t[e] = patterns[0, e] * x0 + patterns[1, e] * x1
                    else:
                        x0, x1, x2 = row[3 * j], row[3 * j + 1], row[3 * j + 2]
                        for e in range(width):
                            t[e] = (patterns[0, e] * x0 + patterns[1, e] * x1) + patterns[2, e] * x2
            for r0 in range(0, m, 16 * ROW_VECTORS):
                block(tables, idx, r0, n_groups, out)
                for a in range(ACT_ROWS):
                    dst = y[a0 + a, r0 : r0 + 16 * ROW_VECTORS]
                    for c in range(16 * ROW_VECTORS):
                        dst[c] = out[a, c] * alpha[r0 + c]

    return gemm


@numba.njit(nogil=True)
def index_bytes(codes, columns, idx):
    """``idx[j, r]`` = the base-3 number of codes ``codes[r, columns j ..]`` plus one each."""
    m = codes.shape[0]
    for r in range(m):
        for j in range(idx.shape[0]):
            v = 0
            for c in range(columns):
                v = 3 * v + codes[r, columns * j + c] + 1
            idx[j, r] = np.uint8(v)


def main(argv=None) -> int:
    from ternref._machine import summary
    from ternref.packed import _threads, kernels, pack
    from ternref.packed.bench import interleaved_medians
    from ternref.ternary import Ternary

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=256, help="weight rows (multiple of 64)")
    parser.add_argument("--k", type=int, default=256, help="columns")
    parser.add_argument("--n", type=int, default=360, help="activation rows (multiple of 4)")
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args(argv)
    if args.m % 64 or args.n % 4 or args.k < 3:
        parser.error("--m must be a multiple of 64, --n of 4, --k at least 3")
    print(summary())
    rng = np.random.default_rng(0)
    codes = rng.integers(-1, 2, (args.m, args.k)).astype(np.int8)
    alpha = (rng.random(args.m) + 0.5).astype(np.float32)
    x = rng.standard_normal((args.n, args.k)).astype(np.float32)
    t = Ternary(codes, alpha, granularity="channel")
    w = t.dense().astype(np.float32)
    packed_i2 = pack(t, "i2")
    y_packed = np.empty((args.n, args.m), np.float32)
    calls = {
        "numpy X @ W.T": lambda: x @ w.T,
        "ternref i2 float32 (threads)": lambda: kernels.product(packed_i2, x, False, y=y_packed),
    }

    def serial():
        before = _threads.get_num_threads()
        _threads.set_num_threads(1)
        try:
            kernels.product(packed_i2, x, False, y=y_packed)
        finally:
            _threads.set_num_threads(before)

    calls["ternref i2 float32 (1 thread)"] = serial
    work = {"numpy X @ W.T": args.n * args.m * args.k}
    work["ternref i2 float32 (threads)"] = work["ternref i2 float32 (1 thread)"] = work[
        "numpy X @ W.T"
    ]
    for columns in (2, 3):
        k = args.k - args.k % columns
        idx = np.empty((k // columns, args.m), np.uint8)
        index_bytes(codes[:, :k], columns, idx)
        gemm = make_gemm(columns)
        y = np.empty((args.n, args.m), np.float32)
        xk = np.ascontiguousarray(x[:, :k])
        gemm(xk, idx, alpha, y)
        reference = xk @ w[:, :k].T
        # products by -1, 0, 1 are exact: each sum of K terms is off by at most ~K roundings
        bound = 2 * k * np.finfo(np.float32).eps * (np.abs(xk) @ np.abs(w[:, :k]).T)
        worst = float(np.max(np.abs(y - reference) - bound))
        if worst > 0:
            print(f"{columns}-column variant disagrees with x @ W.T by {worst:g} past the bound")
            return 1
        lines = gemm.inspect_asm(gemm.signatures[0]).splitlines()
        ops = ("vpermt2ps", "vpermi2ps", "vpermps", "vpermd")
        hits = [at for at, line in enumerate(lines) if line.split()[:1] and line.split()[0] in ops]
        if not hits:
            print(f"{columns}-column variant: no lookup instruction ({', '.join(ops)}) compiled")
            return 1
        loop = lines[hits[0] : hits[-1] + 1]  # the unrolled lookup loop's body
        counts = {op: sum(line.split()[:1] == [op] for line in loop) for op in (*ops, "vaddps")}
        spills = sum("zmm" in line and "rsp" in line for line in loop)
        print(f"{columns}-column variant, lookup loop: {counts}, zmm stack accesses: {spills}")
        name = f"lut {columns}-col, 1 thread"
        calls[name] = lambda gemm=gemm, xk=xk, idx=idx, y=y: gemm(xk, idx, alpha, y)
        calls[f"index bytes {columns}-col"] = lambda idx=idx, k=k, c=columns: index_bytes(
            codes[:, :k], c, idx
        )
        work[name] = args.n * args.m * k
        # the same over the library's helper threads, chunks of activation rows
        parts = _threads.split(args.n, 4 * _threads.get_num_threads(), ACT_ROWS)

        def threaded(gemm=gemm, xk=xk, idx=idx, y=y, parts=parts):
            def chunk(i):
                a, b = parts[i]
                gemm(xk[a:b], idx, alpha, y[a:b])

            _threads.parallel_chunks(chunk, len(parts))

        threaded_name = f"lut {columns}-col, threads"
        calls[threaded_name] = threaded
        work[threaded_name] = work[name]
    print(f"N={args.n} M={args.m} K={args.k}: median us of at least {args.reps} interleaved "
          "rounds (no pause); G MAC/s = multiply-adds per second")  # fmt: skip
    for name, ms in interleaved_medians(calls, args.reps).items():
        rate = f"{work[name] / ms / 1e6:8.1f}" if name in work else ""
        print(f"{name:32s} {1e3 * ms:10.1f} {rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
