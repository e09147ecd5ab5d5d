# %% [markdown]
# # 5. Ternary activations
#
# Some methods ternarize the *activations* too, so that a layer multiplies ternary by ternary
# (a gated XNOR and a popcount in hardware). The activation is then a step function of the
# pre-activation, `phi(x) in {-1, 0, +1}` (or three shifted levels), and its derivative needs a
# surrogate, exactly like the weights in notebook 3. This notebook draws the three activation
# ternarizers of the survey and the surrogate derivatives their methods use, then shows what a
# *window* derivative does to learning.
#
# * GXNOR-Net (Deng et al. 2018, arXiv:1705.09283): `phi(x) = sign(x) 1[|x| > r]`, derivative
#   `1/(2a) 1[r - a < |x| < r + a]`;
# * STTN (Xu et al. 2020, arXiv:2204.01234): thresholds at `-0.5` and `+0.5`, clipped STE;
# * RTN (Li et al. 2020, arXiv:1912.02057): `alpha * t + beta` with learnable `alpha`, `beta`.
#
# Source: [`projections/activations.py`](../ternref/projections/activations.py) (the index of
# activation functions), the layers `GXNORActivation` in
# [`methods/gxnor.py`](../ternref/methods/gxnor.py), `STTNActivation` in
# [`methods/sttn.py`](../ternref/methods/sttn.py), `RTNActivation` in
# [`methods/rtn.py`](../ternref/methods/rtn.py).

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np

from ternref import methods, nn, optim
from ternref.data import load_digits
from ternref.methods.gxnor import GXNORActivation
from ternref.methods.rtn import RTNActivation
from ternref.methods.sttn import STTNActivation
from ternref.projections.activations import ACTIVATIONS
from ternref.train import fit

plt.rcParams.update({"figure.dpi": 80, "font.size": 8})
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

# %% [markdown]
# ## The functions, and their ties
#
# `ACTIVATIONS` maps a name to each forward function. Where exactly the steps are, and which
# side a value *at* a threshold goes to, differ by paper (each module documents its choice):

# %%
print("available:", list(ACTIVATIONS))
probe = np.array([-1.0, -0.5, 0.5, 1.0], dtype=np.float32)
for name, fn in ACTIVATIONS.items():
    print(f"{name:6s} phi({probe.tolist()}) = {fn(probe).tolist()}")

# %% [markdown]
# STTN's rule is asymmetric at the thresholds (`-0.5 -> 0` but `+0.5 -> +1`, its CUDA kernel's
# comparison), GXNOR sends `|x| = r` to `+-1`, and RTN (normalised by its own scale) sends the
# midpoint to the middle level.
#
# ## Forward and backward, as layers
#
# Each method wraps its activation in a `Module` whose `backward(dy)` applies the method's
# surrogate. Feeding `dy = 1` returns the surrogate derivative itself:

# %%
x = np.linspace(-2.5, 2.5, 2001).astype(np.float32)
layers = {
    "GXNOR (r=1, a=0.5)": GXNORActivation(r=1.0, a=0.5),
    "STTN (clip=1)": STTNActivation(clip=1.0),
    "RTN (alpha=1, beta=0)": RTNActivation(alpha=1.0, beta=0.0),
}
fig, axes = plt.subplots(1, 3, figsize=(9.5, 2.4), sharey=True)
for ax, (name, layer) in zip(axes, layers.items()):
    y = layer.forward(x)
    dydx = layer.backward(np.ones_like(x))
    ax.plot(x, y, lw=1.6, label="phi(x)")
    ax.plot(x, dydx, lw=1.2, ls="--", label="surrogate dphi/dx")
    ax.set_title(name)
    ax.set_xlabel("pre-activation x")
axes[0].legend(fontsize=7, loc="upper left")
fig.tight_layout()
plt.show()

# %% [markdown]
# GXNOR's window is a rectangle of width `2a` around each jump, of height `1/(2a)`, so that it
# integrates to the jump height 1. It is **zero inside the zero zone** (`|x| < r - a`) and
# **zero beyond the window** (`|x| > r + a`): only pre-activations near a threshold get
# gradient. STTN's and RTN's clipped STE pass gradient everywhere in `[-1, 1]`.
#
# ## What the window does to one neuron
#
# Take one neuron that should fire (`target = +1`) and run gradient descent on its
# pre-activation `x` with the loss `(phi(x) - 1)^2 / 2`, from several starting points, with
# each layer's backward:

# %%
starts = np.array([0.1, 0.4, 0.7, 1.8], dtype=np.float32)
top = {name: layer.forward(np.float32(2.0)) for name, layer in layers.items()}
print(f"{'':24s} x from {[f'{v:.2f}' for v in starts]}")
for name, layer in layers.items():
    xs = starts.copy()
    for _ in range(50):
        y = layer.forward(xs)
        xs = xs - 0.1 * layer.backward(y - 1.0)  # dL/dy = phi(x) - target
    fires = (layer.forward(xs) == top[name]).tolist()
    print(f"{name:24s} x to   {[f'{v:.2f}' for v in xs]}  fires: {fires}")

