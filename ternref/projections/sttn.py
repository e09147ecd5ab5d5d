"""STTN: Soft Threshold Ternary Networks (two binary kernels merged into one ternary kernel).

Paper
-----
Weixiang Xu, Xiangyu He, Tianli Zhao, Qinghao Hu, Peisong Wang, Jian Cheng, "Soft Threshold
Ternary Networks", IJCAI 2020, arXiv:2204.01234. Official PyTorch code: github.com/WeixiangXu/STTN
(``util.py`` ``BinOp.binarizeConvParams``, ``merge_from_bwx2_to_ternary.py``,
``TerActivateFunc/src/cuda/TerActivateFunc_cuda_kernel.cu``; re-read at commit 295bd64).

What is implemented
-------------------
Weights (an indirect projection, no hard threshold). At training time each ternary kernel is two
parallel binary kernels ``W1``, ``W2`` of the same shape whose outputs are added::

    W_k <- clamp(W_k, -1, 1)                                  (BinOp.clampConvParams)
    alpha_c = (||W1_c||_1 + ||W2_c||_1) / (2 n)               (shared, per output channel c;
                                                               n = fan-in = prod(shape[1:]))
    B_k = alpha * sgn(W_k)                                    (:func:`sttn_binary_kernels`)

At inference the two are merged (``merge_from_bwx2_to_ternary.py`` adds the two weight tensors)::

    T = B1 + B2 = alpha (sgn W1 + sgn W2)  in {-2 alpha, 0, +2 alpha}

:func:`sttn` returns this ``T`` as a ``Ternary`` with codes ``(sgn W1 + sgn W2) / 2`` and
per-channel scale ``2 alpha``; ``T.dense()`` equals ``B1 + B2`` bit for bit (methods.md P15). A
weight is 0 exactly when the two signs disagree.

Activations (:func:`sttn_activation`, the official CUDA forward kernel)::

    y = -1 if x < -0.5;   0 if -0.5 <= x < 0.5;   +1 if x >= 0.5

Note the asymmetric ties: ``x = -0.5`` gives 0 but ``x = +0.5`` gives +1, so the activation is not
odd at the two thresholds. ternref keeps the kernel's rule (the code is the reference here). Its
backward, a clipped STE zero outside ``[-1, 1]``, belongs to the estimators.

Paper vs code vs ternref choices
--------------------------------
* **sgn(0).** The official code binarizes with ``torch.sign``, where ``sign(0) = 0``: a latent
  weight that is exactly 0 would contribute 0 instead of ``+-alpha``, and the merged kernel could
  hold ``+-alpha`` (a fourth and fifth level). ternref binarizes with ``sgn(x) = +1 if x >= 0 else
  -1`` (the usual binary-network convention), so each ``B_k`` is truly binary and the merged
  kernel is always ternary. The price: for entries where a latent weight is exactly 0 the merge is
  not odd (``sgn(0) = sgn(-0) = +1``). Away from exact zeros it is odd.
* ``n`` is the number of weights per output channel (``weight[0].nelement()`` in the code), so
  inputs must have at least 2 dimensions ``(out, ...)``.
* The weight gradient and the teacher-student loss belong to the training method
  (``ternref.methods.sttn`` states the official ``updateBinaryGradWeight`` and where ternref's
  exact chain rule differs from it).

References
----------
Xu, W., He, X., Zhao, T., Hu, Q., Wang, P., Cheng, J. (2020). Soft Threshold Ternary Networks.
IJCAI 2020. arXiv:2204.01234.
"""

from __future__ import annotations

import numpy as np

from ternref._validate import float_array
from ternref.projections._registry import register
from ternref.ternary import Ternary

_PAPER = "Xu, He, Zhao, Hu, Wang, Cheng. Soft Threshold Ternary Networks (IJCAI)"


def binary_sign(x: np.ndarray) -> np.ndarray:
    """``sgn(x) = +1 if x >= 0 else -1`` as int8 (binary networks' sign; ``sgn(0) = +1``)."""
    return np.where(x >= 0, 1, -1).astype(np.int8)


def _check_pair(w1, w2):
    w1 = float_array(w1, "w1")
    w2 = float_array(w2, "w2")
    if w1.ndim < 2:
        raise ValueError(
            f"w1 must have at least 2 dimensions (out, fan_in...) so that alpha is per output "
            f"channel, got shape {w1.shape}"
        )
    if w1.shape != w2.shape:
        raise ValueError(f"w1 and w2 must have the same shape, got {w1.shape} and {w2.shape}")
    if w1.dtype != w2.dtype:
        raise TypeError(f"w1 and w2 must share a dtype, got {w1.dtype} and {w2.dtype}")
    return w1, w2


