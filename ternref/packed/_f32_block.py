"""The float32 GEMM's inner block: six weight rows times 32 activation rows with AVX-512, two
with AVX2.

Why this module exists
----------------------
The float32 GEMM multiplies activations ``X`` (N, K) by a tile of weight rows decoded to
float32, ``W`` (R, K): ``Y[n, r] = sum_k X[n, k] W[r, k]``. Written as plain loops
(:func:`ternref.packed._gemm.tile_matmul_act`) LLVM vectorizes the *reduction over k*: sixteen
dot products at a time, each ending in a horizontal sum, with two vector loads per multiply-add
pair. BLAS kernels do it the other way round, and so does this block: the sum over ``k`` stays a
loop, and each step is an *outer product*::

    for k in 0 .. K-1:
        x0, x1 = X[n0 : n0 + 16, k], X[n0 + 16 : n0 + 32, k]    two vectors of 16 activations
        for i in 0 .. 5:
            w = broadcast(W[r0 + i, k])                            one weight, in every lane
            acc[i][0] += w * x0;  acc[i][1] += w * x1              fused multiply-adds

twelve accumulator vectors that stay in registers for the whole loop, two vector loads and six
scalar broadcasts per twelve fused multiply-adds, and no horizontal sum at all. It needs
``X`` transposed (``xT[k, n] = X[n, k]``, one pass over the activations per product,
:func:`transpose_activations`); the weight tile keeps its row layout.

Numba has no vector types and does not keep array accumulators in registers (written as loops
over small arrays, every multiply-add loads and stores its accumulator: measured at a third of
the speed), so the block is written in LLVM IR with a Numba ``@intrinsic``, as the ``vpdpbusd``
loop of :mod:`ternref.packed._vnni` is. Why six rows and not eight: with sixteen accumulators
LLVM's register allocator spilled some of them to the stack inside the loop in most of the
loops that call the block (55-90 GFLOP/s instead of 210-230, depending on the code around it);
with twelve it did not in any (170-190). Measured on the project's AMD EPYC Zen 5 VM
(2026-12-03, one thread, the MLP's 256-column layer at 352 activation rows).

The sums are float32 fused multiply-adds in the order ``k = 0, 1, ...``: not the plain loop's
order nor NumPy's, so results agree with the twins within the float32 bound of
``tests/packed/kernel_checks.py``, not bit for bit (as with every float32 path).

The AVX2 form
-------------
AVX2 has sixteen 256-bit registers of 8 float32. The panels keep their 32 activation rows (the
layout every caller and the formats' ``dequant_panels`` share), which are four vectors now, so
the block takes :data:`ROWS` = 2 weight rows: eight accumulators, the four activation vectors
and a broadcast, 13 registers. With three rows (twelve accumulators, 17 registers) LLVM
spilled, and the batch-64 GEMM at 4096 took 40.7 ms against 27.2 ms with two; the plain 4 x 4
loop took 41.3 ms (NumPy's sgemm: 16-19 ms). Measured on a 2-core AMD EPYC Zen 2 VM,
2026-12-08, ``bench_kernels.py``: the batch-64 ``i2`` float32 GEMM went from 0.64x / 0.46x /
0.50x NumPy at 1024 / 4096 / 8192 to 0.73-0.78x / 0.62-0.63x / 0.56x.

When it is used
---------------
:data:`AVAILABLE`: Numba compiles (not ``NUMBA_DISABLE_JIT``) for the host CPU, and LLVM reports
AVX-512F for it, or AVX2 and FMA (:data:`ISA`), and ``TERNREF_F32_BLOCK`` is not ``0``.
Otherwise the float32 GEMM and convolution keep the plain loops.

The float32 convolution (:func:`ternref.packed._conv.conv_whole_f32`) uses the same block with
the roles swapped: the decoded weight as panels of 32 output channels is the vector operand and
receptive-field values are broadcast, read in place from the padded input by
:func:`outer_block_gather` (no gathered copy), or from gathered rows by
:func:`outer_block_store` when the weight has several scale groups. As with
``TERNREF_VNNI``, Numba's cache does not key on the variable: compare the two paths with a
separate ``NUMBA_CACHE_DIR`` each.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ternref._jit import njit
from ternref.packed._vnni import intrinsic_available


def _isa() -> str | None:
    if intrinsic_available("TERNREF_F32_BLOCK", ("avx512f",)):
        return "avx512f"
    if intrinsic_available("TERNREF_F32_BLOCK", ("avx2", "fma")):
        return "avx2"
    return None


ISA = _isa()
"""The form of the block: ``"avx512f"`` (vectors of 16 float32, six weight rows), ``"avx2"``
(vectors of 8, two weight rows: see the module docstring) or ``None`` (no block)."""

AVAILABLE = ISA is not None
"""Whether the float32 GEMM runs :func:`outer_block` (see the module docstring)."""

LANES = 8 if ISA == "avx2" else 16
"""float32 lanes of one vector register."""

COLS = 32
"""Activation rows of one block (``COLS / LANES`` vectors: two zmm, or four ymm)."""

VECTORS = COLS // LANES
"""Vector registers one panel row of 32 activations fills."""

ROWS = 2 if ISA == "avx2" else 6
"""Weight rows of one block: ``ROWS * VECTORS`` accumulators (12 with AVX-512, 8 with AVX2)."""

_F32 = ir.FloatType()
_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_VEC = ir.VectorType(_F32, LANES)


def transpose_activations(x2d: np.ndarray, width: int | None = None) -> np.ndarray:
    """The activations as panels for :func:`outer_block`: ``xt`` float32 (P * width, 32) with
    ``xt[p width + k, j] = x2d[32 p + j, k]`` (P = N / 32 rounded up, zeros past row N and, for
    ``width`` above the K columns of ``x2d``, past column K; ``width`` defaults to K). Panel
    ``p`` holds activation rows ``32 p .. 32 p + 31`` column by column, so the block reads 128
    contiguous bytes per step; a plain transposed copy (K, N) read them 4 N bytes apart, and at
    N = 359 those rows fell into a few cache sets of L1 (the block ran at 0.53 ms against 0.37
    ms for the plain loop on the MLP's layer, measured 2026-12-03). ``width`` lets the float32
    GEMM of a weight with one scale group skip padding the activations: the panels have the
    padded row length the decoded tiles have, and the rows past K are never read."""
    n, k = x2d.shape
    width = k if width is None else int(width)
    if width < k:
        raise ValueError(f"width must be at least the {k} columns of x2d, got {width}")
    panels = -(-n // COLS)
    xt = np.empty((panels * width, COLS), np.float32)
    fill_panels(np.ascontiguousarray(x2d, dtype=np.float32), xt)
    return xt


STRIDED_READS_BELOW = 512
"""Up to this many columns :func:`fill_panels` reads 32 rows of ``x2d`` at once (contiguous
stores); with more, it copies row by row into strided stores (see there)."""


@njit(nogil=True)
def fill_panels(x2d, xt):
    """The panels of :func:`transpose_activations` written into ``xt`` (P * width, 32), the
    width taken from ``xt``. Up to :data:`STRIDED_READS_BELOW` columns, panel row by panel row
    (32 strided reads, one contiguous store of 128 bytes): 359 x 256 in 23 against 36 us row by
    row; with more columns the 32 read streams cost more than the strided stores (64 x 4096: 224
    against 160 us; with a NumPy forward between calls, measured 2026-12-03)."""
    n, k = x2d.shape
    panels = -(-n // COLS)
    width = xt.shape[0] // max(panels, 1)
    for p in range(panels):
        panel = xt[p * width : (p + 1) * width]
        rows = min(COLS, n - p * COLS)
        block = x2d[p * COLS : p * COLS + rows]
        if k > STRIDED_READS_BELOW:
            for j in range(rows):
                src = block[j]
                for t in range(k):
                    panel[t, j] = src[t]
            for j in range(rows, COLS):
                for t in range(k):
                    panel[t, j] = np.float32(0.0)
        else:
            for t in range(k):
                dst = panel[t]
                if rows == COLS:  # a constant trip count: LLVM vectorizes the strided reads
                    for j in range(COLS):
                        dst[j] = block[j, t]
                else:
                    for j in range(rows):
                        dst[j] = block[j, t]
                    for j in range(rows, COLS):
                        dst[j] = np.float32(0.0)
        for t in range(k, width):
            panel[t, :] = np.float32(0.0)


def _element(context, builder, array_type, array, indices):
    """``i8*`` to ``array[indices]`` (strides in bytes, any layout)."""
    arr = context.make_array(array_type)(context, builder, array)
    offset = None
    for d, index in enumerate(indices):
        term = builder.mul(index, builder.extract_value(arr.strides, d))
        offset = term if offset is None else builder.add(offset, term)
    return builder.gep(builder.bitcast(arr.data, _I8.as_pointer()), [offset])


def _block_typer(typingctx, xt, x0, tile, r0, length, out):
    """Typing of :func:`outer_block` (argument types, then its code generator)."""
    for name, arr in (("xt", xt), ("tile", tile), ("out", out)):
        if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.dtype == types.float32):
            raise numba.core.errors.TypingError(
                f"outer_block needs 2-D float32 arrays, got {name} = {arr}"
            )
    n = types.intp
    return types.none(xt, n, tile, n, n, out), _block_codegen


def _accumulate(context, builder, xt_type, xt, x0, tile_type, tile, r0, length, gather=None):
    """The loop of the block: the ``2 ROWS`` accumulators (as allocas, ``[i][h]``: weight row
    ``r0 + i``, lanes ``16 h ..`` of the panel starting at row ``x0`` of ``xt``) after
    ``length`` steps. With ``gather = (bases_type, bases, index_type, index)`` the broadcast
    side is not the rows of ``tile`` but, for step ``k``, ``tile[bases[r0 + i] + index[k]]``
    (``tile`` a 1-D array: :func:`outer_block_gather`)."""
    idx = length.type
    xt_arr = context.make_array(xt_type)(context, builder, xt)
    xt_row_stride = builder.extract_value(xt_arr.strides, 0)
    x_first = _element(context, builder, xt_type, xt, [x0, ir.Constant(idx, 0)])
    if gather is None:
        w_rows = [
            builder.bitcast(
                _element(
                    context,
                    builder,
                    tile_type,
                    tile,
                    [builder.add(r0, ir.Constant(idx, i)), ir.Constant(idx, 0)],
                ),
                _F32.as_pointer(),
            )  # fmt: skip
            for i in range(ROWS)
        ]
    else:  # the receptive fields of six positions, read in place through the column offsets
        bases_type, bases, index_type, index = gather
        starts = [
            builder.load(
                builder.bitcast(
                    _element(
                        context, builder, bases_type, bases, [builder.add(r0, ir.Constant(idx, i))]
                    ),
                    ir.IntType(64).as_pointer(),
                )
            )  # fmt: skip
            for i in range(ROWS)
        ]
        w_rows = [
            builder.bitcast(_element(context, builder, tile_type, tile, [start]), _F32.as_pointer())
            for start in starts
        ]
        offsets = builder.bitcast(
            _element(context, builder, index_type, index, [ir.Constant(idx, 0)]),
            ir.IntType(64).as_pointer(),
        )
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]), f"llvm.fma.v{LANES}f32"
    )
    zero = ir.Constant(_VEC, [0.0] * LANES)
    undef = ir.Constant(_VEC, ir.Undefined)
    splat = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)
    # accumulators as allocas: LLVM's mem2reg keeps them in registers across the loop
    slots = [
        [cgutils.alloca_once_value(builder, zero) for _ in range(VECTORS)] for _ in range(ROWS)
    ]
    with cgutils.for_range(builder, length) as loop:
        k = loop.index
        x_row = builder.bitcast(builder.gep(x_first, [builder.mul(k, xt_row_stride)]),
                                _VEC.as_pointer())  # fmt: skip
        x_vectors = [builder.load(builder.gep(x_row, [ir.Constant(_I32, h)]), align=4)
                     for h in range(VECTORS)]  # fmt: skip
        column = k if gather is None else builder.load(builder.gep(offsets, [k]))
        for i in range(ROWS):
            w = builder.load(builder.gep(w_rows[i], [column]))
            w_all = builder.shuffle_vector(
                builder.insert_element(undef, w, ir.Constant(_I32, 0)), undef, splat
            )
            for h in range(VECTORS):
                acc = builder.load(slots[i][h])
                builder.store(builder.call(fma, [w_all, x_vectors[h], acc]), slots[i][h])
    return slots


def _block_codegen(context, builder, signature, args):
    xt_type, _, tile_type, _, _, out_type = signature.args
    xt, x0, tile, r0, length, out = args
    idx = length.type
    slots = _accumulate(context, builder, xt_type, xt, x0, tile_type, tile, r0, length)
    for i in range(ROWS):
        for h in range(VECTORS):
            at = _element(context, builder, out_type, out,
                          [ir.Constant(idx, i), ir.Constant(idx, LANES * h)])  # fmt: skip
            builder.store(builder.load(slots[i][h]), builder.bitcast(at, _VEC.as_pointer()),
                          align=4)  # fmt: skip
    return context.get_dummy_value()


def _store_typer(typingctx, xt, x0, tile, r0, length, y, n0, col0, bias, has_bias, relu):
    """Typing of :func:`outer_block_store`."""
    for name, arr, ndim in (("xt", xt, 2), ("tile", tile, 2), ("y", y, 2), ("bias", bias, 1)):
        if not (isinstance(arr, types.Array) and arr.ndim == ndim and arr.dtype == types.float32):
            raise numba.core.errors.TypingError(
                f"outer_block_store needs {ndim}-D float32 {name}, got {arr}"
            )
    n, b = types.intp, types.boolean
    return types.none(xt, n, tile, n, n, y, n, n, bias, b, b), _store_codegen


def _store_codegen(context, builder, signature, args):
    xt_type, _, tile_type, _, _, y_type, _, _, bias_type, _, _ = signature.args
    xt, x0, tile, r0, length, y, n0, col0, bias, has_bias, relu = args
    slots = _accumulate(context, builder, xt_type, xt, x0, tile_type, tile, r0, length)
    _store_transposed(context, builder, slots, y_type, y, n0, col0, bias_type, bias, has_bias,
                      relu)  # fmt: skip
    return context.get_dummy_value()


def _store_transposed(context, builder, slots, y_type, y, n0, col0, bias_type, bias, has_bias,
                      relu):  # fmt: skip
    """The epilogue of :func:`outer_block_store`: ``y[n0 + j, col0 + i] = act(acc[i][j] +
    bias[col0 + i])``, ROWS consecutive floats per row of ``y``."""
    idx = n0.type
    v8 = ir.VectorType(_F32, ROWS)
    zero8 = ir.Constant(v8, [0.0] * ROWS)
    truth = ir.Constant(has_bias.type, 0)
    bias_slot = cgutils.alloca_once_value(builder, zero8)
    with builder.if_then(builder.icmp_unsigned("!=", has_bias, truth)):
        at = _element(context, builder, bias_type, bias, [col0])
        builder.store(builder.load(builder.bitcast(at, v8.as_pointer()), align=4), bias_slot)
    bias_vector = builder.load(bias_slot)
    apply_relu = builder.icmp_unsigned("!=", relu, ir.Constant(relu.type, 0))
    accs = [[builder.load(slots[i][h]) for h in range(VECTORS)] for i in range(ROWS)]
    for h in range(VECTORS):
        for j in range(LANES):
            # the weight rows' sums for activation row n0 + LANES h + j: a piece of one row of y
            v = ir.Constant(v8, ir.Undefined)
            for i in range(ROWS):
                lane = builder.extract_element(accs[i][h], ir.Constant(_I32, j))
                v = builder.insert_element(v, lane, ir.Constant(_I32, i))
            v = builder.fadd(v, bias_vector)
            clipped = builder.select(builder.fcmp_ordered("<", v, zero8), zero8, v)
            v = builder.select(apply_relu, clipped, v)  # NaN stays NaN, as with np.maximum
            row = builder.add(n0, ir.Constant(idx, LANES * h + j))
            at = _element(context, builder, y_type, y, [row, col0])
            builder.store(v, builder.bitcast(at, v8.as_pointer()), align=4)


def _gather_typer(typingctx, xt, x0, xflat, bases, r0, index, length, y, n0, col0):
    """Typing of :func:`outer_block_gather`."""
    checks = (("xt", xt, 2, types.float32), ("xflat", xflat, 1, types.float32),
              ("bases", bases, 1, types.int64), ("index", index, 1, types.int64),
              ("y", y, 2, types.float32))  # fmt: skip
    for name, arr, ndim, dtype in checks:
        if not (isinstance(arr, types.Array) and arr.ndim == ndim and arr.dtype == dtype):
            raise numba.core.errors.TypingError(
                f"outer_block_gather needs {ndim}-D {dtype} {name}, got {arr}"
            )
    n = types.intp
    return types.none(xt, n, xflat, bases, n, index, n, y, n, n), _gather_codegen


def _gather_codegen(context, builder, signature, args):
    xt_type, _, xflat_type, bases_type, _, index_type, _, y_type, _, _ = signature.args
    xt, x0, xflat, bases, r0, index, length, y, n0, col0 = args
    gather = (bases_type, bases, index_type, index)
    slots = _accumulate(context, builder, xt_type, xt, x0, xflat_type, xflat, r0, length, gather)
    false = ir.Constant(ir.IntType(1), 0)
    _store_transposed(context, builder, slots, y_type, y, n0, col0, y_type, y, false, false)
    return context.get_dummy_value()


outer_block = intrinsic(_block_typer)
"""``outer_block(xt, x0, tile, r0, length, out)``: ``out[i, j] = sum_{k < length}
tile[r0 + i, k] * xt[x0 + k, j]`` for ``i <`` :data:`ROWS`, ``j <`` :data:`COLS` (float32
fused multiply-adds, ``k`` in order): ``xt`` holds panels of 32 activation rows
(:func:`transpose_activations`),
``x0`` is the first row of one. ``tile`` rows ``r0 .. r0 + ROWS - 1`` must exist
(the caller pads), the last axis of ``tile`` and ``xt`` must be contiguous, ``out`` a
(:data:`ROWS`, 32) float32 array (or more rows) with contiguous rows."""

outer_block_store = intrinsic(_store_typer)
"""``outer_block_store(xt, x0, tile, r0, length, y, n0, col0, bias, has_bias, relu)``: the sums
of :func:`outer_block`, plus ``bias[col0 + i]`` when ``has_bias``, through ReLU when ``relu``
(``v < 0 -> 0``, NaN kept), stored straight into ``y[n0 + j, col0 + i]`` (``y`` float32 with
contiguous rows; ROWS consecutive floats per activation row, transposed in registers). For
whole blocks only: rows ``n0 .. n0 + 31`` of ``y`` and ``col0 .. col0 + ROWS - 1`` must
exist."""

outer_block_gather = intrinsic(_gather_typer)
"""``outer_block_gather(xt, x0, xflat, bases, r0, index, length, y, n0, col0)``: the block of
:func:`outer_block_store` (no bias, no ReLU) with its broadcast operand read in place:
``y[n0 + j, col0 + i] = sum_{k < length} xflat[bases[r0 + i] + index[k]] * xt[x0 + k, j]``.
For a convolution: ``xflat`` the padded input, ``bases`` the first input element of each output
position's window, ``index`` the offsets of the receptive field's columns
(:func:`ternref.packed._conv.conv_geometry`'s ``src``, every one of the first ``length`` real).
``xflat``, ``bases`` and ``index`` must be contiguous; ``bases[r0 .. r0 + ROWS - 1]`` must exist
and point at whole windows."""
