# %% [markdown]
# # 9. BitLinear by hand: one BitNet b1.58 layer, forward and backward
#
# BitNet b1.58 (Ma et al. 2024, arXiv:2402.17764) is a LLaMA-style transformer whose attention
# and MLP projections are **BitLinear** layers. The released training code (Figure 3 of the
# BitNet team's "Training Tips, Code and FAQ") is four lines:
#
# 1. normalise the input with an RMSNorm (the "SubLN"),
# 2. quantize it to int8, one absmax scale per token, with a straight-through estimator,
# 3. quantize the weights to {-1, 0, +1} times one absmean scale, straight-through too,
# 4. multiply.
#
# This notebook does each step by hand in NumPy on a layer small enough to print, checks every
# number against ternref's [`BitLinear`](../ternref/methods/bitlinear.py), derives the backward
# pass and checks it against the layer and against finite differences, and ends with a tiny
# BitNet b1.58 language model trained on the embedded novel.
#
# Files: [`methods/bitlinear.py`](../ternref/methods/bitlinear.py) (the layer and
# `quantize_transformer`), [`projections/bitnet.py`](../ternref/projections/bitnet.py) (the
# absmean rule and the int8 quantizer), [`nn/norms.py`](../ternref/nn/norms.py) (RMSNorm's
# backward), [`lm/`](../ternref/lm/) (training).

# %%
import numpy as np

from ternref import methods
from ternref.methods.bitlinear import BitLinear
from ternref.nn import numerical_gradient, rel_error
from ternref.projections import bitnet as absmean

np.set_printoptions(precision=4, suppress=True, linewidth=100)
rng = np.random.default_rng(9)

# A layer with 6 inputs and 4 outputs, in float64 so that the checks are exact; two tokens.
layer = BitLinear(6, 4, rng=rng, dtype=np.float64)
layer.weight.data[...] = rng.normal(0, 0.5, (4, 6))
layer.input_norm.weight.data[...] = rng.uniform(0.5, 1.5, 6)  # a trained-looking SubLN gain
x = rng.normal(0, 2, (2, 6))
w, g = layer.weight.data, layer.input_norm.weight.data
print("x =\n", x)
print("w =\n", w)
print("g =", g)

# %% [markdown]
# ## Step 1: RMSNorm of each token
#
# For one row $x$ of width $D$: $r = 1/\sqrt{\tfrac1D\sum_d x_d^2 + \epsilon}$,
# $\hat x = x\,r$, $h = g \odot \hat x$ (LLaMA's RMSNorm, $\epsilon = 10^{-5}$). Every token is
# normalised on its own, so its scale no longer matters to what follows.

# %%
eps = 1e-5
r = 1 / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + eps)
x_hat = x * r
h = g * x_hat
print("r =", r.ravel())
print("h =\n", h)

# %% [markdown]
# ## Step 2: int8 absmax per token
#
# Each row gets its own scale $s = 127 / \max_d |h_d|$ (clamped below at $10^{-5}$ so an
# all-zero row is safe), the codes are $q = \mathrm{clip}(\mathrm{round}(h s), -128, 127)$,
# int8, and the layer computes with $h_q = q / s$. The largest entry of each row lands exactly
# on $\pm 127$.

# %%
s = 127 / np.maximum(np.abs(h).max(axis=1, keepdims=True), 1e-5)
q = np.clip(np.round(h * s), -128, 127).astype(np.int8)
h_q = q / s
print("s =", s.ravel())
print("q (int8) =\n", q)
print(
    "largest rounding error per row:",
    np.abs(h_q - h).max(axis=1),
    "<= 0.5 / s =",
    (0.5 / s).ravel(),
)

# %% [markdown]
# ## Step 3: absmean ternary weights
#
# One scale for the whole matrix, $\gamma = \mathrm{mean}|W|$, codes
# $\mathrm{clip}(\mathrm{round}(W/\gamma), -1, 1)$: a weight becomes 0 when $|w| < \gamma/2$.
# ternref's projection `ternref.projections.bitnet` implements the rule; we compute it by hand
# and compare the codes.

