"""Reference networks used by the papers of the survey, built as :class:`Sequential` stacks.

Every model is a flat ``Sequential`` so a quantization method can walk ``model.layers`` or
``model.modules()`` and find each ``Linear``/``Conv2d`` (and attach a ``weight_quantizer``).
Inputs are NCHW float32: ``(N, 1, 8, 8)`` for the embedded digits, ``(N, 1, 28, 28)`` for
(Fashion-)MNIST. A Linear or Conv2d directly followed by BatchNorm has no bias (BatchNorm's beta
replaces it; in training mode such a bias would receive exactly zero gradient).
"""

from __future__ import annotations

import numpy as np

from ternref._validate import describe, integer, real_number
from ternref.nn.layers import (
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    _rng,
)

__all__ = ["mlp", "lenet5", "small_cnn"]


def mlp(
    sizes, rng=None, batchnorm: bool = False, dropout: float = 0.0, dtype=np.float32
) -> Sequential:
    """Multi-layer perceptron ``Flatten -> [Linear -> (BN1d) -> ReLU -> (Dropout)] * k -> Linear``.

    Parameters
    ----------
    sizes : sequence of int, length >= 2
        ``(in_features, hidden_1, ..., n_classes)``; e.g. ``(784, 2048, 2048, 2048, 10)`` is the
        LAT/BinaryConnect MNIST MLP (3x2048).
    rng : numpy.random.Generator, optional
    batchnorm : bool, default False
        Insert BatchNorm1d after each hidden Linear (which then has no bias).
    dropout : float in [0, 1), default 0
        Dropout after each hidden ReLU (0 inserts none).
    dtype : float dtype, default float32

    Returns
    -------
    Sequential
        The last Linear outputs logits (no activation).
    """
    try:
        sizes = [integer(s, "sizes entry", low=1) for s in sizes]
    except TypeError:
        raise TypeError(f"sizes must be a sequence of ints, got {describe(sizes)}") from None
    if len(sizes) < 2:
        raise ValueError(f"sizes must have at least 2 entries (in, out), got {sizes}")
    dropout = real_number(dropout, "dropout", low=0.0, high=1.0, high_open=True)
    rng = _rng(rng)
    layers = [Flatten()]
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
        layers.append(Linear(fan_in, fan_out, bias=not batchnorm, rng=rng, dtype=dtype))
        if batchnorm:
            layers.append(BatchNorm1d(fan_out, dtype=dtype))
        layers.append(ReLU())
        if dropout > 0:
            layers.append(Dropout(dropout, rng=rng))
    layers.append(Linear(sizes[-2], sizes[-1], rng=rng, dtype=dtype))
    return Sequential(*layers)


def lenet5(rng=None, dtype=np.float32) -> Sequential:
    """The 32C5-MP2-64C5-MP2-512FC-10 network of the TWN and GXNOR MNIST experiments.

    Input (N, 1, 28, 28) -> logits (N, 10)::

        Conv2d(1, 32, 5, padding=2)  -> BN2d -> ReLU -> MaxPool2d(2)    (N, 32, 14, 14)
        Conv2d(32, 64, 5)            -> BN2d -> ReLU -> MaxPool2d(2)    (N, 64, 5, 5)
        Flatten                                                          (N, 1600)
        Linear(1600, 512)            -> BN1d -> ReLU                     (N, 512)
        Linear(512, 10)                                                  (N, 10)

    Parameters
    ----------
    rng : numpy.random.Generator, optional
    dtype : float dtype, default float32

    Returns
    -------
    Sequential

    References
    ----------
    F. Li, B. Zhang, B. Liu, "Ternary Weight Networks", arXiv:1605.04711, 2016.
    L. Deng, P. Jiao, J. Pei, Z. Wu, G. Li, "GXNOR-Net", Neural Networks 2018, arXiv:1705.09283.
    """
    rng = _rng(rng)
    return Sequential(
        Conv2d(1, 32, 5, padding=2, bias=False, rng=rng, dtype=dtype),
        BatchNorm2d(32, dtype=dtype),
        ReLU(),
        MaxPool2d(2),
        Conv2d(32, 64, 5, bias=False, rng=rng, dtype=dtype),
        BatchNorm2d(64, dtype=dtype),
        ReLU(),
        MaxPool2d(2),
        Flatten(),
        Linear(64 * 5 * 5, 512, bias=False, rng=rng, dtype=dtype),
        BatchNorm1d(512, dtype=dtype),
        ReLU(),
        Linear(512, 10, rng=rng, dtype=dtype),
    )


def small_cnn(rng=None, dtype=np.float32) -> Sequential:
    """A small CNN for the 8x8 digits: input (N, 1, 8, 8) -> logits (N, 10).

    ::

        Conv2d(1, 16, 3, padding=1)  -> BN2d -> ReLU -> MaxPool2d(2)    (N, 16, 4, 4)
        Conv2d(16, 32, 3, padding=1) -> BN2d -> ReLU -> MaxPool2d(2)    (N, 32, 2, 2)
        Flatten                                                          (N, 128)
        Linear(128, 64)              -> BN1d -> ReLU                     (N, 64)
        Linear(64, 10)                                                   (N, 10)

    Parameters
    ----------
    rng : numpy.random.Generator, optional
    dtype : float dtype, default float32

    Returns
    -------
    Sequential
    """
    rng = _rng(rng)
    return Sequential(
        Conv2d(1, 16, 3, padding=1, bias=False, rng=rng, dtype=dtype),
        BatchNorm2d(16, dtype=dtype),
        ReLU(),
        MaxPool2d(2),
        Conv2d(16, 32, 3, padding=1, bias=False, rng=rng, dtype=dtype),
        BatchNorm2d(32, dtype=dtype),
        ReLU(),
        MaxPool2d(2),
        Flatten(),
        Linear(32 * 2 * 2, 64, bias=False, rng=rng, dtype=dtype),
        BatchNorm1d(64, dtype=dtype),
        ReLU(),
        Linear(64, 10, rng=rng, dtype=dtype),
    )
