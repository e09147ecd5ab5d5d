"""Where one training step's time goes: per layer and per phase, for LeNet-5 on Fashion-MNIST.

Wraps (for the run only, by monkeypatching) every layer's ``forward``/``backward`` and the helper
functions a step calls (im2col, col2im, the BatchNorm and MaxPool kernels, the optimizer step,
the loss, the batching, the callbacks' step hooks), trains ``--steps`` steps of batch 128 with
Adam as ``fit`` does, and prints a table of milliseconds per step, the share of the step, and,
per Conv2d/Linear, the remainder of the layer once the named helpers are subtracted (the GEMMs
and their re-layouts). A method that needs a teacher (``kd``) gets an untrained one of the same
model.

Usage::

    python benchmarks/profile_training.py --steps 200 [--method twn] [--model mlp]
    python benchmarks/profile_training.py --out benchmarks/results/training-profile/before.txt
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import time

import numpy as np

# measure the checkout this script lives in, not whichever ternref the environment installed
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(REPO_ROOT, "ternref")) and sys.path[0] != REPO_ROOT:
    sys.path.insert(0, REPO_ROOT)

TIMES: dict = collections.defaultdict(float)
CALLS: dict = collections.defaultdict(int)
_STACK: list = []


def _timed(label, fn):
    """``fn`` wrapped so that its inclusive time goes to ``label`` and is subtracted from the
    enclosing timed call's *self* time (the parent's ``label + ' (self)'`` entry)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _STACK.append(0.0)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            children = _STACK.pop()
            TIMES[label] += elapsed
            TIMES[label + " (self)"] += elapsed - children
            CALLS[label] += 1
            if _STACK:
                _STACK[-1] += elapsed

    return wrapper


def instrument(model, optimizer, loss, callbacks=()) -> None:
    from ternref.nn import _kernels, functional, layers
    from ternref.train import Callback

    # helpers, patched where the layers look them up
    for mod, name in [
        (layers, "im2col_t"),
        (layers, "col2im_t"),
        (_kernels, "maxpool2d_forward"),
        (_kernels, "maxpool2d_backward"),
        (_kernels, "batchnorm_train_forward"),
        (_kernels, "batchnorm_train_backward"),
    ]:
        setattr(mod, name, _timed(name, getattr(mod, name)))
    functional.col2im_t = layers.col2im_t
    for i, layer in enumerate(model.layers):
        tag = f"{i:02d} {type(layer).__name__}"
        layer.forward = _timed(f"{tag} forward", layer.forward)
        layer.backward = _timed(f"{tag} backward", layer.backward)
        if hasattr(layer, "backward_params"):
            layer.backward_params = _timed(f"{tag} backward", layer.backward_params)
        q = getattr(layer, "weight_quantizer", None)
        if q is not None:
            q.forward = _timed(f"{tag} quantizer forward", q.forward)
            q.backward = _timed(f"{tag} quantizer backward", q.backward)
    optimizer.step = _timed("optimizer.step", optimizer.step)
    optimizer.zero_grad = _timed("optimizer.zero_grad", optimizer.zero_grad)
    loss.forward = _timed("loss forward", loss.forward)
    loss.backward = _timed("loss backward", loss.backward)
    for cb in callbacks:
        for hook in ("on_batch_begin", "after_backward", "on_step_end"):
            if getattr(type(cb), hook) is not getattr(Callback, hook):  # overridden hooks only
                label = f"callback {type(cb).__name__}.{hook}"
                setattr(cb, hook, _timed(label, getattr(cb, hook)))


def run(model_name: str, steps: int, method: str | None, warmup: int) -> tuple[dict, float]:
    from ternref.cli import _seeded_generators
    from ternref.data import batches, load_digits, load_fashion_mnist
    from ternref.nn.losses import CrossEntropyLoss
    from ternref.recipes import build_model, build_optimizer

    data = load_fashion_mnist() if model_name == "lenet5" else load_digits()
    init_rng, shuffle_rng = _seeded_generators(0, 2)
    model = build_model(model_name, data.image_shape, data.n_classes, init_rng)
    callbacks, loss = [], CrossEntropyLoss()
    if method is not None:
        from ternref import methods

        extra = {}
        if methods.requires_teacher(method):  # an untrained teacher costs what a trained one does
            extra["teacher"] = build_model(model_name, data.image_shape, data.n_classes, init_rng)
        m = methods.get(method, **extra)
        callbacks = [
            cb
            for cb in methods.quantize_model(model, m)
            if not isinstance(cb, methods.TernaryStats)  # per-epoch only
        ]
        loss = m.loss() or loss
    opt = build_optimizer("adam", model.parameters(), 1e-3)
    for cb in callbacks:
        cb.on_fit_begin(1, 469)
        cb.on_train_begin(model, opt)

    def steps_iter():
        while True:
            yield from batches(data.x_train, data.y_train, 128, rng=shuffle_rng)

    it = steps_iter()

    def step(xb, yb):
        for cb in callbacks:
            cb.on_batch_begin(xb, yb)
        opt.zero_grad()
        logits = model.forward(xb)
        if not np.all(np.isfinite(logits)):
            raise FloatingPointError("diverged")
        loss.forward(logits, yb)
        model.backward_params(loss.backward())
        for cb in callbacks:
            cb.after_backward(model, opt)
        opt.step()
        for cb in callbacks:
            cb.on_step_end(model, opt)

    model.train()
    for _ in range(warmup):
        step(*next(it))
    instrument(model, opt, loss, callbacks)
    data_t = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        xb, yb = next(it)
        data_t += time.perf_counter() - t0
        step(xb, yb)
    total = time.perf_counter() - start
    TIMES["data (batches)"] = data_t
    TIMES["data (batches) (self)"] = data_t
    return dict(TIMES), total


def table(times: dict, total: float, steps: int) -> str:
    rows = []
    top = sorted(k for k in times if not k.endswith(" (self)"))
    for key in top:
        incl = times[key]
        own = times.get(key + " (self)", incl)
        rows.append((key, 1e3 * incl / steps, 1e3 * own / steps, 100 * own / total))
    lines = [f"{'phase':<40} {'ms/step':>9} {'self ms':>9} {'self %':>7}"]
    for key, incl, own, pct in rows:
        lines.append(f"{key:<40} {incl:9.2f} {own:9.2f} {pct:6.1f}%")
    self_sum = sum(times[k + " (self)"] for k in top if k + " (self)" in times)
    # every top-level entry's self time is disjoint, nested ones are counted in their own rows
    rest = total - self_sum
    lines.append(f"{'(not timed: loop, isfinite)':<40} {'':9} "
                 f"{1e3 * rest / steps:9.2f} {100 * rest / total:6.1f}%")  # fmt: skip
    lines.append(f"{'total':<40} {1e3 * total / steps:9.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lenet5", choices=["lenet5", "mlp"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--method", default=None, help="a weight-ternary method name (default: FP)")
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    from ternref._machine import summary

    times, total = run(args.model, args.steps, args.method, args.warmup)
    import ternref

    text = (
        f"{summary()}\nternref from {os.path.dirname(ternref.__file__)}\n"
        f"{args.model}, batch 128, Adam, method {args.method or 'fp'}, "
        f"{args.steps} steps ({args.warmup} warm-up steps untimed)\n\n"
        f"{table(times, total, args.steps)}"
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