# %%
gamma = np.abs(w).mean()
codes = np.clip(np.round(w / max(gamma, 1e-5)), -1, 1).astype(np.int8)
tern = absmean(w)
print(f"gamma = {gamma:.4f}   threshold gamma/2 = {gamma / 2:.4f}")
print("codes =\n", codes)
print("same codes as ternref's projection:", np.array_equal(codes, tern.codes))
w_q = tern.dense()  # = scale * codes, the scale the projection returns
print("scale =", float(tern.alpha_pos.ravel()[0]), " sparsity =", f"{tern.sparsity:.3f}")

# %% [markdown]
# ## Step 4: the product, and the layer
#
# $y = h_q\, W_q^\top$. The same number comes out of integer arithmetic: with int8 codes
# $q$ and ternary codes $c$, $y = (q\, c^\top) \cdot \gamma / s$, an int32 accumulation of
# additions and subtractions followed by one float multiply per output, which is what a packed
# W1.58A8 kernel computes.

# %%
y_hand = h_q @ w_q.T
y_int = (q.astype(np.int32) @ codes.T.astype(np.int32)) * float(tern.alpha_pos.ravel()[0]) / s
y_layer = layer.forward(x)
print("y by hand =\n", y_hand)
print("max |hand - layer| =", np.abs(y_hand - y_layer).max())
print("max |integer form - layer| =", np.abs(y_int - y_layer).max())

# %% [markdown]
# ## Backward, derived
#
# Rounding has a zero derivative almost everywhere, so the true gradient would be useless.
# BitNet's code uses the straight-through estimator (`x + (quant(x) - x).detach()`): the
# quantizers are treated as the identity in the backward pass. With $dy = \partial L/\partial y$:
#
# * $\partial L/\partial h_q = dy\, W_q$ and $\partial L/\partial W_q = dy^\top h_q$ (a linear
#   layer, evaluated at the *quantized* operands),
# * STE: $\partial L/\partial W := \partial L/\partial W_q$, $\partial L/\partial h :=
#   \partial L/\partial h_q$,
# * RMSNorm: $\partial L/\partial g = \sum_n \partial L/\partial h_n \odot \hat x_n$ and, with
#   $u = g \odot \partial L/\partial h$,
#   $\partial L/\partial x = r\,(u - \hat x\, \mathrm{mean}(u \odot \hat x))$ per row.

# %%
dy = rng.normal(size=y_layer.shape)
d_hq = dy @ w_q
d_w = dy.T @ h_q
d_h = d_hq  # straight through the int8 rounding
d_g = (d_h * x_hat).sum(axis=0)
u = g * d_h
d_x = r * (u - x_hat * np.mean(u * x_hat, axis=1, keepdims=True))

layer.zero_grad()
d_x_layer = layer.backward(dy)
print("dx  hand vs layer:", rel_error(d_x, d_x_layer))
print("dW  hand vs layer:", rel_error(d_w, layer.weight.grad))
print("dg  hand vs layer:", rel_error(d_g, layer.input_norm.weight.grad))

# %% [markdown]
# ## Checking the backward numerically: the straight-through surrogate
#
# A finite difference of the real layer measures the true (mostly zero) derivative, not the
# STE. The STE is the exact gradient of a *surrogate*: the same function with the quantization
# offsets frozen at the current point, $y(x, W) = (h(x) + c_a)(W + c_w)^\top$ with
# $c_a = Q_a(h) - h$ and $c_w = Q_w(W) - W$ held constant. That is what PyTorch's `.detach()`
# builds, and what the tests check ternref's layer against.

# %%
c_a, c_w = h_q - h, w_q - w


def surrogate(x_, w_, g_):
    r_ = 1 / np.sqrt(np.mean(x_ * x_, axis=1, keepdims=True) + eps)
    return (g_ * x_ * r_ + c_a) @ (w_ + c_w).T


