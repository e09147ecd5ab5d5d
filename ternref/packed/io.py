"""``save`` / ``load`` of packed inference models: ``.npz`` + JSON header + SHA-256 per array.

File layout
-----------
An uncompressed ``.npz`` (a zip of ``.npy`` files, written with ``allow_pickle=False``) holding

* ``__header__``: uint8 array of UTF-8 JSON::

      {"format": "ternref-packed", "version": 1,
       "layers": [{"type": "PackedLinear",
                   "params": {"format": "i2", "shape": [M, K], "orig_shape": [...],
                              "granularity": "channel", "group_size": null,
                              "activations": "float32", ...},
                   "arrays": {"codes": {"key": "0.codes", "shape": [M, L/4],
                                        "dtype": "uint8", "sha256": "..."}, ...}},
                  {"type": "ReLU", "params": {}, "arrays": {}}, ...]}

* one array per entry of every layer's ``"arrays"``, stored under its ``key``.

A packed layer with several weight terms (Ternary Residual Networks, ``y = sum_k x @ W_k.T +
b``) has ``"n_terms": n`` in its params; term 0 uses the array names above, term ``k >= 1`` the
same names prefixed ``"term{k}."`` (``"term1.codes"``, ``"term1.alpha_pos"``, ...). A file
without ``n_terms`` (written before multi-term layers) has one term.

Registered inference layers (the methods' activation quantizers, see
:func:`ternref.packed.register_inference_layer`) are stored as
``{"type": <registered name>, "params": <export_state params>, "arrays": {...}}`` with the same
array descriptions. :func:`load` builds only registered types (it imports
:mod:`ternref.methods` so that theirs are registered; nothing is imported by a name read from
the file): the params must be JSON scalars, the arrays numeric, and the class's
``from_export_state`` checks the exact keys and values.

:func:`load` validates *everything* before building any layer and raises ``ValueError`` naming
the problem: unreadable or truncated zip, bad CRC (flipped bytes), header that is not the JSON
above, unknown format name or version, unknown layer type (neither built in nor registered) or
parameter, invalid registered-layer state, missing or extra arrays, object arrays (pickles),
shapes or dtypes different from the header, SHA-256 mismatch, packed arrays inconsistent with
their declared geometry, or packed codes using unused bit patterns.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np

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
from ternref.packed.layers import (
    _BUILTIN_TYPES,
    _INFERENCE_LAYERS,
    ACTIVATIONS,
    PackedConv2d,
    PackedLinear,
    PackedSequential,
    _ensure_method_layers,
    check_export_state,
    inference_type_name,
    rebuild_inference_layer,
)
from ternref.packed.packed import FORMATS, Packed, pack, unpack

FORMAT_NAME = "ternref-packed"
VERSION = 1
HEADER_KEY = "__header__"
_FLOAT_DTYPES = ("float32", "float64")
_NUMERIC_DTYPES = (
    "bool",
    *(f"{k}{b}" for k in ("int", "uint") for b in (8, 16, 32, 64)),
    "float16",
    *_FLOAT_DTYPES,
)


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.array(a, order="C", copy=None).tobytes()).hexdigest()


# ----------------------------------------------------------------------------- describe layers


def _describe(layer) -> tuple[str, dict, dict]:
    """(type name, JSON params, arrays) of one layer of a packed model."""
    if isinstance(layer, (PackedLinear, PackedConv2d)):
        p = layer.packed
        params = {
            "n_terms": len(layer.terms),
            "format": p.format,
            "shape": list(p.shape),
            "orig_shape": list(p.orig_shape),
            "granularity": p.granularity,
            "group_size": p.group_size,
            "activations": layer.activations,
            "symmetric": p.alpha_neg is None,
            "has_offset": p.offset is not None,
            "has_bias": layer.bias is not None,
        }
        if isinstance(layer, PackedConv2d):
            params["stride"] = list(layer.stride)
            params["padding"] = list(layer.padding)
        arrays = {}
        for k, term in enumerate(layer.terms):
            prefix = _term_prefix(k)
            for name, a in term.arrays.items():
                arrays[prefix + name] = a
            arrays[prefix + "alpha_pos"] = term.alpha_pos
            if term.alpha_neg is not None:
                arrays[prefix + "alpha_neg"] = term.alpha_neg
            if term.offset is not None:
                arrays[prefix + "offset"] = term.offset
        if layer.bias is not None:
            arrays["bias"] = layer.bias
        return type(layer).__name__, params, arrays
    if isinstance(layer, (Linear, Conv2d)):
        if layer.weight_quantizer is not None:
            raise ValueError("save: export the model first (a layer still has a quantizer)")
        params = {"shape": list(layer.weight.data.shape), "has_bias": layer.bias is not None}
        if isinstance(layer, Conv2d):
            params["stride"] = list(layer.stride)
            params["padding"] = list(layer.padding)
        arrays = {"weight": layer.weight.data}
        if layer.bias is not None:
            arrays["bias"] = layer.bias.data
        return type(layer).__name__, params, arrays
    if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
        params = {"num_features": layer.num_features, "eps": layer.eps}
        arrays = {
            "weight": layer.weight.data,
            "bias": layer.bias.data,
            "running_mean": layer.running_mean,
            "running_var": layer.running_var,
        }
        return type(layer).__name__, params, arrays
    if isinstance(layer, (MaxPool2d, AvgPool2d)):
        params = {"kernel_size": list(layer.kernel_size), "stride": list(layer.stride)}
        return type(layer).__name__, params, {}
    if isinstance(layer, (ReLU, Flatten)):
        return type(layer).__name__, {}, {}
    name = inference_type_name(layer)
    if name is not None:
        params, arrays = check_export_state(*layer.export_state(), f"save: {name}.export_state")
        return name, params, arrays
    raise TypeError(
        f"save: cannot store a layer of type {type(layer).__name__} (not a packed, copied or "
        "registered inference layer; see ternref.packed.register_inference_layer)"
    )


def _term_prefix(k: int) -> str:
    """Array-name prefix of weight term ``k`` of a packed layer (term 0: none, for version-1
    files written before multi-term layers)."""
    return "" if k == 0 else f"term{k}."


def save(path, model: Sequential) -> None:
    """Write a packed model (from :func:`ternref.packed.export`) to ``path`` (``.npz``)."""
    if not isinstance(model, Sequential):
        raise TypeError(f"save expects a ternref.nn.Sequential, got {type(model).__name__}")
    layers, arrays = [], {}
    for i, layer in enumerate(model.layers):
        kind, params, arrs = _describe(layer)
        entry = {"type": kind, "params": params, "arrays": {}}
        for name, a in arrs.items():
            a = np.array(a, order="C", copy=None)  # (ascontiguousarray would make 0-d 1-d)
            key = f"{i}.{name}"
            arrays[key] = a
            entry["arrays"][name] = {
                "key": key,
                "shape": list(a.shape),
                "dtype": a.dtype.str,
                "sha256": _sha256(a),
            }
        layers.append(entry)
    header = {"format": FORMAT_NAME, "version": VERSION, "layers": layers}
    raw = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **{HEADER_KEY: raw}, **arrays)


# ----------------------------------------------------------------------------- validation

# type -> (required params with their checkers, required arrays, optional arrays)
_INT_PAIR = "pair"


def _fail(msg: str):
    raise ValueError(f"refusing to load: {msg}")


def _check_int(v, name, low=0):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        _fail(f"parameter {name!r} must be an int >= {low}, got {v!r}")
    return v


def _check_pair(v, name, low):
    if not isinstance(v, list) or len(v) != 2:
        _fail(f"parameter {name!r} must be a list of two ints, got {v!r}")
    return tuple(_check_int(x, name, low) for x in v)


def _check_params(kind: str, params: dict) -> dict:
    """Check the JSON params of one layer; return them normalised. Raises ValueError."""
    if not isinstance(params, dict):
        _fail(f"{kind}: params must be an object")
    spec = {
        "PackedLinear": {
            "format",
            "shape",
            "orig_shape",
            "granularity",
            "group_size",
            "activations",
            "symmetric",
            "has_offset",
            "has_bias",
        },
        "Linear": {"shape", "has_bias"},
        "Conv2d": {"shape", "has_bias", "stride", "padding"},
        "BatchNorm1d": {"num_features", "eps"},
        "MaxPool2d": {"kernel_size", "stride"},
        "ReLU": set(),
        "Flatten": set(),
    }
    spec["PackedConv2d"] = spec["PackedLinear"] | {"stride", "padding"}
    spec["BatchNorm2d"] = spec["BatchNorm1d"]
    spec["AvgPool2d"] = spec["MaxPool2d"]
    if kind not in spec:
        _fail(
            f"unknown layer type {kind!r}; known: {sorted(spec)} and the registered inference "
            f"layers {sorted(_INFERENCE_LAYERS)}"
        )
    out = dict(params)
    if kind.startswith("Packed"):
        # files written before multi-term (residual) layers have no n_terms: one term
        out.setdefault("n_terms", 1)
        spec[kind] = spec[kind] | {"n_terms"}
    if set(out) != spec[kind]:
        _fail(f"{kind}: parameters {sorted(params)} differ from the expected {sorted(spec[kind])}")
    for key in ("has_bias", "symmetric", "has_offset"):
        if key in out and not isinstance(out[key], bool):
            _fail(f"{kind}: parameter {key!r} must be true or false, got {out[key]!r}")
    for key in ("stride", "kernel_size"):
        if key in out:
            out[key] = _check_pair(out[key], key, 1)
    if "padding" in out:
        out["padding"] = _check_pair(out["padding"], "padding", 0)
    if "num_features" in out:
        _check_int(out["num_features"], "num_features", 1)
    if "eps" in out and (
        isinstance(out["eps"], bool) or not isinstance(out["eps"], float) or not out["eps"] > 0
    ):
        _fail(f"{kind}: eps must be a positive float, got {out['eps']!r}")
    for key in ("shape", "orig_shape"):
        if key in out:
            v = out[key]
            if not isinstance(v, list) or not v:
                _fail(f"{kind}: {key} must be a non-empty list of ints, got {v!r}")
            out[key] = tuple(_check_int(x, key, 1) for x in v)
    if kind in ("Linear", "Conv2d") and len(out["shape"]) != (2 if kind == "Linear" else 4):
        _fail(f"{kind}: weight shape {out['shape']} has the wrong number of dimensions")
    if kind.startswith("Packed"):
        if out["format"] not in FORMATS:
            _fail(f"unknown packed format {out['format']!r}; known: {sorted(FORMATS)}")
        if out["granularity"] not in ("tensor", "channel", "group"):
            _fail(f"unknown granularity {out['granularity']!r}")
        if (out["granularity"] == "group") != (out["group_size"] is not None):
            _fail("group_size must be given exactly for granularity 'group'")
        if out["group_size"] is not None:
            _check_int(out["group_size"], "group_size", 1)
        _check_int(out["n_terms"], "n_terms", 1)
        if out["activations"] not in ACTIVATIONS:
            _fail(f"unknown activations {out['activations']!r}")
        want_dims = 2 if kind == "PackedLinear" else 4
        if len(out["orig_shape"]) != want_dims or len(out["shape"]) != 2:
            _fail(f"{kind}: orig_shape {out['orig_shape']} / shape {out['shape']} do not fit")
    return out


def _expected_arrays(kind: str, p: dict) -> dict:
    """Array name -> (shape or None if checked later, allowed dtypes) for one layer."""
    if kind.startswith("Packed"):
        mod = FORMATS[p["format"]]
        code_dtypes = ("uint64",) if p["format"] == "bitplanes" else ("uint8",)
        names = {}
        for k in range(p["n_terms"]):
            pre = _term_prefix(k)
            for n in mod.ARRAYS:
                names[pre + n] = (None, code_dtypes)
            names[pre + "alpha_pos"] = (None, _FLOAT_DTYPES)
            if not p["symmetric"]:
                names[pre + "alpha_neg"] = (None, _FLOAT_DTYPES)
            if p["has_offset"]:
                names[pre + "offset"] = (None, _FLOAT_DTYPES)
        if p["has_bias"]:
            names["bias"] = ((p["shape"][0],), _FLOAT_DTYPES)
        return names
    if kind in ("Linear", "Conv2d"):
        names = {"weight": (p["shape"], _FLOAT_DTYPES)}
        if p["has_bias"]:
            names["bias"] = ((p["shape"][0],), _FLOAT_DTYPES)
        return names
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        c = (p["num_features"],)
        return {n: (c, _FLOAT_DTYPES) for n in ("weight", "bias", "running_mean", "running_var")}
    return {}


def _read_npz(path) -> dict:
    """All members of the npz as arrays (no pickles), or ValueError."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise ValueError(f"refusing to load: cannot read {path!r}: {e}") from e
    try:
        zf = zipfile.ZipFile(io.BytesIO(blob))
        names = zf.namelist()
        out = {}
        for name in names:
            if not name.endswith(".npy"):
                _fail(f"member {name!r} is not a .npy array")
            data = zf.read(name)  # checks the CRC-32: flipped bytes fail here
            try:
                out[name[:-4]] = np.load(io.BytesIO(data), allow_pickle=False)
            except ValueError as e:
                if "pickle" in str(e).lower() or "object" in str(e).lower():
                    _fail(f"array {name[:-4]!r} holds Python objects (a pickle); not allowed")
                raise
    except ValueError as e:
        if str(e).startswith("refusing to load"):
            raise
        raise ValueError(f"refusing to load: corrupt array data in {path!r}: {e}") from e
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, RuntimeError) as e:
        raise ValueError(
            f"refusing to load: {path!r} is not a readable .npz (truncated or corrupt): {e}"
        ) from e
    return out


