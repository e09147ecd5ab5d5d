"""llama.cpp ``bitnet`` GGUF files <-> a ternref BitNet b1.58 LM with shared SubLNs.

A BitNet b1.58 :class:`~ternref.nn.TransformerLM` trained by ternref
(``ternref lm train --method bitnet --subln shared``, i.e.
``quantize_transformer(model, bitnet, subln="shared")``) is written by :func:`save_bitnet` as a
GGUF file of llama.cpp's ``bitnet`` architecture, which llama.cpp runs, and read back by
:func:`read_bitnet` (what :func:`ternref.interop.load_gguf` calls for
``general.architecture = "bitnet"``).

The mapping
-----------
llama.cpp's graph (``src/models/bitnet.cpp``, ``llama_model_bitnet::graph``) for one block is::

    cur = rms_norm(x) * attn_norm                         -> q, k, v = wq cur, wk cur, wv cur
    q, k = rope(q), rope(k)        (LLAMA_ROPE_TYPE_NEOX: pairs (i, i + d/2), "rotate_half")
    a   = softmax(q k^T / sqrt(d) + causal mask) v
    h   = x + wo (rms_norm(a) * attn_sub_norm)
    cur = rms_norm(h) * ffn_norm                          -> silu(ffn_gate cur) * (ffn_up cur)
    y   = h + ffn_down (rms_norm(that) * ffn_sub_norm)

then ``rms_norm(y) * output_norm`` and the logits ``token_embd^T`` of it (the output head is
always the embedding: the loader creates no ``output`` tensor). Each ``w cur`` is
``build_lora_mm(w, cur, w_s)``: ``ggml_mul_mat`` then, if the optional tensor ``.scale`` is
present, a multiplication by it. The ternref model with ``subln="shared"`` computes exactly
this structure:

=================================  =====================================================
ternref (``blocks[N]``)            GGUF tensor (``blk.N.``)
=================================  =====================================================
``attn_norm.weight``               ``attn_norm.weight``      (dim)   shared by q, k, v
``attn.{q,k,v}_proj.weight``       ``attn_{q,k,v}.weight``   TQ2_0, no row permutation
``attn.o_proj.input_norm.weight``  ``attn_sub_norm.weight``  (dim)
``attn.o_proj.weight``             ``attn_output.weight``    TQ2_0
``ffn_norm.weight``                ``ffn_norm.weight``       (dim)   shared by gate, up
``ffn.{gate,up}_proj.weight``      ``ffn_{gate,up}.weight``  TQ2_0
``ffn.down_proj.input_norm``       ``ffn_sub_norm.weight``   (ffn_dim)
``ffn.down_proj.weight``           ``ffn_down.weight``       TQ2_0
``token_embd`` / ``output_norm``   ``token_embd.weight`` / ``output_norm.weight``   F32
=================================  =====================================================

(tensor names from ``LLM_TENSOR_NAMES`` in ``src/llama-arch.cpp`` and ``MODEL_TENSORS[BITNET]``
of ``gguf-py/gguf/constants.py``; shapes from ``llama_model_bitnet::load_arch_tensors``: q and
o are ``dim x dim``, k and v ``dim x n_kv_heads * head_dim``). RoPE: ``llama_model_rope_type``
lists ``LLM_ARCH_BITNET`` under "the pairs of head values are offset by n_rot/2" (NEOX), which
is ternref's :class:`~ternref.nn.attention.RoPE`, so unlike the ``llama`` export no q/k row
permutation is written. Every RMSNorm of llama.cpp's graph uses the one
``bitnet.attention.layer_norm_rms_epsilon`` (the only key ``load_arch_hparams`` reads for this
architecture; required), so every norm of the model must have ``norm_eps``. The generic
hyper-parameters (``llama_model_base::load_hparams``) are the ``llama`` ones under
``bitnet.*``: ``context_length``, ``embedding_length``, ``block_count`` (required),
``feed_forward_length``, ``attention.head_count``, ``attention.head_count_kv``,
``rope.dimension_count``, ``rope.freq_base``. llama.cpp's converter for Microsoft's checkpoint
(``conversion/bitnet.py``) also writes ``rope.scaling.type = linear`` with factor 1.0, which
changes nothing; :func:`save_bitnet` writes no scaling key.

The scale
---------
The ternary weight of a BitNet projection is ``w_hat = alpha c`` with one absmean scale
``alpha`` for the tensor. TQ2_0 (:mod:`ternref.interop.tq`) stores an fp16 scale ``d`` in every
block of 256 weights, and ggml's TQ2_0 x Q8_K dot product multiplies each block's integer sum by
``d`` (``ggml_vec_dot_tq2_0_q8_K``): writing ``d = fp16(alpha)`` in every block makes the
product ``alpha c x`` with no further tensor. The optional ``.scale`` tensors
(``TENSOR_NOT_REQUIRED``) are then *not needed* and :func:`save_bitnet` writes none: they exist
for files whose blocks hold ``d = 1`` (llama.cpp's converter writes ``w_hat`` in float and
``llama-quantize`` recomputes ``d`` per block, so it writes none either). The only cost is the
fp16 rounding of ``alpha`` (relative error <= 2^-11), reported per tensor by the returned
:class:`~ternref.interop.gguf_io.ExportReport`, and the model read back holds exactly the fp16
scales written.

Activations
-----------
ternref's BitLinear quantizes its normalised input to int8 with one absmax scale per token (the
whole row); llama.cpp quantizes every activation of a TQ2_0 product to ``Q8_K``: one scale per
block of 256 values (:mod:`ternref.interop.q8k`), i.e. per token when the row has 256 values
and finer for longer rows (``ffn_down``'s input of ``ffn_dim`` values). The two grids are the
same where a row is one block (``d = max|x| / 127``; Q8_K's sign convention flips ``q`` and
``d`` together), so the two forwards differ by the per-block rescaling of long rows, plus
float32 summation order. :func:`q8k_activations` swaps a model's int8 activation quantizers for
Q8_K ones: that model computes what llama.cpp computes; the tests measure both differences.

What cannot be written
----------------------
:func:`save_bitnet` refuses (``ValueError``, the projection named, nothing written): the default
per-projection SubLN (a norm inside q, k, v, gate or up that follows no shared norm, or blocks
without their norms: the ``bitnet`` graph has one norm per input, see
:mod:`ternref.interop.llama` for why a second norm cannot be folded), a projection that is not
a BitLinear with int8 activations (float activations would be Q8_K in llama.cpp anyway), a
SubLN missing before o or down, norms whose ``eps`` is not ``norm_eps``, biases, an untied
output head, and ternaries TQ2_0 cannot hold exactly (rows not a multiple of 256, asymmetric
scales, offsets: ``gguf_io.ternary_tensors`` with ``pad=False, split=False``).

References
----------
llama.cpp: ``src/models/bitnet.cpp``, ``src/llama-model.cpp`` (``llama_model_rope_type``,
``load_hparams``), ``src/llama-graph.cpp`` (``build_lora_mm``, ``build_qkv``, ``build_ffn``),
``src/llama-arch.cpp``, ``gguf-py/gguf/constants.py``, ``conversion/bitnet.py``; read in the
copy vendored by llama-cpp-python 0.3.36. https://github.com/ggml-org/llama.cpp. Ma et al.,
"BitNet b1.58 2B4T Technical Report", arXiv:2504.12285, 2025 (the SubLN placement).
"""

