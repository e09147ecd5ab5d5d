"""``linear(x, p)``: the packed product ``x @ W_hat.T``, and the int8 activation quantizer.

Which kernel runs
-----------------
``activations="float32"``
    ``N < GEMM_MIN_BATCH`` rows of ``x``: the format's ``dot_f32`` kernel (float32 lanes, one
    output row per ``prange`` iteration, the scale applied once per group in float64).
    Larger batches: the format's ``gemm_f32`` kernel; each thread dequantizes a tile of
    ``TILE_ROWS`` weight rows into a float32 buffer and multiplies it by ``x`` with a
    register-blocked loop (:mod:`ternref.packed._gemm`); the packed weight is never expanded
    whole. Its NumPy twin dequantizes the same tiles and uses ``X @ tile.T``.
``activations="int8"``
    ``x`` is quantized per row, BitNet-style (:func:`quantize_activations`). ``N < GEMM_MIN_BATCH``:
    the format's ``dot_i8`` kernel accumulates exact integer sums in int32 lanes straight from the
    packed bytes. Larger batches: the format's ``gemm_i8`` kernel decodes ``TILE_ROWS`` rows into
    signed int8 codes and forms the exact int32 group sums of the tile against every row of
    ``x`` (:func:`ternref.packed._gemm.tile_dot_i8`). Both give the same integers, and the same
    float64 epilogue makes them bit-identical.

``backend="numpy"`` runs the NumPy twins of the same algorithms (slow; for tests and readers).
Computation is float32 whatever the scale dtype; the output has the dtype of ``x``.

References
----------
Ma, S., Wang, H., et al. (2024). The era of 1-bit LLMs. arXiv:2402.17764 (absmax int8
activations, per token).
"""

from __future__ import annotations

import numba
import numpy as np

from ternref._validate import describe, float_array, one_of
from ternref.packed._gemm import TILE_ROWS
from ternref.packed.packed import Packed, pad_activations

GEMM_MIN_BATCH = 8
# Products with fewer multiply-adds than this (N * M * K) run the kernels on one thread.
SERIAL_BELOW = 1 << 20
"""Batches at least this large go through the tiled GEMM kernel."""

INT8_MAX = 127
"""Activations are clipped to [-127, 127] (symmetric: negating a quantized x never overflows)."""


