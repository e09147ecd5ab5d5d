"""Byte dot products with AVX-512 VNNI (``vpdpbusd``) for the ``i2`` int8 kernels.

Why this module exists
----------------------
LLVM vectorizes the plain loop ``acc += int32(q) * int32(x)`` of an int8 dot product, but it
widens every byte to a 32-bit lane first and multiplies with ``vpdpwssd``: one product per
32-bit lane, 16 multiply-adds per instruction (``tests/packed/test_kernel_asm.py`` shows the
instructions it picks). AVX-512 VNNI's ``vpdpbusd`` multiplies 64 unsigned bytes by 64 signed
bytes and adds each group of four products into one of 16 int32 lanes: 64 multiply-adds per
instruction, with no widening at all. It is what bitnet.cpp's hand-written x86 kernels use.

LLVM does not form ``vpdpbusd`` from a loop on its own, and Numba has no vector types, so the
loop below is written in LLVM IR with a Numba ``@intrinsic``: per 64 bytes of packed codes it

1. loads the 64 code bytes once,
2. extracts the 2-bit field ``s`` of every byte, ``(bytes >> 2 s) & mask`` (``mask = 3`` gives
   ``q = c + 1``; ``mask = 1`` gives ``[c = 0]``, :mod:`ternref.packed.i2`), as 64 unsigned bytes,
3. multiplies them by the 64 int8 activations of stream ``s`` at the same bytes
   (``llvm.x86.avx512.vpdpbusd.512``, the instruction's LLVM intrinsic),

for ``s = 0 .. 3``, accumulating in 16 int32 lanes that are summed at the end (a trailing
32 bytes, a row of 128 weights, use the 256-bit form). With ``rows = 4`` the decoded fields of
one pass serve four activation rows (four accumulators): the GEMM form.

The sums are the same exact integers as the plain loop's: ``q <= 2``, ``|x| <= 127``, so four
products fit a lane with room to spare, and an int32 lane holds any row shorter than 2^22
weights (what :func:`ternref.packed.pack` allows). The NumPy twins of the kernels that call
these (``i2.dot_i8_numpy``, ``i2.zeros_i8_numpy``) are unchanged and agree bit for bit.

When it is used
---------------
:data:`AVAILABLE` is true only when every condition holds: Numba compiles (not
``NUMBA_DISABLE_JIT``) for the host CPU (no ``NUMBA_CPU_NAME``), the host CPU has AVX-512 BW,
VL and VNNI (LLVM's host feature list), and ``TERNREF_VNNI`` is not ``0``. Otherwise the kernels
keep the plain loops, which compile everywhere: the intrinsic would not compile for a CPU
without the instruction. ``TERNREF_VNNI=0`` is also how a user compares the two.
"""

from __future__ import annotations

import os

import numba
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

REQUIRED_FEATURES = ("avx512bw", "avx512vl", "avx512vnni")
"""LLVM's names of the CPU features the intrinsic needs (``vpdpbusd`` on zmm and ymm)."""


def host_has_vnni() -> bool:
    """True if LLVM reports every feature of :data:`REQUIRED_FEATURES` for the host CPU."""
    try:
        features = llvm_binding.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot read the host's features (some platforms)
        return False
    return all(features.get(name, False) for name in REQUIRED_FEATURES)


def _available() -> bool:
    if os.environ.get("TERNREF_VNNI", "1") == "0":
        return False
    if numba.config.DISABLE_JIT or numba.config.CPU_NAME not in (None, "host"):
        return False
    return host_has_vnni()


AVAILABLE = _available()
"""Whether the ``i2`` int8 kernels use :func:`i2_field_dot` (see the module docstring)."""

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_BYTES = {512: ir.VectorType(_I8, 64), 256: ir.VectorType(_I8, 32)}
_LANES = {512: ir.VectorType(_I32, 16), 256: ir.VectorType(_I32, 8)}