from __future__ import annotations

import numpy as np

import ternref
from ternref._validate import describe, one_of
from ternref.interop import gguf_io, q8k, tq
from ternref.interop.llama import (
    PROJECTIONS,
    PackedProjection,
    _get,
    _llama_config,
    _set,
    _simplest,
    write_vocabulary,
)
from ternref.methods.bitlinear import BitLinear
from ternref.methods.bitnet import BitNetActivation
from ternref.nn.module import Module
from ternref.nn.norms import RMSNorm
from ternref.nn.transformer import TransformerLM
from ternref.packed import FORMATS, pack
from ternref.ternary import Ternary

ARCHITECTURE = "bitnet"

#: projections that read a shared (block) norm, and those with their own SubLN -> its tensor
SHARED = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "ffn.gate_proj", "ffn.up_proj")
SUB_NORMS = {"attn.o_proj": "attn_sub_norm", "ffn.down_proj": "ffn_sub_norm"}

_FILE_TYPE = {"tq1_0": 36, "tq2_0": 37}  # llama_ftype (include/llama.h)


# ------------------------------------------------------------------------- layers


class Q8KActivation(Module):
    """``x -> Q8_K(x)`` dequantized (:func:`ternref.interop.q8k.q8k_dequantize`): the
    activations llama.cpp's TQ kernels multiply. Inference only; rows of a multiple of 256."""

    def forward(self, x):
        return q8k.q8k_dequantize(x).astype(np.asarray(x).dtype, copy=False)

    def backward(self, dy):
        raise RuntimeError("Q8KActivation is inference only: it has no backward")


