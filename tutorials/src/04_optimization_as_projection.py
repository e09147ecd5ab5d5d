# %% [markdown]
# # 4. Optimization as projection: ProxQuant, LAT and ADMM on one problem
#
# Training a ternary network is a constrained problem:
#
# $$\min_{w} f(w) \quad \text{subject to} \quad w \in C = \{\alpha T : \alpha \ge 0,\;
# T \in \{-1, 0, 1\}^n\}.$$
#
# The set $C$ is not convex (it is a union of rays through the origin), so there is no single
# right algorithm. Notebook 3 trained through the projection with a straight-through estimator.
# Three other methods of the survey see the same problem differently:
#
# * **ProxQuant** (Bai, Wang & Liberty 2019, arXiv:1810.00861): gradient steps on the
#   *full-precision* $w$, each followed by a proximal step that pulls $w$ towards its
#   ternarization, harder and harder (homotopy);
# * **LAT** (Hou & Kwok 2018, arXiv:1802.08635): a proximal *Newton* step: minimise a quadratic
#   model of $f$ with a diagonal Hessian $D$ over $C$, which is a $D$-weighted projection;
# * **ADMM** (Leng et al. 2018, arXiv:1707.09870): split $w = g$, keep $w$ free and $g \in C$,
#   and let a dual variable make them agree.
#
# To *see* the iterates, we use a problem small enough to draw: a quadratic in two weights,
# then check the conclusions on eight weights against brute force.
#
# ternref pieces used: [`projections/exact.py`](../ternref/projections/exact.py),
# [`projections/lat.py`](../ternref/projections/lat.py) (weighted projection),
# [`projections/proxquant.py`](../ternref/projections/proxquant.py) (`prox_ternary`),
# [`projections/admm.py`](../ternref/projections/admm.py) (ADMM's projection step). The
# training-time versions of these methods live in
# [`ternref/methods/`](../ternref/methods/) (`lat.py`, and `proxquant.py`, `admm.py`).

# %%
import itertools
import warnings

import matplotlib.pyplot as plt
import numpy as np

from ternref import methods, nn, optim, projections
from ternref.data import load_digits
from ternref.projections.proxquant import prox_ternary, proxquant
from ternref.train import fit

plt.rcParams.update({"figure.dpi": 80, "font.size": 8})
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

# %% [markdown]
# ## A problem you can draw
#
# $f(w) = \tfrac12 (w - c)^\top H (w - c)$ with an unconstrained minimum $c$ and a Hessian
# that cares ten times more about the second weight than about the first. With $n = 2$ and
# one shared scale, $C$ is the origin plus the rays along $(\pm1, 0)$, $(0, \pm1)$,
# $(\pm1, \pm1)$. For a fixed code vector $T$, $f(\alpha T)$ is a parabola in $\alpha$ with
# minimum at $\alpha = \max(0, T^\top H c / T^\top H T)$, so the global optimum over $C$ is a
# brute-force loop over the $3^n$ codes:

# %%
H = np.array([[1.0, 0.3], [0.3, 10.0]])
c = np.array([1.0, 0.3])


def f(w, H, c):
    d = w - c
    return 0.5 * d @ H @ d


def grad(w, H, c):
    return H @ (w - c)


def brute_force(H, c):
    """Global minimum of f over C: every code vector, with its best scale."""
    best_value, best_w = np.inf, None
    for T in itertools.product((-1.0, 0.0, 1.0), repeat=len(c)):
        T = np.array(T)
        curvature = T @ H @ T
        alpha = max(0.0, T @ H @ c / curvature) if curvature > 0 else 0.0
        value = f(alpha * T, H, c)
        if value < best_value:
            best_value, best_w = value, alpha * T
    return best_value, best_w


f_opt, w_opt = brute_force(H, c)
w_ptq = projections.exact(c).dense()  # "post-training quantization": project the minimum
print(f"global optimum over C:  w = {np.round(w_opt, 4)}, f = {f_opt:.4f}")
print(f"projection of c:        w = {np.round(w_ptq, 4)}, f = {f(w_ptq, H, c):.4f}")