print("surrogate == layer at the point:", np.allclose(surrogate(x, w, g), y_layer))
print(
    "dx vs finite differences:",
    rel_error(d_x_layer, numerical_gradient(lambda a: surrogate(a, w, g), x.copy(), dy)),
)
print(
    "dW vs finite differences:",
    rel_error(layer.weight.grad, numerical_gradient(lambda a: surrogate(x, a, g), w.copy(), dy)),
)
print(
    "dg vs finite differences:",
    rel_error(
        layer.input_norm.weight.grad, numerical_gradient(lambda a: surrogate(x, w, a), g.copy(), dy)
    ),
)

# %% [markdown]
# And the *true* derivative, for contrast. Between rounding jumps the codes are constant, so
# $y$ moves with $x$ only through each row's dequantization factor $1/s = \max_d|h_d| / 127$,
# i.e. through the one largest entry of the normalised row (and with $W$ only through
# $\gamma$). Finite differences of the real layer measure that; the STE's gradient is a
# different vector altogether, which is the point of it.

# %%
true_dx = numerical_gradient(lambda a: layer.forward(a), x.copy(), dy, h=1e-7)
print("true dL/dx (finite differences of the real layer):\n", true_dx)
print("STE dL/dx:\n", d_x_layer)

# %% [markdown]
# ## A tiny BitNet b1.58 language model
#
# `quantize_transformer` (or `quantize_model`) turns a float `TransformerLM` into BitNet b1.58:
# the seven projections of every block become BitLinear layers and the blocks' own RMSNorms are
# removed (the FAQ's step 2: "BitLinear has built-in RMSNorm"); the token embedding and the
# output head stay in float. We train one for a few steps on the embedded novel with AdamW and
# the two-stage schedule, and print bits per byte on a slice of the held-out text.

# %%
from ternref.data.text import load_text
from ternref.lm import TwoStageSchedule, adamw, evaluate_bpb, generate_text, train_lm
from ternref.nn import TransformerLM

corpus = load_text()
model = TransformerLM(
    256, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, rng=np.random.default_rng(0)
)
callbacks = methods.quantize_model(model, methods.get("bitnet"))
print(model.blocks[0])
optimizer = adamw(model, 4e-3)
steps = 60
schedule = TwoStageSchedule(optimizer, steps, 4e-3, warmup=5)
print(schedule.describe())
before = evaluate_bpb(model, corpus, max_bytes=2048)["bits_per_byte"]
history = train_lm(
    model,
    corpus,
    optimizer,
    schedule,
    steps=steps,
    batch_size=8,
    context=64,
    rng=np.random.default_rng(1),
    callbacks=callbacks,
    progress=False,
)
after = evaluate_bpb(model, corpus, max_bytes=2048)["bits_per_byte"]
print(f"held-out bits per byte on 2048 bytes: {before:.3f} before, {after:.3f} after {steps} steps")
layer0 = model.blocks[0].attn.q_proj
t = layer0.to_ternary()
print(
    "q_proj of block 0: codes",
    t.codes.shape,
    "values",
    np.unique(t.codes),
    "scale",
    float(t.alpha_pos.ravel()[0]),
    f"sparsity {t.sparsity:.3f}",
)
print(repr(generate_text(model, "It is a truth", 30)))

# %% [markdown]
# Sixty steps of 512 bytes teach it little more than spaces and frequent letters; the
# committed table in `benchmarks/results/` trains the default 4-layer, width-256 model with
# `ternref lm train` and compares BitNet b1.58 with the float model and with TWN, TTQ and LAT
# on the same transformer.
#
# ## Exercises
#
# 1. Set `layer.activation_quantizer = None` and rerun steps 4-6: which gradients change?
# 2. Scale one token of `x` by 1000. Which intermediate values change, and does `y`?
# 3. Replace the absmean weights with TWN's (`ternref.methods.twn.TWNQuantizer(0.7, "tensor")`
#    as `weight_quantizer`) and compare the sparsity of the codes.
# 4. Build the tiny model with `quantize_transformer(model, methods.get("bitnet"),
#    bitlinear=False)`: the norms stay in the blocks and the projections get no SubLN. Train it
#    the same way and compare the bits per byte.
