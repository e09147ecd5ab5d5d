"""Training speed of ternref against PyTorch CPU, per model, and of each ternary method against FP.

Measures, interleaved in rounds so that a change of machine load hits both sides (the machine is
shared): ternref ``--steps`` training steps, then PyTorch the same number of steps of the same
network, batch, optimizer (Adam 1e-3) and data, ``--rounds`` times; seconds per epoch are the
median seconds per step times the steps of one epoch. Models:

* ``lenet5``: LeNet-5 (32C5-MP2-64C5-MP2-512FC-10, BatchNorm) on Fashion-MNIST, batch 128
  (target: at most 1.2x PyTorch's seconds per epoch);
* ``mlp``: the 64-256-256-10 MLP on the embedded digits, batch 32 (its recipe; same target).

``--methods twn,lat,...`` (or ``all``) also times every listed weight-ternary method's step on
LeNet-5 interleaved with the full-precision step (target: at most 1.3x the FP epoch).
``--epochs E`` additionally trains LeNet-5 for E full epochs with ``ternref.train.fit`` and
reports the test accuracy (>= 92 % after 10 epochs), and the digits MLP is trained with its full
recipe for its accuracy (>= 97 %) unless ``--skip-accuracy``.

PyTorch is never a dependency of ternref: it runs in its own virtual environment, as a worker
process (``benchmarks/_torch_training_worker.py``) started with ``--torch-python`` (default: the
``TERNREF_TORCH_PYTHON`` variable, else ``/work/torchvenv/bin/python`` when it exists, else this
interpreter when it can import torch). Both sides use the same number of threads: ``--threads``,
default NumPy's BLAS thread count (PyTorch gets ``torch.set_num_threads`` of it).

Usage::

    python benchmarks/bench_training.py                          # 3 rounds of a full epoch
    python benchmarks/bench_training.py --steps 60 --rounds 5    # quick: 5 x 60 LeNet-5 steps
    python benchmarks/bench_training.py --steps 40 --methods all --models lenet5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# measure the checkout this script lives in, not whichever ternref the environment installed
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(REPO_ROOT, "ternref")) and sys.path[0] != REPO_ROOT:
    sys.path.insert(0, REPO_ROOT)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BATCH = {"lenet5": 128, "mlp": 32}
DATA = {"lenet5": "fashion-mnist", "mlp": "digits"}


def _blas_threads() -> int:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.cpu_count() or 1
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            return int(lib["num_threads"])
    return os.cpu_count() or 1


def _set_blas_threads(n: int):
    """Keep NumPy's BLAS at ``n`` threads for the process (threadpoolctl), when installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=n, user_api="blas")


def load(name: str):
    from ternref.data import load_digits, load_fashion_mnist

    return load_fashion_mnist() if DATA[name] == "fashion-mnist" else load_digits()


