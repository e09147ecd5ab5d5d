"""Inference-only packed layers and :func:`export`: a trained ``Sequential`` -> packed model.

``PackedLinear`` computes ``y = x @ W_hat.T + b`` and ``PackedConv2d`` computes the convolution as
``im2col`` followed by the packed GEMM (columns in (C, kh, kw) order, which is the C-order
flattening of the weight ``(out, in, kh, kw)`` that :func:`ternref.packed.pack` uses). Both have
no backward: they exist to run a finished model from its packed codes.

BatchNorm folding
-----------------
A BatchNorm in evaluation mode computes ``bn(z) = a (z - mu) + beta`` with the per-channel
multiplier ``a = gamma / sqrt(running_var + eps)``. After a packed layer ``z = W_hat x + b``::

    bn(z) = (a W_hat) x + a (b - mu) + beta

so the fold multiplies row ``r`` of ``W_hat`` by ``a_r``: ``alpha_pos``, ``alpha_neg`` and the
offset of that row are scaled by ``a_r`` (a ``"tensor"`` scale becomes ``"channel"``; group and
asymmetric scales fold row by row), and the bias becomes ``a (b - mu) + beta``. Ternary scales
must stay >= 0, so for ``a_r < 0`` the row is rewritten with
``a_r (alpha_pos [c=+1] - alpha_neg [c=-1]) = |a_r| alpha_neg [-c=+1] - |a_r| alpha_pos [-c=-1]``:
the codes of the row are negated and ``alpha_pos``/``alpha_neg`` swapped (the offset is simply
multiplied by ``a_r``; it may have either sign). The fold is exact in real arithmetic; in
floating point it rounds the scales once (products computed in float64, stored in the scale
dtype). A BatchNorm that does not directly follow a packed layer is kept as it is.
"""

from __future__ import annotations

import copy

import numpy as np

from ternref._validate import describe, float_array, one_of
from ternref.nn.functional import conv_output_shape, im2col, pair
from ternref.nn.layers import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)
from ternref.nn.module import Module
from ternref.packed.kernels import linear
from ternref.packed.packed import FORMATS, Packed, pack
from ternref.ternary import Ternary

ACTIVATIONS = ("float32", "int8")


class _PackedLayer(Module):
    """Shared parts: the packed weight, the bias, the activation type, no backward."""

    def __init__(self, packed: Packed, bias=None, activations: str = "float32"):
        super().__init__()
        if not isinstance(packed, Packed):
            raise TypeError(f"packed must be a ternref.packed.Packed, got {describe(packed)}")
        self.packed = packed
        if bias is not None:
            bias = float_array(bias, "bias", ndim=1)
            if bias.shape != (packed.shape[0],):
                raise ValueError(
                    f"bias must have shape ({packed.shape[0]},), got shape {bias.shape}"
                )
        self.bias = bias
        self.activations = one_of(activations, "activations", ACTIVATIONS)
        self.training = False

    def backward(self, dy):
        raise NotImplementedError(
            f"{type(self).__name__} is inference-only (packed weights have no gradient); "
            "train the full-precision model and export it again"
        )


class PackedLinear(_PackedLayer):
    """``y = x @ W_hat.T + b`` from packed ternary weights (inference only).

    Parameters
    ----------
    packed : Packed
        Weight of shape ``(out_features, in_features)``.
    bias : ndarray (out_features,), optional
    activations : {"float32", "int8"}
        See :func:`ternref.packed.linear`.
    """

    def __init__(self, packed: Packed, bias=None, activations: str = "float32"):
        super().__init__(packed, bias, activations)
        if len(packed.orig_shape) != 2:
            raise ValueError(f"PackedLinear needs a 2-D weight, got shape {packed.orig_shape}")
        self.out_features, self.in_features = packed.shape

    def forward(self, x):
        """x (N, in) -> y (N, out), dtype of x."""
        x = float_array(x, "PackedLinear input", ndim=2)
        y = linear(x, self.packed, self.activations)
        if self.bias is not None:
            y += self.bias.astype(y.dtype, copy=False)
        return y

    def __repr__(self) -> str:
        return (
            f"PackedLinear({self.in_features}, {self.out_features}, {self.packed.format}, "
            f"bias={self.bias is not None}, activations={self.activations})"
        )


