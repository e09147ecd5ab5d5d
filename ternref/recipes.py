"""Named models and the default training recipe for each (model, dataset) pair.

The CLI and the benchmarks build networks here, so ``ternref train --model lenet5`` and
``benchmarks/bench_training.py`` train exactly the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ternref import _validate

MODELS = ("mlp", "cnn", "lenet5")


@dataclass(frozen=True)
class Recipe:
    """Default hyper-parameters of a full-precision run."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    schedule: str  # "constant", "step" or "cosine"


# Full-precision recipes. lenet5 on Fashion-MNIST is the reference recipe (batch 128,
# Adam 1e-3, cosine, 10 epochs; PyTorch reaches about 92.5% with it).
RECIPES = {
    ("mlp", "digits"): Recipe(
        epochs=30, batch_size=32, optimizer="adam", lr=1e-3, schedule="cosine"
    ),
    ("cnn", "digits"): Recipe(
        epochs=30, batch_size=32, optimizer="adam", lr=1e-3, schedule="cosine"
    ),
    ("mlp", "fashion-mnist"): Recipe(10, 128, "adam", 1e-3, "cosine"),
    ("lenet5", "fashion-mnist"): Recipe(10, 128, "adam", 1e-3, "cosine"),
    ("mlp", "mnist"): Recipe(10, 128, "adam", 1e-3, "cosine"),
    ("lenet5", "mnist"): Recipe(10, 128, "adam", 1e-3, "cosine"),
}


def recipe(model: str, dataset: str) -> Recipe:
    """The default recipe for ``model`` on ``dataset`` (ValueError if the pair makes no sense)."""
    _validate.one_of(model, "model", MODELS)
    try:
        return RECIPES[(model, dataset)]
    except KeyError:
        fits = sorted(d for m, d in RECIPES if m == model)
        raise ValueError(
            f"model {model!r} does not fit dataset {dataset!r}; it is meant for: {', '.join(fits)}"
        ) from None


def build_model(name: str, image_shape: tuple, n_classes: int, rng: np.random.Generator):
    """Build the named network for inputs of ``image_shape`` (C, H, W).

    * ``mlp``: Flatten -> 256 -> ReLU -> 256 -> ReLU -> n_classes (hidden sizes as in the small
      MLPs of the TernaryConnect experiments, scaled down for the 8x8 digits);
    * ``cnn``: the small CNN for 1x8x8 digits (``ternref.nn.small_cnn``);
    * ``lenet5``: 32C5-MP2-64C5-MP2-512FC-10 of the TWN and GXNOR papers, for 1x28x28.
    """
    from ternref import nn

    _validate.one_of(name, "model", MODELS)
    rng = _validate.generator(rng)
    c, h, w = image_shape
    if name == "mlp":
        return nn.mlp([c * h * w, 256, 256, n_classes], rng=rng)
    if name == "cnn":
        if (c, h, w) != (1, 8, 8) or n_classes != 10:
            raise ValueError(
                f"model 'cnn' is the small CNN for 1x8x8 digits, got input {c}x{h}x{w}; "
                f"use lenet5 for 28x28 images"
            )
        return nn.small_cnn(rng=rng)
    if (c, h, w) != (1, 28, 28) or n_classes != 10:
        raise ValueError(
            f"model 'lenet5' expects 1x28x28 images and 10 classes, got input {c}x{h}x{w}; "
            f"use cnn or mlp for the 8x8 digits"
        )
    return nn.lenet5(rng=rng)


def build_optimizer(name: str, params, lr: float):
    """``adam`` (Adam, betas 0.9/0.999) or ``sgd`` (SGD with momentum 0.9)."""
    from ternref import optim

    _validate.one_of(name, "optimizer", tuple(optim.OPTIMIZERS))
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9)
    return optim.Adam(params, lr=lr)


def build_schedule(name: str, optimizer, epochs: int):
    """``constant``, ``cosine`` (to 0 over ``epochs``) or ``step`` (x0.1 at 50% and 75%)."""
    from ternref import optim

    _validate.one_of(name, "schedule", optim.SCHEDULES)
    if name == "constant":
        return optim.ConstantLR(optimizer)
    if name == "cosine":
        return optim.CosineLR(optimizer, total_epochs=epochs)
    return optim.MultiStepLR(
        optimizer, milestones=sorted({max(1, math.ceil(epochs * f)) for f in (0.5, 0.75)})
    )
