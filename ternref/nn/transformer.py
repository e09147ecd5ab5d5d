"""A LLaMA-style decoder-only language model: SwiGLU feed-forward, pre-norm blocks, TransformerLM.

One block (Touvron et al. 2023; Hugging Face ``LlamaDecoderLayer``)::

    h   = x + Attention(RMSNorm(x))         causal, RoPE on q and k, grouped k/v heads, no bias
    out = h + SwiGLU(RMSNorm(h))            down(silu(gate(h')) * up(h')), no bias

and the model ``logits = output(RMSNorm(block_N(... block_1(token_embd(ids)))))``, the output
head tied to the token embedding or not. Residual backward: ``d(x + f(x)) = dy + f'(x)^T dy``,
so each block's backward adds its branch's gradient to the gradient flowing through.

Parameter names (:meth:`TransformerLM.gguf_tensors`, :meth:`TransformerLM.hf_tensors`) map one to
one onto llama.cpp's GGUF ``llama`` tensors and Hugging Face ``LlamaForCausalLM``'s state dict;
every weight is (out_features, in_features) as in both (GGUF lists dimensions in the reverse
order, ``ne[0]`` = in_features, the same memory layout):

==========================  =========================  ========================================
this model (+ ``.weight``)  GGUF (+ ``.weight``)       Hugging Face (+ ``.weight``)
==========================  =========================  ========================================
token_embd                  token_embd                 model.embed_tokens
blocks[N].attn_norm         blk.N.attn_norm            model.layers.N.input_layernorm
blocks[N].attn.q_proj       blk.N.attn_q (*)           model.layers.N.self_attn.q_proj
blocks[N].attn.k_proj       blk.N.attn_k (*)           model.layers.N.self_attn.k_proj
blocks[N].attn.v_proj       blk.N.attn_v               model.layers.N.self_attn.v_proj
blocks[N].attn.o_proj       blk.N.attn_output          model.layers.N.self_attn.o_proj
blocks[N].ffn_norm          blk.N.ffn_norm             model.layers.N.post_attention_layernorm
blocks[N].ffn.gate_proj     blk.N.ffn_gate             model.layers.N.mlp.gate_proj
blocks[N].ffn.up_proj       blk.N.ffn_up               model.layers.N.mlp.up_proj
blocks[N].ffn.down_proj     blk.N.ffn_down             model.layers.N.mlp.down_proj
output_norm                 output_norm                model.norm
output                      output (absent if tied)    lm_head (absent if tied)
==========================  =========================  ========================================

(*) RoPE here pairs coordinates (i, i + d/2) of a head (Hugging Face's convention, see
:class:`ternref.nn.attention.RoPE`); llama.cpp's converter stores ``attn_q``/``attn_k`` with the
rows of each head permuted to Meta's adjacent-pair order, so a GGUF loader undoes that permutation
(per head, rows ``[0, 2, 4, ..., 1, 3, 5, ...]`` of the GGUF tensor become rows ``0 .. d - 1``)
and an exporter applies it. The hyper-parameters map onto ``llama.embedding_length`` (dim),
``llama.block_count``, ``llama.attention.head_count``, ``llama.attention.head_count_kv``,
``llama.feed_forward_length``, ``llama.context_length``, ``llama.rope.freq_base``,
``llama.attention.layer_norm_rms_epsilon``.

References
----------
H. Touvron et al., "LLaMA: Open and Efficient Foundation Language Models", arXiv:2302.13971, 2023.
N. Shazeer, "GLU Variants Improve Transformer", arXiv:2002.05202, 2020 (SwiGLU).
R. Xiong et al., "On Layer Normalization in the Transformer Architecture", ICML 2020,
arXiv:2002.04745 (pre-norm).
O. Press, L. Wolf, "Using the Output Embedding to Improve Language Models", EACL 2017,
arXiv:1608.05859 (tied embeddings).
"""

from __future__ import annotations

import numpy as np

from ternref._validate import describe, generator, integer, real_number
from ternref.nn.activations import sigmoid, silu_slope
from ternref.nn.attention import KVCache, MultiHeadAttention, RoPE
from ternref.nn.embedding import Embedding, token_ids
from ternref.nn.layers import Linear, _float_dtype, _need_cache, _rng
from ternref.nn.module import Module
from ternref.nn.norms import RMSNorm

