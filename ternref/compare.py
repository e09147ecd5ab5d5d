"""The executable survey: every method trained on the same data, network, budget and seeds.

The survey compares methods with numbers copied from papers that used different networks, data
and budgets. :func:`compare` trains the full-precision baseline and every registered method (or
the ones asked for) under one recipe and measures, for each:

* test accuracy (mean and standard deviation over seeds) and the gap to full precision;
* the sparsity of the ternary layers;
* the packed model: its size on disk, bits per weight, inference time on the test set, and
  whether its predictions equal the trained model's (float activations);
* training time per epoch.

A method that raises or diverges gets a row saying what happened, and the run goes on; an
interrupt (Ctrl-C) stops the run with the rows finished so far written.

Where each method starts (``start``): ``"scratch"`` (default) builds every model from the same
seeded initialisation, so all rows have the same budget. ``"fp"`` starts every method from the
trained full-precision baseline of the same seed (its weights and BatchNorm statistics) and
trains it for ``epochs`` more: the recipe of the papers that fine-tune a pretrained network (TTQ
and ProxQuant on CIFAR, INQ, ADMM, EC2T). The table then states that the methods had the
baseline's epochs on top of their own.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from ternref import _validate

FULL_PRECISION = "fp"
STARTS = ("scratch", "fp")


@dataclass
class Row:
    """One line of the comparison table (one method, aggregated over seeds)."""

    method: str
    paper: str
    year: int | None
    ternary: str
    accuracies: list = field(default_factory=list)
    sparsities: list = field(default_factory=list)
    epoch_seconds: list = field(default_factory=list)
    packed_bytes: int | None = None
    float_bytes: int | None = None
    bits_per_weight: float | None = None
    packed_seconds: float | None = None
    packed_agreement: float | None = None
    status: str = "ok"
    error: str | None = None

    @property
    def accuracy_mean(self) -> float | None:
        return float(np.mean(self.accuracies)) if self.accuracies else None

    @property
    def accuracy_std(self) -> float | None:
        return float(np.std(self.accuracies)) if self.accuracies else None

    def as_dict(self, fp_accuracy: float | None) -> dict:
        mean = self.accuracy_mean
        return {
            "method": self.method,
            "paper": self.paper,
            "year": self.year,
            "ternary": self.ternary,
            "status": self.status,
            "error": self.error,
            "accuracy_mean": mean,
            "accuracy_std": self.accuracy_std,
            "accuracies": list(self.accuracies),
            "gap_to_fp": (mean - fp_accuracy) if mean is not None and fp_accuracy else None,
            "sparsity": float(np.mean(self.sparsities)) if self.sparsities else None,
            "packed_bytes": self.packed_bytes,
            "float_bytes": self.float_bytes,
            "bits_per_weight": self.bits_per_weight,
            "train_seconds_per_epoch": (
                float(np.mean(self.epoch_seconds)) if self.epoch_seconds else None
            ),
            "packed_inference_seconds": self.packed_seconds,
            "packed_agreement": self.packed_agreement,
        }


@dataclass
class Comparison:
    """The result of :func:`compare`: rows plus everything needed to reproduce them."""

    rows: list
    settings: dict
    interrupted: bool = False

    @property
    def fp_accuracy(self) -> float | None:
        for row in self.rows:
            if row.method == FULL_PRECISION:
                return row.accuracy_mean
        return None

    def records(self) -> list[dict]:
        return [row.as_dict(self.fp_accuracy) for row in self.rows]

    def to_json(self) -> str:
        return json.dumps(
            {"settings": self.settings, "interrupted": self.interrupted, "rows": self.records()},
            indent=2,
            default=str,
        )

    def to_csv(self) -> str:
        records = self.records()
        buffer = io.StringIO()
        columns = [k for k in records[0] if k != "accuracies"] if records else []
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow(record)
        return buffer.getvalue()

    def table_rows(self) -> list[list[str]]:
        """The human table: one list of cells per method, header first."""
        header = [
            "method",
            "paper",
            "ternary",
            "test acc (%)",
            "gap (pt)",
            "sparsity",
            "packed size",
            "bits/w",
            "train s/ep",
            "packed infer s",
        ]
        out = [header]
        n_seeds = self.settings.get("seeds", 1)
        for record in self.records():
            paper = f"{record['paper']} ({record['year']})" if record["year"] else record["paper"]
            if record["status"] != "ok" and record["accuracy_mean"] is None:
                out.append(
                    [
                        record["method"],
                        paper,
                        record["ternary"],
                        f"{record['status']}: {record['error']}",
                        *[""] * 6,
                    ]
                )
                continue
            acc = 100 * record["accuracy_mean"]
            acc_cell = f"{acc:.2f}" + (
                f" ± {100 * record['accuracy_std']:.2f}" if n_seeds > 1 else ""
            )
            if record["status"] != "ok":
                acc_cell += f" ({record['status']}: {record['error']})"
            out.append(
                [
                    record["method"],
                    paper,
                    record["ternary"],
                    acc_cell,
                    _fmt(record["gap_to_fp"], lambda g: f"{100 * g:+.2f}"),
                    _fmt(record["sparsity"], lambda s: f"{s:.3f}"),
                    _fmt(record["packed_bytes"], _human_bytes),
                    _fmt(record["bits_per_weight"], lambda b: f"{b:.2f}"),
                    _fmt(record["train_seconds_per_epoch"], lambda s: f"{s:.2f}"),
                    _fmt(record["packed_inference_seconds"], lambda s: f"{s:.3f}"),
                ]
            )
        return out

    def notes(self) -> list[str]:
        """One line per row that has something to say beyond its numbers (a failed packing)."""
        return [
            f"{row.method}: {row.error}" for row in self.rows if row.error and row.status == "ok"
        ] + [
            f"{row.method}: packed predictions agree with the trained model on "
            f"{100 * row.packed_agreement:.2f}% of the test set"
            for row in self.rows
            if row.packed_agreement is not None and row.packed_agreement < 1.0
        ]

    def to_text(self) -> str:
        rows = self.table_rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        notes = self.notes()
        if notes:
            lines += ["", "notes:"] + [f"  {n}" for n in notes]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        rows = self.table_rows()
        s = self.settings
        lines = [
            f"# ternref compare: {s['model']} on {s['dataset']}",
            "",
            f"Command: `{s['command']}`",
            "",
            f"{s['epochs']} epochs, batch {s['batch_size']}, {s['optimizer']} lr {s['lr']:g}, "
            f"{s['schedule']} schedule, seeds {s['seed_values']}, first and last weight layers "
            f"in full precision ({s['keep_full_precision']}). {_start_sentence(s)}"
            f"Accuracy is the test accuracy after "
            f"the last epoch (mean ± std over seeds); gap is to the full-precision row; packed "
            f"size is the saved `.npz` inference file; bits/w counts codes and scales of the "
            f"ternary layers.",
            "",
            f"Machine: {s['machine']}. ternref {s['ternref']}, numpy {s['numpy']}, "
            f"numba {s['numba']}, Python {s['python']}. Date: {s['date']}.",
            "",
            "| " + " | ".join(rows[0]) + " |",
            "|" + "|".join("---" for _ in rows[0]) + "|",
        ]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
        notes = self.notes()
        if notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
        if self.interrupted:
            lines += ["", "**Interrupted**: the rows above are the ones finished before the stop."]
        return "\n".join(lines) + "\n"


def _start_sentence(settings: dict) -> str:
    if settings.get("start", "scratch") == "fp":
        return (
            f"Every method starts from the trained full-precision baseline of its seed and trains "
            f"{settings['epochs']} more epochs (fine-tuning, as the papers that start from a "
            f"pretrained network). "
        )
    return "Every run starts from the same seeded initialisation. "


def _fmt(value, fn) -> str:
    return "" if value is None else fn(value)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}"
    # what this process may actually use: a run pinned with taskset or limited by thread
    # variables times differently from one that has the whole machine
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    if usable != os.cpu_count():
        text += f", {usable} usable by this process"
    limits = [
        f"{k}={os.environ[k]}"
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
        if k in os.environ
    ]
    if limits:
        text += ", " + " ".join(limits)
    return text


def _versions() -> dict:
    import numba

    import ternref

    return {
        "ternref": ternref.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "python": platform.python_version(),
    }


def copy_state(source, target) -> None:
    """Copy the parameters and BatchNorm running statistics of ``source`` into ``target``.

    Both must have the same architecture (the same module types in the same order, parameters of
    the same shapes); the arrays are copied, never shared, so training ``target`` leaves
    ``source`` as it was.
    """
    from ternref.nn.module import Parameter

    src, dst = list(source.modules()), list(target.modules())
    kinds = [type(m).__name__ for m in src], [type(m).__name__ for m in dst]
    if kinds[0] != kinds[1]:
        raise ValueError(
            f"copy_state: the two models differ in architecture: {kinds[0]} vs {kinds[1]}"
        )
    for a, b in zip(src, dst):
        for key, value in vars(a).items():
            if isinstance(value, Parameter):
                mine = getattr(b, key)
                if mine.data.shape != value.data.shape:
                    raise ValueError(
                        f"copy_state: {type(a).__name__}.{key} has shape {value.data.shape} in "
                        f"the source and {mine.data.shape} in the target"
                    )
                mine.data[...] = value.data
            elif key in ("running_mean", "running_var"):
                getattr(b, key)[...] = value
            elif key == "num_batches_tracked":
                setattr(b, key, value)


def _run_one(method_name, dataset, args, seed, bar, teacher=None, start_from=None) -> dict:
    """Train one (method, seed); return accuracy, sparsity, timings and the trained model.

    ``start_from``: a trained model of the same architecture whose state the new model starts
    from (before its layers are quantized), or ``None`` for the seeded initialisation.
    """
    from ternref import methods
    from ternref.recipes import build_model, build_optimizer, build_schedule
    from ternref.train import Callback, fit

    class Tick(Callback):
        def on_epoch_end(self, model, epoch, record):
            bar.update(1)
            bar.set_postfix(method=method_name, seed=seed, acc=f"{record['test_acc']:.3f}")

    init_rng, shuffle_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)
    )
    model = build_model(args["model"], dataset.image_shape, dataset.n_classes, init_rng)
    if start_from is not None:
        copy_state(start_from, model)
    callbacks, loss = [], None
    if method_name != FULL_PRECISION:
        extra = {"teacher": teacher} if methods.requires_teacher(method_name) else {}
        if extra and teacher is None:
            raise ValueError(f"{method_name} needs the full-precision baseline as its teacher")
        method = methods.get(method_name, **extra)
        callbacks = methods.quantize_model(model, method, args["keep_full_precision"])
        loss = method.loss()
    optimizer = build_optimizer(args["optimizer"], model.parameters(), args["lr"])
    schedule = build_schedule(args["schedule"], optimizer, args["epochs"])
    history = fit(
        model,
        dataset,
        optimizer,
        loss=loss,
        epochs=args["epochs"],
        batch_size=args["batch_size"],
        schedule=schedule,
        rng=shuffle_rng,
        callbacks=[*callbacks, Tick()],
        progress=False,
    )
    return {
        "model": model,
        "accuracy": history.last["test_acc"],
        "sparsity": history.last.get("sparsity"),
        "epoch_seconds": float(np.mean(history["seconds"])),
    }


# Inference runs in batches of this size: a whole test set at once would make im2col buffers
# of several GB for LeNet-5 on 10,000 images.
INFERENCE_BATCH = 1000


def _forward_in_batches(model, x: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [model.forward(x[i : i + INFERENCE_BATCH]) for i in range(0, len(x), INFERENCE_BATCH)]
    )


def _packed_stats(model, dataset) -> dict:
    """Export ``model`` to the packed inference form, save it, time it, compare predictions."""
    from ternref import packed

    inference = packed.export(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.npz")
        packed.save(path, inference)
        size = os.path.getsize(path)
        loaded = packed.load(path)
    model.eval()
    _forward_in_batches(loaded, dataset.x_test[:INFERENCE_BATCH])  # compile/load the kernels
    start = time.perf_counter()
    packed_logits = _forward_in_batches(loaded, dataset.x_test)
    seconds = time.perf_counter() - start
    trained_logits = _forward_in_batches(model, dataset.x_test)
    agreement = float(np.mean(packed_logits.argmax(1) == trained_logits.argmax(1)))
    n_weights = n_bits = 0
    for layer in loaded.modules():
        terms = getattr(layer, "terms", None)
        if terms:
            # Residual layers hold several packed terms over the same weights: count the
            # weights once and the bytes of every term.
            n_weights += math.prod(terms[0].shape)
            n_bits += 8 * sum(t.nbytes for t in terms)
    float_bytes = sum(p.data.size * 4 for p in model.parameters())
    return {
        "packed_bytes": size,
        "float_bytes": float_bytes,
        "bits_per_weight": n_bits / n_weights if n_weights else None,
        "seconds": seconds,
        "agreement": agreement,
    }


def compare(
    dataset: str = "digits",
    model: str = "mlp",
    methods=None,
    *,
    epochs: int | None = None,
    seeds: int = 1,
    first_seed: int = 0,
    keep_full_precision: str = "first_last",
    start: str = "scratch",
    data_dir=None,
    progress: bool = True,
    command: str | None = None,
    on_row=None,
) -> Comparison:
    """Train the full-precision baseline and each method under one recipe; see the module doc.

    Parameters
    ----------
    dataset, model : str
        As for ``ternref train`` (the recipe of the pair sets batch size, optimizer, lr, schedule).
    methods : list of str, optional
        Method names (default: every registered method). The baseline ``"fp"`` always runs first.
    epochs : int, optional
        Epochs per run (default: the recipe's).
    seeds : int
        Number of seeds; seeds ``first_seed .. first_seed + seeds - 1``.
    start : {"scratch", "fp"}
        Where each method starts: the seeded initialisation, or the trained full-precision
        baseline of the same seed (then trained ``epochs`` more; see the module doc).
    on_row : callable, optional
        Called with the :class:`Comparison` after each finished row (the CLI writes files there,
        so an interrupt leaves the finished rows on disk).
    """
    from ternref import methods as registry
    from ternref._progress import progress_bar, progress_line
    from ternref.data import load_dataset
    from ternref.recipes import recipe

    data = load_dataset(dataset, data_dir=data_dir)
    r = recipe(model, dataset)
    epochs = r.epochs if epochs is None else _validate.integer(epochs, "epochs", low=1)
    seeds = _validate.integer(seeds, "seeds", low=1)
    _validate.one_of(start, "start", STARTS)
    names = registry.names() if methods is None else list(methods)
    unknown = [m for m in names if m != FULL_PRECISION and m not in registry.names()]
    if unknown:
        raise ValueError(
            f"unknown method(s) {unknown}; known methods: {', '.join(registry.names())}"
        )
    names = [FULL_PRECISION] + [m for m in names if m != FULL_PRECISION]
    seed_values = list(range(first_seed, first_seed + seeds))
    settings = {
        "command": command or "ternref compare",
        "dataset": data.name,
        "model": model,
        "methods": names,
        "epochs": epochs,
        "batch_size": r.batch_size,
        "optimizer": r.optimizer,
        "lr": r.lr,
        "schedule": r.schedule,
        "seeds": seeds,
        "seed_values": seed_values,
        "keep_full_precision": keep_full_precision,
        "start": start,
        "machine": machine_description(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **_versions(),
    }
    args = {
        "model": model,
        "epochs": epochs,
        "batch_size": r.batch_size,
        "optimizer": r.optimizer,
        "lr": r.lr,
        "schedule": r.schedule,
        "keep_full_precision": keep_full_precision,
    }
    result = Comparison(rows=[], settings=settings)
    teachers = {}
    bar = progress_bar(
        enabled=progress, total=len(names) * seeds * epochs, desc="compare", unit="epoch"
    )
    n_runs, runs_done = len(names) * seeds, 0
    try:
        for name in names:
            if name == FULL_PRECISION:
                row = Row(name, "full-precision baseline", None, "-")
            else:
                info = registry.info(name)
                row = Row(name, info.paper.split(":")[0], info.year, info.ternary)
            for seed in seed_values:
                done_before = bar.n
                try:
                    fp_model = teachers.get(seed)  # teacher of distillation, start of "fp"
                    from_fp = start == "fp" and name != FULL_PRECISION
                    if from_fp and fp_model is None:
                        raise RuntimeError("the full-precision baseline of this seed failed")
                    begin = fp_model if from_fp else None
                    run = _run_one(name, data, args, seed, bar, fp_model, start_from=begin)
                except KeyboardInterrupt:
                    raise
                except FloatingPointError as exc:
                    row.status, row.error = "diverged", str(exc)
                    outcome = f"diverged: {exc}"
                except Exception as exc:  # noqa: BLE001 - reported in the row, run goes on
                    row.status, row.error = "failed", f"{type(exc).__name__}: {exc}"
                    outcome = f"failed: {row.error}"
                else:
                    if name == FULL_PRECISION:
                        teachers[seed] = run["model"]  # distillation methods learn from it
                    row.accuracies.append(run["accuracy"])
                    outcome = f"test accuracy {100 * run['accuracy']:.2f} %"
                    if run["sparsity"] is not None:
                        row.sparsities.append(run["sparsity"])
                    row.epoch_seconds.append(run["epoch_seconds"])
                    if seed == seed_values[0]:
                        try:
                            stats = _packed_stats(run["model"], data)
                        except Exception as exc:  # noqa: BLE001
                            row.error = f"packing failed: {type(exc).__name__}: {exc}"
                        else:
                            row.packed_bytes = stats["packed_bytes"]
                            row.float_bytes = stats["float_bytes"]
                            row.bits_per_weight = stats["bits_per_weight"]
                            row.packed_seconds = stats["seconds"]
                            row.packed_agreement = stats["agreement"]
                bar.update(epochs - (bar.n - done_before))  # a failed run skips its epochs
                runs_done += 1
                progress_line(
                    f"compare [{runs_done}/{n_runs}] {name} seed {seed}: {outcome}",
                    enabled=progress,
                    file=sys.stderr,
                )
            result.rows.append(row)
            if on_row is not None:
                on_row(result)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        bar.close()
    return result


def write_outputs(result: Comparison, out_dir: str, plot: bool = False) -> list[str]:
    """Write ``compare.json``, ``compare.csv`` and ``compare.md`` (and ``compare.png``)."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, text in (
        ("compare.json", result.to_json()),
        ("compare.csv", result.to_csv()),
        ("compare.md", result.to_markdown()),
    ):
        path = os.path.join(out_dir, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)  # a reader never sees a half-written table
        written.append(path)
    if plot:
        written.append(plot_accuracy_vs_size(result, os.path.join(out_dir, "compare.png")))
    return written


