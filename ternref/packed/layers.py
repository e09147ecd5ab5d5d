"""Inference-only packed layers and :func:`export`: a trained ``Sequential`` -> packed model.

``PackedLinear`` computes ``y = x @ W_hat.T + b`` and ``PackedConv2d`` computes the convolution as
``im2col`` followed by the packed GEMM (columns in (C, kh, kw) order, which is the C-order
flattening of the weight ``(out, in, kh, kw)`` that :func:`ternref.packed.pack` uses). Both have
no backward: they exist to run a finished model from its packed codes. Either may hold several
packed *terms* and add their products, ``y = sum_k x @ W_k.T + b``: Ternary Residual Networks
(Kundu et al. 2017, arXiv:1707.04679) train ``W_hat = a1 T1 + a2 T2``, which no single ternary
tensor represents; the quantizer's ``to_ternaries(w)`` gives the terms.

Activation quantizers and other inference layers
------------------------------------------------
The W+A methods insert layers of their own (BitNet's int8 quantizer, GXNOR/STTN/RTN ternary
activations). A class registered with :func:`register_inference_layer` exposes its evaluation
forward's state as plain data (``export_state() -> (params, arrays)``) and rebuilds from it
(``from_export_state``); :func:`export` copies such layers through that protocol and
:mod:`ternref.packed.io` stores the same data, so a file never holds code or pickles. Layers
marked ``inference_identity = True`` (knowledge distillation's hidden-state taps) are dropped.

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
from ternref.nn._kernels import KERNEL_DTYPES, maxpool2x2_inference
from ternref.nn.functional import conv_output_shape, pair
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
from ternref.nn.module import Module, Parameter
from ternref.packed import _threads
from ternref.packed._direct_conv import MAX_TAPS as DIRECT_MAX_TAPS
from ternref.packed._direct_conv import conv2d_direct, flat_input
from ternref.packed._gemm import dense_small
from ternref.packed.kernels import GEMM_MIN_BATCH, product, run_conv
from ternref.packed.packed import FORMATS, Packed, pack
from ternref.ternary import Ternary

ACTIVATIONS = ("float32", "int8")
_NO_BIAS = np.zeros(0, np.float32)


def _checked_input(x, ndim: int, name: str) -> np.ndarray:
    """``x`` if it is a float ndarray of ``ndim`` dimensions (the per-call fast check); otherwise
    :func:`~ternref._validate.float_array` explains what is wrong (or converts a list)."""
    if isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.ndim == ndim and x.size:
        return x
    return float_array(x, name, ndim=ndim, finite=False)


class _PackedLayer(Module):
    """Shared parts: the packed weight term(s), the bias, the activation type, no backward.

    ``packed`` is one :class:`Packed` or a sequence of them (the *terms*, all of the same
    geometry, format, granularity and symmetry), and the layer computes
    ``y = sum_k x @ W_k.T + b`` (Ternary Residual Networks: ``W_hat = a1 T1 + a2 T2``). ``terms``
    holds every term, ``packed`` the first one.
    """

    def __init__(self, packed, bias=None, activations: str = "float32"):
        super().__init__()
        terms = tuple(packed) if isinstance(packed, (list, tuple)) else (packed,)
        if not terms:
            raise ValueError("packed must be a Packed or a non-empty sequence of Packed terms")
        for k, p in enumerate(terms):
            if not isinstance(p, Packed):
                raise TypeError(
                    f"packed term {k} must be a ternref.packed.Packed, got {describe(p)}"
                )
        first = terms[0]
        for k, p in enumerate(terms[1:], start=1):
            same = (
                p.format == first.format
                and p.shape == first.shape
                and p.orig_shape == first.orig_shape
                and p.granularity == first.granularity
                and p.group_size == first.group_size
                and p.symmetric == first.symmetric
                and (p.offset is None) == (first.offset is None)
                and p.dtype == first.dtype
            )
            if not same:
                raise ValueError(
                    f"packed term {k} ({p!r}) differs from term 0 ({first!r}) in format, "
                    "shape, granularity, symmetry, offset or scale dtype"
                )
        self.terms = terms
        self.packed = first
        if bias is not None:
            bias = float_array(bias, "bias", ndim=1)
            if bias.shape != (first.shape[0],):
                raise ValueError(
                    f"bias must have shape ({first.shape[0]},), got shape {bias.shape}"
                )
        self.bias = bias
        self._bias32 = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.activations = one_of(activations, "activations", ACTIVATIONS)
        self.training = False

    @property
    def nbytes(self) -> int:
        """Bytes of every term's packed codes and scales (the bias not included)."""
        return int(sum(p.nbytes for p in self.terms))

    def forward(self, x):
        """The layer's output (float32 for float32 input, else the dtype of ``x``)."""
        return self.run(x, relu=False)

    def run(self, x, relu: bool = False):
        """:meth:`forward`, followed by a ReLU applied in place when ``relu`` (what
        :class:`PackedSequential` does for a packed layer followed by ``ReLU``)."""
        raise NotImplementedError

    def _terms_repr(self) -> str:
        return f", terms={len(self.terms)}" if len(self.terms) > 1 else ""

    def backward(self, dy):
        raise NotImplementedError(
            f"{type(self).__name__} is inference-only (packed weights have no gradient); "
            "train the full-precision model and export it again"
        )