# %% [markdown]
# Projecting the unconstrained minimum onto $C$ (the closest ternary point in Euclidean
# distance) lands on the wrong ray: Euclidean distance ignores that $f$ is much steeper in the
# second weight. Every method below has to do better than that by using $f$.
#
# ## The straight-through baseline
#
# STE keeps a latent $\theta$ and steps with the gradient *at the projection*:
# $\theta \leftarrow \theta - \eta \nabla f(q(\theta))$ (ProxQuant's paper calls this
# lazy-projection dual averaging).


# %%
def run_ste(theta, H, c, steps=300, eta=0.05):
    path = [theta]
    for _ in range(steps):
        theta = theta - eta * grad(projections.exact(theta).dense(), H, c)
        path.append(theta)
    return np.array(path), projections.exact(theta).dense()


w0 = np.array([0.05, 0.05])
ste_path, ste_w = run_ste(w0, H, c)
print(f"STE ends at q(theta) = {np.round(ste_w, 4)}, f = {f(ste_w, H, c):.4f}")

# %% [markdown]
# ## ProxQuant: gradient step, then prox
#
# ProxQuant keeps full precision in the forward pass and adds a regularizer
# $\lambda_t R(w)$ that measures the distance to the ternary set. Its ternary prox (the
# official `prox_operator(reg, 'ternary')`) is the exact minimiser of
# $\tfrac12\lVert x - v\rVert^2 + \tfrac{\lambda}{2}\lVert x - q(v)\rVert^2$ with $q(v)$ held
# fixed:
#
# $$x = \frac{v + \lambda\, q(v)}{1 + \lambda},$$
#
# a point on the segment from $v$ to its ternarization. Check ternref's `prox_ternary`
# against the formula (its $q$ is ProxQuant's own ternarizer, with one scale per sign):

# %%
v = np.random.default_rng(0).standard_normal(10)
lam = 0.7
by_formula = (v + lam * proxquant(v).dense()) / (1 + lam)
print("prox_ternary == (v + lam q(v)) / (1 + lam):", np.allclose(prox_ternary(v, lam), by_formula))

# %% [markdown]
# For our comparison we use the same formula with the one-scale projection
# `projections.exact` as $q$, so all methods search the same set $C$. The strength grows with
# the step count, $\lambda_t = \eta \cdot r \cdot t$, so early steps are plain gradient descent
# and late steps pin $w$ to $C$.


# %%
def run_proxquant(theta, H, c, steps=300, eta=0.05, rate=0.1, q=projections.exact):
    path = [theta]
    for t in range(steps):
        v = theta - eta * grad(theta, H, c)  # gradient step at the full-precision point
        lam = eta * rate * t
        theta = (v + lam * q(v).dense()) / (1 + lam)  # ternary prox
        path.append(theta)
    return np.array(path), q(theta).dense()


pq_path, pq_w = run_proxquant(w0, H, c)
print(
    f"ProxQuant ends at theta = {np.round(pq_path[-1], 4)}; q(theta) = {np.round(pq_w, 4)}, "
    f"f = {f(pq_w, H, c):.4f}"
)

# %% [markdown]
# ## LAT: proximal Newton = a weighted projection
#
# LAT replaces $f$ around the current ternary point $\hat w$ by its quadratic model with a
# diagonal Hessian $D$ (in training: Adam's $\sqrt{v}$; here: the diagonal of $H$) and
# minimises that over $C$:
#
# $$\hat w \leftarrow \arg\min_{w \in C} \nabla f(\hat w)^\top (w - \hat w)
#   + \tfrac12 (w - \hat w)^\top D (w - \hat w)
#   = \arg\min_{w\in C} \sum_i d_i \big(w_i - u_i\big)^2,\quad
#   u = \hat w - D^{-1}\nabla f(\hat w).$$
#
# The last form is exactly `projections.lat(u, d=D)` (solved exactly by sorting, like
# notebook 1's `exact`).
#
# Which $D$? If $D \succeq H$ the quadratic model lies above $f$, so each step can only lower
# $f$ (majorize-minimize). The diagonal of $H$ alone does not guarantee that when the weights
# are correlated; the row sums $D_{ii} = \sum_j |H_{ij}|$ do (Gershgorin's theorem), and that
# is what we use. (In training, LAT takes Adam's $\sqrt{v}$, a running estimate of curvature.)