# %% [markdown]
# Under GXNOR's window, the neurons in the zero zone but outside the window `(0.5, 1.5)`
# (`x = 0.1` and `0.4`) receive no gradient and never move; the one inside the window is pushed
# up to the threshold and then stops, because its output is right. The clipped STE moves
# every neuron inside `[-1, 1]`. In a network, the window therefore makes the backward pass
# *sparse*: which neurons learn depends on where the batch norm in front of the activation
# puts the pre-activations.
#
# ## In a trained network
#
# Train an MLP with batch norm on the digits with GXNOR (ternary weights and activations; the
# method replaces the ReLU in front of each quantized layer), then look at the pre-activations
# that reach the ternary activation.

# %%
data = load_digits()
model = nn.mlp([64, 128, 128, 10], rng=np.random.default_rng(0), batchnorm=True)
callbacks = methods.quantize_model(model, methods.get("gxnor"))
history = fit(
    model,
    data,
    optim.Adam(model.parameters(), lr=1e-2),
    epochs=4,
    batch_size=32,
    callbacks=callbacks,
    progress=False,
)
print(model)
print(f"test accuracy: {history.last['test_acc']:.4f}")

act_index = next(i for i, m in enumerate(model.layers) if isinstance(m, GXNORActivation))
model.eval()
h = data.x_train
for layer in model.layers[:act_index]:  # run the network up to the ternary activation
    h = layer.forward(h)
pre = h.ravel()
act = model.layers[act_index]
in_window = np.mean((np.abs(pre) > act.r - act.a) & (np.abs(pre) < act.r + act.a))
in_zero_zone = np.mean(np.abs(pre) <= act.r - act.a)
beyond = np.mean(np.abs(pre) >= act.r + act.a)
print(f"pre-activations inside GXNOR's window (get gradient): {in_window:.3f}")
print(f"in the zero zone |x| <= r - a:                       {in_zero_zone:.3f}")
print(f"beyond the window |x| >= r + a:                      {beyond:.3f}")
print(f"for comparison, a clipped STE (|x| <= 1) would pass:  {np.mean(np.abs(pre) <= 1):.3f}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 2.4))
ax.hist(pre, bins=120, range=(-4, 4), color="0.6")
for sign in (-1, 1):
    ax.axvspan(sign * (act.r - act.a), sign * (act.r + act.a), color="C1", alpha=0.25)
    ax.axvline(sign * act.r, color="C3", lw=1)
ax.set(title="pre-activations of the ternary neuron (orange: window, red: thresholds)", xlabel="x")
fig.tight_layout()
plt.show()

# %% [markdown]
# Only the fraction printed above receives any gradient through the activation on a given
# batch; the rest of the error signal is cut. The window width `a` trades that sparsity against
# how far from its threshold a neuron can still be moved (exercise 2).
#
# ## RTN: learning the levels
#
# RTN's activation is `alpha * t + beta`: three levels that training can stretch (`alpha`)
# and shift (`beta`). For fixed codes the output is linear in both, so their gradients are
# exact, `dL/dalpha = sum(dy * t)` and `dL/dbeta = sum(dy)`. Check the layer's backward
# against finite differences (a small step does not move a code):

# %%
rng = np.random.default_rng(0)
xr = rng.normal(1.0, 0.8, 500)
target = rng.normal(1.0, 0.8, 500)


def rtn_loss(alpha, beta):
    layer = RTNActivation(alpha=alpha, beta=beta, dtype=np.float64)
    return 0.5 * np.sum((layer.forward(xr) - target) ** 2)


layer = RTNActivation(alpha=0.9, beta=1.1, dtype=np.float64)
y = layer.forward(xr)
layer.backward(y - target)
eps = 1e-6
fd_alpha = (rtn_loss(0.9 + eps, 1.1) - rtn_loss(0.9 - eps, 1.1)) / (2 * eps)
fd_beta = (rtn_loss(0.9, 1.1 + eps) - rtn_loss(0.9, 1.1 - eps)) / (2 * eps)
print(f"dL/dalpha: backward {float(layer.alpha.grad):+.6f}   finite differences {fd_alpha:+.6f}")
print(f"dL/dbeta:  backward {float(layer.beta.grad):+.6f}   finite differences {fd_beta:+.6f}")

# %% [markdown]
# ## Exercises
#
# 1. Repeat the one-neuron experiment with `target = 0` starting from `x = 1.2`. Which
#    surrogate brings it back into the zero zone, and where does it stop?
# 2. Retrain GXNOR with `methods.get("gxnor", a=0.25)` and `a=1.0`. How do the fraction of
#    pre-activations in the window and the test accuracy change?
# 3. Replace GXNOR's window by the clipped STE (write a `GXNORActivation` subclass whose
#    `backward` calls `estimators.clipped_ste(dy, self._x, 1.5)`) and compare.
# 4. Why does the batch norm in front of the activation matter so much for a window
#    derivative, and much less for the clipped STE? Remove it (`batchnorm=False`) and look at
#    the histogram.