def plot_accuracy_vs_size(result: Comparison, path: str) -> str:
    """Scatter of test accuracy against packed model size, one labelled point per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ValueError(
            "--plot needs matplotlib: pip install 'ternref[tutorials]' or pip install matplotlib"
        ) from exc
    fig, ax = plt.subplots(figsize=(8.5, 5))
    points = [
        (r["packed_bytes"] / 1024, 100 * r["accuracy_mean"], 100 * (r["accuracy_std"] or 0), r)
        for r in result.records()
        if r["accuracy_mean"] is not None and r["packed_bytes"] is not None
    ]
    # Most ternary models have nearly the same size and accuracy, so labels next to the points
    # would overlap: list them down the right-hand side in order of accuracy, with a thin line
    # to each point.
    points.sort(key=lambda p: -p[1])
    for i, (x, y, err, record) in enumerate(points):
        full = record["method"] == FULL_PRECISION
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=2, color="black" if full else "tab:blue")
        ax.annotate(
            f"{record['method']} {y:.2f}",
            (x, y),
            xytext=(1.02, 1 - (i + 0.5) / len(points)),
            textcoords="axes fraction",
            fontsize=8,
            va="center",
            arrowprops={"arrowstyle": "-", "color": "0.75", "lw": 0.5},
        )
    s = result.settings
    ax.set_xscale("log")
    ax.set_xlabel("packed model size on disk (KiB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{s['model']} on {s['dataset']}, {s['epochs']} epochs, {s['seeds']} seed(s)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