class PackedBitLinear(Module):
    """A BitLinear for inference: optional SubLN (RMSNorm), then a packed ternary product with
    int8 activations (absmax per token, :class:`PackedProjection`).

    ``y = Q8(RMSNorm(x)) W_hat^T``; the packed kernel's int8 quantizer is BitNet's up to a code
    at a rounding boundary now and then (see :class:`ternref.methods.bitnet.BitNetActivation`).
    """

    def __init__(self, packed, input_norm: RMSNorm | None = None, activations: str = "int8"):
        super().__init__()
        self.input_norm = input_norm
        self.proj = PackedProjection(packed, activations)
        self.in_features, self.out_features = self.proj.in_features, self.proj.out_features
        self.training = False

    @property
    def ternary(self) -> Ternary:
        return self.proj.ternary

    def forward(self, x):
        if self.input_norm is not None:
            x = self.input_norm(x)
        return self.proj(x)

    def backward(self, dy):
        raise RuntimeError("PackedBitLinear is inference only: it has no backward")

    def __repr__(self) -> str:
        return f"PackedBitLinear(subln={self.input_norm is not None}, {self.proj!r})"


# ------------------------------------------------------------------------- checking


def _layer_ternary(layer) -> Ternary:
    if isinstance(layer, PackedBitLinear):
        return layer.ternary
    return layer.to_ternary()


def bitnet_layout(model) -> dict:
    """``{"blocks.N.attn.q_proj": Ternary, ...}`` of a model llama.cpp's ``bitnet`` computes.

    Raises
    ------
    TypeError
        ``model`` is not a TransformerLM.
    ValueError
        The model's structure is not the ``bitnet`` graph (see the module docstring), each
        problem named.
    """
    if not isinstance(model, TransformerLM):
        raise TypeError(f"save_bitnet expects a ternref.nn.TransformerLM, got {describe(model)}")
    problems = []
    if not model.tie_embeddings:
        problems.append("the output head is untied (llama.cpp's bitnet always uses token_embd)")
    eps = model.norm_eps
    out = {}
    placement = []  # where the model has the per-projection SubLN placement
    for n, blk in enumerate(model.blocks):
        for attr in ("attn_norm", "ffn_norm"):
            norm = getattr(blk, attr)
            if not isinstance(norm, RMSNorm):
                placement.append(f"blocks.{n}.{attr} is {type(norm).__name__}")
            elif norm.eps != eps:
                problems.append(f"blocks.{n}.{attr} has eps {norm.eps}, norm_eps is {eps}")
        for path in PROJECTIONS:
            name = f"blocks.{n}.{path}"
            layer = _get(blk, path)
            if isinstance(layer, PackedBitLinear):
                has_norm = layer.input_norm is not None
                norm = layer.input_norm
            elif isinstance(layer, BitLinear):
                has_norm = layer.input_norm is not None
                norm = layer.input_norm
                if not isinstance(layer.activation_quantizer, BitNetActivation):
                    problems.append(
                        f"{name} has activations "
                        f"{describe(layer.activation_quantizer)}, not BitNet's int8"
                    )
                if layer.bias is not None:
                    problems.append(f"{name} has a bias (the bitnet graph has none)")
            else:
                problems.append(
                    f"{name} is {type(layer).__name__}, not a BitLinear (quantize the model "
                    "with quantize_transformer(model, bitnet, subln='shared'))"
                )
                continue
            if path in SHARED and has_norm:
                placement.append(f"{name} has its own SubLN")
            if path in SUB_NORMS and not has_norm:
                problems.append(f"{name} has no SubLN ({SUB_NORMS[path]} is required)")
            if norm is not None and norm.eps != eps:
                problems.append(f"{name}'s SubLN has eps {norm.eps}, norm_eps is {eps}")
            try:
                out[name] = _layer_ternary(layer)
            except (TypeError, ValueError, AttributeError) as e:
                problems.append(f"{name}: no ternary weight ({e})")
    if placement:
        problems.insert(
            0,
            "it has the per-projection SubLN placement (quantize_transformer's default, "
            "subln='projection': "
            + ", ".join(placement[:4])
            + (", ..." if len(placement) > 4 else "")
            + "), which llama.cpp's bitnet graph cannot express: it normalises the input of "
            "q/k/v once (attn_norm) and of gate/up once (ffn_norm), and a second RMSNorm is "
            "no linear map to fold; train with subln='shared' (`ternref lm train --method "
            "bitnet --subln shared`)",
        )
    if problems:
        raise ValueError(
            "this model cannot be written as llama.cpp's bitnet architecture: "
            + "; ".join(problems)
        )
    return out


