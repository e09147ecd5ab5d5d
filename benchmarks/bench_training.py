"""Training speed and accuracy of the full-precision stack (issue: foundation).

Measures, in one process:

1. ``mlp`` on the embedded digits with the default recipe: test accuracy and wall time
   (target: >= 97 % in under 30 s);
2. ``lenet5`` on Fashion-MNIST, batch 128, Adam 1e-3, cosine schedule: seconds per epoch and test
   accuracy after ``--epochs`` epochs (target: >= 92 % after 10 epochs);
3. when PyTorch is importable in the running environment, the same LeNet-5 (same layers, batch,
   optimizer) timed for ``--torch-epochs`` epochs on the same data, and the ratio
   ternref / PyTorch of the seconds per epoch (target: at most 2x).

PyTorch is never a dependency of ternref; install it in a separate virtual environment to get the
comparison (``pip install torch==2.13.0``, then ``pip install -e .`` there).

Usage::

    python benchmarks/bench_training.py                 # digits + 10 LeNet-5 epochs + PyTorch
    python benchmarks/bench_training.py --epochs 1      # quick: one LeNet-5 epoch
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def machine() -> str:
    from ternref.compare import machine_description

    return f"{machine_description()}, numpy {np.__version__}"


def bench_digits_mlp() -> dict:
    from ternref.cli import _seeded_generators
    from ternref.data import load_digits
    from ternref.recipes import build_model, build_optimizer, build_schedule, recipe
    from ternref.train import fit

    data = load_digits()
    r = recipe("mlp", "digits")
    init_rng, shuffle_rng = _seeded_generators(0, 2)
    model = build_model("mlp", data.image_shape, data.n_classes, init_rng)
    opt = build_optimizer(r.optimizer, model.parameters(), r.lr)
    sched = build_schedule(r.schedule, opt, r.epochs)
    start = time.perf_counter()
    hist = fit(
        model,
        data,
        opt,
        epochs=r.epochs,
        batch_size=r.batch_size,
        schedule=sched,
        rng=shuffle_rng,
        progress=False,
    )
    return {"accuracy": hist.last["test_acc"], "seconds": time.perf_counter() - start}


def bench_lenet5(data, epochs: int) -> dict:
    from ternref.cli import _seeded_generators
    from ternref.recipes import build_model, build_optimizer, build_schedule
    from ternref.train import fit

    init_rng, shuffle_rng = _seeded_generators(0, 2)
    model = build_model("lenet5", data.image_shape, data.n_classes, init_rng)
    opt = build_optimizer("adam", model.parameters(), 1e-3)
    sched = build_schedule("cosine", opt, epochs)
    hist = fit(
        model,
        data,
        opt,
        epochs=epochs,
        batch_size=128,
        schedule=sched,
        rng=shuffle_rng,
        progress=True,
    )
    return {"accuracy": hist.last["test_acc"], "epoch_seconds": list(hist["seconds"])}


def bench_torch_lenet5(data, epochs: int) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(1600, 512),
        nn.BatchNorm1d(512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    loss_fn = nn.CrossEntropyLoss()
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        start = time.perf_counter()
        for i in range(0, len(x), 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - start)
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(data.x_test)).argmax(1).numpy()
    return {
        "accuracy": float(np.mean(pred == data.y_test)),
        "epoch_seconds": seconds,
        "threads": torch.get_num_threads(),
        "version": torch.__version__,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="LeNet-5 epochs for ternref")
    parser.add_argument("--torch-epochs", type=int, default=2, help="LeNet-5 epochs for PyTorch")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    from ternref.data import load_fashion_mnist

    print(f"machine: {machine()}")
    if not args.skip_digits:
        d = bench_digits_mlp()
        print(
            f"mlp on digits: test accuracy {100 * d['accuracy']:.2f}% in {d['seconds']:.1f} s "
            f"(target >= 97% in < 30 s)"
        )
    data = load_fashion_mnist(args.data_dir)
    ours = bench_lenet5(data, args.epochs)
    ours_epoch = float(np.median(ours["epoch_seconds"]))
    print(
        f"ternref lenet5 on fashion-mnist: {args.epochs} epochs, median {ours_epoch:.1f} s/epoch, "
        f"test accuracy {100 * ours['accuracy']:.2f}% (target >= 92% after 10 epochs)"
    )
    theirs = bench_torch_lenet5(data, args.torch_epochs)
    if theirs is None:
        print("pytorch: not importable here; install torch in this environment for the ratio")
        return 0
    torch_epoch = float(np.median(theirs["epoch_seconds"]))
    print(
        f"pytorch {theirs['version']} ({theirs['threads']} threads) lenet5: median "
        f"{torch_epoch:.1f} s/epoch over {args.torch_epochs} epoch(s), test accuracy "
        f"{100 * theirs['accuracy']:.2f}%"
    )
    print(
        f"ratio ternref/pytorch seconds per epoch: {ours_epoch / torch_epoch:.2f}x (target <= 2x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
