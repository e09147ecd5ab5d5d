# %% [markdown]
# # 2. A tour of every projection function
#
# The survey (Liu & Liu 2023, arXiv:2303.01505) sorts ternary methods by their **projection
# function**: the map from latent weights `w` to a ternary tensor. ternref registers each one
# in [`ternref/projections/_registry.py`](../ternref/projections/_registry.py); each family has
# its own module in [`ternref/projections/`](../ternref/projections/) naming its paper and
# stating its equations.
#
# This notebook trains a small MLP on the embedded digits for a few seconds, takes one of its
# real weight matrices, and runs **every registered projection** on it: a table of relative
# error and sparsity, then a grid of small plots (the weight histogram with each projection's
# transfer curve `w -> w_hat` on top).
#
# Uses: [`ternref/data`](../ternref/data/__init__.py) (`load_digits`),
# [`ternref/nn/models.py`](../ternref/nn/models.py) (`mlp`),
# [`ternref/train.py`](../ternref/train.py) (`fit`).

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np

from ternref import nn, optim, projections
from ternref.data import load_digits
from ternref.train import fit

plt.rcParams.update({"figure.dpi": 80, "font.size": 8})
rng = np.random.default_rng(0)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

# %% [markdown]
# ## A real weight tensor
#
# A full-precision MLP, 64 -> 128 -> 128 -> 10, trained with Adam. We take the middle
# 128 x 128 `Linear` weight: the first and last layers are the ones most methods keep in full
# precision, so the middle one is the tensor a ternary method would actually quantize.

# %%
data = load_digits()
model = nn.mlp([64, 128, 128, 10], rng=np.random.default_rng(0))
history = fit(
    model, data, optim.Adam(model.parameters(), lr=1e-3), epochs=5, batch_size=32, progress=False
)
print(f"test accuracy after {len(history)} epochs: {history.last['test_acc']:.4f}")
print(model)

w = model.layers[3].weight.data.copy()
print(
    f"weight {w.shape}: mean|w| = {np.abs(w).mean():.4f}, std = {w.std():.4f}, "
    f"max|w| = {np.abs(w).max():.4f}"
)

# %% [markdown]
# ## Calling every projection the same way
#
# The registry's `input_kind` says how a projection is called: `fn(w)` for deterministic
# weight projections, `fn(w, rng=rng)` for stochastic ones (TernaryConnect), `fn(w1, w2)` for
# STTN's pair of binary kernels, and `fn(g, rng=rng)` for TernGrad, which ternarizes
# *gradients* (we feed it the weight anyway, to see what it does to a tensor). For STTN we build
# the two kernels the way the STTN method does when it is attached to a layer
# ([`ternref/methods/sttn.py`](../ternref/methods/sttn.py)): `W1 = w + D`, `W2 = w - D` with
# `D = 0.7 mean|w|` per output channel.


# %%
def project(name, w, rng):
    info = projections.get(name)
    if info.input_kind == "weight_pair":
        d = 0.7 * np.abs(w).mean(axis=1, keepdims=True)
        return info.fn(w + d, w - d)
    if info.input_kind == "gradient" or not info.deterministic:
        return info.fn(w, rng=rng)
    return info.fn(w)


def relative_error(w, w_hat):
    return float(np.sum((w - w_hat) ** 2) / np.sum(w**2))


rows = []
for name in projections.names():
    info = projections.get(name)
    t = project(name, w, np.random.default_rng(1))
    gran = t.granularity + ("" if t.symmetric else ", two scales")
    rows.append((name, info.year, relative_error(w, t.dense()), t.sparsity, gran))

print(f"{'projection':18s} {'year':>4s} {'rel. error':>10s} {'sparsity':>8s}  scales")
for name, year, err, sp, gran in sorted(rows, key=lambda r: r[2]):
    print(f"{name:18s} {year:4d} {err:10.3f} {sp:8.3f}  {gran}")

# %% [markdown]
# Read the table from the top. A projection with a **finer granularity** (one scale per group
# of weights, or per output channel) or with **two scales** (one per sign) has more numbers to
# fit with, so compare like with like:

# %%
per_tensor = [r for r in sorted(rows, key=lambda r: r[2]) if r[4] == "tensor"]
print("best one-scale projections:", [f"{r[0]} {r[2]:.3f}" for r in per_tensor[:6]])
best = per_tensor[0][2]
print(
    f"TWN's 0.7 rule is within {100 * (dict((r[0], r[2]) for r in rows)['twn'] / best - 1):.1f} % "
    f"of the best one-scale error"
)

# %% [markdown]
# The least-squares family (`exact`, `lat` with `d = 1`, TWN's approximation, and ADMM's
# projection, which solves the same problem) sits at the bottom of the one-scale range, just
# above the two-scale EC2T and ProxQuant; absmean (BitNet), TRQ and TTQ's `0.05 max|w|`
# threshold pay for cruder rules. Further down: projections with an error of exactly 1 zeroed
# every weight because they do not adapt to the scale of `w` at all, and the stochastic ones
# (TernaryConnect, TernGrad) land above 1.