def load(path) -> Sequential:
    """Read a packed model written by :func:`save`; validate everything, then build it.

    Raises
    ------
    ValueError
        For any malformed, corrupt, unknown-version or inconsistent file (nothing is built).
    """
    arrays = _read_npz(path)
    if HEADER_KEY not in arrays:
        _fail("no __header__ array (not a ternref packed model)")
    raw = arrays.pop(HEADER_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        _fail("__header__ must be a 1-D uint8 array of JSON")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"refusing to load: header is not valid JSON: {e}") from e
    if not isinstance(header, dict) or set(header) != {"format", "version", "layers"}:
        _fail("header must be an object with exactly 'format', 'version', 'layers'")
    if header["format"] != FORMAT_NAME:
        _fail(f"format name {header['format']!r} is not {FORMAT_NAME!r}")
    if header["version"] != VERSION or isinstance(header["version"], bool):
        _fail(f"unsupported version {header['version']!r} (this ternref reads {VERSION})")
    if not isinstance(header["layers"], list):
        _fail("'layers' must be a list")

    _ensure_method_layers()  # the methods' activation quantizers register themselves

    # pass 1: check every layer description and every array; build nothing but registered
    # inference layers (from checked, plain data)
    plan = []
    used = set()
    for i, entry in enumerate(header["layers"]):
        if not isinstance(entry, dict) or set(entry) != {"type", "params", "arrays"}:
            _fail(f"layer {i}: entry must have exactly 'type', 'params', 'arrays'")
        kind = entry["type"]
        if not isinstance(kind, str):
            _fail(f"layer {i}: type must be a string")
        declared = entry["arrays"]
        registered = kind not in _BUILTIN_TYPES and kind in _INFERENCE_LAYERS
        if registered:
            params = entry["params"]
            if not isinstance(params, dict) or not isinstance(declared, dict):
                _fail(f"layer {i} ({kind}): params and arrays must be objects")
            expected = {name: (None, _NUMERIC_DTYPES) for name in declared}
        else:
            params = _check_params(kind, entry["params"])
            expected = _expected_arrays(kind, params)
        if not isinstance(declared, dict) or set(declared) != set(expected):
            got = sorted(declared) if isinstance(declared, dict) else declared
            _fail(f"layer {i} ({kind}): arrays {got} differ from the expected {sorted(expected)}")
        got_arrays = {}
        for name, (shape, dtypes) in expected.items():
            meta = declared[name]
            if not isinstance(meta, dict) or set(meta) != {"key", "shape", "dtype", "sha256"}:
                _fail(f"layer {i} ({kind}): bad description of array {name!r}")
            key = meta["key"]
            if key != f"{i}.{name}":
                _fail(f"layer {i} ({kind}): array {name!r} has unexpected key {key!r}")
            if key not in arrays:
                _fail(f"missing array {key!r}")
            a = arrays[key]
            used.add(key)
            if a.dtype.hasobject:
                _fail(f"array {key!r} holds Python objects")
            if a.dtype.str != meta["dtype"] or a.dtype.name not in dtypes:
                _fail(
                    f"array {key!r} has dtype {a.dtype.name}; header says {meta['dtype']!r}, "
                    f"allowed {list(dtypes)}"
                )
            if list(a.shape) != meta["shape"] or (shape is not None and a.shape != tuple(shape)):
                want = meta["shape"] if shape is None else list(shape)
                _fail(f"array {key!r} has shape {list(a.shape)}, expected {want}")
            if _sha256(a) != meta["sha256"]:
                _fail(f"array {key!r} fails its SHA-256 checksum (corrupt data)")
            got_arrays[name] = a
        if registered:
            try:
                got_arrays = {"layer": rebuild_inference_layer(kind, params, got_arrays)}
            except ValueError as e:
                raise ValueError(f"refusing to load: layer {i} ({kind}): {e}") from e
        elif kind.startswith("Packed"):
            terms = []
            for k in range(params["n_terms"]):
                pre = _term_prefix(k)
                p = Packed(
                    format=params["format"],
                    shape=params["shape"],
                    orig_shape=params["orig_shape"],
                    arrays={n: got_arrays[pre + n] for n in FORMATS[params["format"]].ARRAYS},
                    granularity=params["granularity"],
                    group_size=params["group_size"],
                    alpha_pos=got_arrays[pre + "alpha_pos"],
                    alpha_neg=got_arrays.get(pre + "alpha_neg"),
                    offset=got_arrays.get(pre + "offset"),
                )
                try:
                    p.validate()
                    # decode (refuses unused bit patterns), build the Ternary (refuses negative
                    # or non-finite scales), and re-encode: the file must be the canonical
                    # packing, in particular code 0 in every padding position
                    again = pack(unpack(p), p.format)
                    if any(not np.array_equal(again.arrays[n], p.arrays[n]) for n in p.arrays):
                        raise ValueError("packed codes are not canonical (non-zero padding)")
                except ValueError as e:
                    where = f"layer {i} ({kind})" + (f" term {k}" if k else "")
                    raise ValueError(f"refusing to load: {where}: {e}") from e
                terms.append(p)
            got_arrays["packed"] = terms[0] if len(terms) == 1 else terms
        plan.append((kind, params, got_arrays))
    extra = sorted(set(arrays) - used)
    if extra:
        _fail(f"unexpected extra arrays {extra}")

    # pass 2: everything checked; build the layers
    return PackedSequential(*(_build(kind, params, a) for kind, params, a in plan))


