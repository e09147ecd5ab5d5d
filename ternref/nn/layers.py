"""Layers with hand-derived backward passes: Linear, Conv2d, pooling, ReLU, Flatten, Dropout,
BatchNorm and Sequential.

Every layer follows the contract of :class:`ternref.nn.module.Module`: ``forward(x)`` caches what
the backward needs, ``backward(dy)`` returns ``dL/dx`` and *adds* parameter gradients into
``Parameter.grad``. The derivation of each backward sits in the class docstring or beside the line.

dtypes: parameters are float32 unless ``dtype=`` says otherwise (use float64 for gradient checks);
the output always has the input's float dtype (parameters are cast to it for the computation).

**Weight quantizer hook.** :class:`Linear` and :class:`Conv2d` accept ``weight_quantizer``, a
:class:`Module` with ``forward(w) -> w_hat`` (same shape) and ``backward(dL/dw_hat) -> dL/dw``.
The dense op then runs on ``w_hat`` (the four objects of DESIGN.md: latent ``w`` stays in
``self.weight``, ``w_hat`` is only cached for the backward). The backward computes ``dL/dw_hat``
from the cached ``w_hat`` and input, and accumulates ``weight_quantizer.backward(dL/dw_hat)`` into
``self.weight.grad``; the quantizer accumulates the gradients of its own learned parameters (e.g.
TTQ's scales) itself. The attribute is assignable after construction, and because it is a child
module its parameters appear in ``layer.parameters()``.

References
----------
A. Karpathy et al., CS231n assignment 2 (``layers.py``), Stanford 2016.
S. Ioffe, C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
Internal Covariate Shift", ICML 2015, arXiv:1502.03167.
N. Srivastava, G. Hinton, A. Krizhevsky, I. Sutskever, R. Salakhutdinov, "Dropout: A Simple Way to
Prevent Neural Networks from Overfitting", JMLR 2014.
"""

from __future__ import annotations

import math

import numpy as np

from ternref._validate import describe, float_array, generator, integer, real_number
from ternref.nn import _kernels, init
from ternref.nn.functional import col2im_t, conv_output_shape, im2col_t, pair
from ternref.nn.module import Module, Parameter

__all__ = [
    "Linear",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "ReLU",
    "Flatten",
    "Dropout",
    "BatchNorm1d",
    "BatchNorm2d",
    "Sequential",
]


# Conv2d computes its forward GEMM (with the re-layout to NCHW) and its backward's dcols and
# col2im in chunks of images whose workspace fits this budget: 5 MiB is 16 images of dcols at
# LeNet-5's conv2 (K = 800, OH*OW = 100, float32) and 52 images of conv1's output, and stays in
# the last-level cache between the GEMM that writes it and the copy that reads it (1 MiB was
# slower: the GEMMs get too narrow; measured on an AMD EPYC with 32 MiB L3)
_CHUNK_BYTES = 5 * 2**20


def _rng(rng) -> np.random.Generator:
    return np.random.default_rng() if rng is None else generator(rng)


def _float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"dtype must be a floating-point dtype, got {dt}")
    return dt


def _check_input(layer: Module, x, expected: tuple) -> np.ndarray:
    """Check ``x`` against ``expected`` (ints fixed, None free) and name the layer on failure.

    Finiteness is not checked here (a full pass over every activation would cost as much as a
    ReLU); the shape and dtype checks are O(1).
    """
    x = float_array(x, f"{type(layer).__name__} input", finite=False)
    ok = x.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(
            f"{layer!r}: expected input of shape {want} (* = any), got shape {x.shape}"
        )
    return x


def _need_cache(layer: Module, value):
    if value is None:
        raise RuntimeError(f"{type(layer).__name__}.backward called before forward")
    return value


def _check_dy(layer: Module, dy, shape: tuple) -> np.ndarray:
    dy = float_array(dy, f"{type(layer).__name__} dy", finite=False)
    if dy.shape != shape:
        raise ValueError(
            f"{type(layer).__name__}.backward: dy must have the output shape {shape}, "
            f"got {dy.shape}"
        )
    return dy


