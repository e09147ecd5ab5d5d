"""llama.cpp ``llama`` GGUF files <-> :class:`ternref.nn.TransformerLM`, ternary projections as TQ.

Reading: :func:`read_llama` (what :func:`ternref.interop.load_gguf` calls for a file whose
``general.architecture`` is ``"llama"``) builds a ``TransformerLM`` from any llama-architecture
GGUF that the model can express: a real model nobody here trained (SmolLM2-135M, its Q4_1 and
Q8_0 tensors dequantized by ``gguf.quants`` on request) or a file :func:`save_llama` wrote (its
TQ2_0 / TQ1_0 projections become packed ternary layers, exactly the ternaries written).
Writing: :func:`save_llama` (what :func:`ternref.interop.save_gguf` calls for a
``TransformerLM``) writes a file llama.cpp runs: the seven projections of every block as TQ2_0
(or TQ1_0) tensors from ternref :class:`~ternref.Ternary` weights, everything else F32.

The mapping
-----------
Tensor names are those of :meth:`TransformerLM.gguf_tensors` (``token_embd``, ``blk.N.attn_q``,
... ``output_norm``, ``output`` when untied). Two facts make a file and the model compute the
same function:

* **RoPE pairs.** ternref's :class:`~ternref.nn.attention.RoPE` rotates coordinate ``i`` of a
  head with coordinate ``i + d/2`` (Hugging Face's "rotate_half"); llama.cpp's ``llama``
  architecture uses ``LLAMA_ROPE_TYPE_NORM``, which rotates adjacent coordinates ``(2i, 2i+1)``.
  The two agree once the output rows of ``W_q`` and ``W_k`` are permuted inside each head, which
  is what llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel.permute``) does when it writes
  ``attn_q``/``attn_k``: row ``2i + s`` of a head in the file is row ``s d/2 + i`` of the model
  (``s`` in {0, 1}, ``i < d/2``). :func:`to_gguf_rows` applies it, :func:`from_gguf_rows` undoes
  it; a permutation of output rows commutes with ternarization (per-tensor scales stay, per-row
  scales move with their rows), so a ternary weight is permuted as codes and scales.
* **Hyper-parameters** come from and go to ``llama.embedding_length``, ``llama.block_count``,
  ``llama.feed_forward_length``, ``llama.attention.head_count``, ``...head_count_kv``,
  ``llama.context_length`` (``max_seq_len``), ``llama.rope.freq_base`` (``rope_theta``),
  ``llama.attention.layer_norm_rms_epsilon`` (``norm_eps``, the same for every RMSNorm), and
  ``llama.rope.dimension_count`` (must be the head width: ternref rotates whole heads). The tied
  head is the absence of an ``output`` tensor, as in llama.cpp.

A file asking for what ``TransformerLM`` does not compute is refused with the key or tensor
named: biases, RoPE scaling, partial rotary dimensions, key/value widths other than
``dim / n_heads``, experts, extra tensors (``rope_freqs``, ...).

Ternary projections
-------------------
:func:`save_llama` takes the model and ``ternary``, a mapping from a projection (its name
``"blocks.3.attn.q_proj"`` or the ``Linear`` object) to the :class:`~ternref.Ternary` its
weight is; projections that are already packed (:func:`pack_projections`,
:func:`read_llama`) carry their ternary. Only what llama.cpp's kernels compute exactly is
accepted (symmetric scales per tensor, per row or per group of a multiple of 256, rows of a
multiple of 256: the widths of the model must be multiples of 256); no padding or split parts,
which llama.cpp does not know. A projection without a ternary is written F32 (F16 with
``float_type="f16"``), like the embedding (always F32: the tied output head multiplies F32
activations without quantizing them only when it is F32) and the norm gains.

What a BitNet b1.58 model must provide: the ``Ternary`` of each of the seven projections of
every block (``ternref.projections.bitnet(w)``, absmean per tensor: ``codes = RoundClip(w /
mean|w|)``, ``alpha = mean|w|``), and no normalisation inside a projection. BitNet's reference
``BitLinear`` normalises its input with an RMSNorm ("SubLN") before the product. The ``llama``
architecture has exactly two norms per block (``attn_norm`` before q/k/v, ``ffn_norm`` before
gate/up) and none before ``attn_output`` or ``ffn_down``, so an extra norm inside q, k, v, gate
or up after the block's own norm (``RMSNorm(g * x / rms(x))`` is not a per-token linear map of
``x``: it divides by ``rms(g * x / rms(x))``) and any norm before o or down cannot be written
as ``llama``; :func:`save_llama` exports a ``TransformerLM`` (which has none) and does nothing
with a SubLN. llama.cpp's ``bitnet`` architecture (``src/models/bitnet.cpp``) has exactly the
BitNet-b1.58-2B4T placement: ``attn_norm`` before q/k/v, ``attn_sub_norm`` between attention
and ``attn_output``, ``ffn_norm`` before gate/up (SwiGLU, ``silu(gate) * up``),
``ffn_sub_norm`` before ``ffn_down``, an always-tied output, optional per-tensor ``.scale``
tensors, and NEOX ("rotate_half") RoPE, ternref's own convention (no row permutation). A
BitNet model whose q/k/v and gate/up share the block's norm and whose o and down each have one
SubLN maps onto it one to one: ``quantize_transformer(model, bitnet, subln="shared")`` trains
that placement and :mod:`ternref.interop.bitnet` (``save_bitnet``) writes it as ``bitnet``.

Activations
-----------
llama.cpp's CPU kernels multiply a TQ2_0/TQ1_0 weight by activations quantized to ``Q8_K``
(:mod:`ternref.interop.q8k` reproduces that quantization), so its logits are close to, not
equal to, a float forward of the same ternary weights; the tests derive the tolerance from it.

References
----------
llama.cpp: ``src/models/llama.cpp``, ``src/models/bitnet.cpp``, ``src/llama-model.cpp``
(``llama_model_rope_type``), ``convert_hf_to_gguf.py`` (``LlamaModel.permute``),
https://github.com/ggml-org/llama.cpp. Su et al., "RoFormer: Enhanced Transformer with Rotary
Position Embedding", arXiv:2104.09864, 2021. Ma et al., "The Era of 1-bit LLMs: All Large
Language Models are in 1.58 Bits", arXiv:2402.17764, 2024; "BitNet b1.58 2B4T Technical
Report", arXiv:2504.12285, 2025 (SubLN placement).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np

import ternref
from ternref._validate import describe, generator, integer, one_of
from ternref.interop import gguf_io, tq
from ternref.nn.layers import Linear
from ternref.nn.module import Module
from ternref.nn.transformer import TransformerLM
from ternref.packed import FORMATS, pack, unpack
from ternref.packed.layers import ACTIVATIONS, PackedLinear
from ternref.ternary import Ternary

ARCHITECTURE = "llama"

#: The seven projections of a block: model attribute path -> GGUF tensor stem.
PROJECTIONS = {
    "attn.q_proj": "attn_q",
    "attn.k_proj": "attn_k",
    "attn.v_proj": "attn_v",
    "attn.o_proj": "attn_output",
    "ffn.gate_proj": "ffn_gate",
    "ffn.up_proj": "ffn_up",
    "ffn.down_proj": "ffn_down",
}

_ROPE_PERMUTED = ("attn.q_proj", "attn.k_proj")

# llama_ftype of llama.cpp (include/llama.h): what general.file_type says the file mostly is
_FILE_TYPE = {"tq1_0": 36, "tq2_0": 37, "f32": 0, "f16": 1}

# keys a file may carry that TransformerLM cannot honour (anything under them is refused)
_UNSUPPORTED_PREFIXES = (
    "llama.rope.scaling.",
    "llama.expert_",
    "llama.attention.sliding_window",
    "llama.attention.q_lora_rank",
    "llama.attention.kv_lora_rank",
    "llama.attention.clamp_kqv",
    "llama.logit_scale",
    "llama.residual_scale",
    "llama.embedding_scale",
    "llama.attention.scale",
)


# ------------------------------------------------------------------------- projections


class PackedProjection(Module):
    """A packed ternary projection for inputs of any leading shape: ``y = x W_hat^T``.

    :class:`ternref.packed.PackedLinear` takes ``(N, in)``; a transformer's projections see
    ``(B, T, in)``. This layer flattens the leading axes, runs the packed kernel and restores
    them. Inference only (no backward).

    Parameters
    ----------
    packed : ternref.packed.Packed or sequence of Packed
        Weight of shape ``(out, in)``; several terms are summed (Ternary Residual Networks,
        as :class:`~ternref.packed.PackedLinear`).
    activations : {"float32", "int8"}
        See :func:`ternref.packed.linear` (``"int8"``: absmax per row, BitNet-style).
    bias : ndarray (out,), optional
        Added after the product (TransformerLM's projections have none).
    """

    def __init__(self, packed, activations: str = "float32", bias=None):
        super().__init__()
        self.layer = PackedLinear(packed, bias, activations)
        self.out_features, self.in_features = self.layer.out_features, self.layer.in_features
        self.training = False

    @property
    def ternary(self) -> Ternary:
        """The weight as a :class:`~ternref.Ternary` (exact); a layer of several terms or with
        a bias has none (``ValueError``)."""
        if len(self.layer.terms) != 1 or self.layer.bias is not None:
            raise ValueError(
                f"{self!r} is a sum of {len(self.layer.terms)} ternary terms"
                f"{' plus a bias' if self.layer.bias is not None else ''}, not one Ternary"
            )
        return unpack(self.layer.packed)

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self!r}: expected input of shape (..., {self.in_features}), got {x.shape}"
            )
        lead = x.shape[:-1]
        y = self.layer.forward(np.ascontiguousarray(x.reshape(-1, self.in_features)))
        return y.reshape(*lead, self.out_features)

    def backward(self, dy):
        raise RuntimeError("PackedProjection is inference only: it has no backward")

    def __repr__(self) -> str:
        return f"PackedProjection({self.layer!r})"


def _get(obj, path: str):
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _set(obj, path: str, value) -> None:
    head, _, last = path.rpartition(".")
    setattr(_get(obj, head) if head else obj, last, value)


def projection_layers(model: TransformerLM) -> dict:
    """``{"blocks.N.attn.q_proj": layer, ...}``: the seven projections of every block, in order.

    A layer is a :class:`~ternref.nn.Linear` or a :class:`PackedProjection`.
    """
    if not isinstance(model, TransformerLM):
        raise TypeError(f"model must be a ternref.nn.TransformerLM, got {describe(model)}")
    return {
        f"blocks.{n}.{path}": _get(blk, path)
        for n, blk in enumerate(model.blocks)
        for path in PROJECTIONS
    }


def _resolve(model: TransformerLM, ternary) -> dict:
    """``ternary`` (keys: names or layers) as ``{name: Ternary}``, every entry checked."""
    layers = projection_layers(model)
    if ternary is None:
        return {}
    if not hasattr(ternary, "items"):
        raise TypeError(f"ternary must be a mapping projection -> Ternary, got {describe(ternary)}")
    by_id = {id(layer): name for name, layer in layers.items()}
    out = {}
    for key, t in ternary.items():
        if isinstance(key, str):
            if key not in layers:
                raise ValueError(
                    f"ternary: {key!r} is not a projection of this model (names look like "
                    f"'blocks.0.attn.q_proj'; projections: {', '.join(PROJECTIONS)})"
                )
            name = key
        elif id(key) in by_id:
            name = by_id[id(key)]
        else:
            raise ValueError(f"ternary: the key {describe(key)} is not a projection of this model")
        if not isinstance(t, Ternary):
            raise TypeError(f"ternary[{name!r}] must be a ternref.Ternary, got {describe(t)}")
        want = (layers[name].out_features, layers[name].in_features)
        if t.shape != want:
            raise ValueError(f"ternary[{name!r}] has shape {t.shape}, the layer's weight is {want}")
        out[name] = t
    return out


def ternarize(model: TransformerLM, projection="bitnet", *, rng=None, **kwargs) -> dict:
    """Post-training ternarization of every projection: ``{name: Ternary}``.

    Parameters
    ----------
    model : TransformerLM
        Its float projections (``Linear``) are read, not changed.
    projection : str or callable, default "bitnet"
        A registered weights-type projection function (:func:`ternref.projections.names`) or a
        callable ``fn(w, **kwargs) -> Ternary``.
    rng : numpy.random.Generator, optional
        Passed to stochastic projection functions (required for them); one generator serves
        every layer in order, so the result depends only on its seed.
    **kwargs
        Passed to the projection function (``granularity="channel"``, ...).

    Returns
    -------
    dict of str -> Ternary
        In the order of :func:`projection_layers`.
    """
    from ternref import projections

    if isinstance(projection, str):
        info = projections.get(projection)
        if info.input_kind != "weights":
            raise ValueError(
                f"projection {projection!r} takes {info.input_kind} inputs, not one weight"
            )
        fn = info.fn
        if not info.deterministic:
            kwargs = {**kwargs, "rng": generator(rng)}
    elif callable(projection):
        fn = projection
        if rng is not None:
            kwargs = {**kwargs, "rng": rng}
    else:
        raise TypeError(f"projection must be a name or a callable, got {describe(projection)}")
    out = {}
    for name, layer in projection_layers(model).items():
        if not isinstance(layer, Linear):
            raise TypeError(f"{name} is {describe(layer)}; ternarize reads float Linear weights")
        t = fn(layer.weight.data, **kwargs)
        if not isinstance(t, Ternary) or t.shape != layer.weight.shape:
            raise ValueError(f"{projection!r} returned {describe(t)} for {name}, not a Ternary")
        out[name] = t
    return out


def set_projection_weights(model: TransformerLM, ternary) -> TransformerLM:
    """Give every projection named in ``ternary`` the float weight ``w_hat = t.dense()``.

    The float path of a ternary model (the same function as :func:`pack_projections`, computed
    by BLAS). In place; returns ``model``.
    """
    layers = projection_layers(model)
    for name, t in _resolve(model, ternary).items():
        layer = layers[name]
        if not isinstance(layer, Linear):
            raise TypeError(f"{name} is {describe(layer)}, not a float Linear")
        layer.weight.data[...] = t.dense().astype(layer.weight.data.dtype)
    return model


def pack_projections(
    model: TransformerLM, ternary, format: str = "i2", activations: str = "float32"
) -> TransformerLM:
    """Replace every projection named in ``ternary`` by a :class:`PackedProjection` of it.

    ternref's packed inference path of a ternary transformer (Numba kernels, see
    :mod:`ternref.packed`). In place; returns ``model`` (its forward and :meth:`generate` then
    run the packed kernels; it can no longer be trained).
    """
    one_of(format, "format", FORMATS)
    one_of(activations, "activations", ACTIVATIONS)
    for name, t in _resolve(model, ternary).items():
        _set(model, name, PackedProjection(pack(t, format), activations))
    return model


def q8k_projections(model: TransformerLM, ternary) -> TransformerLM:
    """Replace every projection named in ``ternary`` by a
    :class:`~ternref.interop.q8k.Q8KProjection`: the model then computes what llama.cpp's
    TQ2_0/TQ1_0 kernels compute (activations quantized to Q8_K). In place; returns ``model``.
    """
    from ternref.interop.q8k import Q8KProjection

    for name, t in _resolve(model, ternary).items():
        _set(model, name, Q8KProjection(t))
    return model


def ternaries(model: TransformerLM) -> dict:
    """``{name: Ternary}`` of the projections that are :class:`PackedProjection` layers."""
    return {
        name: layer.ternary
        for name, layer in projection_layers(model).items()
        if isinstance(layer, PackedProjection)
    }


# ------------------------------------------------------------------------- RoPE rows


def to_gguf_rows(a: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q/k weight (or any per-row array) from ternref's RoPE order to llama.cpp's.

    Within each head of ``d`` rows, output row ``2i + s`` is input row ``s d/2 + i``
    (``LlamaModel.permute`` of ``convert_hf_to_gguf.py``).
    """
    m = a.shape[0]
    d = m // n_heads
    if d * n_heads != m or d % 2:
        raise ValueError(f"{m} rows do not split into {n_heads} heads of an even width")
    return a.reshape(n_heads, 2, d // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


def from_gguf_rows(a: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of :func:`to_gguf_rows`: row ``s d/2 + i`` of a head is file row ``2i + s``."""
    m = a.shape[0]
    d = m // n_heads
    if d * n_heads != m or d % 2:
        raise ValueError(f"{m} rows do not split into {n_heads} heads of an even width")
    return a.reshape(n_heads, d // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


def _permute_ternary(t: Ternary, rows) -> Ternary:
    """``t`` with its output rows reordered by ``rows(array)`` (scales per row follow)."""

    def scales(a):
        if a is None or t.granularity == "tensor":
            return a
        return rows(np.asarray(a))

    return Ternary(
        rows(t.codes),
        scales(t.alpha_pos),
        None if t.symmetric else scales(t.alpha_neg),
        granularity=t.granularity,
        group_size=t.group_size,
        offset=scales(t.offset),
    )


def _simplest(t: Ternary) -> Ternary:
    """A TQ tensor read as blocks of 256 (one scale each), at the coarsest granularity that
    holds its scales exactly: one scale for the tensor, one per row, or per block."""
    d = t.alpha_pos  # (M, blocks)
    if np.all(d == d.flat[0]):
        return Ternary(t.codes, np.asarray(d.flat[0]).astype(d.dtype))
    if np.all(d == d[:, :1]):
        return Ternary(t.codes, d[:, 0].copy(), granularity="channel")
    return t


# ------------------------------------------------------------------------- writing


# llama.cpp refuses a "gpt2" vocabulary without tokenizer.ggml.merges, and gguf cannot write an
# empty array: the byte vocabulary gets one merge that never applies. Byte 0xFF never occurs in
# UTF-8 (the only input llama.cpp tokenizes), so the pair (0xFF, 0xFF) is never adjacent.
_NO_MERGE = "\u00ff \u00ff"


def byte_vocabulary() -> list[str]:
    """The 256 token texts of a byte-level GPT-2 vocabulary: token ``b`` is byte ``b``.

    GPT-2's byte-to-unicode map (``bytes_to_unicode`` of OpenAI's ``encoder.py``, also in
    llama.cpp's ``unicode.cpp``): the printable bytes ``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``
    stand for themselves, the other 68 bytes for ``chr(256 + n)`` in byte order. With no merge
    that applies (:func:`save_llama` writes the single merge ``"ÿ ÿ"``, of byte 0xFF with itself,
    which UTF-8 never contains, because llama.cpp requires the merges key and gguf cannot write
    an empty array), llama.cpp's BPE tokenizer turns a text into its UTF-8 bytes, ids equal to
    byte values: the tokens of ``ternref.data`` (vocabulary 256).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def write_vocabulary(writer, vocabulary: str) -> None:
    """The ``tokenizer.ggml.*`` keys of :func:`save_llama` (and of ``save_bitnet``).

    ``"bytes"``: a GPT-2 BPE vocabulary of the 256 bytes (:func:`byte_vocabulary`) with one
    merge that never applies, no BOS/EOS added; ``"none"``: ``tokenizer.ggml.model = "none"``.
    """
    gguf = gguf_io.require_gguf()
    if vocabulary == "bytes":
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")  # (no merge applies: any splitting is the same)
        writer.add_token_list(byte_vocabulary())
        writer.add_token_types([int(gguf.TokenType.NORMAL)] * 256)
        writer.add_token_merges([_NO_MERGE])
        writer.add_add_bos_token(False)
        writer.add_add_eos_token(False)
    else:
        writer.add_tokenizer_model("none")


def _refuse_bitlinear(model: TransformerLM) -> None:
    """A BitNet LM (BitLinear projections: SubLNs, int8 activations; or removed block norms) is
    not a ``llama`` model: writing its latent weights as floats would drop all of that."""
    from ternref.methods.bitlinear import BitLinear

    found = [name for name, layer in projection_layers(model).items()
             if isinstance(layer, BitLinear)]  # fmt: skip
    norms = [f"blocks.{n}.{a}" for n, blk in enumerate(model.blocks)
             for a in ("attn_norm", "ffn_norm")
             if not hasattr(getattr(blk, a), "weight")]  # fmt: skip
    if found or norms:
        what = ", ".join((found + norms)[:3]) + (" ..." if len(found + norms) > 3 else "")
        raise ValueError(
            f"save_llama: this is a BitNet LM ({what}: BitLinear projections with SubLNs or "
            "int8 activations, or removed block norms), which the llama architecture cannot "
            "express; a model trained with subln='shared' is written as llama.cpp's bitnet "
            "architecture by ternref.interop.save_bitnet (save_gguf does that), the default "
            "per-projection placement cannot be written. Nothing was written."
        )


def save_llama(
    model: TransformerLM,
    path,
    ternary=None,
    *,
    quant: str = "tq2_0",
    float_type: str = "f32",
    vocabulary: str = "bytes",
    name: str | None = None,
    projection: str | None = None,
) -> gguf_io.ExportReport:
    """Write ``model`` as a llama.cpp ``llama``-architecture GGUF file.

    Parameters
    ----------
    model : TransformerLM
    path : str or os.PathLike
    ternary : mapping, optional
        Projection (name ``"blocks.N.attn.q_proj"`` or the ``Linear`` itself) -> ``Ternary``:
        the weight to write as a TQ tensor. Projections that are :class:`PackedProjection`
        layers are ternary anyway. Any other projection is written as a float tensor.
    quant : {"tq2_0", "tq1_0"}
        Type of the ternary tensors (2.0625 or 1.6875 bits per weight).
    float_type : {"f32", "f16"}
        Type of float projections (the embedding and the norms are always F32).
    vocabulary : {"bytes", "none"}
        ``"bytes"``: a byte-level GPT-2 vocabulary (:func:`byte_vocabulary`; needs
        ``vocab_size == 256``), so llama.cpp tokenizes text into ternref's byte tokens;
        ``"none"``: ``tokenizer.ggml.model = "none"`` (llama.cpp then takes token ids only).
    name : str, optional
        ``general.name``.
    projection : str, optional
        Recorded as ``ternref.projection`` (how the ternaries were made, e.g. ``"bitnet"``).

    Returns
    -------
    ExportReport
        Every tensor with its type, bits per weight and its error (fp16 scale rounding of the
        TQ tensors, measured with ``gguf.quants.dequantize`` on the bytes written).

    Raises
    ------
    ValueError
        A ternary that llama.cpp cannot compute exactly (asymmetric scales, an offset, rows or
        groups that are not multiples of 256, a scale outside fp16's range), a bad mapping, or a
        vocabulary that does not fit; nothing is written then.
    """
    gguf = gguf_io.require_gguf()
    if not isinstance(model, TransformerLM):
        raise TypeError(f"save_llama expects a ternref.nn.TransformerLM, got {describe(model)}")
    one_of(quant, "quant", tq.QUANTS)
    one_of(float_type, "float_type", gguf_io.FLOAT_TYPES)
    one_of(vocabulary, "vocabulary", ("bytes", "none"))
    if vocabulary == "bytes" and model.vocab_size != 256:
        raise ValueError(
            f"vocabulary='bytes' needs vocab_size 256 (one token per byte), the model has "
            f"{model.vocab_size}; use vocabulary='none' for a file of token ids only"
        )
    _refuse_bitlinear(model)
    given = _resolve(model, ternary)
    layers = projection_layers(model)
    for lname, layer in layers.items():
        if getattr(layer, "input_norm", None) is not None:  # BitLinear, packed or not
            raise ValueError(
                f"save_llama: {lname} normalises its input (a BitLinear's SubLN), which the "
                "'llama' architecture cannot express (see ternref.interop.llama); nothing was "
                "written"
            )
        if isinstance(layer, PackedProjection) and lname not in given:
            given[lname] = layer.ternary
    head_dim = model.dim // model.n_heads

    plan = gguf_io._Plan(gguf, float_type)
    report = gguf_io.ExportReport(path=str(path), quant=quant)
    problems = []
    for n, blk in enumerate(model.blocks):
        plan.float_tensor(f"blk.{n}.attn_norm.weight", blk.attn_norm.weight.data, n, "norm")
        plan.float_tensor(f"blk.{n}.ffn_norm.weight", blk.ffn_norm.weight.data, n, "norm")
        for path_in_block, stem in PROJECTIONS.items():
            lname = f"blocks.{n}.{path_in_block}"
            tname = f"blk.{n}.{stem}.weight"
            heads = None
            if path_in_block in _ROPE_PERMUTED:
                heads = model.n_heads if path_in_block == "attn.q_proj" else model.n_kv_heads
            if lname in given:
                t = given[lname]
                if heads is not None:
                    t = _permute_ternary(t, lambda a, h=heads: to_gguf_rows(a, h))
                tensors, _, problem = gguf_io.ternary_tensors(
                    tname, t, quant, pad=False, split=False, layer=n
                )
                if problem:
                    problems.append(f"{lname} ({tname}, {t.shape}): {problem}")
                    continue
                ((_, raw, row),) = tensors
                plan.tensors.append((tname, raw, gguf.GGMLQuantizationType[quant.upper()]))
                plan.rows.append(row)
            else:
                w = layers[lname].weight.data
                if heads is not None:
                    w = to_gguf_rows(w, heads)
                plan.float_tensor(tname, w, n, "weight")
    if problems:
        raise ValueError(
            "save_llama: these projections cannot be TQ tensors that llama.cpp computes "
            "exactly (it knows neither padding nor split parts): "
            + "; ".join(problems)
            + ". Nothing was written."
        )
    # embedding, final norm, untied head: F32 whatever float_type says (see the module docs)
    plan.float_type = "f32"
    plan.float_tensor("token_embd.weight", model.token_embd.weight.data, -1, "embedding")
    plan.float_tensor("output_norm.weight", model.output_norm.weight.data, -1, "norm")
    if not model.tie_embeddings:
        plan.float_tensor("output.weight", model.output.weight.data, -1, "weight")
    report.tensors = plan.rows

    writer = gguf.GGUFWriter(path, ARCHITECTURE)
    try:
        writer.add_name(name or f"ternref TransformerLM ({projection or 'ternary'})")
        writer.add_file_type(_FILE_TYPE[quant] if given else _FILE_TYPE[float_type])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(model.max_seq_len)
        writer.add_embedding_length(model.dim)
        writer.add_block_count(model.n_layers)
        writer.add_feed_forward_length(model.ffn_dim)
        writer.add_head_count(model.n_heads)
        writer.add_head_count_kv(model.n_kv_heads)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(model.rope.theta))
        writer.add_layer_norm_rms_eps(float(model.norm_eps))
        writer.add_vocab_size(model.vocab_size)
        write_vocabulary(writer, vocabulary)
        writer.add_string("ternref.version", ternref.__version__)
        if projection is not None:
            writer.add_string("ternref.projection", str(projection))
        for tname, array, raw_dtype in plan.tensors:
            writer.add_tensor(tname, array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return report


# ------------------------------------------------------------------------- reading


def _llama_config(meta, arch: str = ARCHITECTURE) -> dict:
    """TransformerLM keyword arguments from a file's ``llama.*`` keys (refusing what it lacks).

    ``arch``: the key prefix (``"bitnet"`` reads the same hyper-parameters under ``bitnet.*``).
    """
    unsupported = tuple(arch + p[len(ARCHITECTURE) :] for p in _UNSUPPORTED_PREFIXES)
    for key in meta.fields:
        if key.startswith(unsupported):
            value = meta.fields[key].contents()
            if key == f"{arch}.rope.scaling.type" and value == "none":
                continue
            meta.fail(f"metadata key {key!r} = {value!r}: TransformerLM has no such feature")
    dim = meta.get(f"{arch}.embedding_length", "int")
    n_heads = meta.get(f"{arch}.attention.head_count", "int")
    n_kv = meta.get(f"{arch}.attention.head_count_kv", "int", required=False) or n_heads
    if dim < 1 or n_heads < 1 or dim % n_heads or n_heads % n_kv:
        meta.fail(f"embedding_length {dim}, head_count {n_heads}, head_count_kv {n_kv} "
                  "do not split into heads")  # fmt: skip
    head_dim = dim // n_heads
    for key in (f"{arch}.rope.dimension_count", f"{arch}.attention.key_length",
                f"{arch}.attention.value_length"):  # fmt: skip
        value = meta.get(key, "int", required=False)
        if value is not None and value != head_dim:
            meta.fail(f"{key} = {value}, but TransformerLM needs the head width {head_dim}")
    eps = meta.get(f"{arch}.attention.layer_norm_rms_epsilon", "float")
    theta = meta.get(f"{arch}.rope.freq_base", "float", required=False)
    return {
        "dim": dim,
        "n_layers": meta.get(f"{arch}.block_count", "int"),
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "ffn_dim": meta.get(f"{arch}.feed_forward_length", "int"),
        "max_seq_len": meta.get(f"{arch}.context_length", "int"),
        "rope_theta": 10000.0 if theta is None else theta,  # llama.cpp's default
        "norm_eps": eps,
    }


def read_llama(reader, meta, dequantize: bool, fmt: str, activations: str = "float32"):
    """Build a TransformerLM from a ``llama`` GGUF (the reader :func:`load_gguf` calls).

    TQ2_0/TQ1_0 projections become :class:`PackedProjection` layers in packed ``fmt`` holding
    exactly the file's ternaries (at the coarsest granularity their block scales allow); F32,
    F16 and BF16 tensors are read as float32; other types (Q4_1, Q8_0, K-quants, ...) only with
    ``dequantize=True``, through ``gguf.quants.dequantize`` (a warning counts them).
    """
    gguf = gguf_io.require_gguf()
    cfg = _llama_config(meta)
    tensors = gguf_io._Tensors(reader, meta)
    dequantized: Counter = Counter()

    def floats(name, shape):
        t = tensors.take(name)
        kind = t.tensor_type.name
        got = gguf_io._numpy_shape(t)
        if got != tuple(shape):
            meta.fail(f"tensor {name!r} has shape {list(got)}, the metadata needs {list(shape)}")
        if kind in ("F32", "F16"):
            return np.array(t.data, dtype=np.float32).reshape(shape)
        if kind not in ("BF16",) and kind not in ("TQ1_0", "TQ2_0") and not dequantize:
            meta.fail(
                f"tensor {name!r} is {kind}, a quantization ternref does not compute with; "
                "pass dequantize=True to read it as float32 through gguf's dequantizer"
            )
        if kind != "BF16":
            dequantized[kind] += 1
        return gguf.quants.dequantize(np.array(t.data), t.tensor_type).reshape(shape)

    embd = tensors.by_name.get("token_embd.weight")
    if embd is None:
        meta.fail("tensor 'token_embd.weight' is missing")
    vocab_size, dim = gguf_io._numpy_shape(embd)
    if dim != cfg["dim"]:
        meta.fail(f"token_embd.weight is {vocab_size}x{dim}, embedding_length is {cfg['dim']}")
    declared = meta.get("llama.vocab_size", "int", required=False)
    if declared is not None and declared != vocab_size:
        meta.fail(f"llama.vocab_size = {declared}, token_embd.weight has {vocab_size} rows")
    tied = "output.weight" not in tensors.by_name
    model = TransformerLM(vocab_size, tie_embeddings=tied, init_std=0.0, **cfg)
    model.token_embd.weight.data[...] = floats("token_embd.weight", (vocab_size, dim))
    model.output_norm.weight.data[...] = floats("output_norm.weight", (dim,))
    if not tied:
        model.output.weight.data[...] = floats("output.weight", (vocab_size, dim))

    layers = projection_layers(model)
    for n, blk in enumerate(model.blocks):
        blk.attn_norm.weight.data[...] = floats(f"blk.{n}.attn_norm.weight", (dim,))
        blk.ffn_norm.weight.data[...] = floats(f"blk.{n}.ffn_norm.weight", (dim,))
        for path_in_block, stem in PROJECTIONS.items():
            lname, tname = f"blocks.{n}.{path_in_block}", f"blk.{n}.{stem}.weight"
            layer = layers[lname]
            shape = (layer.out_features, layer.in_features)
            heads = None
            if path_in_block in _ROPE_PERMUTED:
                heads = model.n_heads if path_in_block == "attn.q_proj" else model.n_kv_heads
            t = tensors.by_name.get(tname)
            if t is not None and t.tensor_type.name in ("TQ1_0", "TQ2_0"):
                tensors.take(tname)
                if gguf_io._numpy_shape(t) != shape:
                    meta.fail(f"tensor {tname!r} has shape {list(gguf_io._numpy_shape(t))}, "
                              f"the metadata needs {list(shape)}")  # fmt: skip
                raw = np.array(t.data, dtype=np.uint8).reshape(shape[0], -1)
                try:
                    codes, d = tq.decode(raw, t.tensor_type.name.lower())
                except ValueError as e:
                    meta.fail(f"tensor {tname!r}: {e}")
                blocks = Ternary(codes, d.astype(np.float32), granularity="group",
                                 group_size=tq.QK)  # fmt: skip
                if heads is not None:
                    blocks = _permute_ternary(blocks, lambda a, h=heads: from_gguf_rows(a, h))
                packed = pack(_simplest(blocks), fmt)
                _set(model, lname, PackedProjection(packed, activations))
            else:
                w = floats(tname, shape)
                layer.weight.data[...] = w if heads is None else from_gguf_rows(w, heads)
    extra = sorted(set(tensors.by_name) - tensors.claimed)
    if extra:
        meta.fail(f"unexpected tensors {extra[:8]}{' ...' if len(extra) > 8 else ''}: "
                  "TransformerLM has no place for them (biases, rope_freqs, ...)")  # fmt: skip
    if dequantized:
        counts = ", ".join(f"{k} x{v}" for k, v in sorted(dequantized.items()))
        warnings.warn(
            f"load_gguf: dequantized {counts} tensors to float32 with gguf.quants.dequantize",
            UserWarning,
            stacklevel=3,
        )
    return model.eval()


# ------------------------------------------------------------------------- evaluation


def perplexity(model: TransformerLM, ids, context: int) -> dict:
    """Perplexity of ``model`` on the token stream ``ids``, in non-overlapping windows.

    The stream is cut into windows of ``context`` tokens (the last one shorter); each window is
    one forward from an empty context, and every token but a window's first is predicted from
    the tokens before it in its window. ``ppl = exp(mean NLL)`` over those predictions.

    Returns
    -------
    dict
        ``ppl``, ``nll`` (mean, nats), ``tokens`` (number of predictions), ``windows``.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.size < 2:
        raise ValueError(f"ids must be a 1-D stream of at least 2 tokens, got shape {ids.shape}")
    context = integer(context, "context", low=2, high=model.max_seq_len)
    total, count, windows = 0.0, 0, 0
    for start in range(0, ids.size - 1, context):
        window = ids[start : start + context]
        if window.size < 2:
            break
        logits = model.forward(window[None, :-1])[0].astype(np.float64)
        z = logits - logits.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        total -= float(logp[np.arange(window.size - 1), window[1:]].sum())
        count += window.size - 1
        windows += 1
    nll = total / count
    return {"ppl": math.exp(nll), "nll": nll, "tokens": count, "windows": windows}


gguf_io._READERS[ARCHITECTURE] = read_llama
