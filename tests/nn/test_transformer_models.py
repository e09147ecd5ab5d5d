"""TransformerLM and BertEncoder: whole-model finite-difference checks of every parameter (float64),
the tied head, KV-cache generation against the full forward, float32 against float64, the
GGUF / Hugging Face name maps, and argument checks."""

import numpy as np
import pytest

from ternref.methods.base import weight_layers
from ternref.nn import (
    BertEncoder,
    BertOutput,
    Linear,
    LMCrossEntropyLoss,
    TransformerLM,
    llama_ffn_dim,
    numerical_gradient,
    rel_error,
)

F64 = np.float64
TOL = 1e-6


def tiny_lm(rng, tie=True, dtype=F64, **kw):
    cfg = {"dim": 8, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 6,
           "max_seq_len": 8, "rope_theta": 100.0}  # fmt: skip
    cfg.update(kw)
    model = TransformerLM(11, tie_embeddings=tie, rng=rng, dtype=dtype, **cfg)
    # larger weights than the 0.02 init, so every term of the gradient is far from FD noise
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.shape) * (0.5 if p.data.ndim == 2 else 0.3) + (
            1.0 if p.data.ndim == 1 else 0.0
        )
    return model


def lm_loss_and_grads(model, ids, targets):
    loss = LMCrossEntropyLoss()
    model.zero_grad()
    value = loss(model(ids), targets)
    model.backward(loss.backward())
    return value, {id(p): p.grad.copy() for p in model.parameters()}


def worst_param_error(loss_fn, analytic, params):
    worst = 0.0
    for p in params:
        numeric = numerical_gradient(lambda _: loss_fn(), p.data)
        worst = max(worst, rel_error(analytic[id(p)], numeric))
    return worst


@pytest.mark.parametrize("tie", [True, False])
def test_transformer_lm_gradients_of_every_parameter(tie):
    rng = np.random.default_rng(0)
    model = tiny_lm(rng, tie)
    ids = rng.integers(0, 11, (2, 5))
    ids[0, 1] = ids[0, 3] = ids[1, 0]  # repeated tokens
    targets = rng.integers(0, 11, (2, 5))
    targets[1, 2] = -100  # one ignored position
    _, analytic = lm_loss_and_grads(model, ids, targets)
    params = model.parameters()
    assert len(params) == 1 + 2 * 9 + 1 + (0 if tie else 1)
    assert worst_param_error(lambda: LMCrossEntropyLoss()(model(ids), targets), analytic,
                             params) < TOL  # fmt: skip


def test_transformer_lm_one_token_and_one_head():
    rng = np.random.default_rng(1)
    model = tiny_lm(rng, dim=6, n_heads=1, n_kv_heads=1, n_layers=1, ffn_dim=5)
    ids, targets = np.array([[3]]), np.array([[7]])
    _, analytic = lm_loss_and_grads(model, ids, targets)
    assert worst_param_error(lambda: LMCrossEntropyLoss()(model(ids), targets), analytic,
                             model.parameters()) < TOL  # fmt: skip


def test_tied_head_accumulates_both_uses():
    rng = np.random.default_rng(2)
    model = tiny_lm(rng, tie=True)
    assert model.output.weight is model.token_embd.weight
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(id(p) for p in model.parameters())) == 20
    ids, targets = rng.integers(0, 11, (2, 4)), rng.integers(0, 11, (2, 4))
    loss = LMCrossEntropyLoss()
    model.zero_grad()
    logits = model(ids)
    value = loss(logits, targets)
    dlogits = loss.backward()
    model.backward(dlogits)
    h = model.output._x  # the head's input (B*T, D)
    head_part = dlogits.reshape(-1, 11).T @ h
    embed_part = model.token_embd.weight.grad - head_part
    # the embedding part is a scatter-add: rows of tokens absent from ids get nothing from it
    absent = np.setdiff1d(np.arange(11), ids)
    np.testing.assert_allclose(embed_part[absent], 0, atol=1e-12)
    assert np.abs(embed_part[ids[0, 0]]).max() > 1e-6
    # and the total is what finite differences see on the one shared matrix
    numeric = numerical_gradient(lambda _: LMCrossEntropyLoss()(model(ids), targets),
                                 model.token_embd.weight.data)  # fmt: skip
    assert rel_error(model.token_embd.weight.grad, numeric) < TOL
    assert value > 0