class TernrefTrainer:
    """The step of ``ternref.train.fit`` (forward, finiteness check, loss, backward, optimizer,
    callbacks, accuracy count) over an endless shuffled stream of batches."""

    def __init__(self, name: str, data, method: str | None = None):
        from ternref import methods
        from ternref.cli import _seeded_generators
        from ternref.data import batches
        from ternref.nn.losses import CrossEntropyLoss
        from ternref.recipes import build_model, build_optimizer

        init_rng, shuffle_rng = _seeded_generators(0, 2)
        self.model = build_model(name, data.image_shape, data.n_classes, init_rng)
        self.callbacks, self.loss = [], CrossEntropyLoss()
        if method is not None:
            extra = {}
            if methods.requires_teacher(method):
                extra["teacher"] = build_model(name, data.image_shape, data.n_classes, init_rng)
            m = methods.get(method, **extra)
            self.callbacks = methods.quantize_model(self.model, m)
            self.loss = m.loss() or self.loss
        self.opt = build_optimizer("adam", self.model.parameters(), 1e-3)
        steps_per_epoch = -(-len(data.x_train) // BATCH[name])
        for cb in self.callbacks:
            cb.on_fit_begin(1, steps_per_epoch)
        for cb in self.callbacks:
            cb.on_train_begin(self.model, self.opt)
        self.model.train()

        def stream():
            while True:
                yield from batches(data.x_train, data.y_train, BATCH[name], rng=shuffle_rng)

        self._batches = stream()
        self.correct = 0
        self.run(3)  # warm-up: JIT compilation, first allocations

    def run(self, steps: int) -> float:
        model, opt, loss, cbs = self.model, self.opt, self.loss, self.callbacks
        start = time.perf_counter()
        for _ in range(steps):
            xb, yb = next(self._batches)
            for cb in cbs:
                cb.on_batch_begin(xb, yb)
            opt.zero_grad()
            with np.errstate(over="ignore", invalid="ignore"):
                logits = model.forward(xb)
            if not np.all(np.isfinite(logits)):
                raise FloatingPointError("training diverged")
            loss.forward(logits, yb)
            model.backward_params(loss.backward())
            for cb in cbs:
                cb.after_backward(model, opt)
            opt.step()
            for cb in cbs:
                cb.on_step_end(model, opt)
            self.correct += int(np.count_nonzero(np.argmax(logits, axis=1) == yb))
        return time.perf_counter() - start


class TorchWorker:
    """The PyTorch worker process (see ``_torch_training_worker.py``)."""

    def __init__(self, python: str):
        env = dict(os.environ)
        self.proc = subprocess.Popen(
            [python, os.path.join(HERE, "_torch_training_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the PyTorch worker exited (see its error output above)")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"PyTorch worker: {reply['error']}")
        return reply

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        self.proc.wait(timeout=60)


def find_torch_python(arg: str | None) -> str | None:
    if arg:
        return arg
    env = os.environ.get("TERNREF_TORCH_PYTHON")
    if env:
        return env
    if os.path.exists("/work/torchvenv/bin/python"):
        return "/work/torchvenv/bin/python"
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def bench_model(name: str, worker, threads: int, steps: int | None, rounds: int) -> dict:
    data = load(name)
    per_epoch = -(-len(data.x_train) // BATCH[name])
    steps = per_epoch if steps is None else steps
    ours = TernrefTrainer(name, data)
    theirs_info = None
    if worker is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "train.npz")
            np.savez(path, x=data.x_train, y=data.y_train)
            theirs_info = worker.ask(
                cmd="setup", model=name, data=path, batch=BATCH[name], threads=threads,
                in_features=int(np.prod(data.image_shape)),
            )  # fmt: skip
    t_ours, t_theirs = [], []
    for _ in range(rounds):
        t_ours.append(ours.run(steps) / steps)
        if worker is not None:
            t_theirs.append(worker.ask(cmd="run", steps=steps)["seconds"] / steps)
    out = {
        "model": name,
        "steps_per_epoch": per_epoch,
        "timed_steps": steps,
        "rounds": rounds,
        "ternref_epoch": float(np.median(t_ours)) * per_epoch,
        "ternref_rounds": [t * per_epoch for t in t_ours],
    }
    if worker is not None:
        out["torch_epoch"] = float(np.median(t_theirs)) * per_epoch
        out["torch_rounds"] = [t * per_epoch for t in t_theirs]
        out["torch"] = theirs_info
        out["ratio"] = out["ternref_epoch"] / out["torch_epoch"]
    return out


def bench_methods(methods: list[str], steps: int, rounds: int) -> list[dict]:
    data = load("lenet5")
    per_epoch = -(-len(data.x_train) // BATCH["lenet5"])
    trainers = {"fp": TernrefTrainer("lenet5", data)}
    for m in methods:
        trainers[m] = TernrefTrainer("lenet5", data, method=m)
    times = {k: [] for k in trainers}
    # one step each in turn (fp, m1, m2, ..., fp, m1, ...), median of the per-step times: the
    # load of a shared machine changes within seconds, which coarser rounds turned into 2x noise
    for _ in range(rounds * steps):
        for k, tr in trainers.items():
            times[k].append(tr.run(1))
    fp = float(np.median(times["fp"]))
    return [
        {"method": k, "epoch": float(np.median(v)) * per_epoch, "vs_fp": float(np.median(v)) / fp}
        for k, v in times.items()
    ]


def accuracy_runs(epochs: int, skip_digits: bool) -> None:
    from ternref.cli import _seeded_generators
    from ternref.recipes import build_model, build_optimizer, build_schedule, recipe
    from ternref.train import fit

    runs = [] if skip_digits else [("mlp", None)]
    if epochs:
        runs.append(("lenet5", epochs))
    for name, n_epochs in runs:
        data = load(name)
        r = recipe(name, DATA[name])
        n_epochs = n_epochs or r.epochs
        init_rng, shuffle_rng = _seeded_generators(0, 2)
        model = build_model(name, data.image_shape, data.n_classes, init_rng)
        opt = build_optimizer(r.optimizer, model.parameters(), r.lr)
        sched = build_schedule(r.schedule, opt, n_epochs)
        start = time.perf_counter()
        hist = fit(model, data, opt, epochs=n_epochs, batch_size=r.batch_size, schedule=sched,
                   rng=shuffle_rng, progress=False)  # fmt: skip
        target = ">= 97% (digits)" if name == "mlp" else ">= 92% after 10 epochs"
        print(
            f"accuracy: {name} on {DATA[name]}, {n_epochs} epochs ({r.batch_size}/batch, "
            f"{r.optimizer}, {r.schedule}): test {100 * hist.last['test_acc']:.2f}% "
            f"(target {target}) in {time.perf_counter() - start:.1f} s, median "
            f"{np.median(hist['seconds']):.2f} s/epoch"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet5,mlp", help="comma list of lenet5, mlp")
    parser.add_argument("--steps", type=int, default=None,
                        help="lenet5 steps per round (default: one full epoch)")  # fmt: skip
    parser.add_argument("--mlp-steps", type=int, default=225,
                        help="mlp steps per round (default: 5 epochs)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--threads", type=int, default=None,
                        help="ternref BLAS and torch threads (default: BLAS's)")  # fmt: skip
    parser.add_argument("--torch-python", default=None, help="Python of a PyTorch environment")
    parser.add_argument("--methods", default="", help="weight-ternary methods to time, or 'all'")
    parser.add_argument("--method-steps", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=0, help="LeNet-5 epochs for accuracy")
    parser.add_argument("--skip-accuracy", action="store_true", help="no digits accuracy run")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)

    from ternref._machine import summary

    threads = args.threads or _blas_threads()
    limiter = _set_blas_threads(threads)  # noqa: F841 (kept alive for the run)
    import ternref

    print(summary())
    print(f"ternref from {os.path.dirname(ternref.__file__)}")
    python = find_torch_python(args.torch_python)
    worker = None
    if python is None:
        print("pytorch: no environment found (--torch-python); ternref timings only")
    else:
        worker = TorchWorker(python)
    results = {"machine": summary(), "threads": threads, "models": [], "methods": []}
    try:
        for name in [m for m in args.models.split(",") if m]:
            steps = args.mlp_steps if name == "mlp" else args.steps
            r = bench_model(name, worker, threads, steps, args.rounds)
            results["models"].append(r)
            line = (
                f"{name} ({DATA[name]}, batch {BATCH[name]}, Adam, {threads} threads, "
                f"{r['rounds']} rounds x {r['timed_steps']} steps of {r['steps_per_epoch']}): "
                f"ternref {r['ternref_epoch']:.2f} s/epoch"
            )
            if "ratio" in r:
                line += (
                    f", pytorch {r['torch']['version']} ({r['torch']['threads']} threads) "
                    f"{r['torch_epoch']:.2f} s/epoch, ratio {r['ratio']:.2f}x (target <= 1.2x)"
                )
            print(line, flush=True)
    finally:
        if worker is not None:
            worker.close()
    if args.methods:
        from ternref import methods as registry

        names = (
            [n for n in registry.names() if registry.info(n).ternary == "W"]
            if args.methods == "all"
            else args.methods.split(",")
        )
        rows = bench_methods(names, args.method_steps, args.rounds)
        results["methods"] = rows
        print(f"weight-ternary methods on lenet5, {args.rounds * args.method_steps} steps each, "
              f"one step per method in turn with FP, median (target <= 1.3x FP):")  # fmt: skip
        for row in rows:
            print(f"  {row['method']:<10} {row['epoch']:7.2f} s/epoch  {row['vs_fp']:.2f}x FP")
    if not args.skip_accuracy or args.epochs:
        accuracy_runs(args.epochs, args.skip_accuracy)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
