# %% [markdown]
# # 3. Training through a step function
#
# The projection `w -> w_hat` is a staircase: its derivative is zero almost everywhere and
# undefined at the thresholds. Yet ternary networks are trained by gradient descent. This
# notebook shows the problem in numbers, the **straight-through estimator** (STE) and its
# variants as small functions of ternref, TTQ's **learned scales** and their exact gradients,
# and then trains ternary networks live on the digits while watching how many codes still
# **flip** from one epoch to the next.
#
# Source files:
# [`ternref/methods/estimators.py`](../ternref/methods/estimators.py) (every surrogate
# gradient), [`ternref/methods/base.py`](../ternref/methods/base.py) (`WeightQuantizer`,
# `quantize_model`, `TernaryStats`), [`ternref/methods/twn.py`](../ternref/methods/twn.py),
# [`ternref/methods/ttq.py`](../ternref/methods/ttq.py),
# [`ternref/train.py`](../ternref/train.py) (`fit`, `Callback`).

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np

from ternref import methods, nn, optim, projections
from ternref.data import load_digits
from ternref.methods import estimators
from ternref.train import Callback, fit

plt.rcParams.update({"figure.dpi": 80, "font.size": 8})
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
rng = np.random.default_rng(0)

# %% [markdown]
# ## The true gradient is (almost) zero
#
# Take a linear layer with ternarized weights, `y = x @ w_hat.T`, and a squared loss. First
# with a fixed threshold and scale (`projections.threshold`, `Delta = 0.5`, `alpha = 1`):
# perturb each weight by a small `h` and measure the change of the loss (central differences).

# %%
w = rng.standard_normal((4, 6))
x = rng.standard_normal((8, 6))
target = rng.standard_normal((8, 4))


def loss_of(w, project):
    y = x @ project(w).dense().T
    return 0.5 * np.sum((y - target) ** 2)


def finite_differences(project, h=1e-6):
    fd = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        e = np.zeros_like(w)
        e[idx] = h
        fd[idx] = (loss_of(w + e, project) - loss_of(w - e, project)) / (2 * h)
    return fd


fd = finite_differences(projections.threshold)
print(f"fixed threshold: largest |dL/dw| = {np.abs(fd).max():.3g}")

# %% [markdown]
# Exactly zero: no infinitesimal move changes a code. With TWN the scale
# `alpha = mean |w| over the support` does move with `w`, so finite differences see
# *something*, but only through `alpha`: every weight in the support gets the same magnitude
# `|dL/dalpha| / |I|` (with its own sign), and weights coded 0 get nothing.

# %%
fd = finite_differences(projections.twn)
t = projections.twn(w)
print("codes:\n", t.codes)
print("finite-difference dL/dw:\n", np.round(fd, 4))
support = t.codes != 0
print(
    f"distinct |dL/dw| over the support: {np.unique(np.round(np.abs(fd[support]), 6)).size}, "
    f"largest |dL/dw| off the support: {np.abs(fd[~support]).max():.3g}"
)

# %% [markdown]
# That signal cannot tell an individual weight which way to go. The backward pass needs a
# *surrogate* for `d w_hat / d w`.
#
# ## The straight-through estimator and its variants
#
# Each surrogate in `ternref.methods.estimators` takes the upstream gradient `g = dL/dw_hat`
# and returns what the method uses as `dL/dw`. With `g = 1` they return the surrogate
# derivative itself, so we can plot them:
#
# * `identity_ste`: `dL/dw := g` (Bengio et al. 2013);
# * `clipped_ste`: `g * 1[|w| <= clip]` (Hubara et al. 2016): no push on weights already far out;
# * `ttq_scaled_ste`: `W_p * g`, `g`, `W_n * g` on the positive, zero and negative codes (Zhu et
#   al. 2017);
# * `gxnor_window`: a rectangle of height `1/(2a)` around each jump of a ternary *activation*
#   (Deng et al. 2018);
# * `approx_sign`: Bi-Real Net's triangle `2 - 2|x|` for the sign function.