__all__ = ["SwiGLU", "TransformerBlock", "TransformerLM", "llama_ffn_dim"]


def llama_ffn_dim(dim: int, multiple_of: int = 256) -> int:
    """LLaMA's feed-forward width: ``2/3 * 4 * dim`` rounded up to a multiple of ``multiple_of``.

    The rule of Meta's ``llama/model.py`` (``FeedForward``), which keeps a SwiGLU block's
    parameter count near that of a 4x GELU MLP; e.g. 256 -> 768, 4096 -> 11008.
    """
    hidden = int(2 * 4 * integer(dim, "dim", low=1) / 3)
    multiple_of = integer(multiple_of, "multiple_of", low=1)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(Module):
    """The gated feed-forward block ``y = W_down (silu(W_gate x) * (W_up x))``.

    Parameters
    ----------
    dim : int
        Input and output width D.
    hidden_dim : int
        F, the width of the gate and up projections.
    bias : bool, default False
        LLaMA has none.
    rng : numpy.random.Generator, optional
    dtype : float dtype, default float32

    Attributes
    ----------
    gate_proj, up_proj : Linear (D -> F)
        W1 and W3 of Shazeer's notation (Meta's ``w1``, ``w3``).
    down_proj : Linear (F -> D)
        W2 (Meta's ``w2``).

    Notes
    -----
    Shapes: x (..., D) -> y (..., D). With ``a = gate(x)``, ``u = up(x)``, ``s = sigmoid(a)``,
    ``z = silu(a) * u = a s u`` and ``y = down(z)``::

        dz = down.backward(dy)
        du = dz * silu(a)
        da = dz * u * s (1 + a (1 - s))          (silu'(a), see :class:`ternref.nn.SiLU`)
        dx = gate.backward(da) + up.backward(du)
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False, rng=None,
                 dtype=np.float32):  # fmt: skip
        super().__init__()
        self.dim = integer(dim, "dim", low=1)
        self.hidden_dim = integer(hidden_dim, "hidden_dim", low=1)
        kw = {"bias": bias, "rng": rng, "dtype": dtype}
        self.gate_proj = Linear(self.dim, self.hidden_dim, **kw)
        self.up_proj = Linear(self.dim, self.hidden_dim, **kw)
        self.down_proj = Linear(self.hidden_dim, self.dim, **kw)
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        a = self.gate_proj(x)
        u = self.up_proj(x)
        s = sigmoid(a)
        act = a * s  # silu(a)
        self._cache = (a, s, u, act)
        return self.down_proj(act * u)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        a, s, u, act = _need_cache(self, self._cache)
        dz = self.down_proj.backward(dy)
        du = dz * act
        da = dz * u
        da *= silu_slope(a, s)
        dx = self.gate_proj.backward(da)
        dx += self.up_proj.backward(du)
        return dx

    def backward_params(self, dy: np.ndarray) -> None:
        a, s, u, act = _need_cache(self, self._cache)
        dz = self.down_proj.backward(dy)
        da = dz * u
        da *= silu_slope(a, s)
        self.gate_proj.backward_params(da)
        self.up_proj.backward_params(dz * act)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_dim={self.hidden_dim}"


class TransformerBlock(Module):
    """One pre-norm LLaMA block: ``h = x + attn(attn_norm(x))``, ``y = h + ffn(ffn_norm(h))``.

    Parameters
    ----------
    dim, n_heads, n_kv_heads, ffn_dim : int
    rope : RoPE
        Shared by every block of a model (it holds no parameters, only angle tables).
    norm_eps : float
    rng : numpy.random.Generator, optional
    dtype : float dtype, default float32

    Attributes
    ----------
    attn_norm, ffn_norm : RMSNorm
    attn : MultiHeadAttention (causal, RoPE, no bias)
    ffn : SwiGLU (no bias)

    Notes
    -----
    Backward, from ``dy = dL/dy``: ``dh = dy + ffn_norm.backward(ffn.backward(dy))``, then
    ``dx = dh + attn_norm.backward(attn.backward(dh))`` (each residual passes its gradient
    through unchanged and adds the branch's).
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, ffn_dim: int, rope: RoPE,
                 norm_eps: float = 1e-5, rng=None, dtype=np.float32):  # fmt: skip
        super().__init__()
        self.attn_norm = RMSNorm(dim, norm_eps, dtype=dtype)
        self.attn = MultiHeadAttention(dim, n_heads, n_kv_heads, causal=True, rope=rope,
                                       bias=False, rng=rng, dtype=dtype)  # fmt: skip
        self.ffn_norm = RMSNorm(dim, norm_eps, dtype=dtype)
        self.ffn = SwiGLU(dim, ffn_dim, bias=False, rng=rng, dtype=dtype)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x: np.ndarray, cache: KVCache | None = None) -> np.ndarray:
        h = self.attn.forward(self.attn_norm(x), cache=cache)
        h += x
        y = self.ffn(self.ffn_norm(h))
        y += h
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dh = self.ffn_norm.backward(self.ffn.backward(dy))
        dh += dy
        dx = self.attn_norm.backward(self.attn.backward(dh))
        dx += dh
        return dx


