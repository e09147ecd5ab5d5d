"""Knowledge distillation for ternary students, TernaryBERT-style (usable with any base method).

Zhang, Hou, Yin, Shang, Chen, Jiang, Liu, "TernaryBERT: Distillation-aware Ultra-low Bit BERT",
EMNLP 2020, arXiv:2009.12812. Official code: github.com/huawei-noah/Pretrained-Language-Model,
``TernaryBERT/`` (``quant_task_glue.py``, ``transformer/utils_quant.py``).

A full-precision **teacher** guides a ternary **student**. The student's layers are ternarized by
a *base* method (any registered method, or TernaryBERT's own weight quantizer, the default), and
the training loss is (TernaryBERT's ``L = L_trm + L_pred``, plus an optional hard-label term)::

    L = L_pred + hidden_weight * L_trm + hard_weight * CE(z_s, y)
    L_pred = T^2 * (1/N) sum_n -sum_j softmax(z_t/T)_j log softmax(z_s/T)_j      (soft CE)
    L_trm  = sum_k MSE(h_s,k, h_t,k)          (mean over the elements of each hidden state)

with ``z_s``, ``z_t`` the student's and teacher's logits and ``h_k`` the hidden states at the
matched points. TernaryBERT uses T = 1, no hard-label term, and MSE over every Transformer
layer's hidden states (including the embedding output) and attention scores.

What ternref supports as hidden states: the **input of every ternary layer** of the student (the
activation the previous layer produced, before the base method's activation quantizer, if any)
against the input of the teacher's weight layer with the same index (both models flat
``Sequential``s; weight layers are counted in order). A pair is distilled only when the shapes
agree (same architecture); other pairs, and every pair for a base whose activation quantizer
replaces the ReLU (GXNOR: the student's hidden state is then a ternary activation with no
teacher counterpart), are skipped. Attention scores do not exist in ternref's models.

How it is wired into the autograd-free stack
--------------------------------------------
* :class:`TeacherOutputs` (a callback) runs the teacher in evaluation mode on every training
  batch in ``on_batch_begin`` and stores its logits and hidden states in a shared state. Its
  forward is inference only: each Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d block is computed
  with reused buffers and one fused kernel for the last three layers, the same values as the
  layers' own forward passes (a training epoch of LeNet-5 runs the teacher 469 times).
* :class:`HiddenStateTap` layers (identity in the forward pass) are inserted into the student in
  front of each ternary layer (before the base method's activation quantizer) when the callbacks
  are created. In training, a tap computes its MSE term and, in the backward pass, adds
  ``hidden_weight * 2 (h_s - h_t) / size`` to the gradient flowing through it. In evaluation
  mode it does nothing, so inference and export can skip it (``inference_identity = True``).
* :meth:`KD.loss` returns :class:`DistillationObjective`, whose ``forward(logits, y)`` uses the
  teacher logits of the current batch. Called without fresh teacher outputs (``fit``'s
  evaluation pass after each epoch), it is the plain cross-entropy, so ``test_loss`` is the hard
  test loss.

Calling it (``fit`` takes ``loss=``; the CLI and ``compare`` already call ``method.loss()``)::

    teacher = ...  # a trained full-precision model (same architecture for hidden distillation)
    method = ternref.methods.get("kd", teacher=teacher)              # TernaryBERT quantizer
    method = ternref.methods.get("kd", base="ttq", teacher=teacher)  # or any base method
    callbacks = quantize_model(student, method)
    fit(student, data, optimizer, loss=method.loss(), callbacks=callbacks)

One ``KD`` instance serves one student (it keeps the taps it inserted and the teacher outputs of
the current batch); ``get`` builds a new one each call. The method needs a teacher;
``get("kd")`` without one succeeds (so that the method can be listed
and validated) but ``quantize_model`` raises a ``ValueError`` saying how to pass one. A caller
that has none trains a full-precision model first (the same recipe) and passes it. TernaryBERT
initialises the student from the teacher's weights; do that by building the student from a copy
of the teacher when you want it (ternref does not do it implicitly).

The default base ("ternarybert"): TernaryBERT's ``TwnQuantizer``
-----------------------------------------------------------------
Weights clipped to [-c, c] (c = ``clip_val`` = 2.5), then TWN's rule layer-wise,
Delta = 0.7 mean|W|, alpha = mean_{|W| > Delta} |W| (the code does it per row for embeddings,
which ternref's models do not have); backward: the STE with the gradient zeroed outside
(-c, c) (``estimators.clipped_ste``; the code's strict inequality differs only at |W| = c). Its
hyper-parameters go in ``base_hyperparameters`` (``factor``, ``clip``, ``granularity``). Other
bases take theirs the same way: ``get("kd", base="twn", base_hyperparameters={"factor": 0.75})``,
or pass a ``Method`` instance as ``base``. TernaryBERT's 8-bit activation quantizer
(``SymQuantizer``) is not part of the default base. Recipe in the paper: BertAdam lr 2e-5,
linear warm-up 0.1, 3 epochs, the student initialised from the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods import base as _base
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, register
from ternref.methods.estimators import clipped_ste
from ternref.nn.losses import CrossEntropyLoss, DistillationLoss, Loss
from ternref.nn.module import Module
from ternref.projections import twn as twn_projection
from ternref.train import Callback

# ------------------------------------------------------------------ TernaryBERT weight quantizer


class TernaryBERTQuantizer(WeightQuantizer):
    """TernaryBERT's ``TwnQuantizer``: clip to [-c, c], TWN 0.7 projection, clipped STE."""

    def __init__(self, factor: float = 0.7, clip: float = 2.5, granularity: str = "tensor"):
        super().__init__()
        self.factor = factor
        self.clip = clip
        self.granularity = granularity

    def project(self, w):
        w_c = np.clip(w, -self.clip, self.clip)  # input = clamp(input, -c, c)
        return twn_projection(w_c, factor=self.factor, granularity=self.granularity)

    def backward(self, dw_hat):
        if self._w is None:
            raise RuntimeError("TernaryBERTQuantizer.backward called before forward")
        return clipped_ste(dw_hat, self._w, clip=self.clip)  # g * 1[|w| <= c]

    def extra_repr(self):
        return f"factor={self.factor}, clip={self.clip}, granularity={self.granularity!r}"


