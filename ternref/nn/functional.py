"""Stateless array functions behind the convolution and pooling layers: im2col and its adjoint.

A 2-D convolution of an NCHW batch ``x`` with weights ``W`` of shape ``(out, C, kh, kw)`` is one
matrix product once every receptive field is copied into a row::

    cols = im2col(x, (kh, kw), stride, padding)  # (N*OH*OW, C*kh*kw), columns (C, kh, kw)
    y    = cols @ W.reshape(out, -1).T           # (N*OH*OW, out), rows (n, oh, ow)
    y    = y.reshape(N, OH, OW, out).transpose(0, 3, 1, 2)

``im2col`` is a linear map ``A`` from input space to patch space; its adjoint ``A^T`` (``col2im``)
sends a patch-space gradient back by *adding* every patch entry to the pixel it was copied from, so
pixels covered by several overlapping windows receive the sum. Backpropagating through the copy is
exactly applying the adjoint: ``dx = A^T dcols``, which the tests check as
``<im2col(x), y> == <x, col2im(y)>`` for random ``x, y``.

Output size (PyTorch ``floor`` mode, no dilation)::

    OH = floor((H + 2*ph - kh) / sh) + 1,     OW = floor((W + 2*pw - kw) / sw) + 1

References
----------
K. Chellapilla, S. Puri, P. Simard, "High Performance Convolutional Neural Networks for Document
Processing", IWFHR 2006 (the unrolling of convolution into a matrix product).
A. Karpathy et al., CS231n assignment 2, ``im2col.py`` / ``layers.py`` (Stanford, 2016).
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ternref._validate import describe, float_array
from ternref.nn import _kernels

__all__ = ["pair", "conv_output_shape", "im2col", "col2im"]


def pair(value, name: str, *, low: int = 0) -> tuple[int, int]:
    """Normalise an int or a pair of ints to ``(a, b)``, each ``>= low``.

    Parameters
    ----------
    value : int or tuple of two ints
        ``k`` means ``(k, k)``.
    name : str
        Argument name used in error messages.
    low : int
        Smallest allowed entry.

    Returns
    -------
    tuple of int
    """
    items = (value, value) if isinstance(value, numbers.Integral) else value
    if isinstance(value, bool) or not isinstance(items, (tuple, list)) or len(items) != 2:
        raise TypeError(f"{name} must be an int or a pair of ints, got {describe(value)}")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int or a pair of ints, got {describe(value)}")
        if v < low:
            raise ValueError(f"{name} entries must be >= {low}, got {tuple(items)}")
        out.append(int(v))
    return out[0], out[1]


def conv_output_shape(h: int, w: int, kernel_size, stride=1, padding=0) -> tuple[int, int]:
    """Spatial output size of a convolution or pooling window sweep (floor mode).

    Parameters
    ----------
    h, w : int
        Input height and width.
    kernel_size, stride, padding : int or (int, int)
        Window size (>= 1), step (>= 1) and zero padding on each side (>= 0).

    Returns
    -------
    (OH, OW) : tuple of int
        ``OH = (h + 2*ph - kh) // sh + 1`` and likewise for ``OW``.

    Raises
    ------
    ValueError
        If the padded input is smaller than the kernel (no output position).
    """
    kh, kw = pair(kernel_size, "kernel_size", low=1)
    sh, sw = pair(stride, "stride", low=1)
    ph, pw = pair(padding, "padding", low=0)
    hp, wp = h + 2 * ph, w + 2 * pw
    if hp < kh or wp < kw:
        raise ValueError(
            f"kernel_size {(kh, kw)} is larger than the padded input {(hp, wp)} "
            f"(input {(h, w)}, padding {(ph, pw)})"
        )
    return (hp - kh) // sh + 1, (wp - kw) // sw + 1


def _check_x(x, name: str = "x") -> np.ndarray:
    x = float_array(x, name, ndim=4, finite=False)
    return x


def _pad(x: np.ndarray, ph: int, pw: int, channels_first: bool = False) -> np.ndarray:
    """Zero-pad the two spatial axes of NCHW ``x``; optionally return it as (C, N, Hp, Wp)."""
    n, c, h, w = x.shape
    if channels_first:
        xp = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        xp[:, :, ph : ph + h, pw : pw + w] = x.transpose(1, 0, 2, 3)
        return xp
    if ph == 0 and pw == 0:
        return x
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    return xp


def _fresh(out: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``out`` as a C-contiguous array owning its memory (reshape may return a view of ``x``)."""
    if not out.flags.c_contiguous or np.may_share_memory(out, x):
        return out.copy()
    return out


