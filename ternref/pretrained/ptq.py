"""Post-training ternarization of all-MiniLM-L6-v2 by every registered projection function.

Each projection of :mod:`ternref.projections` whose ``input_kind`` is ``"weights"`` is applied,
without any training, to the 36 weight matrices of the encoder (per layer: query, key, value,
attention output, FFN in ``intermediate`` and FFN out ``output``), at every granularity it
supports among ``"tensor"`` and ``"channel"`` (one scale per output row); a projection without
a ``granularity`` argument runs at its own (per tensor for most; FGQ's groups of 4 weights along
a row). Biases, LayerNorms and, by default, the three embedding tables stay in full precision;
``embeddings=True`` ternarizes the tables too (the same projection; "channel" is then one scale
per table row, i.e. per token, as TernaryBERT does for its word embeddings). A stochastic
projection (TernaryConnect) draws from one ``numpy.random.Generator`` seeded with ``seed``, the
matrices taken in a fixed order. STTN (two binary kernels) and TernGrad (gradients) are not
weight projections and are left out.

Measured per projection and granularity (:func:`ptq_minilm`)
-----------------------------------------------------------
* ``rel_err_mean`` / ``rel_err_max``: ``||W - W_hat||_F / ||W||_F`` over the 36 matrices;
* ``sparsity``: zero codes / all codes of the 36 matrices;
* ``bits_per_weight``: 2-bit codes plus 32 bits per stored scale (``Ternary.storage_bits``),
  summed over the 36 matrices, divided by their weights;
* ``cosine``: mean over the held-out sentences of ``e_float . e_ternary`` (both unit vectors);
* ``overlap10``: over a pool of sentences (the same held-out sentences), each one a query
  against all the others, ``|top10_float & top10_ternary| / 10``, averaged over queries;
* ``mrr``: for each query, the rank ``r`` (1 = best) of the float model's nearest neighbour in
  the ternary model's ranking of the other sentences; the mean of ``1 / r``.

Rankings order by decreasing dot product; ties keep the lower index first (stable sort).

Packed inference (:func:`packed_encoder`, :func:`packed_check`)
-------------------------------------------------------------
The ternarized encoder's 36 ``Linear`` layers are replaced by :class:`ternref.packed.PackedLinear`
(format ``"i2"``, ``activations="int8"``: each row of the layer input is quantized absmax to
int8, ``xq = clip(rint(127 x / max|x|), -127, 127)``, and the integer products are exact).
What that changes, layer by layer, is bounded: with ``s = max_i |x_i| / 127`` the rounding moves
each input by at most ``s / 2``, so for output ``j``::

    |y_int8_j - y_j| = |sum_i W_hat_ji (x_i - s xq_i)| <= (s / 2) sum_i |W_hat_ji|
                                                       = max|x| alpha_j nnz_j / 254

(``nnz_j`` the non-zero codes of row ``j``; float32 rounding of the result comes on top). This is
the tolerance of one packed layer, and :func:`layer_int8_check` checks it on every one of the 36
layers with their real inputs. Through six layers with LayerNorm, softmax and GELU no such bound
survives in closed form, so the end-to-end claim is made in two parts:

1. The packed encoder *is* the dense ternary encoder whose linear inputs are rounded to int8 the
   same way (:class:`Int8DenseLinear`): layer by layer the two agree to float32 rounding
   (``max_rel_vs_int8_dense``, about 1e-7). End to end most sentences get the same embedding
   within ``PACKED_ATOL`` (``identical_fraction``); the others are sentences where a float32
   rounding difference put a value on the other side of a rounding boundary of the next int8
   grid, which moves that input by a whole step ``s``; after that the two encoders round
   differently downstream, and they differ by as much as two draws of the int8 error differ.
2. The distance between the packed and the float-activation ternary encoder is therefore the int8
   activation error, reported as the mean and minimum cosine; as a yardstick, the same is
   measured for the float model with int8-rounded linear inputs (``float_int8_cosine``).
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ternref import projections
from ternref._machine import summary
from ternref._validate import generator, integer
from ternref.nn.layers import Linear
from ternref.nn.module import Module
from ternref.packed import PackedLinear, pack, quantize_activations

__all__ = [
    "MATRIX_PARTS",
    "PACKED_ATOL",
    "ProjectionSpec",
    "PTQRow",
    "PTQReport",
    "Int8DenseLinear",
    "PackedEncoderLinear",
    "projection_specs",
    "weight_matrices",
    "ternarize_encoder",
    "retrieval_agreement",
    "packed_encoder",
    "int8_dense_encoder",
    "packed_check",
    "packed_check_encoder",
    "layer_int8_check",
    "ptq_minilm",
    "format_table",
]

#: The six weight matrices of each layer, as ``BertEncoder.hf_tensors`` names them.
MATRIX_PARTS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
EMBEDDING_TABLES = (
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
)
#: A sentence whose packed and int8-dense unit embeddings agree within this is "identical"
#: (float32 rounding, about 1e-7, with margin; see the module docstring).
PACKED_ATOL = 1e-5
GRANULARITIES = ("tensor", "channel")


# --------------------------------------------------------------------------- projections


@dataclass(frozen=True)
class ProjectionSpec:
    """One projection at one granularity (``None``: the projection's own)."""

    name: str
    granularity: str | None

    @property
    def label(self) -> str:
        return self.name if self.granularity is None else f"{self.name}/{self.granularity}"

    def project(self, w: np.ndarray, rng: np.random.Generator):
        info = projections.get(self.name)
        kwargs = {} if self.granularity is None else {"granularity": self.granularity}
        if not info.deterministic:
            kwargs["rng"] = rng
        return info.fn(w, **kwargs)


def _supports_granularity(name: str) -> bool:
    return "granularity" in inspect.signature(projections.get(name).fn).parameters


def projection_specs(names=None, granularities=GRANULARITIES) -> list[ProjectionSpec]:
    """Every weight projection (or those in ``names``) at each granularity it supports.

    Raises ``ValueError`` for a name that is not a registered weight projection.
    """
    weight_names = [n for n in projections.names() if projections.get(n).input_kind == "weights"]
    if names is None:
        names = weight_names
    specs = []
    for name in names:
        if name not in weight_names:
            raise ValueError(
                f"{name!r} is not a registered weight projection; known: {', '.join(weight_names)}"
            )
        if _supports_granularity(name):
            specs.extend(ProjectionSpec(name, g) for g in granularities)
        else:
            specs.append(ProjectionSpec(name, None))
    return specs


def parse_spec(text: str) -> ProjectionSpec:
    """``"twn"`` or ``"twn/channel"`` -> :class:`ProjectionSpec` (checked)."""
    name, _, gran = text.partition("/")
    specs = projection_specs([name])
    for spec in specs:
        if spec.granularity == (gran or specs[0].granularity):
            return spec
    raise ValueError(
        f"projection {name!r} has granularities "
        f"{', '.join(str(s.granularity) for s in specs)}, not {gran!r}"
    )


# ------------------------------------------------------------------------ ternarizing


def weight_matrices(encoder) -> dict[str, Linear]:
    """``{hf name of the weight: Linear}`` for the 36 (``6 n_layers``) linear layers."""
    out = {}
    for n, layer in enumerate(encoder.layers):
        modules = (
            layer.attention.q_proj,
            layer.attention.k_proj,
            layer.attention.v_proj,
            layer.attention.o_proj,
            layer.intermediate,
            layer.output,
        )
        for part, module in zip(MATRIX_PARTS, modules):
            out[f"encoder.layer.{n}.{part}.weight"] = module
    return out


def ternarize_encoder(encoder, spec: ProjectionSpec, rng=None, embeddings: bool = False):
    """A copy of ``encoder`` whose weights are ``W_hat = spec.project(W)``.

    Returns
    -------
    (BertEncoder, dict)
        The copy and ``{hf name: Ternary}`` of every ternarized tensor (the 36 matrices, plus
        the three embedding tables with ``embeddings=True``).
    """
    rng = np.random.default_rng(0) if rng is None else generator(rng)
    out = copy.deepcopy(encoder)
    ternaries = {}
    for name, layer in weight_matrices(out).items():
        t = spec.project(layer.weight.data, rng)
        ternaries[name] = t
        layer.weight.data[...] = t.dense()
    if embeddings:
        tensors = out.hf_tensors()
        for name in EMBEDDING_TABLES:
            t = spec.project(tensors[name].data, rng)
            ternaries[name] = t
            tensors[name].data[...] = t.dense()
    return out, ternaries


def weight_stats(encoder, ternaries: dict) -> dict:
    """Relative errors, sparsity and bits per weight over the 36 matrices."""
    errors, zeros, bits, size = [], 0, 0.0, 0
    for name, layer in weight_matrices(encoder).items():
        w = layer.weight.data.astype(np.float64)
        t = ternaries[name]
        diff = w - t.dense().astype(np.float64)
        errors.append(float(np.linalg.norm(diff) / np.linalg.norm(w)))
        zeros += int(np.count_nonzero(t.codes == 0))
        bits += t.storage_bits(2.0)
        size += t.codes.size
    return {
        "rel_err_mean": float(np.mean(errors)),
        "rel_err_max": float(np.max(errors)),
        "sparsity": zeros / size,
        "bits_per_weight": bits / size,
    }


def retrieval_agreement(reference: np.ndarray, other: np.ndarray, k: int = 10) -> dict:
    """Overlap@k and MRR of the reference top-1, each sentence a query against the others.

    Parameters
    ----------
    reference, other : ndarray (n, D)
        Unit embeddings of the same n sentences by the float and the ternary model.
    k : int, default 10

    Returns
    -------
    dict with ``"overlap"`` (mean ``|top_k(ref) & top_k(other)| / k``) and ``"mrr"`` (mean
    reciprocal rank, in ``other``'s ranking, of the sentence ranked first by ``reference``).
    """
    n = reference.shape[0]
    k = integer(k, "k", low=1, high=n - 1)
    sims = []
    for emb in (reference, other):
        s = emb.astype(np.float64) @ emb.astype(np.float64).T
        np.fill_diagonal(s, -np.inf)  # a sentence is not its own neighbour
        sims.append(s)
    ref_order = np.argsort(-sims[0], axis=1, kind="stable")
    other_order = np.argsort(-sims[1], axis=1, kind="stable")
    overlap = np.mean([len(set(ref_order[i, :k]) & set(other_order[i, :k])) / k for i in range(n)])
    top1 = ref_order[:, 0]
    ranks = np.argmax(other_order == top1[:, None], axis=1) + 1
    return {"overlap": float(overlap), "mrr": float(np.mean(1.0 / ranks))}


# -------------------------------------------------------------------------- packed layers


class PackedEncoderLinear(Module):
    """Forward-only stand-in for a ``Linear`` of the encoder, computed by a ``PackedLinear``.

    Takes (..., in) like ``Linear`` (``PackedLinear`` takes (N, in)) and flattens the leading
    axes around the packed product.
    """

    def __init__(self, packed_linear: PackedLinear):
        super().__init__()
        self.packed = packed_linear
        self.training = False

    def forward(self, x):
        lead = x.shape[:-1]
        y = self.packed.forward(np.ascontiguousarray(x).reshape(-1, x.shape[-1]))
        return y.reshape(*lead, y.shape[-1])

    def backward(self, dy):
        raise NotImplementedError("the packed encoder is inference-only")

    def __repr__(self) -> str:
        return f"PackedEncoderLinear({self.packed!r})"


class Int8DenseLinear(Module):
    """The dense twin of an int8 ``PackedLinear``: ``(s xq) @ W_hat.T + b`` in float64.

    ``xq, s = quantize_activations(x)`` row by row, exactly as the packed kernel quantizes; the
    product is then an ordinary dense one, so it isolates what packing does from what int8
    rounding does.
    """

    def __init__(self, w_hat: np.ndarray, bias: np.ndarray | None):
        super().__init__()
        self.w_hat = np.asarray(w_hat, dtype=np.float64)
        self.b = None if bias is None else np.asarray(bias, dtype=np.float64)
        self.training = False

    def forward(self, x):
        lead = x.shape[:-1]
        xq, inv_s = quantize_activations(np.ascontiguousarray(x).reshape(-1, x.shape[-1]))
        y = (xq.astype(np.float64) * inv_s[:, None]) @ self.w_hat.T
        if self.b is not None:
            y += self.b
        return y.astype(x.dtype).reshape(*lead, y.shape[-1])

    def backward(self, dy):
        raise NotImplementedError("inference-only")


def _replace_linears(encoder, make) -> object:
    out = copy.deepcopy(encoder)
    for n, layer in enumerate(out.layers):
        att = layer.attention
        names = [(att, "q_proj"), (att, "k_proj"), (att, "v_proj"), (att, "o_proj"),
                 (layer, "intermediate"), (layer, "output")]  # fmt: skip
        for (owner, attr), part in zip(names, MATRIX_PARTS):
            linear = getattr(owner, attr)
            setattr(owner, attr, make(f"encoder.layer.{n}.{part}.weight", linear))
    return out


def packed_encoder(encoder, ternaries: dict, format: str = "i2", activations: str = "int8"):
    """A copy of ``encoder`` whose 36 linear layers run from packed codes (inference only)."""

    def make(name, linear):
        bias = None if linear.bias is None else linear.bias.data
        return PackedEncoderLinear(PackedLinear(pack(ternaries[name], format), bias, activations))

    return _replace_linears(encoder, make)


def int8_dense_encoder(encoder):
    """A copy of ``encoder`` whose linear inputs are rounded to int8 as the packed kernels do."""

    def make(name, linear):
        return Int8DenseLinear(
            linear.weight.data, None if linear.bias is None else linear.bias.data
        )

    return _replace_linears(encoder, make)


def _throughput(model, sentences, encoder, batch_size: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.encode(sentences, batch_size=batch_size, encoder=encoder)
        times.append(time.perf_counter() - t0)
    return len(sentences) / float(np.median(times))


class _Recorder(Module):
    """Runs a ``Linear`` and keeps its last input (for the per-layer int8 check)."""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear
        self.inputs = None

    def forward(self, x):
        self.inputs = np.array(x, copy=True)
        return self.linear.forward(x)


def layer_int8_check(encoder, ternaries: dict, ids, mask) -> dict:
    """Layer by layer, the packed int8 product against its bound and its dense twin.

    Runs ``encoder`` (the dense ternary one) on ``ids``, takes each linear layer's real input
    ``x`` and compares, per output, ``PackedLinear(i2, int8)`` with the float product
    ``x W_hat^T + b`` against the bound ``max|x| alpha_j nnz_j / 254`` of the module docstring,
    and with :class:`Int8DenseLinear` (same rounding, dense product).

    Returns
    -------
    dict
        ``bound_ratio``: max over layers and outputs of |int8 - float| / bound (<= 1 + float32
        rounding if the bound holds); ``max_abs_vs_int8_dense``: max over layers of
        |packed - Int8DenseLinear|; ``max_rel_vs_int8_dense``: the same divided by
        ``1 + |y|``.
    """
    recorders = {}

    def make(name, linear):
        recorders[name] = _Recorder(linear)
        return recorders[name]

    recording = _replace_linears(encoder, make)
    recording.forward(ids, attention_mask=mask)
    ratio, max_abs, max_rel = 0.0, 0.0, 0.0
    for name, rec in recorders.items():
        x = rec.inputs.reshape(-1, rec.inputs.shape[-1])
        t = ternaries[name]
        bias = rec.linear.bias.data if rec.linear.bias is not None else None
        y_packed = PackedLinear(pack(t, "i2"), bias, "int8").forward(x).astype(np.float64)
        w_hat = t.dense().astype(np.float64)
        y_float = x.astype(np.float64) @ w_hat.T + (0.0 if bias is None else bias)
        y_dense = Int8DenseLinear(w_hat, bias).forward(x.astype(np.float64))
        bound = np.abs(x).max(axis=1)[:, None] * np.abs(w_hat).sum(axis=1)[None, :] / 254.0
        err = np.abs(y_packed - y_float)
        # float32 rounding of the output on top of the bound: a few ulp of |y|
        slack = 8 * np.finfo(np.float32).eps * (np.abs(y_float) + 1.0)
        ratio = max(ratio, float(np.max((err - slack).clip(0) / np.maximum(bound, 1e-30))))
        diff = np.abs(y_packed - y_dense)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float(np.max(diff / (1.0 + np.abs(y_dense)))))
    return {"bound_ratio": ratio, "max_abs_vs_int8_dense": max_abs,
            "max_rel_vs_int8_dense": max_rel}  # fmt: skip


def packed_check_encoder(model, encoder, ternaries: dict, sentences, label: str,
                         batch_size: int = 32, repeats: int = 3) -> dict:  # fmt: skip
    """Packed (i2, int8) form of a dense ternary ``encoder`` against it and the float model.

    Returns a dict with the claims of the module docstring measured on ``sentences``:
    ``layers`` (:func:`layer_int8_check` on the first batch), ``identical_fraction`` (share of
    sentences whose packed and int8-dense embeddings agree within ``PACKED_ATOL``),
    ``max_abs_vs_int8_dense``, ``cosine_vs_ternary`` mean and min (the int8 activation error),
    the float model's own int8 error as a yardstick (``float_int8_cosine``), sentences per second
    of the float and packed encoders (median of ``repeats`` runs) and the weight bytes.
    """
    packed = packed_encoder(encoder, ternaries)
    e_tern = model.encode(sentences, batch_size, encoder=encoder)
    e_packed = model.encode(sentences, batch_size, encoder=packed)
    e_int8 = model.encode(sentences, batch_size, encoder=int8_dense_encoder(encoder))
    e_float = model.encode(sentences, batch_size)
    e_float_int8 = model.encode(sentences, batch_size, encoder=int8_dense_encoder(model.encoder))
    cos = np.sum(e_packed.astype(np.float64) * e_tern, axis=1)
    cos_float = np.sum(e_float_int8.astype(np.float64) * e_float, axis=1)
    per_sentence = np.abs(e_packed - e_int8).max(axis=1)
    ids, mask = model.batch_ids(sentences[:batch_size])
    layers = layer_int8_check(encoder, ternaries, ids, mask)
    float_per_s = _throughput(model, sentences, None, batch_size, repeats)
    packed_per_s = _throughput(model, sentences, packed, batch_size, repeats)
    packed_bytes = sum(
        m.packed.nbytes for m in packed.modules() if isinstance(m, PackedEncoderLinear)
    )
    float_bytes = sum(m.weight.data.nbytes for m in weight_matrices(model.encoder).values())
    return {
        "projection": label,
        "format": "i2",
        "activations": "int8",
        "sentences": len(sentences),
        "layers": layers,
        "atol": PACKED_ATOL,
        "identical_fraction": float(np.mean(per_sentence <= PACKED_ATOL)),
        "median_abs_vs_int8_dense": float(np.median(per_sentence)),
        "max_abs_vs_int8_dense": float(per_sentence.max()),
        "max_abs_vs_ternary": float(np.max(np.abs(e_packed - e_tern))),
        "cosine_vs_ternary": float(np.mean(cos)),
        "cosine_vs_ternary_min": float(np.min(cos)),
        "float_int8_cosine": float(np.mean(cos_float)),
        "float_int8_cosine_min": float(np.min(cos_float)),
        "float_per_s": float_per_s,
        "packed_per_s": packed_per_s,
        "speedup": packed_per_s / float_per_s,
        "packed_weight_bytes": int(packed_bytes),
        "float_weight_bytes": int(float_bytes),
        "machine": summary(),
    }


def packed_check(model, spec: ProjectionSpec, sentences, seed: int = 0, batch_size: int = 32,
                 repeats: int = 3, embeddings: bool = False) -> dict:  # fmt: skip
    """:func:`packed_check_encoder` for the post-training ternarization by ``spec``."""
    tern, ternaries = ternarize_encoder(model.encoder, spec, np.random.default_rng(seed),
                                        embeddings)  # fmt: skip
    return packed_check_encoder(model, tern, ternaries, sentences, spec.label, batch_size, repeats)


# ------------------------------------------------------------------------------ the table


@dataclass
class PTQRow:
    """One line of the table (see the module docstring for each field)."""

    projection: str
    granularity: str
    rel_err_mean: float
    rel_err_max: float
    sparsity: float
    bits_per_weight: float
    cosine: float
    overlap10: float
    mrr: float
    seconds: float


@dataclass
class PTQReport:
    """The table, the packed check, and how they were made."""

    rows: list = field(default_factory=list)
    packed: dict | None = None
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "settings": self.settings,
            "rows": [asdict(r) for r in self.rows],
            "packed": self.packed,
        }


