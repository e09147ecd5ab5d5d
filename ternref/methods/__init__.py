"""Ternary training methods: projection + gradient estimator + optimization recipe.

Each method has its own module in this package and registers itself by name, so that
``ternref train --method NAME``, ``ternref methods`` and ``ternref compare`` find it. Importing
the package imports every module. See :mod:`ternref.methods.base` for the interface.
"""

import importlib
import pkgutil

from ternref.methods.base import (
    KEEP_FULL_PRECISION,
    Method,
    MethodInfo,
    TernaryStats,
    WeightQuantizer,
    get,
    info,
    names,
    quantize_model,
    quantized_layers,
    register,
    requires_teacher,
    weight_layers,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "estimators") and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "KEEP_FULL_PRECISION",
    "Method",
    "MethodInfo",
    "TernaryStats",
    "WeightQuantizer",
    "get",
    "info",
    "names",
    "quantize_model",
    "quantized_layers",
    "register",
    "requires_teacher",
    "weight_layers",
]