@dataclass
class _TernaryBERTBase(Method):
    """The default base of :class:`KD` (not registered on its own)."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="ternarybert",
        paper="Zhang et al.: TernaryBERT",
        year=2020,
        arxiv="2009.12812",
        ternary="W",
        projection="clip to [-2.5, 2.5], then 0.7*mean|W| threshold, least-squares alpha",
        estimator="clipped STE 1[|w| <= 2.5]",
        optimizer="Adam",
    )
    factor: float = 0.7
    clip: float = 2.5
    granularity: str = "tensor"

    def validate(self):
        _validate.real_number(self.factor, "factor", low=0.0, high=1.0, high_open=True)
        _validate.real_number(self.clip, "clip", low=0.0, low_open=True)
        _validate.one_of(self.granularity, "granularity", ("tensor", "channel"))

    def weight_quantizer(self, layer):
        return TernaryBERTQuantizer(self.factor, self.clip, self.granularity)


# ----------------------------------------------------------------------- shared teacher state


class _TeacherState:
    """The teacher's outputs for the current training batch (arrays only, no modules)."""

    def __init__(self):
        self.logits: np.ndarray | None = None
        self.hidden: dict[int, np.ndarray] = {}
        self.fresh = False


class TeacherOutputs(Callback):
    """Runs the teacher (evaluation mode) on each training batch; stores logits and the inputs
    of the teacher's weight layers listed in ``hidden_indices``.

    The teacher's forward is inference only (no backward follows), so for a flat ``Sequential``
    teacher each run of full-precision ``Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d(2, 2)`` (eval
    mode) is computed by :func:`_conv_block_eval`: the convolution's GEMM written into a buffer
    kept across batches, then the BatchNorm's affine map, the ReLU and the pool in one kernel
    (``nn._kernels.affine_relu_maxpool2x2``), skipping the layers' transpose copy and the caches
    their backward would read. The values are the layers' own operations in the same order
    (``tests/methods/test_kd.py`` checks them equal to ``teacher.forward`` bit for bit); any
    other layer runs its own ``forward``.
    """

    def __init__(self, teacher: Module, state: _TeacherState, hidden_indices=()):
        self.teacher = teacher
        self.state = state
        self.hidden_indices = set(hidden_indices)
        self._buffers: dict = {}  # per fused block: (im2col, GEMM output) buffers

    def on_train_begin(self, model, optimizer):
        self.teacher.eval()

    def on_batch_begin(self, xb, yb):
        self.teacher.eval()
        self.state.hidden = {}
        layers = getattr(self.teacher, "layers", None)
        if layers is not None:
            logits = self._sequential_forward(layers, xb)
        else:
            logits = self.teacher.forward(xb)
        self.state.logits = np.asarray(logits)
        self.state.fresh = True

    def _sequential_forward(self, layers, x):
        from ternref.nn.layers import Conv2d, Linear

        i, k = 0, 0
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, (Linear, Conv2d)):
                if k in self.hidden_indices:
                    self.state.hidden[k] = x
                k += 1
            if _fusable_conv_block(layers, i, x):
                x = _conv_block_eval(layers[i], layers[i + 1], x, self._buffers.setdefault(i, {}))
                i += 4  # no weight layer among the BatchNorm, ReLU and pool
            else:
                x = layer.forward(x)
                i += 1
        return x


