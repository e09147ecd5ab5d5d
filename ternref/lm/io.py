"""``save_lm`` / ``load_lm``: a trained TransformerLM (float or ternary) in one ``.npz`` file.

File layout
-----------
An uncompressed ``.npz`` (written with ``allow_pickle=False``, read with ``allow_pickle=False``)
holding ``__header__``, a uint8 array of UTF-8 JSON::

    {"format": "ternref-lm", "version": 1,
     "config": {"vocab_size": 256, "dim": 256, "n_layers": 4, "n_heads": 8, "n_kv_heads": 4,
                "ffn_dim": 768, "max_seq_len": 128, "rope_theta": 10000.0, "norm_eps": 1e-05,
                "tie_embeddings": true},
     "dtype": "float32",
     "block_norms": true,                  false for BitNet b1.58 (the norms moved into BitLinear;
                                           true with subln="shared": q/k/v, gate/up share them)
     "method": null | {"name": "bitnet", "hyperparameters": {...}},      what trained it (info)
     "projections": {"blk.0.attn.q_proj": {"kind": "bitlinear" | "linear", "subln": bool,
                                          "activations": "float" | "int8",
                                          "activation_eps": float | null,
                                          "terms": [{"granularity": "tensor", "group_size": null,
                                                     "symmetric": true, "has_offset": false}]},
                     ...},                 one entry per block projection; terms = [] for float
     "arrays": {"token_embd.weight": {"shape": [...], "dtype": "<f4", "sha256": "..."}, ...},
     "metadata": {...}}                    free JSON (training command, bits per byte, ...)

and one array per entry of ``"arrays"``, stored under its name:

* ``token_embd.weight``, ``output_norm.weight``, ``output.weight`` (untied head only);
* per block ``blk.N.attn_norm.weight`` and ``blk.N.ffn_norm.weight`` (when ``block_norms``);
* per projection ``P.weight`` (the latent weights), ``P.input_norm.weight`` (SubLN gain of a
  BitLinear), ``P.quantizer.NAME`` for a quantizer's learned parameters (TTQ's ``w_p``,
  ``w_n``);
* per ternary term ``k`` of a projection: ``P.term{k}.codes`` (int8 in {-1, 0, +1}, the
  weight's shape), ``P.term{k}.alpha_pos``, and ``P.term{k}.alpha_neg`` / ``P.term{k}.offset``
  when the header says so. These are ``weight_quantizer.to_ternary(weight)`` (or a residual
  method's ``to_ternaries``) at save time: the exact ternary weights of the evaluation forward,
  ready for a packed export.

Loading rebuilds the model and attaches to every ternary projection a
:class:`StoredTernary` quantizer holding the saved terms, so the loaded model's forward is the
saved model's evaluation forward for every method (LAT's projection depends on Adam's state,
which is not saved; the terms are). A loaded ternary model is for evaluation and generation:
its quantizers have no gradient estimator (training it again needs the method re-attached to a
float model built from the latent weights).

:func:`load_lm` validates everything before building anything and raises ``ValueError``
("refusing to load: ...") for: an unreadable file, a header that is not this JSON, an unknown
format or version, unknown or missing keys, bad config values, missing or extra arrays, object
arrays, shapes, dtypes or SHA-256 different from the header, codes outside {-1, 0, +1}, scales
of the wrong shape, negative or non-finite.
"""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np

from ternref.methods.base import WeightQuantizer
from ternref.methods.bitlinear import PROJECTIONS, BitLinear, Identity, projections
from ternref.methods.bitnet import BitNetActivation
from ternref.nn.norms import RMSNorm
from ternref.nn.transformer import TransformerLM
from ternref.ternary import Ternary

FORMAT_NAME = "ternref-lm"
VERSION = 1
HEADER_KEY = "__header__"
CONFIG_KEYS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim",
               "max_seq_len", "rope_theta", "norm_eps", "tie_embeddings")  # fmt: skip
_HEADER_KEYS = {"format", "version", "config", "dtype", "block_norms", "method", "projections",
                "arrays", "metadata"}  # fmt: skip