class PackedLinear(_PackedLayer):
    """``y = x @ W_hat.T + b`` from packed ternary weights (inference only).

    Parameters
    ----------
    packed : Packed or sequence of Packed
        Weight of shape ``(out_features, in_features)``; several terms are summed
        (``y = sum_k x @ W_k.T + b``).
    bias : ndarray (out_features,), optional
    activations : {"float32", "int8"}
        See :func:`ternref.packed.linear`.
    """

    def __init__(self, packed: Packed, bias=None, activations: str = "float32"):
        super().__init__(packed, bias, activations)
        if len(self.packed.orig_shape) != 2:
            raise ValueError(f"PackedLinear needs a 2-D weight, got shape {self.packed.orig_shape}")
        self.out_features, self.in_features = self.packed.shape

    def run(self, x, relu: bool = False):
        """x (N, in) -> y (N, out), dtype of x; ReLU in place when ``relu``."""
        x = _checked_input(x, 2, "PackedLinear input")
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"{self!r}: expected input of shape (N, {self.in_features}) "
                f"({self.in_features} features), got shape {x.shape}"
            )
        int8 = self.activations == "int8"
        if len(self.terms) == 1:  # bias and ReLU in the kernel's epilogue
            y = product(self.packed, x, int8, bias=self._bias32, relu=relu)
        else:  # Ternary Residual Networks: the sum of the terms, then bias and ReLU
            y = product(self.terms[0], x, int8)
            for p in self.terms[1:]:
                y += product(p, x, int8)
            if self.bias is not None:
                y += self._bias32
            if relu:
                np.maximum(y, 0, out=y)
        return y if x.dtype == np.float32 else y.astype(x.dtype)

    def __repr__(self) -> str:
        return (
            f"PackedLinear({self.in_features}, {self.out_features}, {self.packed.format}, "
            f"bias={self.bias is not None}, activations={self.activations}{self._terms_repr()})"
        )


