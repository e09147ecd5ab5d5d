"""GGUF files of ternref models, written and read with llama.cpp's own ``gguf`` package.

Needs the optional ``gguf`` package (MIT; pure Python on NumPy, it also pulls PyYAML, requests
and tqdm): ``pip install "ternref[gguf]"`` or ``pip install gguf``. The files are written by
``gguf.GGUFWriter`` and read by ``gguf.GGUFReader``; nothing here parses or emits the GGUF
container itself. What this module adds is the mapping: which ternref object becomes which GGUF
tensor, and which metadata says so.

What a file holds
-----------------
:func:`save_gguf` takes a trained, quantized ``Sequential`` (``ternref.methods.quantize_model``)
or the packed inference model of :func:`ternref.packed.export` / :func:`ternref.packed.load`,
runs :func:`ternref.packed.export` on the former (BatchNorm after a ternary layer folded, the
methods' activation quantizers kept as layers, Dropout dropped) and writes one layer after the
other. ``general.architecture`` is ``"ternref"`` (llama.cpp cannot run such a file: it is a
ternref model in a container every GGUF tool can list and dequantize). Tensors, for layer ``i``:

* ``layers.{i}.weight`` (TQ2_0 / TQ1_0): a ternary weight as the matrix ``(M, L)``: rows are
  output channels, ``L = K = prod(shape[1:])`` (a conv kernel flattened in (in, kh, kw) order,
  the im2col column order), or the padded length;
* ``layers.{i}.weight.term{k}`` (TQ): term ``k >= 1`` of a sum of ternary weights (Ternary
  Residual Networks);
* ``<weight>.pos`` and ``<weight>.neg`` (TQ, with ``split``): the +1 side (codes {0, 1}, scale
  alpha_pos) and the -1 side (codes {0, -1}, scale alpha_neg) of an asymmetric ternary;
* ``<weight>.offset`` (TQ, with ``split``): RTN's offset beta as codes sign(beta) (constant in a
  scale group) with scale abs(beta);
* ``layers.{i}.weight`` (F32 / F16): a full-precision Linear ``(out, in)`` or Conv2d
  ``(out, in, kh, kw)`` weight;
* ``layers.{i}.bias`` (F32): a bias (a folded BatchNorm's included);
* ``layers.{i}.weight``, ``.bias``, ``.running_mean``, ``.running_var`` (F32): an unfolded
  BatchNorm;
* ``layers.{i}.{name}`` (F32, I32, ...): an array of a registered inference layer (RTN's
  activation alpha and beta).

The weight of a layer is always the **sum of the dequantized tensors listed in its metadata**
(drop the padding columns first): ``gguf.quants.dequantize`` of every part, added up, is the
``w_hat`` the model computes with, up to the fp16 rounding of the scales. 1-D tensors (biases,
BatchNorm statistics) are F32 whatever ``float_type`` says, as in llama.cpp's own files.

Metadata (``gguf-dump`` shows it): ``general.architecture = "ternref"``, ``general.name``,
``general.quantization_version = 2``; ``ternref.format_version = 1``, ``ternref.version`` (of
the writer), ``ternref.layer_count``, ``ternref.method`` and ``ternref.method.hyperparameters``
(JSON) when known, and per layer, under ``ternref.layers.{i}.``:

* ``type``: ``PackedLinear``, ``PackedConv2d``, ``Linear``, ``Conv2d``, ``BatchNorm1d``,
  ``BatchNorm2d``, ``MaxPool2d``, ``AvgPool2d``, ``ReLU``, ``Flatten`` or the name of a
  registered inference layer (:func:`ternref.packed.register_inference_layer`);
* ternary layers: ``weight.shape`` (the original shape: conv geometry), ``weight.granularity``,
  ``weight.group_size`` (group only), ``weight.symmetric``, ``weight.has_offset``,
  ``weight.terms``, ``weight.padded``, ``weight.tensors`` (the part names, in order),
  ``activations`` (``float32`` / ``int8``: what the packed kernel computes with), ``has_bias``,
  ``stride`` / ``padding`` (conv); informational when the source was a trained model:
  ``weight_quantizer`` (class and hyper-parameters) and ``folded_batchnorm``;
* full-precision ``Linear`` / ``Conv2d``: ``weight.shape``, ``has_bias``, ``stride`` /
  ``padding``, and ``dequantized_from_ternary`` when ``dense`` stored a ternary layer this way;
* BatchNorm: ``num_features``, ``eps``; pooling: ``kernel_size``, ``stride``;
* registered layers: ``params`` (JSON: GGUF has no null) and ``arrays`` (JSON: shape and dtype
  of every array).

What maps exactly, and what does not
------------------------------------
A TQ tensor is ``d * c`` with one fp16 ``d`` per 256 consecutive weights of a row
(:mod:`ternref.interop.tq`), TQ2_0 in 2.0625 and TQ1_0 in 1.6875 bits per weight. Exactly
representable, the fp16 rounding of each scale being the only error (relative error <= 2**-11
for scales in fp16's normal range, >= 2**-14 = 6.1e-5; a smaller scale keeps an absolute error
<= 2**-25, relatively more: RTN's smallest offsets on the digits MLP, 3e-5, lose up to 9e-4);
the :class:`ExportReport` returned by :func:`save_gguf` gives the largest relative scale error
of every tensor and its largest weight error, measured with ``gguf.quants.dequantize`` on the
bytes written:

* symmetric scales per tensor, per output row, or per group whose size is a multiple of 256,
  on rows whose length is a multiple of 256 (the digits MLP's 256-wide hidden layer);
* sums of such ternaries (Ternary Residual Networks: one tensor per term);
* a BatchNorm folded into a ternary layer (it makes the scales per row).

Not representable as one TQ tensor, refused by default with an error naming the tensor and the
reason, or converted on request:

* asymmetric scales (TTQ, EC2T, ProxQuant: alpha_pos != alpha_neg) and offsets (RTN's
  ``alpha c + beta``): ``split=True`` writes the ternary as a sum of symmetric ternaries (the +1
  side, the -1 side, the offset as sign codes), two or three TQ tensors instead of one. Exact up
  to the fp16 scales; costs one tensor's bits per part. :func:`load_gguf` recombines the parts
  into the original asymmetric ternary.
* rows whose length is not a multiple of 256 (LeNet-5's convolutions: 25, kept full precision
  by default, and 800; its 1600-wide linear layer; the digits CNN's 9, 144 and 128) and groups
  whose size is not (FGQ's 64): ``pad=True`` pads every scale segment
  (the row, or each group) with code 0 to the next multiple of 256. Exact for the product (the
  padding multiplies nothing); the stored tensor is wider than the weight (``weight.padded``
  says so, the report gives the bits per weight it costs), and a reader drops the padding
  columns: segment ``g`` of a row starts at column ``g * seg``.
* a scale outside fp16's range (> 65504, or nonzero and <= 2**-25, which rounds to 0) makes
  no TQ tensor whatever ``pad`` and ``split`` say;
* anything not written as ternary tensors with the options given: ``dense=True`` stores
  the layer's ``w_hat`` as a full-precision F32 (exact) or F16 (``float_type="f16"``, error
  reported) weight; it loads as a full-precision layer, and the file says it was ternary.

Padding and splitting keep a file that only ternref (and anyone following this docstring) can
turn back into the model; llama.cpp's kernels know neither. ``dense`` is what a llama.cpp
consumer can use.

Reading
-------
:func:`load_gguf` validates everything before building anything and raises ``ValueError``
naming the problem: a file that is not GGUF or is truncated, a tensor type the ``gguf``
library does not know, a GGUF without ternref metadata (another architecture: read its tensors
with :func:`read_tensors`), an unknown format version, layer type or metadata key, a missing or
extra tensor, a tensor whose shape or type disagrees with its metadata, TQ bytes no encoder
writes, scales that differ inside a scale group, nonzero codes in padding. A ternary layer
whose tensors were requantized to a non-ternary type (Q4_1, Q8_0, ...) is refused unless
``dequantize=True``: then ``gguf.quants.dequantize`` reads it and the layer becomes a
full-precision layer, with a warning naming the tensors.

Other architectures
-------------------
The parts a transformer exporter needs are separate from the ``Sequential`` walk:
:func:`ternary_tensors` turns one ternary weight into named TQ tensors (with their report rows),
:func:`ternary_from_tensors` reads them back, and :class:`_Metadata` / :class:`_Tensors` give
checked access to a file's keys and tensors. A ``TransformerLM`` export adds a mapping of its
layers to llama.cpp's tensor names (``token_embd``, ``blk.N.attn_q``, ...) and the ``llama.*``
keys, and registers its reader in ``_READERS`` under its ``general.architecture``. For a file
llama.cpp itself runs, only the exact mapping is allowed (call :func:`ternary_tensors` with
``pad=False, split=False``; llama.cpp knows neither padding nor split parts), and the
non-ternary weights go F32/F16.

References
----------
GGUF specification and the ``gguf`` Python package: https://github.com/ggml-org/llama.cpp
(``docs/gguf.md``, ``gguf-py``). TQ1_0/TQ2_0: Compilade (2024), llama.cpp pull request #8151.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

import ternref
from ternref._validate import describe, one_of
from ternref.interop import tq
from ternref.nn.layers import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)
from ternref.packed import FORMATS, pack, unpack
from ternref.packed.layers import (
    ACTIVATIONS,
    PackedConv2d,
    PackedLinear,
    PackedSequential,
    check_export_state,
    inference_type_name,
    rebuild_inference_layer,
)
from ternref.ternary import GRANULARITIES, Ternary

ARCHITECTURE = "ternref"
FORMAT_VERSION = 1
FLOAT_TYPES = ("f32", "f16")
INSTALL_HINT = 'pip install "ternref[gguf]"  (or: pip install gguf)'

_GGML_NAMES = {"tq2_0": "TQ2_0", "tq1_0": "TQ1_0", "f32": "F32", "f16": "F16"}
_FLOAT_NUMPY = {"F16": np.float16, "F32": np.float32, "F64": np.float64}
_ARRAY_DTYPES = {  # numpy dtype of a registered layer's array -> GGML tensor type
    "float32": "F32",
    "float64": "F64",
    "float16": "F16",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "bool": "I8",
}


def require_gguf():
    """The ``gguf`` module, or ImportError saying how to install it."""
    try:
        import gguf
    except ImportError as e:
        raise ImportError(
            f"ternref.interop needs the optional 'gguf' package (llama.cpp's GGUF library): "
            f"{INSTALL_HINT}"
        ) from e
    return gguf


# ------------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class TensorReport:
    """What one written tensor holds and the error it introduces.

    Attributes
    ----------
    name : str
        GGUF tensor name.
    layer : int
        Index of the layer in the packed ``Sequential``.
    role : str
        ``"ternary"``, ``"pos"``, ``"neg"``, ``"offset"`` (parts of a ternary weight),
        ``"dense"`` (a ternary weight stored as floats), ``"weight"`` (a full-precision
        weight), ``"bias"``, ``"batchnorm"``, ``"array"``.
    ggml_type : str
        ``"TQ2_0"``, ``"TQ1_0"``, ``"F32"``, ...
    shape : tuple of int
        Logical shape (of the weight, before flattening or padding).
    stored_shape : tuple of int
        Shape of the GGUF tensor in elements, NumPy order (rows first).
    bits_per_weight : float
        Stored bits per logical element (padding and block scales included).
    max_rel_scale_error : float
        Largest ``|fp16(s) - s| / s`` over the tensor's nonzero scales (TQ; at most 2**-11 for
        scales in fp16's normal range, >= 2**-14, larger for smaller ones), or over its
        elements of magnitude >= 2**-14 (F16, whose smaller elements have an absolute error
        <= 2**-25); 0 for F32 (of float32 data).
    max_abs_error : float
        Largest ``|dequantized - exact|`` over its logical elements, with ``gguf.quants``'
        dequantizer on the bytes written.
    note : str
    """

    name: str
    layer: int
    role: str
    ggml_type: str
    shape: tuple
    stored_shape: tuple
    bits_per_weight: float
    max_rel_scale_error: float
    max_abs_error: float
    note: str = ""


@dataclass
class ExportReport:
    """Returned by :func:`save_gguf`: every tensor written, and every conversion made."""

    path: str
    quant: str
    tensors: list = field(default_factory=list)
    conversions: list = field(default_factory=list)

    @property
    def max_rel_scale_error(self) -> float:
        """The largest relative scale (or F16 element) error of any tensor."""
        return max((t.max_rel_scale_error for t in self.tensors), default=0.0)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "quant": self.quant,
            "max_rel_scale_error": self.max_rel_scale_error,
            "conversions": list(self.conversions),
            "tensors": [asdict(t) for t in self.tensors],
        }

    def to_text(self) -> str:
        head = f"{'tensor':<28} {'type':<6} {'shape':<18} {'bits/w':>7} {'rel.scale err':>13}"
        lines = [head, "-" * len(head)]
        for t in self.tensors:
            shape = "x".join(str(s) for s in t.shape)
            lines.append(
                f"{t.name:<28} {t.ggml_type:<6} {shape:<18} {t.bits_per_weight:>7.3f} "
                f"{t.max_rel_scale_error:>13.2e}" + (f"  {t.note}" if t.note else "")
            )
        lines.append(
            f"largest relative scale error (fp16 rounding): {self.max_rel_scale_error:.2e}"
        )
        lines.extend(f"converted: {c}" for c in self.conversions)
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ parts


def symmetric_parts(t: Ternary) -> list[tuple[str, Ternary]]:
    """Symmetric, offset-free ternaries whose ``dense()`` add up to ``t.dense()``.

    ``[("", t)]`` for a symmetric ternary without offset; otherwise, at ``t``'s granularity,
    ``(".pos", codes [c = +1] with scale alpha_pos)`` and ``(".neg", codes -[c = -1] with scale
    alpha_neg)`` for asymmetric scales (or ``("", t)`` if symmetric), then
    ``(".offset", codes sign(beta) with scale |beta|)`` for an offset::

        alpha_pos [c=+1] - alpha_neg [c=-1] + beta = pos.dense() + neg.dense() + offset.dense()
    """
    like = {"granularity": t.granularity, "group_size": t.group_size}
    if t.symmetric:
        parts = [("", Ternary(t.codes, t.alpha_pos, **like))]
    else:
        parts = [
            (".pos", Ternary((t.codes > 0).astype(np.int8), t.alpha_pos, **like)),
            (".neg", Ternary(-(t.codes < 0).astype(np.int8), t.alpha_neg, **like)),
        ]
    if t.offset is not None:
        sign = np.sign(t.expand(t.offset)).astype(np.int8)
        parts.append((".offset", Ternary(sign, np.abs(t.offset), **like)))
    return parts


def combine_parts(parts: dict, symmetric: bool, has_offset: bool) -> Ternary:
    """Inverse of :func:`symmetric_parts`: the ternary whose parts these are.

    Raises ValueError when the parts are not of that form (a +1 side with -1 codes, both sides
    nonzero at one weight, offset codes that change inside a scale group).
    """
    first = next(iter(parts.values()))
    like = {"granularity": first.granularity, "group_size": first.group_size}
    if symmetric:
        codes, alpha_pos, alpha_neg = parts[""].codes, parts[""].alpha_pos, None
    else:
        pos, neg = parts[".pos"], parts[".neg"]
        if np.any(pos.codes < 0) or np.any(neg.codes > 0):
            raise ValueError("the .pos part must hold codes {0, 1} and the .neg part {0, -1}")
        if np.any((pos.codes != 0) & (neg.codes != 0)):
            raise ValueError("the .pos and .neg parts are both nonzero at one weight")
        codes = (pos.codes + neg.codes).astype(np.int8)
        alpha_pos, alpha_neg = pos.alpha_pos, neg.alpha_pos
    offset = None
    if has_offset:
        off = parts[".offset"]
        m = off.shape[0]
        flat = off.codes.reshape(m, -1)
        if off.granularity == "tensor":
            sign = flat[0, 0]
        elif off.granularity == "channel":
            sign = flat[:, 0].reshape(off.alpha_pos.shape)
        else:
            sign = flat[:, :: off.group_size]  # the first code of every group
        if not np.array_equal(off.expand(np.asarray(sign)), off.codes):
            raise ValueError("the .offset part's codes change inside a scale group")
        offset = (np.asarray(sign, np.float32) * off.alpha_pos).astype(off.dtype)
    return Ternary(codes, alpha_pos, alpha_neg, offset=offset, **like)


# ------------------------------------------------------------------------------------ writing


def _fp16_errors(exact: np.ndarray) -> tuple[float, str | None]:
    """(largest relative fp16 rounding error, problem or None) of nonnegative scales."""
    exact = np.asarray(exact, np.float64)
    with np.errstate(over="ignore"):
        rounded = exact.astype(np.float16).astype(np.float64)
    if np.any(~np.isfinite(rounded)):
        big = float(exact[~np.isfinite(rounded)].max())
        return math.inf, f"a scale ({big:.6g}) exceeds fp16's largest value 65504"
    lost = (exact > 0) & (rounded == 0)
    if np.any(lost):
        small = float(exact[lost].min())
        return math.inf, f"a nonzero scale ({small:.3g}) rounds to 0 in fp16"
    nonzero = exact > 0
    if not np.any(nonzero):
        return 0.0, None
    rel = np.abs(rounded[nonzero] - exact[nonzero]) / exact[nonzero]
    return float(rel.max()), None


def ternary_tensors(name: str, t: Ternary, quant: str, *, pad: bool, split: bool, layer: int):
    """The GGUF tensors of one ternary weight, or the reason it has none.

    Parameters
    ----------
    name : str
        Base tensor name (``"layers.3.weight"``); parts get the suffixes of
        :func:`symmetric_parts`.
    t : Ternary
        The weight, any shape ``(M, ...)``; stored as ``(M, L)``.
    quant : {"tq2_0", "tq1_0"}
    pad, split : bool
        Allow the conversions of the module docstring.
    layer : int
        For the report rows.

    Returns
    -------
    (tensors, layout, problem)
        ``tensors``: list of ``(name, uint8 bytes (M, L/256 * type size), TensorReport)``;
        ``layout``: the :class:`~ternref.interop.tq.RowLayout`; ``problem``: None, or a sentence
        saying why the weight cannot be written with these options (then ``tensors`` is empty).
    """
    gguf = require_gguf()
    k = tq.row_length(t.shape)
    problems = []
    if not split:
        if not t.symmetric:
            problems.append("its scales are asymmetric, alpha_pos != alpha_neg (split=True)")
        if t.offset is not None:
            problems.append("it has an offset, w_hat = alpha c + beta (split=True)")
    misfit = tq.misfit(k, t.granularity, t.group_size)
    if misfit and not pad:
        problems.append(f"{misfit} (pad=True)")
    if problems:
        return [], None, "; ".join(problems)
    layout = tq.RowLayout(k, t.granularity, t.group_size, padded=misfit is not None)
    qtype = gguf.GGMLQuantizationType[_GGML_NAMES[quant]]
    cols = layout.logical_columns()
    m = t.shape[0]
    out = []
    for suffix, part in symmetric_parts(t):
        codes, scales = layout.to_blocks(part)
        rel, problem = _fp16_errors(scales)
        if problem:
            return [], layout, f"part {name + suffix!r}: {problem}"
        raw = tq.encode(codes, scales, quant)
        # the error as any GGUF reader sees it: gguf's own dequantizer on the bytes written
        seen = gguf.quants.dequantize(raw, qtype)[:, cols]
        exact = part.dense().reshape(m, k).astype(np.float64)
        notes = []
        if layout.padded:
            notes.append(f"padded rows {k} -> {layout.length}")
        if suffix:
            notes.append(_PART_NOTES[suffix])
        role = suffix[1:] if suffix else "ternary"
        report = TensorReport(
            name=name + suffix,
            layer=layer,
            role=role,
            ggml_type=_GGML_NAMES[quant],
            shape=tuple(int(s) for s in t.shape),
            stored_shape=(m, layout.length),
            bits_per_weight=layout.bits_per_weight(quant),
            max_rel_scale_error=rel,
            max_abs_error=float(np.abs(seen - exact).max()),
            note=", ".join(notes),
        )
        out.append((name + suffix, raw, report))
    return out, layout, None


_PART_NOTES = {
    ".pos": "split: the +1 side (alpha_pos)",
    ".neg": "split: the -1 side (alpha_neg)",
    ".offset": "split: the offset as sign codes",
}


def _term_name(i: int, k: int) -> str:
    return f"layers.{i}.weight" + ("" if k == 0 else f".term{k}")


class _Plan:
    """Metadata and tensors of a file, collected in full before anything is written."""

    def __init__(self, gguf, float_type: str):
        self.gguf = gguf
        self.float_type = float_type
        self.kv: list[tuple[str, object, object]] = []  # (key, value, GGUFValueType)
        self.tensors: list[tuple[str, np.ndarray, object]] = []  # (name, array, raw type)
        self.rows: list[TensorReport] = []

    def put(self, key, value, vtype=None):
        v = self.gguf.GGUFValueType
        if vtype is None:
            if isinstance(value, bool):
                vtype = v.BOOL
            elif isinstance(value, int):
                vtype = v.UINT32 if value >= 0 else v.INT64
            elif isinstance(value, float):
                vtype = v.FLOAT64
            elif isinstance(value, str):
                vtype = v.STRING
            else:
                vtype = v.ARRAY
        self.kv.append((key, value, vtype))

    def float_tensor(self, name, a, layer, role, note="", ggml=None):
        """Add a float tensor (2-D and up in ``float_type``, 1-D always F32)."""
        a = np.asarray(a)
        ggml = ggml or ("F16" if self.float_type == "f16" and a.ndim >= 2 else "F32")
        stored = a.astype(_FLOAT_NUMPY[ggml])
        exact = a.astype(np.float64)
        err = np.abs(stored.astype(np.float64) - exact)
        # relative error where fp16 has its full precision; below 2**-14 (subnormals) the
        # absolute error (<= 2**-25) is the meaningful number, and max_abs_error covers it
        floor = 2.0**-14 if ggml == "F16" else 0.0
        normal = (np.abs(exact) >= floor) & (exact != 0)
        rel = float((err[normal] / np.abs(exact[normal])).max()) if np.any(normal) else 0.0
        self.tensors.append((name, np.ascontiguousarray(stored), None))
        self.rows.append(
            TensorReport(
                name=name,
                layer=layer,
                role=role,
                ggml_type=ggml,
                shape=tuple(int(s) for s in a.shape),
                stored_shape=tuple(int(s) for s in a.shape),
                bits_per_weight=8.0 * stored.itemsize,
                max_rel_scale_error=rel,
                max_abs_error=float(err.max()) if err.size else 0.0,
                note=note,
            )
        )


def _is_packed_model(model: Sequential) -> bool:
    return any(isinstance(layer, (PackedLinear, PackedConv2d)) for layer in model.layers)


def _source_notes(model: Sequential) -> list[dict]:
    """Per quantized layer of a trained model, in order: its quantizer and whether a
    BatchNorm follows it (which :func:`ternref.packed.export` folds)."""
    notes = []
    layers = model.layers
    for j, layer in enumerate(layers):
        q = getattr(layer, "weight_quantizer", None)
        if isinstance(layer, (Linear, Conv2d)) and q is not None:
            folded = j + 1 < len(layers) and isinstance(layers[j + 1], (BatchNorm1d, BatchNorm2d))
            notes.append({"quantizer": q, "folded_batchnorm": folded})
    return notes


def _method_from_quantizers(notes: list[dict]) -> str | None:
    """The registered method whose module defines the layers' quantizer class (if unique)."""
    from ternref.methods import base

    modules = {type(n["quantizer"]).__module__ for n in notes}
    if len(modules) != 1:
        return None
    (module,) = modules
    # the registry maps names to Method classes; a quantizer lives in its method's module
    owners = [name for name, cls in base._METHODS.items() if cls.__module__ == module]
    return owners[0] if len(owners) == 1 else None