# %%
grid = np.linspace(-2, 2, 2001)
ones = np.ones_like(grid)
codes = projections.threshold(grid, delta=0.5).codes
curves = {
    "identity_ste": estimators.identity_ste(ones),
    "clipped_ste (clip=1)": estimators.clipped_ste(ones, grid, clip=1.0),
    "ttq_scaled_ste (W_p=1.5, W_n=0.5)": estimators.ttq_scaled_ste(ones, codes, 1.5, 0.5)[0],
    "gxnor_window (r=1, a=0.5)": estimators.gxnor_window(ones, grid, r=1.0, a=0.5),
    "approx_sign": estimators.approx_sign(ones, grid),
}
fig, axes = plt.subplots(1, len(curves), figsize=(10, 1.9), sharey=True)
for ax, (name, c) in zip(axes, curves.items()):
    ax.plot(grid, c, lw=1.5)
    ax.set_title(name, fontsize=7)
    ax.set_xlabel("w (or x)")
axes[0].set_ylabel("surrogate d w_hat / d w")
fig.tight_layout()
plt.show()

# %% [markdown]
# A surrogate for the derivative of a jump should integrate to the jump's height: the sign
# function jumps by 2 at 0, a ternary activation `sign(x) 1[|x| > r]` by 1 at each of `+-r`.
# Check it numerically (Riemann sums on the grid, exact up to the grid step):

# %%
dx = grid[1] - grid[0]
window = curves["gxnor_window (r=1, a=0.5)"]
tri = curves["approx_sign"]
print(f"integral of gxnor_window over x > 0: {window[grid > 0].sum() * dx:.3f}")
print(f"integral of approx_sign over all x:  {tri.sum() * dx:.3f}")

# %% [markdown]
# ## TTQ: scales that learn
#
# TTQ keeps two trained scalars per layer: the positive level `+W_p` and the negative level
# `-W_n`. For fixed codes `w_hat` is *linear* in them, so their gradients are exact (no
# estimator needed): `dL/dW_p = sum over I_p of g` and `dL/dW_n = -sum over I_n of g`. The minus
# sign comes from the level being `-W_n`; the printed equation in the paper drops it, the
# official code has it (see the docstring of
# [`ttq.py`](../ternref/methods/ttq.py)). Finite differences settle it, because the loss is
# smooth in `W_p` and `W_n`:

# %%
w = rng.standard_normal(50)
target = rng.standard_normal(50)
w_p, w_n = 0.9, 1.1


def ttq_loss(w_p, w_n):
    w_hat = projections.ttq(w, t=0.3, alpha_pos=w_p, alpha_neg=w_n).dense()
    return 0.5 * np.sum((w_hat - target) ** 2)


t = projections.ttq(w, t=0.3, alpha_pos=w_p, alpha_neg=w_n)
g = t.dense() - target  # dL/dw_hat for the squared loss
_, d_wp, d_wn = estimators.ttq_scaled_ste(g, t.codes, w_p, w_n)
h = 1e-6
fd_wp = (ttq_loss(w_p + h, w_n) - ttq_loss(w_p - h, w_n)) / (2 * h)
fd_wn = (ttq_loss(w_p, w_n + h) - ttq_loss(w_p, w_n - h)) / (2 * h)
print(f"dL/dW_p  estimator {d_wp:+.6f}   finite differences {fd_wp:+.6f}")
print(f"dL/dW_n  estimator {d_wn:+.6f}   finite differences {fd_wn:+.6f}")

# %% [markdown]
# ## Training live
#
# `methods.quantize_model(model, method)` attaches a `WeightQuantizer` to every weight layer
# except the first and last (the default `keep_full_precision="first_last"`) and returns the
# callbacks to pass to `fit`. The layer calls `w_hat = quantizer.forward(w)` in its forward pass
# and `dw = quantizer.backward(dw_hat)` in its backward pass; the optimizer updates the latent
# `w` (and TTQ's `W_p`, `W_n`, which are `Parameter`s of the quantizer).
#
# The returned callbacks always include `TernaryStats`, which adds to each epoch's record the
# **sparsity** of the codes and the **flip ratio**: the fraction of codes that changed since
# the previous epoch. We add a callback of our own to record TTQ's scales.