def test_generation_with_the_kv_cache_equals_the_full_forward():
    rng = np.random.default_rng(3)
    model = TransformerLM(13, dim=16, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=12,
                          rng=rng, dtype=F64)  # fmt: skip
    for p in model.parameters():  # sharper logits than the 0.02 init: no near-ties in argmax
        p.data *= 20 if p.data.ndim == 2 else 1
    prompt = rng.integers(0, 13, (3, 4))
    out = model.generate(prompt, 8)
    assert out.shape == (3, 12) and out.dtype == np.int64
    np.testing.assert_array_equal(out[:, :4], prompt)
    # greedy: each new token is the argmax of the full causal forward over what precedes it
    full = model(out[:, :-1])
    np.testing.assert_array_equal(out[:, 4:], full[:, 3:].argmax(-1))
    # and the cached logits equal the full forward's last row at every step
    caches = model.new_caches(3)
    model(out[:, :4], caches)
    for t in range(4, 11):
        step = model(out[:, t : t + 1], caches)[:, 0]
        np.testing.assert_allclose(step, full[:, t], rtol=1e-10, atol=1e-12)


def test_sampling_is_reproducible_and_checked():
    rng = np.random.default_rng(4)
    model = tiny_lm(rng)
    prompt = np.array([[1, 2]])
    a = model.generate(prompt, 5, greedy=False, temperature=0.8, rng=np.random.default_rng(9))
    b = model.generate(prompt, 5, greedy=False, temperature=0.8, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() < 11
    # a tiny temperature is greedy
    cold = model.generate(prompt, 5, greedy=False, temperature=1e-6, rng=rng)
    np.testing.assert_array_equal(cold, model.generate(prompt, 5))
    with pytest.raises(TypeError, match="Generator"):
        model.generate(prompt, 2, greedy=False)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 2, greedy=False, temperature=0.0, rng=rng)
    with pytest.raises(ValueError, match="exceeds max_seq_len=8"):
        model.generate(prompt, 7)
    assert model.generate(prompt, 0).shape == (1, 2)


def test_transformer_lm_float32_agrees_with_float64():
    rng = np.random.default_rng(5)
    m64 = TransformerLM(17, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16,
                        rng=rng, dtype=F64)  # fmt: skip
    m32 = TransformerLM(17, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16,
                        dtype=np.float32)  # fmt: skip
    for p32, p64 in zip(m32.parameters(), m64.parameters()):
        p64.data *= 10 if p64.data.ndim == 2 else 1
        p32.data[...] = p64.data
    ids, targets = rng.integers(0, 17, (3, 16)), rng.integers(0, 17, (3, 16))
    l64, g64 = lm_loss_and_grads(m64, ids, targets)
    l32, g32 = lm_loss_and_grads(m32, ids, targets)
    logits32 = m32(ids)
    assert logits32.dtype == np.float32
    assert rel_error(logits32, m64(ids)) < 1e-5
    assert abs(l32 - l64) < 1e-5 * abs(l64)
    for p32, p64 in zip(m32.parameters(), m64.parameters()):
        assert p32.grad.dtype == np.float32
        assert rel_error(g32[id(p32)], g64[id(p64)]) < 1e-4, p32


def test_transformer_lm_names_and_structure():
    rng = np.random.default_rng(6)
    for tie in (True, False):
        model = TransformerLM(50, dim=16, n_layers=3, n_heads=4, n_kv_heads=1, rng=rng,
                              tie_embeddings=tie)  # fmt: skip
        gguf, hf = model.gguf_tensors(), model.hf_tensors()
        params = model.parameters()
        for table in (gguf, hf):  # every parameter exactly once
            assert len(table) == len(params)
            assert {id(p) for p in table.values()} == {id(p) for p in params}
        assert list(gguf)[:3] == ["token_embd.weight", "blk.0.attn_norm.weight",
                                  "blk.0.attn_q.weight"]  # fmt: skip
        assert gguf["blk.2.attn_k.weight"].shape == (4, 16)  # one kv head of width 4
        assert gguf["blk.1.ffn_gate.weight"].shape == (llama_ffn_dim(16), 16)
        assert hf["model.layers.2.mlp.down_proj.weight"] is gguf["blk.2.ffn_down.weight"]
        assert ("output.weight" in gguf) == (not tie) == ("lm_head.weight" in hf)
        # 7 projections per block plus the head are Linear, found by the quantizer machinery
        linears = weight_layers(model)
        assert len(linears) == 3 * 7 + 1 and linears[-1] is model.output
        assert all(isinstance(m, Linear) and m.bias is None for m in linears)
    assert llama_ffn_dim(256) == 768 and llama_ffn_dim(4096) == 11008


