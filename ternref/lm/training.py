"""Training and evaluating a byte-level TransformerLM on a TextCorpus.

One step is the data path of DESIGN.md, with token batches instead of images::

    (ids, targets) = corpus.sample_batch(B, T, rng)       random windows of the training split
    logits = model(ids) -> LMCrossEntropyLoss -> model.backward
          -> callbacks.after_backward -> clip the global gradient norm -> schedule.apply(step)
          -> AdamW step -> callbacks.on_step_end (a method's after-step work: TTQ's clamp, ...)

:func:`train_lm` never special-cases a method: a method acts through its callbacks, exactly as
in :func:`ternref.train.fit`. The callbacks' ``on_epoch_end`` is called at every evaluation
(there are no epochs in LM training), so ``TernaryStats`` reports sparsity and flip ratios there.

Gradient clipping: the global gradient norm is clipped to 1.0 by default, as in LLaMA's recipe
(Touvron et al. 2023); the BitNet FAQ does not mention clipping. ``clip=None`` disables it.

Evaluation: :func:`evaluate_bpb` predicts every held-out byte once
(``TextCorpus.heldout_batches``, non-overlapping windows), so bits per byte is the mean
cross-entropy over the held-out split divided by ln 2.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ternref import _validate
from ternref.data.text import TextCorpus, bits_per_byte
from ternref.lm.schedule import TwoStageSchedule, clip_grad_norm
from ternref.nn.losses import LMCrossEntropyLoss


def evaluate_bpb(model, corpus: TextCorpus, context: int | None = None, batch_size: int = 32,
                 max_bytes: int | None = None) -> dict:  # fmt: skip
    """Bits per byte of ``model`` on the held-out split, in evaluation mode.

    Parameters
    ----------
    model : TransformerLM
    corpus : TextCorpus
    context : int, optional
        Window length; default ``model.max_seq_len``.
    batch_size : int, default 32
    max_bytes : int, optional
        Score only the first ``max_bytes`` held-out bytes (a quick estimate during training);
        ``None`` scores all of them.

    Returns
    -------
    dict
        ``{"bits_per_byte", "loss" (nats per byte), "bytes" (scored), "seconds"}``.
    """
    context = model.max_seq_len if context is None else _validate.integer(context, "context", low=1)
    if context > model.max_seq_len:
        raise ValueError(f"context={context} exceeds the model's max_seq_len={model.max_seq_len}")
    batch_size = _validate.integer(batch_size, "batch_size", low=1)
    if max_bytes is not None:
        max_bytes = _validate.integer(max_bytes, "max_bytes", low=1)
    loss = LMCrossEntropyLoss()
    was_training = model.training
    model.eval()
    total_nats, scored = 0.0, 0
    start = time.perf_counter()
    tokens = corpus.tokens[corpus.split - 1 :]
    if max_bytes is not None:
        tokens = tokens[: max_bytes + 1]
    try:
        from ternref.data.text import sequential_batches

        for ids, targets in sequential_batches(tokens, batch_size, context):
            total_nats += loss.forward(model(ids), targets) * targets.size
            scored += targets.size
    finally:
        model.train(was_training)
    mean = total_nats / scored
    return {"bits_per_byte": bits_per_byte(mean), "loss": mean, "bytes": scored,
            "seconds": time.perf_counter() - start}  # fmt: skip


@dataclass
class LMHistory:
    """What :func:`train_lm` recorded: one dict per logged step and one per evaluation."""

    steps: list = field(default_factory=list)  # {"step", "loss", "lr", "wd", "grad_norm", ...}
    evals: list = field(default_factory=list)  # {"step", "bits_per_byte", "bytes", ...}
    tokens_per_second: float = 0.0
    seconds: float = 0.0


def train_lm(
    model,
    corpus: TextCorpus,
    optimizer,
    schedule: TwoStageSchedule,
    *,
    steps: int,
    batch_size: int,
    context: int,
    rng: np.random.Generator,
    callbacks=(),
    clip: float | None = 1.0,
    eval_every: int = 0,
    eval_bytes: int | None = 8192,
    eval_batch_size: int = 32,
    log_every: int = 10,
    progress: bool = True,
    log_file=None,
    start_step: int = 0,
    on_eval=None,
) -> LMHistory:
    """Train ``model`` for ``steps`` optimizer steps on random windows of the training split.

    Parameters
    ----------
    model : TransformerLM
        Float or quantized (``ternref.methods.quantize_transformer``).
    corpus : TextCorpus
    optimizer : ternref.optim.Adam
        Usually :func:`ternref.lm.adamw`.
    schedule : TwoStageSchedule
        Sets the learning rate and weight decay before every step.
    steps, batch_size, context : int
        ``steps`` counts the steps of the whole run (``schedule.total_steps``); training runs
        steps ``start_step .. steps - 1`` (``start_step > 0`` resumes a checkpoint).
    rng : numpy.random.Generator
        Draws the batches.
    callbacks : sequence of ternref.train.Callback
        From ``quantize_transformer`` (method hooks and ``TernaryStats``).
    clip : float or None, default 1.0
        Global gradient-norm clipping (LLaMA's 1.0); ``None`` disables it.
    eval_every : int, default 0
        Evaluate bits per byte on the first ``eval_bytes`` held-out bytes every so many steps
        (0: only after the last step). The evaluation after the last step is always on
        ``eval_bytes`` too; call :func:`evaluate_bpb` for the whole split.
    log_every : int, default 10
        Record (and print, on a log) the running mean loss every so many steps.
    progress : bool
        A live bar on a terminal, a few plain lines in a log (``ternref._progress``).
    log_file : file object, optional
        Receives one JSON line per logged step and per evaluation (partial results survive an
        interrupted run).
    on_eval : callable, optional
        ``on_eval(step, record)`` after each evaluation (the CLI saves checkpoints there).

    Returns
    -------
    LMHistory

    Raises
    ------
    FloatingPointError
        Non-finite logits or gradient norm (the message suggests a lower learning rate).
    """
    from ternref._progress import progress_bar, progress_line

    steps = _validate.integer(steps, "steps", low=1)
    batch_size = _validate.integer(batch_size, "batch_size", low=1)
    context = _validate.integer(context, "context", low=1, high=model.max_seq_len)
    start_step = _validate.integer(start_step, "start_step", low=0, high=steps)
    eval_every = _validate.integer(eval_every, "eval_every", low=0)
    log_every = _validate.integer(log_every, "log_every", low=1)
    rng = _validate.generator(rng)
    if schedule.total_steps != steps:
        raise ValueError(f"schedule.total_steps={schedule.total_steps} differs from steps={steps}")
    callbacks = list(callbacks)
    loss = LMCrossEntropyLoss()
    params = optimizer.parameters()
    history = LMHistory()

    def emit(record):
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    def evaluate(step):
        result = evaluate_bpb(model, corpus, context, eval_batch_size, eval_bytes)
        record = {"kind": "eval", "step": step, **result}
        for cb in callbacks:
            cb.on_epoch_end(model, step, record)
        history.evals.append(record)
        emit({k: v for k, v in record.items() if k != "layers"})
        progress_line(f"step {step:>6}/{steps}  held-out {result['bits_per_byte']:.4f} bits/byte "
                      f"({result['bytes']} bytes)", enabled=progress)  # fmt: skip
        if on_eval is not None:
            on_eval(step, record)

    for cb in callbacks:
        cb.on_fit_begin(1, steps)  # the run's length (INQ spreads its stages over it)
    for cb in callbacks:
        cb.on_train_begin(model, optimizer)
    model.train()
    bar = progress_bar(range(start_step, steps), enabled=progress, total=steps - start_step,
                       desc="training", unit="step")  # fmt: skip
    running, counted = 0.0, 0
    start = time.perf_counter()
    for step in bar:
        ids, targets = corpus.sample_batch(batch_size, context, rng)
        for cb in callbacks:
            cb.on_batch_begin(ids, targets)
        optimizer.zero_grad()
        with np.errstate(over="ignore", invalid="ignore"):
            logits = model(ids)
        if not np.all(np.isfinite(logits)):
            raise FloatingPointError(
                f"training diverged: non-finite logits at step {step} (lr={schedule.lr(step):g});"
                " lower the learning rate"
            )
        value = loss.forward(logits, targets)
        model.backward(loss.backward())
        for cb in callbacks:
            cb.after_backward(model, optimizer)
        grad_norm = clip_grad_norm(params, clip) if clip is not None else float("nan")
        if clip is not None and not math.isfinite(grad_norm):
            raise FloatingPointError(
                f"training diverged: non-finite gradient at step {step}; lower the learning rate"
            )
        schedule.apply(step)
        optimizer.step()
        for cb in callbacks:
            cb.on_step_end(model, optimizer)
        running += value
        counted += 1
        if not bar.disable:
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{schedule.lr(step):.2e}", refresh=False)
        done = step + 1
        if done % log_every == 0 or done == steps:
            elapsed = time.perf_counter() - start
            record = {
                "kind": "train",
                "step": done,
                "loss": running / counted,
                "lr": schedule.lr(step),
                "weight_decay": schedule.decay(step),
                "grad_norm": grad_norm,
                "seconds": elapsed,
                "tokens_per_second": (done - start_step) * batch_size * context / elapsed,
            }
            history.steps.append(record)
            emit(record)
            if bar.disable and (done % (log_every * 10) == 0 or done == steps):
                progress_line(
                    f"step {done:>6}/{steps}  loss {record['loss']:.4f}  "
                    f"{record['tokens_per_second']:.0f} tokens/s",
                    enabled=progress,
                )
            running, counted = 0.0, 0
        if (eval_every and done % eval_every == 0) or done == steps:
            paused = time.perf_counter()
            evaluate(done)
            start += time.perf_counter() - paused  # evaluation time is not training time
    history.seconds = time.perf_counter() - start
    history.tokens_per_second = (
        (steps - start_step) * batch_size * context / max(history.seconds, 1e-9)
    )
    return history
