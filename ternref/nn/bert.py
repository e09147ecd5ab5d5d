"""A BERT encoder (Devlin et al. 2019) as Hugging Face's ``BertModel`` computes it, without pooler.

::

    e   = LayerNorm(word[ids] + position[0 .. T-1] + token_type[token_type_ids])
    per layer (post-norm):
        h   = LayerNorm_attn(x + Attention(x, padding mask))        (biases on all projections)
        out = LayerNorm_out(h + W_out GELU(W_in h + b_in) + b_out)

The encoder returns the last hidden states; on request also every hidden state (the embedding
output and each layer's output, L + 1 arrays) and every layer's pre-softmax attention scores,
which TernaryBERT's distillation matches (MSE of hidden states and of scores, masked entries
zeroed), and its backward takes gradients with respect to all of them.

Parameter names (:meth:`BertEncoder.hf_tensors`) map onto ``BertModel.state_dict()`` (as saved by
sentence-transformers for all-MiniLM-L6-v2; a ``BertFor*`` checkpoint prefixes them with
``bert.``). Weights are (out_features, in_features) as in PyTorch:

=========================================  ===================================================
this model                                 Hugging Face ``BertModel``
=========================================  ===================================================
``word_embeddings.weight``                 ``embeddings.word_embeddings.weight``
``position_embeddings.weight``             ``embeddings.position_embeddings.weight``
``token_type_embeddings.weight``           ``embeddings.token_type_embeddings.weight``
``embedding_norm.weight`` / ``.bias``      ``embeddings.LayerNorm.weight`` / ``.bias``
``layers[N].attention.q_proj.*``           ``encoder.layer.N.attention.self.query.*``
``layers[N].attention.k_proj.*``           ``encoder.layer.N.attention.self.key.*``
``layers[N].attention.v_proj.*``           ``encoder.layer.N.attention.self.value.*``
``layers[N].attention.o_proj.*``           ``encoder.layer.N.attention.output.dense.*``
``layers[N].attention_norm.*``             ``encoder.layer.N.attention.output.LayerNorm.*``
``layers[N].intermediate.*``               ``encoder.layer.N.intermediate.dense.*``
``layers[N].output.*``                     ``encoder.layer.N.output.dense.*``
``layers[N].output_norm.*``                ``encoder.layer.N.output.LayerNorm.*``
=========================================  ===================================================

(``*`` = ``weight`` and ``bias``.) Not modelled: the pooler (``pooler.dense.*``, unused by
mean-pooled sentence embeddings; a loader skips it), the ``embeddings.position_ids`` buffer (it is
``arange``), and dropout (the encoder is deterministic). Padding: Hugging Face adds
``finfo.min`` to the scores of padded keys, this encoder excludes them exactly (-inf); the two
agree to float rounding except on a row with no real key at all, which gets zeros here and a
uniform average there.

References
----------
J. Devlin, M.-W. Chang, K. Lee, K. Toutanova, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding", NAACL 2019, arXiv:1810.04805.
W. Zhang et al., "TernaryBERT: Distillation-aware Ultra-low Bit BERT", EMNLP 2020,
arXiv:2009.12812.
X. Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of
EMNLP 2020, arXiv:1909.10351 (the hidden-state and attention-score losses).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ternref._validate import describe, integer, real_number
from ternref.nn.activations import GELU
from ternref.nn.attention import MultiHeadAttention
from ternref.nn.embedding import Embedding, token_ids
from ternref.nn.layers import Linear, _float_dtype, _need_cache, _rng
from ternref.nn.module import Module
from ternref.nn.norms import LayerNorm

__all__ = ["BertLayer", "BertEncoder", "BertOutput"]


class BertOutput(NamedTuple):
    """What :meth:`BertEncoder.forward` returns when intermediate results are requested."""

    last_hidden_state: np.ndarray
    """(B, T, D)."""
    hidden_states: tuple | None
    """L + 1 arrays (B, T, D): the embedding output, then each layer's output."""
    attention_scores: tuple | None
    """L arrays (B, H, T, T): ``q k^T / sqrt(d)`` of each layer, padded keys set to 0."""