_PROJ_KEYS = {"kind", "subln", "activations", "activation_eps", "terms"}
_TERM_KEYS = {"granularity", "group_size", "symmetric", "has_offset"}


class StoredTernary(WeightQuantizer):
    """A weight quantizer that returns saved ternary terms (evaluation only).

    ``forward(w)`` returns ``sum_k terms[k].dense()`` (one term for every method but the
    residual ones), whatever ``w`` is; ``to_ternary`` returns the single term and
    ``to_ternaries`` all of them. ``backward`` refuses: a loaded model has no gradient rule.
    """

    def __init__(self, terms: list[Ternary]):
        super().__init__()
        if not terms:
            raise ValueError("StoredTernary needs at least one ternary term")
        self.terms = list(terms)

    def project(self, w):
        return self.terms[0]

    def forward(self, w):
        self.ternary = self.terms[0]
        dense = self.terms[0].dense()
        for term in self.terms[1:]:
            dense = dense + term.dense()
        return dense

    def backward(self, dw_hat):
        raise RuntimeError(
            "a model loaded from a ternref-lm file cannot be trained further (its quantizers hold "
            "saved ternary weights, not a method): re-attach a method to a float model"
        )

    def to_ternary(self, w=None):
        if len(self.terms) != 1:
            raise ValueError(f"this projection has {len(self.terms)} ternary terms; use "
                             "to_ternaries")  # fmt: skip
        return self.terms[0]

    def to_ternaries(self, w=None):
        return list(self.terms)

    def extra_repr(self):
        return f"terms={len(self.terms)}, shape={self.terms[0].shape}"


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _projection_key(index: int) -> str:
    """``"blk.N.attn.q_proj"`` etc. for the ``index``-th entry of :func:`projections`."""
    child, attr = PROJECTIONS[index % len(PROJECTIONS)]
    return f"blk.{index // len(PROJECTIONS)}.{child}.{attr}"


def _terms_of(quantizer, w) -> list[Ternary]:
    if hasattr(quantizer, "to_ternaries"):
        return list(quantizer.to_ternaries(w))
    return [quantizer.to_ternary(w)]


