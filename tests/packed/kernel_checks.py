"""What ``linear(x, pack(t, fmt))`` must return, stated independently of the kernels.

Shared by the packed kernel tests. Three statements, each checked by :func:`check_linear` for the
jitted kernel and for its NumPy twin:

float32 activations
    The result is the float64 dense product ``x @ t.dense().T`` within :func:`float_bound`; the
    jitted kernels reassociate their float32 sums (``fastmath``, like BLAS in the twins), so
    kernel and twin agree within twice the bound, on the GEMV and on the GEMM path.
int8 activations
    The result equals, bit for bit, :func:`int8_expected`: exact integer dot products per scale
    group on the codes (no packing involved) and the documented float64 epilogue; and it is
    within the activation-quantization error :func:`int8_bound` of the dense product.

Each failure message names the kernel that produced the wrong number (``i2.dot_f32``,
``kernels._gemm_i8_numpy``, ...), the number of wrong outputs and the worst one.
"""

from __future__ import annotations

import numpy as np

from ternref.packed import FORMATS, _threads, linear, quantize_activations
from ternref.packed.kernels import GEMM_MIN_BATCH

UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2
"""u = 2^-24: a correctly rounded float32 operation errs by at most u times its result."""


def kernel_names(fmt: str, n: int, activations: str, threaded: bool = False) -> tuple[str, str]:
    """(jitted kernel, NumPy twin) that ``linear`` runs for a batch of ``n`` rows; ``threaded``:
    the product is large enough to be split over threads (:func:`ternref.packed._threads.plan`)."""
    act = "f32" if activations == "float32" else "i8"
    vnni_i8 = act == "i8" and getattr(FORMATS[fmt], "STREAM_GEMM_I8", False)
    if n < GEMM_MIN_BATCH:  # small products run whole in one serial call (gemv = layout + dot)
        # (the vpdpbusd GEMV is serial at every size: kernels.SERIAL_VNNI_GEMV)
        kernel = "dot" if threaded and not vnni_i8 else "gemv"
        return f"{fmt}.{kernel}_{act}", f"{fmt}.dot_{act}_numpy"
    if vnni_i8:
        # i2 with vpdpbusd: the stream kernel beats the tile product at every batch size
        # (ternref.packed.kernels.product); the twin stays the tile algorithm's, exact as well
        return f"{fmt}.dot_i8", "kernels._gemm_i8_numpy"
    if act == "i8" and getattr(FORMATS[fmt], "I2_TILE_GEMM_I8", False):
        # tq1 with vpdpbusd: tiles re-encoded as i2 (ternref.packed.tq1.gemm_i8_i2)
        return f"{fmt}.gemm_i8_i2", "kernels._gemm_i8_numpy"
    return f"{fmt}.gemm_{act}", f"kernels._gemm_{act}_numpy"


def _per_weight(t, a) -> np.ndarray:
    """A scale array of ``t`` (any granularity) expanded to one float64 value per weight (M, K)."""
    m = t.shape[0]
    return np.broadcast_to(t.expand(a), t.shape).reshape(m, -1).astype(np.float64)


def dense_product(t, x2d: np.ndarray) -> np.ndarray:
    """``x @ W_hat.T`` in float64, ``W_hat = t.dense()`` viewed as (M, K)."""
    w = t.dense().reshape(t.shape[0], -1).astype(np.float64)
    return x2d.astype(np.float64) @ w.T


def float_bound(t, x2d: np.ndarray) -> np.ndarray:
    """Largest error a float32 evaluation of ``x @ W_hat.T`` may have, whatever its order: (N, M).

    Every path forms, per output, float32 sums of at most ``K`` nonzero products (the padding
    multiplies zeros, and adding an exact zero does not round). Summed in any order, ``n`` terms
    err by at most ``(n - 1) u sum |term|`` (Higham, *Accuracy and Stability of Numerical
    Algorithms*, 2nd ed., eq. 4.4, to first order); one more ``u`` for each product, one for the
    float32 values of the weights (``dense()`` and the kernels' value tables round
    ``alpha + offset`` in float32), one for the float32 output. The terms a kernel adds are
    bounded per weight by ``A = (alpha_pos + alpha_neg) (|c| + 1) + |offset|``, which covers the
    dequantized weight (GEMM), the unsigned code ``q = c + 1`` of the i2/tq1 identity
    ``sum c x = sum q x - sum x`` (GEMV) and the separate +1 and -1 sides (asymmetric scales). So::

        |y - y_exact| <= (K + 4) u sum_k A_k |x_k|

    The float64 epilogues (scales, offsets, group totals) add errors near 1e-16, far inside it.
    """
    m = t.shape[0]
    codes = t.codes.reshape(m, -1).astype(np.float64)
    k = codes.shape[1]
    a = (_per_weight(t, t.alpha_pos) + _per_weight(t, t.alpha_neg)) * (np.abs(codes) + 1)
    if t.offset is not None:
        a += np.abs(_per_weight(t, t.offset))
    return (k + 4) * UNIT_ROUNDOFF * (np.abs(x2d.astype(np.float64)) @ a.T)