class PackedConv2d(_PackedLayer):
    """2-D convolution as ``im2col`` + packed GEMM (inference only), NCHW.

    Parameters
    ----------
    packed : Packed
        Weight of original shape ``(out, in, kh, kw)``.
    stride, padding : int or (int, int)
    bias : ndarray (out,), optional
    activations : {"float32", "int8"}
        With ``"int8"`` every im2col row (one receptive field) is quantized on its own.
    """

    def __init__(self, packed: Packed, stride=1, padding=0, bias=None, activations="float32"):
        super().__init__(packed, bias, activations)
        if len(packed.orig_shape) != 4:
            raise ValueError(f"PackedConv2d needs a 4-D weight, got shape {packed.orig_shape}")
        self.out_channels, self.in_channels, kh, kw = packed.orig_shape
        self.kernel_size = (kh, kw)
        self.stride = pair(stride, "stride", low=1)
        self.padding = pair(padding, "padding", low=0)

    def forward(self, x):
        """x (N, C_in, H, W) -> y (N, C_out, OH, OW), dtype of x."""
        x = float_array(x, "PackedConv2d input", ndim=4)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self!r}: expected input of shape (N, {self.in_channels}, H, W), got {x.shape}"
            )
        n, _, h, w = x.shape
        oh, ow = conv_output_shape(h, w, self.kernel_size, self.stride, self.padding)
        cols = im2col(x, self.kernel_size, self.stride, self.padding)  # (N*OH*OW, C*kh*kw)
        y = linear(cols, self.packed, self.activations)  # (N*OH*OW, O)
        if self.bias is not None:
            y += self.bias.astype(y.dtype, copy=False)
        return np.ascontiguousarray(y.reshape(n, oh, ow, self.out_channels).transpose(0, 3, 1, 2))

    def __repr__(self) -> str:
        return (
            f"PackedConv2d({self.in_channels}, {self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"{self.packed.format}, bias={self.bias is not None}, activations={self.activations})"
        )


# ---------------------------------------------------------------------------------- export


def fold_batchnorm(t: Ternary, bias, bn) -> tuple[Ternary, np.ndarray]:
    """Fold an eval-mode BatchNorm into ternary weights and a bias (see the module docstring).

    Returns the new :class:`Ternary` (channel or group granularity) and the new bias (float64).
    """
    m = t.shape[0]
    if bn.num_features != m:
        raise ValueError(f"{bn!r} has {bn.num_features} channels, the layer before it has {m}")
    var = bn.running_var.astype(np.float64)
    a = bn.weight.data.astype(np.float64) / np.sqrt(var + bn.eps)  # per-channel multiplier
    b = np.zeros(m) if bias is None else np.asarray(bias, np.float64)
    new_bias = a * (b - bn.running_mean.astype(np.float64)) + bn.bias.data.astype(np.float64)

    gran, gs = t.granularity, t.group_size
    if gran == "tensor":
        gran = "channel"
    shape = Ternary.scale_shape(t.shape, gran, gs)

    n_cols = shape[1] if gran == "group" else 1

    def per_row(s):  # a scale array as (M, G) float64 at the new granularity
        s = np.asarray(s, np.float64)
        s = s.reshape(m, -1) if s.ndim else s.reshape(1, 1)
        return np.broadcast_to(s, (m, n_cols)).copy()

    neg = a < 0
    mag = np.abs(a)[:, None]
    ap, an = per_row(t.alpha_pos), per_row(t.alpha_neg)
    new_ap = np.where(neg[:, None], an, ap) * mag
    new_an = np.where(neg[:, None], ap, an) * mag
    codes = t.codes.copy()
    codes[neg] = -codes[neg]  # a_r < 0: negate the row, swap the two scales
    offset = None
    if t.offset is not None:
        offset = (per_row(t.offset) * a[:, None]).astype(t.dtype).reshape(shape)
    dt = t.dtype
    new_an_arg = None if t.symmetric else new_an.astype(dt).reshape(shape)
    folded = Ternary(
        codes,
        new_ap.astype(dt).reshape(shape),
        new_an_arg,
        granularity=gran,
        group_size=gs,
        offset=offset,
    )
    return folded, new_bias