def _config(model: TransformerLM) -> dict:
    return {
        "vocab_size": model.vocab_size, "dim": model.dim, "n_layers": model.n_layers,
        "n_heads": model.n_heads, "n_kv_heads": model.n_kv_heads, "ffn_dim": model.ffn_dim,
        "max_seq_len": model.max_seq_len, "rope_theta": float(model.rope.theta),
        "norm_eps": float(model.norm_eps), "tie_embeddings": model.tie_embeddings,
    }  # fmt: skip


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def save_lm(path, model: TransformerLM, method=None, metadata: dict | None = None) -> None:
    """Write ``model`` (float, or quantized by ``quantize_transformer``) to ``path``.

    Parameters
    ----------
    path : str or path-like
    model : TransformerLM
    method : Method, optional
        Recorded in the header (name and hyper-parameters) for information.
    metadata : dict, optional
        JSON-serialisable facts to keep with the model (command, steps, bits per byte, ...).
    """
    if not isinstance(model, TransformerLM):
        raise TypeError(f"save_lm expects a TransformerLM, got {type(model).__name__}")
    arrays: dict[str, np.ndarray] = {
        "token_embd.weight": model.token_embd.weight.data,
        "output_norm.weight": model.output_norm.weight.data,
    }
    if not model.tie_embeddings:
        arrays["output.weight"] = model.output.weight.data
    norms = {isinstance(blk.attn_norm, RMSNorm) and isinstance(blk.ffn_norm, RMSNorm)
             for blk in model.blocks}  # fmt: skip
    if len(norms) != 1 or any(
        not isinstance(m, (RMSNorm, Identity)) for blk in model.blocks
        for m in (blk.attn_norm, blk.ffn_norm)
    ):  # fmt: skip
        raise ValueError("save_lm: every block must have both RMSNorms or neither (BitNet)")
    block_norms = norms.pop()
    for n, blk in enumerate(model.blocks):
        if block_norms:
            arrays[f"blk.{n}.attn_norm.weight"] = blk.attn_norm.weight.data
            arrays[f"blk.{n}.ffn_norm.weight"] = blk.ffn_norm.weight.data
    described = {}
    for index, (_, _attr, layer) in enumerate(projections(model)):
        key = _projection_key(index)
        if layer.bias is not None:
            raise ValueError(f"save_lm: {key} has a bias; TransformerLM projections have none")
        arrays[f"{key}.weight"] = layer.weight.data
        entry = {"kind": "linear", "subln": False, "activations": "float",
                 "activation_eps": None, "terms": []}  # fmt: skip
        if isinstance(layer, BitLinear):
            entry["kind"] = "bitlinear"
            if layer.input_norm is not None:
                entry["subln"] = True
                arrays[f"{key}.input_norm.weight"] = layer.input_norm.weight.data
            act = layer.activation_quantizer
            if isinstance(act, BitNetActivation):
                entry["activations"], entry["activation_eps"] = "int8", float(act.eps)
            elif act is not None:
                raise ValueError(f"save_lm: {key} has an activation quantizer of type "
                                 f"{type(act).__name__}; only BitNet's int8 is stored")  # fmt: skip
        quantizer = layer.weight_quantizer
        if quantizer is not None:
            if not isinstance(quantizer, StoredTernary):
                for pname, param in quantizer.named_parameters():
                    arrays[f"{key}.quantizer.{pname}"] = param.data
            for k, term in enumerate(_terms_of(quantizer, layer.weight.data)):
                arrays[f"{key}.term{k}.codes"] = term.codes
                arrays[f"{key}.term{k}.alpha_pos"] = term.alpha_pos
                if not term.symmetric:
                    arrays[f"{key}.term{k}.alpha_neg"] = term.alpha_neg
                if term.offset is not None:
                    arrays[f"{key}.term{k}.offset"] = term.offset
                entry["terms"].append({"granularity": term.granularity,
                                       "group_size": term.group_size,
                                       "symmetric": bool(term.symmetric),
                                       "has_offset": term.offset is not None})  # fmt: skip
        elif entry["kind"] == "bitlinear":
            raise ValueError(f"save_lm: {key} is a BitLinear without a weight quantizer")
        described[key] = entry
    method_info = None
    if method is not None:
        method_info = {
            "name": method.info.name,
            "hyperparameters": {k: _jsonable(v) for k, v in method.hyperparameters().items()},
        }
    header = {
        "format": FORMAT_NAME, "version": VERSION, "config": _config(model),
        "dtype": str(model.token_embd.weight.data.dtype), "block_norms": block_norms,
        "method": method_info, "projections": described,
        "arrays": {name: {"shape": list(a.shape), "dtype": np.asarray(a).dtype.str,
                          "sha256": _sha256(np.asarray(a))} for name, a in arrays.items()},
        "metadata": {} if metadata is None else json.loads(json.dumps(metadata)),
    }  # fmt: skip
    raw = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    stored = {name: np.array(a, order="C", copy=None) for name, a in arrays.items()}
    with open(path, "wb") as f:
        np.savez(f, **{HEADER_KEY: raw}, **stored)


# ----------------------------------------------------------------------------- loading


def _fail(msg: str):
    raise ValueError(f"refusing to load: {msg}")


def _expect_keys(obj, keys: set, where: str) -> None:
    if not isinstance(obj, dict):
        _fail(f"{where} must be a JSON object, got {type(obj).__name__}")
    if set(obj) != keys:
        missing, extra = sorted(keys - set(obj)), sorted(set(obj) - keys)
        _fail(f"{where}: missing keys {missing}, unknown keys {extra}")