def _fusable_conv_block(layers, i, x) -> bool:
    """Whether ``layers[i:i + 4]`` is an eval-mode full-precision Conv2d, BatchNorm2d, ReLU,
    MaxPool2d(2, 2) (exact types) that :func:`_conv_block_eval` computes for input ``x``."""
    from ternref.nn._kernels import KERNEL_DTYPES
    from ternref.nn.layers import BatchNorm2d, Conv2d, MaxPool2d, ReLU

    if i + 4 > len(layers):
        return False
    conv, bn, relu, pool = layers[i : i + 4]
    return (
        type(conv) is Conv2d
        and type(bn) is BatchNorm2d
        and type(relu) is ReLU
        and type(pool) is MaxPool2d
        and conv.weight_quantizer is None
        and not (conv.training or bn.training)
        and bn.num_features == conv.out_channels
        and tuple(pool.kernel_size) == (2, 2)
        and tuple(pool.stride) == (2, 2)
        and isinstance(x, np.ndarray)
        and x.dtype in KERNEL_DTYPES
        and x.ndim == 4
        and x.shape[1] == conv.in_channels
    )


def _conv_block_eval(conv, bn, x, buffers: dict) -> np.ndarray:
    """``pool(relu(bn(conv(x))))`` in evaluation mode, the same operations as the four layers'
    forwards (``Conv2d.forward``, ``_BatchNorm.forward``'s eval branch, ``ReLU``,
    ``MaxPool2d``), with the im2col and GEMM outputs written into ``buffers`` (kept across
    batches) and the last three layers fused (``nn._kernels.affine_relu_maxpool2x2``)."""
    from ternref.nn import _kernels
    from ternref.nn.functional import conv_output_shape, im2col_t

    n, _, h, w = x.shape
    oh, ow = conv_output_shape(h, w, conv.kernel_size, conv.stride, conv.padding)
    w_hat = conv.weight.data.astype(x.dtype, copy=False)
    cols_t = im2col_t(x, conv.kernel_size, conv.stride, conv.padding, out=buffers.get("cols"))
    buffers["cols"] = cols_t
    y_buf = buffers.get("y")
    shape = (conv.out_channels, cols_t.shape[1])
    if y_buf is None or y_buf.shape != shape or y_buf.dtype != x.dtype:
        y_buf = np.empty(shape, x.dtype)
    y_t = np.matmul(w_hat.reshape(conv.out_channels, -1), cols_t, out=y_buf)  # (O, M)
    buffers["y"] = y_t
    if conv.bias is not None:
        y_t += conv.bias.data.astype(x.dtype, copy=False)[:, None]
    # BatchNorm eval: y = x * a + (beta - mu a), a = gamma / sqrt(running_var + eps)
    dt = x.dtype.type
    gamma = bn.weight.data.astype(x.dtype, copy=False)
    beta = bn.bias.data.astype(x.dtype, copy=False)
    mu = bn.running_mean.astype(x.dtype)
    inv_std = 1.0 / np.sqrt(bn.running_var.astype(x.dtype) + dt(bn.eps))
    a = gamma * inv_std
    return _kernels.affine_relu_maxpool2x2(y_t.reshape(-1, n, oh, ow), a, beta - mu * a)


class HiddenStateTap(Module):
    """Identity layer adding TernaryBERT's hidden-state MSE gradient in training.

    Forward: returns ``x``; in training, with the teacher's hidden state ``h_t`` for this batch
    (same shape), records ``mse = mean((x - h_t)^2)``. Backward:
    ``dL/dx = dy + weight * 2 (x - h_t) / x.size`` (the derivative of ``weight * mse``).
    """

    #: In evaluation mode this layer is the identity: inference and export may drop it.
    inference_identity = True

    def __init__(self, state: _TeacherState, weight: float):
        super().__init__()
        self._state = state
        self.weight = weight
        self.index: int | None = None  # the student's weight-layer index it feeds
        self.last_mse = 0.0
        self._diff = None

    def forward(self, x):
        self._diff = None
        self.last_mse = 0.0
        if self.training and self._state.fresh and self.index is not None:
            h_t = self._state.hidden.get(self.index)
            if h_t is not None and h_t.shape == x.shape:
                self._diff = x - h_t.astype(x.dtype, copy=False)
                self.last_mse = float(np.mean(self._diff * self._diff, dtype=np.float64))
        return x

    def backward(self, dy):
        if self._diff is None:
            return dy
        return dy + (self.weight * 2.0 / self._diff.size) * self._diff

    def extra_repr(self):
        return f"index={self.index}, weight={self.weight}"


