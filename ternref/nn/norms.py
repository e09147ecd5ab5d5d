"""Normalisation over the last axis: LayerNorm (BERT) and RMSNorm (LLaMA), with their backwards.

Both normalise each row (every leading index of a ``(..., D)`` input is one row: one token of one
sequence) and then scale it by a learned gain; the statistics never mix rows, so unlike BatchNorm
the result does not depend on the batch.

References
----------
J. L. Ba, J. R. Kiros, G. E. Hinton, "Layer Normalization", arXiv:1607.06450, 2016.
B. Zhang, R. Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019, arXiv:1910.07467.
A. Karpathy, llm.c, ``doc/layernorm/layernorm.md`` (the derivation followed below).
"""

from __future__ import annotations

import numpy as np

from ternref._validate import float_array, integer, real_number
from ternref.nn.layers import _check_dy, _float_dtype, _need_cache
from ternref.nn.module import Module, Parameter

__all__ = ["LayerNorm", "RMSNorm"]


def _rows(layer: Module, x) -> np.ndarray:
    x = float_array(x, f"{type(layer).__name__} input", finite=False)
    if x.ndim < 1 or x.shape[-1] != layer.dim:
        raise ValueError(
            f"{layer!r}: expected input of shape (..., {layer.dim}), got shape {x.shape}"
        )
    return x


def _sum_rows(a: np.ndarray) -> np.ndarray:
    """Sum over every axis but the last (the gain/bias gradient is summed over all rows)."""
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


