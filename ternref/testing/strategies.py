"""Hypothesis strategies for weight tensors that stress ternary projections.

The inputs a projection gets wrong are rarely "random Gaussian": they are all-zero tensors,
single elements, repeated magnitudes sitting exactly on a threshold, ``-0.0``, and values so tiny or
so huge that a careless ``w**2`` or ``1/mean|w|`` overflows. :func:`weights` mixes all of those on
purpose, in float32 and float64, in 1-D to 4-D shapes.

Every nonzero value it produces has magnitude in ``[1e-36, 1e31]``, so multiplying by a scale from
:func:`positive_scales` (powers of two in ``[2**-4, 2**4]``) stays a normal float of either dtype
and is exact: scale equivariance can then be checked with a tight tolerance.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

#: Input styles :func:`weights` draws from (in shrinking order: hypothesis simplifies towards the
#: first one).
STYLES = ("continuous", "ties", "zeros", "sparse", "extreme")

# Overall magnitudes a tensor is scaled by; the tiny and huge ones catch overflow/underflow and
# eps clamps (BitNet's 1e-5 sits between).
_MAGNITUDES = (1.0, 3.0, 1e-3, 1e-5, 1e-8, 1e-30, 1e30)
# Magnitudes for the "ties" style: simple binary fractions so thresholds such as 0.5 * mean or
# 0.7 * mean can land exactly on one of them.
_TIE_POOL = (1.0, 0.5, 2.0, 0.25, 0.75, 1.5, 3.0, 0.7, 0.35)
_EXTREME = (0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 1e30, -1e30)
_SMALLEST = 1e-6  # continuous values below this (relative) become 0, keeping results normal


@st.composite
def weight_shapes(
    draw, *, min_dims: int = 1, max_dims: int = 4, max_side: int = 6, max_size: int = 64
):
    """Array shapes with ``min_dims..max_dims`` axes and at most ``max_size`` elements.

    Parameters
    ----------
    min_dims, max_dims : int
        Number of axes (default 1 to 4).
    max_side : int
        Largest length of one axis.
    max_size : int
        Largest number of elements (sides are drawn within the remaining budget).

    Returns
    -------
    SearchStrategy[tuple of int]
    """
    ndim = draw(st.integers(min_dims, max_dims))
    shape, size = [], 1
    for _ in range(ndim):
        side = draw(st.integers(1, max(1, min(max_side, max_size // size))))
        shape.append(side)
        size *= side
    return tuple(shape)


@st.composite
def weights(
    draw,
    dtypes=(np.float32, np.float64),
    shapes=None,
    *,
    styles=STYLES,
    magnitudes=_MAGNITUDES,
):
    """Weight tensors that exercise the corner cases of ternary projections.

    Parameters
    ----------
    dtypes : sequence of numpy float dtypes
        Drawn uniformly (default float32 and float64).
    shapes : SearchStrategy[tuple], optional
        Shapes to use; default :func:`weight_shapes` (1-D to 4-D, at most 64
        elements, single elements included).
    styles : sequence of str
        Subset of :data:`STYLES`:

        ``"continuous"``
            floats in [-1, 1] (``-0.0`` and exact zeros included) times a magnitude;
        ``"ties"``
            a pool of one to three magnitudes such as 0.5, 0.7, 1.0 with random signs and zeros,
            so many entries share a magnitude and thresholds like ``0.5 * mean|w|`` hit one;
        ``"zeros"``
            all zeros, with random ``-0.0``;
        ``"sparse"``
            mostly zeros and a few continuous values;
        ``"extreme"``
            entries from {0, -0.0, +-1e-30, +-1, +-1e30} in one tensor.
    magnitudes : sequence of float
        Overall scales for ``"continuous"``, ``"ties"`` and ``"sparse"``
        (default 1, 3, 1e-3, 1e-5, 1e-8, 1e-30, 1e30: the middle ones catch an
        ``eps`` added to a threshold or a denominator).

    Returns
    -------
    SearchStrategy[numpy.ndarray]
        Finite float arrays of at least one element.
    """
    dtype = np.dtype(draw(st.sampled_from(list(dtypes))))
    shape = draw(shapes if shapes is not None else weight_shapes())
    style = draw(st.sampled_from(list(styles)))
    n = math.prod(shape)

    if style == "zeros":
        negative = draw(hnp.arrays(np.bool_, shape))
        return np.where(negative, -0.0, 0.0).astype(dtype)
    if style == "extreme":
        idx = draw(
            hnp.arrays(
                np.int8, shape, elements=st.integers(0, len(_EXTREME) - 1), fill=st.nothing()
            )
        )
        return np.asarray(_EXTREME, dtype=np.float64)[idx].astype(dtype)

    scale = draw(st.sampled_from(list(magnitudes)))
    if style == "ties":
        pool = draw(st.lists(st.sampled_from(_TIE_POOL), min_size=1, max_size=3, unique=True))
        levels = np.asarray([*pool, 0.0])  # zero last, so shrinking moves towards a pool value
        idx = draw(
            hnp.arrays(np.int8, shape, elements=st.integers(0, len(pool)), fill=st.nothing())
        )
        signs = np.where(draw(hnp.arrays(np.bool_, shape, fill=st.nothing())), -1.0, 1.0)
        values = signs * levels[idx]
    else:
        values = draw(
            hnp.arrays(
                np.float64,
                shape,
                elements=st.floats(-1.0, 1.0, allow_subnormal=False),
                fill=st.nothing(),  # draw every element: no tensor of one repeated fill value
            )
        )
        values = np.where(np.abs(values) < _SMALLEST, values * 0.0, values)  # keeps -0.0
        if style == "sparse":
            zero = draw(hnp.arrays(np.bool_, shape, elements=st.booleans(), fill=st.nothing()))
            values = np.where(zero, values * 0.0, values)
    if not np.any(values):
        # All-zero tensors belong to the "zeros" style; here keep at least one nonzero entry.
        i = draw(st.integers(0, n - 1))
        values.flat[i] = draw(st.sampled_from([1.0, -1.0, 0.5, -0.75]))
    return (values * scale).astype(dtype)


@st.composite
def weight_pairs(
    draw,
    dtypes=(np.float32, np.float64),
    shapes=None,
    *,
    styles=STYLES,
    magnitudes=_MAGNITUDES,
):
    """Pairs ``(w1, w2)`` of kernels of one shape and dtype, for weight-pair projections (STTN).

    Each kernel is drawn by :func:`weights` on its own (so one can be all zero, the two can
    share zeros, ties or extremes, or be unrelated).

    Parameters
    ----------
    dtypes : sequence of numpy float dtypes
        Drawn uniformly, one for both kernels.
    shapes : SearchStrategy[tuple], optional
        Default :func:`weight_shapes` with at least 2 axes: a pair of kernels has an output
        axis (STTN's scale is per output channel).
    styles, magnitudes
        As for :func:`weights`.

    Returns
    -------
    SearchStrategy[tuple of two ndarrays]
    """
    dtype = draw(st.sampled_from(list(dtypes)))
    shape = draw(shapes if shapes is not None else weight_shapes(min_dims=2))
    kernel = weights((dtype,), st.just(shape), styles=styles, magnitudes=magnitudes)
    return draw(kernel, label="w1"), draw(kernel, label="w2")


def positive_scales(exact: bool = True):
    """Positive factors ``c`` for scale-equivariance checks.

    Parameters
    ----------
    exact : bool
        ``True`` (default): powers of two from ``2**-4`` to ``2**4`` except 1. Multiplying a
        normal float by a power of two is exact, so ``project(c w) == c project(w)`` can be
        checked to rounding of the projection itself. ``False``: any float in ``[0.125, 8]``
        (then compare with a looser tolerance).

    Returns
    -------
    SearchStrategy[float]
    """
    if exact:
        return st.sampled_from([2.0**k for k in (1, -1, 2, -2, 3, -3, 4, -4)])
    return st.floats(0.125, 8.0, allow_nan=False, allow_infinity=False)


def zero_tensors(dtypes=(np.float32, np.float64), shapes=None):
    """All-zero tensors (with random ``-0.0`` entries) of the shapes :func:`weights` uses."""
    return weights(dtypes, shapes, styles=("zeros",))


def ternary_codes(shape):
    """Int8 arrays of ``shape`` with values in {-1, 0, +1}."""
    return hnp.arrays(np.int8, shape, elements=st.integers(-1, 1))