class _QuantizableWeight(Module):
    """Shared weight / bias / weight-quantizer logic of :class:`Linear` and :class:`Conv2d`."""

    def _init_params(self, shape: tuple, bias: bool, rng, dtype) -> None:
        rng = _rng(rng)
        dtype = _float_dtype(dtype)
        fan_in, _ = init.compute_fans(shape)
        # PyTorch default (reset_parameters): kaiming_uniform_(a=sqrt(5)) => U(+-1/sqrt(fan_in)),
        # bias U(+-1/sqrt(fan_in)).
        w = init.kaiming_uniform(shape, rng, gain=1.0 / math.sqrt(3.0), dtype=dtype)
        self.weight = Parameter(w, "weight")
        bound = 1.0 / math.sqrt(fan_in)
        self.bias = (
            Parameter(rng.uniform(-bound, bound, size=shape[0]).astype(dtype), "bias")
            if bias
            else None
        )
        self._w_hat = None

    def _weight_hat(self, dtype) -> np.ndarray:
        """``w_hat`` = quantizer(w) (or ``w``), cast to the activation dtype, cached."""
        q = self.weight_quantizer
        if q is None:
            w_hat = self.weight.data
        else:
            if not isinstance(q, Module):
                raise TypeError(
                    f"{type(self).__name__}.weight_quantizer must be None or a Module with "
                    f"forward/backward, got {describe(q)}"
                )
            w_hat = np.asarray(q(self.weight.data))
            if w_hat.shape != self.weight.data.shape:
                raise ValueError(
                    f"weight_quantizer {type(q).__name__} returned shape {w_hat.shape}, "
                    f"expected the weight shape {self.weight.data.shape}"
                )
        w_hat = w_hat.astype(dtype, copy=False)
        self._w_hat = w_hat
        return w_hat

    def _accumulate_weight_grad(self, dw_hat: np.ndarray) -> None:
        # chain rule through w_hat = q(w): dL/dw = q.backward(dL/dw_hat); identity without q
        dw = dw_hat if self.weight_quantizer is None else self.weight_quantizer.backward(dw_hat)
        if self.weight.requires_grad:
            self.weight.grad += dw


