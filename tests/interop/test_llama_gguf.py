"""TransformerLM <-> llama-architecture GGUF: RoPE rows, TQ projections, metadata, refusals.

Everything here runs without llama.cpp; ``test_llama_cpp.py`` runs the files in it.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from ternref import Ternary, projections
from ternref.interop import llama, load_gguf, save_gguf
from ternref.interop.llama import (
    PackedProjection,
    from_gguf_rows,
    pack_projections,
    perplexity,
    projection_layers,
    save_llama,
    set_projection_weights,
    ternaries,
    ternarize,
    to_gguf_rows,
)
from ternref.nn import TransformerLM

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import GGUFValueType as V  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from gguf_helpers import fp16_scales, rewrite  # noqa: E402


def small_lm(seed=0, **kw):
    """Widths that are multiples of 256 (TQ rows), GQA, untied or tied, byte vocabulary."""
    cfg = {"dim": 256, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 512,
           "max_seq_len": 64, "rope_theta": 1e4, "norm_eps": 1e-5}  # fmt: skip
    cfg.update(kw)
    model = TransformerLM(256, rng=np.random.default_rng(seed), **cfg)
    rng = np.random.default_rng(seed + 1)
    for blk in model.blocks:  # norm gains that are not all 1, so a misplaced norm shows
        blk.attn_norm.weight.data[...] = rng.uniform(0.5, 1.5, model.dim)
        blk.ffn_norm.weight.data[...] = rng.uniform(0.5, 1.5, model.dim)
    model.output_norm.weight.data[...] = rng.uniform(0.5, 1.5, model.dim)
    return model.eval()


IDS = np.array([[72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 0, 255]])


# ------------------------------------------------------------------------------ RoPE rows


def rope_adjacent(x, theta):
    """llama.cpp's LLAMA_ROPE_TYPE_NORM, written from its definition: pairs (2i, 2i+1) of a
    head rotate by p * theta^(-2i/d). x: (T, H, d)."""
    t, _, d = x.shape
    ang = np.arange(t)[:, None] * theta ** (-np.arange(0, d, 2) / d)[None, :]  # (T, d/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 1::2] * cos + x[..., 0::2] * sin
    return out


def test_rows_permutation_is_the_converters_and_invertible():
    """Row 2i + s of a head in the file is row s d/2 + i of the model; from undoes to."""
    heads, d = 3, 8
    a = np.arange(heads * d)[:, None] * np.ones((1, 2))
    g = to_gguf_rows(a, heads)
    for h in range(heads):
        for i in range(d // 2):
            for s in (0, 1):
                assert g[h * d + 2 * i + s, 0] == h * d + s * d // 2 + i
    np.testing.assert_array_equal(from_gguf_rows(g, heads), a)
    with pytest.raises(ValueError, match="heads"):
        to_gguf_rows(np.zeros((10, 2)), 3)


def test_permuted_rows_under_adjacent_rope_give_ternrefs_attention_scores():
    """The point of the permutation: q.k scores with ternref's rotate_half RoPE on the model's
    rows equal those of llama.cpp's adjacent-pair RoPE on the file's rows."""
    rng = np.random.default_rng(0)
    model = small_lm()
    attn = model.blocks[0].attn
    x = rng.standard_normal((1, 6, model.dim)).astype(np.float64)
    d, h, hkv = attn.head_dim, attn.n_heads, attn.n_kv_heads
    wq, wk = attn.q_proj.weight.data.astype(np.float64), attn.k_proj.weight.data.astype(np.float64)

    def scores(q, k):  # (T, H, d), (T, Hkv, d) -> (H, T, T)
        k = np.repeat(k, h // hkv, axis=1)
        return np.einsum("thd,shd->hts", q, k)

    def rope_ref(y, heads):  # ternref's RoPE on (T, heads, d) via its (heads, T, d) layout
        return model.rope.rotate(y.reshape(6, heads, d).transpose(1, 0, 2)).transpose(1, 0, 2)

    q_ref, k_ref = rope_ref(x[0] @ wq.T, h), rope_ref(x[0] @ wk.T, hkv)
    q_cpp = rope_adjacent((x[0] @ to_gguf_rows(wq, h).T).reshape(6, h, d), model.rope.theta)
    k_cpp = rope_adjacent((x[0] @ to_gguf_rows(wk, hkv).T).reshape(6, hkv, d), model.rope.theta)
    np.testing.assert_allclose(scores(q_cpp, k_cpp), scores(q_ref, k_ref), atol=1e-9)
    # without the permutation they differ: the test can fail
    q_bad = rope_adjacent((x[0] @ wq.T).reshape(6, h, d), model.rope.theta)
    k_bad = rope_adjacent((x[0] @ wk.T).reshape(6, hkv, d), model.rope.theta)
    assert np.abs(scores(q_bad, k_bad) - scores(q_ref, k_ref)).max() > 1e-3


# ------------------------------------------------------------------------------ float files


def test_float_file_round_trips_exactly(tmp_path):
    """ternary=None writes every projection F32: read back, the model is the same function
    (untied head, so the output tensor is written and read too)."""
    model = small_lm(tie_embeddings=False)
    path = tmp_path / "f32.gguf"
    save_llama(model, path)
    back = load_gguf(path)
    assert isinstance(back, TransformerLM) and not back.tie_embeddings
    for name, p in model.gguf_tensors().items():
        np.testing.assert_array_equal(back.gguf_tensors()[name].data, p.data, err_msg=name)
    np.testing.assert_array_equal(back(IDS), model(IDS))


def test_file_holds_permuted_q_and_k(tmp_path):
    """The tensors on disk are in llama.cpp's row order (what the converter writes)."""
    model = small_lm()
    path = tmp_path / "f32.gguf"
    save_llama(model, path)
    by_name = {t.name: t for t in gguf.GGUFReader(path).tensors}
    blk = model.blocks[1]
    on_disk = np.array(by_name["blk.1.attn_q.weight"].data)
    np.testing.assert_array_equal(on_disk, to_gguf_rows(blk.attn.q_proj.weight.data, 4))
    on_disk = np.array(by_name["blk.1.attn_k.weight"].data)
    np.testing.assert_array_equal(on_disk, to_gguf_rows(blk.attn.k_proj.weight.data, 2))
    on_disk = np.array(by_name["blk.1.attn_v.weight"].data)
    np.testing.assert_array_equal(on_disk, blk.attn.v_proj.weight.data)


