"""Finite-difference gradient checks for hand-written backward passes (public test helpers).

The central difference ``(f(x + h e_i) - f(x - h e_i)) / (2h)`` has truncation error O(h^2 f''')
and rounding error O(eps * |f| / h); in float64 with h = 1e-6 the two balance near 1e-10 relative,
so a correct backward agrees to ~1e-8 and a wrong one is off by O(1). Run checks in float64.

References
----------
A. Karpathy et al., CS231n assignment 2, ``gradient_check.py`` (Stanford, 2016).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ternref._validate import describe, generator
from ternref.nn.module import Module

__all__ = ["numerical_gradient", "rel_error", "check_layer_gradients"]


def numerical_gradient(
    f: Callable[[np.ndarray], np.ndarray | float],
    x: np.ndarray,
    df: np.ndarray | None = None,
    h: float = 1e-6,
) -> np.ndarray:
    """Central-difference gradient of ``sum(f(x) * df)`` with respect to every element of ``x``.

    Parameters
    ----------
    f : callable
        ``f(x)`` returns an array (then ``df`` of the same shape is the upstream gradient) or a
        scalar (then ``df`` defaults to 1). ``f`` must read ``x`` afresh on every call: ``x`` is
        perturbed **in place** (and restored), so ``f`` may also close over a parameter array
        and ignore its argument.
    x : ndarray, float64
        The point; modified during the call and restored exactly on return.
    df : ndarray, optional
        Upstream gradient dL/df contracted with the Jacobian (``None`` means ones).
    h : float, default 1e-6
        Step.

    Returns
    -------
    grad : ndarray, shape of ``x``
        ``grad[i] = sum(df * (f(x + h e_i) - f(x - h e_i))) / (2h)``.
    """
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must be a floating-point ndarray, got {describe(x)}")
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    while not it.finished:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        plus = np.asarray(f(x), dtype=np.float64).copy()
        x[i] = old - h
        minus = np.asarray(f(x), dtype=np.float64).copy()
        x[i] = old
        diff = plus - minus
        grad[i] = (diff.sum() if df is None else np.sum(diff * df)) / (2 * h)
        it.iternext()
    return grad


def rel_error(a, b) -> float:
    """``max|a - b| / max(1e-8, max(|a| + |b|))``: a global relative error, 0 for equal arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1e-8, float(np.max(np.abs(a) + np.abs(b)))))


def check_layer_gradients(
    layer: Module, x: np.ndarray, rng: np.random.Generator, h: float = 1e-6
) -> float:
    """Worst relative error between a layer's backward and finite differences.

    Draws ``dy ~ N(0, 1)`` of the output's shape, runs ``forward(x)`` then ``backward(dy)`` from
    zeroed gradients, and compares ``dx`` and every ``parameter.grad`` (including those of child
    modules such as a weight quantizer) with :func:`numerical_gradient` of
    ``sum(layer.forward(.) * dy)``.

    Parameters
    ----------
    layer : Module
        Must be deterministic across forward calls (use ``Dropout`` in eval mode or check it
        separately); BatchNorm in training mode is fine (its output does not depend on its
        running statistics).
    x : ndarray, float64
    rng : numpy.random.Generator
        For ``dy``.
    h : float, default 1e-6

    Returns
    -------
    float
        ``max`` of :func:`rel_error` over dx and all parameter gradients.
    """
    generator(rng)
    if not isinstance(layer, Module):
        raise TypeError(f"layer must be a Module, got {describe(layer)}")
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise TypeError(f"gradient checks need a float64 ndarray x, got {describe(x)}")
    params = layer.parameters()
    for p in params:
        if p.data.dtype != np.float64:
            raise TypeError(
                f"gradient checks need float64 parameters; {p!r} is {p.data.dtype} "
                "(build the layer with dtype=np.float64)"
            )
    x = x.copy()
    layer.zero_grad()
    y = layer.forward(x)
    dy = rng.standard_normal(np.shape(y))
    dx = layer.backward(dy)
    analytic = [g.copy() for g in [dx] + [p.grad for p in params]]

    def f(_):
        return layer.forward(x)

    numeric = [numerical_gradient(f, x, dy, h)]
    numeric += [numerical_gradient(f, p.data, dy, h) for p in params]
    return max(rel_error(a, n) for a, n in zip(analytic, numeric))
