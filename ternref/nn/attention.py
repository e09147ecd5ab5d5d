"""Multi-head scaled dot-product attention with causal and padding masks, grouped key/value heads,
rotary position embeddings and a key/value cache, each with its hand-derived backward.

The forward of :class:`MultiHeadAttention`, for x of shape (B, T, D), H query heads of width
d = D / H and H_kv key/value heads (H_kv divides H; H_kv = H is ordinary multi-head attention,
H_kv = 1 multi-query attention)::

    q = x Wq^T  (B, H, T, d)      k = x Wk^T, v = x Wv^T  (B, H_kv, T, d)      [+ biases]
    q, k <- RoPE(q), RoPE(k)                                      (optional, per position)
    S = q k^T / sqrt(d)           (B, H, T, T_k)    query head h reads key/value head h // g,
                                                    g = H / H_kv (Hugging Face's repeat_kv)
    S <- -inf where masked        (causal: key j > query i; padding: key j is padding)
    P = softmax(S) along keys     (a fully masked row gives P = 0, not NaN)
    O = P v                       (B, H, T, d)  ->  (B, T, H d)  ->  y = O Wo^T [+ bo]

**Batched matmuls, no loop over heads.** The g query heads that share a key/value head are
stored next to each other (head h = h_kv g + j), so the contiguous q of shape (B, H, T, d) is,
without a copy, the array (B, H_kv, g T, d): the scores of a whole group are one matmul
``(g T, d) @ (d, T_k)`` per (batch, kv head), and the gradient of a shared key or value sums
over its group inside the matmul of the backward, with no repeated copy of k and v.

**Numerically safe softmax.** ``P = exp(S - max_j S) / sum exp(S - max_j S)``: the exponent is
<= 0, so logits of any size never overflow. Masked scores are -inf, whose exponential is exactly
0. A row with every key masked has max -inf; its max is replaced by 0 so that every exponential is
exp(-inf) = 0, and its sum 0 by 1, so the row's P is all zeros (no 0/0). Its output is then 0 and
its backward is 0.

**Backward** (for one head; S, P, O as above, dO = dL/dO from the output projection):

    dv    = P^T dO                                  (summed over the g query heads of a group)
    dP    = dO v^T
    dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik)         (softmax Jacobian: dP_i/dS_i = diag(P_i)
                                                     - P_i P_i^T)
          = P_ij (dP_ij - dO_i . O_i)               (sum_k P_ik dP_ik = dO_i . sum_k P_ik v_k)
    dq    = dS k / sqrt(d),     dk = dS^T q / sqrt(d)   (summed over the group)

A masked entry has P_ij = 0, so dS_ij = 0: masking needs no extra work in the backward. The
row sum ``dO_i . O_i`` (FlashAttention's D_i) costs O(T d) instead of O(T T_k). Then RoPE's
backward (its transpose, a rotation by the opposite angle) and the three projections' backwards;
dx = dx_q + dx_k + dx_v.

References
----------
A. Vaswani et al., "Attention Is All You Need", NeurIPS 2017, arXiv:1706.03762.
J. Su, Y. Lu, S. Pan, A. Murtadha, B. Wen, Y. Liu, "RoFormer: Enhanced Transformer with Rotary
Position Embedding", arXiv:2104.09864, 2021.
J. Ainslie et al., "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
Checkpoints", EMNLP 2023, arXiv:2305.13245.
N. Shazeer, "Fast Transformer Decoding: One Write-Head is All You Need", arXiv:1911.02150, 2019.
T. Dao, D. Y. Fu, S. Ermon, A. Rudra, C. Re, "FlashAttention", NeurIPS 2022, arXiv:2205.14135
(the row-sum identity of the softmax backward).
"""

from __future__ import annotations

import math

import numpy as np

from ternref._validate import describe, float_array, integer, real_number
from ternref.nn.layers import Linear, _check_dy, _float_dtype, _need_cache
from ternref.nn.module import Module

__all__ = ["RoPE", "KVCache", "MultiHeadAttention", "softmax_forward", "softmax_backward"]


