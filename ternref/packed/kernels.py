"""``linear(x, p)``: the packed product ``x @ W_hat.T``, and the int8 activation quantizer.

Which kernel runs
-----------------
Fewer than ``GEMM_MIN_BATCH`` rows of ``x``: the format's GEMV kernel (``dot_f32`` / ``dot_i8``)
reads the packed bytes directly. The activations are first laid out as *streams*
(:func:`prepare_streams`): weight ``l`` of a row is decoded from byte ``t`` of the row, field
``s``, so ``x[l]`` is written to ``xs[s, t]``; then one byte of codes meets its activations at
the same position ``t`` of every stream, and the inner loop is a single reduction over
contiguous arrays, which LLVM vectorizes (with ``vpmaddwd`` / ``vpdpwssd`` for int8; ``i2``
with AVX-512 VNNI runs the ``vpdpbusd`` loop of :mod:`ternref.packed._vnni` instead, and with
AVX2 alone its ``vpmaddubsw`` form).

More rows: the format's GEMM kernel (``gemm_f32`` / ``gemm_i8``) decodes a tile of weight rows
at a time (values for float32 activations, signed codes for int8) and multiplies it with a
register-blocked product (:mod:`ternref.packed._gemm`; for float32 on a CPU with AVX-512 or
AVX2, the outer-product block of :mod:`ternref.packed._f32_block` on the activations transposed
into panels). A GEMM never expands the packed weight whole; a convolution whose decoded weight
fits ``WHOLE_WEIGHT_BYTES`` (1 MiB) decodes it once for the call (with float32 activations and
the block: as panels of output channels for :func:`ternref.packed._conv.conv_whole_f32`, see
:func:`run_conv`) and frees it after; nothing decoded is kept between calls. The exceptions,
on a CPU with AVX-512 VNNI or AVX2 (:mod:`ternref.packed._vnni`): a format whose
``STREAM_GEMM_I8`` is true (``i2``) runs int8 products of every batch size through its stream
kernel ``dot_i8``, whose byte dot products (64 or 32 per instruction) beat the float32 tile
product;
a format whose ``I2_TILE_GEMM_I8`` is true (``tq1``) re-encodes each tile of rows as ``i2``
bytes and runs the same kernel (:func:`_gemm_i8_i2_tiles`; its convolution re-encodes the
whole weight for the call, :func:`run_conv`).

``activations="int8"`` quantizes each row of ``x`` to int8, absmax per row, BitNet-style
(:func:`quantize_activations`; the kernels do the same inside :func:`prepare_streams` /
:func:`prepare_rows`); the integer sums are exact and the scales are applied in float64, so the
int8 kernels and their NumPy twins agree bit for bit. The float32 kernels reassociate their
sums (as BLAS does) and agree with the twins within float32 rounding.

Threads: the work is cut into chunks of output rows (GEMV, and GEMM with many weight rows) or of
activation rows (GEMM with few weight rows) and run by :mod:`ternref.packed._threads`, which
does not fight NumPy's BLAS threads. ``backend="numpy"`` runs the NumPy twins of the same
algorithms, serially (slow; for tests and readers). Computation is float32 whatever the scale
dtype; the output has the dtype of ``x``.

References
----------
Ma, S., Wang, H., et al. (2024). The era of 1-bit LLMs. arXiv:2402.17764 (absmax int8
activations, per token).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ternref._validate import describe, float_array, one_of
from ternref.packed import _threads
from ternref.packed._conv import conv_whole_f32
from ternref.packed._f32_block import AVAILABLE as F32_BLOCK
from ternref.packed._f32_block import COLS as F32_COLS
from ternref.packed._f32_block import ROWS as F32_ROWS
from ternref.packed._f32_block import transpose_activations
from ternref.packed._gemm import (
    INT8_MAX,
    WHOLE_WEIGHT_BYTES,
    X_BLOCK,
    add_group_numpy,
    layout_runs,
    scatter_f32,
    scatter_i8,
    scatter_i8_runs,
)
from ternref.packed.packed import Packed, pad_activations, segments

GEMM_MIN_BATCH = 8
"""Batches at least this large go through the tiled GEMM kernels."""

SERIAL_BELOW = _threads.SERIAL_BELOW
"""Products with fewer multiply-adds run on the calling thread alone (see ``_threads``)."""

SERIAL_VNNI_GEMV = True
"""Documents a choice made in :func:`product`: the ``vpdpbusd`` int8 GEMV (``i2`` with
``STREAM_GEMM_I8``) always runs on the calling thread. It is fast enough that waking a helper
thread costs more than it saves. Measured on the project's 2-core AMD EPYC VM (2026-12-02):
4096 x 4096 with the codes in cache took 0.155 ms on one thread and 0.27 ms on two; in
``bench_kernels.py`` (interleaved with NumPy) it ran 7.5-7.9x NumPy on one thread against
4.1-6.3x on two at 4096, and 5.9-7.0x against 5.4-5.5x at 8192. Batches of 8 rows and more
still use the helper threads (batch 64 at 4096: 7.0 ms on one thread, 4.4 ms on two). The same
holds for the AVX2 form on a 2-core AMD EPYC Zen 2 VM (2026-12-08), a NumPy GEMV before each
call, median ms one thread against two: 0.455 against 0.54-0.62 at 4096, 1.40 against
1.58-1.61 at 8192."""


STREAM_GEMM_BY_ACTIVATIONS = True
"""Documents a choice made in :func:`product`: the ``vpdpbusd`` int8 GEMM (``STREAM_GEMM_I8``)
splits a batch between threads by *activation* rows, every thread taking every weight row. Split
by weight rows, as the other stream products are, each thread streamed the whole batch's
activations once per chunk of weight rows: on the 2-core AMD EPYC Zen 5 VM (2026-12-02), 512 x
1600 at batch 1000 took 3.8 ms on one thread and 5.5 ms on two that way (two threads by hand,
by activation rows: 2.0 ms)."""


SERIAL_VNNI_GEMM_BELOW = 1 << 28
"""The ``vpdpbusd`` int8 GEMM (``STREAM_GEMM_I8``) runs on the calling thread alone below this
many multiply-adds. Interleaved with NumPy products (as in every model whose first and last
layers stay in full precision), OpenBLAS's threads keep spinning on the other core after each
call, and a helper thread shares that core instead of adding one. Measured on the 2-core AMD
EPYC Zen 5 VM (2026-12-02), median ms, one thread against two, a NumPy product before each
call: 256 x 256 at batch 359 (the MLP's packed layer, 23.5 M) 0.21-0.27 against 0.36-0.46;
512 x 512 at 359 (94 M) 0.49-0.65 against 0.71-0.82; 1024 x 1024 at 64 (67 M) 0.30 against
0.36; 2048 x 2048 at 64 (268 M) 1.02-1.17 against 1.07-1.34. Above it the helpers stay: without
a NumPy call in between, 512 x 1600 at batch 1000 (819 M) took 4.0-4.5 ms on one thread and
2.9-3.1 ms on two. With the AVX2 form on the Zen 2 VM (2026-12-08), the MLP's packed layer in
its model took 0.63-0.65 ms on one thread and 0.71-0.72 on two."""


def quantize_activations(x2d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absmax int8 quantization per row: ``xq = clip(rint(x * (127 / max|x|)), -127, 127)``.

    In float32, as BitNet b1.58's released code computes it (``s = 127 / max|x|`` rounded to
    float32, the product rounded to float32, then rounding half to even, ``np.rint``). An all-zero
    row gets ``xq = 0`` and scale 0.

    Returns
    -------
    xq : int8 ndarray (N, K)
    inv_s : float64 ndarray (N,)
        ``max|x| / 127``, so that ``x ~= xq * inv_s``.
    """
    x32 = np.asarray(x2d, dtype=np.float32)
    amax = np.max(np.abs(x32), axis=1)
    s = np.divide(np.float32(INT8_MAX), amax, out=np.zeros_like(amax), where=amax > 0)
    xq = np.clip(np.rint(x32 * s[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return xq, amax.astype(np.float64) / INT8_MAX


# ------------------------------------------------------------------------ activation layouts
def _layout(p: Packed, mod=None) -> dict:
    """Where each logical column ``k`` of ``x`` goes (cached on ``p``), for the packed rows of
    ``p``, or (``mod`` a format module) for the same weight laid out in format ``mod``: the
    ``tq1`` int8 GEMM multiplies tiles re-encoded as ``i2`` (:func:`_gemm_i8_i2_tiles`).

    ``plain[k]``: its column in the padded layout (:func:`ternref.packed.packed.pad_activations`);
    ``stream[k]``: its flat index ``s * T + t`` in the GEMV streams (``T`` bytes per row);
    ``group[k]``: its scale group.
    """
    mod = p.module if mod is None else mod
    key = "layout" if mod is p.module else f"layout {mod.__name__}"
    if key not in p._cache:
        m, k = p.shape
        n_groups, segment = segments(k, p.granularity, p.group_size, mod.BLOCK)
        cols = np.arange(k)
        if n_groups == 1:
            group, plain = np.zeros(k, np.int64), cols
        else:
            group = cols // p.group_size
            plain = group * segment + cols % p.group_size
        s, t = mod.stream_index(plain)
        width = n_groups * segment
        per_stream = width // mod.STREAMS
        p._cache[key] = {
            "plain": np.ascontiguousarray(plain, dtype=np.int64),
            "stream": np.ascontiguousarray(s * per_stream + t, dtype=np.int64),
            "stream_runs": layout_runs(s * per_stream + t, group),
            "group": np.ascontiguousarray(group, dtype=np.int64),
            "n_groups": n_groups,
            "width": width,
            "stream_shape": (mod.STREAMS, per_stream),
        }
    return p._cache[key]


def _scatter_numpy(x2d, dest, group, n_groups, width, int8: bool, dtype=None):
    """NumPy twin of :func:`~ternref.packed._gemm.scatter_f32` / ``scatter_i8``."""
    n = x2d.shape[0]
    if int8:
        values, inv_s = quantize_activations(x2d)
        sums = values.astype(np.int64)
        values = values.astype(dtype or np.int8)
    else:
        values, inv_s = x2d.astype(np.float32), None
        sums = values.astype(np.float64)
    out = np.zeros((n, width), values.dtype)
    out[:, dest] = values
    xsum = np.zeros((n, n_groups), sums.dtype)
    for g in range(n_groups):
        xsum[:, g] = sums[:, group == g].sum(axis=1)
    return out, xsum, inv_s


def _prepare(p: Packed, x2d, int8: bool, key: str, backend: str, lay=None):
    lay = lay or p._cache.get("layout") or _layout(p)
    n, g, width = x2d.shape[0], lay["n_groups"], lay["width"]
    # the GEMV kernels read int8 streams; the GEMM reads the same integers as float32
    qtype = np.int8 if key == "stream" else np.float32
    if backend == "numpy":
        return _scatter_numpy(x2d, lay[key], lay["group"], g, width, int8, qtype)
    if int8:
        out = np.empty((n, width), qtype)
        xsum = np.empty((n, g), np.int64)
        inv_s = np.empty(n, np.float64)
        if key == "stream":  # contiguous runs: the vectorized scatter
            x32 = np.ascontiguousarray(x2d, dtype=np.float32)
            scatter_i8_runs(x32, lay["stream_runs"], out, xsum, inv_s)
        else:
            scatter_i8(x2d, lay[key], lay["group"], out, xsum, inv_s)
        return out, xsum, inv_s
    out = np.empty((n, width), np.float32)
    xsum = np.empty((n, g), np.float64)
    scatter_f32(x2d, lay[key], lay["group"], out, xsum)
    return out, xsum, None


def prepare_streams(p: Packed, x2d, int8: bool, backend: str = "numba", lay=None):
    """The GEMV kernels' input: ``xs`` (N, STREAMS, L / STREAMS), group sums (N, G), and (int8)
    the per-row scale ``inv_s`` (N,); for the layout ``lay`` of :func:`_layout` if given."""
    lay = lay or _layout(p)
    out, xsum, inv_s = _prepare(p, x2d, int8, "stream", backend, lay)
    return out.reshape(out.shape[0], *lay["stream_shape"]), xsum, inv_s


def prepare_rows(p: Packed, x2d, int8: bool, backend: str = "numba"):
    """The GEMM kernels' input: ``x`` in the padded layout (N, L) float32 (with int8 activations
    the quantized integers, their group sums and ``inv_s``; the float32 GEMM needs neither).

    The jitted path pads with NumPy (no copy when there is nothing to pad) and quantizes the
    padded rows in place with :func:`ternref.packed._gemm.quantize_rows` (zeros in the padding
    change neither ``max|x|`` nor the sums)."""
    if backend == "numpy":
        return _prepare(p, x2d, int8, "plain", backend)
    from ternref.packed._gemm import quantize_rows

    x32 = np.ascontiguousarray(x2d, dtype=np.float32)
    xp = x32 if p.padded_length == p.shape[1] else pad_activations(x32, p)
    if not int8:
        return xp, None, None
    if xp is x2d:
        xp = xp.copy()  # quantized in place: never overwrite the caller's array
    n = xp.shape[0]
    xsum = np.empty((n, p.n_groups), np.int64)
    inv_s = np.empty(n, np.float64)
    quantize_rows(xp, n, p.segment, xsum, inv_s)
    return xp, xsum, inv_s


# ------------------------------------------------------------------------------ the product
def _data(p: Packed) -> tuple:
    return tuple(p.arrays[name] for name in p.module.ARRAYS)


def linear(x, p: Packed, activations: str = "float32", *, backend: str = "numba") -> np.ndarray:
    """``x @ W_hat.T`` with ``W_hat = unpack(p).dense()`` viewed as ``(M, K)``, from packed codes.

    Parameters
    ----------
    x : float ndarray, shape (K,) or (N, K)
        Activations (float32 or float64; computed in float32).
    p : Packed
    activations : {"float32", "int8"}
        ``"int8"`` quantizes each row of ``x`` (absmax) and accumulates exact integers.
    backend : {"numba", "numpy"}
        Jitted kernels or their NumPy twins.

    Returns
    -------
    ndarray of shape (M,) or (N, M), dtype of ``x``.
    """
    if not isinstance(p, Packed):
        raise TypeError(f"p must be a ternref.packed.Packed, got {describe(p)}")
    x = float_array(x, "x", ndim=(1, 2))
    one_of(activations, "activations", ("float32", "int8"))
    one_of(backend, "backend", ("numba", "numpy"))
    k = p.shape[1]
    if x.shape[-1] != k:
        raise ValueError(
            f"x must have {k} features (the K of the packed weight {p.shape}), got shape {x.shape}"
        )
    x2d = x.reshape(1, k) if x.ndim == 1 else x
    y = product(p, x2d, activations == "int8", backend)
    out = y if x.ndim == 2 else y[0]
    return out.astype(x.dtype, copy=False)


def product(
    p: Packed, x2d: np.ndarray, int8: bool, backend: str = "numba", y=None, bias=None,
    relu: bool = False,
) -> np.ndarray:  # fmt: skip
    """``act(x2d @ W_hat.T + bias)`` as float32 (N, M), without argument checks (the layers'
    fast path); ``act`` is ReLU when ``relu``.

    ``x2d`` must be a 2-D float array with ``p.shape[1]`` columns; ``y``, if given, a float32
    (N, M) array to write into; ``bias`` float32 (M,) or None.
    """
    n = x2d.shape[0]
    m = p.shape[0]
    if y is None:
        y = np.empty((n, m), np.float32)
    if n < GEMM_MIN_BATCH and backend == "numba":
        gemv = _small_gemv(p, int8, bias, relu)
        if gemv is not None and (
            n * gemv[3] < _threads.SERIAL_BELOW
            or _threads.get_num_threads() == 1
            or (int8 and getattr(p.module, "STREAM_GEMM_I8", False))  # see SERIAL_VNNI_GEMV
        ):
            gemv[0](*gemv[1], x2d, *gemv[2], y)
            return y
    sc = p.kernel_scales()
    asym = not p.symmetric
    has_offset = p.offset is not None
    mod = p.module
    data = _data(p)
    if (
        int8
        and backend == "numba"
        and n >= GEMM_MIN_BATCH
        and getattr(mod, "I2_TILE_GEMM_I8", False)
    ):
        return _gemm_i8_i2_tiles(p, x2d, bias, relu, y)
    stream_gemm = int8 and backend == "numba" and getattr(mod, "STREAM_GEMM_I8", False)
    if n < GEMM_MIN_BATCH or stream_gemm:
        has_bias = bias is not None
        b = bias if has_bias else _NO_BIAS
        twin = "_numpy" if backend == "numpy" else ""
        chunks = [(0, m)] if twin else _threads.plan(m, n * p.padded_length)
        kind = "i8" if int8 else "f32"
        xs, xsum, inv_s = prepare_streams(p, x2d, int8, backend)
        zeros = np.zeros(
            (n, m, p.n_groups) if asym else (0, 0, 0), np.int32 if int8 else np.float32
        )
        zeros_kernel = getattr(mod, f"zeros_{kind}{twin}")
        dot_kernel = getattr(mod, f"dot_{kind}{twin}")
        if stream_gemm and n >= GEMM_MIN_BATCH:  # STREAM_GEMM_BY_ACTIVATIONS, SERIAL_VNNI_...
            per_row = m * p.padded_length
            serial = n * per_row < SERIAL_VNNI_GEMM_BELOW
            # chunks of whole passes of mod.ROWS_PER_PASS activation rows
            parts = [(0, n)] if serial else _threads.plan(n, per_row, mod.ROWS_PER_PASS)

            def work(i):
                a0, a1 = parts[i]
                z = zeros[a0:a1]
                if asym:
                    zeros_kernel(*data, xs[a0:a1], 0, m, z)
                dot_kernel(*data, xs[a0:a1], xsum[a0:a1], inv_s[a0:a1], sc["sc"], z, asym,
                           has_offset, b, has_bias, relu, 0, m, y[a0:a1])  # fmt: skip

            _threads.parallel_chunks(work, len(parts))
            return y
        if asym:  # Z = sum [c = 0] x, a pass of its own (see i2.dot_f32)
            _threads.run(zeros_kernel, (*data, xs), chunks, zeros)
        scales = (inv_s, sc["sc"]) if int8 else (sc["sc"],)
        args = (*data, xs, xsum, *scales, zeros, asym, has_offset, b, has_bias, relu)
        _threads.run(dot_kernel, args, chunks, y)
        return y
    if not int8 and backend == "numba" and p.n_groups == 1:
        # one scale group: the padding is at the end of every row and the tile products stop
        # at the last real column (n_cols below), so the activations need no padded copy
        xp, xsum, inv_s = np.ascontiguousarray(x2d, dtype=np.float32), None, None
    else:
        xp, xsum, inv_s = prepare_rows(p, x2d, int8, backend)
    if backend == "numpy":
        if int8:
            _gemm_i8_numpy(p, xp, xsum, inv_s, sc, asym, has_offset, y)
        else:
            _gemm_f32_numpy(p, xp, sc["lut"], y)
    else:
        # one scale group: the padding is at the end of every row, zero in xp, left out
        n_cols = p.shape[1] if p.n_groups == 1 else p.padded_length
        if int8:
            kernel = mod.gemm_i8
            luts = (sc["code_lut"], sc["abs_lut"])
            args = (*data, xp, xsum, inv_s, sc["sc"], *luts, asym, has_offset, n_cols)
        else:  # bias and ReLU in the tile stores
            kernel = mod.gemm_f32
            has_bias = bias is not None
            b = bias if has_bias else _NO_BIAS
            # the float32 block reads the activations transposed (ternref.packed._f32_block)
            xt = transpose_activations(xp, p.padded_length) if F32_BLOCK else _NO_XT
            args = (*data, xp, xt, sc["lut"], n_cols, b, has_bias, relu)
        _threads.run(kernel, args, _gemm_chunks(m, n, p.padded_length), y)
        if not int8:
            return y
    if bias is not None:
        y += bias
    if relu:
        np.maximum(y, 0, out=y)
    return y


_NO_BIAS = np.zeros(0, np.float32)
_NO_XT = np.zeros((0, 0), np.float32)  # gemm_f32's transposed activations, unused without the block


def _gemm_i8_i2_tiles(p: Packed, x2d, bias, relu: bool, y) -> np.ndarray:
    """The int8 GEMM of a format with ``I2_TILE_GEMM_I8`` (``tq1`` with ``i2``'s byte dot
    products, :mod:`ternref.packed._vnni`): the
    activations are quantized into ``i2``'s streams (:func:`_layout` for ``i2``), and the
    format's ``gemm_i8_i2`` re-encodes each tile of weight rows as ``i2`` bytes and multiplies
    it with ``i2``'s ``vpdpbusd`` kernels: on the calling thread alone below
    :data:`SERIAL_VNNI_GEMM_BELOW` multiply-adds (as ``i2``'s own), else in chunks of weight
    rows (each thread re-encodes only its own rows)."""
    from ternref.packed import i2

    lay = _layout(p, i2)
    n, m = x2d.shape[0], p.shape[0]
    xs, xsum, inv_s = prepare_streams(p, x2d, True, lay=lay)
    asym = not p.symmetric
    zeros = np.zeros((n, m, lay["n_groups"]) if asym else (0, 0, 0), np.int32)
    has_bias = bias is not None
    args = (*_data(p), xs, xsum, inv_s, p.kernel_scales()["sc"], zeros, asym,
            p.offset is not None, bias if has_bias else _NO_BIAS, has_bias, relu)  # fmt: skip
    per_row = n * lay["width"]
    serial = m * per_row < SERIAL_VNNI_GEMM_BELOW
    chunks = [(0, m)] if serial else _threads.plan(m, per_row, 4)
    _threads.run(p.module.gemm_i8_i2, args, chunks, y)
    return y


def _small_gemv(p: Packed, int8: bool, bias, relu: bool):
    """``(kernel, head, tail, work)`` such that ``kernel(*head, x2d, *tail, y)`` is the whole
    product of a small batch in one serial call (``gemv_f32`` / ``gemv_i8``: stream layout,
    zero counts and dot products; ``work`` = multiply-adds per activation row), built once per
    (activations, bias, ReLU) and kept with ``p``: at a few microseconds a product, looking up
    the layout, scales and flags again costs as much as the arithmetic. ``None`` for a format
    without a fused GEMV."""
    key = ("gemv", int8, relu)
    entry = p._cache.get(key)
    if entry is None or entry[0] is not bias:
        kernel = getattr(p.module, "gemv_i8" if int8 else "gemv_f32", None)
        if kernel is None:
            return None
        lay = _layout(p)
        has_bias = bias is not None
        head = (*_data(p),)
        tail = (
            lay["stream"], lay["group"], p.kernel_scales()["sc"], not p.symmetric,
            p.offset is not None, bias if has_bias else _NO_BIAS, has_bias, relu,
        )  # fmt: skip
        entry = (bias, (kernel, head, tail, p.shape[0] * p.padded_length))
        p._cache[key] = entry
    return entry[1]


def _gemm_chunks(m: int, n: int, length: int) -> list[tuple[int, int, int, int]]:
    """``(r0, r1, n0, n1)`` chunks: over weight rows when there are enough of them for every
    thread, else over activation rows (a convolution's thousands of im2col rows)."""
    threads = _threads.get_num_threads()
    work = n * m * length
    if threads <= 1 or work < _threads.SERIAL_BELOW:
        return [(0, m, 0, n)]
    wanted = min(threads * _threads.CHUNKS_PER_THREAD, work // _threads.MIN_CHUNK_WORK)
    if m >= 16 * wanted:
        # whole tiles of the float32 block (F32_ROWS rows; ternref.packed._f32_block), else 4
        rows = 3 * F32_ROWS if F32_BLOCK else 4
        return [(a, b, 0, n) for a, b in _threads.split(m, wanted, rows)]
    return [(0, m, a, b) for a, b in _threads.split(n, wanted, X_BLOCK)]


def _gemm_f32_numpy(p: Packed, xp: np.ndarray, lut: np.ndarray, y: np.ndarray) -> None:
    """NumPy twin of the formats' ``gemm_f32``: decode tiles of row values, then ``X @ tile.T``."""
    from ternref.packed._gemm import tile_rows

    m, length = p.shape[0], p.padded_length
    rows = tile_rows(m, 4 * length)
    buf = np.empty((rows, length), np.float32)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        tile = buf[: r1 - r0]
        p.module.dequant_tile_numpy(*_data(p), r0, lut, tile)
        y[:, r0:r1] = xp @ tile.T


def _gemm_i8_numpy(p: Packed, xq, xsum, inv_s, sc, asym, has_offset, y) -> None:
    """NumPy twin of the formats' ``gemm_i8``: decode tiles of signed codes (and ``|c|``), exact
    int64 group sums, the epilogue of :mod:`ternref.packed._gemm` on whole columns."""
    from ternref.packed._gemm import tile_rows

    m, length = p.shape[0], p.padded_length
    n_groups, seg = p.n_groups, p.segment
    rows = tile_rows(m, 4 * length)
    x64 = xq.astype(np.int64)
    codes = np.empty((rows, length), np.float32)
    mags = np.empty((rows, length), np.float32)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        p.module.dequant_tile_numpy(*_data(p), r0, sc["code_lut"], codes[: r1 - r0])
        if asym:
            p.module.dequant_tile_numpy(*_data(p), r0, sc["abs_lut"], mags[: r1 - r0])
        acc = np.zeros((xq.shape[0], r1 - r0), np.float64)
        for g in range(n_groups):
            cols = slice(g * seg, (g + 1) * seg)
            x_sum = xsum[:, g : g + 1]
            d = x64[:, cols] @ codes[: r1 - r0, cols].T.astype(np.int64)  # sum c x
            q_sum = d + x_sum
            z_sum = x_sum - x64[:, cols] @ mags[: r1 - r0, cols].T.astype(np.int64) if asym else 0
            add_group_numpy(acc, q_sum, z_sum, x_sum, sc["sc"][:, r0:r1, g], asym, has_offset)
        y[:, r0:r1] = acc * inv_s[:, None]


# ------------------------------------------------------------------------------ convolution
def _conv_input(x, padding) -> np.ndarray:
    """``x`` zero-padded, float32, C-contiguous, flattened (what the gather kernels read)."""
    ph, pw = padding
    if ph or pw:  # zeros and one copy: np.pad costs ~20 us of overhead on a small input
        n, c, h, w = x.shape
        padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), np.float32)
        padded[:, :, ph : ph + h, pw : pw + w] = x
        return padded.reshape(-1)
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1)


def _conv_plan(p: Packed, x_shape, kernel_size, stride, padding, as_i2: bool = False):
    """``(geo, src)`` of :func:`ternref.packed._conv.conv_geometry`, cached per input shape;
    with ``as_i2``, for the same weight laid out as ``i2`` (:func:`_i2_geometry`)."""
    from ternref.packed._conv import conv_geometry

    key = ("conv", as_i2, tuple(x_shape[1:]), tuple(kernel_size), tuple(stride), tuple(padding))
    if key not in p._cache:
        like = _i2_geometry(p) if as_i2 else p
        p._cache[key] = conv_geometry(like, x_shape[1:], kernel_size, stride, padding)
    return p._cache[key]


def _i2_geometry(p: Packed) -> SimpleNamespace:
    """The row geometry ``p``'s weight has in ``i2`` (``n_groups``, ``group_size``, ``segment``,
    ``padded_length``): what :func:`ternref.packed._conv.conv_geometry` reads of a packed weight."""
    from ternref.packed import i2

    g, seg = segments(p.shape[1], p.granularity, p.group_size, i2.BLOCK)
    return SimpleNamespace(n_groups=g, group_size=p.group_size, segment=seg, padded_length=g * seg)


def conv2d(
    x, p: Packed, stride=1, padding=0, activations: str = "float32", *, bias=None,
    relu: bool = False, backend: str = "numba",
) -> np.ndarray:  # fmt: skip
    """The convolution of NCHW ``x`` with the packed weight ``p`` (orig shape (O, C, kh, kw)).

    ``y = act(im2col(x) @ W_hat.T + bias)`` laid out as (N, O, OH, OW), float32; ``act`` is
    ReLU when ``relu``. With ``activations="int8"`` every receptive field (im2col row) is
    quantized on its own. The jitted path never builds the im2col matrix
    (:mod:`ternref.packed._conv`); ``backend="numpy"`` is its twin: ``im2col`` and the linear
    twin.
    """
    from ternref.nn.functional import conv_output_shape, im2col, pair

    if not isinstance(p, Packed) or len(p.orig_shape) != 4:
        raise TypeError(f"p must be a ternref.packed.Packed of a 4-D weight, got {describe(p)}")
    x = float_array(x, "x", ndim=4)
    one_of(activations, "activations", ("float32", "int8"))
    one_of(backend, "backend", ("numba", "numpy"))
    o, c, kh, kw = p.orig_shape
    if x.shape[1] != c:
        raise ValueError(f"x must have {c} channels (weight {p.orig_shape}), got shape {x.shape}")
    stride, padding = pair(stride, "stride", low=1), pair(padding, "padding", low=0)
    n, _, h, w = x.shape
    oh, ow = conv_output_shape(h, w, (kh, kw), stride, padding)
    b = None if bias is None else np.asarray(bias, np.float32)
    if backend == "numpy":
        cols = im2col(x, (kh, kw), stride, padding)
        y = product(p, cols, activations == "int8", "numpy")
        if b is not None:
            y += b
        if relu:
            np.maximum(y, 0, out=y)
        return np.ascontiguousarray(y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2))
    y = np.empty((n, o, oh, ow), np.float32)
    run_conv(p, x, (kh, kw), stride, padding, activations == "int8", b, relu, y)
    return y


def run_conv(p: Packed, x, kernel_size, stride, padding, int8: bool, bias, relu: bool, y) -> None:
    """The jitted convolution into ``y`` (N, O, OH, OW) float32, without argument checks.

    With int8 activations and ``vpdpbusd``, ``i2`` multiplies its packed bytes by int8 streams
    (``i2.conv_i8_streams``); a format with ``I2_TILE_GEMM_I8`` (``tq1``) re-encodes its weight
    as ``i2`` bytes for the call (``to_i2_rows``, 2 bits a weight, freed after the call) and
    runs the same kernel on the receptive fields gathered in ``i2``'s layout."""
    mod = p.module
    as_i2 = int8 and getattr(mod, "I2_TILE_GEMM_I8", False)
    geo, src = _conv_plan(p, x.shape, kernel_size, stride, padding, as_i2)
    xflat = _conv_input(x, padding)
    positions = x.shape[0] * int(geo[3]) * int(geo[4])
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(0, np.float32)
    sc = p.kernel_scales()
    tail = (xflat, src, geo, b, has_bias, relu)
    streams = int8 and (as_i2 or getattr(mod, "STREAM_GEMM_I8", False))
    data = _data(p)
    if as_i2:
        from ternref.packed import i2

        shadow = _i2_geometry(p)
        codes = np.empty((p.shape[0], shadow.padded_length // i2.STREAMS), np.uint8)
        mod.to_i2_rows(*data, 0, p.shape[0], shadow.n_groups, codes)
        mod, data = i2, (codes,)
    if int8:
        # with vpdpbusd, the packed bytes times int8 streams beat the decoded float32 tiles
        kernel = mod.conv_i8_streams if streams else mod.conv_i8
        head = (sc["sc"], sc["code_lut"], sc["abs_lut"], not p.symmetric, p.offset is not None)
        args = (*data, *head, *tail)
    elif F32_BLOCK and p.shape[0] * 4 * p.padded_length <= WHOLE_WEIGHT_BYTES:
        # the float32 block with the weight as vectors: decoded once for every chunk, as panels
        # of output channels (freed after the call). A separate call: inlined into the formats'
        # conv_f32, the block's loop ran 1.3-1.5x slower (LeNet-5 conv2, batch 1, 2026-12-03).
        wt = np.empty((-(-p.shape[0] // F32_COLS) * p.padded_length, F32_COLS), np.float32)
        mod.dequant_panels(*data, p.shape[0], sc["lut"], wt)
        kernel = conv_whole_f32
        args = (wt, p.shape[0], *tail)
    else:
        kernel = mod.conv_f32
        args = (*data, sc["lut"], *tail)
    work = p.shape[0] * int(src.shape[0])
    if int8 and streams and positions * work < SERIAL_VNNI_GEMM_BELOW:
        chunks = [(0, positions)]  # as the vpdpbusd GEMM (LeNet-5's conv2 at batch 1: 0.09 ms
        # on one thread, 0.13 ms on two)
    else:
        chunks = _threads.plan(positions, work, X_BLOCK)
    _threads.run(kernel, args, chunks, y)