class PackedConv2d(_PackedLayer):
    """2-D convolution as ``im2col`` + packed GEMM (inference only), NCHW.

    Parameters
    ----------
    packed : Packed or sequence of Packed
        Weight of original shape ``(out, in, kh, kw)``; several terms are summed.
    stride, padding : int or (int, int)
    bias : ndarray (out,), optional
    activations : {"float32", "int8"}
        With ``"int8"`` every im2col row (one receptive field) is quantized on its own.
    """

    def __init__(self, packed: Packed, stride=1, padding=0, bias=None, activations="float32"):
        super().__init__(packed, bias, activations)
        if len(self.packed.orig_shape) != 4:
            raise ValueError(f"PackedConv2d needs a 4-D weight, got shape {self.packed.orig_shape}")
        self.out_channels, self.in_channels, kh, kw = self.packed.orig_shape
        self.kernel_size = (kh, kw)
        self.stride = pair(stride, "stride", low=1)
        self.padding = pair(padding, "padding", low=0)

    def run(self, x, relu: bool = False):
        """x (N, C_in, H, W) -> y (N, C_out, OH, OW), dtype of x; ReLU fused when ``relu``.

        Computed block by block without an im2col matrix (:func:`ternref.packed.conv2d`)."""
        x = _checked_input(x, 4, "PackedConv2d input")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self!r}: expected input of shape (N, {self.in_channels}, H, W), got {x.shape}"
            )
        n, _, h, w = x.shape
        oh, ow = conv_output_shape(h, w, self.kernel_size, self.stride, self.padding)
        int8 = self.activations == "int8"
        geometry = (self.kernel_size, self.stride, self.padding)
        y = np.empty((n, self.out_channels, oh, ow), np.float32)
        single = len(self.terms) == 1
        run_conv(self.packed, x, *geometry, int8, self._bias32, relu and single, y)
        if not single:  # Ternary Residual Networks: add the other terms, then the ReLU
            part = np.empty_like(y)
            for p in self.terms[1:]:
                run_conv(p, x, *geometry, int8, None, False, part)
                y += part
            if relu:
                np.maximum(y, 0, out=y)
        return y if x.dtype == np.float32 else y.astype(x.dtype)

    def __repr__(self) -> str:
        return (
            f"PackedConv2d({self.in_channels}, {self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"{self.packed.format}, bias={self.bias is not None}, activations={self.activations}"
            f"{self._terms_repr()})"
        )


# ------------------------------------------------------------------------ the packed model


class PackedSequential(Sequential):
    """The ``Sequential`` that :func:`export` and :func:`ternref.packed.load` return.

    Its layers are ordinary layers (the file formats store them one by one); only
    :meth:`forward` differs from ``Sequential``'s: it runs an inference plan over them, built once
    and rebuilt whenever the layer list changes, which

    * fuses a ``ReLU`` into the packed or full-precision ``Linear``/``Conv2d`` before it (applied
      to the output block while it is in cache, instead of another pass over memory);
    * runs full-precision ``Linear`` layers as ``x @ W.T + b`` without the training layer's
      checks and caches (a full-precision ``Conv2d`` runs its own im2col + BLAS forward on
      chunks of images, keeping one chunk-sized im2col matrix, :func:`_dense_conv_step`);
    * runs a 2x2, stride-2 ``MaxPool2d`` through a forward-only kernel (:func:`_maxpool_step`);
    * runs ``Flatten`` as a reshape.

    Every other layer runs its own ``forward``. The result equals ``Sequential.forward`` of the
    same layers up to float32 summation order (tested).
    """

    def forward(self, x):
        # the plan is rebuilt when the list of layers changed: a copy of the list it was built
        # from is compared element by element (layers compare by identity), 0.15 us against
        # 0.76 for a tuple of ids per call, which mattered at the MLP's 10 us per batch-1 call
        if getattr(self, "_plan_layers", None) != self.layers:
            self._plan = _inference_plan(self.layers)
            self._plan_layers = list(self.layers)
        for step in self._plan:
            x = step(x)
        return x


def _inference_plan(layers) -> list:
    """The steps of :meth:`PackedSequential.forward` (see its docstring)."""
    steps = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        relu = i + 1 < len(layers) and type(layers[i + 1]) is ReLU
        if isinstance(layer, _PackedLayer):
            steps.append(_bind_run(layer, relu))
        elif type(layer) is Linear and layer.weight_quantizer is None:
            steps.append(_dense_linear_step(layer, relu))
        elif type(layer) is Conv2d and layer.weight_quantizer is None:
            steps.append(_dense_conv_step(layer, relu))
        elif type(layer) is MaxPool2d:
            steps.append(_maxpool_step(layer))
            relu = False
        elif type(layer) is Flatten:
            steps.append(_flatten)
            relu = False
        else:
            steps.append(layer.forward)
            relu = False
        i += 2 if relu else 1
    return steps


