"""quantize_transformer / quantize_model on a TransformerLM: BitNet b1.58's structure, the other
weight-ternary methods on the same projections, their callbacks through the LM training loop,
whole-model gradients against the STE surrogate, and refusals."""

import numpy as np
import pytest

from ternref import methods
from ternref.data.text import load_text
from ternref.lm import TwoStageSchedule, adamw, train_lm
from ternref.methods.bitlinear import BitLinear, Identity, projections, quantize_transformer
from ternref.methods.bitnet import BitNetActivation
from ternref.methods.lat import LATQuantizer
from ternref.methods.ttq import TTQQuantizer
from ternref.nn import (
    Linear,
    LMCrossEntropyLoss,
    RMSNorm,
    TransformerLM,
    numerical_gradient,
    rel_error,
)

WEIGHT_METHODS = ["bitnet", "twn", "ttq", "lat", "admm", "proxquant", "inq", "ec2t", "fgq", "tc",
                  "trq", "residual"]  # fmt: skip


def tiny(rng=None, dtype=np.float32, **kw):
    cfg = {"dim": 16, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 24,
           "max_seq_len": 16}  # fmt: skip
    cfg.update(kw)
    return TransformerLM(256, rng=np.random.default_rng(0) if rng is None else rng,
                         dtype=dtype, **cfg)  # fmt: skip


def test_bitnet_makes_every_projection_a_bitlinear_and_removes_block_norms():
    model = tiny()
    embd, head = model.token_embd.weight, model.output.weight
    callbacks = methods.quantize_model(model, methods.get("bitnet"))
    layers = [layer for _, _, layer in projections(model)]
    assert len(layers) == 14 and all(isinstance(m, BitLinear) for m in layers)
    assert all(isinstance(m.activation_quantizer, BitNetActivation) for m in layers)
    assert all(isinstance(m.input_norm, RMSNorm) for m in layers)
    assert all(isinstance(blk.attn_norm, Identity) and isinstance(blk.ffn_norm, Identity)
               for blk in model.blocks)  # fmt: skip
    # embeddings, final norm and head stay full precision
    assert model.token_embd.weight is embd and model.output.weight is head
    assert model.output.weight_quantizer is None and not isinstance(model.output, BitLinear)
    assert isinstance(model.output_norm, RMSNorm)
    assert type(callbacks[-1]).__name__ == "TernaryStats"
    with pytest.raises(ValueError, match="already quantized"):
        quantize_transformer(model, methods.get("bitnet"))


def test_shared_subln_is_the_llama_cpp_bitnet_placement():
    """q/k/v and gate/up read the kept block norms; o and down keep a SubLN each; every
    projection still quantizes its input to int8; q, k and v see the same normalised input."""
    model = tiny()
    quantize_transformer(model, methods.get("bitnet"), subln="shared")
    for blk in model.blocks:
        assert isinstance(blk.attn_norm, RMSNorm) and isinstance(blk.ffn_norm, RMSNorm)
        for layer in (blk.attn.q_proj, blk.attn.k_proj, blk.attn.v_proj, blk.ffn.gate_proj,
                      blk.ffn.up_proj):  # fmt: skip
            assert isinstance(layer, BitLinear) and layer.input_norm is None
            assert isinstance(layer.activation_quantizer, BitNetActivation)
        for layer in (blk.attn.o_proj, blk.ffn.down_proj):
            assert isinstance(layer, BitLinear) and isinstance(layer.input_norm, RMSNorm)
            assert isinstance(layer.activation_quantizer, BitNetActivation)
    # the block's forward is the shared placement written out
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    blk = model.blocks[0]
    h = blk.attn_norm(x)
    q = blk.attn.q_proj(h)
    ref = blk.attn.q_proj.weight_quantizer.forward(blk.attn.q_proj.weight.data)
    act = BitNetActivation()(h.reshape(-1, 16)).reshape(h.shape)
    np.testing.assert_allclose(q, act @ ref.T, rtol=1e-5, atol=1e-6)


