"""Shared pieces of the GGUF tests: trained digits MLPs, fp16-rounded reference models, a
derived bound on logits, and a file rewriter built on gguf's own reader and writer."""

import numpy as np

from ternref import Ternary, methods, nn, optim
from ternref.packed import PackedConv2d, PackedLinear, PackedSequential, pack, unpack
from ternref.train import fit

U32 = 2.0**-24  # float32 unit roundoff


def train(name, data, teacher=None, epochs=1, model=None):
    """The digits MLP (64-256-256-10, first and last layers full precision) trained with
    method ``name`` (None: full precision) for ``epochs``, in evaluation mode."""
    model = model or nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks, loss = [], None
    if name is not None:
        extra = {"teacher": teacher} if methods.requires_teacher(name) else {}
        method = methods.get(name, **extra)
        callbacks = methods.quantize_model(model, method)
        loss = method.loss()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    fit(
        model,
        data,
        opt,
        loss=loss,
        epochs=epochs,
        batch_size=64,
        rng=np.random.default_rng(1),
        callbacks=callbacks,
        progress=False,
    )
    return model.eval()


def eval_weights(model):
    """``w_hat`` of every quantized layer, as its evaluation forward computes it."""
    return [
        np.asarray(layer.weight_quantizer(layer.weight.data))
        for layer in model.layers
        if getattr(layer, "weight_quantizer", None) is not None
    ]


def fp16_scales(t: Ternary) -> Ternary:
    """``t`` with every scale and offset rounded to fp16 (what a TQ tensor holds)."""

    def r(a):
        return None if a is None else np.asarray(a).astype(np.float16).astype(t.dtype)

    return Ternary(
        t.codes,
        r(t.alpha_pos),
        None if t.symmetric else r(t.alpha_neg),
        granularity=t.granularity,
        group_size=t.group_size,
        offset=r(t.offset),
    )


def fp16_reference(inference):
    """The packed model with the scales of every ternary term rounded to fp16 (a
    ``PackedSequential``, like every packed model: the same inference plan, the same float32
    operations as what ``load_gguf`` returns)."""
    layers = []
    for layer in inference.layers:
        if isinstance(layer, (PackedLinear, PackedConv2d)):
            terms = [pack(fp16_scales(unpack(p)), p.format) for p in layer.terms]
            terms = terms[0] if len(terms) == 1 else terms
            if isinstance(layer, PackedLinear):
                layer = PackedLinear(terms, layer.bias, layer.activations)
            else:
                layer = PackedConv2d(
                    terms, layer.stride, layer.padding, layer.bias, layer.activations
                )
        layers.append(layer)
    model = PackedSequential(*layers)
    model.training = False
    return model