def test_metadata_llama_cpp_needs(tmp_path):
    model = small_lm()
    path = tmp_path / "m.gguf"
    save_llama(model, path, ternarize(model, "bitnet"), projection="bitnet")
    f = gguf.GGUFReader(path).fields
    want = {
        "general.architecture": (V.STRING, "llama"),
        "llama.context_length": (V.UINT32, 64),
        "llama.embedding_length": (V.UINT32, 256),
        "llama.block_count": (V.UINT32, 2),
        "llama.feed_forward_length": (V.UINT32, 512),
        "llama.attention.head_count": (V.UINT32, 4),
        "llama.attention.head_count_kv": (V.UINT32, 2),
        "llama.rope.dimension_count": (V.UINT32, 64),
        "llama.vocab_size": (V.UINT32, 256),
        "tokenizer.ggml.model": (V.STRING, "gpt2"),
        "general.file_type": (V.UINT32, 37),  # LLAMA_FTYPE_MOSTLY_TQ2_0
        "ternref.projection": (V.STRING, "bitnet"),
    }
    for key, (vtype, value) in want.items():
        assert f[key].types[0] == vtype and f[key].contents() == value, key
    assert f["llama.attention.layer_norm_rms_epsilon"].types[0] == V.FLOAT32
    assert f["llama.attention.layer_norm_rms_epsilon"].contents() == pytest.approx(1e-5)
    assert f["llama.rope.freq_base"].types[0] == V.FLOAT32
    assert f["llama.rope.freq_base"].contents() == 1e4
    assert f["tokenizer.ggml.tokens"].contents() == llama.byte_vocabulary()
    assert f["tokenizer.ggml.merges"].contents() == ["\u00ff \u00ff"]  # never applies