# %%
def run_lat(w_hat, H, c, steps=15):
    d = np.abs(H).sum(axis=1)  # diagonal majorizer of H (Gershgorin)
    path = [w_hat]
    for _ in range(steps):
        u = w_hat - grad(w_hat, H, c) / d  # Newton step with the diagonal Hessian
        w_hat = projections.lat(u, d=d).dense()  # D-weighted projection onto C
        path.append(w_hat)
    return np.array(path), w_hat


lat_path, lat_w = run_lat(w0, H, c)
print(
    f"LAT after 1 step: {np.round(lat_path[1], 4)};  final {np.round(lat_w, 4)}, "
    f"f = {f(lat_w, H, c):.4f}"
)

# %% [markdown]
# ## ADMM: split, project, and let the dual variable reconcile
#
# ADMM writes the problem as $\min f(w) + I_C(g)$ subject to $w = g$ and alternates, with a
# penalty $\rho$ and a scaled dual variable $\mu$:
#
# $$w \leftarrow \arg\min_w f(w) + \tfrac{\rho}{2}\lVert w - g + \mu\rVert^2,\qquad
#   g \leftarrow \Pi_C(w + \mu),\qquad \mu \leftarrow \mu + w - g.$$
#
# For a quadratic $f$ the $w$-step is a linear solve; $\Pi_C$ is ADMM's own projection
# (`projections.admm`, alternating $\alpha$ and $Q$). On a non-convex $C$ ADMM is a heuristic,
# and $\rho$ decides where it ends: try three.


# %%
def run_admm(w, H, c, rho, steps=60):
    g = projections.admm(w).dense()
    mu = np.zeros_like(w)
    path_w, path_g = [w], [g]
    for _ in range(steps):
        w = np.linalg.solve(H + rho * np.eye(len(w)), H @ c + rho * (g - mu))
        g = projections.admm(w + mu).dense()
        mu = mu + w - g
        path_w.append(w)
        path_g.append(g)
    return np.array(path_w), np.array(path_g)


admm_runs = {rho: run_admm(w0, H, c, rho) for rho in (0.1, 1.0, 10.0)}
for rho, (pw, pg) in admm_runs.items():
    print(
        f"ADMM rho = {rho:5.1f}: g = {np.round(pg[-1], 4)}, f = {f(pg[-1], H, c):.4f}, "
        f"|w - g| = {np.linalg.norm(pw[-1] - pg[-1]):.2e}"
    )

# %% [markdown]
# ## The picture
#
# Contours of $f$, the ternary set $C$ (grey rays), the global optimum (star) and the
# projection of $c$ (cross). Each panel follows one method from the same start.

# %%
xs, ys = np.meshgrid(np.linspace(-0.15, 1.25, 200), np.linspace(-0.25, 0.75, 150))
zs = 0.5 * (
    H[0, 0] * (xs - c[0]) ** 2
    + 2 * H[0, 1] * (xs - c[0]) * (ys - c[1])
    + H[1, 1] * (ys - c[1]) ** 2
)


