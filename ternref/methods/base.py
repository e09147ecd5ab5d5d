"""What a ternary training method is, and how it is attached to a network.

A *method* (survey vocabulary: projection function + optimization method) bundles

* a **weight quantizer** per quantized layer (:class:`WeightQuantizer`): a ``Module`` that the
  layer calls on its latent weights, ``forward(w) -> w_hat``, whose ``backward(dw_hat) -> dw`` is
  the method's gradient estimator (and accumulates the gradients of learned scales, which are
  ``Parameter`` attributes of the quantizer and so are found by ``model.parameters()``);
* optionally an **activation quantizer** (a layer of its own) for methods that ternarize
  activations too;
* optionally **callbacks** (:class:`ternref.train.Callback`) for the work an optimization method
  does around the optimizer step: a proximal step, an ADMM dual update, clipping, freezing, masks;
* its hyper-parameters with the paper's defaults, and the reference.

:func:`quantize_model` attaches a method to a ``Sequential`` model, or (through
:func:`ternref.methods.bitlinear.quantize_transformer`) to the attention and MLP projections of a
``TransformerLM``; the training loop never special-cases a method by name (DESIGN.md, "the data
path of one training step").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ternref import _validate
from ternref.nn.module import Module
from ternref.ternary import Ternary
from ternref.train import Callback

KEEP_FULL_PRECISION = ("first_last", "first", "last", "none")


class WeightQuantizer(Module):
    """Base class of weight quantizers: latent ``w`` -> ``w_hat``, and back.

    Subclasses implement :meth:`project` (the projection function used in the forward pass) and
    may override :meth:`backward` (the gradient estimator; the default is the identity STE,
    dL/dw := dL/dw_hat, Bengio et al. 2013) and :meth:`to_ternary` (the inference form, by
    default the same projection in evaluation mode).

    The last forward's ``Ternary`` is kept in ``self.ternary`` so that the backward pass and the
    per-epoch statistics can read the codes without recomputing them.
    """

    def __init__(self):
        super().__init__()
        self.ternary: Ternary | None = None
        self._w: np.ndarray | None = None

    def project(self, w: np.ndarray) -> Ternary:
        raise NotImplementedError

    def forward(self, w: np.ndarray) -> np.ndarray:
        self._w = w
        self.ternary = self.project(w)
        return self.ternary.dense()

    def backward(self, dw_hat: np.ndarray) -> np.ndarray:
        # Identity straight-through estimator: treat d w_hat / d w as the identity.
        return dw_hat

    def to_ternary(self, w: np.ndarray) -> Ternary:
        """The ternary form used for inference and export (deterministic).

        Stateful methods may return their stored ternary point rather than a projection of
        ``w``: ADMM returns its feasible variable G, ProxQuant after freezing its frozen value.
        The contract is only that ``to_ternary(w).dense()`` is what the eval-mode forward uses.
        """
        was_training = self.training
        self.training = False
        try:
            return self.project(w)
        finally:
            self.training = was_training


@dataclass(frozen=True)
class MethodInfo:
    """Descriptive metadata of a method, shown by ``ternref methods``."""

    name: str
    paper: str  # "Li, Zhang, Liu: Ternary Weight Networks"
    year: int
    arxiv: str | None
    ternary: str  # "W" or "W+A"
    projection: str  # how w_hat is formed
    estimator: str  # the gradient rule
    optimizer: str  # the optimization recipe


class Method:
    """Base class of ternary training methods.

    Subclasses are dataclasses whose fields are the hyper-parameters (with the paper's
    defaults) and set the class attribute ``info``. They implement :meth:`weight_quantizer` and,
    where the method needs them, :meth:`activation_quantizer` and :meth:`callbacks`.

    ``keep_full_precision`` says which weight layers stay in full precision: ``"first_last"``
    (the default of most papers: TTQ, STTN, ProxQuant...), ``"first"``, ``"last"`` or
    ``"none"``. Each method's docstring says what its paper did.
    """

    info: MethodInfo

    def weight_quantizer(self, layer: Module) -> WeightQuantizer:
        raise NotImplementedError

    def activation_quantizer(self, layer: Module) -> Module | None:
        """A layer placed in front of quantized ``layer`` (replacing a preceding ReLU if
        :attr:`replaces_relu`), or ``None`` for weight-only methods."""
        return None

    #: Whether the activation quantizer replaces the ReLU in front of a quantized layer (GXNOR's
    #: ternary neuron is itself the nonlinearity) rather than being inserted after it.
    replaces_relu: bool = False

    def callbacks(self, model: Module) -> list[Callback]:
        """Training-time hooks of the optimization method (called once per model)."""
        return []

    def loss(self):
        """The training loss the method needs, or ``None`` for the caller's default.

        (Distillation returns a loss against the teacher's logits; GXNOR's and LAT's papers
        used the squared hinge loss, but ternref compares methods under one loss by default.)
        """
        return None

    def hyperparameters(self) -> dict:
        """The method's hyper-parameters and their current values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def validate(self) -> None:
        """Check hyper-parameter ranges; subclasses extend it (called by :func:`get`)."""