def _function(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _splat(builder, value, vector_type):
    """``vector_type`` with every element ``value`` (an i8)."""
    undef = ir.Constant(vector_type, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(first, undef, zeros)


def _emit_step(builder, bits, code_ptr, stream_ptrs, mask, accs):
    """One step of ``bits / 8`` code bytes: returns the updated accumulators, one per row.

    ``stream_ptrs[i][s]`` points at the activations of row ``i``, stream ``s``, at the same
    byte position as ``code_ptr``."""
    vbytes, vlanes = _BYTES[bits], _LANES[bits]
    dot = _function(builder, f"llvm.x86.avx512.vpdpbusd.{bits}", vlanes, [vlanes, vbytes, vbytes])

    def load(ptr):
        return builder.load(builder.bitcast(ptr, vbytes.as_pointer()), align=1)

    code_bytes = load(code_ptr)
    mask_vector = _splat(builder, mask, vbytes)
    accs = list(accs)
    for s in range(4):
        shifted = code_bytes
        if s:
            shifted = builder.lshr(code_bytes, ir.Constant(vbytes, [2 * s] * vbytes.count))
        field = builder.and_(shifted, mask_vector)  # unsigned bytes in {0, 1, 2}
        for i, ptrs in enumerate(stream_ptrs):
            accs[i] = builder.call(dot, [accs[i], field, load(ptrs[s])])
    return accs


def _make_field_dot(rows: int):
    """The intrinsic ``(codes_row, xs, n0, t0, mask) -> int32`` (``rows = 1``) or a tuple of
    ``rows`` int32 (activation rows ``n0 .. n0 + rows - 1``), see :func:`i2_field_dot`."""

    def typer(typingctx, codes_row, xs, n0, t0, mask):
        if not (
            isinstance(codes_row, types.Array) and codes_row.ndim == 1
            and codes_row.dtype == types.uint8
            and isinstance(xs, types.Array) and xs.ndim == 3 and xs.dtype == types.int8
        ):  # fmt: skip
            raise numba.core.errors.TypingError(
                "i2_field_dot needs a 1-D uint8 codes row and 3-D int8 streams (N, 4, T), "
                f"got {codes_row} and {xs}"
            )
        ret = types.int32 if rows == 1 else types.UniTuple(types.int32, rows)
        return ret(codes_row, xs, types.intp, types.intp, types.intp), codegen

    def codegen(context, builder, signature, args):
        codes_t, xs_t = signature.args[0], signature.args[1]
        codes = context.make_array(codes_t)(context, builder, args[0])
        xs = context.make_array(xs_t)(context, builder, args[1])
        n0, t0 = args[2], args[3]
        mask = builder.trunc(args[4], _I8)
        nbytes = builder.extract_value(codes.shape, 0)
        idx = nbytes.type
        strides = [builder.extract_value(xs.strides, d) for d in range(3)]
        code_base = builder.bitcast(codes.data, _I8.as_pointer())
        xs_base = builder.bitcast(xs.data, _I8.as_pointer())

        def stream_ptr(i, s, offset):
            # byte offset of xs[n0 + i, s, t0 + offset] (the last axis has unit stride)
            n = builder.add(n0, ir.Constant(idx, i))
            at = builder.mul(n, strides[0])
            at = builder.add(at, builder.mul(ir.Constant(idx, s), strides[1]))
            at = builder.add(at, builder.mul(builder.add(t0, offset), strides[2]))
            return builder.gep(xs_base, [at])

        def ptrs_at(offset):
            code_ptr = builder.gep(code_base, [offset])
            streams = [[stream_ptr(i, s, offset) for s in range(4)] for i in range(rows)]
            return code_ptr, streams

        zero16 = ir.Constant(_LANES[512], [0] * 16)
        acc_slots = [cgutils.alloca_once_value(builder, zero16) for _ in range(rows)]
        with cgutils.for_range(builder, builder.udiv(nbytes, ir.Constant(idx, 64))) as loop:
            offset = builder.mul(loop.index, ir.Constant(idx, 64))
            code_ptr, streams = ptrs_at(offset)
            accs = [builder.load(slot) for slot in acc_slots]
            accs = _emit_step(builder, 512, code_ptr, streams, mask, accs)
            for slot, acc in zip(acc_slots, accs):
                builder.store(acc, slot)
        reduce16 = _function(builder, "llvm.vector.reduce.add.v16i32", _I32, [_LANES[512]])
        totals = [cgutils.alloca_once_value(builder, builder.call(reduce16, [builder.load(s)]))
                  for s in acc_slots]  # fmt: skip
        tail = builder.urem(nbytes, ir.Constant(idx, 64))
        with builder.if_then(builder.icmp_unsigned("!=", tail, ir.Constant(idx, 0))):
            # rows are whole 128-weight blocks (32 bytes): at most one 32-byte step is left
            offset = builder.sub(nbytes, ir.Constant(idx, 32))
            code_ptr, streams = ptrs_at(offset)
            zero8 = ir.Constant(_LANES[256], [0] * 8)
            accs = _emit_step(builder, 256, code_ptr, streams, mask, [zero8] * rows)
            reduce8 = _function(builder, "llvm.vector.reduce.add.v8i32", _I32, [_LANES[256]])
            for total, acc in zip(totals, accs):
                builder.store(builder.add(builder.load(total), builder.call(reduce8, [acc])), total)
        values = [builder.load(t) for t in totals]
        if rows == 1:
            return values[0]
        return context.make_tuple(builder, signature.return_type, values)

    return intrinsic(typer)


i2_field_dot = _make_field_dot(1)
"""``i2_field_dot(codes_row, xs, n, t0, mask)``: the exact int32
``sum_t sum_s ((codes_row[t] >> 2 s) & mask) * xs[n, s, t0 + t]`` over the ``len(codes_row)``
bytes of a contiguous uint8 row (a multiple of 32), with ``vpdpbusd``."""

i2_field_dot4 = _make_field_dot(4)
""":func:`i2_field_dot` for the activation rows ``n0 .. n0 + 3`` at once (a tuple of four
int32): each pass decodes the code bytes once for four rows."""