def save_gguf(
    model,
    path,
    quant: str = "tq2_0",
    *,
    float_type: str = "f32",
    pad: bool = False,
    split: bool = False,
    dense: bool = False,
    method=None,
    name: str | None = None,
    ternary=None,
) -> ExportReport:
    """Write a ternref model as a GGUF file (see the module docstring for the layout).

    Parameters
    ----------
    model : Sequential or TransformerLM
        A trained model with weight quantizers (``ternref.methods.quantize_model``; it is
        exported with :func:`ternref.packed.export` first) or a packed inference model
        (:func:`ternref.packed.export`, :func:`ternref.packed.load`). A
        :class:`~ternref.nn.TransformerLM` is written as a llama.cpp ``llama`` file by
        :func:`ternref.interop.llama.save_llama` (``quant``, ``float_type``, ``name`` and
        ``ternary`` apply; ``pad``, ``split``, ``dense`` and ``method`` do not); one whose
        projections are BitLinear layers (a BitNet b1.58 LM trained with ``subln="shared"``)
        as a llama.cpp ``bitnet`` file by :func:`ternref.interop.bitnet.save_bitnet`
        (``quant`` and ``name`` apply).
    path : str or os.PathLike
    quant : {"tq2_0", "tq1_0"}
        llama.cpp type of every ternary tensor (2.0625 or 1.6875 bits per weight).
    float_type : {"f32", "f16"}
        Type of full-precision weights of two or more dimensions (1-D tensors stay F32).
    pad : bool
        Allow padding rows and scale groups with code 0 to multiples of 256 (exact).
    split : bool
        Allow writing asymmetric scales and offsets as sums of symmetric ternaries (exact up to
        the fp16 scales).
    dense : bool
        Allow storing a ternary layer that still does not fit as a full-precision weight.
    method : str or ternref.methods.Method, optional
        Training method to record (name, and hyper-parameters for a ``Method``). Default: the
        method whose module defines the model's weight quantizers, if there is one.
    name : str, optional
        ``general.name`` (default ``"ternref <method>"``).
    ternary : mapping, optional
        TransformerLM only: projection -> :class:`~ternref.Ternary` (see
        :func:`ternref.interop.llama.save_llama`).

    Returns
    -------
    ExportReport
        Every tensor written with its type, bits per weight and the error of its fp16 scales,
        and every conversion made.

    Raises
    ------
    ValueError
        A ternary layer that the options do not let through (the message names the tensor, the
        reason and the option); nothing is written then.
    TypeError
        A model that is not a ``Sequential``, or a layer this format cannot hold.
    ImportError
        Without the ``gguf`` package.
    """
    from ternref import methods, packed
    from ternref.nn.transformer import TransformerLM

    gguf = require_gguf()
    if isinstance(model, TransformerLM):
        if pad or split or dense or method is not None:
            raise ValueError(
                "save_gguf: pad, split, dense and method apply to Sequential models; a "
                "TransformerLM file must be one llama.cpp runs (see ternref.interop.llama)"
            )
        from ternref.interop.bitnet import save_bitnet
        from ternref.interop.llama import projection_layers, save_llama
        from ternref.methods.bitlinear import BitLinear

        if any(isinstance(m, BitLinear) for m in projection_layers(model).values()):
            if ternary is not None or float_type != "f32":
                raise ValueError(
                    "save_gguf: a BitNet LM is written with its own ternaries as llama.cpp's "
                    "bitnet architecture (ternref.interop.save_bitnet); ternary= and "
                    "float_type= do not apply"
                )
            return save_bitnet(model, path, quant=quant, name=name)
        return save_llama(model, path, ternary, quant=quant, float_type=float_type, name=name)
    if ternary is not None:
        raise ValueError("save_gguf: ternary= applies to a TransformerLM only")
    if not isinstance(model, Sequential):
        raise TypeError(
            f"save_gguf expects a ternref.nn.Sequential or TransformerLM, got {describe(model)}"
        )
    one_of(quant, "quant", tq.QUANTS)
    one_of(float_type, "float_type", FLOAT_TYPES)
    for flag, value in (("pad", pad), ("split", split), ("dense", dense)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {describe(value)}")

    notes = [] if _is_packed_model(model) else _source_notes(model)
    inference = model if _is_packed_model(model) else packed.export(model)
    hyper = None
    if method is None:
        method_name = _method_from_quantizers(notes) if notes else None
    elif isinstance(method, str):
        methods.info(method)  # ValueError for an unknown name
        method_name = method
    elif isinstance(method, methods.Method):
        method_name = method.info.name
        hyper = json.dumps(method.hyperparameters(), sort_keys=True, default=repr)
    else:
        raise TypeError(f"method must be None, a name or a ternref Method, got {describe(method)}")

    plan = _Plan(gguf, float_type)
    report = ExportReport(path=str(path), quant=quant)
    plan.put("general.name", name or f"ternref {method_name or 'model'}")
    plan.put("general.quantization_version", gguf.GGML_QUANT_VERSION)
    plan.put("ternref.format_version", FORMAT_VERSION)
    plan.put("ternref.version", ternref.__version__)
    plan.put("ternref.layer_count", len(inference.layers))
    if method_name is not None:
        plan.put("ternref.method", method_name)
    if hyper is not None:
        plan.put("ternref.method.hyperparameters", hyper)

    n_packed = 0
    for i, layer in enumerate(inference.layers):
        key = f"ternref.layers.{i}."
        if isinstance(layer, (PackedLinear, PackedConv2d)):
            info = notes[n_packed] if n_packed < len(notes) else None
            n_packed += 1
            _plan_ternary_layer(plan, report, i, layer, quant, pad, split, dense, info)
        elif isinstance(layer, (Linear, Conv2d)):
            _plan_float_layer(
                plan,
                i,
                type(layer).__name__,
                layer.weight.data,
                None if layer.bias is None else layer.bias.data,
                layer,
            )
        elif isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            plan.put(key + "type", type(layer).__name__)
            plan.put(key + "num_features", int(layer.num_features))
            plan.put(key + "eps", float(layer.eps))
            arrays = {
                "weight": layer.weight.data,
                "bias": layer.bias.data,
                "running_mean": layer.running_mean,
                "running_var": layer.running_var,
            }
            for arr, a in arrays.items():
                plan.float_tensor(f"layers.{i}.{arr}", a, i, "batchnorm")
        elif isinstance(layer, (MaxPool2d, AvgPool2d)):
            plan.put(key + "type", type(layer).__name__)
            plan.put(key + "kernel_size", [int(s) for s in layer.kernel_size])
            plan.put(key + "stride", [int(s) for s in layer.stride])
        elif isinstance(layer, (ReLU, Flatten)):
            plan.put(key + "type", type(layer).__name__)
        elif inference_type_name(layer) is not None:
            _plan_registered_layer(plan, i, layer)
        else:
            raise TypeError(
                f"save_gguf: layer {i} is a {type(layer).__name__}, which a ternref GGUF file "
                "cannot hold (packed, full-precision, BatchNorm, pooling, ReLU, Flatten and "
                "registered inference layers can)"
            )

    report.tensors = plan.rows
    writer = gguf.GGUFWriter(path, ARCHITECTURE)
    try:
        for key, value, vtype in plan.kv:
            writer.add_key_value(key, value, vtype)
        for tname, array, raw_dtype in plan.tensors:
            writer.add_tensor(tname, array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return report


def _plan_ternary_layer(plan, report, i, layer, quant, pad, split, dense, info):
    key = f"ternref.layers.{i}."
    kind = type(layer).__name__
    terms = [unpack(p) for p in layer.terms]
    shape = terms[0].shape
    written, problem, layout = [], None, None
    for k, t in enumerate(terms):
        tensors, layout, problem = ternary_tensors(
            _term_name(i, k), t, quant, pad=pad, split=split, layer=i
        )
        if problem:
            problem = (
                f"tensor {_term_name(i, k)!r} (layer {i}, {kind} {shape}) cannot be a "
                f"{quant.upper()} tensor: {problem}"
            )
            break
        written.extend(tensors)
    if problem and not dense:
        raise ValueError(
            f"save_gguf: {problem}. Nothing was written. Options: pad=True pads rows and groups "
            "with zero codes (exact); split=True writes asymmetric scales and offsets as sums "
            "of symmetric ternaries (exact up to the fp16 scales); dense=True stores w_hat as "
            "floats"
        )
    if problem:  # dense=True: the layer's w_hat as a full-precision weight
        w_hat = terms[0].dense().astype(np.float64)
        for t in terms[1:]:
            w_hat = w_hat + t.dense()
        dtype = terms[0].dtype
        plan_kind = "Linear" if kind == "PackedLinear" else "Conv2d"
        _plan_float_layer(plan, i, plan_kind, w_hat.astype(dtype), layer.bias, layer, dense=True)
        report.conversions.append(f"{problem}: stored as a dense {plan.float_type.upper()} weight")
        return
    plan.put(key + "type", kind)
    t0 = terms[0]
    plan.put(key + "weight.shape", [int(s) for s in shape])
    plan.put(key + "weight.granularity", t0.granularity)
    if t0.group_size is not None:
        plan.put(key + "weight.group_size", int(t0.group_size))
    plan.put(key + "weight.symmetric", bool(t0.symmetric))
    plan.put(key + "weight.has_offset", t0.offset is not None)
    plan.put(key + "weight.terms", len(terms))
    plan.put(key + "weight.padded", bool(layout.padded))
    plan.put(key + "weight.tensors", [name for name, _, _ in written])
    plan.put(key + "activations", layer.activations)
    plan.put(key + "has_bias", layer.bias is not None)
    if kind == "PackedConv2d":
        plan.put(key + "stride", [int(s) for s in layer.stride])
        plan.put(key + "padding", [int(s) for s in layer.padding])
    if info is not None:
        q = info["quantizer"]
        plan.put(key + "weight_quantizer", f"{type(q).__name__}({q.extra_repr()})")
        plan.put(key + "folded_batchnorm", bool(info["folded_batchnorm"]))
    raw_type = plan.gguf.GGMLQuantizationType[_GGML_NAMES[quant]]
    for name, raw, row in written:
        plan.tensors.append((name, raw, raw_type))
        plan.rows.append(row)
    if layout.padded:
        report.conversions.append(
            f"layer {i} ({kind} {shape}): rows of {layout.k} padded to {layout.length} with "
            "zero codes (exact)"
        )
    if not t0.symmetric or t0.offset is not None:
        what = "asymmetric scales" if not t0.symmetric else "an offset"
        report.conversions.append(
            f"layer {i} ({kind} {shape}): {what} split into symmetric parts "
            f"{[name for name, _, _ in written]} (exact up to fp16 scales)"
        )
    if layer.bias is not None:
        plan.float_tensor(f"layers.{i}.bias", layer.bias, i, "bias")


def _plan_float_layer(plan, i, kind, weight, bias, layer, dense=False):
    key = f"ternref.layers.{i}."
    plan.put(key + "type", kind)
    plan.put(key + "weight.shape", [int(s) for s in weight.shape])
    plan.put(key + "has_bias", bias is not None)
    if kind == "Conv2d":
        plan.put(key + "stride", [int(s) for s in layer.stride])
        plan.put(key + "padding", [int(s) for s in layer.padding])
    if dense:
        plan.put(key + "dequantized_from_ternary", True)
    note = "a ternary layer stored dense" if dense else ""
    plan.float_tensor(f"layers.{i}.weight", weight, i, "dense" if dense else "weight", note)
    if bias is not None:
        plan.float_tensor(f"layers.{i}.bias", bias, i, "bias")


def _plan_registered_layer(plan, i, layer):
    key = f"ternref.layers.{i}."
    type_name = inference_type_name(layer)
    params, arrays = check_export_state(*layer.export_state(), f"save_gguf: {type_name}")
    described = {}
    for arr_name, a in arrays.items():
        if a.dtype.name not in _ARRAY_DTYPES:
            raise TypeError(
                f"save_gguf: array {arr_name!r} of layer {i} ({type_name}) has dtype "
                f"{a.dtype.name}; a GGUF tensor can hold {sorted(_ARRAY_DTYPES)}"
            )
        described[arr_name] = {"shape": list(a.shape), "dtype": a.dtype.name}
        ggml = _ARRAY_DTYPES[a.dtype.name]
        stored = a.reshape(-1)  # a GGUF tensor has at least one dimension; shape in "arrays"
        if ggml in _FLOAT_NUMPY:
            plan.float_tensor(f"layers.{i}.{arr_name}", stored, i, "array", ggml=ggml)
        else:
            plan.tensors.append((f"layers.{i}.{arr_name}", stored.astype(ggml.lower()), None))
    plan.put(key + "type", type_name)
    plan.put(key + "params", json.dumps(params, sort_keys=True))
    plan.put(key + "arrays", json.dumps(described, sort_keys=True))


# ------------------------------------------------------------------------------------ reading


def _open(path):
    """``gguf.GGUFReader`` on ``path``, with the reader's failures as one clear ValueError."""
    gguf = require_gguf()
    try:
        return gguf.GGUFReader(path)
    except FileNotFoundError:
        raise
    except (ValueError, IndexError, KeyError, OverflowError, TypeError, UnicodeDecodeError) as e:
        msg = str(e)
        if "GGMLQuantizationType" in msg:
            raise ValueError(
                f"refusing to load {str(path)!r}: a tensor has a type the gguf library "
                f"(version {_gguf_version()}) does not know ({msg})"
            ) from e
        raise ValueError(
            f"refusing to load {str(path)!r}: not a readable GGUF file (truncated or corrupt): "
            f"{type(e).__name__}: {msg}"
        ) from e


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf")
    except PackageNotFoundError:  # pragma: no cover - installed from a checkout
        return "unknown"


class _Metadata:
    """Typed access to a reader's key/value fields; remembers which ``ternref.*`` keys it read."""

    def __init__(self, reader, where: str):
        self.fields = reader.fields
        self.where = where
        self.read: set[str] = set()

    def fail(self, msg):
        raise ValueError(f"refusing to load {self.where}: {msg}")

    def has(self, key) -> bool:
        return key in self.fields

    def get(self, key: str, kind: str, required: bool = True):
        """``kind`` in {"str", "int", "bool", "float", "ints", "strs"}; None if absent and not
        required."""
        from gguf import GGUFValueType as V

        f = self.fields.get(key)
        self.read.add(key)
        if f is None:
            if required:
                self.fail(f"metadata key {key!r} is missing")
            return None
        ints = {V.UINT8, V.INT8, V.UINT16, V.INT16, V.UINT32, V.INT32, V.UINT64, V.INT64}
        main = f.types[0] if f.types else None
        sub = f.types[-1] if len(f.types) > 1 else None
        ok = {
            "str": main == V.STRING,
            "int": main in ints,
            "bool": main == V.BOOL,
            "float": main in (V.FLOAT32, V.FLOAT64),
            "ints": main == V.ARRAY and sub in ints,
            "strs": main == V.ARRAY and sub == V.STRING,
        }[kind]
        if not ok:
            got = main.name if sub is None else f"{main.name} of {sub.name}"
            self.fail(f"metadata key {key!r} must be {kind}, the file has {got}")
        value = f.contents()
        if kind == "bool":
            value = bool(value)
        elif kind == "int":
            value = int(value)
        elif kind == "float":
            value = float(value)
        elif kind == "ints":
            value = [int(v) for v in value]
        return value

    def json(self, key: str):
        raw = self.get(key, "str")
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            self.fail(f"metadata key {key!r} is not valid JSON: {e}")

    def unread_ternref_keys(self) -> list[str]:
        return sorted(k for k in self.fields if k.startswith("ternref.") and k not in self.read)


class _Tensors:
    """The reader's tensors by name; remembers which were claimed by a layer."""

    def __init__(self, reader, meta: _Metadata):
        self.by_name = {t.name: t for t in reader.tensors}
        self.meta = meta
        self.claimed: set[str] = set()

    def take(self, name: str):
        if name not in self.by_name:
            self.meta.fail(f"tensor {name!r} is missing")
        self.claimed.add(name)
        return self.by_name[name]


def _numpy_shape(t) -> tuple:
    """Element shape of a reader tensor, NumPy order (GGUF stores ne0 first)."""
    return tuple(int(s) for s in reversed(t.shape.tolist()))


def _float_array(t, meta: _Metadata, shape: tuple, dequantize: bool, dequantized: list):
    """A tensor that ternref wrote as floats (F32/F16), as float32/float64 of ``shape``."""
    gguf = require_gguf()
    kind = t.tensor_type.name
    if _numpy_shape(t) != tuple(shape):
        meta.fail(
            f"tensor {t.name!r} has shape {list(_numpy_shape(t))}, its metadata says {list(shape)}"
        )
    if kind in ("F32", "F16"):
        return np.array(t.data, dtype=np.float32).reshape(shape)
    if kind == "F64":
        return np.array(t.data, dtype=np.float64).reshape(shape)
    if kind == "BF16" or dequantize:
        if kind != "BF16":
            dequantized.append(f"{t.name} ({kind})")
        return gguf.quants.dequantize(np.array(t.data), t.tensor_type).reshape(shape)
    meta.fail(
        f"tensor {t.name!r} is {kind}, but ternref stores this tensor as floats; "
        "pass dequantize=True to read it through gguf's dequantizer"
    )


def ternary_from_tensors(
    tensors: dict,
    shape: tuple,
    granularity: str,
    group_size,
    padded: bool,
    symmetric: bool,
    has_offset: bool,
) -> Ternary:
    """Inverse of :func:`ternary_tensors`: ``tensors`` maps part suffixes (``""``, ``".pos"``,
    ``".neg"``, ``".offset"``) to ``(ggml type name, uint8 bytes (M, ...))``. Raises ValueError
    for bytes or scales that do not follow the layout."""
    layout = tq.RowLayout(tq.row_length(shape), granularity, group_size, padded)
    parts = {}
    for suffix, (kind, raw) in tensors.items():
        codes, d = tq.decode(raw, kind.lower())
        if codes.shape[1] != layout.length:
            raise ValueError(f"rows of {codes.shape[1]} weights, the layout needs {layout.length}")
        parts[suffix] = layout.from_blocks(codes, d, tuple(shape))
    return combine_parts(parts, symmetric, has_offset)


def _expected_parts(symmetric: bool, has_offset: bool) -> list[str]:
    parts = [""] if symmetric else [".pos", ".neg"]
    return parts + ([".offset"] if has_offset else [])


def _read_ternary_layer(i, kind, meta, tensors, dequantize, dequantized, fmt):
    key = f"ternref.layers.{i}."
    shape = tuple(meta.get(key + "weight.shape", "ints"))
    want_dims = 2 if kind == "PackedLinear" else 4
    if len(shape) != want_dims or any(s < 1 for s in shape):
        meta.fail(f"layer {i} ({kind}): weight.shape {list(shape)} is not a {want_dims}-D shape")
    granularity = meta.get(key + "weight.granularity", "str")
    if granularity not in GRANULARITIES:
        meta.fail(f"layer {i}: unknown granularity {granularity!r}")
    group_size = meta.get(key + "weight.group_size", "int", required=granularity == "group")
    if (granularity == "group") != (group_size is not None) or (group_size or 1) < 1:
        meta.fail(f"layer {i}: weight.group_size must be given (>= 1) exactly for 'group'")
    symmetric = meta.get(key + "weight.symmetric", "bool")
    has_offset = meta.get(key + "weight.has_offset", "bool")
    n_terms = meta.get(key + "weight.terms", "int")
    padded = meta.get(key + "weight.padded", "bool")
    names = meta.get(key + "weight.tensors", "strs")
    activations = meta.get(key + "activations", "str")
    has_bias = meta.get(key + "has_bias", "bool")
    if activations not in ACTIVATIONS:
        meta.fail(f"layer {i}: unknown activations {activations!r}")
    if n_terms < 1:
        meta.fail(f"layer {i}: weight.terms must be >= 1, got {n_terms}")
    if kind == "PackedConv2d":
        stride, padding = meta.get(key + "stride", "ints"), meta.get(key + "padding", "ints")
        if len(stride) != 2 or len(padding) != 2 or min(stride) < 1 or min(padding) < 0:
            meta.fail(f"layer {i}: stride {stride} / padding {padding} are not conv pairs")
    meta.get(key + "weight_quantizer", "str", required=False)  # informational
    meta.get(key + "folded_batchnorm", "bool", required=False)
    suffixes = _expected_parts(symmetric, has_offset)
    expected = [_term_name(i, k) + s for k in range(n_terms) for s in suffixes]
    if names != expected:
        meta.fail(f"layer {i}: weight.tensors {names} differ from the expected {expected}")
    m, k_len = shape[0], tq.row_length(shape)
    try:
        layout = tq.RowLayout(k_len, granularity, group_size, padded)
    except ValueError as e:
        meta.fail(f"layer {i}: {e}")

    # every part: (GGML type name, its data, its gguf type), shapes checked against the layout
    raw_terms, float_parts = [], False
    for k in range(n_terms):
        parts = {}
        for s in suffixes:
            t = tensors.take(_term_name(i, k) + s)
            kind_name = t.tensor_type.name
            if _numpy_shape(t) != (m, layout.length):
                meta.fail(
                    f"tensor {t.name!r} has shape {list(_numpy_shape(t))}, its metadata says "
                    f"{[m, layout.length]} (weight {list(shape)}" + (", padded)" if padded else ")")
                )
            if kind_name not in ("TQ1_0", "TQ2_0"):
                if not dequantize:
                    meta.fail(
                        f"tensor {t.name!r} is {kind_name}, not a ternary type (TQ1_0/TQ2_0), "
                        f"but layer {i} ({kind}) is ternary; refusing (pass dequantize=True to "
                        "read it through gguf's dequantizer as a full-precision layer)"
                    )
                float_parts = True
                dequantized.append(f"{t.name} ({kind_name})")
            parts[s] = (kind_name, np.array(t.data), t.tensor_type)
        raw_terms.append(parts)
    bias = None
    if has_bias:
        bias = _float_array(tensors.take(f"layers.{i}.bias"), meta, (m,), dequantize, dequantized)

    conv = {"stride": tuple(stride), "padding": tuple(padding)} if kind == "PackedConv2d" else None
    if float_parts:  # some part is not ternary: w_hat = the sum of every part, dequantized
        gguf = require_gguf()
        w = np.zeros((m, k_len), np.float64)
        cols = layout.logical_columns()
        for parts in raw_terms:
            for _, data, qtype in parts.values():
                w += gguf.quants.dequantize(data, qtype).reshape(m, layout.length)[:, cols]
        return _build_float(kind, w.astype(np.float32).reshape(shape), bias, conv)

    terms = []
    for k, parts in enumerate(raw_terms):
        try:
            raw = {suffix: (kind_name, data) for suffix, (kind_name, data, _) in parts.items()}
            t = ternary_from_tensors(
                raw, shape, granularity, group_size, padded, symmetric, has_offset
            )
        except ValueError as e:
            meta.fail(f"tensor {_term_name(i, k)!r} (layer {i}): {e}")
        terms.append(pack(t, fmt))
    packed = terms[0] if len(terms) == 1 else terms
    try:
        if kind == "PackedLinear":
            return PackedLinear(packed, bias, activations)
        return PackedConv2d(packed, conv["stride"], conv["padding"], bias, activations)
    except ValueError as e:
        # e.g. the terms of a sum no longer share a symmetry: two split scales of one term
        # that became equal in fp16 (ternref's packed layers need terms of one kind)
        meta.fail(f"layer {i} ({kind}): {e}")


def _read_float_layer(i, kind, meta, tensors, dequantize, dequantized):
    key = f"ternref.layers.{i}."
    shape = tuple(meta.get(key + "weight.shape", "ints"))
    want_dims = 2 if kind == "Linear" else 4
    if len(shape) != want_dims or any(s < 1 for s in shape):
        meta.fail(f"layer {i} ({kind}): weight.shape {list(shape)} is not a {want_dims}-D shape")
    has_bias = meta.get(key + "has_bias", "bool")
    meta.get(key + "dequantized_from_ternary", "bool", required=False)  # informational
    conv = None
    if kind == "Conv2d":
        conv = {
            "stride": tuple(meta.get(key + "stride", "ints")),
            "padding": tuple(meta.get(key + "padding", "ints")),
        }
        if len(conv["stride"]) != 2 or len(conv["padding"]) != 2:
            meta.fail(f"layer {i}: stride / padding must be pairs")
    w = _float_array(tensors.take(f"layers.{i}.weight"), meta, shape, dequantize, dequantized)
    bias = None
    if has_bias:
        t = tensors.take(f"layers.{i}.bias")
        bias = _float_array(t, meta, (shape[0],), dequantize, dequantized)
    return _build_float(kind, w, bias, conv)


def _build_float(kind, w, bias, conv=None):
    w = w.astype(np.float32) if w.dtype != np.float64 else w
    has_bias = bias is not None
    if kind in ("Linear", "PackedLinear"):
        layer = Linear(w.shape[1], w.shape[0], bias=has_bias, dtype=w.dtype)
    else:
        layer = Conv2d(
            w.shape[1],
            w.shape[0],
            w.shape[2:],
            conv["stride"],
            conv["padding"],
            bias=has_bias,
            dtype=w.dtype,
        )
    layer.weight.data = w.copy()
    if has_bias:
        layer.bias.data = bias.astype(w.dtype)
    return layer.eval()


def _read_sequential(reader, meta: _Metadata, dequantize: bool, fmt: str) -> Sequential:
    from ternref.packed.layers import inference_layer_types

    version = meta.get("ternref.format_version", "int")
    if version != FORMAT_VERSION:
        meta.fail(f"ternref.format_version {version} is not {FORMAT_VERSION} (this ternref)")
    meta.get("ternref.version", "str", required=False)
    meta.get("ternref.method", "str", required=False)
    meta.get("ternref.method.hyperparameters", "str", required=False)
    n_layers = meta.get("ternref.layer_count", "int")
    tensors = _Tensors(reader, meta)
    registered = inference_layer_types()  # imports the methods, which register their layers
    dequantized: list[str] = []
    layers = []
    for i in range(n_layers):
        key = f"ternref.layers.{i}."
        kind = meta.get(key + "type", "str")
        if kind in ("PackedLinear", "PackedConv2d"):
            layer = _read_ternary_layer(i, kind, meta, tensors, dequantize, dequantized, fmt)
        elif kind in ("Linear", "Conv2d"):
            layer = _read_float_layer(i, kind, meta, tensors, dequantize, dequantized)
        elif kind in ("BatchNorm1d", "BatchNorm2d"):
            c = meta.get(key + "num_features", "int")
            eps = meta.get(key + "eps", "float")
            if c < 1 or not eps > 0:
                meta.fail(f"layer {i}: num_features {c} / eps {eps} out of range")
            arrays = {
                n: _float_array(
                    tensors.take(f"layers.{i}.{n}"), meta, (c,), dequantize, dequantized
                )
                for n in ("weight", "bias", "running_mean", "running_var")
            }
            cls = BatchNorm1d if kind == "BatchNorm1d" else BatchNorm2d
            layer = cls(c, eps=eps, dtype=arrays["weight"].dtype)
            layer.weight.data = arrays["weight"]
            layer.bias.data = arrays["bias"]
            layer.running_mean = arrays["running_mean"]
            layer.running_var = arrays["running_var"]
            layer.eval()
        elif kind in ("MaxPool2d", "AvgPool2d"):
            ks, st = meta.get(key + "kernel_size", "ints"), meta.get(key + "stride", "ints")
            if len(ks) != 2 or len(st) != 2 or min(ks + st) < 1:
                meta.fail(f"layer {i}: kernel_size {ks} / stride {st} are not pairs of ints >= 1")
            layer = (MaxPool2d if kind == "MaxPool2d" else AvgPool2d)(tuple(ks), tuple(st))
        elif kind in ("ReLU", "Flatten"):
            layer = ReLU() if kind == "ReLU" else Flatten()
        elif kind in registered:
            layer = _read_registered_layer(i, kind, meta, tensors)
        else:
            meta.fail(
                f"layer {i}: unknown layer type {kind!r}; known: PackedLinear, PackedConv2d, "
                f"Linear, Conv2d, BatchNorm1d/2d, MaxPool2d, AvgPool2d, ReLU, Flatten and the "
                f"registered inference layers {sorted(registered)}"
            )
        layers.append(layer)
    extra_keys = meta.unread_ternref_keys()
    if extra_keys:
        meta.fail(f"unknown metadata keys {extra_keys} (layer_count is {n_layers})")
    extra = sorted(set(tensors.by_name) - tensors.claimed)
    if extra:
        meta.fail(f"unexpected tensors {extra} (no layer's metadata lists them)")
    if dequantized:
        warnings.warn(
            f"load_gguf: dequantized {', '.join(dequantized)} with gguf.quants.dequantize; "
            "those layers are full-precision now",
            UserWarning,
            stacklevel=3,
        )
    model = PackedSequential(*layers)
    model.training = False
    return model


def _read_registered_layer(i, kind, meta, tensors):
    key = f"ternref.layers.{i}."
    params = meta.json(key + "params")
    described = meta.json(key + "arrays")
    if not isinstance(params, dict) or not isinstance(described, dict):
        meta.fail(f"layer {i} ({kind}): params and arrays must be JSON objects")
    arrays = {}
    for name, d in described.items():
        if not isinstance(d, dict) or set(d) != {"shape", "dtype"}:
            meta.fail(f"layer {i} ({kind}): array {name!r} needs exactly 'shape' and 'dtype'")
        if d["dtype"] not in _ARRAY_DTYPES or not isinstance(d["shape"], list):
            meta.fail(f"layer {i} ({kind}): array {name!r} has an unknown dtype or shape")
        t = tensors.take(f"layers.{i}.{name}")
        if t.tensor_type.name != _ARRAY_DTYPES[d["dtype"]]:
            meta.fail(
                f"tensor {t.name!r} is {t.tensor_type.name}, its metadata says {d['dtype']} "
                f"({_ARRAY_DTYPES[d['dtype']]})"
            )
        size = math.prod(d["shape"])
        if _numpy_shape(t) != (size,):
            meta.fail(f"tensor {t.name!r} has shape {list(_numpy_shape(t))}, expected [{size}]")
        arrays[name] = np.array(t.data).astype(d["dtype"]).reshape(d["shape"])
    try:
        return rebuild_inference_layer(kind, params, arrays)
    except ValueError as e:
        meta.fail(f"layer {i} ({kind}): {e}")


_READERS = {ARCHITECTURE: _read_sequential}
"""``general.architecture`` -> reader of that architecture (a TransformerLM adds its own)."""


def load_gguf(path, *, dequantize: bool = False, format: str = "i2"):
    """Read a GGUF file written by :func:`save_gguf` and rebuild the packed inference model.

    Parameters
    ----------
    path : str or os.PathLike
    dequantize : bool, default False
        If a tensor that ternref wrote as ternary or float holds another quantization (Q4_1,
        Q8_0, ...: a requantized file), read it with ``gguf.quants.dequantize`` and make its
        layer full-precision (a ``UserWarning`` names every such tensor). By default such a
        file is refused.
    format : {"i2", "tq1", "bitplanes"}
        ternref packed format of the rebuilt ternary layers.

    Returns
    -------
    Sequential or TransformerLM
        For a ``ternref`` file: packed ternary layers whose ternaries equal the exported ones
        with every scale rounded to fp16, in evaluation mode. For a ``llama`` file: a
        :class:`~ternref.nn.TransformerLM` (:func:`ternref.interop.llama.read_llama`; TQ
        projections packed in ``format``, Q4_1/Q8_0/... tensors only with ``dequantize``).

    Raises
    ------
    ValueError
        Anything listed under "Reading" in the module docstring; nothing is built then.
    ImportError
        Without the ``gguf`` package.
    """
    one_of(format, "format", FORMATS)
    if not isinstance(dequantize, bool):
        raise TypeError(f"dequantize must be True or False, got {describe(dequantize)}")
    reader = _open(path)
    meta = _Metadata(reader, repr(str(path)))
    arch = meta.get("general.architecture", "str", required=False)
    if arch not in _READERS:
        what = "no general.architecture" if arch is None else f"general.architecture {arch!r}"
        meta.fail(
            f"{what}: not a ternref model (ternref reads {sorted(_READERS)}); "
            "ternref.interop.read_tensors(path) reads any GGUF's tensors"
        )
    return _READERS[arch](reader, meta, dequantize, format)


def read_tensors(path, *, dequantize: bool = False) -> dict:
    """Every tensor of any GGUF file, by name, through ``gguf.GGUFReader``.

    Parameters
    ----------
    path : str or os.PathLike
    dequantize : bool, default False
        Read tensors of other quantized types (Q4_1, Q8_0, K-quants, ...) as float32 with
        ``gguf.quants.dequantize``; by default they are refused.

    Returns
    -------
    dict of str -> ndarray or Ternary
        F32/F16/BF16 as float32 and F64 as float64, integer types as integers, NumPy shape
        (rows first); TQ1_0/TQ2_0 as an exact :class:`~ternref.Ternary` with
        ``granularity="group", group_size=256`` (one scale per block).

    Raises
    ------
    ValueError
        A truncated or corrupt file, an unknown tensor type, or a quantized tensor without
        ``dequantize``.
    """
    gguf = require_gguf()
    reader = _open(path)
    out = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        shape = _numpy_shape(t)
        if kind in ("TQ1_0", "TQ2_0"):
            # rows of ne0 weights; as a Ternary: axis 0 holds the rows' scales, groups of 256
            full = shape if len(shape) > 1 else (1, *shape)
            raw = np.array(t.data, dtype=np.uint8).reshape(math.prod(full[:-1]), -1)
            try:
                codes, d = tq.decode(raw, kind.lower())
            except ValueError as e:
                raise ValueError(f"tensor {t.name!r}: {e}") from e
            out[t.name] = Ternary(
                codes.reshape(full),
                d.astype(np.float32).reshape(full[0], -1),
                granularity="group",
                group_size=tq.QK,
            )
        elif kind in ("F32", "F16"):
            out[t.name] = np.array(t.data, dtype=np.float32).reshape(shape)
        elif kind in ("F64", "I8", "I16", "I32", "I64"):
            out[t.name] = np.array(t.data).reshape(shape)
        elif kind == "BF16" or dequantize:
            out[t.name] = gguf.quants.dequantize(np.array(t.data), t.tensor_type).reshape(shape)
        else:
            raise ValueError(
                f"tensor {t.name!r} is {kind}; pass dequantize=True to read it as float32 "
                "through gguf's dequantizer"
            )
    return out


def read_metadata(path) -> dict:
    """Every key/value field of a GGUF file (``GGUF.*`` header fields excluded)."""
    reader = _open(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