def sttn_alpha(w1, w2) -> np.ndarray:
    """Shared per-output-channel scale ``alpha = (||W1_c||_1 + ||W2_c||_1) / (2n)`` after clamping.

    Parameters
    ----------
    w1, w2 : ndarray of float, shape (out, ...)
        The two latent binary kernels.

    Returns
    -------
    ndarray, shape (out, 1, ..., 1)
        ``alpha`` in the kernels' dtype, broadcastable against them.

    References
    ----------
    Xu et al. (2020), arXiv:2204.01234; code ``util.py`` ``binarizeConvParams``.
    """
    w1, w2 = _check_pair(w1, w2)
    axes = tuple(range(1, w1.ndim))
    n = int(np.prod(w1.shape[1:]))
    l1 = np.sum(np.abs(np.clip(w1, -1, 1)), axis=axes, keepdims=True) + np.sum(
        np.abs(np.clip(w2, -1, 1)), axis=axes, keepdims=True
    )
    return (l1 / (2 * n)).astype(w1.dtype)


def sttn_binary_kernels(w1, w2) -> tuple[np.ndarray, np.ndarray]:
    """The training-time binary kernels ``B_k = alpha * sgn(clamp(W_k, -1, 1))``.

    Parameters
    ----------
    w1, w2 : ndarray of float, shape (out, ...)
        The two latent kernels.

    Returns
    -------
    (B1, B2) : tuple of ndarray
        Dense binary kernels (values ``+-alpha_c`` per output channel), in the input dtype.

    References
    ----------
    Xu et al. (2020), arXiv:2204.01234.
    """
    alpha = sttn_alpha(w1, w2)
    w1, w2 = np.asarray(w1), np.asarray(w2)
    # clamping does not change the sign, so sgn is taken on the latent weights directly
    return alpha * binary_sign(w1), alpha * binary_sign(w2)


@register(
    "sttn",
    paper=_PAPER,
    year=2020,
    arxiv="2204.01234",
    symmetric=True,
    deterministic=True,
    # Read with w = w1 + w2 (T = B1 + B2 stands for W1 + W2). sgn(0) = +1 makes an entry whose
    # two latents are both (+-)0 a nonzero level, so neither sign preservation nor oddness holds
    # at exact zeros; monotonicity in w1 + w2 fails everywhere: (0.1, 0.1) -> +2 alpha but
    # (0.9, -0.1) -> 0. Codes are nondecreasing in each kernel, alpha is a per-row sum.
    claims=(
        "range",
        "coordinate_monotone",
        "permutation_equivariant",
        "dtype_preserving",
        "zero_safe",
    ),
    refutes=("sign_preserving", "monotone", "odd", "scale_equivariant"),
    summary="STTN: merge two binary kernels, T = alpha (sgn W1 + sgn W2) in {-2a, 0, 2a}",
    input_kind="weight_pair",
)
def sttn(w1, w2) -> Ternary:
    """Merge STTN's two binary kernels into one ternary kernel ``T = B1 + B2``.

    Parameters
    ----------
    w1, w2 : ndarray of float32 or float64, shape (out, ...), at least 2-D
        The two latent kernels (clamped to ``[-1, 1]`` inside).

    Returns
    -------
    Ternary
        Codes ``(sgn W1 + sgn W2) / 2`` in {-1, 0, +1} and per-channel scale ``2 alpha``
        (granularity ``"channel"``), so ``dense() == B1 + B2`` exactly.

    References
    ----------
    Xu et al. (2020), arXiv:2204.01234; code ``merge_from_bwx2_to_ternary.py``.
    """
    alpha = sttn_alpha(w1, w2)
    w1, w2 = np.asarray(w1), np.asarray(w2)
    # sgn W1 + sgn W2 is in {-2, 0, 2}; halving gives the code, doubling alpha keeps the value
    codes = ((binary_sign(w1).astype(np.int16) + binary_sign(w2)) // 2).astype(np.int8)
    return Ternary(codes, 2 * alpha, granularity="channel")


def sttn_activation(x) -> np.ndarray:
    """STTN's ternary activation: -1 if ``x < -0.5``, 0 if ``-0.5 <= x < 0.5``, +1 if ``x >= 0.5``.

    Parameters
    ----------
    x : ndarray of float32 or float64
        Pre-activations.

    Returns
    -------
    ndarray
        Values in {-1, 0, +1}, same shape and dtype as ``x``. The tie rule is the official CUDA
        kernel's (asymmetric: ``-0.5 -> 0`` but ``+0.5 -> +1``).

    References
    ----------
    Xu et al. (2020), arXiv:2204.01234; code ``TerActivateFunc_cuda_kernel.cu`` (forward).
    """
    x = float_array(x, "x")
    out = np.where(x < -0.5, -1.0, np.where(x < 0.5, 0.0, 1.0))
    return out.astype(x.dtype)
