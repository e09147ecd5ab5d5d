"""Byte dot products with AVX-512 VNNI (``vpdpbusd``), or AVX2 (``vpmaddubsw``), for the ``i2``
int8 kernels.

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

for ``s = 0 .. 3``, accumulating in 16 int32 lanes per stream that are summed at the end (a trailing
32 bytes, a row of 128 weights, use the 256-bit form). Several rows go through one pass: four
weight rows against one activation row (the GEMV form: each activation vector is loaded once for
four rows, and the per-call set-up and final sums are shared), or one weight row against four
activation rows (the GEMM form: each decoded field serves four rows of activations).

CPUs with AVX2 but no VNNI (AMD Zen 1-3, Intel before Ice Lake) get the same loop in the form
llama.cpp's and bitnet.cpp's AVX2 kernels use, 32 bytes a step: ``vpmaddubsw`` multiplies the
32 fields by the 32 activations and adds adjacent pairs into int16, the four streams' results
are added in int16, and one ``vpmaddwd`` by ones widens them into 8 int32 lanes
(:func:`_emit_step_avx2`, which shows why nothing saturates). :data:`ISA` says which form runs.

The sums are the same exact integers as the plain loop's: ``q <= 2``, ``|x| <= 127``, so four
products fit a lane with room to spare, and an int32 lane holds any row shorter than 2^22
weights (what :func:`ternref.packed.pack` allows). The NumPy twins of the kernels that call
these (``i2.dot_i8_numpy``, ``i2.zeros_i8_numpy``) are unchanged and agree bit for bit.

When it is used
---------------
:data:`AVAILABLE` is true only when every condition holds: Numba compiles (not
``NUMBA_DISABLE_JIT``) for the host CPU (no ``NUMBA_CPU_NAME``), the host CPU has AVX-512 BW,
VL and VNNI, or AVX2 (LLVM's host feature list), and ``TERNREF_VNNI`` is not ``0``. Otherwise
the kernels keep the plain loops, which compile everywhere: the intrinsics would not compile for
a CPU without the instructions. ``TERNREF_VNNI=0`` is also how a user compares the two; Numba's
cache of compiled kernels does not know about that variable (it keys entries by source file and
CPU, not by the environment), so compare the two with a separate ``NUMBA_CACHE_DIR`` for each, as
``tests/packed/test_kernel_asm.py`` does. Both paths give the same exact sums either way.
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


def host_has(features) -> bool:
    """True if LLVM reports every one of ``features`` (LLVM's names) for the host CPU."""
    try:
        found = llvm_binding.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot read the host's features (some platforms)
        return False
    return all(found.get(name, False) for name in features)


def host_has_vnni() -> bool:
    """True if LLVM reports every feature of :data:`REQUIRED_FEATURES` for the host CPU."""
    return host_has(REQUIRED_FEATURES)


def intrinsic_available(switch: str, features) -> bool:
    """Whether a hand-written LLVM IR kernel may run: the environment variable ``switch`` is not
    ``0``, Numba compiles (not ``NUMBA_DISABLE_JIT``) for the host CPU (no ``NUMBA_CPU_NAME``),
    and the host has ``features``. Shared by this module and :mod:`ternref.packed._f32_block`."""
    if os.environ.get(switch, "1") == "0":
        return False
    if numba.config.DISABLE_JIT or numba.config.CPU_NAME not in (None, "host"):
        return False
    return host_has(features)


AVX2_FEATURES = ("avx2",)
"""LLVM's names of the CPU features of the AVX2 form (``vpmaddubsw`` + ``vpmaddwd`` on ymm)."""


def _isa() -> str | None:
    if intrinsic_available("TERNREF_VNNI", REQUIRED_FEATURES):
        return "avx512vnni"
    if intrinsic_available("TERNREF_VNNI", AVX2_FEATURES):
        return "avx2"
    return None


ISA = _isa()
"""Which form the intrinsics below compile to: ``"avx512vnni"`` (``vpdpbusd`` on zmm),
``"avx2"`` (``vpmaddubsw`` + ``vpmaddwd`` on ymm, the CPUs without VNNI: AMD Zen 1-3, Intel
before Ice Lake) or ``None`` (neither may run; the kernels keep their plain loops)."""

AVAILABLE = ISA is not None
"""Whether the ``i2`` int8 kernels use :func:`i2_field_dot` (see the module docstring)."""

PREFETCH_ROWS = 32
"""Each step asks the cache for the code bytes this many rows further on (software prefetch):
the rows of a GEMV are short (a few hundred bytes) and each is read once, so without it the
loop waits on memory (measured on the AMD EPYC of the README: a 4096 x 4096 GEMV whose codes
were evicted ran at 0.49 ms against 0.13 ms in cache, at 0.32-0.37 ms with 32 to 64 rows of
prefetch distance; 4 to 8 rows gave little). A prefetch past the
last row is harmless (it cannot fault)."""

PREFETCH_LOCALITY = 3
"""LLVM's locality hint of those prefetches (3: keep in every cache level, ``prefetcht0``)."""

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


def _emit_prefetches(builder, ptrs, offset):
    """Ask the cache for the bytes at ``ptr + offset`` of every pointer in ``ptrs`` (read
    access, locality :data:`PREFETCH_LOCALITY`, data cache); a prefetch cannot fault."""
    prefetch = _function(
        builder, "llvm.prefetch.p0", ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]
    )
    for ptr in ptrs:
        args = [builder.gep(ptr, [offset]), ir.Constant(_I32, 0),
                ir.Constant(_I32, PREFETCH_LOCALITY), ir.Constant(_I32, 1)]  # fmt: skip
        builder.call(prefetch, args)


