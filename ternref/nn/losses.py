"""Losses as objects: ``forward(logits, target) -> float`` (batch mean), ``backward() -> dlogits``.

Each loss caches what its gradient needs during ``forward``; ``backward()`` takes no argument (the
loss is the end of the graph, dL/dL = 1) and returns dL/dlogits with the logits' shape and dtype.

References
----------
G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network", NIPS Deep
Learning Workshop 2014, arXiv:1503.02531.
Y. Tang, "Deep Learning using Linear Support Vector Machines", ICML Workshop 2013,
arXiv:1306.0239 (squared hinge / L2-SVM output layer).
M. Courbariaux, Y. Bengio, J.-P. David, "BinaryConnect: Training Deep Neural Networks with binary
weights during propagations", NIPS 2015, arXiv:1511.00363 (the Theano squared hinge reused by the
GXNOR and LAT code).
"""

from __future__ import annotations

import numpy as np

from ternref._validate import describe, float_array, one_of, real_number

__all__ = [
    "Loss",
    "CrossEntropyLoss",
    "LMCrossEntropyLoss",
    "SquaredHingeLoss",
    "DistillationLoss",
    "accuracy",
]


def _logits(logits, name: str = "logits") -> np.ndarray:
    return float_array(logits, name, ndim=2)


def _labels(target, n: int, c: int) -> np.ndarray:
    target = np.asarray(target)
    if not np.issubdtype(target.dtype, np.integer):
        raise TypeError(f"target must be integer class labels, got {describe(target)}")
    if target.shape != (n,):
        raise ValueError(f"target must have shape ({n},) to match the logits, got {target.shape}")
    if n and (target.min() < 0 or target.max() >= c):
        raise ValueError(
            f"target labels must lie in [0, {c}), got range [{target.min()}, {target.max()}]"
        )
    return target


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """``z - logsumexp(z)`` row-wise, shifted by the row max so that exp never overflows."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class Loss:
    """Base class: ``loss(logits, target)`` calls :meth:`forward`."""

    def __init__(self):
        self._grad = None

    def forward(self, logits: np.ndarray, target) -> float:
        raise NotImplementedError

    def __call__(self, logits: np.ndarray, target) -> float:
        return self.forward(logits, target)

    def backward(self) -> np.ndarray:
        """dL/dlogits of the last :meth:`forward` (shape and dtype of the logits)."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._grad.copy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy from logits with integer targets, averaged over the batch.

    Notes
    -----
    Shapes: logits z (N, C), target t (N,) int in [0, C).
    ``L = (1/N) sum_n [logsumexp(z_n) - z_{n, t_n}]``, computed as ``-log_softmax`` with the row
    maximum subtracted first, so logits of magnitude 1e4 neither overflow nor lose the answer.
    Backward: ``d logsumexp(z)/dz = softmax(z) = p``, hence ``dL/dz = (p - onehot(t)) / N``.
    """

    def forward(self, logits: np.ndarray, target) -> float:
        z = _logits(logits)
        n, c = z.shape
        t = _labels(target, n, c)
        logp = _log_softmax(z)
        rows = np.arange(n)
        loss = -logp[rows, t].mean()
        grad = np.exp(logp)
        grad[rows, t] -= 1
        grad /= n
        self._grad = grad
        return float(loss)


class LMCrossEntropyLoss(Loss):
    """Causal language-model cross-entropy: mean over the non-ignored tokens of every sequence.

    Parameters
    ----------
    ignore_index : int, default -100
        Targets equal to it contribute neither loss nor gradient (padding; PyTorch's and Hugging
        Face's default value).

    Notes
    -----
    ``forward(logits, targets)``: logits z (B, T, V), targets t (B, T) int in [0, V) or
    ``ignore_index``. The targets are already aligned with the logits: ``t[b, i]`` is the token
    that follows position i, so a caller with token ids ``x`` (B, T + 1) passes
    ``model(x[:, :-1])`` and ``x[:, 1:]`` (no shift happens inside, unlike Hugging Face's
    ``LlamaForCausalLM``, which shifts its labels). With M the set of non-ignored positions::

        L = (1/|M|) sum_{(b,i) in M} [logsumexp(z_bi) - z_bi,t_bi]

    computed with the row maximum subtracted first (no overflow for large logits). Backward:
    ``dL/dz_bi = (softmax(z_bi) - onehot(t_bi)) / |M|`` on M and 0 elsewhere. When every target
    is ignored the loss is 0 with a zero gradient (PyTorch returns NaN there).

    ``tokens`` (attribute) holds |M| of the last forward; ``loss * tokens / log(2)`` is the total
    in bits (bits per byte for a byte-level vocabulary, dividing by the byte count).
    """

    def __init__(self, ignore_index: int = -100):
        super().__init__()
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index must be an integer, got {describe(ignore_index)}")
        self.ignore_index = int(ignore_index)
        self.tokens = 0

    def forward(self, logits: np.ndarray, targets) -> float:
        z = float_array(logits, "logits", ndim=3)
        b, t, v = z.shape
        targets = np.asarray(targets)
        if not np.issubdtype(targets.dtype, np.integer):
            raise TypeError(f"targets must be integer token ids, got {describe(targets)}")
        if targets.shape != (b, t):
            raise ValueError(
                f"targets must have shape (B, T) = ({b}, {t}) to match the logits, got "
                f"{targets.shape}"
            )
        z2 = z.reshape(b * t, v)
        tgt = targets.reshape(-1)
        keep = tgt != self.ignore_index
        if np.any(keep):
            bad = tgt[keep]
            if bad.min() < 0 or bad.max() >= v:
                raise ValueError(
                    f"targets must lie in [0, {v}) or equal ignore_index={self.ignore_index}, "
                    f"got range [{bad.min()}, {bad.max()}]"
                )
        n = int(np.count_nonzero(keep))
        self.tokens = n
        rows = np.flatnonzero(keep)
        cols = tgt[rows]
        # softmax with the row max subtracted: exp never overflows
        e = z2 - z2.max(axis=1, keepdims=True)
        picked = e[rows, cols]  # z_t - max
        np.exp(e, out=e)
        total = e.sum(axis=1, keepdims=True)
        loss = float(np.sum(np.log(total[rows, 0], dtype=np.float64) - picked)) / max(n, 1)
        grad = e
        grad *= 1 / (total * max(n, 1))  # softmax / |M|
        grad[rows, cols] -= z.dtype.type(1 / max(n, 1))
        grad[~keep] = 0
        self._grad = grad.reshape(b, t, v)
        return loss

    def __repr__(self) -> str:
        return f"LMCrossEntropyLoss(ignore_index={self.ignore_index})"


class SquaredHingeLoss(Loss):
    """Multi-class (one-vs-all) squared hinge loss, the L2-SVM output used by BinaryConnect, LAT
    and GXNOR.

    Parameters
    ----------
    reduction : {"mean", "batch_mean"}, default "mean"
        ``"mean"``: mean over all N*C entries, exactly the official Theano code
        ``T.mean(T.sqr(T.maximum(0., 1. - target * output)))`` (BinaryConnect/BinaryNet
        ``mnist.py``, copied by the GXNOR ``mnist_GXNOR.py`` and LAT ``FNN/mnist.py`` scripts).
        ``"batch_mean"``: mean over the batch of the per-example sum over classes,
        ``(1/N) sum_n sum_j max(0, 1 - t_nj y_nj)^2`` (Tang 2013's L2-SVM); it is C times the
        former, with identical minimisers.

    Notes
    -----
    Targets: integer labels (N,) are mapped to ``t_nj = +1`` for the true class and ``-1``
    otherwise, as the official scripts do (``2 * onehot - 1``); a (N, C) array of +-1 is taken
    as-is. With ``h = max(0, 1 - t*y)``: ``L = (1/D) sum h^2`` (D = N*C or N) and
    ``dL/dy = -(2/D) * t * h`` (h = 0 where the margin is met, so the kink contributes nothing).
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = one_of(reduction, "reduction", ("mean", "batch_mean"))

    def forward(self, logits: np.ndarray, target) -> float:
        y = _logits(logits)
        n, c = y.shape
        target = np.asarray(target)
        if target.ndim == 2:
            t = float_array(target, "target", ndim=2)
            if t.shape != y.shape or not np.all(np.abs(t) == 1):
                raise ValueError(
                    f"a 2-D target must have the logits' shape {y.shape} with entries in "
                    f"{{-1, +1}}, got shape {t.shape}"
                )
            t = t.astype(y.dtype, copy=False)
        else:
            labels = _labels(target, n, c)
            t = -np.ones_like(y)
            t[np.arange(n), labels] = 1
        h = np.maximum(0, 1 - t * y)
        d = n * c if self.reduction == "mean" else n
        self._grad = (-2.0 / d) * t * h
        return float(np.sum(h * h) / d)

    def __repr__(self) -> str:
        return f"SquaredHingeLoss(reduction={self.reduction!r})"


class DistillationLoss(Loss):
    """Knowledge distillation against teacher logits with temperature T (Hinton et al. 2015).

    Parameters
    ----------
    temperature : float > 0, default 1
    kind : {"kl", "soft_ce"}, default "kl"
        ``"kl"``: ``T^2 * (1/N) sum_n KL(p_t || p_s)`` (zero when the student matches the teacher,
        as ``T^2 * KLDivLoss(reduction="batchmean")`` in PyTorch recipes). ``"soft_ce"``: the soft
        cross-entropy ``T^2 * (1/N) sum_n -sum_j p_t log p_s`` that TernaryBERT's
        ``soft_cross_entropy`` computes (at T = 1). The two differ by the teacher entropy, a
        constant, so their gradients are identical.

    Notes
    -----
    ``p_s = softmax(z_s / T)``, ``p_t = softmax(z_t / T)``. The teacher is a constant (no gradient
    flows to it). ``d/dz_s [-sum_j p_t,j log p_s,j] = (p_s - p_t) / T``, so with the ``T^2``
    factor ``dL/dz_s = T * (p_s - p_t) / N``. The ``T^2`` keeps the gradient magnitude roughly
    independent of T, which is Hinton et al.'s reason for it when mixing with the hard loss.

    ``forward(student_logits, teacher_logits)``: both (N, C).

    References
    ----------
    G. Hinton, O. Vinyals, J. Dean, arXiv:1503.02531, 2015.
    W. Zhang et al., "TernaryBERT: Distillation-aware Ultra-low Bit BERT", EMNLP 2020,
    arXiv:2009.12812.
    """

    def __init__(self, temperature: float = 1.0, kind: str = "kl"):
        super().__init__()
        self.temperature = real_number(temperature, "temperature", low=0.0, low_open=True)
        self.kind = one_of(kind, "kind", ("kl", "soft_ce"))

    def forward(self, student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
        zs = _logits(student_logits, "student_logits")
        zt = _logits(teacher_logits, "teacher_logits")
        if zt.shape != zs.shape:
            raise ValueError(
                f"teacher_logits must have the student's shape {zs.shape}, got {zt.shape}"
            )
        temp = self.temperature
        n = zs.shape[0]
        logps = _log_softmax(zs / temp)
        logpt = _log_softmax(zt.astype(zs.dtype, copy=False) / temp)
        pt = np.exp(logpt)
        per_row = -(pt * logps).sum(axis=1)
        if self.kind == "kl":
            per_row += (pt * logpt).sum(axis=1)
        self._grad = ((temp / n) * (np.exp(logps) - pt)).astype(zs.dtype, copy=False)
        return float(temp * temp * per_row.mean())

    def __repr__(self) -> str:
        return f"DistillationLoss(temperature={self.temperature}, kind={self.kind!r})"


def accuracy(logits: np.ndarray, target) -> float:
    """Fraction of rows whose argmax equals the integer target.

    Parameters
    ----------
    logits : ndarray, shape (N, C)
    target : int ndarray, shape (N,)

    Returns
    -------
    float in [0, 1]
    """
    z = _logits(logits)
    t = _labels(target, *z.shape)
    return float(np.mean(z.argmax(axis=1) == t))
