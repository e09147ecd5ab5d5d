# %% [markdown]
# # 1. Ternary quantization in one picture
#
# A ternary weight tensor is a tensor of **codes** in {-1, 0, +1} times a **scale**. This
# notebook builds one by hand, writes down the problem every *projection function* tries to
# solve, derives its two closed forms, and then checks with numbers where the most famous rule of
# thumb (TWN's threshold `0.7 * mean|w|`) is right and where it is wrong.
#
# What it teaches, and where it lives in ternref:
#
# - [`ternref/ternary.py`](../ternref/ternary.py): the `Ternary` object (codes, scales,
#   granularity, `dense()`);
# - [`ternref/projections/twn.py`](../ternref/projections/twn.py): TWN's 0.7 rule
#   (Li, Zhang & Liu 2016, arXiv:1605.04711);
# - [`ternref/projections/exact.py`](../ternref/projections/exact.py): the exact least-squares
#   optimum found by sorting.
#
# Every number quoted in the prose below is printed by a code cell above it.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

from ternref import Ternary, projections

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6.4, 3.0), "font.size": 9})
rng = np.random.default_rng(0)

# %% [markdown]
# ## Four objects, never confused
#
# * `w`: the **latent** full-precision weights the optimizer updates;
# * `codes`: int8 in {-1, 0, +1}, one per weight;
# * `alpha`: the **scale** (here one per tensor; ternref also has per-channel and per-group
#   scales, and asymmetric `alpha_pos`/`alpha_neg`);
# * `w_hat = alpha * codes`: the **dequantized** tensor the forward pass multiplies with.
#
# Build a `Ternary` by hand from six weights, with threshold 0.5 and scale 1.2:

# %%
w = np.array([0.9, -0.2, 0.05, -1.4, 0.6, -0.55], dtype=np.float32)
codes = (np.sign(w) * (np.abs(w) > 0.5)).astype(np.int8)
t = Ternary(codes, np.float32(1.2))
print("w      :", w)
print("codes  :", t.codes)
print("alpha  :", t.alpha_pos)
print("w_hat  :", t.dense())
print(f"sparsity (fraction of zero codes): {t.sparsity:.3f}")
print(f"storage: {t.storage_bits(2)} bits at 2 bits/code (incl. one float32 scale)")

# %% [markdown]
# ## The problem: the closest ternary tensor
#
# TWN asks for the ternary tensor closest to `w` in Euclidean distance:
#
# $$\min_{\alpha \ge 0,\; T \in \{-1,0,1\}^n} \lVert w - \alpha T\rVert_2^2 .$$
#
# Two closed forms make it easy. Fix the **support** $I = \{i : T_i \neq 0\}$ and the signs
# ($T_i = \operatorname{sign} w_i$ is clearly best). Then the error is a parabola in $\alpha$:
#
# $$E(\alpha) = \sum_{i \notin I} w_i^2 + \sum_{i \in I} (|w_i| - \alpha)^2, \qquad
# E'(\alpha) = -2 \sum_{i\in I} (|w_i| - \alpha) = 0 \;\Rightarrow\;
# \alpha^*(I) = \frac{1}{|I|}\sum_{i \in I} |w_i| .$$
#
# **The best scale for a fixed support is the mean magnitude over the support.** Plugging it
# back in, $E = \lVert w\rVert^2 - (\sum_I |w_i|)^2 / |I|$.
#
# Check it numerically: scan $\alpha$ on a fine grid for a random support and compare the grid
# minimiser with the formula.

# %%
w = rng.standard_normal(1000)
support = np.abs(w) > 0.6
T = np.sign(w) * support
alphas = np.linspace(0.0, 3.0, 30001)
errors = ((w[None, :] - alphas[:, None] * T[None, :]) ** 2).sum(axis=1)
alpha_grid = alphas[np.argmin(errors)]
alpha_formula = np.abs(w[support]).mean()
print(f"grid minimiser  alpha = {alpha_grid:.4f}")
print(f"mean |w| over I alpha = {alpha_formula:.4f}")
assert abs(alpha_grid - alpha_formula) <= alphas[1] - alphas[0]

# %% [markdown]
# The second closed form goes the other way: **fix $\alpha$, and the best support is
# $\{|w_i| > \alpha/2\}$**, because keeping $w_i$ costs $(|w_i| - \alpha)^2$ and dropping it
# costs $w_i^2$. So the optimum is a threshold rule, and the only unknown is the threshold
# $\Delta$. For each $\Delta$, the support $I_\Delta = \{|w_i| > \Delta\}$ and the best
# scale give the error
#
# $$E(\Delta) = \lVert w\rVert^2 - \frac{\big(\sum_{|w_i| > \Delta} |w_i|\big)^2}{|I_\Delta|}.$$
#
# Sorting $|w|$ makes every candidate support a prefix of the sorted magnitudes, so $E$ at all
# $n$ thresholds costs one sort and one cumulative sum. That is exactly what
# `projections.exact` does. Here it is as a tiny function for the plot:


# %%
def error_curve(w):
    """Relative error E(Delta)/||w||^2 at every threshold between sorted magnitudes."""
    a = np.sort(np.abs(w))[::-1]  # a_(1) >= a_(2) >= ...
    k = np.arange(1, a.size + 1)
    s = np.cumsum(a)  # S_k = sum of the k largest magnitudes
    err = 1.0 - s**2 / k / np.sum(a**2)  # support = top-k, alpha = S_k / k
    return a, err  # keeping the top k corresponds to Delta just below a[k-1]


n = 200_000
samples = {
    "Gaussian": rng.standard_normal(n),
    "uniform": rng.uniform(-1.0, 1.0, n),
    "Laplace": rng.laplace(0.0, 1.0, n),
}