# ------------------------------------------------------------------------------------ RoPE


class RoPE:
    """Rotary position embedding in the Hugging Face / LLaMA "rotate_half" convention.

    Parameters
    ----------
    head_dim : int, even
        d, the width of one head.
    theta : float, default 10000.0
        The base of the frequencies (``rope_theta`` in Hugging Face configs, GGUF's
        ``llama.rope.freq_base``; SmolLM2 uses 1e5).

    Notes
    -----
    For position p and ``i = 0 .. d/2 - 1``, the angle is ``p * theta^(-2i/d)``. The
    "rotate_half" convention (``transformers`` ``apply_rotary_pos_emb``, used by every Hugging Face
    LLaMA checkpoint) pairs coordinate i with coordinate i + d/2 of the same head and rotates the
    pair by the angle::

        x'_i       = x_i cos(p w_i) - x_{i+d/2} sin(p w_i)
        x'_{i+d/2} = x_{i+d/2} cos(p w_i) + x_i sin(p w_i)

    i.e. ``x' = x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = [-x2, x1]``. Meta's
    original LLaMA code (and llama.cpp's ``llama`` GGUF tensors) pair *adjacent* coordinates
    (2i, 2i + 1) instead; the two are the same function after permuting the rows of Wq and Wk
    within each head: llama.cpp's ``convert_hf_to_gguf.py`` applies that permutation
    (``LlamaModel.permute``) when it writes ``attn_q``/``attn_k``, so a loader of GGUF weights
    into this convention applies its inverse. ``tests/nn/test_transformer_layers.py`` pins the
    convention against the complex-number formula ``(x_i + i x_{i+d/2}) e^{i p w_i}``.

    A rotation is orthogonal, so the backward is the transpose, the rotation by the opposite
    angle: ``dx_i = dy_i cos + dy_{i+d/2} sin``, ``dx_{i+d/2} = dy_{i+d/2} cos - dy_i sin``.

    The angles are computed in float64 and cast to the activation dtype (Hugging Face computes
    them in float32; the two agree to float32 rounding for positions below about 10^4).
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        self.head_dim = integer(head_dim, "head_dim", low=2)
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        self.theta = real_number(theta, "theta", low=1.0, low_open=True)
        half = self.head_dim // 2
        # w_i = theta^(-2i/d), i = 0 .. d/2 - 1
        self.inv_freq = self.theta ** (-np.arange(half, dtype=np.float64) * 2.0 / self.head_dim)
        self._tables: dict = {}  # dtype -> (cos, sin), each (n_positions, d/2)

    def tables(self, start: int, length: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        """``cos(p w)`` and ``sin(p w)`` for positions ``start .. start + length - 1``.

        Returns two (length, d/2) arrays of ``dtype`` (views of a table grown on demand).
        """
        dtype = np.dtype(dtype)
        end = start + length
        cos, sin = self._tables.get(dtype, (None, None))
        if cos is None or cos.shape[0] < end:
            n = max(end, 2 * (0 if cos is None else cos.shape[0]), 64)
            angles = np.arange(n, dtype=np.float64)[:, None] * self.inv_freq[None, :]
            cos, sin = np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)
            self._tables[dtype] = (cos, sin)
        return cos[start:end], sin[start:end]

    def _rotate(self, x: np.ndarray, start: int, sign: float, out: np.ndarray | None):
        half = self.head_dim // 2
        if x.shape[-1] != self.head_dim:
            raise ValueError(
                f"RoPE(head_dim={self.head_dim}): expected input of shape (..., T, "
                f"{self.head_dim}), got {x.shape}"
            )
        cos, sin = self.tables(start, x.shape[-2], x.dtype)
        if sign < 0:
            sin = -sin
        if out is None:
            out = np.empty(x.shape, dtype=x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        o1, o2 = out[..., :half], out[..., half:]
        # o1 = x1 cos - x2 sin ; o2 = x2 cos + x1 sin   (sin negated for the transpose)
        np.multiply(x1, cos, out=o1)
        o1 -= x2 * sin
        np.multiply(x2, cos, out=o2)
        o2 += x1 * sin
        return out

    def rotate(self, x: np.ndarray, start: int = 0, out: np.ndarray | None = None) -> np.ndarray:
        """Rotate ``x`` (..., T, d), whose axis -2 holds positions ``start .. start + T - 1``.

        ``out`` (same shape, any strides) receives the result if given; it must not overlap x.
        """
        return self._rotate(x, start, 1.0, out)

    def rotate_backward(self, dy: np.ndarray, start: int = 0,
                        out: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """The transpose of :meth:`rotate` applied to ``dy``: dL/dx from dL/dy."""
        return self._rotate(dy, start, -1.0, out)

    def __repr__(self) -> str:
        return f"RoPE(head_dim={self.head_dim}, theta={self.theta})"


# ---------------------------------------------------------------------------- KV cache


class KVCache:
    """The keys and values of the positions seen so far, for incremental generation.

    Parameters
    ----------
    batch, n_kv_heads, head_dim, max_len : int
        The cache holds (batch, n_kv_heads, max_len, head_dim) keys and as many values.
    dtype : float dtype

    Attributes
    ----------
    length : int
        Positions written so far; the next token has position ``length`` (its RoPE angle).

    Notes
    -----
    Keys are stored after RoPE (each at its own position), so a new query attends to the cached
    keys exactly as the full forward would.
    """

    def __init__(self, batch: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype=np.float32):  # fmt: skip
        shape = (
            integer(batch, "batch", low=1),
            integer(n_kv_heads, "n_kv_heads", low=1),
            integer(max_len, "max_len", low=1),
            integer(head_dim, "head_dim", low=1),
        )
        self.k = np.zeros(shape, dtype=_float_dtype(dtype))
        self.v = np.zeros(shape, dtype=self.k.dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def append(self, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write k, v (batch, n_kv_heads, T, head_dim); return views of all keys and values."""
        b, h, _, d = self.k.shape
        t = k.shape[2]
        if k.shape != (b, h, t, d) or v.shape != k.shape:
            raise ValueError(
                f"KVCache.append: expected keys and values of shape ({b}, {h}, T, {d}), "
                f"got {k.shape} and {v.shape}"
            )
        if self.length + t > self.max_len:
            raise ValueError(
                f"KVCache is full: {self.length} positions cached, {t} more do not fit in "
                f"max_len={self.max_len}"
            )
        end = self.length + t
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def __repr__(self) -> str:
        return f"KVCache(shape={self.k.shape}, length={self.length})"