class TransformerLM(Module):
    """LLaMA-architecture causal language model: ids (B, T) -> next-token logits (B, T, V).

    Parameters
    ----------
    vocab_size : int
        V.
    dim : int, default 256
        Model width D.
    n_layers : int, default 4
    n_heads : int, default 8
        Query heads; head width ``dim // n_heads`` must be even (RoPE).
    n_kv_heads : int, optional
        Key/value heads (grouped-query attention); ``None`` means ``n_heads``.
    ffn_dim : int, optional
        SwiGLU width; ``None`` uses LLaMA's rule :func:`llama_ffn_dim` (768 for dim 256).
    max_seq_len : int, default 128
        The longest sequence :meth:`forward` and :meth:`generate` accept (RoPE itself has no
        limit; this is the model's context length, GGUF's ``llama.context_length``).
    rope_theta : float, default 10000.0
    norm_eps : float, default 1e-5
        Of every RMSNorm (SmolLM2: 1e-5; LLaMA 1: 1e-6).
    tie_embeddings : bool, default True
        The output head reuses the token embedding matrix (``logits = h E^T``), as SmolLM2 does.
    init_std : float, default 0.02
        Every projection and embedding weight is drawn from N(0, init_std^2), Hugging Face's
        ``LlamaPreTrainedModel._init_weights`` with ``initializer_range = 0.02``; norm gains are 1.
    rng : numpy.random.Generator, optional
    dtype : float dtype, default float32

    Attributes
    ----------
    token_embd : Embedding (V, D)
    blocks : list of TransformerBlock
    output_norm : RMSNorm
    output : Linear (D -> V, no bias)
        With ``tie_embeddings`` its ``weight`` *is* ``token_embd.weight`` (one Parameter): the
        head's gradient ``dlogits^T h`` and the embedding's scatter-add accumulate into the same
        ``.grad``, and :meth:`named_parameters` lists it once (so an optimizer steps it once).

    Notes
    -----
    No biases anywhere and no dropout, as in LLaMA. ``forward(ids, caches=None)``; ``backward(
    dlogits)`` returns ``None`` (the input is token ids). The table in the module docstring maps
    the parameter names onto GGUF and Hugging Face names.
    """

    def __init__(
        self, vocab_size: int, dim: int = 256, n_layers: int = 4, n_heads: int = 8,
        n_kv_heads: int | None = None, ffn_dim: int | None = None, max_seq_len: int = 128,
        rope_theta: float = 10000.0, norm_eps: float = 1e-5, tie_embeddings: bool = True,
        init_std: float = 0.02, rng=None, dtype=np.float32,
    ):  # fmt: skip
        super().__init__()
        rng = _rng(rng)
        dtype = _float_dtype(dtype)
        self.vocab_size = integer(vocab_size, "vocab_size", low=1)
        self.dim = integer(dim, "dim", low=1)
        self.n_layers = integer(n_layers, "n_layers", low=1)
        self.n_heads = integer(n_heads, "n_heads", low=1)
        if n_kv_heads is None:
            n_kv_heads = self.n_heads
        self.n_kv_heads = integer(n_kv_heads, "n_kv_heads", low=1)
        if ffn_dim is None:
            ffn_dim = llama_ffn_dim(self.dim)
        self.ffn_dim = integer(ffn_dim, "ffn_dim", low=1)
        self.max_seq_len = integer(max_seq_len, "max_seq_len", low=1)
        self.norm_eps = real_number(norm_eps, "norm_eps", low=0.0, low_open=True)
        if not isinstance(tie_embeddings, bool):
            raise TypeError(f"tie_embeddings must be a bool, got {describe(tie_embeddings)}")
        self.tie_embeddings = tie_embeddings
        init_std = real_number(init_std, "init_std", low=0.0)
        if self.dim % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide dim={self.dim}")
        self.rope = RoPE(self.dim // self.n_heads, rope_theta)

        self.token_embd = Embedding(self.vocab_size, self.dim, std=init_std, rng=rng, dtype=dtype)
        self.blocks = [
            TransformerBlock(
                self.dim,
                self.n_heads,
                self.n_kv_heads,
                self.ffn_dim,
                self.rope,
                self.norm_eps,
                rng=rng,
                dtype=dtype,
            )  # fmt: skip
            for _ in range(self.n_layers)
        ]
        self.output_norm = RMSNorm(self.dim, self.norm_eps, dtype=dtype)
        self.output = Linear(self.dim, self.vocab_size, bias=False, rng=rng, dtype=dtype)
        for layer in self.modules():
            if isinstance(layer, Linear):
                layer.weight.data[...] = init_std * rng.standard_normal(layer.weight.shape)
        if tie_embeddings:
            self.output.weight = self.token_embd.weight

    # -- structure ---------------------------------------------------------------------------
    def named_parameters(self, prefix: str = ""):
        """As :meth:`Module.named_parameters`, listing a tied weight once (its first name)."""
        seen = set()
        for name, p in super().named_parameters(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def gguf_tensors(self) -> dict:
        """``{GGUF tensor name: Parameter}``; see the module docstring (``output`` only untied)."""
        out = {"token_embd.weight": self.token_embd.weight}
        for n, blk in enumerate(self.blocks):
            out.update({
                f"blk.{n}.attn_norm.weight": blk.attn_norm.weight,
                f"blk.{n}.attn_q.weight": blk.attn.q_proj.weight,
                f"blk.{n}.attn_k.weight": blk.attn.k_proj.weight,
                f"blk.{n}.attn_v.weight": blk.attn.v_proj.weight,
                f"blk.{n}.attn_output.weight": blk.attn.o_proj.weight,
                f"blk.{n}.ffn_norm.weight": blk.ffn_norm.weight,
                f"blk.{n}.ffn_gate.weight": blk.ffn.gate_proj.weight,
                f"blk.{n}.ffn_up.weight": blk.ffn.up_proj.weight,
                f"blk.{n}.ffn_down.weight": blk.ffn.down_proj.weight,
            })  # fmt: skip
        out["output_norm.weight"] = self.output_norm.weight
        if not self.tie_embeddings:
            out["output.weight"] = self.output.weight
        return out

    def hf_tensors(self) -> dict:
        """``{Hugging Face LlamaForCausalLM state-dict name: Parameter}`` (same order)."""
        out = {"model.embed_tokens.weight": self.token_embd.weight}
        for n, blk in enumerate(self.blocks):
            pre = f"model.layers.{n}."
            out.update({
                pre + "input_layernorm.weight": blk.attn_norm.weight,
                pre + "self_attn.q_proj.weight": blk.attn.q_proj.weight,
                pre + "self_attn.k_proj.weight": blk.attn.k_proj.weight,
                pre + "self_attn.v_proj.weight": blk.attn.v_proj.weight,
                pre + "self_attn.o_proj.weight": blk.attn.o_proj.weight,
                pre + "post_attention_layernorm.weight": blk.ffn_norm.weight,
                pre + "mlp.gate_proj.weight": blk.ffn.gate_proj.weight,
                pre + "mlp.up_proj.weight": blk.ffn.up_proj.weight,
                pre + "mlp.down_proj.weight": blk.ffn.down_proj.weight,
            })  # fmt: skip
        out["model.norm.weight"] = self.output_norm.weight
        if not self.tie_embeddings:
            out["lm_head.weight"] = self.output.weight
        return out

    def new_caches(self, batch: int, max_len: int | None = None) -> list[KVCache]:
        """One empty :class:`KVCache` per block (``max_len`` defaults to ``max_seq_len``)."""
        max_len = self.max_seq_len if max_len is None else integer(max_len, "max_len", low=1)
        dtype = self.token_embd.weight.data.dtype
        return [blk.attn.new_cache(batch, max_len, dtype) for blk in self.blocks]

    # -- the two passes ----------------------------------------------------------------------
    def _ids(self, ids, start: int) -> np.ndarray:
        ids = token_ids(ids, self.vocab_size)
        if ids.ndim != 2:
            raise ValueError(f"ids must have shape (batch, T), got shape {ids.shape}")
        if start + ids.shape[1] > self.max_seq_len:
            raise ValueError(
                f"sequence of {start + ids.shape[1]} positions exceeds max_seq_len="
                f"{self.max_seq_len}"
            )
        return ids

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, ids, caches: list[KVCache] | None = None) -> np.ndarray:
        """ids (B, T) int in [0, V) -> logits (B, T, V) (position t predicts token t + 1).

        ``caches`` (from :meth:`new_caches`): run incrementally, the T positions following those
        already cached (generation only; no backward).
        """
        if caches is not None and len(caches) != self.n_layers:
            raise ValueError(f"caches must hold one KVCache per block ({self.n_layers}), got "
                             f"{describe(caches)}")  # fmt: skip
        start = 0 if caches is None else caches[0].length
        x = self.token_embd(self._ids(ids, start))
        for n, blk in enumerate(self.blocks):
            x = blk.forward(x, None if caches is None else caches[n])
        return self.output(self.output_norm(x))

    def backward(self, dlogits: np.ndarray) -> None:
        """dlogits (B, T, V) -> None; accumulates every parameter's gradient."""
        _need_cache(self, self.token_embd._ids)
        d = self.output_norm.backward(self.output.backward(dlogits))
        for blk in reversed(self.blocks):
            d = blk.backward(d)
        self.token_embd.backward(d)
        return None

    def backward_params(self, dlogits: np.ndarray) -> None:
        self.backward(dlogits)

    # -- generation --------------------------------------------------------------------------
    def generate(self, ids, n_new: int, greedy: bool = True, temperature: float = 1.0,
                 rng=None) -> np.ndarray:  # fmt: skip
        """Extend each prompt by ``n_new`` tokens, with a KV cache (one position per step).

        Parameters
        ----------
        ids : int array, shape (B, T0)
            The prompts (T0 >= 1, T0 + n_new <= max_seq_len).
        n_new : int >= 0
        greedy : bool, default True
            Take the most likely token (ties: the lowest id). Otherwise sample from
            ``softmax(logits / temperature)``.
        temperature : float > 0, default 1.0
            Used when sampling.
        rng : numpy.random.Generator
            Required when sampling.

        Returns
        -------
        ndarray of int64, shape (B, T0 + n_new)
            The prompts followed by the new tokens.

        Notes
        -----
        The prompt runs through the model once (filling every block's cache); each new token
        then runs alone, attending to the cached keys and values, so step t costs O(t) instead
        of the O(t^2) of re-running the whole sequence; the logits equal those of the full
        causal forward (``tests/nn/test_transformer_models.py``). The forward caches of the
        layers are overwritten (run a training forward again before a backward).
        """
        ids = self._ids(ids, 0)
        n_new = integer(n_new, "n_new", low=0)
        if ids.shape[1] + n_new > self.max_seq_len:
            raise ValueError(
                f"prompt length {ids.shape[1]} + n_new {n_new} exceeds max_seq_len="
                f"{self.max_seq_len}"
            )
        if not greedy:
            temperature = real_number(temperature, "temperature", low=0.0, low_open=True)
            rng = generator(rng)
        b = ids.shape[0]
        caches = self.new_caches(b, ids.shape[1] + n_new)
        out = np.empty((b, ids.shape[1] + n_new), dtype=np.int64)
        out[:, : ids.shape[1]] = ids
        logits = self.forward(ids, caches)[:, -1]
        for step in range(n_new):
            if greedy:
                nxt = np.argmax(logits, axis=-1)
            else:
                z = logits.astype(np.float64) / temperature
                z -= z.max(axis=-1, keepdims=True)
                p = np.exp(z)
                cdf = np.cumsum(p, axis=-1)
                u = rng.random((b, 1)) * cdf[:, -1:]
                nxt = np.minimum((cdf <= u).sum(axis=-1), self.vocab_size - 1)
            out[:, ids.shape[1] + step] = nxt
            if step + 1 < n_new:
                logits = self.forward(nxt[:, None], caches)[:, -1]
        return out

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, dim={self.dim}, n_layers={self.n_layers}, "
            f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, ffn_dim={self.ffn_dim}, "
            f"max_seq_len={self.max_seq_len}, tie_embeddings={self.tie_embeddings}"
        )
