"""llama.cpp's ``Q8_K`` activation quantization, reproduced, and what it does to a TQ product.

ggml's CPU backend never multiplies a TQ2_0 / TQ1_0 weight by float activations: ``ggml_mul_mat``
first converts the activations (``src1``, float32) to the weight type's ``vec_dot_type``, which
is ``Q8_K`` for both ternary types, and ``ggml_vec_dot_tq2_0_q8_K`` then accumulates integer
products block by block. ``Q8_K`` (``quantize_row_q8_K_ref`` in ``ggml/src/ggml-quants.c``, the
x86 build calls exactly it) cuts a row into blocks of 256 values and, per block::

    m      = the value of largest magnitude (the first one, if several)
    iscale = -127 / m                                   (float32)
    q_j    = min(127, nearest_int(iscale * x_j))        (int8; nearest, ties to even)
    d      = 1 / iscale                                 (float32; x_j ~ d q_j)

(an all-zero block gets ``d = 0`` and ``q = 0``). The dot product of one output row ``o`` with
one token is then ``sum_b d_wb d_b sum_{j in b} c_oj q_j``: exact integer sums, one float
multiply-add per block (``d_wb`` the block's fp16 weight scale). So llama.cpp computes the
float product of the ternary weight with the *dequantized* activations ``x~ = d q`` -- no other
rounding than float32 accumulation. :func:`q8k_dequantize` gives ``x~``, and
:class:`Q8KProjection` a projection that multiplies by it: a ternref forward with those layers is
what llama.cpp's kernels compute, up to float32 summation order.

The error this introduces in one product is bounded: ``|x~_j - x_j| <= d_b / 2 = amax_b / 254``
(rounding to the nearest of a grid of step ``d_b``; the clamp at 127 only cuts the value
``-m * iscale = 127`` rounds to, never beyond), so for weight ``w_oj = alpha_ob c_oj``::

    |y~_o - y_o| <= sum_b alpha_ob (amax_b / 254) #{j in b : c_oj != 0}        (1)

and, the rounding errors being roughly uniform and independent, its typical size is
``sqrt(sum_b alpha_ob^2 nnz_ob d_b^2 / 12)``. Through a whole network the errors of every
product interact with norms, softmax and SiLU; the tests therefore run the network twice in
ternref, with float and with Q8_K activations, and take the distance between those two
forwards as the scale of the disagreement to expect from llama.cpp (see
``tests/interop/test_llama_cpp.py``).

References
----------
ggml (llama.cpp): ``block_q8_K`` in ``ggml/src/ggml-common.h``, ``quantize_row_q8_K_ref`` in
``ggml/src/ggml-quants.c``, ``ggml_vec_dot_tq2_0_q8_K_generic`` in
``ggml/src/ggml-cpu/quants.c``, ``type_traits_cpu`` (``vec_dot_type``) in
``ggml/src/ggml-cpu/ggml-cpu.c``. https://github.com/ggml-org/llama.cpp
"""

from __future__ import annotations

import numpy as np

from ternref._validate import describe, float_array
from ternref.nn.module import Module
from ternref.ternary import Ternary

QK_K = 256


def q8k_quantize(x) -> tuple[np.ndarray, np.ndarray]:
    """``Q8_K`` of the rows of ``x``: ``(q int8 (..., K), d float32 (..., K / 256))``.

    ``K``, the last axis, must be a multiple of 256 (as ggml asserts).
    """
    x = float_array(x, "x").astype(np.float32, copy=False)
    k = x.shape[-1]
    if x.ndim < 1 or k % QK_K:
        raise ValueError(f"x must have rows of a multiple of {QK_K} values, got shape {x.shape}")
    blocks = x.reshape(-1, k // QK_K, QK_K)
    # m: the signed value of the first entry of largest magnitude (the C loop's strict '>')
    first = np.abs(blocks).argmax(axis=-1)
    m = np.take_along_axis(blocks, first[..., None], axis=-1)[..., 0]
    zero = m == 0
    with np.errstate(divide="ignore"):
        iscale = np.where(zero, np.float32(0), np.float32(-127) / np.where(zero, 1, m))
    iscale = iscale.astype(np.float32)
    v = np.rint((iscale[..., None] * blocks).astype(np.float32))  # float32 product, then round
    q = np.minimum(v, 127).astype(np.int8)
    with np.errstate(divide="ignore"):
        d = np.where(zero, np.float32(0), np.float32(1) / np.where(zero, 1, iscale))
    return q.reshape(x.shape), d.astype(np.float32).reshape(*x.shape[:-1], k // QK_K)


def q8k_dequantize(x) -> np.ndarray:
    """``x~ = d q``: the activations llama.cpp's TQ kernels compute with (float32, shape of x)."""
    q, d = q8k_quantize(x)
    k = q.shape[-1]
    blocks = q.reshape(-1, k // QK_K, QK_K).astype(np.float32) * d.reshape(-1, k // QK_K, 1)
    return blocks.reshape(q.shape)


def q8k_error_bound(x, t: Ternary) -> np.ndarray:
    """Bound (1) of the module docstring on ``|x~ W^T - x W^T|`` for every row and output.

    ``x`` is ``(N, K)``, ``t`` a ternary ``(M, K)``; returns ``(N, M)`` float64.
    """
    x = float_array(x, "x", ndim=2)
    if not isinstance(t, Ternary) or t.shape[-1] != x.shape[1] or len(t.shape) != 2:
        raise ValueError(f"t must be a 2-D Ternary with {x.shape[1]} columns, got {describe(t)}")
    n, k = x.shape
    half_step = np.abs(x.astype(np.float64)).reshape(n, k // QK_K, QK_K).max(axis=-1) / 254.0
    # per output row o and block b: sum over the block of |w_oj| = alpha_oj |c_oj|
    absw = np.abs(t.dense().astype(np.float64)).reshape(t.shape[0], k // QK_K, QK_K).sum(-1)
    return half_step @ absw.T


class Q8KProjection(Module):
    """``y = q8k_dequantize(x) W_hat^T`` for inputs of any leading shape (inference only).

    The product llama.cpp's TQ2_0/TQ1_0 kernels compute (see the module docstring), in float64
    then cast to the input's dtype.

    Parameters
    ----------
    t : Ternary
        The weight ``(out, in)``, ``in`` a multiple of 256.
    """

    def __init__(self, t: Ternary):
        super().__init__()
        if not isinstance(t, Ternary) or len(t.shape) != 2 or t.shape[1] % QK_K:
            raise ValueError(f"t must be a 2-D Ternary with rows of a multiple of {QK_K}, "
                             f"got {describe(t)}")  # fmt: skip
        self.ternary = t
        self.out_features, self.in_features = t.shape
        self._w = t.dense().astype(np.float64)
        self.training = False

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self!r}: expected input of shape (..., {self.in_features}), got {x.shape}"
            )
        lead = x.shape[:-1]
        xq = q8k_dequantize(x.reshape(-1, self.in_features)).astype(np.float64)
        return (xq @ self._w.T).astype(x.dtype).reshape(*lead, self.out_features)

    def backward(self, dy):
        raise RuntimeError("Q8KProjection is inference only: it has no backward")

    def __repr__(self) -> str:
        return f"Q8KProjection({self.in_features}, {self.out_features})"