class BertLayer(Module):
    """One post-norm BERT layer (attention, add & norm, GELU feed-forward, add & norm).

    Parameters
    ----------
    dim, n_heads, ffn_dim : int
    norm_eps : float, default 1e-12
    gelu : {"none", "tanh"}, default "none"
        :class:`ternref.nn.GELU`'s ``approximate`` (BERT's ``hidden_act = "gelu"`` is "none").
    rng : numpy.random.Generator, optional
    dtype : float dtype, default float32

    Attributes
    ----------
    attention : MultiHeadAttention (bidirectional, biases)
    attention_norm : LayerNorm
    intermediate : Linear (D -> F)
    act : GELU
    output : Linear (F -> D)
    output_norm : LayerNorm

    Notes
    -----
    ``h = LN_a(x + attn(x))``, ``y = LN_o(h + f(h))`` with ``f = output o GELU o intermediate``.
    Backward: ``dr = LN_o.backward(dy)`` is the gradient of ``h + f(h)``, so
    ``dh = dr + f'(h)^T dr``; ``da = LN_a.backward(dh)`` is that of ``x + attn(x)``, so
    ``dx = da + attn.backward(da)``.
    """

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, norm_eps: float = 1e-12,
                 gelu: str = "none", rng=None, dtype=np.float32):  # fmt: skip
        super().__init__()
        self.attention = MultiHeadAttention(dim, n_heads, causal=False, bias=True, rng=rng,
                                            dtype=dtype)  # fmt: skip
        self.attention_norm = LayerNorm(dim, norm_eps, dtype=dtype)
        self.intermediate = Linear(dim, ffn_dim, rng=rng, dtype=dtype)
        self.act = GELU(gelu)
        self.output = Linear(ffn_dim, dim, rng=rng, dtype=dtype)
        self.output_norm = LayerNorm(dim, norm_eps, dtype=dtype)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x: np.ndarray, attention_mask=None, output_scores: bool = False):
        """x (B, T, D) -> y (B, T, D), or (y, scores) with ``output_scores``."""
        a = self.attention.forward(x, attention_mask, output_scores=output_scores)
        scores = None
        if output_scores:
            a, scores = a
        a += x
        h = self.attention_norm(a)
        f = self.output(self.act(self.intermediate(h)))
        f += h
        y = self.output_norm(f)
        return (y, scores) if output_scores else y

    def backward(self, dy: np.ndarray, d_scores: np.ndarray | None = None) -> np.ndarray:
        dr = self.output_norm.backward(dy)
        dh = self.intermediate.backward(self.act.backward(self.output.backward(dr)))
        dh += dr
        da = self.attention_norm.backward(dh)
        dx = self.attention.backward(da, d_scores)
        dx += da
        return dx