def _emit_step(
    builder, bits, code_ptrs, stream_ptrs, offset, mask, accs, prefetch_ptrs=(), per_stream=True
):
    """One step of ``bits / 8`` bytes at byte ``offset``: returns the updated accumulators
    ``accs[j][i][s]`` (code row ``j``, activation row ``i``, stream ``s``), or ``accs[j][i]``
    with ``per_stream=False`` (one accumulator per pair, the four streams chained into it: the
    block form, whose 16 pairs are independent chains already).

    ``code_ptrs[j]`` points at the first byte of code row ``j``, ``stream_ptrs[i][s]`` at the
    activation of row ``i``, stream ``s`` that meets it. One accumulator per stream keeps the
    four ``vpdpbusd`` of a code row independent (chained into one register, each would wait for
    the previous one's result); each decoded field serves every activation row, each loaded
    activation vector every code row. ``prefetch_ptrs``: code rows to ask the cache for, at the
    same offset (:data:`PREFETCH_ROWS`)."""
    vbytes, vlanes = _BYTES[bits], _LANES[bits]
    dot = _function(builder, f"llvm.x86.avx512.vpdpbusd.{bits}", vlanes, [vlanes, vbytes, vbytes])

    def load(ptr):
        at = builder.gep(ptr, [offset])
        return builder.load(builder.bitcast(at, vbytes.as_pointer()), align=1)

    mask_vector = _splat(builder, mask, vbytes)
    accs = [[list(a) if per_stream else a for a in row] for row in accs]
    code_bytes = [load(ptr) for ptr in code_ptrs]
    _emit_prefetches(builder, prefetch_ptrs, offset)
    for s in range(4):
        x = [load(ptrs[s]) for ptrs in stream_ptrs]
        for j, b in enumerate(code_bytes):
            shifted = builder.lshr(b, ir.Constant(vbytes, [2 * s] * vbytes.count)) if s else b
            field = builder.and_(shifted, mask_vector)  # unsigned bytes in {0, 1, 2}
            for i in range(len(stream_ptrs)):
                if per_stream:
                    accs[j][i][s] = builder.call(dot, [accs[j][i][s], field, x[i]])
                else:
                    accs[j][i] = builder.call(dot, [accs[j][i], field, x[i]])
    return accs