_COPIED = (ReLU, MaxPool2d, AvgPool2d, Flatten, Linear, Conv2d, BatchNorm1d, BatchNorm2d)


def export(model, format: str = "i2", activations: str = "float32") -> Sequential:
    """Turn a trained ``Sequential`` into a packed inference ``Sequential``.

    Parameters
    ----------
    model : Sequential
        ``Linear``/``Conv2d`` layers whose ``weight_quantizer`` is not None are packed from
        ``weight_quantizer.to_ternary(layer.weight.data)``; full-precision layers, ReLU,
        pooling and Flatten are copied; Dropout is dropped (identity in evaluation); an
        eval-mode BatchNorm right after a packed layer is folded into it (see the module
        docstring), any other BatchNorm is copied in evaluation mode.
    format : {"i2", "tq1", "bitplanes"}
    activations : {"float32", "int8"}

    Returns
    -------
    Sequential
        In evaluation mode; the trained model is not modified.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"export expects a ternref.nn.Sequential, got {describe(model)}")
    one_of(format, "format", FORMATS)
    one_of(activations, "activations", ACTIVATIONS)
    out: list[Module] = []
    pending = None  # (kind, ternary, bias, hyper-parameters) of the last packed layer
    for i, layer in enumerate(model.layers):
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)) and pending is not None:
            kind, t, bias, hyper = pending
            t, bias = fold_batchnorm(t, bias, layer)
            pending = (kind, t, bias, hyper)
            continue
        if pending is not None:
            out.append(_build(pending, format, activations))
            pending = None
        quantized = isinstance(layer, (Linear, Conv2d)) and layer.weight_quantizer is not None
        if quantized:
            t = layer.weight_quantizer.to_ternary(layer.weight.data)
            if not isinstance(t, Ternary) or t.shape != layer.weight.data.shape:
                raise ValueError(
                    f"layer {i}: weight_quantizer.to_ternary must return a Ternary of shape "
                    f"{layer.weight.data.shape}, got {t!r}"
                )
            bias = None if layer.bias is None else layer.bias.data.astype(np.float64)
            if isinstance(layer, Linear):
                pending = ("linear", t, bias, {})
            else:
                pending = ("conv", t, bias, {"stride": layer.stride, "padding": layer.padding})
        elif isinstance(layer, Dropout):
            continue
        elif isinstance(layer, _COPIED):
            copied = copy.deepcopy(layer)
            copied.eval()
            out.append(copied)
        else:
            raise TypeError(
                f"layer {i}: export does not know how to convert {type(layer).__name__}; "
                f"supported: quantized Linear/Conv2d, {', '.join(c.__name__ for c in _COPIED)}, "
                "Dropout"
            )
    if pending is not None:
        out.append(_build(pending, format, activations))
    packed_model = Sequential(*out)
    packed_model.training = False
    return packed_model


def _build(pending, format, activations) -> Module:
    kind, t, bias, hyper = pending
    p = pack(t, format)
    b = None if bias is None else bias.astype(np.float32)
    if kind == "linear":
        return PackedLinear(p, b, activations)
    return PackedConv2d(p, hyper["stride"], hyper["padding"], b, activations)


__all__ = ["PackedLinear", "PackedConv2d", "export", "fold_batchnorm"]