def background(ax, title):
    ax.contour(xs, ys, zs, levels=np.geomspace(0.02, 6, 12), colors="0.8", linewidths=0.7)
    for dx, dy in [(1, 0), (0, 1), (1, 1), (1, -1)]:
        ax.plot([-2 * dx, 2 * dx], [-2 * dy, 2 * dy], color="0.55", lw=0.8)
    ax.plot(*w_opt, "*", color="C3", ms=11)
    ax.plot(*w_ptq, "x", color="k", ms=7)
    ax.set_xlim(xs.min(), xs.max())
    ax.set_ylim(ys.min(), ys.max())
    ax.set_aspect("equal")
    ax.set_title(title)


fig, axes = plt.subplots(1, 4, figsize=(11, 2.6))
background(axes[0], "STE (latent theta)")
axes[0].plot(*ste_path.T, ".-", ms=2, lw=0.6, color="C0", label="theta")
background(axes[1], "ProxQuant (theta)")
axes[1].plot(*pq_path.T, ".-", ms=2, lw=0.6, color="C1", label="theta")
background(axes[2], "LAT (w_hat)")
axes[2].plot(*lat_path.T, "o-", ms=3, lw=0.8, color="C2", label="w_hat")
background(axes[3], "ADMM (w, three rho)")
for (rho, (pw, _)), color in zip(admm_runs.items(), ("C4", "C5", "C6")):
    axes[3].plot(*pw.T, ".-", ms=2, lw=0.6, color=color, label=f"w, rho={rho:g}")
for ax in axes:
    ax.legend(fontsize=6, loc="upper left")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Eight weights, checked by brute force
#
# Two dimensions can mislead, so repeat on random quadratics in $n = 8$ weights
# ($3^8$ code vectors, still brute-forceable) with correlated Hessians, and count how often
# each method reaches the global optimum over $C$. To average over problems, measure the gap
# as a fraction of what is at stake: $(f(w) - f^*) / (f(0) - f^*)$ is 0 at the optimum and 1
# for the all-zero weights (always in $C$).

# %%
rng = np.random.default_rng(1)
n, trials = 8, 20
names = ["projection of c", "STE", "ProxQuant", "LAT", "ADMM rho=0.1", "ADMM rho=1", "ADMM rho=10"]
excess = {name: [] for name in names}
for _ in range(trials):
    A = rng.standard_normal((12, n))
    Hn = A.T @ A / 12 + 0.1 * np.eye(n)
    cn = rng.standard_normal(n) * 0.5
    f_opt_n, _ = brute_force(Hn, cn)
    start = 0.01 * rng.standard_normal(n)
    results = {
        "projection of c": projections.exact(cn).dense(),
        "STE": run_ste(start, Hn, cn)[1],
        "ProxQuant": run_proxquant(start, Hn, cn)[1],
        "LAT": run_lat(start, Hn, cn)[1],
        "ADMM rho=0.1": run_admm(start, Hn, cn, 0.1)[1][-1],
        "ADMM rho=1": run_admm(start, Hn, cn, 1.0)[1][-1],
        "ADMM rho=10": run_admm(start, Hn, cn, 10.0)[1][-1],
    }
    f_zero = f(np.zeros(n), Hn, cn)
    for name, w in results.items():
        excess[name].append((f(w, Hn, cn) - f_opt_n) / (f_zero - f_opt_n))

print(f"{'method':16s} {'optimal':>8s} {'mean gap':>9s} {'median gap':>11s}")
for name in names:
    e = np.array(excess[name])
    print(f"{name:16s} {np.sum(e < 1e-9):5d}/{trials} {e.mean():9.3f} {np.median(e):11.3f}")
means = {name: np.mean(excess[name]) for name in names}
hits = {name: int(np.sum(np.array(excess[name]) < 1e-9)) for name in names}
print(
    f"smallest mean gap: {min(means, key=means.get)}; "
    f"most optima found: {max(hits, key=hits.get)} ({max(hits.values())} of {trials}); "
    f"any method always optimal: {max(hits.values()) == trials}"
)

