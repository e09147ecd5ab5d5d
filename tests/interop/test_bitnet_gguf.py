"""save_bitnet / read_bitnet: a shared-SubLN BitNet b1.58 LM as llama.cpp's ``bitnet`` GGUF.

Without llama.cpp: the metadata and tensors read back with the ``gguf`` library are what was
written (names and shapes of ``llama_model_bitnet::load_arch_tensors``, TQ blocks decoding to the
model's codes with the fp16 of its absmean scale), the model read back computes the saved
model's evaluation forward, and what the ``bitnet`` graph cannot express is refused.
"""

import numpy as np
import pytest

from ternref import methods
from ternref.interop import bitnet as bn
from ternref.interop import load_gguf, tq
from ternref.lm.io import StoredTernary
from ternref.methods.bitlinear import quantize_transformer
from ternref.nn import TransformerLM
from ternref.ternary import Ternary

gguf = pytest.importorskip("gguf")

STEMS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def shared_model(seed=0, subln="shared", **kw):
    """Widths multiple of 256, GQA, gains away from 1 (so a swapped norm would show)."""
    rng = np.random.default_rng(seed)
    cfg = {"dim": 256, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 512,
           "max_seq_len": 32, "rope_theta": 5e4, "norm_eps": 1e-6}  # fmt: skip
    cfg.update(kw)
    model = TransformerLM(cfg.pop("vocab_size", 256), rng=rng, **cfg)
    quantize_transformer(model, methods.get("bitnet"), subln=subln)
    for p in model.parameters():
        if p.data.ndim == 1:
            p.data[...] = rng.uniform(0.5, 1.5, p.shape)
    return model.eval()


def fp16_scales(model):
    """The model with each ternary's scale rounded to fp16: what a TQ file holds."""
    for name, t in bn.bitnet_layout(model).items():
        alpha = np.float32(np.float16(t.alpha_pos))
        bn._get(model, name).weight_quantizer = StoredTernary([Ternary(t.codes, alpha)])
    return model


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    model = shared_model()
    path = tmp_path_factory.mktemp("bitnet") / "shared.gguf"
    report = bn.save_bitnet(model, path, name="test model")
    return model, path, report