def _check_config(config) -> dict:
    _expect_keys(config, set(CONFIG_KEYS), "config")
    for key in CONFIG_KEYS:
        value = config[key]
        if key == "tie_embeddings":
            ok = isinstance(value, bool)
        elif key in ("rope_theta", "norm_eps"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if not ok:
            _fail(f"config[{key!r}] is invalid: {value!r}")
    return config


def _read(path):
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        _fail(f"{path} is not a readable .npz file ({e})")
    try:
        if HEADER_KEY not in npz.files:
            _fail(f"{path} has no {HEADER_KEY} (not a ternref-lm file)")
        try:
            header = json.loads(npz[HEADER_KEY].tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
            _fail(f"{path}: the header is not UTF-8 JSON ({e})")
        if not isinstance(header, dict):
            _fail(f"{path}: the header is not a JSON object")
        if header.get("format") != FORMAT_NAME:
            _fail(f"{path}: format {header.get('format')!r} is not {FORMAT_NAME!r}")
        if header.get("version") != VERSION:
            _fail(f"{path}: version {header.get('version')!r} is not supported (only {VERSION})")
        _expect_keys(header, _HEADER_KEYS, "header")
        described = header["arrays"]
        if not isinstance(described, dict):
            _fail("header['arrays'] must be an object")
        names = set(npz.files) - {HEADER_KEY}
        if names != set(described):
            _fail(
                f"arrays in the file {sorted(names - set(described))} are not in the header, "
                f"arrays in the header {sorted(set(described) - names)} are missing"
            )
        arrays = {}
        for name, desc in described.items():
            _expect_keys(desc, {"shape", "dtype", "sha256"}, f"arrays[{name!r}]")
            try:
                a = npz[name]
            except (ValueError, zipfile.BadZipFile, OSError) as e:  # object arrays, bad CRC
                _fail(f"array {name!r} cannot be read ({e})")
            if a.dtype.hasobject or a.dtype.str != desc["dtype"]:
                _fail(f"array {name!r} has dtype {a.dtype.str}, header says {desc['dtype']!r}")
            if list(a.shape) != desc["shape"]:
                _fail(f"array {name!r} has shape {list(a.shape)}, header says {desc['shape']}")
            if _sha256(a) != desc["sha256"]:
                _fail(f"array {name!r} fails its SHA-256 check (the file is corrupt)")
            arrays[name] = a
    finally:
        npz.close()
    return header, arrays


def _term(arrays, key, k, desc, weight_shape) -> tuple[Ternary, set]:
    _expect_keys(desc, _TERM_KEYS, f"projections[{key!r}].terms[{k}]")
    prefix = f"{key}.term{k}."
    codes = arrays.get(prefix + "codes")
    if codes is None or codes.dtype != np.int8 or codes.shape != tuple(weight_shape):
        _fail(f"{prefix}codes must be int8 of the weight's shape {tuple(weight_shape)}")
    alpha_neg = None if desc["symmetric"] else arrays.get(prefix + "alpha_neg")
    if not desc["symmetric"] and alpha_neg is None:
        _fail(f"{prefix}alpha_neg is missing")
    offset = arrays.get(prefix + "offset") if desc["has_offset"] else None
    if desc["has_offset"] and offset is None:
        _fail(f"{prefix}offset is missing")
    if prefix + "alpha_pos" not in arrays:
        _fail(f"{prefix}alpha_pos is missing")
    try:
        term = Ternary(codes, arrays[prefix + "alpha_pos"], alpha_neg,
                       granularity=desc["granularity"], group_size=desc["group_size"],
                       offset=offset)  # fmt: skip
    except (TypeError, ValueError) as e:
        _fail(f"{prefix}*: {e}")
    expected = {prefix + "codes", prefix + "alpha_pos"}
    expected |= {prefix + "alpha_neg"} if not desc["symmetric"] else set()
    expected |= {prefix + "offset"} if desc["has_offset"] else set()
    return term, expected


def load_lm(path) -> tuple[TransformerLM, dict]:
    """Read a file written by :func:`save_lm`.

    Returns
    -------
    model : TransformerLM
        In evaluation mode; ternary projections carry :class:`StoredTernary` quantizers.
    header : dict
        The validated header (``method`` and ``metadata`` included).
    """
    header, arrays = _read(path)
    config = _check_config(header["config"])
    if header["dtype"] not in ("float32", "float64"):
        _fail(f"dtype {header['dtype']!r} is not float32 or float64")
    if not isinstance(header["block_norms"], bool):
        _fail("block_norms must be true or false")
    method = header["method"]
    if method is not None:
        _expect_keys(method, {"name", "hyperparameters"}, "method")
    if not isinstance(header["metadata"], dict):
        _fail("metadata must be a JSON object")
    try:
        model = TransformerLM(**config, rng=np.random.default_rng(0), dtype=header["dtype"])
    except (TypeError, ValueError) as e:
        _fail(f"config does not describe a TransformerLM ({e})")
    dtype = np.dtype(header["dtype"])
    used: set[str] = set()

    def take(name, shape):
        if name not in arrays:
            _fail(f"array {name!r} is missing")
        a = arrays[name]
        if a.dtype != dtype or a.shape != tuple(shape):
            _fail(f"array {name!r} must be {dtype} of shape {tuple(shape)}, got {a.dtype} "
                  f"{a.shape}")  # fmt: skip
        used.add(name)
        return a

    model.token_embd.weight.data[...] = take("token_embd.weight", model.token_embd.weight.shape)
    model.output_norm.weight.data[...] = take("output_norm.weight", (model.dim,))
    if not model.tie_embeddings:
        model.output.weight.data[...] = take("output.weight", model.output.weight.shape)
    described = header["projections"]
    if not isinstance(described, dict):
        _fail("projections must be a JSON object")
    expected_keys = set()
    for index, (owner, attr, layer) in enumerate(projections(model)):
        key = _projection_key(index)
        expected_keys.add(key)
        if key not in described:
            _fail(f"projections[{key!r}] is missing")
        entry = described[key]
        _expect_keys(entry, _PROJ_KEYS, f"projections[{key!r}]")
        if (
            entry["kind"] not in ("linear", "bitlinear")
            or entry["activations"] not in ("float", "int8")
            or not isinstance(entry["subln"], bool)
            or not isinstance(entry["terms"], list)
        ):
            _fail(f"projections[{key!r}] has invalid values: {entry}")  # fmt: skip
        if entry["kind"] == "linear" and (entry["subln"] or entry["activations"] != "float"):
            _fail(f"projections[{key!r}]: a plain linear has no SubLN or int8 activations")
        if entry["kind"] == "bitlinear" and not entry["terms"]:
            _fail(f"projections[{key!r}]: a bitlinear needs ternary terms")
        eps = entry["activation_eps"]
        if entry["activations"] == "int8" and not (
            isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0
        ):
            _fail(f"projections[{key!r}]: activation_eps must be > 0, got {eps!r}")
        layer.weight.data[...] = take(f"{key}.weight", layer.weight.shape)
        terms = []
        for k, desc in enumerate(entry["terms"]):
            term, names = _term(arrays, key, k, desc, layer.weight.shape)
            terms.append(term)
            used |= names
        quantizer = StoredTernary(terms) if terms else None
        if entry["kind"] == "bitlinear":
            act = BitNetActivation(eps) if entry["activations"] == "int8" else None
            new = BitLinear.from_linear(
                layer,
                quantizer,
                activation_quantizer=act,
                input_norm=entry["subln"],
                norm_eps=model.norm_eps,
            )
            if entry["subln"]:
                new.input_norm.weight.data[...] = take(f"{key}.input_norm.weight",
                                                       (layer.in_features,))  # fmt: skip
            setattr(owner, attr, new)
        else:
            layer.weight_quantizer = quantizer
        # learned scales of the quantizer that trained the model: kept (information only)
        used |= {name for name in arrays if name.startswith(f"{key}.quantizer.")}
    if set(described) != expected_keys:
        _fail(f"projections has unknown entries {sorted(set(described) - expected_keys)}")
    for n, blk in enumerate(model.blocks):
        if header["block_norms"]:
            blk.attn_norm.weight.data[...] = take(f"blk.{n}.attn_norm.weight", (model.dim,))
            blk.ffn_norm.weight.data[...] = take(f"blk.{n}.ffn_norm.weight", (model.dim,))
        else:
            blk.attn_norm, blk.ffn_norm = Identity(), Identity()
    if used != set(arrays):
        _fail(f"arrays {sorted(set(arrays) - used)} do not belong to this model")
    model.eval()
    return model, header