def logit_bound(inference, x, eps):
    """Elementwise bound on ``|logits' - logits|`` when every ternary scale of the MLP
    ``inference`` moves by a relative ``eps`` and both forwards round in float32.

    Derivation, layer by layer, with ``h`` the exact input and ``delta`` the bound on how far
    the other forward's input is from it: a linear layer with weight ``W`` gives
    ``|W' h' - W h| <= |W| delta + |W' - W| |h|`` (plus float32 summation error
    ``gamma_K |W| |h|`` for each of the two forwards, ``gamma_K = K u / (1 - K u)``, except for
    a full-precision layer on equal inputs: both models run the same float32 code); a ternary
    weight's parts each move by at most ``eps`` of their magnitude, so ``|W' - W| <= eps
    sum_parts |part|``; ReLU is 1-Lipschitz; an activation quantizer is not continuous, so the
    bound needs ``delta = 0`` in front of one (true for these MLPs: the first, full-precision
    layer is exact).
    """
    h = np.asarray(x, np.float64)
    delta = np.zeros_like(h)
    for layer in inference.layers:
        if isinstance(layer, nn.Flatten):
            h, delta = h.reshape(len(h), -1), delta.reshape(len(h), -1)
            continue
        if isinstance(layer, nn.ReLU):
            h = np.maximum(h, 0)
            continue
        if isinstance(layer, PackedLinear):
            w = sum(unpack(p).dense().astype(np.float64) for p in layer.terms)
            # every split part (+1 side, -1 side, offset) moves by eps of its own magnitude
            magnitude = sum(_split_magnitude(unpack(p)) for p in layer.terms)
            b = 0 if layer.bias is None else layer.bias.astype(np.float64)
            k = w.shape[1]
            gamma = k * U32 / (1 - k * U32)
            delta = delta @ np.abs(w).T + eps * (np.abs(h) @ magnitude.T)
            delta += 2 * gamma * (np.abs(h) @ np.abs(w).T) + 2 * U32 * np.abs(h @ w.T + b)
            h = h @ w.T + b
        elif isinstance(layer, nn.Linear):
            w = layer.weight.data.astype(np.float64)
            b = 0 if layer.bias is None else layer.bias.data.astype(np.float64)
            if np.any(delta):  # (on equal inputs both models run the same float32 Linear)
                gamma = w.shape[1] * U32 / (1 - w.shape[1] * U32)
                delta = delta @ np.abs(w).T + 2 * gamma * (np.abs(h) @ np.abs(w).T)
                delta += 2 * U32 * np.abs(h @ w.T + b)
            else:
                delta = np.zeros((len(h), w.shape[0]))
            h = h @ w.T + b
        else:  # an activation quantizer: must see the same input in both models
            assert np.all(delta == 0), f"bound undefined after {layer!r}"
            h = np.asarray(layer.forward(h.astype(np.float32)), np.float64)
    return delta


def _split_magnitude(t: Ternary) -> np.ndarray:
    """Sum over the split parts of ``|part|``: ``alpha_pos [c=+1] + alpha_neg [c=-1] + |beta|``."""
    m = t.shape[0]
    pos = np.where(t.codes > 0, t.expand(t.alpha_pos), 0)
    neg = np.where(t.codes < 0, t.expand(t.alpha_neg), 0)
    off = 0 if t.offset is None else np.abs(t.expand(t.offset))
    return (pos + neg + off).astype(np.float64).reshape(m, -1)


def rewrite(gguf, src, dst, *, replace=None, set_kv=None, drop_kv=(), drop_tensors=(), add=None):
    """Copy the GGUF file ``src`` to ``dst`` with gguf's reader and writer, changing things.

    ``replace``/``add``: tensor name -> ``(array, GGMLQuantizationType or None)`` (raw bytes of
    a quantized type, or a float/int array); ``set_kv``: key -> ``(value, GGUFValueType)``.
    """
    replace, set_kv, add = replace or {}, set_kv or {}, add or {}
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop_kv:
            continue
        if key in set_kv:
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
    for key, (value, vtype) in set_kv.items():
        writer.add_key_value(key, value, vtype)
    for t in reader.tensors:
        if t.name in drop_tensors:
            continue
        if t.name in replace:
            data, qtype = replace[t.name]
        else:
            data = np.array(t.data)
            qtype = None if t.tensor_type.name in ("F32", "F16", "F64") else t.tensor_type
        writer.add_tensor(t.name, data, raw_dtype=qtype)
    for name, (data, qtype) in add.items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def layer_weight_from_gguf(gguf, path, i):
    """Layer ``i``'s weight as any GGUF reader can compute it from the file: the sum of
    ``gguf.quants.dequantize`` of every tensor its metadata lists, padding columns dropped."""
    from ternref.interop import tq

    reader = gguf.GGUFReader(path)
    key = f"ternref.layers.{i}."
    f = reader.fields
    shape = tuple(f[key + "weight.shape"].contents())
    gran = f[key + "weight.granularity"].contents()
    gs = f[key + "weight.group_size"].contents() if gran == "group" else None
    layout = tq.RowLayout(tq.row_length(shape), gran, gs, f[key + "weight.padded"].contents())
    by_name = {t.name: t for t in reader.tensors}
    total = 0
    for name in f[key + "weight.tensors"].contents():
        t = by_name[name]
        seen = gguf.quants.dequantize(np.array(t.data), t.tensor_type).astype(np.float64)
        total = total + seen[:, layout.logical_columns()]
    return total.reshape(shape)