def _emit_step_avx2(builder, code_ptrs, stream_ptrs, offset, mask, accs, prefetch_ptrs=()):
    """:func:`_emit_step` without VNNI, 32 bytes at byte ``offset``: returns the updated
    accumulators ``accs[j][i]`` (<8 x i32>, code row ``j``, activation row ``i``).

    AVX2 has no byte dot product into int32. ``vpmaddubsw`` multiplies 32 unsigned bytes by 32
    signed bytes and adds adjacent pairs into 16 int16 lanes, saturating; here a pair is at most
    ``2 * 2 * 128 = 512`` in magnitude (fields ``<= 2``, activations ``>= -128``), and the four
    streams' pairs added in int16 at most ``2048``, so nothing saturates and the sums stay exact.
    One ``vpmaddwd`` by ones then widens the int16 lanes into int32 lanes (adding pairs again):
    nine instructions per 128 weights and pair of rows (four ``vpmaddubsw``, three int16 adds,
    one ``vpmaddwd``, one int32 add), against two ``vpdpbusd`` with VNNI."""
    vbytes, vlanes = _BYTES[256], _LANES[256]
    vshorts = ir.VectorType(ir.IntType(16), 16)
    maddubs = _function(builder, "llvm.x86.avx2.pmadd.ub.sw", vshorts, [vbytes, vbytes])
    maddwd = _function(builder, "llvm.x86.avx2.pmadd.wd", vlanes, [vshorts, vshorts])
    ones = ir.Constant(vshorts, [1] * 16)

    def load(ptr):
        at = builder.gep(ptr, [offset])
        return builder.load(builder.bitcast(at, vbytes.as_pointer()), align=1)

    mask_vector = _splat(builder, mask, vbytes)
    accs = [list(row) for row in accs]
    _emit_prefetches(builder, prefetch_ptrs, offset)
    for j, code_ptr in enumerate(code_ptrs):
        b = load(code_ptr)
        fields = [
            builder.and_(
                builder.lshr(b, ir.Constant(vbytes, [2 * s] * 32)) if s else b, mask_vector
            )
            for s in range(4)
        ]
        for i, ptrs in enumerate(stream_ptrs):
            pairs = [builder.call(maddubs, [fields[s], load(ptrs[s])]) for s in range(4)]
            shorts = builder.add(builder.add(pairs[0], pairs[1]), builder.add(pairs[2], pairs[3]))
            accs[j][i] = builder.add(accs[j][i], builder.call(maddwd, [shorts, ones]))
    return accs


def _reduce_one(builder, bits, vector):
    """The int32 sum of the lanes of one accumulator."""
    vlanes = _LANES[bits]
    name = f"llvm.vector.reduce.add.v{vlanes.count}i32"
    return builder.call(_function(builder, name, _I32, [vlanes]), [vector])


def _reduce(builder, bits, stream_accs):
    """The int32 sum of the lanes of the four stream accumulators of one product."""
    total = builder.add(builder.add(stream_accs[0], stream_accs[1]),
                        builder.add(stream_accs[2], stream_accs[3]))  # fmt: skip
    return _reduce_one(builder, bits, total)


def _avx2_sums(builder, code_ptrs, stream_ptrs, nbytes, mask, prefetch_ptrs):
    """The int32 sums of every code row with every activation row over ``nbytes`` bytes (a
    multiple of 32) in the AVX2 form (:func:`_emit_step_avx2`), code row major: the loop of
    :func:`_make_field_dot` and :func:`i2_field_block` where :data:`ISA` is ``"avx2"``."""
    idx = nbytes.type
    zero8 = ir.Constant(_LANES[256], [0] * 8)
    slots = [[cgutils.alloca_once_value(builder, zero8) for _ in stream_ptrs] for _ in code_ptrs]
    with cgutils.for_range(builder, builder.udiv(nbytes, ir.Constant(idx, 32))) as loop:
        offset = builder.mul(loop.index, ir.Constant(idx, 32))
        accs = [[builder.load(x) for x in row] for row in slots]
        accs = _emit_step_avx2(builder, code_ptrs, stream_ptrs, offset, mask, accs, prefetch_ptrs)
        for row_slots, row_accs in zip(slots, accs):
            for slot, acc in zip(row_slots, row_accs):
                builder.store(acc, slot)
    return [_reduce_one(builder, 256, builder.load(x)) for row in slots for x in row]