def test_transformer_lm_input_checks():
    model = TransformerLM(10, dim=8, n_layers=1, n_heads=2, max_seq_len=4,
                          rng=np.random.default_rng(0))  # fmt: skip
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        model(np.array([[1, 10]]))
    with pytest.raises(ValueError, match=r"\(batch, T\)"):
        model(np.array([1, 2]))
    with pytest.raises(ValueError, match="max_seq_len=4"):
        model(np.zeros((1, 5), np.int64))
    with pytest.raises(RuntimeError, match="before forward"):
        TransformerLM(10, dim=8, n_layers=1, n_heads=2).backward(np.zeros((1, 1, 10)))
    with pytest.raises(ValueError, match="must divide dim"):
        TransformerLM(10, dim=10, n_heads=4)
    with pytest.raises(ValueError, match="even head_dim"):
        TransformerLM(10, dim=6, n_heads=2)
    with pytest.raises(TypeError, match="tie_embeddings"):
        TransformerLM(10, dim=8, n_heads=2, tie_embeddings=1)


# ------------------------------------------------------------------------------------ BERT


def tiny_bert(rng, dtype=F64, gelu="none"):
    model = BertEncoder(13, dim=6, n_layers=2, n_heads=3, ffn_dim=7, max_position=9,
                        norm_eps=1e-5, gelu=gelu, rng=rng, dtype=dtype)  # fmt: skip
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.shape) * 0.5 + (1.0 if p.data.ndim == 1 else 0.0)
    return model


