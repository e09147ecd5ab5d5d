"""Training and evaluation loops.

One training step is the data path of DESIGN.md::

    batch -> model.forward -> loss.forward / loss.backward -> model.backward
          -> optimizer.step() -> callbacks (a quantization method's after-step work)

The loop never special-cases a method: a method that needs to act during training (a prox step,
an ADMM dual update, clipping, INQ's masks, per-epoch sparsity and flip-ratio reports) does so
through a :class:`Callback`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ternref import _validate
from ternref.data import batches
from ternref.nn.module import Module


class Callback:
    """Hooks called by :func:`fit`. Override the ones you need; all default to doing nothing."""

    def on_fit_begin(self, epochs: int, steps_per_epoch: int) -> None:
        """Before :meth:`on_train_begin`: the length of the run (e.g. INQ spreads its stages)."""

    def on_train_begin(self, model: Module, optimizer) -> None:
        """Before the first epoch."""

    def on_batch_begin(self, xb: np.ndarray, yb: np.ndarray) -> None:
        """Before the forward pass of each training batch (e.g. a teacher computing its logits)."""

    def after_backward(self, model: Module, optimizer) -> None:
        """After the backward pass, before the optimizer step (e.g. masking frozen gradients)."""

    def on_step_end(self, model: Module, optimizer) -> None:
        """After each optimizer step (e.g. a proximal step, clipping, a dual update)."""

    def on_epoch_end(self, model: Module, epoch: int, record: dict) -> None:
        """After each epoch's evaluation; may add entries to ``record``."""


@dataclass
class History:
    """Per-epoch records of a :func:`fit` run.

    Each record holds ``epoch`` (1-based), ``lr``, ``loss`` (mean training loss), ``train_acc``
    (accuracy on the training batches as they were trained, in training mode), ``test_loss``,
    ``test_acc`` (evaluation mode, after the epoch), ``seconds`` (training time of the epoch,
    evaluation excluded), plus anything a callback added.
    """

    records: list = field(default_factory=list)

    def __getitem__(self, key: str) -> list:
        return [r.get(key) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict:
        return self.records[-1]


def evaluate(model: Module, x: np.ndarray, y: np.ndarray, loss=None, batch_size: int = 1000):
    """Loss and accuracy of ``model`` on ``(x, y)`` in evaluation mode.

    Returns
    -------
    dict
        ``{"accuracy": float, "loss": float or None}``; the model's train/eval mode is restored.
    """
    _validate.integer(batch_size, "batch_size", low=1)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    was_training = model.training
    model.eval()
    correct = 0
    total_loss = 0.0
    try:
        for xb, yb in batches(x, y, batch_size, shuffle=False):
            logits = model.forward(xb)
            correct += int(np.count_nonzero(np.argmax(logits, axis=1) == yb))
            if loss is not None:
                total_loss += loss.forward(logits, yb) * len(yb)
    finally:
        model.train(was_training)
    return {
        "accuracy": correct / len(y),
        "loss": total_loss / len(y) if loss is not None else None,
    }


def fit(
    model: Module,
    dataset,
    optimizer,
    *,
    loss=None,
    epochs: int = 10,
    batch_size: int = 128,
    schedule=None,
    rng: np.random.Generator | None = None,
    callbacks=(),
    progress: bool = True,
    eval_batch_size: int = 1000,
) -> History:
    """Train ``model`` on ``dataset`` and evaluate it after every epoch.

    Parameters
    ----------
    model : Module
        Network taking ``dataset.x_train`` batches, returning logits ``(N, n_classes)``.
    dataset : ternref.data.Dataset
        Needs ``x_train, y_train, x_test, y_test``.
    optimizer : ternref.optim.Optimizer
        Updates ``model``'s parameters (and any others it was given).
    loss : loss object, optional
        ``forward(logits, y) -> float`` and ``backward() -> dlogits``; defaults to
        :class:`ternref.nn.CrossEntropyLoss`.
    epochs, batch_size : int
    schedule : ternref.optim.Schedule, optional
        Stepped once at the end of every epoch.
    rng : numpy.random.Generator, optional
        Shuffles the training set; ``None`` means ``np.random.default_rng(0)`` so that runs are
        reproducible unless asked otherwise.
    callbacks : sequence of Callback
    progress : bool
        Show a live progress bar per epoch on a terminal, and one line per epoch (on a terminal
        or a log); ``False`` prints nothing (see :mod:`ternref._progress`).

    Returns
    -------
    History
    """
    from ternref._progress import progress_bar, progress_line
    from ternref.nn.losses import CrossEntropyLoss

    epochs = _validate.integer(epochs, "epochs", low=1)
    batch_size = _validate.integer(batch_size, "batch_size", low=1)
    rng = np.random.default_rng(0) if rng is None else _validate.generator(rng)
    loss = CrossEntropyLoss() if loss is None else loss
    callbacks = list(callbacks)
    history = History()

    n_batches = -(-len(dataset.x_train) // batch_size)
    for cb in callbacks:
        cb.on_fit_begin(epochs, n_batches)
    for cb in callbacks:
        cb.on_train_begin(model, optimizer)
    for epoch in range(1, epochs + 1):
        model.train()
        lr = optimizer.lr
        seen = correct = 0
        loss_sum = 0.0
        start = time.perf_counter()
        bar = progress_bar(
            batches(dataset.x_train, dataset.y_train, batch_size, rng=rng),
            enabled=progress,
            total=n_batches,
            desc=f"epoch {epoch}/{epochs}",
            leave=False,
            unit="batch",
        )
        for xb, yb in bar:
            for cb in callbacks:
                cb.on_batch_begin(xb, yb)
            optimizer.zero_grad()
            with np.errstate(over="ignore", invalid="ignore"):
                logits = model.forward(xb)
            if not np.all(np.isfinite(logits)):
                raise FloatingPointError(
                    f"training diverged: non-finite logits at epoch {epoch} (lr={lr:g}); "
                    f"lower the learning rate"
                )
            batch_loss = loss.forward(logits, yb)
            model.backward_params(loss.backward())  # the input images' gradient is not needed
            for cb in callbacks:
                cb.after_backward(model, optimizer)
            optimizer.step()
            for cb in callbacks:
                cb.on_step_end(model, optimizer)
            seen += len(yb)
            loss_sum += batch_loss * len(yb)
            correct += int(np.count_nonzero(np.argmax(logits, axis=1) == yb))
            if not bar.disable:
                bar.set_postfix(
                    loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False
                )
        seconds = time.perf_counter() - start
        test = evaluate(model, dataset.x_test, dataset.y_test, loss, eval_batch_size)
        record = {
            "epoch": epoch,
            "lr": lr,
            "loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_loss": test["loss"],
            "test_acc": test["accuracy"],
            "seconds": seconds,
        }
        for cb in callbacks:
            cb.on_epoch_end(model, epoch, record)
        history.records.append(record)
        progress_line(
            f"epoch {epoch:>3}/{epochs}  loss {record['loss']:.4f}  "
            f"train {record['train_acc']:.4f}  test {record['test_acc']:.4f}  "
            f"({seconds:.1f} s)",
            enabled=progress,
        )
        if schedule is not None:
            schedule.step()
    return history
