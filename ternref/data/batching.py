"""Mini-batches for one epoch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ternref import _validate as check


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    rng: np.random.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x_batch, y_batch)`` pairs covering one epoch.

    Parameters
    ----------
    x : ndarray, shape (N, ...)
        Inputs; batched along the first axis.
    y : ndarray, shape (N, ...)
        Targets, aligned with ``x``.
    batch_size : int
        Samples per batch, >= 1. The last batch is smaller when ``N`` is not a multiple.
    rng : numpy.random.Generator, optional
        Required when ``shuffle`` is True: the epoch's order is ``rng.permutation(N)``, so the
        same seed gives the same order. Ignored when ``shuffle`` is False.
    shuffle : bool, default True
        Visit the samples in a random order; otherwise in index order (batches are views).
    drop_last : bool, default False
        Skip the final batch if it has fewer than ``batch_size`` samples.

    Yields
    ------
    x_batch, y_batch : ndarray
        ``x[idx]``, ``y[idx]`` for consecutive chunks ``idx`` of the epoch's order. Without
        ``drop_last`` every sample appears exactly once per epoch.
    """
    # Validate eagerly (before the first next()) so mistakes surface at the call site.
    batch_size = check.integer(batch_size, "batch_size", low=1)
    if not hasattr(x, "__len__") or not hasattr(y, "__len__"):
        raise TypeError(f"x and y must be arrays, got {check.describe(x)} and {check.describe(y)}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x and y must have the same length, got len(x)={n}, len(y)={len(y)}")
    if shuffle:
        # Drawn now, not at the first next(), so the rng advances exactly when batches() is called.
        order = check.generator(rng, "rng").permutation(n)
    else:
        order = None
    return _generate(x, y, batch_size, order, n, drop_last)


def _generate(x, y, batch_size: int, order, n: int, drop_last: bool):
    """The generator behind ``batches``: chunks of ``order`` (or of ``range(n)``)."""
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            yield x[start:end], y[start:end]
        else:
            idx = order[start:end]
            yield x[idx], y[idx]