# %%
class RecordScales(Callback):
    """TTQ's W_p and W_n of the first quantized layer, before training and after each epoch."""

    def __init__(self):
        self.w_p, self.w_n = [], []

    def _record(self, model):
        q = methods.quantized_layers(model)[0].weight_quantizer
        self.w_p.append(float(q.w_p.data))
        self.w_n.append(float(q.w_n.data))

    def on_train_begin(self, model, optimizer):
        self._record(model)

    def on_epoch_end(self, model, epoch, record):
        self._record(model)


data = load_digits()
epochs = 6
histories = {}
scales = RecordScales()
for name in ("full precision", "twn", "ttq"):
    model = nn.mlp([64, 128, 128, 10], rng=np.random.default_rng(0))
    callbacks = []
    if name != "full precision":
        callbacks = methods.quantize_model(model, methods.get(name))
        if name == "ttq":
            callbacks.append(scales)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    histories[name] = fit(
        model, data, opt, epochs=epochs, batch_size=32, callbacks=callbacks, progress=False
    )
    if name == "ttq":
        print(model)
for name, hist in histories.items():
    extra = ""
    if "flip_ratio" in hist.last:
        extra = f"  sparsity {hist.last['sparsity']:.3f}  flip ratio {hist.last['flip_ratio']:.4f}"
    print(f"{name:15s} test accuracy {hist.last['test_acc']:.4f}{extra}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(9.5, 2.6))
ep = np.arange(1, epochs + 1)
for name, hist in histories.items():
    axes[0].plot(ep, hist["test_acc"], "o-", ms=3, label=name)
    if name != "full precision":
        axes[1].plot(ep, hist["flip_ratio"], "o-", ms=3, label=name)
axes[0].set(title="test accuracy", xlabel="epoch")
axes[1].set(title="flip ratio (codes changed per epoch)", xlabel="epoch")
axes[2].plot(np.arange(epochs + 1), scales.w_p, "o-", ms=3, label="W_p")
axes[2].plot(np.arange(epochs + 1), scales.w_n, "o-", ms=3, label="W_n")
axes[2].set(title="TTQ learned scales (quantized layer)", xlabel="epoch")
for ax in axes:
    ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# The flip ratio falls as training goes on: early epochs move many weights across a threshold,
# later ones settle the assignment. A method whose flip ratio drops to zero while the loss is
# still high has stopped learning its ternary assignment (and only its scales or the
# full-precision layers still move). TTQ's two scales start at the least-squares values of
# the initial assignment (epoch 0) and are then trained like any weight; the positive and
# negative levels of the layer are not symmetric.

# %%
print(
    f"TWN flip ratio: epoch 1 {histories['twn']['flip_ratio'][0]:.3f} -> epoch {epochs} "
    f"{histories['twn']['flip_ratio'][-1]:.4f}"
)
print(f"TTQ scales before training: W_p = {scales.w_p[0]:.4f}, W_n = {scales.w_n[0]:.4f}")
print(
    f"TTQ scales after training: W_p = {scales.w_p[-1]:.4f}, W_n = {scales.w_n[-1]:.4f} "
    f"(ratio {scales.w_p[-1] / scales.w_n[-1]:.3f})"
)

# %% [markdown]
# ## Exercises
#
# 1. Write a `WeightQuantizer` subclass that projects with `projections.twn` and whose
#    `backward` uses `estimators.clipped_ste` with `clip = 2.5 * mean|w|` (TernaryBERT's
#    choice is a fixed clip on normalised weights). Attach it by hand
#    (`layer.weight_quantizer = ...`) and compare its flip ratio with TWN's.
# 2. The finite-difference gradient of the first section was zero. What happens at a weight
#    *exactly* at the threshold? Construct one, repeat the finite difference with `h = 1e-3`,
#    and explain the number.
# 3. Train TTQ with `t=0.0` (every nonzero weight is kept). Does the learned `W_p / W_n` ratio
#    change? What does sparsity do?
# 4. Plot the per-layer flip ratio from `history.last["layers"]` for a deeper MLP
#    (`[64, 128, 128, 128, 10]`): which layer settles first?