# ------------------------------------------------------------------------- writing


def save_bitnet(
    model: TransformerLM,
    path,
    *,
    quant: str = "tq2_0",
    vocabulary: str = "bytes",
    name: str | None = None,
) -> gguf_io.ExportReport:
    """Write a shared-SubLN BitNet b1.58 ``model`` as a llama.cpp ``bitnet`` GGUF file.

    Parameters
    ----------
    model : TransformerLM
        Quantized by ``quantize_transformer(model, methods.get("bitnet"), subln="shared")``
        (trained or not; the ternaries written are each BitLinear's ``to_ternary()``, the
        weights of its evaluation forward), or read back by :func:`read_bitnet` /
        packed by :func:`pack_bitnet`.
    path : str or os.PathLike
    quant : {"tq2_0", "tq1_0"}
        Type of the seven projections of every block.
    vocabulary : {"bytes", "none"}
        As :func:`ternref.interop.save_llama` (``"bytes"`` needs ``vocab_size == 256``).
    name : str, optional
        ``general.name``.

    Returns
    -------
    ExportReport
        Every tensor with its type and the error of its fp16 block scales.

    Raises
    ------
    ValueError
        A model that the ``bitnet`` graph does not compute (:func:`bitnet_layout`) or a ternary
        TQ cannot hold exactly; nothing is written then.
    """
    gguf = gguf_io.require_gguf()
    one_of(quant, "quant", tq.QUANTS)
    one_of(vocabulary, "vocabulary", ("bytes", "none"))
    ternary = bitnet_layout(model)
    if vocabulary == "bytes" and model.vocab_size != 256:
        raise ValueError(
            f"vocabulary='bytes' needs vocab_size 256 (one token per byte), the model has "
            f"{model.vocab_size}; use vocabulary='none' for a file of token ids only"
        )
    plan = gguf_io._Plan(gguf, "f32")
    report = gguf_io.ExportReport(path=str(path), quant=quant)
    problems = []
    qtype = gguf.GGMLQuantizationType[quant.upper()]
    for n, blk in enumerate(model.blocks):
        plan.float_tensor(f"blk.{n}.attn_norm.weight", blk.attn_norm.weight.data, n, "norm")
        plan.float_tensor(f"blk.{n}.ffn_norm.weight", blk.ffn_norm.weight.data, n, "norm")
        for path_in_block, stem in PROJECTIONS.items():
            lname = f"blocks.{n}.{path_in_block}"
            if path_in_block in SUB_NORMS:
                gain = _get(blk, path_in_block).input_norm.weight.data
                plan.float_tensor(f"blk.{n}.{SUB_NORMS[path_in_block]}.weight", gain, n, "norm")
            tname = f"blk.{n}.{stem}.weight"
            t = ternary[lname]
            tensors, _, problem = gguf_io.ternary_tensors(
                tname, t, quant, pad=False, split=False, layer=n
            )
            if problem:
                problems.append(f"{lname} ({tname}, {t.shape}): {problem}")
                continue
            ((_, raw, row),) = tensors
            plan.tensors.append((tname, raw, qtype))
            plan.rows.append(row)
    if problems:
        raise ValueError(
            "save_bitnet: these projections cannot be TQ tensors that llama.cpp computes "
            "exactly (it knows neither padding nor split parts): "
            + "; ".join(problems)
            + ". Nothing was written."
        )
    plan.float_tensor("token_embd.weight", model.token_embd.weight.data, -1, "embedding")
    plan.float_tensor("output_norm.weight", model.output_norm.weight.data, -1, "norm")
    report.tensors = plan.rows

    writer = gguf.GGUFWriter(path, ARCHITECTURE)
    try:
        writer.add_name(name or "ternref BitNet b1.58 (shared SubLN)")
        writer.add_file_type(_FILE_TYPE[quant])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(model.max_seq_len)
        writer.add_embedding_length(model.dim)
        writer.add_block_count(model.n_layers)
        writer.add_feed_forward_length(model.ffn_dim)
        writer.add_head_count(model.n_heads)
        writer.add_head_count_kv(model.n_kv_heads)
        writer.add_rope_dimension_count(model.dim // model.n_heads)
        writer.add_rope_freq_base(float(model.rope.theta))
        writer.add_layer_norm_rms_eps(float(model.norm_eps))
        writer.add_vocab_size(model.vocab_size)
        write_vocabulary(writer, vocabulary)
        writer.add_string("ternref.version", ternref.__version__)
        writer.add_string("ternref.projection", "bitnet")
        writer.add_string("ternref.subln", "shared")
        for tname, array, raw_dtype in plan.tensors:
            writer.add_tensor(tname, array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return report


# ------------------------------------------------------------------------- reading


def read_bitnet(reader, meta, dequantize: bool, fmt: str):
    """Build the BitNet LM of a ``bitnet`` GGUF (the reader :func:`load_gguf` calls).

    Returns a ``TransformerLM`` quantized as ``subln="shared"`` whose projections are
    :class:`~ternref.methods.bitlinear.BitLinear` layers (int8 activations per token, BitNet's
    eps) holding exactly the file's ternaries (``ternref.lm.io.StoredTernary``), in evaluation
    mode: ternref's forward of the file, computed densely. :func:`pack_bitnet` turns it into
    the packed inference model; ``fmt`` (``load_gguf``'s ``format``) does not apply here.
    The projections must be TQ2_0 or TQ1_0 (``dequantize`` does not apply either).
    """
    from ternref.lm.io import StoredTernary

    del dequantize, fmt
    cfg = _llama_config(meta, ARCHITECTURE)
    tensors = gguf_io._Tensors(reader, meta)

    def floats(name, shape):
        t = tensors.take(name)
        got = gguf_io._numpy_shape(t)
        if got != tuple(shape):
            meta.fail(f"tensor {name!r} has shape {list(got)}, the metadata needs {list(shape)}")
        if t.tensor_type.name not in ("F32", "F16"):
            meta.fail(f"tensor {name!r} is {t.tensor_type.name}; ternref reads it as F32/F16")
        return np.array(t.data, dtype=np.float32).reshape(shape)

    embd = tensors.by_name.get("token_embd.weight")
    if embd is None:
        meta.fail("tensor 'token_embd.weight' is missing")
    vocab_size, dim = gguf_io._numpy_shape(embd)
    if dim != cfg["dim"]:
        meta.fail(f"token_embd.weight is {vocab_size}x{dim}, embedding_length is {cfg['dim']}")
    model = TransformerLM(vocab_size, tie_embeddings=True, init_std=0.0, **cfg)
    model.token_embd.weight.data[...] = floats("token_embd.weight", (vocab_size, dim))
    model.output_norm.weight.data[...] = floats("output_norm.weight", (dim,))
    for n, blk in enumerate(model.blocks):
        blk.attn_norm.weight.data[...] = floats(f"blk.{n}.attn_norm.weight", (dim,))
        blk.ffn_norm.weight.data[...] = floats(f"blk.{n}.ffn_norm.weight", (dim,))
        for path_in_block, stem in PROJECTIONS.items():
            lname, tname = f"blocks.{n}.{path_in_block}", f"blk.{n}.{stem}.weight"
            layer = _get(blk, path_in_block)
            shape = (layer.out_features, layer.in_features)
            t = tensors.take(tname)
            if t.tensor_type.name not in ("TQ1_0", "TQ2_0"):
                meta.fail(f"tensor {tname!r} is {t.tensor_type.name}, not TQ2_0/TQ1_0")
            if gguf_io._numpy_shape(t) != shape:
                meta.fail(f"tensor {tname!r} has shape {list(gguf_io._numpy_shape(t))}, "
                          f"the metadata needs {list(shape)}")  # fmt: skip
            raw = np.array(t.data, dtype=np.uint8).reshape(shape[0], -1)
            try:
                codes, d = tq.decode(raw, t.tensor_type.name.lower())
            except ValueError as e:
                meta.fail(f"tensor {tname!r}: {e}")
            blocks = Ternary(codes, d.astype(np.float32), granularity="group", group_size=tq.QK)
            own = path_in_block in SUB_NORMS
            new = BitLinear.from_linear(layer, StoredTernary([_simplest(blocks)]),
                                        activation_quantizer=BitNetActivation(),
                                        input_norm=own, norm_eps=model.norm_eps)  # fmt: skip
            if own:
                new.input_norm.weight.data[...] = floats(
                    f"blk.{n}.{SUB_NORMS[path_in_block]}.weight", (layer.in_features,)
                )
            _set(model, lname, new)
    extra = sorted(set(tensors.by_name) - tensors.claimed)
    if extra:
        meta.fail(f"unexpected tensors {extra[:8]}{' ...' if len(extra) > 8 else ''}: "
                  "ternref's BitNet LM has no place for them (.scale tensors, biases, output, "
                  "...)")  # fmt: skip
    return model.eval()


# ------------------------------------------------------------------------- other forwards


def pack_bitnet(model: TransformerLM, format: str = "i2") -> TransformerLM:
    """Replace every BitLinear of a shared-SubLN BitNet LM by a :class:`PackedBitLinear`.

    ternref's packed inference path (Numba kernels, int8 activations per token). In place;
    returns ``model``. The SubLN gains are copied.
    """
    one_of(format, "format", FORMATS)
    ternary = bitnet_layout(model)
    for name, t in ternary.items():
        layer = _get(model, name)
        if isinstance(layer, PackedBitLinear):
            continue
        norm = None
        if layer.input_norm is not None:
            norm = RMSNorm(layer.in_features, layer.input_norm.eps)
            norm.weight.data[...] = layer.input_norm.weight.data
        _set(model, name, PackedBitLinear(pack(t, format), norm))
    return model.eval()


def q8k_activations(model: TransformerLM) -> TransformerLM:
    """Give every BitLinear Q8_K activations (:class:`Q8KActivation`) in place of int8 per
    token: the model then computes what llama.cpp's TQ kernels compute. In place."""
    bitnet_layout(model)
    for _, layer in _bitlinears(model):
        layer.activation_quantizer = Q8KActivation()
    return model


def float_activations(model: TransformerLM) -> TransformerLM:
    """Remove every BitLinear's activation quantizer (float activations). In place."""
    for _, layer in _bitlinears(model):
        layer.activation_quantizer = None
    return model


def _bitlinears(model):
    for n, blk in enumerate(model.blocks):
        for path in PROJECTIONS:
            layer = _get(blk, path)
            if isinstance(layer, BitLinear):
                yield f"blocks.{n}.{path}", layer


gguf_io._READERS[ARCHITECTURE] = read_bitnet