class LayerNorm(Module):
    """``y = g * (x - mean(x)) / sqrt(var(x) + eps) + b`` over the last axis (with affine).

    Parameters
    ----------
    dim : int
        D, the size of the normalised (last) axis.
    eps : float, default 1e-5
        PyTorch's default; BERT uses 1e-12.
    dtype : float dtype, default float32

    Attributes
    ----------
    weight, bias : Parameter, shape (D,)
        The gain g (ones) and offset b (zeros); Hugging Face's ``LayerNorm.weight`` and
        ``LayerNorm.bias``.

    Notes
    -----
    Shapes: x (..., D) -> y (..., D). For one row, with ``mu = (1/D) sum_i x_i`` and the biased
    variance ``var = (1/D) sum_i (x_i - mu)^2`` (as ``torch.nn.LayerNorm``)::

        r = 1 / sqrt(var + eps),   xhat = (x - mu) r,   y = g * xhat + b

    Backward (llm.c's derivation). ``dL/db = sum_rows dy``, ``dL/dg = sum_rows dy * xhat``. With
    ``h = dL/dxhat = dy * g``, and since ``d mu / dx_i = 1/D``, ``d var / dx_i = 2 (x_i - mu) / D``
    (the ``d mu`` part of it vanishes because ``sum (x - mu) = 0``), ``d r / dx_i = -r^3
    (x_i - mu) / D``::

        dxhat_j / dx_i = r (delta_ij - 1/D) - r^3 (x_j - mu)(x_i - mu) / D
                       = r (delta_ij - 1/D - xhat_j xhat_i / D)

        dL/dx_i = sum_j h_j dxhat_j/dx_i = r (h_i - mean(h) - xhat_i * mean(h * xhat))
    """

    def __init__(self, dim: int, eps: float = 1e-5, dtype=np.float32):
        super().__init__()
        self.dim = integer(dim, "dim", low=1)
        self.eps = real_number(eps, "eps", low=0.0, low_open=True)
        dtype = _float_dtype(dtype)
        self.weight = Parameter(np.ones(self.dim, dtype=dtype), "weight")
        self.bias = Parameter(np.zeros(self.dim, dtype=dtype), "bias")
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (..., D) -> y (..., D)."""
        x = _rows(self, x)
        xc = x - x.mean(axis=-1, keepdims=True)
        var = np.mean(xc * xc, axis=-1, keepdims=True)
        r = 1.0 / np.sqrt(var + x.dtype.type(self.eps))
        xhat = xc
        xhat *= r  # in place: xc is not needed once xhat exists
        self._cache = (xhat, r)
        y = xhat * self.weight.data.astype(x.dtype, copy=False)
        y += self.bias.data.astype(x.dtype, copy=False)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy (..., D) -> dx (..., D); accumulates the gain and offset gradients."""
        xhat, r = _need_cache(self, self._cache)
        dy = _check_dy(self, dy, xhat.shape)
        if self.weight.requires_grad:
            self.weight.grad += _sum_rows(dy * xhat)
        if self.bias.requires_grad:
            self.bias.grad += _sum_rows(dy)
        h = dy * self.weight.data.astype(dy.dtype, copy=False)  # dL/dxhat
        # dx = r (h - mean(h) - xhat mean(h xhat))
        dot = np.mean(h * xhat, axis=-1, keepdims=True)
        dx = h
        dx -= h.mean(axis=-1, keepdims=True)
        dx -= xhat * dot
        dx *= r
        return dx

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class RMSNorm(Module):
    """``y = g * x / sqrt(mean(x^2) + eps)`` over the last axis (LLaMA's norm, no offset).

    Parameters
    ----------
    dim : int
        D, the size of the normalised (last) axis.
    eps : float, default 1e-6
        LLaMA's ``rms_norm_eps`` (SmolLM2 uses 1e-5; the GGUF key
        ``llama.attention.layer_norm_rms_epsilon``).
    dtype : float dtype, default float32

    Attributes
    ----------
    weight : Parameter, shape (D,)
        The gain g (ones); Hugging Face's ``*_layernorm.weight``, GGUF's ``attn_norm`` etc.

    Notes
    -----
    Shapes: x (..., D) -> y (..., D). Zhang & Sennrich's RMSNorm, in LLaMA's form (eps inside the
    square root, as ``LlamaRMSNorm`` and llama.cpp's ``ggml_rms_norm``)::

        r = 1 / sqrt((1/D) sum_i x_i^2 + eps),   xhat = x r,   y = g * xhat

    Backward. ``dL/dg = sum_rows dy * xhat``. With ``h = dL/dxhat = dy * g`` and
    ``d r / dx_i = -r^3 x_i / D``::

        dxhat_j / dx_i = r delta_ij - r^3 x_j x_i / D = r (delta_ij - xhat_j xhat_i / D)

        dL/dx_i = r (h_i - xhat_i * mean(h * xhat))

    (the LayerNorm formula without the ``mean(h)`` term, since there is no centring). An all-zero
    row gives ``y = 0`` and a finite gradient: ``r = 1/sqrt(eps)``.
    """

    def __init__(self, dim: int, eps: float = 1e-6, dtype=np.float32):
        super().__init__()
        self.dim = integer(dim, "dim", low=1)
        self.eps = real_number(eps, "eps", low=0.0, low_open=True)
        self.weight = Parameter(np.ones(self.dim, dtype=_float_dtype(dtype)), "weight")
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (..., D) -> y (..., D)."""
        x = _rows(self, x)
        ms = np.mean(x * x, axis=-1, keepdims=True)
        r = 1.0 / np.sqrt(ms + x.dtype.type(self.eps))
        xhat = x * r
        self._cache = (xhat, r)
        return xhat * self.weight.data.astype(x.dtype, copy=False)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy (..., D) -> dx (..., D); accumulates the gain gradient."""
        xhat, r = _need_cache(self, self._cache)
        dy = _check_dy(self, dy, xhat.shape)
        if self.weight.requires_grad:
            self.weight.grad += _sum_rows(dy * xhat)
        h = dy * self.weight.data.astype(dy.dtype, copy=False)  # dL/dxhat
        # dx = r (h - xhat mean(h xhat))
        dot = np.mean(h * xhat, axis=-1, keepdims=True)
        dx = h
        dx -= xhat * dot
        dx *= r
        return dx

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"