class BertEncoder(Module):
    """BERT embeddings and encoder layers: ids (B, T) -> hidden states (B, T, D).

    Parameters
    ----------
    vocab_size : int
    dim : int, default 384
    n_layers : int, default 6
    n_heads : int, default 12
    ffn_dim : int, default 1536
        (The defaults are all-MiniLM-L6-v2's shape.)
    max_position : int, default 512
        Rows of the position table; T must not exceed it.
    type_vocab_size : int, default 2
    norm_eps : float, default 1e-12
        BERT's ``layer_norm_eps``.
    gelu : {"none", "tanh"}, default "none"
    init_std : float, default 0.02
        Weights and embeddings N(0, init_std^2), biases 0, LayerNorm gains 1 and offsets 0
        (Hugging Face's ``BertPreTrainedModel._init_weights``).
    rng : numpy.random.Generator, optional
    dtype : float dtype, default float32

    Notes
    -----
    ``forward(ids, token_type_ids=None, attention_mask=None, output_hidden_states=False,
    output_attention_scores=False)``: ids and token_type_ids (B, T) int (token types default to
    0), attention_mask (B, T) with 1 = token, 0 = padding. Returns the (B, T, D) last hidden
    states, or a :class:`BertOutput` when either flag is set.

    ``backward(dy, d_hidden_states=None, d_attention_scores=None)`` returns ``None`` (the inputs
    are ids) and accumulates every parameter's gradient; the optional lists (L + 1 and L
    entries, each an array or ``None``) are gradients with respect to the returned hidden states
    and scores, added where those tensors enter the computation. The embedding backward sends the
    same ``dL/de`` to the three tables, each scatter-added at its own indices (the position
    table at ``0 .. T-1`` of every sequence).
    """

    def __init__(
        self, vocab_size: int, dim: int = 384, n_layers: int = 6, n_heads: int = 12,
        ffn_dim: int = 1536, max_position: int = 512, type_vocab_size: int = 2,
        norm_eps: float = 1e-12, gelu: str = "none", init_std: float = 0.02, rng=None,
        dtype=np.float32,
    ):  # fmt: skip
        super().__init__()
        rng = _rng(rng)
        dtype = _float_dtype(dtype)
        self.vocab_size = integer(vocab_size, "vocab_size", low=1)
        self.dim = integer(dim, "dim", low=1)
        self.n_layers = integer(n_layers, "n_layers", low=1)
        self.max_position = integer(max_position, "max_position", low=1)
        self.type_vocab_size = integer(type_vocab_size, "type_vocab_size", low=1)
        self.norm_eps = real_number(norm_eps, "norm_eps", low=0.0, low_open=True)
        init_std = real_number(init_std, "init_std", low=0.0)
        emb = {"std": init_std, "rng": rng, "dtype": dtype}
        self.word_embeddings = Embedding(self.vocab_size, self.dim, **emb)
        self.position_embeddings = Embedding(self.max_position, self.dim, **emb)
        self.token_type_embeddings = Embedding(self.type_vocab_size, self.dim, **emb)
        self.embedding_norm = LayerNorm(self.dim, self.norm_eps, dtype=dtype)
        self.layers = [
            BertLayer(self.dim, n_heads, ffn_dim, self.norm_eps, gelu, rng=rng, dtype=dtype)
            for _ in range(self.n_layers)
        ]
        for layer in self.modules():
            if isinstance(layer, Linear):
                layer.weight.data[...] = init_std * rng.standard_normal(layer.weight.shape)
                layer.bias.data[...] = 0
        self._n_seen = None

    def hf_tensors(self) -> dict:
        """``{Hugging Face BertModel state-dict name: Parameter}``, the module docstring's table."""
        out = {
            "embeddings.word_embeddings.weight": self.word_embeddings.weight,
            "embeddings.position_embeddings.weight": self.position_embeddings.weight,
            "embeddings.token_type_embeddings.weight": self.token_type_embeddings.weight,
            "embeddings.LayerNorm.weight": self.embedding_norm.weight,
            "embeddings.LayerNorm.bias": self.embedding_norm.bias,
        }
        for n, layer in enumerate(self.layers):
            pre = f"encoder.layer.{n}."
            parts = {
                "attention.self.query": layer.attention.q_proj,
                "attention.self.key": layer.attention.k_proj,
                "attention.self.value": layer.attention.v_proj,
                "attention.output.dense": layer.attention.o_proj,
                "attention.output.LayerNorm": layer.attention_norm,
                "intermediate.dense": layer.intermediate,
                "output.dense": layer.output,
                "output.LayerNorm": layer.output_norm,
            }
            for name, module in parts.items():
                out[f"{pre}{name}.weight"] = module.weight
                out[f"{pre}{name}.bias"] = module.bias
        return out

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(
        self,
        ids,
        token_type_ids=None,
        attention_mask=None,
        output_hidden_states: bool = False,
        output_attention_scores: bool = False,
    ):
        """ids (B, T) -> last hidden states (B, T, D), or a :class:`BertOutput`."""
        ids = token_ids(ids, self.vocab_size)
        if ids.ndim != 2:
            raise ValueError(f"ids must have shape (batch, T), got shape {ids.shape}")
        b, t = ids.shape
        if t > self.max_position:
            raise ValueError(f"sequence length {t} exceeds max_position={self.max_position}")
        if token_type_ids is None:
            token_type_ids = np.zeros((b, t), dtype=np.int64)
        token_type_ids = token_ids(token_type_ids, self.type_vocab_size, "token_type_ids")
        if token_type_ids.shape != ids.shape:
            raise ValueError(
                f"token_type_ids must have the shape of ids {ids.shape}, got "
                f"{describe(token_type_ids)}"
            )
        positions = np.broadcast_to(np.arange(t), (b, t))
        e = self.word_embeddings(ids)
        e += self.position_embeddings(positions)
        e += self.token_type_embeddings(token_type_ids)
        x = self.embedding_norm(e)
        hidden, scores = [x], []
        for layer in self.layers:
            if output_attention_scores:
                x, s = layer.forward(x, attention_mask, output_scores=True)
                scores.append(s)
            else:
                x = layer.forward(x, attention_mask)
            hidden.append(x)
        self._n_seen = (b, t)
        if not (output_hidden_states or output_attention_scores):
            return x
        return BertOutput(
            x,
            tuple(hidden) if output_hidden_states else None,
            tuple(scores) if output_attention_scores else None,
        )

    @staticmethod
    def _grads(grads, n: int, name: str) -> list:
        if grads is None:
            return [None] * n
        grads = list(grads)
        if len(grads) != n:
            raise ValueError(f"{name} must have {n} entries (or None), got {len(grads)}")
        return grads

    def backward(self, dy: np.ndarray, d_hidden_states=None, d_attention_scores=None) -> None:
        """dy (B, T, D) -> None; see the class notes for the optional gradient lists."""
        _need_cache(self, self._n_seen)
        d_hidden = self._grads(d_hidden_states, self.n_layers + 1, "d_hidden_states")
        d_scores = self._grads(d_attention_scores, self.n_layers, "d_attention_scores")
        g = dy if d_hidden[-1] is None else dy + d_hidden[-1]
        for n in range(self.n_layers - 1, -1, -1):
            g = self.layers[n].backward(g, d_scores[n])
            if d_hidden[n] is not None:
                g = g + d_hidden[n]
        de = self.embedding_norm.backward(g)
        self.word_embeddings.backward(de)
        self.position_embeddings.backward(de)
        self.token_type_embeddings.backward(de)
        return None

    def backward_params(self, dy: np.ndarray) -> None:
        self.backward(dy)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, dim={self.dim}, n_layers={self.n_layers}"