def test_metadata_is_what_llama_cpp_reads(written):
    model, path, _ = written
    reader = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in reader.fields.items() if not k.startswith("GGUF.")}
    assert f["general.architecture"] == "bitnet"
    assert f["general.name"] == "test model"
    assert f["general.file_type"] == 37  # LLAMA_FTYPE_MOSTLY_TQ2_0
    want = {"context_length": 32, "embedding_length": 256, "block_count": 2,
            "feed_forward_length": 512, "attention.head_count": 4,
            "attention.head_count_kv": 2, "rope.dimension_count": 64,
            "vocab_size": 256}  # fmt: skip
    for key, value in want.items():
        assert f[f"bitnet.{key}"] == value, key
    assert f["bitnet.rope.freq_base"] == pytest.approx(5e4)
    assert f["bitnet.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert f["tokenizer.ggml.model"] == "gpt2" and len(f["tokenizer.ggml.tokens"]) == 256
    assert not any(k.startswith("bitnet.rope.scaling") for k in f)


def test_tensors_are_the_models_weights(written):
    model, path, report = written
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    expected = {"token_embd.weight", "output_norm.weight"}
    for n in range(2):
        expected |= {f"blk.{n}.{s}.weight" for s in STEMS}
        expected |= {f"blk.{n}.{s}.weight" for s in
                     ("attn_norm", "ffn_norm", "attn_sub_norm", "ffn_sub_norm")}  # fmt: skip
    assert set(tensors) == expected  # no .scale, no output: the head is token_embd
    ternary = bn.bitnet_layout(model)
    for n, blk in enumerate(model.blocks):
        gains = {"attn_norm": blk.attn_norm, "ffn_norm": blk.ffn_norm,
                 "attn_sub_norm": blk.attn.o_proj.input_norm,
                 "ffn_sub_norm": blk.ffn.down_proj.input_norm}  # fmt: skip
        for stem, norm in gains.items():
            t = tensors[f"blk.{n}.{stem}.weight"]
            assert t.tensor_type.name == "F32"
            np.testing.assert_array_equal(np.array(t.data), norm.weight.data)
        for stem, path_in_block in zip(STEMS, bn.PROJECTIONS):
            t = tensors[f"blk.{n}.{stem}.weight"]
            want = ternary[f"blocks.{n}.{path_in_block}"]
            assert t.tensor_type.name == "TQ2_0"
            # ggml's shape order is (in, out); no row permutation (NEOX RoPE)
            assert tuple(int(s) for s in t.shape) == want.shape[::-1]
            raw = np.array(t.data, dtype=np.uint8).reshape(want.shape[0], -1)
            codes, d = tq.decode(raw, "tq2_0")
            np.testing.assert_array_equal(codes, want.codes)
            # one fp16 absmean scale in every block of 256: no .scale tensor needed
            np.testing.assert_array_equal(d, np.float16(want.alpha_pos).astype(d.dtype))
    np.testing.assert_array_equal(np.array(tensors["token_embd.weight"].data),
                                  model.token_embd.weight.data)  # fmt: skip
    rows = {r.name: r for r in report.tensors}
    assert rows["blk.0.attn_q.weight"].max_rel_scale_error <= 2.0**-11


def test_read_back_computes_the_saved_models_forward(written):
    model, path, _ = written
    back = load_gguf(path)
    ids = np.random.default_rng(3).integers(0, 256, (2, 9))
    expected = fp16_scales(shared_model())(ids)  # the same model, fp16 scales
    np.testing.assert_allclose(back(ids), expected, rtol=0, atol=1e-6)
    # and close to the float32-scale model (only the scale rounding differs)
    assert np.abs(back(ids) - model(ids)).max() < 0.1 * np.abs(model(ids)).max()
    assert bn.bitnet_layout(back).keys() == bn.bitnet_layout(model).keys()


def test_a_read_model_writes_the_same_tensors(written, tmp_path):
    _, path, _ = written
    again = tmp_path / "again.gguf"
    bn.save_bitnet(load_gguf(path), again, name="test model")
    a = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
    b = {t.name: np.array(t.data) for t in gguf.GGUFReader(again).tensors}
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_tq1_0(tmp_path):
    model = shared_model(n_layers=1)
    bn.save_bitnet(model, tmp_path / "m.gguf", quant="tq1_0")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    kinds = {t.tensor_type.name for t in reader.tensors if t.name.startswith("blk.0.attn_q")}
    assert kinds == {"TQ1_0"}
    ids = np.arange(7)[None]
    np.testing.assert_allclose(load_gguf(tmp_path / "m.gguf")(ids),
                               fp16_scales(shared_model(n_layers=1))(ids), atol=1e-6)  # fmt: skip


def test_q8k_and_float_activation_variants(written):
    _, path, _ = written
    base = load_gguf(path)
    q8k = bn.q8k_activations(load_gguf(path))
    flt = bn.float_activations(load_gguf(path))
    ids = np.arange(10)[None]
    assert all(isinstance(m.activation_quantizer, bn.Q8KActivation) for _, m in bn._bitlinears(q8k))
    assert all(m.activation_quantizer is None for _, m in bn._bitlinears(flt))
    # three different functions, each close to the others
    a, b, c = base(ids), q8k(ids), flt(ids)
    assert 0 < np.abs(a - c).max() < 0.2 * np.abs(c).max()
    assert 0 < np.abs(b - c).max() < 0.2 * np.abs(c).max()


def test_refuses_the_default_per_projection_subln(tmp_path):
    with pytest.raises(ValueError, match="per-projection SubLN placement.*subln='shared'"):
        bn.save_bitnet(shared_model(subln="projection", n_layers=1), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: shared_model(n_layers=1, tie_embeddings=False), "untied"),
        (lambda: shared_model(n_layers=1, ffn_dim=384), "multiple of 256"),
        (
            lambda: TransformerLM(256, dim=256, n_layers=1, n_heads=4, ffn_dim=512),
            "not a BitLinear",
        ),
    ],
)
def test_refuses_what_the_bitnet_graph_cannot_compute(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        bn.save_bitnet(make(), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_refuses_other_activations_and_vocabularies(tmp_path):
    model = shared_model(n_layers=1)
    model.blocks[0].attn.k_proj.activation_quantizer = None
    with pytest.raises(ValueError, match="attn.k_proj has activations None"):
        bn.save_bitnet(model, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="vocab_size 256"):
        bn.save_bitnet(shared_model(n_layers=1, vocab_size=300), tmp_path / "x.gguf")
    with pytest.raises(TypeError, match="TransformerLM"):
        bn.save_bitnet(object(), tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="quant"):
        bn.save_bitnet(shared_model(n_layers=1), tmp_path / "x.gguf", quant="q4_0")


def test_pack_bitnet_runs_the_packed_kernels_on_the_same_function(written):
    _, path, _ = written
    dense = load_gguf(path)
    packed = bn.pack_bitnet(load_gguf(path))
    layers = [bn._get(packed, name) for name in bn.bitnet_layout(packed)]
    assert all(isinstance(m, bn.PackedBitLinear) for m in layers)
    assert [m.input_norm is not None for m in layers[:7]] == [False, False, False, True,
                                                             False, False, True]  # fmt: skip
    for name, t in bn.bitnet_layout(dense).items():
        np.testing.assert_array_equal(bn._get(packed, name).ternary.dense(), t.dense())
    ids = np.random.default_rng(4).integers(0, 256, (1, 12))
    a, b = dense(ids), packed(ids)
    # the packed kernel's int8 quantizer may round a code at a boundary the other way
    # (ternref.methods.bitnet.BitNetActivation), nothing else differs
    assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()
    assert np.median(np.abs(a - b)) <= 1e-4 * np.abs(a).max()


def test_nearest_tie_flips_moves_one_activation_by_one_step():
    """The test helper behind the llama.cpp tolerances: on ``forward = Q8_K(x)`` itself, a flip
    changes one value by its block's step, so the largest change is the largest step among the
    flipped ones, and the patched function is restored."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from q8k_flips import nearest_tie_flips

    from ternref.interop import q8k

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 512)) * rng.uniform(0.5, 4, (3, 1))).astype(np.float32)
    orig = q8k.q8k_dequantize
    worst = nearest_tie_flips(lambda: q8k.q8k_dequantize(x), n=4)
    assert q8k.q8k_dequantize is orig
    _, d = q8k.q8k_quantize(x)
    assert worst > 0
    assert np.isclose(np.abs(d).ravel(), worst, rtol=1e-6, atol=0).any()


def test_save_gguf_writes_a_bitnet_lm_as_bitnet_and_save_llama_refuses_it(tmp_path):
    from ternref.interop import read_metadata, save_gguf, save_llama

    model = shared_model(n_layers=1)
    save_gguf(model, tmp_path / "m.gguf")
    assert read_metadata(tmp_path / "m.gguf")["general.architecture"] == "bitnet"
    with pytest.raises(ValueError, match="BitNet LM.*save_bitnet"):
        save_llama(model, tmp_path / "l.gguf")
    with pytest.raises(ValueError, match="BitNet LM.*save_bitnet"):
        save_llama(shared_model(n_layers=1, subln="projection"), tmp_path / "l.gguf")
    with pytest.raises(ValueError, match="per-projection SubLN"):
        save_gguf(shared_model(n_layers=1, subln="projection"), tmp_path / "p.gguf")
    assert not (tmp_path / "l.gguf").exists() and not (tmp_path / "p.gguf").exists()
