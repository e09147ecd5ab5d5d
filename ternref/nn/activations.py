"""Smooth activations of transformers: GELU (BERT) and SiLU (the gate of LLaMA's SwiGLU).

GELU's exact form needs the error function, which NumPy does not provide: :func:`erf` is the C
library's ``erf`` applied element by element by a small Numba loop (:func:`erf_numpy` is its
plain-Python twin, the same ``math.erf`` called from Python; ``NUMBA_DISABLE_JIT=1`` makes the two
the same code).

References
----------
D. Hendrycks, K. Gimpel, "Gaussian Error Linear Units (GELUs)", arXiv:1606.08415, 2016.
S. Elfwing, E. Uchibe, K. Doya, "Sigmoid-Weighted Linear Units for Neural Network Function
Approximation in Reinforcement Learning", Neural Networks 2018, arXiv:1702.03118 (SiLU).
P. Ramachandran, B. Zoph, Q. V. Le, "Searching for Activation Functions", arXiv:1710.05941, 2017
(the same function as "Swish").
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ternref._validate import float_array, one_of
from ternref.nn.layers import _check_dy, _need_cache
from ternref.nn.module import Module

__all__ = ["GELU", "SiLU", "erf", "erf_numpy", "sigmoid"]

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715


@numba.njit(cache=True, nogil=True)
def _erf_kernel(x, out):  # pragma: no cover - compiled
    for i in range(x.size):
        out[i] = math.erf(x[i])


def erf_numpy(x: np.ndarray) -> np.ndarray:
    """The error function element-wise via Python's ``math.erf`` (the twin of :func:`erf`)."""
    x = np.asarray(x)
    return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function ``erf(x) = (2/sqrt(pi)) int_0^x exp(-t^2) dt`` element-wise.

    Parameters
    ----------
    x : ndarray of float32 or float64
        Any other float dtype is computed in float64 and cast back.

    Returns
    -------
    ndarray, shape and dtype of ``x``
        The C library's ``erf`` (correctly rounded to about 1 ulp) of each element.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        return erf(x.astype(np.float64)).astype(x.dtype)
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    _erf_kernel(flat, out)
    return out.reshape(x.shape)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` computed as ``(1 + tanh(x / 2)) / 2``: no overflow for any x."""
    s = np.tanh(x * x.dtype.type(0.5))
    s += 1
    s *= 0.5
    return s


class GELU(Module):
    """Gaussian error linear unit ``y = x * Phi(x)``, Phi the standard normal CDF.

    Parameters
    ----------
    approximate : {"none", "tanh"}, default "none"
        ``"none"``: the exact (erf) form, ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``, what BERT and
        Hugging Face's ``"gelu"`` (``hidden_act`` of all-MiniLM-L6-v2) compute. ``"tanh"``:
        Hendrycks & Gimpel's approximation ``Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715
        x^3))) / 2``, Hugging Face's ``"gelu_new"`` / ``"gelu_pytorch_tanh"`` (GPT-2), the same
        keyword as ``torch.nn.GELU(approximate=...)``. The two differ by at most about 5e-4.

    Notes
    -----
    Shapes: any. Backward of the exact form: ``dy/dx = Phi(x) + x phi(x)`` with
    ``phi(x) = exp(-x^2/2) / sqrt(2 pi)``. Of the tanh form, with ``u = sqrt(2/pi) (x + c x^3)``
    and ``t = tanh(u)``: ``y = x (1 + t) / 2``, so
    ``dy/dx = (1 + t)/2 + (x/2) (1 - t^2) sqrt(2/pi) (1 + 3 c x^2)``.
    """

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = one_of(approximate, "approximate", ("none", "tanh"))
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = float_array(x, "GELU input", finite=False, allow_empty=True)
        if self.approximate == "none":
            cdf = erf(x * x.dtype.type(_SQRT_HALF))
        else:
            cdf = np.tanh(x * (x * x * _TANH_CUBIC + 1) * _SQRT_2_OVER_PI)  # t
        cdf += 1
        cdf *= 0.5  # Phi(x), or (1 + t)/2
        self._cache = (x, cdf)
        return x * cdf

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, cdf = _need_cache(self, self._cache)
        dy = _check_dy(self, dy, x.shape)
        x2 = x * x
        if self.approximate == "none":
            # Phi(x) + x phi(x)
            slope = np.exp(x2 * -0.5)
            slope *= x * _INV_SQRT_2PI
        else:
            # (1 + t)/2 + (x/2)(1 - t^2) sqrt(2/pi)(1 + 3 c x^2), with 1 - t^2 = 4 cdf (1 - cdf)
            slope = cdf * (1 - cdf)
            slope *= x * (x2 * (3 * _TANH_CUBIC) + 1) * (2 * _SQRT_2_OVER_PI)
        slope += cdf
        slope *= dy
        return slope

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    """Sigmoid linear unit (Swish with beta = 1) ``y = x * sigmoid(x)``.

    Notes
    -----
    Shapes: any. With ``s = sigmoid(x)`` and ``ds/dx = s (1 - s)``:
    ``dy/dx = s + x s (1 - s) = s (1 + x (1 - s))``. The sigmoid is computed through ``tanh``, so
    a large negative x gives ``s = 0`` without an overflow warning.
    """

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = float_array(x, "SiLU input", finite=False, allow_empty=True)
        s = sigmoid(x)
        self._cache = (x, s)
        return x * s

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, s = _need_cache(self, self._cache)
        dy = _check_dy(self, dy, x.shape)
        return dy * silu_slope(x, s)


def silu_slope(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``d silu(x)/dx = s (1 + x (1 - s))`` given ``s = sigmoid(x)``."""
    slope = 1 - s
    slope *= x
    slope += 1
    slope *= s
    return slope