def _bind_run(layer, relu):
    return lambda x: layer.run(x, relu)


def _flatten(x):
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"Flatten expects input of shape (N, ...), got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def _dense_linear_step(layer: Linear, relu: bool):
    def step(x):
        x = _checked_input(x, 2, "Linear input")
        if x.shape[1] != layer.in_features:
            raise ValueError(
                f"{layer!r}: expected input of shape (N, {layer.in_features}), got {x.shape}"
            )
        w = layer.weight.data
        b = layer.bias.data if layer.bias is not None else _NO_BIAS
        if (
            x.shape[0] < GEMM_MIN_BATCH
            and x.dtype == w.dtype == b.dtype == np.float32
            and w.flags.c_contiguous
        ):  # a few rows: one call instead of BLAS + bias add + ReLU (see dense_small)
            y = np.empty((x.shape[0], w.shape[0]), np.float32)
            dense_small(x, w, b, layer.bias is not None, relu, y)
            return y
        y = np.matmul(x, w.T if w.dtype == x.dtype else w.T.astype(x.dtype))
        if layer.bias is not None:
            y += layer.bias.data.astype(y.dtype, copy=False)
        if relu:
            np.maximum(y, 0, out=y)
        return y

    return step


CONV_SCRATCH_BYTES = 4 << 20
"""A full-precision convolution of an inference plan runs im2col + BLAS on chunks of images whose
im2col matrix fits this many bytes, and keeps that one chunk-sized matrix between calls."""


