"""Argument checks shared by every public function.

Each check raises a ``TypeError`` (wrong kind of object) or a ``ValueError`` (right kind, wrong
value) whose message names the argument, what was expected and what arrived, so that an error
points at the caller's mistake rather than at a line deep inside NumPy.
"""

from __future__ import annotations

import numbers

import numpy as np


def describe(x) -> str:
    """A short description of ``x`` for error messages: type, dtype and shape when it has them."""
    if isinstance(x, np.ndarray):
        return f"ndarray of dtype {x.dtype} and shape {x.shape}"
    return f"{type(x).__name__} {x!r}"[:120]


def float_array(
    x, name: str, *, allow_empty: bool = False, finite: bool = True, ndim=None
) -> np.ndarray:
    """Return ``x`` as a floating-point ndarray, or raise.

    Integer, boolean and object arrays are refused with a ``TypeError`` rather than silently cast:
    a quantizer fed integers is almost always a caller bug (codes passed where weights belong).
    Python floats, lists of floats and NumPy float scalars are accepted and keep float64.
    """
    if isinstance(x, np.ndarray):
        arr = x
    elif isinstance(x, (list, tuple, float, np.floating)):
        arr = np.asarray(x)
    else:
        raise TypeError(f"{name} must be a floating-point numpy array, got {describe(x)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"{name} must have a floating-point dtype (float32 or float64), got dtype {arr.dtype}"
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimensions, "
                f"got shape {arr.shape}"
            )
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if finite and arr.size and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} must be finite, got {bad} NaN or infinite value(s)")
    return arr


def float_tensor(x, name: str) -> np.ndarray:
    """:func:`float_array` that also refuses 0-d input (a projection keeps its input's shape)."""
    arr = float_array(x, name)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-d array ({arr!r})")
    return arr


def real_number(x, name: str, *, low=None, high=None, low_open=False, high_open=False) -> float:
    """Return ``x`` as a Python float after checking it is a finite real number in a range.

    ``low``/``high`` bound the range; ``low_open``/``high_open`` make the bound strict.
    """
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {describe(x)}")
    value = float(x)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        op = ">" if low_open else ">="
        raise ValueError(f"{name} must be {op} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        op = "<" if high_open else "<="
        raise ValueError(f"{name} must be {op} {high}, got {value}")
    return value


def integer(x, name: str, *, low=None, high=None) -> int:
    """Return ``x`` as a Python int after checking it is an integer in ``[low, high]``."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {describe(x)}")
    value = int(x)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def generator(rng, name: str = "rng") -> np.random.Generator:
    """Check that ``rng`` is a ``numpy.random.Generator`` (ternref never seeds global state)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{name} must be a numpy.random.Generator (e.g. np.random.default_rng(0)), "
            f"got {describe(rng)}"
        )
    return rng


def one_of(x, name: str, choices) -> str:
    """Check that ``x`` is one of ``choices`` (strings)."""
    if x not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {x!r}")
    return x
