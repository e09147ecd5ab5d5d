"""Transformer layers: finite-difference checks of every backward (float64), forward semantics
against independent formulas, numerical safety of the attention softmax, the KV cache, and the
language-model loss."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref.methods.base import weight_layers
from ternref.nn import (
    GELU,
    Embedding,
    KVCache,
    LayerNorm,
    Linear,
    LMCrossEntropyLoss,
    Module,
    MultiHeadAttention,
    Parameter,
    RMSNorm,
    RoPE,
    SiLU,
    SwiGLU,
    check_layer_gradients,
    numerical_gradient,
    rel_error,
)
from ternref.nn.activations import erf, erf_numpy

F64 = np.float64
TOL = 1e-6
seeds = st.integers(0, 2**32 - 1)
FD = settings(max_examples=30)


class ScaleQuantizer(Module):
    """``w_hat = c * w`` with a learned scalar c (an exact chain rule, checkable by FD)."""

    def __init__(self, c=1.3):
        super().__init__()
        self.c = Parameter(np.array(c, dtype=F64), "c")
        self._w = None

    def forward(self, w):
        self._w = w
        return self.c.data * w

    def backward(self, dw_hat):
        self.c.grad += np.sum(dw_hat * self._w)
        return self.c.data * dw_hat


class WithArgs(Module):
    """Runs ``layer.forward(x, *args, **kwargs)`` so that check_layer_gradients can pass masks."""

    def __init__(self, layer, *args, **kwargs):
        super().__init__()
        self.layer = layer
        self.args, self.kwargs = args, kwargs

    def forward(self, x):
        return self.layer.forward(x, *self.args, **self.kwargs)

    def backward(self, dy):
        return self.layer.backward(dy)


def attention_grad_error(attn, x, rng, *args, **kwargs):
    """check_layer_gradients for attention, with the key bias checked separately.

    Without RoPE, dL/db_k is exactly 0: b_k adds ``q_i . b_k`` to every score of row i, and the
    softmax is invariant to a shift of its row (with RoPE the bias is rotated by each key's
    angle, so the shift differs per key and the gradient is not 0). Finite differences give
    O(1e-11) noise there, which the 1e-8 floor of rel_error would turn into a spurious 1e-3.
    """
    layer = WithArgs(attn, *args, **kwargs)
    key_bias_is_inert = attn.k_proj.bias is not None and attn.rope is None
    params = [p for p in layer.parameters() if not (key_bias_is_inert and p is attn.k_proj.bias)]
    layer.zero_grad()
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    analytic = [layer.backward(dy)] + [p.grad.copy() for p in params]
    if key_bias_is_inert:
        assert np.abs(attn.k_proj.bias.grad).max() < 1e-12
    numeric = [numerical_gradient(lambda _: layer.forward(x), a, dy) for a in
               [x] + [p.data for p in params]]  # fmt: skip
    return max(rel_error(a, n) for a, n in zip(analytic, numeric))


def fd_grads(loss, arrays, h=1e-6):
    """Central differences of the scalar ``loss()`` w.r.t. each array (perturbed in place)."""
    return [numerical_gradient(lambda _: loss(), a, h=h) for a in arrays]


# ------------------------------------------------------------------ Linear, leading dims


@FD
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.integers(1, 5),
       st.integers(1, 4), st.booleans(), seeds)  # fmt: skip
def test_linear_with_leading_dimensions(lead, fin, fout, bias, seed):
    rng = np.random.default_rng(seed)
    layer = Linear(fin, fout, bias=bias, rng=rng, dtype=F64)
    x = rng.standard_normal((*lead, fin))
    assert check_layer_gradients(layer, x, rng) < TOL
    # the same rows as a 2-D batch
    y = layer(x)
    assert y.shape == (*lead, fout)
    np.testing.assert_allclose(y.reshape(-1, fout), layer(x.reshape(-1, fin)), rtol=1e-13)


def test_linear_leading_dims_with_a_weight_quantizer_and_errors():
    rng = np.random.default_rng(0)
    layer = Linear(3, 2, rng=rng, dtype=F64, weight_quantizer=ScaleQuantizer())
    assert check_layer_gradients(layer, rng.standard_normal((2, 4, 3)), rng) < TOL
    layer(np.ones((2, 4, 3)))
    with pytest.raises(ValueError, match=r"dy must have the output shape \(2, 4, 2\)"):
        layer.backward(np.ones((8, 2)))
    with pytest.raises(ValueError, match=r"\(\*, 3\)"):
        layer(np.ones((2, 4, 2)))


# ---------------------------------------------------------------------------- Embedding


@FD
@given(st.integers(1, 6), st.integers(1, 4), st.lists(st.integers(1, 4), min_size=1,
       max_size=2), seeds)  # fmt: skip
def test_embedding_gradient_with_repeated_indices(vocab, dim, shape, seed):
    rng = np.random.default_rng(seed)
    emb = Embedding(vocab, dim, rng=rng, dtype=F64)
    ids = rng.integers(0, vocab, size=shape)
    ids.flat[0] = ids.flat[-1]  # at least one repeat whenever there are two positions
    dy = rng.standard_normal((*shape, dim))
    y = emb(ids)
    np.testing.assert_array_equal(y, emb.weight.data[ids])
    emb.zero_grad()
    assert emb.backward(dy) is None
    numeric = numerical_gradient(lambda _: np.sum(emb(ids) * dy), emb.weight.data)
    assert rel_error(emb.weight.grad, numeric) < TOL


def test_embedding_repeated_row_receives_the_sum():
    emb = Embedding(4, 2, rng=np.random.default_rng(0), dtype=F64)
    ids = np.array([[1, 3, 1], [1, 0, 3]])
    emb(ids)
    dy = np.arange(12, dtype=F64).reshape(2, 3, 2)
    emb.backward(dy)
    np.testing.assert_array_equal(emb.weight.grad[1], dy[0, 0] + dy[0, 2] + dy[1, 0])
    np.testing.assert_array_equal(emb.weight.grad[3], dy[0, 1] + dy[1, 2])
    np.testing.assert_array_equal(emb.weight.grad[2], 0)


def test_embedding_validation():
    emb = Embedding(5, 3, rng=np.random.default_rng(0))
    assert emb(np.array([0, 4])).dtype == np.float32
    with pytest.raises(ValueError, match=r"\[0, 5\).*got ids in \[0, 5\]"):
        emb(np.array([0, 5]))
    with pytest.raises(ValueError, match=r"got ids in \[-1, 2\]"):
        emb(np.array([-1, 2]))
    with pytest.raises(TypeError, match="integer array"):
        emb(np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="integer array"):
        emb(np.array([True, False]))
    with pytest.raises(ValueError, match="empty"):
        emb(np.zeros((0,), np.int64))
    with pytest.raises(RuntimeError, match="before forward"):
        Embedding(2, 2).backward(np.ones((1, 2)))
    emb(np.array([[1, 2]]))
    with pytest.raises(ValueError, match=r"output shape \(1, 2, 3\)"):
        emb.backward(np.ones((2, 3), np.float32))


# -------------------------------------------------------------------------------- norms


@FD
@given(st.sampled_from(["layer", "rms"]), st.lists(st.integers(1, 3), min_size=0, max_size=2),
       st.integers(1, 7), seeds)  # fmt: skip
def test_norm_gradients(kind, lead, dim, seed):
    # LayerNorm of 2 values is +-1 whatever they are (RMSNorm of 1 value is its sign): dx is then
    # eps-sized and below finite-difference resolution, as BatchNorm's m = 2 case
    dim = max(dim, 3 if kind == "layer" else 2)
    rng = np.random.default_rng(seed)
    norm = LayerNorm(dim, eps=1e-5, dtype=F64) if kind == "layer" else RMSNorm(dim, 1e-5, F64)
    norm.weight.data[:] = rng.uniform(0.5, 2.0, dim)
    if kind == "layer":
        norm.bias.data[:] = rng.standard_normal(dim)
    x = rng.standard_normal((*lead, dim)) * rng.uniform(0.3, 3.0) + rng.standard_normal()
    assert check_layer_gradients(norm, x, rng) < TOL


def test_layernorm_and_rmsnorm_forward_formulas():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5)) * 3 + 1
    ln = LayerNorm(5, eps=1e-3, dtype=F64)
    ln.weight.data[:] = rng.standard_normal(5)
    ln.bias.data[:] = rng.standard_normal(5)
    for b in range(2):
        for t in range(3):
            row = x[b, t]
            mu = sum(row) / 5
            var = sum((v - mu) ** 2 for v in row) / 5  # biased, as torch.nn.LayerNorm
            want = [(row[i] - mu) / math.sqrt(var + 1e-3) * ln.weight.data[i] + ln.bias.data[i]
                    for i in range(5)]  # fmt: skip
            np.testing.assert_allclose(ln(x)[b, t], want, rtol=1e-12)
    rms = RMSNorm(5, eps=1e-3, dtype=F64)
    rms.weight.data[:] = rng.standard_normal(5)
    row = x[1, 2]
    want = row / math.sqrt(sum(v * v for v in row) / 5 + 1e-3) * rms.weight.data
    np.testing.assert_allclose(rms(x)[1, 2], want, rtol=1e-12)


def test_norms_of_a_zero_row_are_finite_and_keep_dtype():
    for norm in (LayerNorm(4), RMSNorm(4)):
        x = np.zeros((2, 4), np.float32)
        y = norm(x)
        dx = norm.backward(np.ones_like(y))
        assert y.dtype == dx.dtype == np.float32
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\).*got shape \(2, 3\)"):
        RMSNorm(4)(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(4, eps=0.0)


# -------------------------------------------------------------------------- activations


def test_erf_kernel_equals_its_twin_and_math_erf():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(500) * 3, [0.0, -0.0, 1e-30, 6.0, -30.0, np.inf]])
    want = np.array([math.erf(v) for v in x])
    np.testing.assert_array_equal(erf(x), want)
    np.testing.assert_array_equal(erf_numpy(x), want)
    x32 = x.astype(np.float32)
    assert erf(x32).dtype == np.float32
    np.testing.assert_allclose(erf(x32), erf_numpy(x32), rtol=1e-6, atol=1e-7)
    strided = x.reshape(2, -1)[:, ::2]  # non-contiguous input
    np.testing.assert_array_equal(erf(strided), want.reshape(2, -1)[:, ::2])


def test_erf_kernel_runs_as_plain_python(run_without_jit):
    run_without_jit("""
        import math
        import numpy as np
        from ternref.nn.activations import erf
        x = np.linspace(-4, 4, 17)
        assert np.array_equal(erf(x), [math.erf(v) for v in x])
        print("ok")
    """)


@FD
@given(st.sampled_from(["gelu", "gelu_tanh", "silu"]), st.lists(st.integers(1, 4), min_size=1,
       max_size=3), seeds)  # fmt: skip
def test_activation_gradients(kind, shape, seed):
    rng = np.random.default_rng(seed)
    layer = {"gelu": GELU(), "gelu_tanh": GELU("tanh"), "silu": SiLU()}[kind]
    assert check_layer_gradients(layer, rng.standard_normal(shape) * 3, rng) < TOL


def test_gelu_forms_against_their_formulas():
    x = np.linspace(-6, 6, 241)
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(GELU()(x), exact, rtol=1e-14, atol=1e-300)
    c = math.sqrt(2 / math.pi)
    tanh_form = np.array([0.5 * v * (1 + math.tanh(c * (v + 0.044715 * v**3))) for v in x])
    np.testing.assert_allclose(GELU("tanh")(x), tanh_form, rtol=1e-13, atol=1e-15)
    # the approximation is within 5e-4 of the exact form, and not equal to it
    gap = np.abs(GELU("tanh")(x) - exact).max()
    assert 1e-5 < gap < 5e-4
    with pytest.raises(ValueError, match="approximate"):
        GELU("erf")


def test_silu_is_stable_for_large_inputs():
    x = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], np.float32)
    with np.errstate(all="raise"):
        silu = SiLU()
        y = silu(x)
        dx = silu.backward(np.ones_like(x))
    np.testing.assert_allclose(y, [0, 0, 0, 100, 1e4], atol=1e-30)
    np.testing.assert_allclose(dx, [0, 0, 0.5, 1, 1], atol=1e-30)
    np.testing.assert_allclose(SiLU()(np.array([1.5])), 1.5 / (1 + math.exp(-1.5)), rtol=1e-15)


@FD
@given(st.integers(1, 5), st.integers(1, 6), st.lists(st.integers(1, 3), min_size=1,
       max_size=2), seeds)  # fmt: skip
def test_swiglu_gradients(dim, hidden, lead, seed):
    rng = np.random.default_rng(seed)
    layer = SwiGLU(dim, hidden, rng=rng, dtype=F64)
    assert check_layer_gradients(layer, rng.standard_normal((*lead, dim)), rng) < TOL


def test_swiglu_forward_and_backward_params():
    rng = np.random.default_rng(0)
    layer = SwiGLU(4, 6, rng=rng, dtype=F64)
    x = rng.standard_normal((3, 4))
    w1, w3, w2 = (layer.gate_proj.weight.data, layer.up_proj.weight.data,
                  layer.down_proj.weight.data)  # fmt: skip
    a = x @ w1.T
    want = (a / (1 + np.exp(-a)) * (x @ w3.T)) @ w2.T
    np.testing.assert_allclose(layer(x), want, rtol=1e-12)
    dy = rng.standard_normal((3, 4))
    layer.backward(dy)
    full = [p.grad.copy() for p in layer.parameters()]
    layer.zero_grad()
    layer(x)
    layer.backward_params(dy)
    for g, p in zip(full, layer.parameters()):
        np.testing.assert_allclose(p.grad, g, rtol=1e-13)


# --------------------------------------------------------------------------------- RoPE


def rope_complex(x, positions, theta):
    """Independent formula: pair (i, i + d/2) as x_i + i x_{i+d/2}, multiply by e^{i p w_i}."""
    d = x.shape[-1]
    w = np.array([theta ** (-2 * i / d) for i in range(d // 2)])
    z = x[..., : d // 2] + 1j * x[..., d // 2 :]
    z = z * np.exp(1j * np.asarray(positions)[:, None] * w)
    return np.concatenate([z.real, z.imag], axis=-1)


@pytest.mark.parametrize("theta", [10000.0, 1e5, 37.5])
def test_rope_is_the_rotate_half_convention(theta):
    rng = np.random.default_rng(0)
    rope = RoPE(6, theta=theta)
    x = rng.standard_normal((2, 3, 5, 6))
    np.testing.assert_allclose(rope.rotate(x), rope_complex(x, np.arange(5), theta), rtol=1e-12,
                               atol=1e-14)  # fmt: skip
    np.testing.assert_allclose(rope.rotate(x, start=7), rope_complex(x, np.arange(7, 12), theta),
                               rtol=1e-12, atol=1e-14)  # fmt: skip


def test_rope_relative_position_and_transpose():
    rng = np.random.default_rng(1)
    rope = RoPE(8, theta=100.0)
    q, k = rng.standard_normal((1, 8)), rng.standard_normal((1, 8))
    # <R(m) q, R(n) k> depends on m - n only
    dots = [np.sum(rope.rotate(q, m) * rope.rotate(k, n)) for m, n in [(3, 1), (7, 5), (12, 10)]]
    np.testing.assert_allclose(dots, dots[0], rtol=1e-12)
    # the backward is the transpose: <R x, y> = <x, R^T y>
    x, y = rng.standard_normal((4, 8)), rng.standard_normal((4, 8))
    assert math.isclose(np.sum(rope.rotate(x, 2) * y), np.sum(x * rope.rotate_backward(y, 2)),
                        rel_tol=1e-12)  # fmt: skip
    np.testing.assert_allclose(rope.rotate_backward(rope.rotate(x, 2), 2), x, atol=1e-14)
    with pytest.raises(ValueError, match="even"):
        RoPE(5)


# ---------------------------------------------------------------------------- attention


def reference_attention(attn, x, pad=None):
    """Loops over batch and heads, repeats kv heads, applies RoPE by the complex formula."""
    b, t, _ = x.shape
    h, hkv, d = attn.n_heads, attn.n_kv_heads, attn.head_dim

    def proj(layer, z):
        out = z @ layer.weight.data.T
        return out + layer.bias.data if layer.bias is not None else out

    out = np.zeros((b, t, h * d))
    for bi in range(b):
        q = proj(attn.q_proj, x[bi]).reshape(t, h, d)
        k = proj(attn.k_proj, x[bi]).reshape(t, hkv, d)
        v = proj(attn.v_proj, x[bi]).reshape(t, hkv, d)
        for hi in range(h):
            kv = hi // (h // hkv)
            qh, kh = q[:, hi], k[:, kv]
            if attn.rope is not None:
                qh = rope_complex(qh, np.arange(t), attn.rope.theta)
                kh = rope_complex(kh, np.arange(t), attn.rope.theta)
            for i in range(t):
                visible = [j for j in range(t) if (not attn.causal or j <= i)
                           and (pad is None or pad[bi, j])]  # fmt: skip
                if not visible:
                    continue
                s = np.array([qh[i] @ kh[j] / math.sqrt(d) for j in visible])
                p = np.exp(s - s.max())
                p /= p.sum()
                out[bi, i, hi * d : (hi + 1) * d] = p @ v[visible, kv]
    return proj(attn.o_proj, out)


@st.composite
def attention_case(draw):
    hkv = draw(st.integers(1, 2))
    h = hkv * draw(st.integers(1, 3))
    d = draw(st.sampled_from([2, 4])) if draw(st.booleans()) else draw(st.integers(1, 3))
    rope = d % 2 == 0 and draw(st.booleans())
    b, t = draw(st.integers(1, 2)), draw(st.integers(1, 5))
    causal, bias, pad = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    return b, t, h, hkv, d, rope, causal, bias, pad


def build_attention(case, rng, dtype=F64):
    b, t, h, hkv, d, rope, causal, bias, pad = case
    attn = MultiHeadAttention(h * d, h, hkv, causal=causal, rope=RoPE(d, 50.0) if rope else None,
                              bias=bias, rng=rng, dtype=dtype)  # fmt: skip
    mask = None
    if pad:
        mask = rng.random((b, t)) < 0.7
        mask[0, 0] = False  # at least one padded key
        if b == 2:
            mask[1, :] = False  # a sequence with every key padded: fully masked rows
    return attn, mask


@settings(max_examples=60)
@given(attention_case(), seeds)
def test_attention_matches_the_loop_reference(case, seed):
    rng = np.random.default_rng(seed)
    attn, mask = build_attention(case, rng)
    x = rng.standard_normal((case[0], case[1], attn.dim))
    np.testing.assert_allclose(attn(x, mask), reference_attention(attn, x, mask), rtol=1e-10,
                               atol=1e-12)  # fmt: skip


@settings(max_examples=60)
@given(attention_case(), seeds)
def test_attention_gradients(case, seed):
    rng = np.random.default_rng(seed)
    attn, mask = build_attention(case, rng)
    x = rng.standard_normal((case[0], case[1], attn.dim))
    assert attention_grad_error(attn, x, rng, mask) < TOL


def test_attention_single_head_single_token_and_gqa_sum():
    rng = np.random.default_rng(3)
    one = MultiHeadAttention(3, 1, causal=True, rng=rng, dtype=F64)
    x = rng.standard_normal((2, 1, 3))
    assert attention_grad_error(one, x, rng) < TOL
    # one token attends only to itself: y = o_proj(v_proj(x))
    want = one.o_proj(one.v_proj(x))
    np.testing.assert_allclose(one(x), want, rtol=1e-13)
    mqa = MultiHeadAttention(8, 4, 1, causal=True, rope=RoPE(2), bias=False, rng=rng, dtype=F64)
    assert check_layer_gradients(mqa, rng.standard_normal((1, 6, 8)), rng) < TOL


def test_attention_scores_output_and_their_gradient():
    rng = np.random.default_rng(4)
    attn = MultiHeadAttention(6, 3, causal=True, rope=RoPE(2), rng=rng, dtype=F64)
    x = rng.standard_normal((2, 4, 6))
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    y, scores = attn(x, mask, output_scores=True)
    np.testing.assert_array_equal(y, attn(x, mask))
    assert scores.shape == (2, 3, 4, 4)
    # causal entries and padded keys are 0; the rest are q.k / sqrt(d)
    assert np.all(scores[:, :, 0, 1:] == 0) and np.all(scores[0, :, :, 3] == 0)
    q = attn.rope.rotate((x @ attn.q_proj.weight.data.T + attn.q_proj.bias.data)
                         .reshape(2, 4, 3, 2).transpose(0, 2, 1, 3))  # fmt: skip
    k = attn.rope.rotate((x @ attn.k_proj.weight.data.T + attn.k_proj.bias.data)
                         .reshape(2, 4, 3, 2).transpose(0, 2, 1, 3))  # fmt: skip
    np.testing.assert_allclose(scores[1, 2, 3, 1], q[1, 2, 3] @ k[1, 2, 1] / math.sqrt(2),
                               rtol=1e-12)  # fmt: skip
    # gradient of  sum(y * dy) + sum(scores * ds)  against finite differences
    dy, ds = rng.standard_normal(y.shape), rng.standard_normal(scores.shape)

    def loss():
        yy, ss = attn(x, mask, output_scores=True)
        return np.sum(yy * dy) + np.sum(ss * ds)

    attn.zero_grad()
    attn(x, mask, output_scores=True)
    dx = attn.backward(dy, ds)
    params = attn.parameters()
    analytic = [dx] + [p.grad.copy() for p in params]
    numeric = fd_grads(loss, [x] + [p.data for p in params])
    assert max(rel_error(a, n) for a, n in zip(analytic, numeric)) < TOL


def test_softmax_is_safe_for_large_logits_and_fully_masked_rows():
    rng = np.random.default_rng(5)
    attn = MultiHeadAttention(4, 2, rng=rng, dtype=np.float32)
    attn.q_proj.weight.data *= 3e3  # scores of order 1e4: exp would overflow without the shift
    attn.k_proj.weight.data *= 3e3
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    mask = np.ones((2, 5), bool)
    mask[1] = False  # every key of sequence 1 padded
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y, scores = attn(x, mask, output_scores=True)
        dx = attn.backward(np.ones_like(y))
    assert np.abs(scores).max() > 1e4
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    for p in attn.parameters():
        assert np.all(np.isfinite(p.grad))
    # a fully masked row attends to nothing: its output is the output projection's bias
    np.testing.assert_allclose(y[1], np.broadcast_to(attn.o_proj.bias.data, (5, 4)), atol=1e-6)
    # and the padding-free sequence still has rows that sum to one (checked through v = 1)
    attn.v_proj.weight.data[:] = 0
    attn.v_proj.bias.data[:] = 1
    attn.o_proj.weight.data[:] = np.eye(4)
    attn.o_proj.bias.data[:] = 0
    np.testing.assert_allclose(attn(x, mask)[0], 1, rtol=1e-6)


def test_attention_float32_agrees_with_float64():
    rng = np.random.default_rng(6)
    a64 = MultiHeadAttention(16, 4, 2, causal=True, rope=RoPE(4), bias=False, rng=rng, dtype=F64)
    a32 = MultiHeadAttention(16, 4, 2, causal=True, rope=RoPE(4), bias=False, dtype=np.float32)
    for p32, p64 in zip(a32.parameters(), a64.parameters()):
        p32.data[...] = p64.data
    x = rng.standard_normal((3, 7, 16))
    dy = rng.standard_normal(x.shape)
    y64, y32 = a64(x), a32(x.astype(np.float32))
    dx64, dx32 = a64.backward(dy), a32.backward(dy.astype(np.float32))
    assert y32.dtype == dx32.dtype == np.float32
    assert rel_error(y32, y64) < 1e-5 and rel_error(dx32, dx64) < 1e-5
    for p32, p64 in zip(a32.parameters(), a64.parameters()):
        assert p32.grad.dtype == np.float32
        assert rel_error(p32.grad, p64.grad) < 1e-5


@pytest.mark.parametrize(("hkv", "rope"), [(4, True), (2, True), (1, False)])
def test_kv_cache_equals_the_full_causal_forward(hkv, rope):
    rng = np.random.default_rng(7)
    attn = MultiHeadAttention(8, 4, hkv, causal=True, rope=RoPE(2, 1e4) if rope else None,
                              bias=True, rng=rng, dtype=F64)  # fmt: skip
    x = rng.standard_normal((2, 6, 8))
    full = attn(x)
    cache = attn.new_cache(2, 6, F64)
    prefix = attn(x[:, :3], cache=cache)  # prefill three positions at once
    np.testing.assert_allclose(prefix, full[:, :3], rtol=1e-12, atol=1e-14)
    for t in range(3, 6):
        step = attn(x[:, t : t + 1], cache=cache)
        np.testing.assert_allclose(step[:, 0], full[:, t], rtol=1e-12, atol=1e-14)
    assert cache.length == 6
    with pytest.raises(RuntimeError, match="KV cache"):
        attn.backward(np.ones((2, 1, 8)))
    with pytest.raises(ValueError, match="full"):
        attn(x[:, :1], cache=cache)
    with pytest.raises(ValueError, match=r"= \(2, 6\), got .* shape \(2, 4\)"):
        attn(x, np.ones((2, 4)))  # padding mask of the wrong length


def test_attention_argument_checks():
    with pytest.raises(ValueError, match="must divide dim"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="must divide n_heads"):
        MultiHeadAttention(12, 4, 3)
    with pytest.raises(ValueError, match="head width"):
        MultiHeadAttention(12, 4, rope=RoPE(4))
    with pytest.raises(TypeError, match="RoPE"):
        MultiHeadAttention(12, 4, rope=10000.0)
    attn = MultiHeadAttention(4, 2)
    with pytest.raises(ValueError, match=r"\(B, T, 4\)"):
        attn(np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="only 0"):
        attn(np.ones((1, 2, 4), np.float32), np.array([[1, 2]]))
    with pytest.raises(TypeError, match="KVCache"):
        attn(np.ones((1, 2, 4), np.float32), cache="cache")
    with pytest.raises(ValueError, match="KVCache.append"):
        KVCache(1, 2, 2, 4).append(np.ones((1, 1, 1, 2)), np.ones((1, 1, 1, 2)))


def test_quantizer_hooks_reach_the_attention_projections():
    rng = np.random.default_rng(8)
    attn = MultiHeadAttention(4, 2, 1, causal=True, rope=RoPE(2), rng=rng, dtype=F64)
    ffn = SwiGLU(4, 5, rng=rng, dtype=F64)
    assert weight_layers(attn) == [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
    assert weight_layers(ffn) == [ffn.gate_proj, ffn.up_proj, ffn.down_proj]
    for layer in weight_layers(attn):
        layer.weight_quantizer = ScaleQuantizer(rng.uniform(0.5, 1.5))
    assert len(attn.parameters()) == 4 * 2 + 4  # weights, biases and the four learned scales
    assert attention_grad_error(attn, rng.standard_normal((2, 3, 4)), rng) < TOL


# ------------------------------------------------------------------------------ LM loss


def test_lm_cross_entropy_value_gradient_and_ignore_index():
    rng = np.random.default_rng(9)
    z = rng.standard_normal((2, 5, 7)) * 3
    t = rng.integers(0, 7, (2, 5))
    t[0, 1] = t[1, 4] = -100
    loss = LMCrossEntropyLoss()
    value = loss(z, t)
    terms = [math.log(sum(math.exp(v) for v in z[b, i])) - z[b, i, t[b, i]]
             for b in range(2) for i in range(5) if t[b, i] != -100]  # fmt: skip
    assert math.isclose(value, sum(terms) / 8, rel_tol=1e-12)
    assert loss.tokens == 8
    grad = loss.backward()
    assert np.all(grad[0, 1] == 0) and np.all(grad[1, 4] == 0)
    numeric = numerical_gradient(lambda _: LMCrossEntropyLoss()(z, t), z)
    assert rel_error(grad, numeric) < TOL


def test_lm_cross_entropy_edge_cases():
    z = np.array([[[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]]], np.float32)
    loss = LMCrossEntropyLoss(ignore_index=-1)
    with np.errstate(over="raise", invalid="raise"):
        value = loss(z, np.array([[1, 2]]))
    assert math.isclose(value, (1e4 + math.log(3)) / 2, rel_tol=1e-6)
    assert loss.backward().dtype == np.float32
    # every target ignored: 0, zero gradient, no NaN
    assert loss(z, np.array([[-1, -1]])) == 0.0
    assert np.all(loss.backward() == 0)
    with pytest.raises(ValueError, match=r"\[0, 3\) or equal ignore_index=-1"):
        loss(z, np.array([[0, 3]]))
    with pytest.raises(ValueError, match=r"shape \(B, T\) = \(1, 2\)"):
        loss(z, np.array([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        loss(z, np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="3 dimensions"):
        loss(z[0], np.array([0, 1]))