# %% [markdown]
# Read the two experiments together. In two dimensions the methods that use $f$'s curvature
# (LAT's weighted projection, ADMM with a suitable $\rho$) found the optimum the Euclidean
# projection missed. In eight dimensions the ranking depends on the hyper-parameters: ADMM's
# result swings with $\rho$, ProxQuant's with its homotopy rate, LAT's with how tightly $D$
# bounds the curvature, and STE's latent weights keep oscillating between rays. The set $C$ is
# not convex, so each method is a heuristic, and the lines above say how often each one
# reached the optimum on these problems.
#
# ## The same three methods, training a network
#
# In ternref the three are training methods
# ([`methods/lat.py`](../ternref/methods/lat.py),
# [`methods/proxquant.py`](../ternref/methods/proxquant.py),
# [`methods/admm.py`](../ternref/methods/admm.py)): LAT projects the Adam iterate with
# `D = sqrt(v)` in every forward pass; ProxQuant trains in full precision and applies the prox
# after every optimizer step with a growing `lambda`; ADMM adds the penalty gradient
# `rho (w - g + mu)` and does the `g`- and dual steps every few optimizer steps. Train each on
# the digits MLP and record, per epoch, how far the full-precision weights are from the ternary
# set (`proxquant_gap` and `admm_residual`, relative distances added to the history by the
# methods' callbacks; LAT's forward weights are ternary by construction).

# %%
data = load_digits()
epochs = 5
trained = {}
for name in ("lat", "proxquant", "admm"):
    model = nn.mlp([64, 128, 128, 10], rng=np.random.default_rng(0))
    callbacks = methods.quantize_model(model, methods.get(name))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    trained[name] = fit(
        model, data, opt, epochs=epochs, batch_size=32, callbacks=callbacks, progress=False
    )
    print(
        f"{name:10s} test accuracy per epoch: "
        + " ".join(f"{a:.3f}" for a in trained[name]["test_acc"])
    )
print(
    "ProxQuant gap per epoch:  "
    + " ".join(f"{g:.3f}" for g in trained["proxquant"]["proxquant_gap"])
)
print("ADMM residual per epoch:  " + " ".join(f"{r:.3f}" for r in trained["admm"]["admm_residual"]))

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 2.5))
ep = np.arange(1, epochs + 1)
for name, hist in trained.items():
    axes[0].plot(ep, hist["test_acc"], "o-", ms=3, label=name)
axes[1].plot(
    ep,
    trained["proxquant"]["proxquant_gap"],
    "o-",
    ms=3,
    color="C1",
    label="ProxQuant ||theta - q(theta)|| / ||theta||",
)
axes[1].plot(
    ep, trained["admm"]["admm_residual"], "o-", ms=3, color="C2", label="ADMM ||w - g|| / ||w||"
)
axes[0].set(title="test accuracy (ternary network)", xlabel="epoch")
axes[1].set(title="distance of the latent weights to C", xlabel="epoch")
for ax in axes:
    ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# The test accuracy is always that of the *ternary* network (each method's evaluation mode
# uses its projection). ProxQuant's gap can only close as fast as its homotopy `lambda` grows,
# and ADMM's residual depends on `rho` and its growth, the same knobs that decided the toy
# problem above; a short run like this one shows the mechanism, not a ranking.
#
# ## Exercises
#
# 1. Give LAT the full Hessian instead of its diagonal. Why can `projections.lat` no longer
#    solve the step exactly? (Hint: what made the weighted projection separable?)
# 2. ProxQuant with ternref's own `prox_ternary` uses two scales (one per sign). Rerun the
#    eight-weight experiment with it and explain why its "excess" can become negative.
# 3. Make ADMM's penalty grow, $\rho \leftarrow 1.1\rho$ after each iteration, rescaling
#    $\mu \leftarrow \mu / 1.1$. Which starting $\rho$ now works best?
# 4. In [`ternref/methods/lat.py`](../ternref/methods/lat.py), find where Adam's second moment
#    becomes $D$. What plays the role of $\nabla f(\hat w)$ in training?