class Linear(_QuantizableWeight):
    """Fully connected layer ``y = x @ w_hat.T + b``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    rng : numpy.random.Generator, optional
        For the initialisation; ``None`` uses ``np.random.default_rng()``.
    weight_quantizer : Module, optional
        See the module docstring (``w_hat = weight_quantizer(w)``).
    dtype : float dtype, default float32

    Attributes
    ----------
    weight : Parameter, shape (out_features, in_features)
        Initialised ``U(+-1/sqrt(in_features))`` (PyTorch's default).
    bias : Parameter, shape (out_features,), or None
        Initialised ``U(+-1/sqrt(in_features))``.

    Notes
    -----
    Shapes: x (N, in), w_hat (out, in), y (N, out). From ``y_nk = sum_i x_ni w_ki + b_k``::

        dL/dx_ni     = sum_k dy_nk w_ki        ->  dx = dy @ w_hat           (N, in)
        dL/dw_hat_ki = sum_n dy_nk x_ni        ->  dw_hat = dy.T @ x         (out, in)
        dL/db_k      = sum_n dy_nk             ->  db = dy.sum(0)            (out,)

    Leading dimensions: x may be (..., in) with at least one leading axis (a transformer's
    (B, T, in)); every leading index is one more row n, so the layer flattens x to
    (N = prod(...), in), applies the formulas above, and restores the leading shape on y and dx
    (the weight and bias gradients sum over all N rows). The flattening is a view for a
    C-contiguous x, so the GEMM is one BLAS call however many leading axes there are.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, rng=None,
        weight_quantizer: Module | None = None, dtype=np.float32,
    ):  # fmt: skip
        super().__init__()
        self.in_features = integer(in_features, "in_features", low=1)
        self.out_features = integer(out_features, "out_features", low=1)
        self._init_params((self.out_features, self.in_features), bias, rng, dtype)
        self.weight_quantizer = weight_quantizer
        self._x = None
        self._lead = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, in) or (..., in) -> y (N, out) or (..., out)."""
        x = float_array(x, "Linear input", finite=False)
        if x.ndim < 2 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self!r}: expected input of shape (*, {self.in_features}) (* = one or more "
                f"leading dimensions), got shape {x.shape}"
            )
        w_hat = self._weight_hat(x.dtype)
        x2 = x.reshape(-1, self.in_features)  # (N, in): a view for contiguous x
        y = np.matmul(x2, w_hat.T)
        if self.bias is not None:
            y += self.bias.data.astype(x.dtype, copy=False)
        self._x = x2
        self._lead = x.shape[:-1]
        return y.reshape(*self._lead, self.out_features)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy (..., out) -> dx (..., in); accumulates weight (through the quantizer) and bias
        grads."""
        dy2 = self._param_grads(dy)
        return np.matmul(dy2, self._w_hat).reshape(*self._lead, self.in_features)

    def backward_params(self, dy: np.ndarray) -> None:
        """The parameter gradients of :meth:`backward`, without the ``dy @ w_hat`` product."""
        self._param_grads(dy)

    def _param_grads(self, dy: np.ndarray) -> np.ndarray:
        """Accumulate dw and db; return ``dy`` flattened to (N, out)."""
        x2 = _need_cache(self, self._x)
        dy = _check_dy(self, dy, (*self._lead, self.out_features))
        dy2 = dy.reshape(-1, self.out_features)
        self._accumulate_weight_grad(np.matmul(dy2.T, x2))
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += dy2.sum(axis=0)
        return dy2

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class Conv2d(_QuantizableWeight):
    """2-D convolution (cross-correlation, as in every framework) on NCHW input via im2col.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : int or (int, int), default 0
        Zero padding on each side.
    bias : bool, default True
    rng : numpy.random.Generator, optional
    weight_quantizer : Module, optional
        See the module docstring.
    dtype : float dtype, default float32

    Attributes
    ----------
    weight : Parameter, shape (out_channels, in_channels, kh, kw)
        ``U(+-1/sqrt(fan_in))``, ``fan_in = in_channels*kh*kw`` (PyTorch's default).
    bias : Parameter, shape (out_channels,), or None

    Notes
    -----
    With ``cols_t = im2col(x).T`` of shape (K, M), K = C*kh*kw, M = N*OH*OW, and
    ``W2 = w_hat.reshape(O, K)``, the forward is one GEMM ``Y = W2 @ cols_t + b`` (O, M), then
    ``y = Y.reshape(O, N, OH, OW).transpose(1, 0, 2, 3)``. Backward, with ``dY`` (O, M) the same
    re-layout of ``dy``::

        dW2    = dY @ cols_t.T         (O, K)   -> dw_hat = dW2.reshape(w.shape)
        db     = dY.sum(axis=1)        (O,)
        dcols  = W2.T @ dY             (K, M)
        dx     = col2im(dcols.T)       (N, C, H, W)   adjoint of the im2col copy

    The forward computes ``Y`` and the backward ``dcols`` and ``dx`` a chunk of images at a time
    (the columns of image n come from and go to image n only), so neither the (O, M) ``Y`` nor
    the (K, M) ``dcols`` exists whole.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
        bias: bool = True, rng=None, weight_quantizer: Module | None = None, dtype=np.float32,
    ):  # fmt: skip
        super().__init__()
        self.in_channels = integer(in_channels, "in_channels", low=1)
        self.out_channels = integer(out_channels, "out_channels", low=1)
        self.kernel_size = pair(kernel_size, "kernel_size", low=1)
        self.stride = pair(stride, "stride", low=1)
        self.padding = pair(padding, "padding", low=0)
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        self._init_params(shape, bias, rng, dtype)
        self.weight_quantizer = weight_quantizer
        self._cols_t = None
        self._y_t = None  # forward's workspace for one chunk of W2 @ cols_t, reused
        self._dcols_t = None  # backward's dcols workspace (one chunk of images), reused
        self._x_shape = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C_in, H, W) -> y (N, C_out, OH, OW)."""
        x = _check_input(self, x, (None, self.in_channels, None, None))
        n, _, h, w = x.shape
        oh, ow = conv_output_shape(h, w, self.kernel_size, self.stride, self.padding)
        w_hat = self._weight_hat(x.dtype)
        # the previous step's im2col matrix is dead once a new forward starts: write over it
        # (im2col_t allocates when the shape or dtype differ)
        cols_t = im2col_t(x, self.kernel_size, self.stride, self.padding, out=self._cols_t)
        self._cols_t, self._x_shape = cols_t, x.shape
        o, per_image = self.out_channels, oh * ow
        w2 = w_hat.reshape(o, -1)
        bias = None if self.bias is None else self.bias.data.astype(x.dtype, copy=False)[:, None]
        # Y = W2 @ cols_t + b and its re-layout to NCHW a chunk of images at a time, so that
        # the chunk of Y is still in the cache when it is copied into y (conv1 of LeNet-5 at
        # batch 128: 3.8 -> 2.6 ms, measured on 2 cores)
        y = np.empty((n, o, oh, ow), dtype=x.dtype)
        images, buf = self._chunk(n, o * per_image, x.dtype, "_y_t")
        for n0 in range(0, n, images):
            n1 = min(n, n0 + images)
            y_t = buf[: o * (n1 - n0) * per_image].reshape(o, (n1 - n0) * per_image)
            np.matmul(w2, cols_t[:, n0 * per_image : n1 * per_image], out=y_t)
            if bias is not None:
                y_t += bias
            y[n0:n1] = y_t.reshape(o, n1 - n0, oh, ow).transpose(1, 0, 2, 3)
        return y

    def _chunk(self, n: int, per_image: int, dtype, name: str):
        """(images per chunk, flat workspace): as many images as fit ``_CHUNK_BYTES`` (at least
        one) when each needs ``per_image`` elements; the buffer in attribute ``name`` is reused
        while its size and dtype hold."""
        dtype = np.dtype(dtype)
        images = max(1, min(n, _CHUNK_BYTES // max(1, per_image * dtype.itemsize)))
        buf = getattr(self, name)
        if buf is None or buf.size != per_image * images or buf.dtype != dtype:
            buf = np.empty(per_image * images, dtype=dtype)
            setattr(self, name, buf)
        return images, buf

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy (N, C_out, OH, OW) -> dx (N, C_in, H, W); accumulates weight and bias grads."""
        dy_t = self._param_grads(dy)
        w2_t = self._w_hat.reshape(self.out_channels, -1).T  # (K, O)
        n, _, h, w = self._x_shape
        oh, ow = conv_output_shape(h, w, self.kernel_size, self.stride, self.padding)
        k, per_image = w2_t.shape[0], oh * ow  # dcols has OH*OW columns per image
        dtype = np.result_type(w2_t, dy_t)
        # dcols = W2.T @ dY and dx = col2im(dcols.T) one chunk of images at a time: image n's
        # columns of dcols depend only on image n's columns of dY and feed only dx[n], so the
        # chunks compute the same dot products, and a chunk's dcols is still in the cache when
        # col2im reads it (the whole (K, M) matrix is 41 MB at LeNet-5's conv2, batch 128;
        # written to memory and read back it cost 2.5-5 ms a step more, measured on 2 cores)
        images, buf = self._chunk(n, k * per_image, dtype, "_dcols_t")
        dx = np.empty(self._x_shape, dtype=dtype)
        for n0 in range(0, n, images):
            n1 = min(n, n0 + images)
            m0, m1 = n0 * per_image, n1 * per_image
            dcols_t = buf[: k * (m1 - m0)].reshape(k, m1 - m0)  # contiguous, also the last chunk
            np.matmul(w2_t, dy_t[:, m0:m1], out=dcols_t)
            col2im_t(dcols_t, dx[n0:n1].shape, self.kernel_size, self.stride, self.padding,
                     out=dx[n0:n1])  # fmt: skip
        return dx

    def backward_params(self, dy: np.ndarray) -> None:
        """The parameter gradients of :meth:`backward`, without ``dcols`` and ``col2im``."""
        self._param_grads(dy)

    def _param_grads(self, dy: np.ndarray) -> np.ndarray:
        """Accumulate dw and db; return ``dY`` re-laid out as (O, M)."""
        cols_t = _need_cache(self, self._cols_t)
        n, _, h, w = self._x_shape
        oh, ow = conv_output_shape(h, w, self.kernel_size, self.stride, self.padding)
        dy = _check_dy(self, dy, (n, self.out_channels, oh, ow))
        o = self.out_channels
        dy_t = dy.transpose(1, 0, 2, 3).reshape(o, n * oh * ow)  # (O, M), one copy
        # dW2 = dY @ cols_t.T computed as (cols_t @ dY.T).T: the same product, but OpenBLAS runs
        # the (O, M) x (M, K) "NT" form ~10x slower than its (K, M) x (M, O) transpose at
        # conv2's shapes (O=64, M=12800, K=800: 340 ms against 25 ms, measured on 2 cores)
        dw2 = np.matmul(cols_t, dy_t.T).T  # (O, K), a transposed view
        self._accumulate_weight_grad(dw2.reshape(self._w_hat.shape))
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += dy_t.sum(axis=1)
        return dy_t

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size", low=1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", low=1)
        self._x_shape = None

    def _windows(self, shape):
        """Yield ``(t, slice)`` for each window offset (a, b): the strided view of that offset."""
        return _kernels.pool_windows(shape[2], shape[3], self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class MaxPool2d(_Pool2d):
    """Max pooling over ``kernel_size`` windows (no padding, floor mode).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size`` (non-overlapping windows), as in PyTorch.

    Notes
    -----
    Shapes: x (N, C, H, W) -> y (N, C, OH, OW). ``y = max_{(a,b)} x[.., i*sh+a, j*sw+b]`` is
    piecewise linear: its derivative routes ``dy`` to the element that attained the maximum.

    **Ties:** when several elements of a window equal the maximum, the gradient goes to exactly
    one of them, the *first* in row-major order of the window (offset ``a*kw + b`` smallest),
    which is what PyTorch's CPU kernel does. The backward walks the offsets in row-major order
    and routes ``dy`` to the first element equal to the window maximum, skipping windows already
    served. With overlapping windows (stride < kernel) an element can win several windows and
    then receives the sum of their gradients. A NaN in a window propagates to its output (as in
    PyTorch) and that window then routes no gradient.

    For float32/float64 input and 2x2 windows of stride 2, the forward records the routed offset
    of each window and the backward scatters ``dy`` there (Numba kernels in
    :mod:`ternref.nn._kernels`, proven equal to the NumPy twin of the walk above); other cases
    run the twin, which keeps a reference to ``x`` (do not modify the input in place between the
    two passes).
    """

    def __init__(self, kernel_size, stride=None):
        super().__init__(kernel_size, stride)
        self._cache = None
        self._y_shape = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _check_input(self, x, (None, None, None, None))
        conv_output_shape(x.shape[2], x.shape[3], self.kernel_size, self.stride, 0)  # checks
        y, self._cache = _kernels.maxpool2d_forward(x, self.kernel_size, self.stride)
        self._y_shape = y.shape
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        cache = _need_cache(self, self._cache)
        dy = _check_dy(self, dy, self._y_shape)
        return _kernels.maxpool2d_backward(dy, cache, self.kernel_size, self.stride)


class AvgPool2d(_Pool2d):
    """Average pooling over ``kernel_size`` windows (no padding, floor mode).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.

    Notes
    -----
    ``y = (1/(kh*kw)) sum_{(a,b)} x[.., i*sh+a, j*sw+b]`` is linear, so every element of a window
    receives ``dy / (kh*kw)`` (summed over the windows that contain it).
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _check_input(self, x, (None, None, None, None))
        out = None
        for _, sl in self._windows(x.shape):
            out = x[sl].copy() if out is None else np.add(out, x[sl], out=out)
        self._x_shape = x.shape
        out *= x.dtype.type(1.0 / (self.kernel_size[0] * self.kernel_size[1]))
        return out

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape = _need_cache(self, self._x_shape)
        oh, ow = conv_output_shape(shape[2], shape[3], self.kernel_size, self.stride, 0)
        dy = _check_dy(self, dy, (shape[0], shape[1], oh, ow))
        share = dy * dy.dtype.type(1.0 / (self.kernel_size[0] * self.kernel_size[1]))
        dx = np.zeros(shape, dtype=dy.dtype)
        for _, sl in self._windows(shape):
            dx[sl] += share
        return dx


class ReLU(Module):
    """``y = max(x, 0)``; ``dx = dy * 1[x > 0]`` (subgradient 0 at x = 0, as PyTorch).

    The backward pass reads the mask from the saved output, ``1[x > 0] = 1[y > 0]`` (as
    PyTorch's ``threshold_backward`` on the result does), which saves the forward pass a second
    whole-array pass and array; so, as in PyTorch, the returned ``y`` must not be modified in
    place before :meth:`backward` (ternref's layers never do).
    """

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = float_array(x, "ReLU input", finite=False, allow_empty=True)
        self._y = np.maximum(x, x.dtype.type(0))
        return self._y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = _need_cache(self, self._y)
        dy = _check_dy(self, dy, y.shape)
        return _kernels.relu_backward(dy, y)


class Flatten(Module):
    """``(N, d1, d2, ...) -> (N, d1*d2*...)`` (a view when possible); backward reshapes back."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = float_array(x, "Flatten input", finite=False)
        if x.ndim < 2:
            raise ValueError(f"Flatten(): expected input of shape (N, ...), got shape {x.shape}")
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape = _need_cache(self, self._shape)
        dy = _check_dy(self, dy, (shape[0], math.prod(shape[1:])))
        return dy.reshape(shape)


class Dropout(Module):
    """Inverted dropout: zero each element with probability ``p``, scale survivors by 1/(1-p).

    Parameters
    ----------
    p : float in [0, 1)
        Drop probability.
    rng : numpy.random.Generator, optional
        Source of the masks; ``None`` uses ``np.random.default_rng()``.

    Notes
    -----
    Training: ``m_i ~ Bernoulli(1-p)``, ``y = x * m / (1-p)``, hence ``E[y] = x``; the scaled mask
    ``s = m/(1-p)`` is cached and the backward is ``dx = dy * s`` with the very same mask.
    Evaluation (``.eval()``): identity in both directions.

    References
    ----------
    N. Srivastava, G. Hinton, A. Krizhevsky, I. Sutskever, R. Salakhutdinov, JMLR 15, 2014.
    """

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        self.p = real_number(p, "p", low=0.0, high=1.0, high_open=True)
        self.rng = _rng(rng)
        self._mask = None
        self._shape = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = float_array(x, "Dropout input", finite=False, allow_empty=True)
        self._shape = x.shape
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        u_dtype = np.float64 if x.dtype == np.float64 else np.float32
        keep = self.rng.random(x.shape, dtype=u_dtype) >= self.p  # P(keep) = 1 - p
        self._mask = keep * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self._mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape = _need_cache(self, self._shape)
        dy = _check_dy(self, dy, shape)
        return dy if self._mask is None else dy * self._mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _BatchNorm(Module):
    """Batch normalisation over every axis except the channel axis 1.

    Notes
    -----
    Training, per channel over the m = N*(spatial) values of the batch:

        mu = mean(x),  var = mean((x - mu)^2)            (biased, used for normalising)
        xhat = (x - mu) / sqrt(var + eps),   y = gamma * xhat + beta
        running_mean <- (1 - momentum) * running_mean + momentum * mu
        running_var  <- (1 - momentum) * running_var  + momentum * var * m / (m - 1)  (unbiased)

    Evaluation uses ``running_mean``/``running_var`` in place of ``mu``/``var`` (PyTorch
    semantics, ``torch.nn.BatchNorm1d/2d`` documentation).

    Backward in training (mu and var depend on every x of the channel). With
    ``g = dL/dxhat = dy * gamma`` and ``s = 1/sqrt(var + eps)``:

        dL/dvar = sum(g * (x - mu)) * (-1/2) s^3
        dL/dmu  = -s sum(g)            (the dL/dvar * d var/d mu term is zero: sum(x - mu) = 0)
        dx      = g s + dL/dvar * 2 (x - mu) / m + dL/dmu / m
                = (s / m) * (m g - sum(g) - xhat * sum(g * xhat))

    and since sum(g) = gamma*sum(dy), sum(g*xhat) = gamma*sum(dy*xhat):
    ``dx = gamma*s/m * (m*dy - dbeta - xhat*dgamma)`` with ``dbeta = sum(dy)``,
    ``dgamma = sum(dy * xhat)``. In evaluation mu, var are constants: ``dx = dy * gamma * s``.

    References
    ----------
    S. Ioffe, C. Szegedy, ICML 2015, arXiv:1502.03167.
    """

    _ndims: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype=np.float32):  # fmt: skip
        super().__init__()
        self.num_features = integer(num_features, "num_features", low=1)
        self.eps = real_number(eps, "eps", low=0.0, low_open=True)
        self.momentum = real_number(momentum, "momentum", low=0.0, high=1.0)
        dtype = _float_dtype(dtype)
        self.weight = Parameter(np.ones(self.num_features, dtype=dtype), "weight")
        self.bias = Parameter(np.zeros(self.num_features, dtype=dtype), "bias")
        self.running_mean = np.zeros(self.num_features, dtype=dtype)
        self.running_var = np.ones(self.num_features, dtype=dtype)
        self.num_batches_tracked = 0
        self._cache = None

    def _check(self, x) -> np.ndarray:
        x = float_array(x, f"{type(self).__name__} input", finite=False)
        if x.ndim not in self._ndims or x.shape[1] != self.num_features:
            want = " or ".join(
                "(" + ", ".join(["N", str(self.num_features)] + ["*"] * (d - 2)) + ")"
                for d in self._ndims
            )
            raise ValueError(f"{self!r}: expected input of shape {want}, got shape {x.shape}")
        return x

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        c = self.num_features
        x3 = x.reshape(x.shape[0], c, -1)  # (N, C, P): statistics over axes 0 and 2
        m = x3.shape[0] * x3.shape[2]
        dt = x.dtype.type
        gamma = self.weight.data.astype(x.dtype, copy=False)
        beta = self.bias.data.astype(x.dtype, copy=False)
        if self.training:
            if m < 2:
                raise ValueError(
                    f"{type(self).__name__} in training mode needs more than 1 value per "
                    f"channel to compute batch statistics, got input shape {x.shape}"
                )
            # mu, biased var, y = gamma (x - mu) / sqrt(var + eps) + beta: one kernel (or its
            # NumPy twin) in ternref.nn._kernels
            y3, mu, var, inv_std = _kernels.batchnorm_train_forward(x3, gamma, beta, self.eps)
            # running estimates: unbiased variance (m/(m-1)) as torch.nn.BatchNorm does
            mom = self.momentum
            self.running_mean *= 1.0 - mom
            self.running_mean += mom * mu
            self.running_var *= 1.0 - mom
            self.running_var += mom * var * (m / (m - 1))
            self.num_batches_tracked += 1
        else:
            mu = self.running_mean.astype(x.dtype)
            inv_std = 1.0 / np.sqrt(self.running_var.astype(x.dtype) + dt(self.eps))
        a = gamma * inv_std
        if not self.training:
            # y = gamma * xhat + beta = x * (gamma s) + (beta - mu gamma s)
            y3 = x3 * a[None, :, None]
            y3 += (beta - mu * a)[None, :, None]
        # x is kept by reference (no copy): do not modify the input in place before backward
        self._cache = (x3, x.shape, mu, inv_std, a, self.training)
        return y3.reshape(x.shape)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x3, x_shape, mu, inv_std, a, training = _need_cache(self, self._cache)
        dy = _check_dy(self, dy, x_shape)
        dy3 = dy.reshape(x3.shape)
        if training:
            # dx = gamma*s/m * (m*dy - dbeta - xhat*dgamma), the kernel (or twin) in _kernels
            dx3, dgamma, dbeta = _kernels.batchnorm_train_backward(dy3, x3, mu, inv_std, a)
        else:  # mu, var are constants: dx = dy * gamma * s
            xc = x3 - mu[None, :, None]
            dbeta = dy3.sum(axis=(0, 2))
            dgamma = np.einsum("ncp,ncp->c", dy3, xc) * inv_std  # sum(dy * xhat)
            dx3 = dy3 * a.astype(dy.dtype, copy=False)[None, :, None]
        if self.weight.requires_grad:
            self.weight.grad += dgamma
        if self.bias.requires_grad:
            self.bias.grad += dbeta
        return dx3.reshape(dy.shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) input, statistics per channel C.

    Parameters
    ----------
    num_features : int
        C.
    eps : float, default 1e-5
    momentum : float, default 0.1
        ``running <- (1 - momentum) * running + momentum * batch_stat``.
    dtype : float dtype, default float32

    Attributes
    ----------
    weight, bias : Parameter, shape (C,)
        gamma (ones) and beta (zeros).
    running_mean, running_var : ndarray, shape (C,)
        Zeros and ones initially; updated in training mode (unbiased variance).

    Notes
    -----
    Forward and backward derivation: see :class:`_BatchNorm` (same math as BatchNorm2d).
    """

    _ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) input, statistics per channel over N, H, W.

    Parameters, attributes and notes as :class:`BatchNorm1d`.
    """

    _ndims = (4,)


class Sequential(Module):
    """Run layers in order; backpropagate in reverse order.

    Parameters
    ----------
    *layers : Module

    Attributes
    ----------
    layers : list of Module
        Indexable as ``seq[i]`` (a slice returns a new Sequential sharing the layers),
        ``len(seq)``, ``iter(seq)``.
    """

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential layer {i} must be a Module, got {describe(layer)}")
        self.layers = list(layers)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def backward_params(self, dy: np.ndarray) -> None:
        """Backward through every layer, the first one without its ``dx``."""
        if not self.layers:
            return
        for layer in reversed(self.layers[1:]):
            dy = layer.backward(dy)
        self.layers[0].backward_params(dy)

    def append(self, layer: Module) -> Sequential:
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential.append expects a Module, got {describe(layer)}")
        self.layers.append(layer)
        return self

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)