def int8_expected(t, x2d: np.ndarray) -> np.ndarray:
    """The int8 path restated without packing: per scale group, exact int64 dot products of the
    quantized activations with the codes (symmetric) or with the +1 and -1 indicator masks
    (asymmetric), then the float64 epilogue in the kernels' documented order: ``sum_g (sp D | sp P
    - sn N) + so sum(xq)`` group by group, times ``max|x| / 127``, rounded once to float32."""
    xq, inv_s = quantize_activations(x2d)
    m = t.shape[0]
    codes = t.codes.reshape(m, -1).astype(np.int64)
    k = codes.shape[1]
    gs = t.group_size if t.granularity == "group" else k
    n_groups = -(-k // gs)

    def per_group(a):
        if t.granularity == "tensor":
            return np.full((m, n_groups), float(a))
        return np.broadcast_to(a.reshape(m, -1), (m, n_groups)).astype(np.float64)

    sp, sn = per_group(t.alpha_pos), per_group(t.alpha_neg)
    so = per_group(t.offset) if t.offset is not None else None
    xq64 = xq.astype(np.int64)
    yr = np.zeros((x2d.shape[0], m))
    for g in range(n_groups):
        cols = slice(g * gs, min(k, (g + 1) * gs))
        c, xg = codes[:, cols], xq64[:, cols]
        if t.symmetric:
            yr += sp[:, g] * (xg @ c.T).astype(np.float64)
        else:
            p = (xg @ (c == 1).T.astype(np.int64)).astype(np.float64)
            n = (xg @ (c == -1).T.astype(np.int64)).astype(np.float64)
            yr += sp[:, g] * p - sn[:, g] * n
        if so is not None:
            yr += so[:, g] * xg.sum(axis=1, keepdims=True).astype(np.float64)
    return (yr * inv_s[:, None]).astype(np.float32)


def int8_bound(t, x2d: np.ndarray) -> np.ndarray:
    """Distance of the int8 result from the dense float product: (N, M).

    ``|x - xq max|x|/127| <= max|x| / 254`` per entry, so the product moves by at most that
    times ``sum |w|``; plus the float rounding of :func:`float_bound`.
    """
    _, inv_s = quantize_activations(x2d)
    w = np.abs(t.dense().reshape(t.shape[0], -1).astype(np.float64))
    quantization = 0.5 * inv_s[:, None] * w.sum(axis=1)[None, :]
    return quantization * (1 + 1e-6) + float_bound(t, x2d)


def _index(flat: int, shape: tuple) -> tuple:
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def assert_exact(what: str, got: np.ndarray, expected: np.ndarray) -> None:
    """Bit-for-bit equality, with a message naming the kernel and the worst output."""
    if np.array_equal(got, expected):
        return
    wrong = got != expected
    i = _index(np.argmax(np.abs(got.astype(np.float64) - expected)), got.shape)
    raise AssertionError(
        f"{what}: {int(wrong.sum())} of {got.size} outputs differ; worst at (n, row) = {i}: "
        f"got {float(got[i])!r}, expected {float(expected[i])!r}"
    )


def assert_within(what: str, got: np.ndarray, expected: np.ndarray, bound: np.ndarray) -> None:
    """``|got - expected| <= bound`` elementwise, with a message naming the kernel."""
    err = np.abs(got.astype(np.float64) - expected)
    bad = ~(err <= bound)  # also catches NaN
    if not np.any(bad):
        return
    i = _index(np.argmax(np.where(bad, err - bound, -np.inf)), got.shape)
    raise AssertionError(
        f"{what}: {int(bad.sum())} of {got.size} outputs outside the bound; worst at (n, row) = "
        f"{i}: got {float(got[i])!r}, expected {float(expected[i])!r} +- {bound[i]:.3g}"
    )


def check_linear(t, p, x: np.ndarray, activations: str) -> None:
    """Run ``linear(x, p, activations)`` with both backends and check both against ``t``.

    ``x`` is (K,) or (N, K) float32; ``p = pack(t, fmt)``.
    """
    x2d = x.reshape(1, -1) if x.ndim == 1 else x
    n, m = x2d.shape[0], t.shape[0]
    threaded = len(_threads.plan(m, n * p.padded_length)) > 1
    kernel, twin = kernel_names(p.format, n, activations, threaded)
    y = linear(x, p, activations)
    y_twin = linear(x, p, activations, backend="numpy")
    for name, out in ((kernel, y), (twin, y_twin)):
        assert out.dtype == x.dtype and out.shape == ((n, m) if x.ndim == 2 else (m,)), name
    y, y_twin = y.reshape(n, m), y_twin.reshape(n, m)
    ref = dense_product(t, x2d)
    if activations == "float32":
        bound = float_bound(t, x2d)
        assert_within(f"{kernel} vs its twin {twin}", y, y_twin.astype(np.float64), 2 * bound)
        assert_within(f"{kernel} vs dense", y, ref, bound)
        assert_within(f"{twin} vs dense", y_twin, ref, bound)
    else:
        expected = int8_expected(t, x2d)
        assert_exact(f"{kernel} vs exact integer sums", y, expected)
        assert_exact(f"{twin} vs exact integer sums", y_twin, expected)
        assert_within(f"{kernel} vs dense", y, ref, int8_bound(t, x2d))