# ----------------------------------------------------------------------------- softmax


def softmax_forward(s: np.ndarray, masked: np.ndarray | None = None) -> np.ndarray:
    """Row softmax along the last axis, in place, safe for large and fully masked rows.

    Parameters
    ----------
    s : ndarray
        Scores; **overwritten** with the probabilities (and returned).
    masked : bool ndarray broadcastable to ``s``, optional
        True where a score is excluded (its probability is exactly 0).

    Returns
    -------
    ndarray
        ``s``, now ``P = exp(s - max) / sum exp(s - max)`` per row; all zeros for a row whose
        every entry is masked.
    """
    if masked is not None:
        np.copyto(s, -np.inf, where=masked)
    m = s.max(axis=-1, keepdims=True)
    if masked is not None:
        m[~np.isfinite(m)] = 0  # fully masked row: every exp(-inf - 0) = 0
    s -= m
    np.exp(s, out=s)
    z = s.sum(axis=-1, keepdims=True)
    if masked is not None:
        z[z == 0] = 1  # 0 / 1 = 0 instead of 0 / 0
    s *= 1 / z
    return s


def softmax_backward(p: np.ndarray, dp: np.ndarray, row_dot: np.ndarray | None = None):
    """``dS = P * (dP - sum(P * dP, axis=-1))``, written into ``dp`` (and returned).

    ``row_dot`` may supply ``sum(P * dP, axis=-1, keepdims=True)`` computed another way (the
    attention backward passes ``dO . O``).
    """
    if row_dot is None:
        row_dot = np.sum(p * dp, axis=-1, keepdims=True)
    dp -= row_dot
    dp *= p
    return dp