def quantize_activations(x2d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absmax int8 quantization per row of ``x``: ``xq = clip(rint(x * 127 / max|x|), -127, 127)``.

    Rounding is half to even (``np.rint``). An all-zero row gets ``xq = 0`` and scale 0.

    Returns
    -------
    xq : int8 ndarray (N, K)
    inv_s : float64 ndarray (N,)
        ``max|x| / 127``, so that ``x ~= xq * inv_s``.
    """
    x64 = x2d.astype(np.float64)
    amax = np.max(np.abs(x64), axis=1)
    s = np.divide(INT8_MAX, amax, out=np.zeros_like(amax), where=amax > 0)
    xq = np.clip(np.rint(x64 * s[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return xq, amax / INT8_MAX


def _group_sums(xp: np.ndarray, n_groups: int, dtype) -> np.ndarray:
    """``sum(x)`` over each padded segment: (N, G)."""
    n = xp.shape[0]
    return xp.reshape(n, n_groups, -1).sum(axis=2, dtype=dtype)


def _data(p: Packed) -> tuple:
    return tuple(p.arrays[name] for name in p.module.ARRAYS)


def _gemm_f32_numpy(p: Packed, xp: np.ndarray, lut: np.ndarray, y: np.ndarray) -> None:
    """NumPy twin of the formats' ``gemm_f32``: dequantize ``TILE_ROWS`` rows, then BLAS."""
    m = p.shape[0]
    buf = np.empty((TILE_ROWS, p.padded_length), np.float32)
    for r0 in range(0, m, TILE_ROWS):
        r1 = min(m, r0 + TILE_ROWS)
        tile = buf[: r1 - r0]
        p.module.dequant_tile_numpy(*_data(p), r0, lut, tile)
        y[:, r0:r1] = xp @ tile.T


def _gemm_i8_numpy(p: Packed, xq, xsumq, inv_s, sp, sn, so, code_lut, abs_lut, asym, has_offset, y):
    """NumPy twin of the formats' ``gemm_i8``: decode tiles of signed codes, exact int64 products
    per group, then the epilogue of :func:`ternref.packed._gemm.i8_epilogue` on whole arrays."""
    m, n_groups = sp.shape
    seg = xq.shape[1] // n_groups
    tile = np.empty((TILE_ROWS, xq.shape[1]), np.int8)
    x64 = xq.astype(np.int64)
    for r0 in range(0, m, TILE_ROWS):
        r1 = min(m, r0 + TILE_ROWS)
        acc = np.zeros((xq.shape[0], r1 - r0), np.float64)
        sums = {}
        for name, lut in (("d", code_lut), ("s", abs_lut)) if asym else (("d", code_lut),):
            p.module.dequant_tile_numpy(*_data(p), r0, lut, tile[: r1 - r0])
            sums[name] = [
                x64[:, g * seg : (g + 1) * seg] @ tile[: r1 - r0, g * seg : (g + 1) * seg].T
                for g in range(n_groups)
            ]
        for g in range(n_groups):
            d = sums["d"][g]
            if asym:
                s = sums["s"][g]
                pos, neg = (s + d) // 2, (s - d) // 2  # the +1 and -1 sides
                acc += sp[r0:r1, g] * pos.astype(np.float64) - sn[r0:r1, g] * neg.astype(np.float64)
            else:
                acc += sp[r0:r1, g] * d.astype(np.float64)
            if has_offset:
                acc += so[r0:r1, g] * xsumq[:, g : g + 1].astype(np.float64)
        y[:, r0:r1] = acc * inv_s[:, None]


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
    m, k = p.shape
    if x.shape[-1] != k:
        raise ValueError(
            f"x must have {k} features (the K of the packed weight {p.shape}), got shape {x.shape}"
        )
    x2d = x.reshape(1, k) if x.ndim == 1 else x
    n = x2d.shape[0]
    sc = p.kernel_scales()
    y = np.empty((n, m), np.float32)
    if backend == "numba" and n * m * k < SERIAL_BELOW:
        # Small products: waking the thread pool costs more than the work (and much more on a
        # busy machine), so run the same kernels on one thread.
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            _run_kernels(p, x2d, activations, backend, sc, y)
        finally:
            numba.set_num_threads(threads)
    else:
        _run_kernels(p, x2d, activations, backend, sc, y)
    out = y if x.ndim == 2 else y[0]
    return out.astype(x.dtype, copy=False)


def _run_kernels(p: Packed, x2d, activations: str, backend: str, sc: dict, y) -> None:
    """Dispatch to the GEMV/GEMM kernel (or its NumPy twin) for float32 or int8 activations."""
    n = x2d.shape[0]
    g = p.n_groups
    has_offset = p.offset is not None
    asym = not p.symmetric
    if activations == "float32":
        xp = pad_activations(np.ascontiguousarray(x2d, dtype=np.float32), p)
        if n >= GEMM_MIN_BATCH:
            if backend == "numba":
                p.module.gemm_f32(*_data(p), xp, sc["lut"], y)
            else:
                _gemm_f32_numpy(p, xp, sc["lut"], y)
        else:
            xsum = _group_sums(xp, g, np.float64)
            fn = p.module.dot_f32 if backend == "numba" else p.module.dot_f32_numpy
            fn(*_data(p), xp, xsum, sc["sp"], sc["sn"], sc["so"], asym, has_offset, y)
    else:
        xq, inv_s = quantize_activations(x2d)
        xq = pad_activations(xq, p)
        xsumq = _group_sums(xq, g, np.int64)
        scales = (sc["sp"], sc["sn"], sc["so"])
        if n >= GEMM_MIN_BATCH:
            luts = (sc["code_lut"], sc["abs_lut"])
            fn = p.module.gemm_i8 if backend == "numba" else _gemm_i8_numpy
            args = (*_data(p),) if backend == "numba" else (p,)
            fn(*args, xq, xsumq, inv_s, *scales, *luts, asym, has_offset, y)
        else:
            fn = p.module.dot_i8 if backend == "numba" else p.module.dot_i8_numpy
            fn(*_data(p), xq, xsumq, inv_s, *scales, asym, has_offset, y)