def test_default_subln_placement_is_unchanged():
    a, b = tiny(), tiny()
    quantize_transformer(a, methods.get("bitnet"))
    quantize_transformer(b, methods.get("bitnet"), subln="projection")
    ids = np.random.default_rng(0).integers(0, 256, (1, 6))
    np.testing.assert_array_equal(a(ids), b(ids))
    assert all(isinstance(m.input_norm, RMSNorm) for _, _, m in projections(a))


def test_weight_methods_attach_to_plain_linears_by_default():
    model = tiny()
    quantize_transformer(model, methods.get("ttq"))
    layers = [layer for _, _, layer in projections(model)]
    assert all(type(m) is Linear and isinstance(m.weight_quantizer, TTQQuantizer)
               for m in layers)  # fmt: skip
    assert all(isinstance(blk.attn_norm, RMSNorm) for blk in model.blocks)
    # TTQ's learned scales are parameters of the model (so the optimizer trains them)
    names = {p.name for p in model.parameters()}
    assert {"w_p", "w_n"} <= names


def test_bitlinear_option_puts_any_method_inside_bitlinear():
    model = tiny()
    quantize_transformer(model, methods.get("twn"), bitlinear=True)
    layer = model.blocks[0].ffn.down_proj
    assert isinstance(layer, BitLinear) and type(layer.weight_quantizer).__name__ == "TWNQuantizer"
    assert isinstance(layer.activation_quantizer, BitNetActivation)
    plain = tiny()
    quantize_transformer(plain, methods.get("bitnet"), bitlinear=False)
    q = plain.blocks[0].attn.q_proj
    assert isinstance(q, BitLinear) and q.input_norm is None  # int8 activations, no SubLN
    assert isinstance(plain.blocks[0].attn_norm, RMSNorm)
    floats = tiny()
    quantize_transformer(floats, methods.get("bitnet", quantize_activations=False))
    assert floats.blocks[0].attn.q_proj.activation_quantizer is None


@pytest.mark.parametrize("name", WEIGHT_METHODS)
def test_every_weight_method_trains_through_the_lm_loop(name):
    corpus = load_text()
    model = tiny()
    callbacks = quantize_transformer(model, methods.get(name))
    opt = adamw(model, 3e-3)
    sched = TwoStageSchedule(opt, 4, 3e-3, warmup=1)
    history = train_lm(model, corpus, opt, sched, steps=4, batch_size=2, context=16,
                       rng=np.random.default_rng(0), callbacks=callbacks, progress=False,
                       eval_bytes=64, log_every=1)  # fmt: skip
    assert len(history.steps) == 4 and np.isfinite(history.evals[-1]["bits_per_byte"])
    assert 0.0 <= history.evals[-1]["sparsity"] <= 1.0  # TernaryStats ran at the evaluation
    for _, _, layer in projections(model):
        terms = (layer.weight_quantizer.to_ternaries(layer.weight.data)
                 if hasattr(layer.weight_quantizer, "to_ternaries")
                 else [layer.weight_quantizer.to_ternary(layer.weight.data)])  # fmt: skip
        assert all(set(np.unique(t.codes)) <= {-1, 0, 1} for t in terms)


def test_ttq_clamp_and_lat_hessian_work_through_the_lm_loop():
    corpus = load_text()
    model = tiny()
    callbacks = quantize_transformer(model, methods.get("ttq"))
    quantizers = [layer.weight_quantizer for _, _, layer in projections(model)]
    clamp = callbacks[0]
    assert type(clamp).__name__ == "ClampScales" and clamp.quantizers == quantizers
    calls = []
    original = clamp.on_step_end

    def spy(model_, optimizer_):
        quantizers[0].w_p.data[...] = -1.0  # as if the step had made it negative
        original(model_, optimizer_)
        calls.append(float(quantizers[0].w_p.data))

    clamp.on_step_end = spy
    opt = adamw(model, 1e-3)
    train_lm(model, corpus, opt, TwoStageSchedule(opt, 2, 1e-3), steps=2, batch_size=1,
             context=8, rng=np.random.default_rng(0), callbacks=callbacks, progress=False,
             eval_bytes=16)  # fmt: skip
    assert calls == [0.0, 0.0]  # called after every step, and it clamped

    model = tiny()
    callbacks = quantize_transformer(model, methods.get("lat"))
    opt = adamw(model, 1e-3)
    train_lm(model, corpus, opt, TwoStageSchedule(opt, 2, 1e-3), steps=2, batch_size=1,
             context=8, rng=np.random.default_rng(0), callbacks=callbacks, progress=False,
             eval_bytes=16)  # fmt: skip
    layer = model.blocks[1].ffn.up_proj
    assert isinstance(layer.weight_quantizer, LATQuantizer)
    v = opt.state_for(layer.weight)["v"]
    np.testing.assert_array_equal(layer.weight_quantizer.second_moment(), v)  # D from Adam's v
    assert np.abs(layer.weight.data).max() <= 1.0  # LAT's latent clip ran