def _build(kind, params, a):
    if "layer" in a and kind not in _BUILTIN_TYPES:  # a registered layer, built in pass 1
        return a["layer"]
    if kind in ("PackedLinear", "PackedConv2d"):
        bias = a.get("bias")
        if kind == "PackedLinear":
            return PackedLinear(a["packed"], bias, params["activations"])
        return PackedConv2d(
            a["packed"], params["stride"], params["padding"], bias, params["activations"]
        )
    if kind in ("Linear", "Conv2d"):
        w = a["weight"]
        if kind == "Linear":
            layer = Linear(w.shape[1], w.shape[0], bias=params["has_bias"], dtype=w.dtype)
        else:
            layer = Conv2d(
                w.shape[1],
                w.shape[0],
                w.shape[2:],
                params["stride"],
                params["padding"],
                bias=params["has_bias"],
                dtype=w.dtype,
            )
        layer.weight.data = w.copy()
        if params["has_bias"]:
            layer.bias.data = a["bias"].astype(w.dtype)
        return layer.eval()
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        cls = BatchNorm1d if kind == "BatchNorm1d" else BatchNorm2d
        bn = cls(params["num_features"], eps=params["eps"], dtype=a["weight"].dtype)
        bn.weight.data = a["weight"].copy()
        bn.bias.data = a["bias"].copy()
        bn.running_mean = a["running_mean"].copy()
        bn.running_var = a["running_var"].copy()
        return bn.eval()
    if kind in ("MaxPool2d", "AvgPool2d"):
        cls = MaxPool2d if kind == "MaxPool2d" else AvgPool2d
        return cls(params["kernel_size"], params["stride"])
    return {"ReLU": ReLU, "Flatten": Flatten}[kind]()