def _make_field_dot(code_rows: int, act_rows: int):
    """The intrinsic ``(codes, r0, t0, seg, xs, n0, mask)``: the sums of code rows
    ``r0 .. r0 + code_rows - 1`` with activation rows ``n0 .. n0 + act_rows - 1``, an int32
    (one of each) or a tuple ``(r0 with n0, r0 with n0 + 1, ..., r0 + 1 with n0, ...)``; see
    :func:`i2_field_dot`."""

    def typer(typingctx, codes, r0, t0, seg, xs, n0, mask):
        if not (
            isinstance(codes, types.Array) and codes.ndim == 2 and codes.dtype == types.uint8
            and isinstance(xs, types.Array) and xs.ndim == 3 and xs.dtype == types.int8
        ):  # fmt: skip
            raise numba.core.errors.TypingError(
                "i2_field_dot needs 2-D uint8 codes (M, L/4) and 3-D int8 streams (N, 4, L/4), "
                f"got {codes} and {xs}"
            )
        count = code_rows * act_rows
        ret = types.int32 if count == 1 else types.UniTuple(types.int32, count)
        return ret(codes, types.intp, types.intp, types.intp, xs, types.intp, types.intp), codegen

    def codegen(context, builder, signature, args):
        codes = context.make_array(signature.args[0])(context, builder, args[0])
        xs = context.make_array(signature.args[4])(context, builder, args[4])
        r0, t0, nbytes, n0 = args[1], args[2], args[3], args[5]
        mask = builder.trunc(args[6], _I8)
        idx = nbytes.type

        def element(array, ndim, first):
            # pointer to array[first..., t0]; the steps then walk the last axis, which must be
            # contiguous (every caller's is)
            strides = [builder.extract_value(array.strides, d) for d in range(ndim)]
            at = builder.mul(t0, strides[-1])
            for index, stride in zip(first, strides):
                at = builder.add(at, builder.mul(index, stride))
            return builder.gep(builder.bitcast(array.data, _I8.as_pointer()), [at])

        def const(value):
            return ir.Constant(idx, value)

        code_ptrs = [element(codes, 2, [builder.add(r0, const(j))]) for j in range(code_rows)]
        row_stride = builder.extract_value(codes.strides, 0)
        ahead = builder.mul(row_stride, const(PREFETCH_ROWS))
        prefetch_ptrs = [builder.gep(ptr, [ahead]) for ptr in code_ptrs]
        streams = [
            [element(xs, 3, [builder.add(n0, const(i)), const(s)]) for s in range(4)]
            for i in range(act_rows)
        ]
        if ISA == "avx2":
            values = _avx2_sums(builder, code_ptrs, streams, nbytes, mask, prefetch_ptrs)
            if len(values) == 1:
                return values[0]
            return context.make_tuple(builder, signature.return_type, values)
        zero16 = ir.Constant(_LANES[512], [0] * 16)
        slots = [
            [
                [cgutils.alloca_once_value(builder, zero16) for _ in range(4)]
                for _ in range(act_rows)
            ]
            for _ in range(code_rows)
        ]
        with cgutils.for_range(builder, builder.udiv(nbytes, const(64))) as loop:
            offset = builder.mul(loop.index, const(64))
            accs = [[[builder.load(x) for x in row] for row in block] for block in slots]
            accs = _emit_step(builder, 512, code_ptrs, streams, offset, mask, accs, prefetch_ptrs)
            for block_slots, block_accs in zip(slots, accs):
                for row_slots, row_accs in zip(block_slots, block_accs):
                    for slot, acc in zip(row_slots, row_accs):
                        builder.store(acc, slot)
        totals = [
            cgutils.alloca_once_value(
                builder, _reduce(builder, 512, [builder.load(x) for x in row])
            )
            for block in slots
            for row in block
        ]
        with builder.if_then(
            builder.icmp_unsigned("!=", builder.urem(nbytes, const(64)), const(0))
        ):
            # rows are whole 128-weight blocks (32 bytes): at most one 32-byte step is left
            offset = builder.sub(nbytes, const(32))
            zero8 = ir.Constant(_LANES[256], [0] * 8)
            start = [[[zero8] * 4 for _ in range(act_rows)] for _ in range(code_rows)]
            accs = _emit_step(builder, 256, code_ptrs, streams, offset, mask, start)
            flat = [row for block in accs for row in block]
            for total, row_accs in zip(totals, flat):
                value = builder.add(builder.load(total), _reduce(builder, 256, row_accs))
                builder.store(value, total)
        values = [builder.load(t) for t in totals]
        if len(values) == 1:
            return values[0]
        return context.make_tuple(builder, signature.return_type, values)

    return intrinsic(typer)