def bert_case(rng):
    ids = rng.integers(0, 13, (2, 5))
    ids[1, 3] = ids[1, 0] = ids[0, 2]  # repeated tokens
    types = np.array([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # padding in sequence 1
    return ids, types, mask


def bert_grad_error(model, ids, types, mask, with_intermediates):
    rng = np.random.default_rng(11)
    out = model(ids, types, mask, output_hidden_states=True, output_attention_scores=True)
    dy = rng.standard_normal(out.last_hidden_state.shape)
    dh = ds = None
    if with_intermediates:
        dh = [rng.standard_normal(h.shape) for h in out.hidden_states]
        ds = [rng.standard_normal(s.shape) for s in out.attention_scores]

    def loss():
        o = model(ids, types, mask, output_hidden_states=True, output_attention_scores=True)
        value = np.sum(o.last_hidden_state * dy)
        if with_intermediates:
            value += sum(np.sum(h * g) for h, g in zip(o.hidden_states, dh))
            value += sum(np.sum(s * g) for s, g in zip(o.attention_scores, ds))
        return value

    model.zero_grad()
    loss()
    assert model.backward(dy, dh, ds) is None
    worst = 0.0
    inert = set()
    if not with_intermediates:
        # through the softmax alone the key bias has an exactly zero gradient (a row shift); a
        # loss on the raw scores does reach it, and then it is checked like the others
        for layer in model.layers:
            assert np.abs(layer.attention.k_proj.bias.grad).max() < 1e-12
        inert = {id(layer.attention.k_proj.bias) for layer in model.layers}
    for p in model.parameters():
        if id(p) not in inert:
            numeric = numerical_gradient(lambda _: loss(), p.data)
            worst = max(worst, rel_error(p.grad, numeric))
    return worst


@pytest.mark.parametrize("with_intermediates", [False, True])
def test_bert_encoder_gradients_of_every_parameter(with_intermediates):
    rng = np.random.default_rng(7)
    model = tiny_bert(rng)
    assert bert_grad_error(model, *bert_case(rng), with_intermediates) < TOL


def test_bert_encoder_forward_structure():
    rng = np.random.default_rng(8)
    model = tiny_bert(rng)
    ids, types, mask = bert_case(rng)
    out = model(ids, types, mask, output_hidden_states=True, output_attention_scores=True)
    assert isinstance(out, BertOutput)
    assert len(out.hidden_states) == 3 and len(out.attention_scores) == 2
    np.testing.assert_array_equal(out.hidden_states[-1], out.last_hidden_state)
    np.testing.assert_array_equal(model(ids, types, mask), out.last_hidden_state)
    assert out.attention_scores[0].shape == (2, 3, 5, 5)
    assert np.all(out.attention_scores[1][1, :, :, 3:] == 0)  # padded keys
    # the embedding output, by hand
    e = (model.word_embeddings.weight.data[ids] + model.position_embeddings.weight.data[:5]
         + model.token_type_embeddings.weight.data[types])  # fmt: skip
    mu, var = e.mean(-1, keepdims=True), e.var(-1, keepdims=True)
    want = (e - mu) / np.sqrt(var + 1e-5) * model.embedding_norm.weight.data
    np.testing.assert_allclose(out.hidden_states[0], want + model.embedding_norm.bias.data,
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    # padding changes nothing for the real tokens: sequence 1 truncated to its 3 tokens
    short = model(ids[1:, :3], types[1:, :3])
    np.testing.assert_allclose(out.last_hidden_state[1, :3], short[0], rtol=1e-10, atol=1e-12)
    # token types default to 0
    np.testing.assert_array_equal(model(ids[1:]), model(ids[1:], np.zeros((1, 5), np.int64)))
    # the tanh GELU is a different function
    rng2 = np.random.default_rng(8)
    assert not np.allclose(tiny_bert(rng2, gelu="tanh")(ids), tiny_bert(
        np.random.default_rng(8))(ids))  # fmt: skip


def test_bert_encoder_float32_agrees_with_float64():
    rng = np.random.default_rng(9)
    m64 = tiny_bert(rng)
    m32 = tiny_bert(np.random.default_rng(0), dtype=np.float32)
    for p32, p64 in zip(m32.parameters(), m64.parameters()):
        p32.data[...] = p64.data
    ids, types, mask = bert_case(rng)
    y64, y32 = m64(ids, types, mask), m32(ids, types, mask)
    assert y32.dtype == np.float32 and rel_error(y32, y64) < 1e-5
    dy = rng.standard_normal(y64.shape)
    m64.backward(dy)
    m32.backward(dy.astype(np.float32))
    inert = {id(layer.attention.k_proj.bias) for layer in m32.layers}  # exactly 0 in float64
    for p32, p64 in zip(m32.parameters(), m64.parameters()):
        assert p32.grad.dtype == np.float32
        if id(p32) in inert:
            assert np.abs(p32.grad).max() < 1e-6  # float32 rounding of a zero
        else:
            assert rel_error(p32.grad, p64.grad) < 1e-4


def test_bert_names_and_checks():
    model = BertEncoder(30, dim=12, n_layers=2, n_heads=3, ffn_dim=20, max_position=6,
                        rng=np.random.default_rng(0))  # fmt: skip
    hf = model.hf_tensors()
    assert len(hf) == 5 + 2 * 16 == len(model.parameters())
    assert {id(p) for p in hf.values()} == {id(p) for p in model.parameters()}
    query = hf["encoder.layer.1.attention.self.query.weight"]
    assert query is model.layers[1].attention.q_proj.weight
    assert hf["encoder.layer.0.intermediate.dense.weight"].shape == (20, 12)
    assert hf["embeddings.position_embeddings.weight"].shape == (6, 12)
    with pytest.raises(ValueError, match="max_position=6"):
        model(np.zeros((1, 7), np.int64))
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, 2\)"):
        model(np.zeros((1, 3), np.int64), np.full((1, 3), 2))
    with pytest.raises(ValueError, match="token_type_ids must have the shape"):
        model(np.zeros((1, 3), np.int64), np.zeros((1, 2), np.int64))
    model(np.zeros((1, 3), np.int64))
    with pytest.raises(ValueError, match="d_hidden_states must have 3 entries"):
        model.backward(np.zeros((1, 3, 12), np.float32), d_hidden_states=[None])