def test_byte_vocabulary_is_gpt2s_byte_alphabet():
    """The 256 texts are distinct single characters and equal to the alphabet of Hugging Face's
    ByteLevel pre-tokenizer (an independent implementation of GPT-2's map), byte by byte."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = llama.byte_vocabulary()
    assert len(set(vocab)) == 256 and all(len(c) == 1 for c in vocab)
    byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for b in range(256):
        text = bytes([b]).decode("latin-1")
        if b >= 128:  # one byte of a UTF-8 sequence cannot be a str on its own: use a pair
            continue
        ((piece, _),) = byte_level.pre_tokenize_str(text)
        assert piece == vocab[b], b
    # the high bytes through a two-byte character: its UTF-8 bytes map to two vocab entries
    for ch in "é€😀ÿ":
        ((piece, _),) = byte_level.pre_tokenize_str(ch)
        assert piece == "".join(vocab[b] for b in ch.encode("utf-8")), ch


def test_byte_file_tokenizes_to_utf8_bytes(tmp_path):
    """The file's own vocabulary, rebuilt by gguf_tokenizer, turns text into its UTF-8 bytes
    (the ids of ternref.data's byte tokens) and back."""
    pytest.importorskip("tokenizers")
    from ternref.interop.tokenizer import gguf_tokenizer

    model = small_lm()
    path = tmp_path / "m.gguf"
    save_llama(model, path)
    tok = gguf_tokenizer(path)
    for text in ["Hello, world!\n", "  two  spaces", "Pâté à 3€ 😀", "\x00\x7f"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == list(text.encode("utf-8")), text
        assert tok.decode(ids) == text


# ------------------------------------------------------------------------------ ternary files


@pytest.fixture(scope="module")
def ternary_file(tmp_path_factory):
    model = small_lm()
    tern = ternarize(model, "bitnet")
    path = tmp_path_factory.mktemp("llama") / "bitnet.gguf"
    report = save_llama(model, path, tern, projection="bitnet")
    return model, tern, path, report


def test_tq_tensors_dequantize_in_gguf_to_the_ternaries(ternary_file):
    """gguf's own dequantizer of every TQ2_0 tensor, rows un-permuted, is w_hat with its scale
    rounded to fp16 (the only error; reported)."""
    model, tern, path, report = ternary_file
    by_name = {t.name: t for t in gguf.GGUFReader(path).tensors}
    for name, t in tern.items():
        n, path_in_block = int(name.split(".")[1]), name.split(".", 2)[2]
        tensor = by_name[f"blk.{n}.{llama.PROJECTIONS[path_in_block]}.weight"]
        assert tensor.tensor_type == Q.TQ2_0
        seen = gguf.quants.dequantize(np.array(tensor.data), tensor.tensor_type)
        if path_in_block in ("attn.q_proj", "attn.k_proj"):
            heads = model.n_heads if path_in_block == "attn.q_proj" else model.n_kv_heads
            seen = from_gguf_rows(seen, heads)
        np.testing.assert_array_equal(seen, fp16_scales(t).dense(), err_msg=name)
        assert np.abs(seen - t.dense()).max() <= 2.0**-11 * float(t.alpha_pos.max())
    rows = [r for r in report.tensors if r.ggml_type == "TQ2_0"]
    assert len(rows) == 14 and all(r.bits_per_weight == 2.0625 for r in rows)
    assert 0 < report.max_rel_scale_error <= 2.0**-11
    types = {r.name: r.ggml_type for r in report.tensors}
    assert types["token_embd.weight"] == "F32" and types["blk.0.attn_norm.weight"] == "F32"


def test_read_back_is_packed_and_predicts_what_the_model_does(ternary_file):
    """load_gguf gives PackedProjection layers whose ternaries are exactly the fp16-scaled ones
    (back at tensor granularity), and logits equal to the float model with those weights."""
    model, tern, path, _ = ternary_file
    back = load_gguf(path)
    got = ternaries(back)
    assert list(got) == list(tern)
    for name, t in tern.items():
        assert got[name] == fp16_scales(t), name
        assert got[name].granularity == "tensor"
    reference = set_projection_weights(small_lm(), {k: fp16_scales(t) for k, t in tern.items()})
    np.testing.assert_allclose(back(IDS), reference(IDS), rtol=0, atol=2e-5)
    # and the packed model generates what the float model generates
    np.testing.assert_array_equal(back.generate(IDS[:, :4], 8), reference.generate(IDS[:, :4], 8))


def test_packed_projections_equal_float_projections():
    """pack_projections (Numba kernels) computes the same function as set_projection_weights
    (BLAS), for a batch of sequences."""
    model = small_lm()
    tern = ternarize(model, "twn", granularity="channel")
    dense = set_projection_weights(small_lm(), tern)
    packed = pack_projections(small_lm(), tern)
    assert all(isinstance(v, PackedProjection) for v in projection_layers(packed).values())
    ids = np.random.default_rng(0).integers(0, 256, (3, 10))
    np.testing.assert_allclose(packed(ids), dense(ids), rtol=0, atol=2e-5)
    with pytest.raises(RuntimeError, match="inference only"):
        projection_layers(packed)["blocks.0.attn.q_proj"].backward(np.zeros((1, 256)))


def test_channel_scales_are_permuted_with_their_rows(tmp_path):
    """Per-row scales of q/k move with the rows; the file reads back to the same ternaries."""
    model = small_lm()
    tern = ternarize(model, "twn", granularity="channel")
    path = tmp_path / "ch.gguf"
    save_gguf(model, path, ternary=tern)  # the save_gguf entry point dispatches here
    back = ternaries(load_gguf(path))
    for name, t in tern.items():
        assert back[name] == fp16_scales(t), name


def test_layers_as_keys_and_tq1(tmp_path):
    """The mapping may be keyed by the Linear objects; TQ1_0 works the same way."""
    model = small_lm()
    layers = projection_layers(model)
    tern = {layers[name]: t for name, t in ternarize(model, "bitnet").items()}
    path = tmp_path / "tq1.gguf"
    report = save_llama(model, path, tern, quant="tq1_0")
    assert {r.ggml_type for r in report.tensors if r.role == "ternary"} == {"TQ1_0"}
    back = ternaries(load_gguf(path, format="tq1"))
    assert all(back[name] == fp16_scales(t) for name, t in zip(layers, tern.values()))


# ------------------------------------------------------------------------------ refusals


def test_refuses_what_llama_cpp_cannot_compute_exactly(tmp_path):
    model = small_lm()
    path = tmp_path / "x.gguf"
    tern = ternarize(model, "bitnet")
    asym = dict(tern)
    asym["blocks.1.ffn.up_proj"] = projections.ttq(model.blocks[1].ffn.up_proj.weight.data)
    with pytest.raises(ValueError, match=r"blocks\.1\.ffn\.up_proj.*asymmetric"):
        save_llama(model, path, asym)
    groups = dict(tern)
    groups["blocks.0.attn.v_proj"] = projections.fgq(model.blocks[0].attn.v_proj.weight.data)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.v_proj.*multiple of 256"):
        save_llama(model, path, groups)
    assert not path.exists()  # nothing written
    narrow = small_lm(dim=128, n_heads=2, n_kv_heads=1, ffn_dim=256)
    with pytest.raises(ValueError, match="multiple of 256"):
        save_llama(narrow, path, ternarize(narrow, "bitnet"))


def test_refuses_bad_mappings_and_options(tmp_path):
    model = small_lm()
    path = tmp_path / "x.gguf"
    t = ternarize(model, "bitnet")["blocks.0.attn.q_proj"]
    with pytest.raises(ValueError, match="not a projection"):
        save_llama(model, path, {"blocks.0.attn.q": t})
    with pytest.raises(ValueError, match="shape"):
        save_llama(model, path, {"blocks.0.attn.k_proj": t})
    with pytest.raises(TypeError, match="Ternary"):
        save_llama(model, path, {"blocks.0.attn.q_proj": t.dense()})
    with pytest.raises(ValueError, match="not a projection"):
        save_llama(model, path, {model.token_embd: t})
    with pytest.raises(ValueError, match="vocab_size 256"):
        save_llama(TransformerLM(300, dim=256, n_layers=1, n_heads=4), path)
    with pytest.raises(ValueError, match="Sequential"):
        save_gguf(model, path, split=True)
    with pytest.raises(ValueError, match="takes gradient"):
        ternarize(model, "terngrad")


def test_vocabulary_none(tmp_path):
    model = TransformerLM(300, dim=256, n_layers=1, n_heads=4, ffn_dim=256, max_seq_len=16,
                          rng=np.random.default_rng(0))  # fmt: skip
    path = tmp_path / "ids.gguf"
    save_llama(model, path, ternarize(model, "bitnet"), vocabulary="none")
    f = gguf.GGUFReader(path).fields
    assert f["tokenizer.ggml.model"].contents() == "none"
    assert load_gguf(path).vocab_size == 300


@pytest.fixture(scope="module")
def float_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama") / "f32.gguf"
    save_llama(small_lm(), path)
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"set_kv": {"llama.rope.scaling.type": ("linear", V.STRING)}}, "rope.scaling.type"),
        ({"set_kv": {"llama.rope.dimension_count": (32, V.UINT32)}}, "dimension_count = 32"),
        ({"set_kv": {"llama.attention.head_count": (3, V.UINT32)}}, "do not split"),
        ({"set_kv": {"llama.vocab_size": (300, V.UINT32)}}, "vocab_size = 300"),
        ({"add": {"blk.0.attn_q.bias": (np.zeros(256, np.float32), None)}}, "unexpected"),
        ({"drop_tensors": ("blk.1.ffn_down.weight",)}, "ffn_down.weight' is missing"),
        ({"drop_kv": ("llama.attention.layer_norm_rms_epsilon",)}, "epsilon' is missing"),
    ],
)
def test_refuses_files_transformerlm_cannot_express(float_file, tmp_path, change, message):
    bad = tmp_path / "bad.gguf"
    rewrite(gguf, float_file, bad, **change)
    with pytest.raises(ValueError, match=message):
        load_gguf(bad)


