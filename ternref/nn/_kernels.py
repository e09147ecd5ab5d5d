"""Numba kernels for the memory-bound parts of training (MaxPool2d, BatchNorm, col2im), each
beside its plain NumPy twin.

Why: in a LeNet-5 training step on Fashion-MNIST the first MaxPool2d and BatchNorm2d touch a
(128, 32, 28, 28) float32 tensor (12.8 MB) in five or six whole-array NumPy passes each way; a
loop that reads each element once or twice does the same work in a fraction of the time
(per batch: MaxPool 13 -> 2.5 ms, BatchNorm 15.6 -> 6.5 ms, col2im of conv2 14 -> 7 ms, one
core). The kernels are serial on purpose: the GEMMs of the convolutions already use OpenBLAS's
threads, and a second thread pool contends with it on small machines (measured on 2 cores).

Every kernel computes the same function as its ``*_numpy`` twin (the algorithm the layer's docstring
derives); ``tests/nn/test_kernels.py`` proves kernel == twin with hypothesis, bit for bit where the
arithmetic is the same and within a float32 tolerance where only the summation order differs (the
BatchNorm kernels accumulate per-channel sums in float64, the NumPy twin in the input dtype).
``NUMBA_DISABLE_JIT=1`` turns the kernels into ordinary Python loops for stepping through them.

The layers call :func:`maxpool2d_forward`, :func:`maxpool2d_backward`,
:func:`batchnorm_train_forward`, :func:`batchnorm_train_backward` and :func:`relu_backward`,
which pick the kernel for float32/float64 input and the twin for any other float dtype;
:func:`ternref.nn.functional.col2im_t` (the convolution's backward) calls :func:`col2im_t_kernel`
the same way.

Outputs are allocated with NumPy and passed in, never allocated inside a kernel: NumPy asks
Linux for huge pages on large arrays, and first-touching 10+ MB of small pages costs more than
the kernel itself (measured: a 41 MB im2col output, 22 ms with a Numba allocation, 9 ms without).
"""

from __future__ import annotations

import numpy as np

from ternref._jit import njit

__all__ = [
    "maxpool2d_forward",
    "maxpool2d_backward",
    "maxpool2d_forward_numpy",
    "maxpool2d_backward_numpy",
    "batchnorm_train_forward",
    "batchnorm_train_backward",
    "batchnorm_train_forward_numpy",
    "batchnorm_train_backward_numpy",
    "col2im_t_kernel",
    "affine_relu_maxpool2x2",
    "affine_relu_maxpool2x2_numpy",
    "maxpool2x2_inference",
    "relu_backward",
    "relu_backward_numpy",
]

# Only reassociation (and fused multiply-add): lets LLVM vectorise the per-channel sums, keeps
# IEEE NaN/inf semantics (no 'nnan'/'ninf', so a NaN input still gives a NaN output).
_REASSOC = {"reassoc", "contract"}
KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
"""Input dtypes the kernels are compiled for; any other float dtype runs the NumPy twin."""


def pool_windows(h: int, w: int, kernel_size, stride):
    """``(a*kw + b, (rows, cols))`` for each window offset, row-major: strided views of x."""
    (kh, kw), (sh, sw) = kernel_size, stride
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    for a in range(kh):
        for b in range(kw):
            yield a * kw + b, (slice(None), slice(None), slice(a, a + sh * oh, sh),
                               slice(b, b + sw * ow, sw))  # fmt: skip


# ------------------------------------------------------------------------------ MaxPool2d


def maxpool2d_forward_numpy(x: np.ndarray, kernel_size, stride) -> np.ndarray:
    """``y = max over the window offsets (a, b) of x[.., i*sh+a, j*sw+b]`` (NaN propagates)."""
    y = None
    for _, sl in pool_windows(x.shape[2], x.shape[3], kernel_size, stride):
        y = x[sl].copy() if y is None else np.maximum(y, x[sl], out=y)
    return y