# ---------------------------------------------------------------------------- registry
_METHODS: dict[str, type] = {}


def register(cls):
    """Class decorator registering a :class:`Method` subclass under ``cls.info.name``."""
    name = cls.info.name
    if name in _METHODS:
        raise ValueError(f"method {name!r} is already registered")
    _METHODS[name] = cls
    return cls


def names() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_METHODS)


def get(name: str, **hyperparameters) -> Method:
    """Instantiate the method ``name`` with the paper's defaults, overridden by keywords.

    Raises ``ValueError`` for an unknown name (listing the known ones) or an unknown or
    out-of-range hyper-parameter.
    """
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(names())}")
    cls = _METHODS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(hyperparameters) - known
    if unknown:
        raise ValueError(
            f"method {name!r} has no hyper-parameter(s) {sorted(unknown)}; "
            f"it has: {', '.join(sorted(known)) or 'none'}"
        )
    method = cls(**hyperparameters)
    method.validate()
    return method


def requires_teacher(name: str) -> bool:
    """Whether method ``name`` needs a trained full-precision ``teacher`` (distillation)."""
    info(name)
    return "teacher" in {f.name for f in dataclasses.fields(_METHODS[name])}


def info(name: str) -> MethodInfo:
    """Metadata of method ``name`` without instantiating it."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(names())}")
    return _METHODS[name].info


# ---------------------------------------------------------------------------- attaching
def weight_layers(model: Module) -> list[Module]:
    """The layers of ``model`` that own a weight matrix or kernel (Linear, Conv2d), in order."""
    from ternref.nn.layers import Conv2d, Linear

    return [m for m in model.modules() if isinstance(m, (Linear, Conv2d))]


def quantized_layers(model: Module) -> list[Module]:
    """The weight layers of ``model`` that carry a weight quantizer."""
    return [m for m in weight_layers(model) if getattr(m, "weight_quantizer", None) is not None]


def quantize_model(
    model: Module, method: Method, keep_full_precision: str = "first_last"
) -> list[Callback]:
    """Attach ``method`` to ``model`` in place and return the callbacks to pass to ``fit``.

    Every weight layer except those kept in full precision gets ``method.weight_quantizer``.
    For methods that ternarize activations, the activation quantizer goes in front of each
    quantized layer (replacing the nearest preceding ReLU when ``method.replaces_relu``).
    The returned callbacks always include :class:`TernaryStats` (per-epoch sparsity and flip
    ratio of every ternary layer) after the method's own.

    A :class:`ternref.nn.TransformerLM` is handed to
    :func:`ternref.methods.bitlinear.quantize_transformer` (its seven projections per block are
    quantized; the embeddings and the output head, its "first" and "last" layers, stay in full
    precision, so only ``keep_full_precision="first_last"`` is accepted for it).

    Raises
    ------
    ValueError
        A model that is not a ``Sequential`` or a ``TransformerLM``, that is already quantized,
        or a bad ``keep_full_precision``.
    """
    from ternref.nn.layers import ReLU, Sequential
    from ternref.nn.transformer import TransformerLM

    _validate.one_of(keep_full_precision, "keep_full_precision", KEEP_FULL_PRECISION)
    if isinstance(model, TransformerLM):
        if keep_full_precision != "first_last":
            raise ValueError(
                "a TransformerLM keeps its embeddings and output head in full precision and "
                f"quantizes every block projection: keep_full_precision must be 'first_last', "
                f"got {keep_full_precision!r}"
            )
        from ternref.methods.bitlinear import quantize_transformer

        return quantize_transformer(model, method)
    if not isinstance(model, Sequential):
        raise ValueError(
            f"model must be a ternref.nn.Sequential or TransformerLM, got {type(model).__name__}"
        )
    if quantized_layers(model):
        raise ValueError("model is already quantized (a layer has a weight_quantizer)")
    layers = weight_layers(model)
    if not layers:
        raise ValueError("model has no Linear or Conv2d layer to quantize")
    keep = set()
    if keep_full_precision in ("first_last", "first"):
        keep.add(id(layers[0]))
    if keep_full_precision in ("first_last", "last"):
        keep.add(id(layers[-1]))
    targets = [layer for layer in layers if id(layer) not in keep]
    if not targets:
        raise ValueError(
            f"keep_full_precision={keep_full_precision!r} leaves no layer to quantize in a "
            f"model with {len(layers)} weight layer(s); use 'none'"
        )
    for layer in targets:
        layer.weight_quantizer = method.weight_quantizer(layer)

    # Activation quantizers go in front of each quantized layer of the top-level sequence.
    # A method whose ternary neuron is the nonlinearity (GXNOR) replaces the nearest ReLU after
    # the previous weight layer instead; with no such ReLU it is inserted directly.
    target_ids = {id(t) for t in targets}
    new_layers = []
    for layer in model.layers:
        act = method.activation_quantizer(layer) if id(layer) in target_ids else None
        if act is not None:
            relu_at = None
            if method.replaces_relu:
                for i in range(len(new_layers) - 1, -1, -1):
                    if isinstance(new_layers[i], ReLU):
                        relu_at = i
                        break
                    if hasattr(new_layers[i], "weight"):
                        break
            if relu_at is None:
                new_layers.append(act)
            else:
                new_layers[relu_at] = act
        new_layers.append(layer)
    model.layers[:] = new_layers
    return [*method.callbacks(model), TernaryStats()]


class TernaryStats(Callback):
    """Per-epoch sparsity and flip ratio of every ternary layer.

    The flip ratio of a layer is the fraction of its codes that differ from the previous epoch's
    (Larq's ``flip_ratio`` diagnostic, per epoch instead of per step): a method whose codes stop
    flipping has stopped learning its ternary assignment. Adds to each epoch record:
    ``sparsity`` (overall fraction of zero codes), ``flip_ratio`` (overall), and
    ``layers``: a list of ``{"index", "shape", "sparsity", "flip_ratio"}``.
    """

    def __init__(self):
        self._previous: list[np.ndarray] | None = None

    @staticmethod
    def _codes(layer) -> np.ndarray:
        """The inference codes of a quantized layer; a layer that is a sum of ternary terms
        (Ternary Residual Networks) contributes the codes of every term."""
        quantizer = layer.weight_quantizer
        if hasattr(quantizer, "to_ternaries"):
            terms = quantizer.to_ternaries(layer.weight.data)
            return np.concatenate([t.codes.ravel() for t in terms])
        return quantizer.to_ternary(layer.weight.data).codes.copy()

    def on_train_begin(self, model, optimizer):
        self._previous = [self._codes(layer) for layer in quantized_layers(model)]

    def on_epoch_end(self, model, epoch, record):
        layers = quantized_layers(model)
        if not layers:
            return
        stats, zeros, flips, total = [], 0, 0, 0
        current = []
        for index, layer in enumerate(layers):
            codes = self._codes(layer)
            current.append(codes)
            n_zero = int(np.count_nonzero(codes == 0))
            n_flip = (
                int(np.count_nonzero(codes != self._previous[index]))
                if self._previous is not None
                else 0
            )
            stats.append(
                {
                    "index": index,
                    "shape": list(layer.weight.data.shape),
                    "sparsity": n_zero / codes.size,
                    "flip_ratio": n_flip / codes.size,
                }
            )
            zeros += n_zero
            flips += n_flip
            total += codes.size
        self._previous = current
        record["sparsity"] = zeros / total
        record["flip_ratio"] = flips / total
        record["layers"] = stats