def test_quantized_tensors_need_dequantize(float_file, tmp_path):
    """A Q8_0 projection (a file llama.cpp's quantize tool could make) is refused by default,
    dequantized with a counting warning on request."""
    w = np.array(
        {t.name: t for t in gguf.GGUFReader(float_file).tensors}["blk.0.ffn_up.weight"].data
    )
    q = gguf.quants.quantize(w, Q.Q8_0)
    bad = tmp_path / "q8.gguf"
    rewrite(gguf, float_file, bad, replace={"blk.0.ffn_up.weight": (q, Q.Q8_0)})
    with pytest.raises(ValueError, match=r"blk\.0\.ffn_up\.weight.*Q8_0.*dequantize=True"):
        load_gguf(bad)
    with pytest.warns(UserWarning, match="Q8_0 x1"):
        model = load_gguf(bad, dequantize=True)
    np.testing.assert_array_equal(
        model.blocks[0].ffn.up_proj.weight.data, gguf.quants.dequantize(q, Q.Q8_0)
    )


# ------------------------------------------------------------------------------ perplexity


def test_perplexity_is_the_mean_nll_over_windows():
    model = small_lm()
    ids = np.random.default_rng(3).integers(0, 256, 21)
    r = perplexity(model, ids, context=8)
    nll = []
    for start in (0, 8, 16):
        w = ids[start : start + 8]
        logits = model(w[None, :-1])[0].astype(np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))[:, None]
        logp -= logits.max(1, keepdims=True)
        nll.extend(-logp[np.arange(len(w) - 1), w[1:]])
    assert r["tokens"] == 7 + 7 + 4 and r["windows"] == 3
    assert r["nll"] == pytest.approx(np.mean(nll), rel=1e-12)
    assert r["ppl"] == pytest.approx(np.exp(np.mean(nll)), rel=1e-12)
    with pytest.raises(ValueError, match="context"):
        perplexity(model, ids, context=1)


def test_ternarize_stochastic_needs_and_uses_its_generator():
    model = small_lm()
    with pytest.raises((TypeError, ValueError)):
        ternarize(model, "tc")
    a = ternarize(model, "tc", rng=np.random.default_rng(5))
    b = ternarize(model, "tc", rng=np.random.default_rng(5))
    assert all(a[k] == b[k] for k in a)
    assert isinstance(next(iter(a.values())), Ternary)