i2_field_dot = _make_field_dot(1, 1)
"""``i2_field_dot(codes, r, t0, seg, xs, n, mask)``: the exact int32
``sum_t sum_s ((codes[r, t0 + t] >> 2 s) & mask) * xs[n, s, t0 + t]`` over ``seg`` bytes (a
multiple of 32), with ``vpdpbusd``."""

i2_field_dot_4rows = _make_field_dot(4, 1)
""":func:`i2_field_dot` of code rows ``r .. r + 3`` with one activation row (the GEMV form:
each loaded activation vector serves four weight rows), a tuple of four int32."""

i2_field_dot_4acts = _make_field_dot(1, 4)
""":func:`i2_field_dot` of one code row with activation rows ``n .. n + 3`` (the GEMM form:
each decoded field serves four activation rows), a tuple of four int32."""


# ------------------------------------------------------------------ the 4 x 4 block (GEMM)
BLOCK_ROWS = 4
"""Weight rows and activation rows of one :func:`i2_field_block` call (16 products)."""


def _sum_lanes_of_each(builder, vectors):
    """``[v_0, ..., v_15]`` (16 x <16 x i32>) -> one <16 x i32> whose lane ``k`` is the sum of
    the lanes of ``v_k``: a tree of pairwise half-swaps (15 adds, 30 shuffles) instead of 16
    separate horizontal sums. At each level every vector holds groups of ``g`` partial sums of
    consecutive inputs; the first halves of the groups of two vectors are added to the second
    halves, which leaves groups of ``g / 2`` covering twice as many inputs."""
    group = 16
    while len(vectors) > 1:
        half = group // 2
        firsts = [j * group + k for j in range(16 // group) for k in range(half)]
        seconds = [j * group + half + k for j in range(16 // group) for k in range(half)]
        merged = []
        for a, b in zip(vectors[0::2], vectors[1::2]):
            lo = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 16),
                                        firsts + [16 + k for k in firsts]))  # fmt: skip
            hi = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 16),
                                        seconds + [16 + k for k in seconds]))  # fmt: skip
            merged.append(builder.add(lo, hi))
        vectors, group = merged, half
    return vectors[0]


def _block_typer(typingctx, codes, r0, t0, seg, xs, n0, mask, out, c0):
    """Typing of :func:`i2_field_block` (argument types, then its code generator)."""
    if not (
        isinstance(codes, types.Array) and codes.ndim == 2 and codes.dtype == types.uint8
        and isinstance(xs, types.Array) and xs.ndim == 3 and xs.dtype == types.int8
        and isinstance(out, types.Array) and out.ndim == 2 and out.dtype == types.int32
    ):  # fmt: skip
        raise numba.core.errors.TypingError(
            "i2_field_block needs 2-D uint8 codes, 3-D int8 streams and a 2-D int32 output, "
            f"got {codes}, {xs} and {out}"
        )
    n = types.intp
    return types.none(codes, n, n, n, xs, n, n, out, n), _block_codegen