def evaluate_embeddings(reference: np.ndarray, embeddings: np.ndarray, k: int = 10) -> dict:
    """``cosine``, ``overlap10`` and ``mrr`` of ``embeddings`` against ``reference``."""
    cos = np.sum(reference.astype(np.float64) * embeddings.astype(np.float64), axis=1)
    agreement = retrieval_agreement(reference, embeddings, k)
    return {"cosine": float(np.mean(cos)), "overlap10": agreement["overlap"],
            "mrr": agreement["mrr"]}  # fmt: skip


def ptq_minilm(
    model=None,
    sentences=None,
    *,
    n_sentences: int = 1000,
    specs=None,
    embeddings: bool = False,
    seed: int = 0,
    batch_size: int = 32,
    packed: str | None = "twn/tensor",
    packed_sentences: int = 256,
    reference=None,
    log=None,
) -> PTQReport:
    """Ternarize MiniLM with every projection (or ``specs``) and measure it; see the module doc.

    Parameters
    ----------
    model : MiniLM, optional
        Default :func:`ternref.pretrained.load_minilm()`.
    sentences : list of str, optional
        The held-out sentences and retrieval pool; default the first ``n_sentences`` held-out
        sentences of the six Austen novels (:func:`corpus_sentences`).
    n_sentences : int, default 1000
    specs : list of ProjectionSpec, optional
        Default :func:`projection_specs()` (every weight projection, each granularity).
    embeddings : bool, default False
        Ternarize the embedding tables too.
    seed : int, default 0
        Seed of the generator of stochastic projections.
    batch_size : int, default 32
    packed : str or None, default "twn/tensor"
        The projection whose packed encoder is checked and timed (None: skip).
    packed_sentences : int, default 256
        Sentences (the first of ``sentences``) for the packed check and the timing.
    reference : ndarray, optional
        The float model's embeddings of ``sentences`` if already computed.
    log : callable, optional
        Called with a line of text after each row.

    Returns
    -------
    PTQReport

    References
    ----------
    Y. Liu, X. Liu, "Ternary Quantization: A Survey", arXiv:2303.01505, 2023 (the projections).
    """
    from ternref.pretrained.minilm import load_minilm
    from ternref.pretrained.sentences import corpus_sentences

    model = load_minilm() if model is None else model
    if sentences is None:
        n_sentences = integer(n_sentences, "n_sentences", low=12)
        sentences = corpus_sentences("valid")[:n_sentences]
    sentences = list(sentences)
    if len(sentences) < 12:
        raise ValueError(f"need at least 12 sentences (top-10 retrieval), got {len(sentences)}")
    specs = projection_specs() if specs is None else list(specs)
    log = log or (lambda line: None)
    t0 = time.perf_counter()
    if reference is None:
        reference = model.encode(sentences, batch_size)
    report = PTQReport(
        settings={
            "sentences": len(sentences),
            "embeddings_ternarized": bool(embeddings),
            "seed": int(seed),
            "batch_size": int(batch_size),
            "float_encode_seconds": time.perf_counter() - t0,
            "model": str(model.path),
        }
    )
    for spec in specs:
        t0 = time.perf_counter()
        tern, ternaries = ternarize_encoder(model.encoder, spec, np.random.default_rng(seed),
                                            embeddings)  # fmt: skip
        stats = weight_stats(model.encoder, ternaries)
        granularity = next(iter(ternaries.values())).granularity
        if granularity == "group":
            granularity = f"group of {next(iter(ternaries.values())).group_size}"
        quality = evaluate_embeddings(reference, model.encode(sentences, batch_size, tern))
        row = PTQRow(spec.name, granularity, **stats, **quality,
                     seconds=time.perf_counter() - t0)  # fmt: skip
        report.rows.append(row)
        log(_row_text(row))
        del tern
    if packed:
        spec = parse_spec(packed)
        report.packed = packed_check(model, spec, sentences[: int(packed_sentences)], seed,
                                     batch_size, embeddings=embeddings)  # fmt: skip
    return report