class DistillationObjective(Loss):
    """``L_pred + hidden_weight * L_trm + hard_weight * CE``; plain CE without teacher outputs.

    ``forward(logits, y)``: with fresh teacher logits of the same shape (a training batch), the
    soft cross-entropy against them (``nn.DistillationLoss(temperature, kind="soft_ce")``), plus
    ``hard_weight`` times the cross-entropy with the labels, plus the hidden-state terms the
    taps recorded in this forward pass; it then marks the teacher outputs as used. Otherwise
    (evaluation) the cross-entropy with the labels. ``backward()`` is dL/dlogits (the hidden
    terms' gradients enter through the taps).
    """

    def __init__(self, state, taps, temperature: float, hard_weight: float):
        super().__init__()
        self._state = state
        self._taps = list(taps)
        self.soft = DistillationLoss(temperature, kind="soft_ce")
        self.hard = CrossEntropyLoss()
        self.hard_weight = hard_weight
        self.last_terms: dict = {}

    def forward(self, logits, target) -> float:
        state = self._state
        teacher = state.logits
        if not state.fresh or teacher is None or teacher.shape != np.shape(logits):
            value = self.hard.forward(logits, target)
            self._grad = self.hard.backward()
            self.last_terms = {"hard": value}
            return value
        state.fresh = False
        soft = self.soft.forward(logits, teacher)
        grad = self.soft.backward()
        value = soft
        terms = {"pred": soft}
        if self.hard_weight:
            hard = self.hard.forward(logits, target)
            grad = grad + self.hard_weight * self.hard.backward()
            value += self.hard_weight * hard
            terms["hard"] = hard
        trm = sum(tap.weight * tap.last_mse for tap in self._taps)
        value += trm
        terms["trm"] = trm
        self._grad = grad
        self.last_terms = terms
        return float(value)

    def __repr__(self):
        return (
            f"DistillationObjective(temperature={self.soft.temperature}, "
            f"hard_weight={self.hard_weight}, taps={len(self._taps)})"
        )


# --------------------------------------------------------------------------------- the method