def _block_codegen(context, builder, signature, args):
    codes = context.make_array(signature.args[0])(context, builder, args[0])
    xs = context.make_array(signature.args[4])(context, builder, args[4])
    out = context.make_array(signature.args[7])(context, builder, args[7])
    r0, t0, nbytes, n0, c0 = args[1], args[2], args[3], args[5], args[8]
    mask = builder.trunc(args[6], _I8)
    idx = nbytes.type

    def const(value):
        return ir.Constant(idx, value)

    def element(array, ndim, first, last):
        strides = [builder.extract_value(array.strides, d) for d in range(ndim)]
        at = builder.mul(last, strides[-1])
        for index, stride in zip(first, strides):
            at = builder.add(at, builder.mul(index, stride))
        return builder.gep(builder.bitcast(array.data, _I8.as_pointer()), [at])

    rows = range(BLOCK_ROWS)
    code_ptrs = [element(codes, 2, [builder.add(r0, const(j))], t0) for j in rows]
    row_stride = builder.extract_value(codes.strides, 0)
    streams = [[element(xs, 3, [builder.add(n0, const(i)), const(s)], t0) for s in range(4)]
               for i in rows]  # fmt: skip
    out_strides = [builder.extract_value(out.strides, d) for d in range(2)]
    out_base = builder.bitcast(out.data, _I8.as_pointer())

    def store(j, i, value):  # out[i, c0 + j] = value
        at = builder.add(builder.mul(const(i), out_strides[0]),
                         builder.mul(builder.add(c0, const(j)), out_strides[1]))  # fmt: skip
        builder.store(value, builder.bitcast(builder.gep(out_base, [at]), _I32.as_pointer()))

    if ISA == "avx2":
        ahead = builder.mul(row_stride, const(4))  # the weight rows of the next block
        prefetch_ptrs = [builder.gep(ptr, [ahead]) for ptr in code_ptrs]
        values = _avx2_sums(builder, code_ptrs, streams, nbytes, mask, prefetch_ptrs)
        for k, value in enumerate(values):
            store(k // 4, k % 4, value)
        return context.get_dummy_value()
    zero16 = ir.Constant(_LANES[512], [0] * 16)
    slots = [[cgutils.alloca_once_value(builder, zero16) for _ in rows] for _ in rows]
    prefetch = _function(builder, "llvm.prefetch.p0", ir.VoidType(),
                         [_I8.as_pointer(), _I32, _I32, _I32])  # fmt: skip
    with cgutils.for_range(builder, builder.udiv(nbytes, const(64))) as loop:
        offset = builder.mul(loop.index, const(64))
        for ptr in code_ptrs:  # the weight rows of the next block
            ahead = builder.gep(ptr, [builder.add(offset, builder.mul(row_stride, const(4)))])
            builder.call(prefetch, [ahead, ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                                    ir.Constant(_I32, 1)])  # fmt: skip
        accs = [[builder.load(x) for x in row] for row in slots]
        accs = _emit_step(builder, 512, code_ptrs, streams, offset, mask, accs, per_stream=False)
        for row_slots, row_accs in zip(slots, accs):
            for slot, acc in zip(row_slots, row_accs):
                builder.store(acc, slot)
    with builder.if_then(builder.icmp_unsigned("!=", builder.urem(nbytes, const(64)), const(0))):
        offset = builder.sub(nbytes, const(32))  # the trailing 32 bytes (rows are whole blocks)
        zero8 = ir.Constant(_LANES[256], [0] * 8)
        start = [[zero8 for _ in rows] for _ in rows]
        accs = _emit_step(builder, 256, code_ptrs, streams, offset, mask, start, per_stream=False)
        widen = ir.Constant(ir.VectorType(_I32, 16), list(range(16)))  # lanes 8-15 from zeros
        for row_slots, row_accs in zip(slots, accs):
            for slot, acc in zip(row_slots, row_accs):
                wide = builder.shuffle_vector(acc, zero8, widen)
                builder.store(builder.add(builder.load(slot), wide), slot)
    # lane k of the totals: weight row k // 4, activation row k % 4
    totals = _sum_lanes_of_each(builder, [builder.load(x) for row in slots for x in row])
    for j in rows:
        for i in rows:
            store(j, i, builder.extract_element(totals, ir.Constant(_I32, 4 * j + i)))
    return context.get_dummy_value()


i2_field_block = intrinsic(_block_typer)
"""``i2_field_block(codes, r, t0, seg, xs, n, mask, out, c)``: for weight rows ``r + j`` and
activation rows ``n + i`` (``i, j < 4``), ``out[i, c + j] =`` :func:`i2_field_dot` of the pair:
16 products per pass over the bytes, each decoded field serving four activation rows and each
loaded activation vector four weight rows; the 16 sums leave through one lane-sum tree. What
:func:`ternref.packed.i2.dot_i8` runs on batches of four or more rows."""