@pytest.mark.parametrize("subln", ["projection", "shared"])
def test_whole_bitnet_model_gradient_matches_the_ste_surrogate(subln):
    """Every parameter of a float64 BitNet b1.58 LM against finite differences of the model
    with each quantizer's offset frozen (the STE surrogate), for both SubLN placements (with
    "shared", the block norms' gains get the summed gradients of q, k, v and of gate, up)."""
    rng = np.random.default_rng(0)
    model = tiny(rng, np.float64, dim=8, n_heads=2, n_kv_heads=1, ffn_dim=6, max_seq_len=6)
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.shape) * (0.5 if p.data.ndim == 2 else 0.2) + (
            1.0 if p.data.ndim == 1 else 0.0
        )
    quantize_transformer(model, methods.get("bitnet"), subln=subln)
    ids = rng.integers(0, 256, (2, 5))
    targets = rng.integers(0, 256, (2, 5))
    loss = LMCrossEntropyLoss()
    model.zero_grad()
    loss(model(ids), targets)
    model.backward(loss.backward())
    analytic = {id(p): p.grad.copy() for p in model.parameters()}

    # freeze: each BitLinear's quantizers return the base point's quantized values plus the
    # (identity-derivative) change of their input, i.e. q(z) := z + (q(z0) - z0)
    class Frozen:
        def __init__(self, module, z0):
            self.offset = module.forward(z0) - z0

        def __call__(self, z):
            return z + self.offset

    for _, _, layer in projections(model):
        w0 = layer.weight.data.copy()
        layer.weight_quantizer.forward = Frozen(layer.weight_quantizer, w0)
    # activation offsets depend on each layer's (normalised) input: record them from one
    # forward, at the activation quantizer's input (after the SubLN, or the shared block norm)
    inputs = {}
    for _, _, layer in projections(model):
        act = layer.activation_quantizer
        orig = act.forward

        def record(h, _orig=orig, _layer=layer):
            inputs[id(_layer)] = h.copy()
            return _orig(h)

        act.forward = record
    model(ids)
    for _, _, layer in projections(model):
        layer.activation_quantizer.forward = Frozen(layer.activation_quantizer,
                                                    inputs[id(layer)])  # fmt: skip

    def f():
        return loss.forward(model(ids), targets)

    worst = 0.0
    for p in model.parameters():
        numeric = numerical_gradient(lambda _: f(), p.data)
        worst = max(worst, rel_error(analytic[id(p)], numeric))
    assert worst < 1e-6, worst


@pytest.mark.parametrize("name, match", [("kd", "teacher"), ("gxnor", "activations"),
                                         ("sttn", "activations")])  # fmt: skip
def test_refuses_methods_a_language_model_cannot_take(name, match):
    with pytest.raises(ValueError, match=match):
        quantize_transformer(tiny(), methods.get(name))


def test_refusals():
    with pytest.raises(TypeError, match="TransformerLM"):
        quantize_transformer(Linear(2, 2), methods.get("twn"))
    with pytest.raises(TypeError, match="bitlinear"):
        quantize_transformer(tiny(), methods.get("twn"), bitlinear="yes")
    with pytest.raises(ValueError, match="subln must be one of"):
        quantize_transformer(tiny(), methods.get("bitnet"), subln="block")
    with pytest.raises(ValueError, match="needs bitlinear=True"):
        quantize_transformer(tiny(), methods.get("bitnet"), bitlinear=False, subln="shared")
    with pytest.raises(ValueError, match="first_last"):
        methods.quantize_model(tiny(), methods.get("twn"), keep_full_precision="none")