def maxpool2d_backward_numpy(x: np.ndarray, y: np.ndarray, dy: np.ndarray, kernel_size, stride):
    """Route each ``dy`` to the first element (row-major in its window) equal to the maximum.

    Walks the offsets in row-major order; ``free`` marks the windows not yet served, so exactly one
    element per window receives its gradient. A window whose maximum is NaN equals nothing and
    routes no gradient. With overlapping windows an element sums the gradients of the windows it
    wins.
    """
    (kh, kw), (sh, sw) = kernel_size, stride
    disjoint = sh >= kh and sw >= kw  # each input element lies in at most one window
    tiled = (sh, sw) == (kh, kw) and x.shape[2:] == (y.shape[2] * kh, y.shape[3] * kw)
    dx = np.empty(x.shape, dy.dtype) if tiled else np.zeros(x.shape, dy.dtype)
    free = None  # windows whose maximum has not been routed yet
    for _, sl in pool_windows(x.shape[2], x.shape[3], kernel_size, stride):
        hit = x[sl] == y
        if free is None:
            free = ~hit
        else:
            hit &= free  # only the first maximum of a window receives dy
            free &= ~hit
        if disjoint:
            np.multiply(dy, hit, out=dx[sl])
        else:
            dx[sl] += dy * hit
    return dx


@njit(nogil=True)
def _maxpool2x2_forward_kernel(x, y, arg):
    """2x2 windows, stride 2 (floor mode): y and the routed offset (0..3, -1 for a NaN window)."""
    n, c, oh, ow = y.shape
    for i in range(n):
        for j in range(c):
            for r in range(oh):
                top, bottom = x[i, j, 2 * r], x[i, j, 2 * r + 1]
                y_row, arg_row = y[i, j, r], arg[i, j, r]
                for s in range(ow):
                    v0, v1 = top[2 * s], top[2 * s + 1]
                    v2, v3 = bottom[2 * s], bottom[2 * s + 1]
                    # row-major walk with strict '>': a tie keeps the earlier element. Written as
                    # selects, not branches: on real data each comparison is a coin flip.
                    best, where = v0, 0
                    gt = v1 > best
                    best, where = (v1, 1) if gt else (best, where)
                    gt = v2 > best
                    best, where = (v2, 2) if gt else (best, where)
                    gt = v3 > best
                    best, where = (v3, 3) if gt else (best, where)
                    # np.maximum propagates NaN; such a window routes no gradient
                    nan = (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3)
                    y_row[s] = np.nan if nan else best
                    arg_row[s] = -1 if nan else where


@njit(nogil=True)
def _maxpool2x2_backward_kernel(dy, arg, dx):
    """dx[.., 2r + k // 2, 2s + k % 2] = dy[.., r, s] for the routed offset k, 0 elsewhere (a
    NaN window, k = -1, routes nothing).

    ``dx`` is zeroed in one pass (a memset), then each gradient is stored at its one routed
    position: on the Zen 2 VM (2026-12-08), conv1's pool of LeNet-5 at batch 128 (3.2 M inputs)
    took 1.6 ms this way against 6.5 ms writing all four positions of every window with a
    select each (``g if k == j else 0``), which LLVM left scalar."""
    n, c, oh, ow = dy.shape
    dy3, arg3 = dy.reshape(n * c, oh, ow), arg.reshape(n * c, oh, ow)
    dx3 = dx.reshape(n * c, dx.shape[2], dx.shape[3])
    dx3[:] = 0.0
    for q in range(n * c):
        plane = dx3[q]
        for r in range(oh):
            g_row, k_row = dy3[q, r], arg3[q, r]
            for s in range(ow):
                k = k_row[s]
                if k >= 0:
                    plane[2 * r + (k >> 1), 2 * s + (k & 1)] = g_row[s]


@njit(nogil=True)
def maxpool2x2_inference(x, y):
    """``y = max of each 2x2 window of x`` (stride 2, floor mode, NaN propagates): the forward of
    :func:`_maxpool2x2_forward_kernel` without the routed offsets, which only a backward needs.
    What an inference plan runs (:class:`ternref.packed.layers.PackedSequential`); NumPy twin:
    :func:`maxpool2d_forward_numpy`."""
    n, c, oh, ow = y.shape
    for i in range(n):
        for j in range(c):
            for r in range(oh):
                top, bottom, y_row = x[i, j, 2 * r], x[i, j, 2 * r + 1], y[i, j, r]
                for s in range(ow):
                    v0, v1 = top[2 * s], top[2 * s + 1]
                    v2, v3 = bottom[2 * s], bottom[2 * s + 1]
                    best = max(max(v0, v1), max(v2, v3))
                    nan = (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3)
                    y_row[s] = np.nan if nan else best