# %%
fixed_grid = []
for name in projections.names():
    t = project(name, w, np.random.default_rng(1))
    if np.all(t.alpha_pos == 1.0) and (t.alpha_neg is None or np.all(t.alpha_neg == 1.0)):
        fixed_grid.append(name)
print("projections whose scale does not depend on w (alpha = 1):", fixed_grid)
print(f"their grid is {{-1, 0, +1}}, but max|w| is only {np.abs(w).max():.3f}")

# %% [markdown]
# These papers keep weights in `[-1, 1]` by construction (TernaryConnect and GXNOR clip the
# latent weights, a batch-norm layer absorbs the scale), so on a network trained without that
# constraint their grid is far too coarse. To compare their *shape* with the others, rescale
# the tensor to `max|w| = 1`, project, and scale back:

# %%
scale = np.abs(w).max()
rescaled = {}
print(f"{'projection':18s} {'rel. error':>10s} {'sparsity':>8s}   (on w / max|w|, scaled back)")
for name in fixed_grid:
    t = project(name, w / scale, np.random.default_rng(1))
    rescaled[name] = t
    print(f"{name:18s} {relative_error(w, scale * t.dense()):10.3f} {t.sparsity:8.3f}")

# %% [markdown]
# Still worse than the least-squares family: half of `max|w|` is a high threshold for a
# bell-shaped tensor. The stochastic projections (`tc`, and `terngrad` in the first table) are
# unbiased, $E[\hat w] = w$ (on the clipped range), and pay for it with variance.
#
# ## The grid
#
# Each panel: the histogram of `w` (grey) and the transfer curve `w -> w_hat` (blue dots, one
# per weight; a deterministic per-tensor projection gives a staircase, a stochastic one or one
# with many scales a cloud). Red lines mark the thresholds of per-tensor projections, found from
# the codes (the midpoint between the largest positive weight sent to 0 and the smallest sent to
# +1, and likewise for negatives). Panels marked `*` used the rescaled tensor.


# %%
def thresholds(w, codes):
    """Empirical positive and negative thresholds of a deterministic projection."""
    out = []
    for sign in (1, -1):
        a = sign * w.ravel()
        c = sign * codes.ravel()
        zero, kept = a[(c == 0) & (a > 0)], a[c > 0]
        if zero.size and kept.size:
            out.append(sign * (zero.max() + kept.min()) / 2)
    return out


names = projections.names()
ncols = 4
nrows = -(-len(names) // ncols)
fig, axes = plt.subplots(nrows, ncols, figsize=(9, 1.75 * nrows), sharex=True)
for ax, name in zip(axes.ravel(), names):
    starred = name in fixed_grid
    x = w / scale if starred else w
    t = rescaled[name] if starred else project(name, w, np.random.default_rng(1))
    ax.hist(x.ravel() * (scale if starred else 1), bins=80, color="0.75", density=True)
    ax2 = ax.twinx()
    order = np.argsort(w.ravel())
    w_hat = t.dense().ravel() * (scale if starred else 1)
    ax2.plot(w.ravel()[order], w_hat[order], ".", ms=1.0, color="C0")
    if projections.get(name).deterministic and t.granularity == "tensor":
        for d in thresholds(w, t.codes):
            ax.axvline(d, color="C3", lw=0.8)
    ax2.set_yticks([])
    ax.set_yticks([])
    ax.set_title(
        f"{name}{' *' if starred else ''}  err {relative_error(w, w_hat.reshape(w.shape)):.2f}"
    )
for ax in axes.ravel()[len(names) :]:
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What to remember
#
# * Almost every direct projection is `alpha * sign(w) * [|w| > Delta]`; the methods differ in
#   how they pick `Delta` (a multiple of `mean|w|`, of `max|w|`, the exact optimum, a learned
#   or fixed value) and `alpha` (least squares, absmean, learned, a power of two, 1).
# * Scale-free rules (fixed grid `{-1, 0, 1}`) assume the training keeps weights in range.
# * Stochastic projections trade error for unbiasedness.
#
# ## Exercises
#
# 1. Repeat the table on the *first* layer (`model.layers[1].weight`), whose fan-in is the 64
#    pixels. Which ranking changes, and why?
# 2. `ttq` takes a `sparsity=` argument. Find the sparsity at which its relative error is
#    smallest on this tensor, and compare it with the sparsity of `exact`.
# 3. Project per output channel (`granularity="channel"`) with `twn`, `exact` and `bitnet`. Which
#    one gains most?
# 4. Average 100 draws of `projections.tc(w / scale, rng)`: how fast does the error of the
#    average fall with the number of draws? What does that say about TernaryConnect's gradient
#    noise?
