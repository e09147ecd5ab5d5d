"""A direct float32 convolution for the small full-precision convolutions of an inference plan.

Why
---
A packed model keeps its first layer in full precision, and for an image model that is a
convolution with few input channels: LeNet-5's ``Conv2d(1, 32, 5, padding=2)`` has
``K = C kh kw = 25`` multiply-adds per output. Run as ``im2col`` + BLAS, as the training layer
does, it spends its time around the arithmetic (at batch 1, 2026-12-03, AMD EPYC Zen 5: 90 us,
of which ``im2col_t`` 36, the 32 x 25 x 784 sgemm 13, the bias 6 and the ReLU 10; a GEMM whose
inner dimension is 25 is far from BLAS's peak at any batch). This kernel computes the same
convolution straight from the padded input: 21 us at batch 1, and at batch 1000 25 ms on one
thread against 50-65 ms for im2col + BLAS on two (LeNet-5's first layer).

The algorithm
-------------
With stride 1, output ``y[n, o, i, j]`` reads ``x_pad[n, c, i + a, j + b]``. Lay each padded
image out flat (``Hp x Wp`` per channel) and compute the outputs over the *padded* width: flat
position ``p = i Wp + j``, for ``j`` in ``[0, Wp)``, of an accumulator row of length
``(OH - 1) Wp + OW``. Then tap ``(c, a, b)`` adds ``w[o, c, a, b]`` times the contiguous slice
of the flat input that starts at ``c Hp Wp + a Wp + b``::

    acc_o[p] = bias[o] + sum_{c, a, b} w[o, c, a, b] x_flat[c Hp Wp + a Wp + b + p]

and ``y[n, o, i, j] = acc_o[i Wp + j]`` for ``j < OW`` (the other ``kw - 1`` columns of each
row are computed and dropped). Every pass over ``acc`` is a contiguous, vectorizable loop. To
keep the loop from being bound by loads and stores of ``acc`` (an AXPY per tap does three memory
operations per multiply-add), one pass adds :data:`TAPS_PER_PASS` taps of a kernel row for two
output channels at a time: five input loads feed ten multiply-adds. The taps left over at the
end of a row (``kw`` not a multiple of five) get a pass each; no tap is padded with a zero
weight, which would multiply elements outside the window (``0 * inf`` is NaN). The accumulator
length is rounded up to :data:`LANES` so that no pass ends in a scalar remainder loop (which
made the first version 3x slower), and the flat input carries :data:`LANES` zeros after the
last image for those extra reads (:func:`flat_input`); what they compute is never stored.

The NumPy twin :func:`conv2d_direct_numpy` is the same sum over taps with NumPy slices. Both
agree with ``im2col`` + GEMM up to float32 summation order (tested), not bit for bit: the kernel
fuses multiply-adds and sums five taps before adding them to the accumulator. NaN and infinities
propagate as in the GEMM, and the fused ReLU keeps a NaN (as ``np.maximum``).
"""

from __future__ import annotations

import numpy as np

from ternref._jit import njit

TAPS_PER_PASS = 5
"""Taps of one kernel row summed in one pass over the accumulator (a 5 x 5 kernel: one pass per
row; a 3 x 3 kernel: three single-tap passes; a 7 x 7 one: a five-tap pass and two single)."""

LANES = 64
"""The accumulator length is a multiple of this (four 16-lane vectors, LLVM's unrolled loop)."""

MAX_TAPS = 75
"""The plan uses this kernel for stride-1 float32 convolutions with ``C kh kw`` at most this.
Measured against the plan's im2col + BLAS step (2026-12-03, AMD EPYC Zen 5, one thread for the
kernel, two for BLAS; batch 1 / batch 64): 1 x 5 x 5 (LeNet-5) 21 vs 98 us / 1.1 vs 9.8 ms;
3 x 5 x 5 41 vs 93 us / 2.6 vs 5.7 ms; 3 x 3 x 3 50 vs 95 us / 2.7 vs 3.6 ms; 8 x 3 x 3 29 vs
55 us / 1.7 vs 1.3 ms; 16 x 3 x 3 54 vs 99 us / 3.2 vs 2.1 ms; 32 x 5 x 5 226 vs 198 us / 15
vs 12 ms. With hundreds of taps per output ``im2col`` + BLAS runs near BLAS's peak and this
kernel (about 46 GFLOP/s on one core) does not; 75 keeps the shapes where it won at both
batches (the plan also splits images between two threads)."""