@register
@dataclass
class KD(Method):
    """Distillation from a full-precision teacher on top of a base ternary method (TernaryBERT).

    Parameters
    ----------
    teacher : Module
        The trained full-precision model (required before ``quantize_model``).
    base : str or Method
        The method that ternarizes the student: ``"ternarybert"`` (default, TernaryBERT's
        clipped TWN quantizer), any registered method name, or a ``Method`` instance.
    base_hyperparameters : dict
        Hyper-parameters of a base given by name.
    temperature : float > 0
        T of the soft cross-entropy (TernaryBERT: 1).
    hard_weight : float >= 0
        Weight of the cross-entropy with the labels (TernaryBERT: 0).
    hidden_weight : float >= 0
        Weight of the hidden-state MSE terms (TernaryBERT: 1; 0 disables the taps).
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="kd",
        paper="Zhang et al.: TernaryBERT: Distillation-aware Ultra-low Bit BERT",
        year=2020,
        arxiv="2009.12812",
        ternary="W",
        projection="the base method's (default: clip 2.5 + TWN 0.7 per layer)",
        estimator="the base method's (default: clipped STE)",
        optimizer="soft CE to teacher logits + MSE of hidden states (+ optional hard CE)",
    )
    teacher: Module | None = field(default=None, repr=False)
    base: str | Method = "ternarybert"
    base_hyperparameters: dict = field(default_factory=dict)
    temperature: float = 1.0
    hard_weight: float = 0.0
    hidden_weight: float = 1.0

    def __post_init__(self):
        self._base_method: Method | None = None
        self._state = _TeacherState()
        self._taps: list[tuple[HiddenStateTap, Module]] = []
        self._base_acts: set[int] = set()

    # -- configuration --------------------------------------------------------------------
    def hyperparameters(self) -> dict:
        """The hyper-parameters, JSON-friendly: the teacher and a Method base are described."""
        hp = super().hyperparameters()
        if self.teacher is not None:
            n = sum(p.data.size for p in self.teacher.parameters())
            hp["teacher"] = f"{type(self.teacher).__name__} with {n} parameters"
        if isinstance(self.base, Method):
            hp["base"] = self.base.info.name
            hp["base_hyperparameters"] = self.base.hyperparameters()
        return hp

    def validate(self):
        if self.teacher is not None and not isinstance(self.teacher, Module):
            raise TypeError(
                f"teacher must be a ternref Module (a trained full-precision model), got "
                f"{_validate.describe(self.teacher)}"
            )
        _validate.real_number(self.temperature, "temperature", low=0.0, low_open=True)
        _validate.real_number(self.hard_weight, "hard_weight", low=0.0)
        _validate.real_number(self.hidden_weight, "hidden_weight", low=0.0)
        if not isinstance(self.base_hyperparameters, dict):
            raise TypeError(
                "base_hyperparameters must be a dict, got "
                f"{_validate.describe(self.base_hyperparameters)}"
            )
        self._base_method = self._resolve_base()

    def _resolve_base(self) -> Method:
        if isinstance(self.base, Method):
            if self.base_hyperparameters:
                raise ValueError(
                    "base_hyperparameters apply to a base given by name; configure the base "
                    "Method instance directly"
                )
            if isinstance(self.base, KD):
                raise ValueError("base must not itself be a 'kd' method")
            return self.base
        if not isinstance(self.base, str):
            raise TypeError(
                f"base must be a method name or a Method, got {_validate.describe(self.base)}"
            )
        if self.base == "kd":
            raise ValueError("base must not itself be 'kd'")
        if self.base == "ternarybert":
            known = {"factor", "clip", "granularity"}
            unknown = set(self.base_hyperparameters) - known
            if unknown:
                raise ValueError(
                    f"base 'ternarybert' has no hyper-parameter(s) {sorted(unknown)} in "
                    f"base_hyperparameters; it has: {', '.join(sorted(known))}"
                )
            method = _TernaryBERTBase(**self.base_hyperparameters)
            method.validate()
            return method
        return _base.get(self.base, **self.base_hyperparameters)

    @property
    def base_method(self) -> Method:
        """The resolved base method."""
        if self._base_method is None:
            self._base_method = self._resolve_base()
        return self._base_method

    @property
    def replaces_relu(self) -> bool:  # follows the base (GXNOR's ternary neuron)
        return self.base_method.replaces_relu

    @property
    def _hidden(self) -> bool:
        return self.hidden_weight > 0 and not self.replaces_relu

    # -- attaching ------------------------------------------------------------------------
    def weight_quantizer(self, layer) -> WeightQuantizer:
        if self.teacher is None:
            raise ValueError(
                "method 'kd' needs a trained full-precision teacher: "
                "ternref.methods.get('kd', teacher=model[, base=...]); train one first "
                "(the same model without quantization) and pass it"
            )
        return self.base_method.weight_quantizer(layer)

    def activation_quantizer(self, layer):
        act = self.base_method.activation_quantizer(layer)
        if act is not None:
            self._base_acts.add(id(act))
        if self._hidden:
            self._taps.append((HiddenStateTap(self._state, self.hidden_weight), layer))
        return act

    def callbacks(self, model):
        callbacks = list(self.base_method.callbacks(model))
        indices = []
        if self._hidden and self._taps:
            weight_ids = [id(m) for m in _base.weight_layers(model)]
            layers = model.layers
            for tap, layer in self._taps:
                tap.index = weight_ids.index(id(layer))
                indices.append(tap.index)
                # in front of the layer and of the base's activation quantizer, if any
                at = next(i for i, m in enumerate(layers) if m is layer)
                while at > 0 and id(layers[at - 1]) in self._base_acts:
                    at -= 1
                layers.insert(at, tap)
        callbacks.append(TeacherOutputs(self.teacher, self._state, indices))
        return callbacks

    def loss(self):
        return DistillationObjective(
            self._state, [tap for tap, _ in self._taps], self.temperature, self.hard_weight
        )


def distill(
    base: str | Method,
    teacher: Module,
    temperature: float = 1.0,
    hard_weight: float = 0.0,
    hidden_weight: float = 1.0,
) -> KD:
    """Shorthand for ``ternref.methods.get("kd", base=base, teacher=teacher, ...)``.

    References
    ----------
    W. Zhang et al., "TernaryBERT: Distillation-aware Ultra-low Bit BERT", EMNLP 2020,
    arXiv:2009.12812.
    """
    return _base.get(
        "kd",
        base=base,
        teacher=teacher,
        temperature=temperature,
        hard_weight=hard_weight,
        hidden_weight=hidden_weight,
    )