def im2col(x: np.ndarray, kernel_size, stride=1, padding=0) -> np.ndarray:
    """Copy every receptive field of an NCHW batch into one row of a matrix.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float
        Input batch.
    kernel_size : int or (int, int)
        ``(kh, kw)``.
    stride : int or (int, int), default 1
        ``(sh, sw)``.
    padding : int or (int, int), default 0
        Zeros added on each side of both spatial axes, ``(ph, pw)``.

    Returns
    -------
    cols : ndarray, shape (N*OH*OW, C*kh*kw), dtype of ``x``, C-contiguous
        ``cols[(n*OH + i)*OW + j, (c*kh + a)*kw + b] = x_pad[n, c, i*sh + a, j*sw + b]``:
        rows in (n, oh, ow) order, columns in (C, kh, kw) order, so that
        ``cols @ W.reshape(out, -1).T`` is the convolution with ``W`` of shape (out, C, kh, kw).
    """
    x = _check_x(x)
    n, c, h, w = x.shape
    kh, kw = pair(kernel_size, "kernel_size", low=1)
    sh, sw = pair(stride, "stride", low=1)
    ph, pw = pair(padding, "padding", low=0)
    oh, ow = conv_output_shape(h, w, (kh, kw), (sh, sw), (ph, pw))
    xp = _pad(x, ph, pw)
    # windows[n, c, i, j, a, b] = xp[n, c, i*sh + a, j*sw + b]  (a view, no copy yet)
    windows = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :oh, :ow]
    # the one copy: reorder to (n, i, j | c, a, b)
    return _fresh(windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw), x)


def im2col_t(x: np.ndarray, kernel_size, stride=1, padding=0, out=None) -> np.ndarray:
    """The transpose of :func:`im2col`, built directly in that layout (the fast training path).

    Parameters
    ----------
    x, kernel_size, stride, padding
        As :func:`im2col`.
    out : ndarray, optional
        A C-contiguous, writeable array of the result's shape and of x's dtype, not overlapping
        x, to write into: a layer passes its buffer from the previous step, because
        first-touching a fresh 41 MB array (LeNet-5's conv2 at batch 128) costs about a third of
        the copy itself. Any other ``out`` (or None) is ignored and a new array is returned.

    Returns
    -------
    cols_t : ndarray, shape (C*kh*kw, N*OH*OW), C-contiguous
        ``im2col(x, ...).T`` element for element. Rows are long and contiguous, so
        ``W2d @ cols_t`` and :func:`col2im_t` stream through memory instead of gathering.
    """
    x = _check_x(x)
    n, c, h, w = x.shape
    kh, kw = pair(kernel_size, "kernel_size", low=1)
    sh, sw = pair(stride, "stride", low=1)
    ph, pw = pair(padding, "padding", low=0)
    oh, ow = conv_output_shape(h, w, (kh, kw), (sh, sw), (ph, pw))
    shape = (c * kh * kw, n * oh * ow)
    usable = (
        isinstance(out, np.ndarray) and out.shape == shape and out.dtype == x.dtype
        and out.flags.c_contiguous and out.flags.writeable and not np.may_share_memory(out, x)
    )  # fmt: skip
    if x.dtype in _kernels.KERNEL_DTYPES:  # the Numba kernel: the same copy, ~2x faster
        if not usable:
            out = np.empty(shape, x.dtype)
        # channels first (one copy of x, padded): each (c, a, b) row then reads one contiguous
        # (N, Hp, Wp) block; reading NCHW directly, image after image, was slower (5.4 ms
        # against 4.4 for LeNet-5's conv2, copy included)
        xp = _pad(x, ph, pw, channels_first=True)  # (C, N, Hp, Wp)
        _kernels.im2col_t_kernel(xp, kh, kw, sh, sw, oh, ow, out)
        return out
    return _im2col_t_numpy(x, (kh, kw), (sh, sw), (ph, pw), (oh, ow), out if usable else None)


def _im2col_t_numpy(x, kernel_size, stride, padding, out_shape, out=None) -> np.ndarray:
    """The NumPy twin of :func:`ternref.nn._kernels.im2col_t_kernel` (arguments checked; ``out``
    None or usable)."""
    (n, c, _, _), (kh, kw), (sh, sw), (ph, pw), (oh, ow) = (
        x.shape, kernel_size, stride, padding, out_shape,
    )  # fmt: skip
    # channels first, so that each (c, a, b) row reads one contiguous (N, Hp, Wp) block
    xp = _pad(x, ph, pw, channels_first=True)  # (C, N, Hp, Wp)
    windows = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :oh, :ow]
    # windows[c, n, i, j, a, b] -> (c, a, b | n, i, j): the one copy
    windows = windows.transpose(0, 4, 5, 1, 2, 3)
    shape = (c * kh * kw, n * oh * ow)
    if out is None:
        return _fresh(windows.reshape(shape), x)
    np.copyto(out.reshape(c, kh, kw, n, oh, ow), windows)
    return out


