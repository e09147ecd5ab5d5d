"""The Adam update as one Numba pass over each parameter, beside its NumPy twin.

Why: the twin, :func:`adam_update_numpy`, is the update of :class:`ternref.optim.Adam` written as
whole-array NumPy operations: about ten passes over the parameter and its three state arrays,
with temporaries. The kernel reads ``g``, ``m``, ``v`` and ``w`` once and writes ``m``, ``v``,
``w`` once. Measured on LeNet-5's parameters (878k float32 values, 2-core AMD EPYC): 2.25 ms for
the twin, 0.76 ms for the kernel, a step of ``benchmarks/profile_training.py``.

The kernel computes exactly the twin's float operations in the twin's order, in the parameter's
dtype (the twin's Python-float constants become that dtype under NumPy's promotion rules, and the
kernel receives them already cast): no fast-math flags, no fused multiply-add, so the results are
equal bit for bit (``tests/test_optim.py`` proves it with hypothesis). ``error_model="numpy"``
lets a division by zero give inf/NaN as NumPy does, instead of the Python error model's per-element
check, which is what keeps the loop vectorised (three times slower without it).
"""

from __future__ import annotations

import numpy as np

from ternref._jit import njit
from ternref.nn._kernels import KERNEL_DTYPES

__all__ = ["adam_update", "adam_update_numpy"]


def adam_update_numpy(w, g, m, v, b1, b2, step_size, eps_hat) -> None:
    """In place: ``m <- b1 m + (1-b1) g``, ``v <- b2 v + (1-b2) g^2``,
    ``w <- w - step_size * m / (sqrt(v) + eps_hat)``.

    ``step_size`` and ``eps_hat`` carry Adam's bias corrections (see :class:`ternref.optim.Adam`).
    """
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * (g * g)
    w -= (step_size * m / (np.sqrt(v) + eps_hat)).astype(w.dtype, copy=False)


@njit(nogil=True, error_model="numpy")
def _adam_kernel(w, g, m, v, b1, c1, b2, c2, step_size, eps_hat):
    # c1 = 1 - b1 and c2 = 1 - b2, every constant already in the arrays' dtype
    for i in range(w.size):
        gi = g[i]
        mi = m[i] * b1 + c1 * gi
        vi = v[i] * b2 + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        w[i] -= step_size * mi / (np.sqrt(vi) + eps_hat)


def adam_update(w, g, m, v, b1, b2, step_size, eps_hat) -> None:
    """:func:`adam_update_numpy`, by the kernel when the four arrays are C-contiguous, of one
    shape and of one dtype, float32 or float64 (the optimizer's arrays always are); otherwise
    by the twin."""
    arrays = (w, g, m, v)
    dtype = w.dtype
    fits = dtype in KERNEL_DTYPES and all(
        a.dtype == dtype and a.shape == w.shape and a.flags.c_contiguous for a in arrays
    )
    if not fits or not w.flags.writeable:
        adam_update_numpy(w, g, m, v, b1, b2, step_size, eps_hat)
        return
    t = dtype.type
    # the twin's scalars, as NumPy 2 rounds them to the array dtype (a Python float is "weak")
    _adam_kernel(
        w.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
        t(b1), t(1 - b1), t(b2), t(1 - b2), t(step_size), t(eps_hat),
    )  # fmt: skip
