"""The ``ternref`` command.

Errors a user can cause (an unknown name, missing data, a bad value) are printed as one line
starting with ``ternref: error:`` and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import ternref

EXIT_USAGE = 2


class UserError(Exception):
    """An error caused by the command line or the environment, shown as one line."""


def _seeded_generators(seed: int, n: int) -> list[np.random.Generator]:
    """Independent generators for model init, shuffling, ... derived from one seed."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


# ------------------------------------------------------------------------------------ train
def _add_train(sub):
    from ternref.data import DATASETS
    from ternref.optim import OPTIMIZERS, SCHEDULES
    from ternref.recipes import MODELS

    p = sub.add_parser(
        "train",
        help="train a model on a dataset and print its test accuracy",
        description="Train a full-precision model (defaults: mlp on the embedded digits).",
    )
    p.add_argument("--model", choices=MODELS, default="mlp")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=None)
    p.add_argument("--schedule", choices=SCHEDULES, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="folder with the (Fashion-)MNIST IDX files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from ternref.data import load_dataset
    from ternref.recipes import build_model, build_optimizer, build_schedule, recipe
    from ternref.train import fit

    dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    r = recipe(args.model, args.dataset)
    epochs = r.epochs if args.epochs is None else args.epochs
    batch_size = r.batch_size if args.batch_size is None else args.batch_size
    lr = r.lr if args.lr is None else args.lr
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise UserError(
            f"--epochs and --batch-size must be >= 1 and --lr > 0, got {epochs}, {batch_size}, {lr}"
        )
    init_rng, shuffle_rng = _seeded_generators(args.seed, 2)
    model = build_model(args.model, dataset.image_shape, dataset.n_classes, init_rng)
    optimizer = build_optimizer(args.optimizer or r.optimizer, model.parameters(), lr)
    schedule = build_schedule(args.schedule or r.schedule, optimizer, epochs)
    if not args.quiet:
        print(
            f"training {args.model} on {dataset.name} ({len(dataset.x_train)} train / "
            f"{len(dataset.x_test)} test) for {epochs} epochs, batch {batch_size}, "
            f"{args.optimizer or r.optimizer} lr {lr:g}, {args.schedule or r.schedule} schedule, "
            f"seed {args.seed}"
        )
    history = fit(
        model,
        dataset,
        optimizer,
        epochs=epochs,
        batch_size=batch_size,
        schedule=schedule,
        rng=shuffle_rng,
        progress=not args.quiet,
    )
    last = history.last
    result = {
        "model": args.model,
        "dataset": dataset.name,
        "epochs": epochs,
        "seed": args.seed,
        "test_accuracy": last["test_acc"],
        "train_accuracy": last["train_acc"],
        "seconds_per_epoch": float(np.mean(history["seconds"])),
        "seconds_total": float(np.sum(history["seconds"])),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"test accuracy {100 * last['test_acc']:.2f}%  (train {100 * last['train_acc']:.2f}%, "
            f"{result['seconds_per_epoch']:.2f} s/epoch, {result['seconds_total']:.1f} s total)"
        )
    return 0


# ------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ternref",
        description="The executable reference for ternary quantization of neural networks.",
    )
    parser.add_argument("--version", action="version", version=f"ternref {ternref.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.run(args)
    except (UserError, ValueError, TypeError, KeyError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"ternref: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except FloatingPointError as exc:
        print(f"ternref: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ternref: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
