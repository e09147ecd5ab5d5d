# %% [markdown]
# # 8. Step through an algorithm
#
# ternref is written so that every line a debugger stops on is plain NumPy you can evaluate:
# no autograd tape, no operator overloading, and Numba kernels that stay valid Python. This
# notebook shows how to get there and what you see:
#
# 1. where to put a breakpoint, from a script, the command line and Jupyter;
# 2. a **recorded pdb session** inside TWN's projection;
# 3. **one TWN/STE training step** on a 3 x 4 layer, every number printed, then checked against
#    ternref's own layer, quantizer and optimizer;
# 4. the packed **kernels**: their NumPy twins, and the jitted kernel itself run as pure Python
#    under `NUMBA_DISABLE_JIT=1`, with a pdb stop inside it.
#
# Files you will land in: [`projections/twn.py`](../ternref/projections/twn.py),
# [`methods/twn.py`](../ternref/methods/twn.py),
# [`nn/layers.py`](../ternref/nn/layers.py) (`Linear.backward`),
# [`optim.py`](../ternref/optim.py), [`packed/i2.py`](../ternref/packed/i2.py).

# %%
import inspect
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

import ternref
from ternref import optim, projections
from ternref.methods.twn import TWNQuantizer
from ternref.nn import Linear
from ternref.packed import i2, linear, pack

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## Where to stop
#
# * **In a script**: put `breakpoint()` on the line before the call you want to follow, run
#   the script, then `s` (step into), `n` (next line), `p expr` / `pp expr` (print), `l`
#   (list source), `u` / `d` (up / down the stack), `c` (continue).
# * **From the command line**, without editing anything:
#   `python -m pdb -c "b ternref/projections/twn.py:74" -c c my_script.py` stops at that line
#   of ternref.
# * **In Jupyter**: `breakpoint()` in a cell opens an interactive prompt; after an exception,
#   `%debug` opens the debugger at the frame that raised.
# * **Inside a Numba kernel**: set `NUMBA_DISABLE_JIT=1` in the environment *before* Python
#   starts (Numba reads it at import); every `@njit` function then runs as the Python function
#   it is written as, `prange` becomes `range`, and breakpoints work.
#
# A notebook run from top to bottom cannot type into a prompt, so below the debugger runs in
# a subprocess that reads its commands from stdin, and we print the transcript.


# %%
def find_line(function, text):
    """Absolute path and line number of the first line of ``function`` containing ``text``."""
    lines, first = inspect.getsourcelines(function)
    for offset, line in enumerate(lines):
        if text in line:
            return inspect.getsourcefile(function), first + offset
    raise ValueError(f"{text!r} not in {function.__name__}")