# %% [markdown]
# ## Where is the optimal threshold?
#
# TWN does not sort: it sets $\Delta = 0.7 \cdot \operatorname{mean}|w|$. Measure the ratio
# $\Delta^* / \operatorname{mean}|w|$ of the exact optimum on three distributions, using
# `projections.exact` (the support boundary lies at $\alpha^*/2$, by the second closed form):

# %%
ratios = {}
for name, w in samples.items():
    t_exact = projections.exact(w)
    mean_abs = np.abs(w).mean()
    ratios[name] = float(t_exact.alpha_pos) / 2 / mean_abs
    print(f"{name:9s}  Delta*/mean|w| = {ratios[name]:.3f}   sparsity {t_exact.sparsity:.3f}")

# %% [markdown]
# The three numbers above can be derived, which is a good check on the code. At the optimum
# $\Delta = \alpha^*(\Delta)/2$ and $\alpha^*(\Delta) = E[\,|w| \mid |w| > \Delta\,]$:
#
# * **uniform** on $[-1, 1]$: $\alpha^* = (1 + \Delta)/2$, so $\Delta = 1/3$, and
#   $\operatorname{mean}|w| = 1/2$: ratio $2/3$;
# * **Laplace** with scale 1: memorylessness gives $\alpha^* = \Delta + 1$, so $\Delta = 1$,
#   and $\operatorname{mean}|w| = 1$: ratio $1$;
# * **Gaussian** with $\sigma = 1$: $\alpha^* = \varphi(\Delta) / Q(\Delta)$ (density over
#   upper tail), $\operatorname{mean}|w| = \sqrt{2/\pi}$, and the fixed point has no closed
#   form; iterate it:


# %%
def gaussian_fixed_point(iterations=200):
    delta = 0.5
    for _ in range(iterations):
        phi = math.exp(-delta * delta / 2) / math.sqrt(2 * math.pi)
        tail = 0.5 * math.erfc(delta / math.sqrt(2))
        delta = phi / tail / 2
    return delta


theory = {
    "Gaussian": gaussian_fixed_point() / math.sqrt(2 / math.pi),
    "uniform": 2 / 3,
    "Laplace": 1.0,
}
for name in samples:
    print(f"{name:9s}  theory {theory[name]:.4f}   measured {ratios[name]:.4f}")

# %% [markdown]
# So 0.7 is a compromise between the uniform and the Gaussian optimum, and it is far from the
# optimum of a heavy-tailed (Laplace) distribution, which trained weights often resemble. How
# much does that cost? Compare the relative error of TWN with the exact optimum:

# %%
rel = {}
for name, w in samples.items():
    e_twn = np.sum((w - projections.twn(w).dense()) ** 2) / np.sum(w**2)
    e_opt = np.sum((w - projections.exact(w).dense()) ** 2) / np.sum(w**2)
    rel[name] = (e_twn, e_opt)
    print(
        f"{name:9s}  TWN {e_twn:.4f}   exact {e_opt:.4f}   excess {100 * (e_twn / e_opt - 1):.2f} %"
    )

# %% [markdown]
# ## The picture
#
# The error curves $E(\Delta)/\lVert w\rVert^2$ against $\Delta / \operatorname{mean}|w|$,
# with the exact optimum (dot) and TWN's 0.7 (dashed line). The curves are flat near their
# minimum, which is why a rough threshold costs little on the Gaussian, and the Laplace
# minimum sits well to the right of 0.7.

# %%
fig, axes = plt.subplots(1, 3, figsize=(9, 2.8), sharey=True)
for ax, (name, w) in zip(axes, samples.items()):
    a, err = error_curve(w)
    x = a / np.abs(w).mean()
    keep = x < 2.5
    ax.plot(x[keep], err[keep], lw=1.5)
    k = np.argmin(err)
    ax.plot(ratios[name], err[k], "o", color="C3", label=f"optimum {ratios[name]:.3f}")
    ax.axvline(0.7, ls="--", color="k", lw=1, label="TWN 0.7")
    ax.set_title(name)
    ax.set_xlabel(r"$\Delta$ / mean|w|")
    ax.legend(loc="upper center", fontsize=7)
axes[0].set_ylabel(r"$\|w - \alpha T\|^2 / \|w\|^2$")
axes[0].set_ylim(0, 1)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What to remember
#
# * A ternary tensor is codes times scales; ternref never stores latent floats in a `Ternary`.
# * For a fixed support, the least-squares scale is the mean magnitude over the support; for a
#   fixed scale, the best support is a threshold at half the scale.
# * The exact optimum costs one sort (`projections.exact`); TWN's 0.7 is an approximation
#   tuned between the uniform and Gaussian optima, and worse on heavy tails.
#
# ## Exercises
#
# 1. Student-t weights with 3 degrees of freedom (`rng.standard_t(3, n)`) are heavier-tailed
#    than Laplace. Predict whether $\Delta^*/\operatorname{mean}|w|$ is above or below 1, then
#    measure it.
# 2. Per-channel scales: make a `(64, 256)` matrix whose rows have standard deviations spread
#    over two orders of magnitude. Compare the error of `projections.twn(w)` with
#    `projections.twn(w, granularity="channel")`. Why is the gap so large?
# 3. Show that the support $\{|w_i| > \alpha/2\}$ is optimal for fixed $\alpha$ *whatever*
#    positive weights $d_i$ multiply the squared errors (LAT's loss-aware objective), then
#    check it with `projections.exact(w, d=...)`.
# 4. `error_curve` evaluates $E$ at all $n$ prefixes. Why can the optimal support never split
#    a run of equal magnitudes? (Hint: read the "Ties" section of
#    [`exact.py`](../ternref/projections/exact.py).)