def col2im(cols: np.ndarray, x_shape, kernel_size, stride=1, padding=0) -> np.ndarray:
    """The adjoint of :func:`im2col`: scatter-add patch rows back onto the input grid.

    Parameters
    ----------
    cols : ndarray, shape (N*OH*OW, C*kh*kw), float
        A patch-space array in :func:`im2col` layout (typically ``dL/dcols``).
    x_shape : tuple (N, C, H, W)
        Shape of the original (unpadded) input.
    kernel_size, stride, padding : int or (int, int)
        As given to :func:`im2col`.

    Returns
    -------
    x : ndarray, shape (N, C, H, W), dtype of ``cols``
        ``x[n, c, p, q] = sum of cols entries copied from x_pad[n, c, p + ph, q + pw]``; entries
        that came from the zero padding are dropped (their gradient has nowhere to go).

    Notes
    -----
    Since ``im2col`` is ``cols = A x`` with ``A`` a 0/1 selection matrix, backpropagation gives
    ``dx = A^T dcols``: every window offset ``(a, b)`` contributes one strided slice, so the sum
    runs over ``kh*kw`` vectorised slice additions, never over pixels.
    """
    cols = float_array(cols, "cols", ndim=2, finite=False)
    return col2im_t(cols.T, x_shape, kernel_size, stride, padding)


def col2im_t(
    cols_t: np.ndarray, x_shape, kernel_size, stride=1, padding=0, out: np.ndarray | None = None
) -> np.ndarray:
    """:func:`col2im` of ``cols_t.T``; fast when ``cols_t`` (C*kh*kw, N*OH*OW) is C-contiguous.

    ``out``, when given, must be a C-contiguous, writeable array of shape ``x_shape`` and
    ``cols_t``'s dtype, not overlapping ``cols_t``; it is overwritten with the result and
    returned. A slice ``dx[n0:n1]`` of a larger gradient qualifies, which is how
    :class:`~ternref.nn.Conv2d` fills ``dx`` a chunk of images at a time. Unlike the workspace
    ``out`` of :func:`im2col_t`, an unusable ``out`` raises: the caller reads the result there.
    """
    cols_t = float_array(cols_t, "cols_t", ndim=2, finite=False)
    if len(x_shape) != 4:
        raise ValueError(f"x_shape must be (N, C, H, W), got {tuple(x_shape)}")
    n, c, h, w = (int(v) for v in x_shape)
    kh, kw = pair(kernel_size, "kernel_size", low=1)
    sh, sw = pair(stride, "stride", low=1)
    ph, pw = pair(padding, "padding", low=0)
    oh, ow = conv_output_shape(h, w, (kh, kw), (sh, sw), (ph, pw))
    expected = (c * kh * kw, n * oh * ow)
    if cols_t.shape != expected:
        raise ValueError(
            f"col2im: cols must have shape {expected[::-1]} for x_shape {(n, c, h, w)}, "
            f"kernel {(kh, kw)}, stride {(sh, sw)}, padding {(ph, pw)}; got {cols_t.shape[::-1]}"
        )
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"col2im: out must be a numpy.ndarray, got {type(out).__name__}")
        usable = (
            out.shape == (n, c, h, w) and out.dtype == cols_t.dtype and out.flags.c_contiguous
            and out.flags.writeable and not np.may_share_memory(out, cols_t)
        )  # fmt: skip
        if not usable:
            raise ValueError(
                f"col2im: out must be a C-contiguous, writeable {cols_t.dtype} array of shape "
                f"{(n, c, h, w)} not overlapping cols; got {out.dtype} {out.shape}, "
                f"C-contiguous={out.flags.c_contiguous}, writeable={out.flags.writeable}, "
                f"overlapping={np.may_share_memory(out, cols_t)}"
            )
    if cols_t.dtype in _kernels.KERNEL_DTYPES:  # the Numba kernel: same sums, ~2x faster
        if out is None:
            dx = np.zeros((n, c, h, w), dtype=cols_t.dtype)
        else:
            dx = out
            dx.fill(0)
        _kernels.col2im_t_kernel(np.ascontiguousarray(cols_t), kh, kw, sh, sw, ph, pw, oh, ow, dx)
        return dx
    dx = _col2im_t_numpy(cols_t, (n, c, h, w), (kh, kw), (sh, sw), (ph, pw), (oh, ow))
    if out is None:
        return dx
    out[...] = dx
    return out


def _col2im_t_numpy(cols_t, x_shape, kernel_size, stride, padding, out_shape) -> np.ndarray:
    """The NumPy twin of :func:`ternref.nn._kernels.col2im_t_kernel` (arguments checked)."""
    (n, c, h, w), (kh, kw), (sh, sw), (ph, pw), (oh, ow) = (
        x_shape, kernel_size, stride, padding, out_shape,
    )  # fmt: skip
    d6 = cols_t.reshape(c, kh, kw, n, oh, ow)  # free view when cols_t is C-contiguous
    dxp = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=cols_t.dtype)
    for a in range(kh):
        for b in range(kw):
            # pixel (a + i*sh, b + j*sw) received copy (i, j) of offset (a, b)
            dxp[:, :, a : a + sh * oh : sh, b : b + sw * ow : sw] += d6[:, a, b]
    return np.ascontiguousarray(dxp[:, :, ph : ph + h, pw : pw + w].transpose(1, 0, 2, 3))