def flat_input(x: np.ndarray, padding) -> tuple[np.ndarray, int, int]:
    """``(x_flat, Hp, Wp)``: ``x`` (N, C, H, W) zero-padded by ``padding``, float32, flattened,
    followed by :data:`LANES` zeros for the kernel's reads past the last image."""
    n, c, h, w = x.shape
    ph, pw = padding
    hp, wp = h + 2 * ph, w + 2 * pw
    flat = np.zeros(n * c * hp * wp + LANES, np.float32)
    flat[: n * c * hp * wp].reshape(n, c, hp, wp)[:, :, ph : ph + h, pw : pw + w] = x
    return flat, hp, wp


@njit(nogil=True, fastmath={"contract"})
def conv2d_direct(x_flat, w, bias, has_bias, relu, hp, wp, n0, n1, y):
    """Images ``n0 .. n1 - 1`` of the stride-1 convolution into ``y`` (N, O, OH, OW) float32:
    ``y = act(conv(x, w) + bias)``, ``act`` a ReLU when ``relu``; ``w`` (O, C, kh, kw) float32.
    ``x_flat``, ``hp``, ``wp`` come from :func:`flat_input`; see the module docstring."""
    n_out, c_in, kh, kw = w.shape
    oh, ow = y.shape[2], y.shape[3]
    length = -(-((oh - 1) * wp + ow) // LANES) * LANES
    acc = np.empty((2, length), np.float32)
    image = c_in * hp * wp
    whole = kw - kw % TAPS_PER_PASS  # taps of a row summed five at a time
    for n in range(n0, n1):
        for o0 in range(0, n_out, 2):
            o1 = min(o0 + 1, n_out - 1)  # an odd last channel is computed twice, stored once
            acc0, acc1 = acc[0], acc[1]
            acc0[:] = bias[o0] if has_bias else np.float32(0.0)
            acc1[:] = bias[o1] if has_bias else np.float32(0.0)
            for c in range(c_in):
                for a in range(kh):
                    u, v = w[o0, c, a], w[o1, c, a]
                    row_start = n * image + c * hp * wp + a * wp
                    for b in range(0, whole, TAPS_PER_PASS):
                        u0, u1, u2, u3, u4 = u[b], u[b + 1], u[b + 2], u[b + 3], u[b + 4]
                        v0, v1, v2, v3, v4 = v[b], v[b + 1], v[b + 2], v[b + 3], v[b + 4]
                        start = row_start + b
                        s0 = x_flat[start : start + length]
                        s1 = x_flat[start + 1 : start + 1 + length]
                        s2 = x_flat[start + 2 : start + 2 + length]
                        s3 = x_flat[start + 3 : start + 3 + length]
                        s4 = x_flat[start + 4 : start + 4 + length]
                        for p in range(length):
                            x0, x1, x2, x3, x4 = s0[p], s1[p], s2[p], s3[p], s4[p]
                            acc0[p] += u0 * x0 + u1 * x1 + u2 * x2 + u3 * x3 + u4 * x4
                            acc1[p] += v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3 + v4 * x4
                    for b in range(whole, kw):
                        ub, vb = u[b], v[b]
                        s0 = x_flat[row_start + b : row_start + b + length]
                        for p in range(length):
                            acc0[p] += ub * s0[p]
                            acc1[p] += vb * s0[p]
            for k in range(min(2, n_out - o0)):
                y_out, acc_k = y[n, o0 + k], acc[k]
                for i in range(oh):
                    row, y_row = acc_k[i * wp : i * wp + ow], y_out[i]
                    for j in range(ow):
                        value = row[j]
                        y_row[j] = np.float32(0.0) if relu and value < 0 else value


def conv2d_direct_numpy(x, w, bias, padding, relu) -> np.ndarray:
    """NumPy twin of :func:`conv2d_direct` (stride 1): the sum over taps of shifted slices of the
    padded input, float32, (N, O, OH, OW)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    ph, pw = padding
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), np.float32)
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    oh, ow = h + 2 * ph - kh + 1, wd + 2 * pw - kw + 1
    y = np.zeros((n, o, oh, ow), np.float32)
    if bias is not None:
        y += np.asarray(bias, np.float32)[:, None, None]
    w = np.asarray(w, np.float32)
    for ci in range(c):
        for a in range(kh):
            for b in range(kw):
                window = xp[:, ci, a : a + oh, b : b + ow]  # (N, OH, OW)
                y += w[None, :, ci, a, b, None, None] * window[:, None]
    return np.maximum(y, 0, out=y) if relu else y