def _dense_conv_step(layer: Conv2d, relu: bool):
    """The plan's step for a full-precision ``Conv2d``. A stride-1 float32 convolution with at
    most :data:`~ternref.packed._direct_conv.MAX_TAPS` multiply-adds per output (LeNet-5's first
    layer) runs the direct kernel of :mod:`ternref.packed._direct_conv`. Any other runs im2col +
    BLAS, a chunk of images at a time. The whole batch's im2col
    matrix would be tens of MB at a test-set batch; allocating it fresh at every call (first
    touch of every page) made the float export of LeNet-5 slower than the float model, which
    keeps it; keeping it would cost the inference model that memory. A chunk-sized buffer
    (:data:`CONV_SCRATCH_BYTES`) costs neither and stays in the caches."""
    scratch = {}  # dtype -> the im2col matrix of the last full chunk

    def forward(part):
        layer._cols_t = scratch.get(part.dtype)  # reused when the shape matches
        y = layer.forward(part)
        cols = layer._cols_t
        layer._cols_t = None  # the step keeps one chunk's matrix; the layer, its own chunk-sized
        # output workspace (nn.layers._CHUNK_BYTES at most)
        kept = scratch.get(part.dtype)
        if kept is None or cols.size >= kept.size:
            scratch[part.dtype] = cols
        return y

    taps = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
    small = tuple(layer.stride) == (1, 1) and taps <= DIRECT_MAX_TAPS

    def step(x):
        x = _checked_input(x, 4, "Conv2d input")
        if small and x.dtype == np.float32 and x.shape[1] == layer.in_channels:
            w = layer.weight.data
            b = layer.bias.data if layer.bias is not None else _NO_BIAS
            if w.dtype == b.dtype == np.float32 and w.flags.c_contiguous:
                return _direct_conv(x, w, b, layer, relu)
        n = x.shape[0]
        oh, ow = conv_output_shape(x.shape[2], x.shape[3], layer.kernel_size, layer.stride,
                                   layer.padding)  # fmt: skip
        chunk = max(1, CONV_SCRATCH_BYTES // max(taps * oh * ow * x.dtype.itemsize, 1))
        if n <= chunk:
            return _relu(forward(x), relu)
        y = None
        for n0 in range(0, n, chunk):
            part = forward(x[n0 : n0 + chunk])
            if y is None:
                y = np.empty((n, *part.shape[1:]), part.dtype)
            y[n0 : n0 + part.shape[0]] = part
        return _relu(y, relu)

    return step


def _direct_conv(x, weight, bias, layer, relu):
    """A small stride-1 float32 convolution without im2col (:mod:`ternref.packed._direct_conv`),
    images split between the threads of the packed kernels."""
    n, _, h, w = x.shape
    oh, ow = conv_output_shape(h, w, layer.kernel_size, layer.stride, layer.padding)
    x_flat, hp, wp = flat_input(x, layer.padding)
    y = np.empty((n, layer.out_channels, oh, ow), np.float32)
    work = layer.out_channels * hp * wp * weight[0].size  # multiply-adds per image, padded width
    args = (x_flat, weight, bias, layer.bias is not None, relu, hp, wp)
    _threads.run(conv2d_direct, args, _threads.plan(n, work), y)
    return y


def _maxpool_step(layer: MaxPool2d):
    """The plan's step for a 2x2, stride-2 ``MaxPool2d`` on float32/float64 input: the
    forward-only kernel :func:`~ternref.nn._kernels.maxpool2x2_inference`, without the routed
    offsets a backward would need and the layer's checks and caches (MaxPool2d.forward cost
    15-25 us at LeNet-5's batch-1 shapes, 2026-12-02). Any other pooling runs the layer."""
    if tuple(layer.kernel_size) != (2, 2) or tuple(layer.stride) != (2, 2):
        return layer.forward

    def step(x):
        x = np.asarray(x)
        if x.ndim != 4 or x.dtype not in KERNEL_DTYPES or x.shape[2] < 2 or x.shape[3] < 2:
            return layer.forward(x)  # its own checks and messages
        y = np.empty((*x.shape[:2], x.shape[2] // 2, x.shape[3] // 2), x.dtype)
        maxpool2x2_inference(np.ascontiguousarray(x), y)
        return y

    return step


def _relu(y, relu):
    return np.maximum(y, 0, out=y) if relu else y


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


# ------------------------------------------------------------------ registered inference layers

_BUILTIN_TYPES = frozenset(
    {
        "PackedLinear",
        "PackedConv2d",
        "Linear",
        "Conv2d",
        "BatchNorm1d",
        "BatchNorm2d",
        "MaxPool2d",
        "AvgPool2d",
        "ReLU",
        "Flatten",
    }
)
_INFERENCE_LAYERS: dict[str, type] = {}  # stable type name -> class
_TYPE_NAMES: dict[type, str] = {}  # class -> stable type name
_JSON_SCALARS = (bool, int, float, str, type(None))


def fold_batchnorm_dense(layer, bn) -> None:
    """Fold an eval-mode BatchNorm into the full-precision ``Linear``/``Conv2d`` before it, in
    place: ``bn(W x + b) = (a W) x + a (b - mu) + beta`` with ``a = gamma / sqrt(var + eps)``
    per output channel (computed in float64, stored in the layer's dtype)."""
    w = layer.weight.data
    a = bn.weight.data.astype(np.float64) / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    if a.shape != (w.shape[0],):
        raise ValueError(f"cannot fold {bn!r} ({a.shape[0]} channels) into {layer!r}")
    b = np.zeros(w.shape[0]) if layer.bias is None else layer.bias.data.astype(np.float64)
    shape = (-1,) + (1,) * (w.ndim - 1)
    layer.weight.data = (w.astype(np.float64) * a.reshape(shape)).astype(w.dtype)
    new_bias = a * (b - bn.running_mean.astype(np.float64)) + bn.bias.data.astype(np.float64)
    if layer.bias is None:
        layer.bias = Parameter(new_bias.astype(w.dtype), name="bias")
    else:
        layer.bias.data = new_bias.astype(layer.bias.data.dtype)
    layer.weight.grad = np.zeros_like(layer.weight.data)
    layer.bias.grad = np.zeros_like(layer.bias.data)


def register_inference_layer(cls=None, *, name: str | None = None):
    """Allow a layer class in packed models (:func:`export`, :func:`save`, :func:`load`).

    The protocol (no pickle; :func:`load` only builds registered classes):

    ``layer.export_state() -> (params, arrays)``
        ``params``: dict of str -> JSON scalar (bool, int, float, str, None) holding the
        layer's inference hyper-parameters; ``arrays``: dict of str -> numeric ndarray (its
        inference tensors, e.g. learned scales). Everything the evaluation-mode forward needs.
    ``cls.from_export_state(params, arrays) -> layer``
        A classmethod that checks the keys and values (``ValueError``/``TypeError`` naming the
        problem; it receives untrusted file contents) and builds a layer whose evaluation-mode
        forward equals the original's.

    Usable as ``@register_inference_layer`` or ``register_inference_layer(cls, name="...")``.

    Parameters
    ----------
    cls : type
        The layer class (a :class:`ternref.nn.module.Module` subclass).
    name : str, optional
        Stable type name written in files (default ``cls.__name__``); must not be a built-in
        layer type and must not already name another class.

    Returns
    -------
    type
        ``cls`` (so the function works as a decorator).
    """

    def register(c):
        if not (isinstance(c, type) and issubclass(c, Module)):
            raise TypeError(f"register_inference_layer expects a Module subclass, got {c!r}")
        for attr in ("export_state", "from_export_state"):
            if not callable(getattr(c, attr, None)):
                raise TypeError(f"{c.__name__} must define {attr} to be an inference layer")
        n = c.__name__ if name is None else name
        if not isinstance(n, str) or not n:
            raise TypeError(f"name must be a non-empty str, got {describe(n)}")
        if n in _BUILTIN_TYPES:
            raise ValueError(f"{n!r} is a built-in packed layer type; choose another name")
        old = _INFERENCE_LAYERS.get(n)
        if old is not None and (old.__module__, old.__qualname__) != (
            c.__module__,
            c.__qualname__,
        ):
            raise ValueError(
                f"inference layer type {n!r} is already registered for "
                f"{old.__module__}.{old.__qualname__}"
            )
        _INFERENCE_LAYERS[n] = c
        _TYPE_NAMES[c] = n
        return c

    return register if cls is None else register(cls)


def inference_layer_types() -> dict[str, type]:
    """Registered inference layer types: stable name -> class (after importing the methods)."""
    _ensure_method_layers()
    return dict(_INFERENCE_LAYERS)


def _ensure_method_layers() -> None:
    # The activation quantizers of ternref.methods register themselves when their modules are
    # imported; importing here (not at module import) avoids a packed -> methods import cycle.
    import ternref.methods  # noqa: F401


def inference_type_name(layer) -> str | None:
    """The registered type name of ``layer``'s exact class, or None."""
    return _TYPE_NAMES.get(type(layer))


def check_export_state(params, arrays, where: str = "export_state") -> tuple[dict, dict]:
    """Check the generic shape of ``(params, arrays)``; return copies. Raises ValueError.

    ``params`` must map str to JSON scalars (finite floats), ``arrays`` str to numeric
    (bool, integer or floating) ndarrays without objects.
    """
    if not isinstance(params, dict) or not isinstance(arrays, dict):
        raise ValueError(f"{where}: params and arrays must be dicts")
    out_p = {}
    for k, v in params.items():
        if not isinstance(k, str):
            raise ValueError(f"{where}: parameter names must be str, got {k!r}")
        if not isinstance(v, _JSON_SCALARS):
            raise ValueError(
                f"{where}: parameter {k!r} must be a JSON scalar (bool, int, float, str, None), "
                f"got {describe(v)}"
            )
        if isinstance(v, float) and not np.isfinite(v):
            raise ValueError(f"{where}: parameter {k!r} must be finite, got {v!r}")
        out_p[k] = v
    out_a = {}
    for k, a in arrays.items():
        if not isinstance(k, str) or not k or "/" in k:
            raise ValueError(f"{where}: array names must be non-empty str without '/', got {k!r}")
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
            raise ValueError(
                f"{where}: array {k!r} must be a bool, integer or floating ndarray, "
                f"got {describe(a)}"
            )
        out_a[k] = np.array(a, order="C", copy=True)
    return out_p, out_a


def expect_state_keys(type_name: str, params: dict, arrays: dict, param_names, array_names):
    """Raise ValueError unless ``params``/``arrays`` have exactly the given keys (for
    ``from_export_state`` implementations)."""
    if set(params) != set(param_names):
        raise ValueError(
            f"{type_name}: parameters {sorted(params)} differ from the expected "
            f"{sorted(param_names)}"
        )
    if set(arrays) != set(array_names):
        raise ValueError(
            f"{type_name}: arrays {sorted(arrays)} differ from the expected {sorted(array_names)}"
        )


def rebuild_inference_layer(type_name: str, params, arrays) -> Module:
    """Build a registered layer from its state (checked); evaluation mode. Raises ValueError."""
    cls = _INFERENCE_LAYERS.get(type_name)
    if cls is None:
        _ensure_method_layers()
        cls = _INFERENCE_LAYERS.get(type_name)
    if cls is None:
        raise ValueError(
            f"unknown layer type {type_name!r}; registered inference layers: "
            f"{sorted(_INFERENCE_LAYERS)}"
        )
    params, arrays = check_export_state(params, arrays, f"{type_name} state")
    try:
        layer = cls.from_export_state(params, arrays)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{type_name}: invalid state: {e}") from e
    if type(layer) is not cls:
        raise ValueError(f"{cls.__name__}.from_export_state returned {describe(layer)}")
    layer.eval()
    return layer


# ---------------------------------------------------------------------------------- export

_COPIED = (ReLU, MaxPool2d, AvgPool2d, Flatten, Linear, Conv2d, BatchNorm1d, BatchNorm2d)


def _ternary_terms(i: int, layer) -> tuple[Ternary, ...]:
    """The inference terms of a quantized layer: ``(to_ternary(w),)``, or ``to_ternaries(w)``
    for a quantizer holding a sum of ternary terms (Ternary Residual Networks)."""
    q = layer.weight_quantizer
    w = layer.weight.data
    terms = q.to_ternaries(w) if hasattr(q, "to_ternaries") else (q.to_ternary(w),)
    terms = tuple(terms)
    if not terms:
        raise ValueError(f"layer {i}: weight_quantizer.to_ternaries returned no term")
    for t in terms:
        if not isinstance(t, Ternary) or t.shape != w.shape:
            raise ValueError(
                f"layer {i}: weight_quantizer.to_ternary must return a Ternary of shape "
                f"{w.shape}, got {t!r}"
            )
    return terms


def export(model, format: str = "i2", activations: str = "float32") -> Sequential:
    """Turn a trained ``Sequential`` into a packed inference ``Sequential``.

    Parameters
    ----------
    model : Sequential
        ``Linear``/``Conv2d`` layers whose ``weight_quantizer`` is not None are packed from
        ``weight_quantizer.to_ternary(layer.weight.data)`` (or, when the quantizer has
        ``to_ternaries``, from every term of the sum, into one layer that adds the products);
        full-precision layers, ReLU, pooling and Flatten are copied; Dropout is dropped
        (identity in evaluation) and so is any layer with ``inference_identity = True`` (e.g.
        knowledge distillation's hidden-state taps); layers registered with
        :func:`register_inference_layer` (the methods' activation quantizers) are rebuilt from
        their ``export_state()`` in evaluation mode; an eval-mode BatchNorm right after a
        packed layer is folded into it (into every term; see the module docstring), one right
        after a full-precision ``Linear``/``Conv2d`` is folded into that layer's copy
        (:func:`fold_batchnorm_dense`), any other BatchNorm is copied in evaluation mode.
    format : {"i2", "tq1", "bitplanes"}
    activations : {"float32", "int8"}
        What the packed layers compute with. A registered activation quantizer stays a layer
        of its own in front of them (BitNet's 8-bit quantizer too: its rounding differs from the
        kernel's int8 quantizer, see :mod:`ternref.methods.bitnet`).

    Returns
    -------
    PackedSequential
        In evaluation mode; the trained model is not modified.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"export expects a ternref.nn.Sequential, got {describe(model)}")
    one_of(format, "format", FORMATS)
    one_of(activations, "activations", ACTIVATIONS)
    out: list[Module] = []
    pending = None  # (kind, ternary terms, bias, hyper-parameters) of the last packed layer
    for i, layer in enumerate(model.layers):
        dense_before = bool(out) and type(out[-1]) in (Linear, Conv2d) and pending is None
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)) and dense_before:
            fold_batchnorm_dense(out[-1], layer)  # into the copy of the float layer
            continue
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)) and pending is not None:
            kind, terms, bias, hyper = pending
            folded = [fold_batchnorm(t, bias, layer) for t in terms]
            pending = (kind, [t for t, _ in folded], folded[0][1], hyper)  # bias added once
            continue
        if pending is not None:
            out.append(_build(pending, format, activations))
            pending = None
        quantized = isinstance(layer, (Linear, Conv2d)) and layer.weight_quantizer is not None
        if quantized:
            terms = _ternary_terms(i, layer)
            bias = None if layer.bias is None else layer.bias.data.astype(np.float64)
            if isinstance(layer, Linear):
                pending = ("linear", list(terms), bias, {})
            else:
                hyper = {"stride": layer.stride, "padding": layer.padding}
                pending = ("conv", list(terms), bias, hyper)
        elif isinstance(layer, Dropout) or getattr(layer, "inference_identity", False) is True:
            continue
        elif inference_type_name(layer) is not None:
            name = inference_type_name(layer)
            state = layer.export_state()
            if not isinstance(state, tuple) or len(state) != 2:
                raise TypeError(f"layer {i}: {name}.export_state must return (params, arrays)")
            params, arrays = check_export_state(*state, f"layer {i} ({name}) export_state")
            out.append(rebuild_inference_layer(name, params, arrays))
        elif isinstance(layer, _COPIED):
            copied = copy.deepcopy(layer)
            copied.eval()
            out.append(copied)
        else:
            raise TypeError(
                f"layer {i}: export does not know how to convert {type(layer).__name__}; "
                f"supported: quantized Linear/Conv2d, {', '.join(c.__name__ for c in _COPIED)}, "
                "Dropout, layers with inference_identity = True, registered inference layers "
                f"({', '.join(sorted(_INFERENCE_LAYERS)) or 'none'}; "
                "see register_inference_layer)"
            )
    if pending is not None:
        out.append(_build(pending, format, activations))
    packed_model = PackedSequential(*out)
    packed_model.training = False
    return packed_model


def _build(pending, format, activations) -> Module:
    kind, terms, bias, hyper = pending
    p = [pack(t, format) for t in terms]
    p = p[0] if len(p) == 1 else p
    b = None if bias is None else bias.astype(np.float32)
    if kind == "linear":
        return PackedLinear(p, b, activations)
    return PackedConv2d(p, hyper["stride"], hyper["padding"], b, activations)


__all__ = [
    "PackedLinear",
    "PackedConv2d",
    "PackedSequential",
    "fold_batchnorm_dense",
    "check_export_state",
    "expect_state_keys",
    "export",
    "fold_batchnorm",
    "inference_layer_types",
    "inference_type_name",
    "rebuild_inference_layer",
    "register_inference_layer",
]