def pdb_session(script, commands, env=None):
    """Run ``script`` under pdb with ``commands`` typed in; return the transcript.

    pdb does not echo what it reads from a pipe, so each prompt is followed by its command.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "script.py"
        path.write_text(textwrap.dedent(script))
        result = subprocess.run(
            [sys.executable, "-m", "pdb", str(path)],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=300,
        )
    parts = result.stdout.split("(Pdb) ")
    out = parts[0]
    for i, part in enumerate(parts[1:]):
        command = commands[i] if i < len(commands) else ""
        out += f"(Pdb) {command}\n{part}"
    return out.replace(str(Path(ternref.__file__).parent.parent) + os.sep, "")


# %% [markdown]
# ## A pdb session inside TWN
#
# `projections.twn` computes, per row of magnitudes `a`: `mean_abs`, `delta = 0.7 * mean_abs`,
# the support `keep = a > delta` and the scale. Stop at the `keep` line, look around, step one
# line, look again:

# %%
twn_module = sys.modules["ternref.projections.twn"]
path, line = find_line(twn_module._twn_rows, "keep =")
print(f"breakpoint: {Path(path).name}:{line}")
transcript = pdb_session(
    """
    import numpy as np
    from ternref import projections
    w = np.array([0.9, -0.2, 0.05, -1.4, 0.6, -0.55])
    t = projections.twn(w)
    print("codes", t.codes)
    """,
    [f"b {path}:{line}", "c", "p a", "p mean_abs, delta", "n", "p keep", "c", "q"],
)
print(transcript)

# %% [markdown]
# ## One training step, every number
#
# A linear layer with 4 inputs and 3 outputs, no bias, TWN weights, a batch of 2 and the loss
# $L = \tfrac12 \sum (y - t)^2$. First by hand, in the order the data path of a training step
# runs (DESIGN.md): project, forward, loss, backward through the layer, STE through the
# projection, SGD step.

# %%
rng = np.random.default_rng(0)
w = rng.normal(0.0, 0.5, size=(3, 4))
x = rng.normal(size=(2, 4))
target = rng.normal(size=(2, 3))
lr = 0.1

print("latent w:\n", w)
mean_abs = np.abs(w).mean()
delta = 0.7 * mean_abs
keep = np.abs(w) > delta
alpha = np.abs(w)[keep].mean()
codes = (np.sign(w) * keep).astype(np.int8)
w_hat = alpha * codes
print(f"mean|w| = {mean_abs:.4f}   Delta = 0.7 mean|w| = {delta:.4f}   alpha = {alpha:.4f}")
print("codes:\n", codes)

y = x @ w_hat.T  # forward: y = x w_hat^T
loss = 0.5 * np.sum((y - target) ** 2)
dy = y - target  # dL/dy
dw_hat = dy.T @ x  # dL/dw_hat (Linear.backward)
dw = dw_hat  # identity STE: dL/dw := dL/dw_hat
w_new = w - lr * dw  # SGD on the latent weights
print(f"loss = {loss:.4f}")
print("dL/dw_hat = dy^T x (= dL/dw through the STE):\n", dw_hat)
print("latent w after the step:\n", w_new)

codes_new = projections.twn(w_new).codes
print("new codes:\n", codes_new)
print(f"codes flipped by this step: {int(np.sum(codes_new != codes))} of {codes.size}")

# %% [markdown]
# Now the same step with ternref's pieces: a `Linear` whose `weight_quantizer` is TWN's, its
# hand-derived `backward`, and `optim.SGD`. (float64 here so the comparison is exact up to
# summation order.)

# %%
layer = Linear(4, 3, bias=False, weight_quantizer=TWNQuantizer(0.7, "tensor"), dtype=np.float64)
layer.weight.data[...] = w
opt = optim.SGD([layer.weight], lr=lr)

opt.zero_grad()
y_layer = layer.forward(x)
layer.backward(y_layer - target)
grad_layer = layer.weight.grad.copy()
opt.step()

print("forward equal:      ", np.allclose(y_layer, y, rtol=1e-12, atol=1e-12))
print("codes equal:        ", np.array_equal(layer.weight_quantizer.ternary.codes, codes))
print("gradient equal:     ", np.allclose(grad_layer, dw, rtol=1e-12, atol=1e-12))
print("updated w equal:    ", np.allclose(layer.weight.data, w_new, rtol=1e-12, atol=1e-12))

# %% [markdown]
# To follow ternref through this step in a debugger, put `breakpoint()` before
# `layer.backward(...)` and step in: `Linear.backward` computes `dy.T @ x` and hands it to
# the quantizer's `backward` (the STE), which returns it unchanged.
#
# ## Kernels: the NumPy twin
#
# Every jitted kernel in `ternref.packed` has a NumPy twin (`i2.dot_f32` and
# `i2.dot_f32_numpy`, ...) running the same algorithm with whole-array operations, which is
# the quickest thing to read and to step through. `linear(..., backend="numpy")` runs it. The
# jitted float32 kernel lets LLVM reorder its sums (as BLAS does), so the two agree to float32
# rounding; the int8 kernels sum exact integers and agree bit for bit:

# %%
M, K = 4, 256
wk = rng.standard_normal((M, K)).astype(np.float32)
t = projections.twn(wk)
p = pack(t, "i2")
xk = rng.standard_normal((1, K)).astype(np.float32)
y_kernel = linear(xk, p)
y_twin = linear(xk, p, backend="numpy")
print("jitted kernel:", type(i2.dot_f32).__name__)
print(f"max |kernel - twin| = {np.abs(y_kernel - y_twin).max():.2e}")
print(f"max |kernel - dense| = {np.abs(y_kernel - xk @ t.dense().T).max():.2e}")
y8_kernel, y8_twin = linear(xk, p, "int8"), linear(xk, p, "int8", backend="numpy")
print("int8 kernel == int8 twin (bitwise):", np.array_equal(y8_kernel, y8_twin))

# %% [markdown]
# ## Kernels: the jitted code itself, as Python
#
# With `NUMBA_DISABLE_JIT=1` (set before Python starts, so in a fresh process), `i2.dot_f32` is
# the plain Python function it is written as, and so is the helper that does the arithmetic,
# `i2._code_sums_f32`: for each row it decodes the four 2-bit codes `q = c + 1` of every byte
# and multiplies them with four *streams* of activations (the activations rearranged once so
# that byte `t` meets its four weights' activations at position `t` of each stream). Run it that
# way, check it against the dense product, and stop inside it after one row's sum:

# %%
kernel_script = """
import numpy as np
from ternref import projections
from ternref.packed import i2, linear, pack
rng = np.random.default_rng(0)
t = projections.twn(rng.standard_normal((4, 256)).astype(np.float32))
x = rng.standard_normal((1, 256)).astype(np.float32)
print("dot_f32 is a", type(i2.dot_f32).__name__)
y = linear(x, pack(t, "i2"))
print("max |pure-Python kernel - dense| =", float(np.abs(y - x @ t.dense().T).max()))
"""
result = subprocess.run(
    [sys.executable, "-c", kernel_script],
    capture_output=True,
    text=True,
    env={**os.environ, "NUMBA_DISABLE_JIT": "1"},
    timeout=300,
)
print(result.stdout or result.stderr)

# %%
path, line = find_line(i2._code_sums_f32.py_func, "out[r - r0] = acc")
print(f"breakpoint: {Path(path).name}:{line} (the sum Q = sum q x of one row is complete)")
transcript = pdb_session(
    kernel_script,
    [f"b {path}:{line}", "c", "p r, t0, seg", "p acc", "p float(x0.sum() + x1.sum() + x2.sum() + x3.sum())", "q"],
    env={"NUMBA_DISABLE_JIT": "1"},
)
print(transcript)

# %% [markdown]
# `acc` holds `Q = sum q * x` (with `q = c + 1`) for row `r = 0`, and the last line printed is
# `sum x`; the epilogue (`ternref.packed._gemm.group_value`) computes `alpha * (Q - sum x)`. That
# is the i2 identity of notebook 6, in the kernel's own variables.
#
# ## Exercises
#
# 1. Break in `TWNQuantizer.backward` (inherited from `WeightQuantizer` in
#    [`methods/base.py`](../ternref/methods/base.py)) during a real `fit` on the digits and
#    print `dw_hat.shape` and its norm. Which layer is it?
# 2. Repeat the hand-computed step with TTQ (`projections.ttq(w, t=0.05)`, learned scales): add
#    the gradients of `W_p` and `W_n` (notebook 3) and check them against `TTQQuantizer`.
# 3. Under `NUMBA_DISABLE_JIT=1`, step into `tq1._code_sums_f32` and watch a byte turn into five
#    trits (`p tq1.decode_trit(cr[t], 0)` etc.).
# 4. Set a *conditional* breakpoint (`b file:line, r == 3`) in the i2 helper and compare its
#    `acc` with a NumPy expression you compute yourself from `pack(t).arrays["codes"]`.