def _key_mask(attention_mask, batch: int, n_keys: int) -> np.ndarray:
    """A (batch, n_keys) padding mask (1/True = attend, 0/False = padding) as bool."""
    if not isinstance(attention_mask, np.ndarray):
        attention_mask = np.asarray(attention_mask)
    if attention_mask.shape != (batch, n_keys):
        raise ValueError(
            f"attention_mask must have shape (batch, keys) = ({batch}, {n_keys}), got "
            f"{describe(attention_mask)}"
        )
    if attention_mask.dtype == np.bool_:
        return attention_mask
    if not (np.issubdtype(attention_mask.dtype, np.integer)
            or np.issubdtype(attention_mask.dtype, np.floating)):  # fmt: skip
        raise TypeError(f"attention_mask must be bool or 0/1 numbers, got {attention_mask.dtype}")
    if not np.all((attention_mask == 0) | (attention_mask == 1)):
        raise ValueError("attention_mask must contain only 0 (padding) and 1 (attend)")
    return attention_mask != 0


# ------------------------------------------------------------------------------- layer


class MultiHeadAttention(Module):
    """Multi-head attention with optional causal mask, padding mask, GQA, RoPE and KV cache.

    Parameters
    ----------
    dim : int
        D, the model width (input and output).
    n_heads : int
        H, query heads; must divide ``dim`` (head width ``d = dim // n_heads``).
    n_kv_heads : int, optional
        H_kv key/value heads, dividing ``n_heads``; ``None`` means ``n_heads`` (no grouping).
    causal : bool, default False
        Mask every key after the query's position (a decoder).
    rope : RoPE, optional
        Rotary position embedding applied to q and k (``None``: no positional term here, as in
        BERT, whose positions are learned embeddings).
    bias : bool, default True
        Biases on the four projections (BERT has them, LLaMA does not).
    rng : numpy.random.Generator, optional
    dtype : float dtype, default float32

    Attributes
    ----------
    q_proj, k_proj, v_proj, o_proj : Linear
        ``(D -> H d)``, ``(D -> H_kv d)`` twice, ``(H d -> D)``; ordinary :class:`Linear`
        layers, so a weight quantizer attaches to each of them (``weight_layers`` finds them).

    Notes
    -----
    See the module docstring for the equations, the mask semantics and the backward.
    ``forward(x, attention_mask=None, cache=None, output_scores=False)``:

    * x (B, T, D) float;
    * attention_mask (B, T_k) bool or 0/1, 1 = attend, 0 = padding (keys only; T_k = T without a
      cache, cached + T with one);
    * cache: a :class:`KVCache` (from :meth:`new_cache`); the T new positions start at
      ``cache.length``, their keys and values are appended, and the queries attend to all cached
      positions (causally). Generation only: :meth:`backward` refuses a cached forward;
    * output_scores: also return the pre-softmax scores ``S = q k^T / sqrt(d)`` (B, H, T, T_k)
      with masked entries set to 0 (TernaryBERT/TinyBERT distillation matches these, after
      zeroing the masked ones: ``torch.where(att <= -1e2, 0, att)`` in their code).

    ``backward(dy, d_scores=None)``: ``d_scores`` is a gradient with respect to the returned
    scores (a distillation loss on them); it enters dS at the unmasked entries.

    Without RoPE the key bias b_k gets an exactly zero gradient through the softmax: it adds
    ``q_i . b_k`` to every score of row i, and a softmax is invariant to shifting its row
    (BERT has the bias anyway; a loss on the raw scores does reach it).
    """

    def __init__(
        self, dim: int, n_heads: int, n_kv_heads: int | None = None, causal: bool = False,
        rope: RoPE | None = None, bias: bool = True, rng=None, dtype=np.float32,
    ):  # fmt: skip
        super().__init__()
        self.dim = integer(dim, "dim", low=1)
        self.n_heads = integer(n_heads, "n_heads", low=1)
        if self.dim % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide dim={self.dim}")
        if n_kv_heads is None:
            n_kv_heads = self.n_heads
        self.n_kv_heads = integer(n_kv_heads, "n_kv_heads", low=1)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (each key/value "
                "head serves the same number of query heads)"
            )
        self.head_dim = self.dim // self.n_heads
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {describe(causal)}")
        self.causal = causal
        if rope is not None:
            if not isinstance(rope, RoPE):
                raise TypeError(f"rope must be None or a RoPE, got {describe(rope)}")
            if rope.head_dim != self.head_dim:
                raise ValueError(
                    f"rope.head_dim={rope.head_dim} must equal the head width "
                    f"dim // n_heads = {self.head_dim}"
                )
        self.rope = rope
        kv = self.n_kv_heads * self.head_dim
        kw = {"bias": bias, "rng": rng, "dtype": dtype}
        self.q_proj = Linear(self.dim, self.dim, **kw)
        self.k_proj = Linear(self.dim, kv, **kw)
        self.v_proj = Linear(self.dim, kv, **kw)
        self.o_proj = Linear(self.dim, self.dim, **kw)
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self._cache = None
        self._generated = False

    def new_cache(self, batch: int, max_len: int, dtype=np.float32) -> KVCache:
        """An empty :class:`KVCache` for this layer."""
        return KVCache(batch, self.n_kv_heads, self.head_dim, max_len, dtype)

    def _masked(self, attention_mask, b: int, t: int, n_keys: int, start: int):
        """Bool array broadcastable to (B, H, T, T_k), True where a score is excluded."""
        masked = None
        if self.causal:
            # query i sits at position start + i; key j is visible iff j <= start + i
            q_pos = np.arange(start, start + t)[:, None]
            masked = (np.arange(n_keys)[None, :] > q_pos)[None, None]  # (1, 1, T, T_k)
            if not masked.any():
                masked = None
        if attention_mask is not None:
            pad = ~_key_mask(attention_mask, b, n_keys)[:, None, None, :]  # (B, 1, 1, T_k)
            masked = pad if masked is None else (masked | pad)
        return masked

    def _heads(self, y: np.ndarray, n: int, start: int) -> np.ndarray:
        """(B, T, n d) projection -> contiguous (B, n, T, d), rotated when RoPE is on."""
        b, t, _ = y.shape
        view = y.reshape(b, t, n, self.head_dim).transpose(0, 2, 1, 3)
        out = np.empty((b, n, t, self.head_dim), dtype=y.dtype)
        if self.rope is None:
            np.copyto(out, view)
            return out
        return self.rope.rotate(view, start, out=out)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x: np.ndarray, attention_mask=None, cache: KVCache | None = None,
                output_scores: bool = False):  # fmt: skip
        """x (B, T, D) -> y (B, T, D), or (y, scores (B, H, T, T_k)) with ``output_scores``."""
        x = float_array(x, "MultiHeadAttention input", finite=False)
        if x.ndim != 3 or x.shape[2] != self.dim:
            raise ValueError(
                f"{type(self).__name__}(dim={self.dim}): expected input of shape (B, T, "
                f"{self.dim}), got shape {x.shape}"
            )
        b, t, _ = x.shape
        h, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        g = h // hkv
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a KVCache, got {describe(cache)}")
            if cache.k.dtype != x.dtype:
                raise TypeError(f"cache dtype {cache.k.dtype} differs from the input's {x.dtype}")
        start = 0 if cache is None else cache.length

        q = self._heads(self.q_proj(x), h, start)  # (B, H, T, d)
        q *= q.dtype.type(self.scale)  # q / sqrt(d): S = q k^T / sqrt(d)
        k = self._heads(self.k_proj(x), hkv, start)  # (B, H_kv, T, d)
        v = self.v_proj(x).reshape(b, t, hkv, d).transpose(0, 2, 1, 3)  # a view suffices
        if cache is not None:
            k, v = cache.append(k, v)  # all positions so far, (B, H_kv, T_k, d)
        n_keys = k.shape[2]
        masked = self._masked(attention_mask, b, t, n_keys, start)

        # the g query heads of a group share one matmul against their key head
        q_g = q.reshape(b, hkv, g * t, d)
        s = np.matmul(q_g, k.transpose(0, 1, 3, 2))  # (B, H_kv, g T, T_k)
        s4 = s.reshape(b, h, t, n_keys)
        scores = None
        if output_scores:
            scores = s4.copy() if masked is None else np.where(masked, 0, s4)
        p = softmax_forward(s4, masked).reshape(s.shape)  # in place
        o = np.matmul(p, v)  # (B, H_kv, g T, d)
        merged = o.reshape(b, h, t, d).transpose(0, 2, 1, 3).reshape(b, t, h * d)
        y = self.o_proj(merged)
        self._generated = cache is not None
        self._cache = None if self._generated else (q_g, k, v, p, o, masked, x.shape)
        return (y, scores) if output_scores else y

    def backward(self, dy: np.ndarray, d_scores: np.ndarray | None = None) -> np.ndarray:
        """dy (B, T, D) -> dx (B, T, D); accumulates the four projections' gradients.

        ``d_scores`` (B, H, T, T_k), optional: dL/d(the scores returned by ``output_scores``).
        """
        if self._generated:
            raise RuntimeError(
                "MultiHeadAttention.backward after a forward with a KV cache: generation has no "
                "backward (run the forward without a cache to train)"
            )
        q_g, k, v, p, o, masked, x_shape = _need_cache(self, self._cache)
        b, t, _ = x_shape
        h, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        g = h // hkv
        n_keys = k.shape[2]
        dy = _check_dy(self, dy, x_shape)

        d_merged = self.o_proj.backward(dy)  # (B, T, H d)
        do = np.empty((b, h, t, d), dtype=d_merged.dtype)
        np.copyto(do, d_merged.reshape(b, t, h, d).transpose(0, 2, 1, 3))
        do = do.reshape(b, hkv, g * t, d)

        dv = np.matmul(p.transpose(0, 1, 3, 2), do)  # P^T dO, summed over the group
        dp = np.matmul(do, v.transpose(0, 1, 3, 2))  # dO v^T
        row_dot = np.sum(do * o, axis=-1, keepdims=True)  # sum_k P_ik dP_ik = dO_i . O_i
        ds = softmax_backward(p, dp, row_dot)  # (B, H_kv, g T, T_k), in place of dp
        if d_scores is not None:
            d_scores = _check_dy(self, d_scores, (b, h, t, n_keys))
            extra = d_scores if masked is None else np.where(masked, 0, d_scores)
            ds += extra.reshape(ds.shape)
        scale = ds.dtype.type(self.scale)
        dq = np.matmul(ds, k)  # (B, H_kv, g T, d) = dL/d(q / sqrt(d))
        dq *= scale
        dk = np.matmul(ds.transpose(0, 1, 3, 2), q_g)  # q_g already holds q / sqrt(d)

        dx = self.q_proj.backward(self._unheads(dq.reshape(b, h, t, d)))
        dx += self.k_proj.backward(self._unheads(dk))
        dx += self.v_proj.backward(self._unheads(dv, rotate=False))
        return dx

    def _unheads(self, dz: np.ndarray, rotate: bool = True) -> np.ndarray:
        """(B, n, T, d) gradient -> (B, T, n d), through RoPE's transpose when it was applied."""
        b, n, t, d = dz.shape
        out = np.empty((b, t, n, d), dtype=dz.dtype)
        view = out.transpose(0, 2, 1, 3)
        if rotate and self.rope is not None:
            self.rope.rotate_backward(dz, 0, out=view)
        else:
            np.copyto(view, dz)
        return out.reshape(b, t, n * d)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"causal={self.causal}, rope={self.rope!r}"
        )