def _row_text(r: PTQRow) -> str:
    return (
        f"| {r.projection} | {r.granularity} | {r.rel_err_mean:.3f} | {r.rel_err_max:.3f} | "
        f"{r.sparsity:.3f} | {r.bits_per_weight:.3f} | {r.cosine:.4f} | {r.overlap10:.3f} | "
        f"{r.mrr:.3f} |"
    )


TABLE_HEADER = (
    "| projection | granularity | rel. error mean | rel. error worst | sparsity | bits/weight "
    "| cosine | overlap@10 | MRR |\n|---|---|---|---|---|---|---|---|---|"
)


def format_table(report: PTQReport) -> str:
    """The report as Markdown: the table, sorted by decreasing cosine, then the packed check."""
    rows = sorted(report.rows, key=lambda r: -r.cosine if math.isfinite(r.cosine) else 1.0)
    lines = [TABLE_HEADER, *(_row_text(r) for r in rows)]
    p = report.packed
    if p:
        lines += ["", packed_text(p)]
    return "\n".join(lines)


def packed_text(p: dict) -> str:
    """One paragraph on a :func:`packed_check_encoder` result."""
    lay = p["layers"]
    return (
        f"Packed encoder ({p['projection']}, {p['format']}, {p['activations']} activations, "
        f"{p['sentences']} sentences): {p['packed_per_s']:.1f} sentences/s against "
        f"{p['float_per_s']:.1f} for the float encoder ({p['speedup']:.2f}x); linear weights "
        f"{p['packed_weight_bytes'] / 2**20:.2f} MiB packed against "
        f"{p['float_weight_bytes'] / 2**20:.2f} MiB float32. Per layer (36 layers, real "
        f"inputs): the int8 error is at most {lay['bound_ratio']:.2f} of its bound "
        f"max|x| alpha nnz / 254, and the packed product equals the dense product of the same "
        f"int8-rounded inputs to {lay['max_rel_vs_int8_dense']:.1e} (relative to 1 + |y|). "
        f"End to end: {100 * p['identical_fraction']:.1f} % of the sentences get the embedding "
        f"of that dense int8 twin within {p['atol']:.0e} (median difference "
        f"{p['median_abs_vs_int8_dense']:.1e}; the others differ where a rounding difference "
        f"moved an int8 rounding decision, max {p['max_abs_vs_int8_dense']:.1e}); against the "
        f"float-activation ternary encoder the mean cosine is {p['cosine_vs_ternary']:.5f} "
        f"(min {p['cosine_vs_ternary_min']:.5f}), the int8 activation error, as large as the "
        f"float model's own with int8 inputs ({p['float_int8_cosine']:.5f}, min "
        f"{p['float_int8_cosine_min']:.5f})."
        + (f" Timed on: {p['machine']}" if p.get("machine") else "")
    )
