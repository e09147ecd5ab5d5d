"""Weight initialisers with explicit fan computation and an explicit random Generator.

For a weight of shape ``(out, in, *kernel)`` (Linear ``(out, in)``, Conv2d ``(out, in, kh, kw)``)::

    receptive = prod(kernel)          (1 for Linear)
    fan_in    = in  * receptive
    fan_out   = out * receptive

which is PyTorch's ``torch.nn.init._calculate_fan_in_and_fan_out``.

=================  =====================================  =========================================
initialiser        distribution                           scale
=================  =====================================  =========================================
kaiming_uniform    U(-b, b)                               b = gain * sqrt(3 / fan)
kaiming_normal     N(0, s^2)                              s = gain / sqrt(fan)
glorot_uniform     U(-b, b)                               b = gain * sqrt(6 / (fan_in + fan_out))
glorot_normal      N(0, s^2)                              s = gain * sqrt(2 / (fan_in + fan_out))
=================  =====================================  =========================================

``fan`` is ``fan_in`` (default) or ``fan_out`` (``mode=``). The Kaiming default ``gain = sqrt(2)``
keeps the variance of ReLU activations constant; PyTorch's default for Linear and Conv2d weights is
``kaiming_uniform`` with ``gain = sqrt(2 / (1 + 5)) = 1/sqrt(3)`` (``a = sqrt(5)``), i.e.
``U(+-1/sqrt(fan_in))``, which :mod:`ternref.nn.layers` uses. The LAT code initialises
``U(+-sqrt(1.5 / (fan_in + fan_out)))`` = ``glorot_uniform(gain=0.5)``.

References
----------
X. Glorot, Y. Bengio, "Understanding the difficulty of training deep feedforward neural networks",
AISTATS 2010.
K. He, X. Zhang, S. Ren, J. Sun, "Delving Deep into Rectifiers: Surpassing Human-Level Performance
on ImageNet Classification", ICCV 2015, arXiv:1502.01852.
"""

from __future__ import annotations

import math

import numpy as np

from ternref._validate import describe, generator, one_of, real_number

__all__ = [
    "compute_fans",
    "kaiming_uniform",
    "kaiming_normal",
    "glorot_uniform",
    "glorot_normal",
    "xavier_uniform",
    "xavier_normal",
]


def compute_fans(shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shaped ``(out, in, *kernel)``.

    Parameters
    ----------
    shape : tuple of int
        At least two dimensions, all >= 1.

    Returns
    -------
    (fan_in, fan_out) : tuple of int
    """
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints, got {describe(shape)}") from None
    if len(shape) < 2:
        raise ValueError(
            f"shape must have at least 2 dimensions (out, in, *kernel) to define fans, got {shape}"
        )
    if min(shape) < 1:
        raise ValueError(f"shape entries must be >= 1, got {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _fan(shape, mode: str) -> int:
    fan_in, fan_out = compute_fans(shape)
    return fan_in if one_of(mode, "mode", ("fan_in", "fan_out")) == "fan_in" else fan_out


def _dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"dtype must be a floating-point dtype, got {dt}")
    return dt


def kaiming_uniform(
    shape, rng: np.random.Generator, gain: float = math.sqrt(2.0), mode: str = "fan_in",
    dtype=np.float32,
) -> np.ndarray:  # fmt: skip
    """He uniform: ``U(-b, b)`` with ``b = gain * sqrt(3 / fan)``, so ``Var = gain^2 / fan``.

    Parameters
    ----------
    shape : tuple of int
        ``(out, in, *kernel)``.
    rng : numpy.random.Generator
    gain : float, default sqrt(2)
        ``sqrt(2)`` for ReLU; ``1/sqrt(3)`` reproduces PyTorch's Linear/Conv default.
    mode : {"fan_in", "fan_out"}
    dtype : float dtype, default float32

    Returns
    -------
    ndarray of ``shape``

    References
    ----------
    K. He, X. Zhang, S. Ren, J. Sun, ICCV 2015, arXiv:1502.01852.
    """
    rng = generator(rng)
    gain = real_number(gain, "gain", low=0)
    bound = gain * math.sqrt(3.0 / _fan(shape, mode))
    return rng.uniform(-bound, bound, size=tuple(shape)).astype(_dtype(dtype))


def kaiming_normal(
    shape, rng: np.random.Generator, gain: float = math.sqrt(2.0), mode: str = "fan_in",
    dtype=np.float32,
) -> np.ndarray:  # fmt: skip
    """He normal: ``N(0, s^2)`` with ``s = gain / sqrt(fan)``.

    Parameters and return as :func:`kaiming_uniform`.

    References
    ----------
    K. He, X. Zhang, S. Ren, J. Sun, ICCV 2015, arXiv:1502.01852.
    """
    rng = generator(rng)
    gain = real_number(gain, "gain", low=0)
    std = gain / math.sqrt(_fan(shape, mode))
    return (std * rng.standard_normal(size=tuple(shape))).astype(_dtype(dtype))


def glorot_uniform(
    shape, rng: np.random.Generator, gain: float = 1.0, dtype=np.float32
) -> np.ndarray:
    """Glorot/Xavier uniform: ``U(-b, b)``, ``b = gain * sqrt(6 / (fan_in + fan_out))``.

    Parameters
    ----------
    shape : tuple of int
        ``(out, in, *kernel)``.
    rng : numpy.random.Generator
    gain : float, default 1
    dtype : float dtype, default float32

    Returns
    -------
    ndarray of ``shape``

    References
    ----------
    X. Glorot, Y. Bengio, AISTATS 2010.
    """
    rng = generator(rng)
    gain = real_number(gain, "gain", low=0)
    fan_in, fan_out = compute_fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=tuple(shape)).astype(_dtype(dtype))


def glorot_normal(
    shape, rng: np.random.Generator, gain: float = 1.0, dtype=np.float32
) -> np.ndarray:
    """Glorot/Xavier normal: ``N(0, s^2)``, ``s = gain * sqrt(2 / (fan_in + fan_out))``.

    Parameters and return as :func:`glorot_uniform`.

    References
    ----------
    X. Glorot, Y. Bengio, AISTATS 2010.
    """
    rng = generator(rng)
    gain = real_number(gain, "gain", low=0)
    fan_in, fan_out = compute_fans(shape)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return (std * rng.standard_normal(size=tuple(shape))).astype(_dtype(dtype))


xavier_uniform = glorot_uniform
xavier_normal = glorot_normal
