"""Token embedding: a lookup table whose backward is a scatter-add.

References
----------
Y. Bengio, R. Ducharme, P. Vincent, C. Jauvin, "A Neural Probabilistic Language Model", JMLR 3,
2003 (the learned lookup table).
A. Karpathy, llm.c, ``encoder_forward`` / ``encoder_backward`` (the same scatter-add, in C).
"""

from __future__ import annotations

import numpy as np

from ternref._validate import describe, float_array, integer, real_number
from ternref.nn.layers import _float_dtype, _need_cache, _rng
from ternref.nn.module import Module, Parameter

__all__ = ["Embedding", "token_ids"]


def token_ids(ids, vocab_size: int, name: str = "ids") -> np.ndarray:
    """Check that ``ids`` is a non-empty integer array with every entry in ``[0, vocab_size)``.

    Parameters
    ----------
    ids : array_like of int
    vocab_size : int
        The number of rows of the table the ids index.
    name : str
        The argument's name in error messages.

    Returns
    -------
    ndarray of int
        ``ids`` as an ndarray (not copied).

    Raises
    ------
    TypeError
        A float, bool or object array (a float "id" is almost always activations passed where
        token ids belong).
    ValueError
        An empty array or an id outside ``[0, vocab_size)``; the message gives the range found.
    """
    arr = np.asarray(ids) if isinstance(ids, (list, tuple, np.ndarray, int, np.integer)) else None
    if arr is None or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array of token ids, got {describe(ids)}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"{name} must lie in [0, {vocab_size}) (the table has {vocab_size} rows), "
            f"got ids in [{low}, {high}]"
        )
    return arr


class Embedding(Module):
    """Lookup table ``y[..., :] = weight[ids[...], :]``.

    Parameters
    ----------
    num_embeddings : int
        Number of rows V (the vocabulary size).
    dim : int
        Width D of each row.
    std : float, default 1.0
        Initialisation ``N(0, std^2)``; 1.0 is PyTorch's ``nn.Embedding`` default, the LLaMA and
        BERT models of :mod:`ternref.nn.transformer` use 0.02 (Hugging Face's
        ``initializer_range``).
    rng : numpy.random.Generator, optional
    dtype : float dtype, default float32

    Attributes
    ----------
    weight : Parameter, shape (V, D)

    Notes
    -----
    Shapes: ids (...) integer in [0, V) -> y (..., D), in the weight's dtype (the input has no
    float dtype to keep).

    Backward. ``y_n = W[i_n]`` for every position n (the flattened index), so
    ``dL/dW_v = sum_{n : i_n = v} dy_n``: every row receives the sum of the upstream gradients
    of the positions that looked it up, and a row looked up k times receives k terms. That is a
    scatter-add, ``np.add.at(dW, ids, dy)``, which (unlike ``dW[ids] += dy``) adds every
    repeated index instead of keeping only the last write. The ids are integers: there is no
    ``dL/dids``, so :meth:`backward` returns ``None``.
    """

    def __init__(self, num_embeddings: int, dim: int, std: float = 1.0, rng=None,
                 dtype=np.float32):  # fmt: skip
        super().__init__()
        self.num_embeddings = integer(num_embeddings, "num_embeddings", low=1)
        self.dim = integer(dim, "dim", low=1)
        std = real_number(std, "std", low=0.0)
        w = std * _rng(rng).standard_normal((self.num_embeddings, self.dim))
        self.weight = Parameter(w.astype(_float_dtype(dtype)), "weight")
        self._ids = None

    def forward(self, ids) -> np.ndarray:
        """ids (...) int -> y (..., D)."""
        ids = token_ids(ids, self.num_embeddings)
        self._ids = ids
        return self.weight.data[ids]

    def backward(self, dy: np.ndarray) -> None:
        """Scatter-add ``dy`` (..., D) into ``weight.grad``; returns ``None`` (no dL/dids)."""
        ids = _need_cache(self, self._ids)
        dy = float_array(dy, "Embedding dy", finite=False)
        if dy.shape != (*ids.shape, self.dim):
            raise ValueError(
                f"Embedding.backward: dy must have the output shape {(*ids.shape, self.dim)}, "
                f"got {dy.shape}"
            )
        if self.weight.requires_grad:
            # dW_v = sum of dy_n over the positions n with ids_n = v (repeats add up)
            np.add.at(self.weight.grad, ids.reshape(-1), dy.reshape(-1, self.dim))
        return None

    def backward_params(self, dy: np.ndarray) -> None:
        self.backward(dy)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}"