def maxpool2d_forward(x: np.ndarray, kernel_size, stride):
    """``(y, cache)``: the 2x2/stride-2 kernel for float32/float64 (cache = the routed offsets),
    the NumPy twin otherwise (cache = x and y).

    Only the 2x2/stride-2 case, the one every model here uses, has a kernel: a general kh x kw
    loop with short inner loops measured slower than the twin's whole-array passes.
    """
    if x.dtype in KERNEL_DTYPES and tuple(kernel_size) == (2, 2) and tuple(stride) == (2, 2):
        # outputs allocated by NumPy, not inside the kernel: NumPy asks Linux for huge pages on
        # large arrays, which halves the page-fault cost of first touching 10+ MB
        n, c, h, w = x.shape
        y = np.empty((n, c, h // 2, w // 2), x.dtype)
        arg = np.empty(y.shape, np.int8)
        _maxpool2x2_forward_kernel(np.ascontiguousarray(x), y, arg)
        return y, ("arg", arg, x.shape)
    y = maxpool2d_forward_numpy(x, kernel_size, stride)
    return y, ("x", x, y)


def maxpool2d_backward(dy: np.ndarray, cache, kernel_size, stride) -> np.ndarray:
    """dx from the cache of :func:`maxpool2d_forward` (kernel or twin, as the forward chose)."""
    kind, a, b = cache
    if kind == "arg":
        dy = np.ascontiguousarray(dy, dtype=np.result_type(dy.dtype, np.float32))
        dx = np.empty(b, dy.dtype)  # zeroed by the kernel (odd last rows/columns stay 0)
        _maxpool2x2_backward_kernel(dy, a, dx)
        return dx
    return maxpool2d_backward_numpy(a, b, dy, kernel_size, stride)


# ------------------------------------------------- eval-mode Conv2d -> BatchNorm -> ReLU -> MaxPool
# An inference-only fusion for a frozen model's forward pass (the KD teacher,
# ternref.methods.kd.TeacherOutputs): the convolution's GEMM output y_t, laid out (C, N, H, W),
# goes through the per-channel affine map of an eval-mode BatchNorm, y*a + b, the ReLU and a
# 2x2/stride-2 max pool in one read, and is written pooled in (N, C, H/2, W/2). Layer by layer
# that is a 12.8 MB transpose copy, two BatchNorm passes, the ReLU's mask and output and the pool
# (LeNet-5's conv1 at batch 128), none of which an eval forward without backward needs.


def affine_relu_maxpool2x2_numpy(y_t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``maxpool2x2(relu(y * a + b))`` of ``y_t`` (C, N, H, W), returned as (N, C, H/2, W/2):
    the layers' own operations (BatchNorm's eval ``y * a``, ``+= b``; ``np.maximum(z, 0)``;
    :func:`maxpool2d_forward`), in the layers' order."""
    z = y_t.transpose(1, 0, 2, 3) * a[None, :, None, None]
    z += b[None, :, None, None]
    z = np.maximum(z, z.dtype.type(0))
    return maxpool2d_forward(z, (2, 2), (2, 2))[0]


@njit(nogil=True)
def _affine_relu_maxpool2x2_kernel(y_t, a, b, out):
    """out[i, c, r, s] = max over the 2x2 window of relu(y_t[c, i] * a[c] + b[c])."""
    n, c, oh, ow = out.shape
    zero = y_t.dtype.type(0)
    for j in range(c):
        aj, bj = a[j], b[j]
        for i in range(n):
            for r in range(oh):
                top, bottom = y_t[j, i, 2 * r], y_t[j, i, 2 * r + 1]
                out_row = out[i, j, r]
                for s in range(ow):
                    v0 = top[2 * s] * aj + bj
                    v1 = top[2 * s + 1] * aj + bj
                    v2 = bottom[2 * s] * aj + bj
                    v3 = bottom[2 * s + 1] * aj + bj
                    # np.maximum(v, 0): v unless v < 0 (NaN and -0.0 pass through)
                    v0 = zero if v0 < zero else v0
                    v1 = zero if v1 < zero else v1
                    v2 = zero if v2 < zero else v2
                    v3 = zero if v3 < zero else v3
                    # as _maxpool2x2_forward_kernel: strict '>' row-major, NaN propagates
                    best = v0
                    best = v1 if v1 > best else best
                    best = v2 if v2 > best else best
                    best = v3 if v3 > best else best
                    nan = (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3)
                    out_row[s] = np.nan if nan else best


def affine_relu_maxpool2x2(y_t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`affine_relu_maxpool2x2_numpy`; the kernel for float32/float64 (same dtype for
    ``y_t``, ``a`` and ``b``), the twin otherwise."""
    if y_t.dtype not in KERNEL_DTYPES or a.dtype != y_t.dtype or b.dtype != y_t.dtype:
        return affine_relu_maxpool2x2_numpy(y_t, a, b)
    c, n, h, w = y_t.shape
    out = np.empty((n, c, h // 2, w // 2), y_t.dtype)
    _affine_relu_maxpool2x2_kernel(np.ascontiguousarray(y_t), a, b, out)
    return out


# ------------------------------------------------------------------------------ BatchNorm
# Training-mode BatchNorm on x viewed as (N, C, P), P = product of the spatial sizes (1 for
# BatchNorm1d on (N, C)). The math is derived in ternref.nn.layers._BatchNorm:
#   mu = mean(x), var = mean((x - mu)^2), s = 1/sqrt(var + eps), a = gamma * s
#   y  = a (x - mu) + beta
#   dbeta = sum(dy), dgamma = s sum(dy (x - mu))
#   dx = a dy - (x - mu) (a s dgamma / m) - a dbeta / m


def batchnorm_train_forward_numpy(x3: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps):
    """``(y3, mu, var, inv_std)`` for x3 of shape (N, C, P); per channel, biased variance and
    ``inv_std = 1 / sqrt(var + eps)`` (the layer's backward needs it)."""
    dt = x3.dtype.type
    m = x3.shape[0] * x3.shape[2]
    mu = x3.mean(axis=(0, 2))
    xc = x3 - mu[None, :, None]
    var = np.einsum("ncp,ncp->c", xc, xc) / dt(m)  # no (N, C, P) temporary
    inv_std = 1.0 / np.sqrt(var + dt(eps))
    y3 = np.multiply(xc, (gamma * inv_std)[None, :, None], out=xc)
    y3 += beta[None, :, None]
    return y3, mu, var, inv_std


def batchnorm_train_backward_numpy(dy3, x3, mu, inv_std, a):
    """``(dx3, dgamma, dbeta)`` of the training-mode forward (formulas above)."""
    m = x3.shape[0] * x3.shape[2]
    xc = x3 - mu.astype(x3.dtype, copy=False)[None, :, None]
    dbeta = dy3.sum(axis=(0, 2))
    dgamma = np.einsum("ncp,ncp->c", dy3, xc) * inv_std
    dt = dy3.dtype
    dx3 = dy3 * a.astype(dt, copy=False)[None, :, None]
    dx3 -= xc * (a * inv_std * dgamma / m).astype(dt, copy=False)[None, :, None]
    dx3 -= (a * dbeta / m).astype(dt, copy=False)[None, :, None]
    return dx3, dgamma, dbeta


@njit(nogil=True, fastmath=_REASSOC)
def _channel_mean_var_kernel(x3):
    """Per-channel mean and biased variance, two passes, float64 accumulators."""
    n, c, p = x3.shape
    mu = np.empty(c)
    var = np.empty(c)
    inv_m = 1.0 / (n * p)
    for j in range(c):
        total = 0.0
        for i in range(n):
            for k in range(p):
                total += x3[i, j, k]
        mean = total * inv_m
        sq = 0.0
        for i in range(n):
            for k in range(p):
                d = x3[i, j, k] - mean
                sq += d * d
        mu[j] = mean
        var[j] = sq * inv_m
    return mu, var


@njit(nogil=True)
def _channel_affine_kernel(x3, scale, shift, y):
    """``y[n, c, p] = x[n, c, p] * scale[c] + shift[c]``."""
    n, c, p = x3.shape
    for i in range(n):
        for j in range(c):
            sc = scale[j]
            sh = shift[j]
            for k in range(p):
                y[i, j, k] = x3[i, j, k] * sc + sh


@njit(nogil=True, fastmath=_REASSOC)
def _channel_grad_sums_kernel(dy3, x3, mu):
    """Per channel: ``sum(dy)`` and ``sum(dy * (x - mu))``, float64 accumulators."""
    n, c, p = dy3.shape
    s_dy = np.empty(c)
    s_dyxc = np.empty(c)
    for j in range(c):
        m = mu[j]
        t0 = 0.0
        t1 = 0.0
        for i in range(n):
            for k in range(p):
                g = dy3[i, j, k]
                t0 += g
                t1 += g * (x3[i, j, k] - m)
        s_dy[j] = t0
        s_dyxc[j] = t1
    return s_dy, s_dyxc


@njit(nogil=True)
def _batchnorm_dx_kernel(dy3, x3, mu, a, k1, k0, dx):
    """``dx = a dy - (x - mu) k1 - k0`` per channel."""
    n, c, p = dy3.shape
    for i in range(n):
        for j in range(c):
            aj = a[j]
            mj = mu[j]
            k1j = k1[j]
            k0j = k0[j]
            for k in range(p):
                dx[i, j, k] = aj * dy3[i, j, k] - (x3[i, j, k] - mj) * k1j - k0j


def batchnorm_train_forward(x3: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps):
    """``(y3, mu, var, inv_std)`` as :func:`batchnorm_train_forward_numpy`; the kernel for
    float32/64. The statistics come back in x3's dtype in both paths.
    """
    if x3.dtype not in KERNEL_DTYPES:
        return batchnorm_train_forward_numpy(x3, gamma, beta, eps)
    x3 = np.ascontiguousarray(x3)
    mu64, var64 = _channel_mean_var_kernel(x3)
    dt = x3.dtype
    mu, var = mu64.astype(dt), var64.astype(dt)
    inv_std = 1.0 / np.sqrt(var + dt.type(eps))
    a = gamma.astype(dt, copy=False) * inv_std
    shift = beta.astype(dt, copy=False) - mu * a  # y = a (x - mu) + beta = a x + (beta - a mu)
    y3 = np.empty_like(x3)  # NumPy's allocation: huge pages (see maxpool2d_forward)
    _channel_affine_kernel(x3, a, shift, y3)
    return y3, mu, var, inv_std


def batchnorm_train_backward(dy3, x3, mu, inv_std, a):
    """``(dx3, dgamma, dbeta)`` as :func:`batchnorm_train_backward_numpy`; kernel for float32/64."""
    if dy3.dtype not in KERNEL_DTYPES or x3.dtype != dy3.dtype:
        return batchnorm_train_backward_numpy(dy3, x3, mu, inv_std, a)
    dy3, x3 = np.ascontiguousarray(dy3), np.ascontiguousarray(x3)
    dt = dy3.dtype
    m = x3.shape[0] * x3.shape[2]
    mu = mu.astype(dt, copy=False)
    s_dy, s_dyxc = _channel_grad_sums_kernel(dy3, x3, mu)
    dbeta = s_dy.astype(dt)
    dgamma = (s_dyxc * inv_std).astype(dt)
    a = a.astype(dt, copy=False)
    k1 = (a * inv_std * dgamma / m).astype(dt)
    k0 = (a * dbeta / m).astype(dt)
    dx3 = np.empty_like(dy3)
    _batchnorm_dx_kernel(dy3, x3, mu, a, k1, k0, dx3)
    return dx3, dgamma, dbeta


# ------------------------------------------------------------------------------ ReLU


def relu_backward_numpy(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``dx = dy * 1[y > 0]`` from ReLU's output ``y = max(x, 0)``: ``y > 0`` exactly where
    ``x > 0`` (a NaN input gives a NaN output, and both comparisons are False), so the output
    serves as the mask and the forward pass needs no second array."""
    return dy * (y > 0)


@njit(nogil=True)
def _relu_backward_kernel(dy, y, dx):
    """``dx[i] = dy[i] * (y[i] > 0)`` in one pass (the twin makes a bool array, then multiplies).
    A multiply, not a select, so that a NaN or infinite ``dy`` where ``y <= 0`` gives what the
    twin gives (NaN, and -0.0 for a negative ``dy``), bit for bit."""
    for i in range(dy.size):
        dx[i] = dy[i] * (y[i] > 0)


def relu_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`relu_backward_numpy`; the kernel when ``dy`` and ``y`` are float32/64 of one dtype
    (measured on a (128, 32, 28, 28) float32 batch, AMD EPYC Zen 4: 0.9-1.3 ms against 1.2-1.5
    for the twin, and the forward pass saves its ``x > 0`` pass, 0.3 ms)."""
    if dy.dtype not in KERNEL_DTYPES or y.dtype != dy.dtype or dy.shape != y.shape:
        return relu_backward_numpy(dy, y)
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    dx = np.empty_like(dy)  # NumPy's allocation: huge pages (see the module docstring)
    _relu_backward_kernel(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


# ------------------------------------------------------------------------------ col2im


@njit(nogil=True)
def im2col_t_kernel(xp, kh, kw, sh, sw, oh, ow, out):
    """``out = im2col(x).T`` from the zero-padded input laid out channels first, ``xp`` of shape
    (C, N, Hp, Wp): the twin is the strided window copy of
    :func:`ternref.nn.functional._im2col_t_numpy`.

    ``out[(c*kh + a)*kw + b, (n*OH + i)*OW + j] = xp[c, n, i*sh + a, j*sw + b]``. At stride 1
    each (c, a, b, n, i) is a copy of ``OW`` contiguous values between two slices, in a loop nest
    of its own: with the strides as run-time values in the index arithmetic the same copy ran
    30% slower, and slower still with the stride test inside the loops. LeNet-5's conv2 at batch
    128 (32 x 14 x 14 -> 800 x 12800) on the Zen 2 VM (2026-12-08): 4.4 ms against 8.4 ms for
    the twin's 6-D ``np.copyto`` (conv1: 0.5 against 0.9 ms).
    """
    c, n = xp.shape[0], xp.shape[1]
    if sh == 1 and sw == 1:
        for ci in range(c):
            for a in range(kh):
                for b in range(kw):
                    row = out[(ci * kh + a) * kw + b]
                    for ni in range(n):
                        img = xp[ci, ni]
                        for i in range(oh):
                            src = img[i + a, b : b + ow]
                            dst = row[(ni * oh + i) * ow : (ni * oh + i + 1) * ow]
                            for j in range(ow):
                                dst[j] = src[j]
        return
    for ci in range(c):
        for a in range(kh):
            for b in range(kw):
                row = out[(ci * kh + a) * kw + b]
                for ni in range(n):
                    img = xp[ci, ni]
                    for i in range(oh):
                        src_row = img[i * sh + a]
                        dst = row[(ni * oh + i) * ow : (ni * oh + i + 1) * ow]
                        for j in range(ow):
                            dst[j] = src_row[j * sw + b]


@njit(nogil=True)
def col2im_t_kernel(cols_t, kh, kw, sh, sw, ph, pw, oh, ow, dx):
    """``dx += col2im(cols_t.T)``: the twin is the strided-slice loop of
    :func:`ternref.nn.functional.col2im_t`.

    ``cols_t[(c*kh + a)*kw + b, (n*OH + i)*OW + j]`` goes to ``dx[n, c, i*sh + a - ph,
    j*sw + b - pw]`` when that lies inside the (unpadded) input; padding positions are dropped.
    Each dx element receives its terms in the twin's order (offsets (a, b) row-major), so the
    sums are bit-identical.

    The columns ``j`` that land inside the input, ``0 <= j sw + b - pw < w``, are a range
    ``j0 <= j < j1`` computed once per offset, so the inner loop has no test: with the test inside,
    LLVM vectorized it with masked loads and stores (``vmaskmovps``), slow on AMD's Zen cores.
    With stride 1 the loop runs over two contiguous slices (no index arithmetic, no negative-index
    wraparound per element). LeNet-5's conv2 backward (16 images of 32 x 14 x 14, 5 x 5) on the
    Zen 2 VM (2026-12-08): 1.49 ms with the test, 1.38 with the range, 0.77 with the slices.
    """
    n, c, h, w = dx.shape
    for ci in range(c):
        for a in range(kh):
            for b in range(kw):
                row = cols_t[(ci * kh + a) * kw + b]
                shift = b - pw  # q = j sw + shift
                j0 = 0 if shift >= 0 else (-shift + sw - 1) // sw  # first j with q >= 0
                j1 = min(ow, (w - 1 - shift) // sw + 1) if w - 1 - shift >= 0 else 0
                for ni in range(n):
                    for i in range(oh):
                        p = i * sh + a - ph
                        if p < 0 or p >= h:
                            continue
                        base = (ni * oh + i) * ow
                        if sw == 1:  # contiguous slices: no index arithmetic in the loop
                            dst = dx[ni, ci, p, j0 + shift : j1 + shift]
                            src = row[base + j0 : base + j1]
                            for t in range(dst.shape[0]):
                                dst[t] += src[t]
                        else:
                            out = dx[ni, ci, p]
                            for j in range(j0, j1):
                                out[j * sw + shift] += row[base + j]
