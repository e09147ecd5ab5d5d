"""The executable survey: every method trained on the same data, network, budget and seeds.

The survey compares methods with numbers copied from papers that used different networks, data
and budgets. :func:`compare` trains the full-precision baseline and every registered method (or
the ones asked for) under one recipe and measures, for each:

* test accuracy (mean and standard deviation over seeds) and the gap to full precision;
* the sparsity of the ternary layers;
* the packed model: its size on disk, bits per weight, inference time on the test set beside
  the trained model's own (float) inference time and their ratio, and whether its predictions
  equal the trained model's (float activations);
* training time per epoch.

A method that raises or diverges gets a row saying what happened, and the run goes on; an
interrupt (Ctrl-C) stops the run with the rows finished so far written.

Where each method starts (``start``): ``"scratch"`` (default) builds every model from the same
seeded initialisation, so all rows have the same budget. ``"fp"`` starts every method from the
trained full-precision baseline of the same seed (its weights and BatchNorm statistics) and
trains it for ``epochs`` more: the recipe of the papers that fine-tune a pretrained network (TTQ
and ProxQuant on CIFAR, INQ, ADMM, EC2T). The table then states that the methods had the
baseline's epochs on top of their own.

Where the runs run: one after the other in this process (default), on a Dask ``LocalCluster`` of
``jobs`` worker processes, or on a running Dask cluster (``scheduler``); see
:mod:`ternref._distributed`. Every run has its own seeded generators and shares nothing with the
others, so for the same seeds and threads per run all three give the same bits. With
``start="fp"`` or a distillation method, the full-precision run of a seed goes first and its
trained model is the start (or the teacher) of the runs that need it.

``compare.json`` keeps one record per (method, seed) run beside the aggregated rows, so a sweep
can be resumed (``resume``): only the pairs it lacks (or whose run failed) run, the rows are
recomputed from all records, and the settings that decide the numbers must match.

Baselines across sittings (``baselines``, a folder; the CLI's is ``OUT/baselines``): every
trained full-precision model of the sweep is saved there (``fp-seed<N>.npz``: its parameters and
BatchNorm statistics, with the test accuracy of its row). A later sitting whose runs start from
(or learn from) the baseline of a seed loads it instead of training it again, so the sweep can
go on on another machine, whose BLAS would not reproduce the same bits. Without a saved model
the baseline is trained again and must reproduce its stored row, or its dependent runs fail
with the reason.
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
#: Statuses of runs a resumed sweep keeps; a "failed" run (an exception, a lost worker) runs again.
KEPT_STATUSES = ("ok", "diverged")
#: Settings a resumed sweep must share with the one it extends (they decide the numbers).
RESUME_KEYS = (
    "dataset",
    "model",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "schedule",
    "keep_full_precision",
    "start",
)


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
    float_seconds: float | None = None
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
            "float_inference_seconds": self.float_seconds,
            "packed_inference_seconds": self.packed_seconds,
            "packed_speedup": (
                self.float_seconds / self.packed_seconds
                if self.float_seconds and self.packed_seconds
                else None
            ),
            "packed_agreement": self.packed_agreement,
        }


@dataclass
class Comparison:
    """The result of :func:`compare`: rows plus everything needed to reproduce them."""

    rows: list
    settings: dict
    interrupted: bool = False
    #: one record per (method, seed) run, the source of ``rows`` (see :func:`rows_from_runs`)
    runs: list = field(default_factory=list)
    #: one entry per invocation that added runs: command, date, machine, jobs, threads per run
    sittings: list = field(default_factory=list)

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
            {
                "settings": self.settings,
                "interrupted": self.interrupted,
                "rows": self.records(),
                "runs": sorted(self.runs, key=_run_order(self.settings.get("methods", []))),
                "sittings": self.sittings,
            },
            indent=2,
            default=str,
        )

    @classmethod
    def from_json(cls, text: str) -> Comparison:
        """Read what :meth:`to_json` wrote; the rows are recomputed from the run records."""
        doc = json.loads(text)
        if not isinstance(doc, dict) or "settings" not in doc or "rows" not in doc:
            raise ValueError("not a compare.json: it has no 'settings' and 'rows'")
        if "runs" not in doc:
            raise ValueError(
                "this compare.json was written by a ternref without per-run records (no 'runs'), "
                "so its rows cannot be extended; start a new --out folder"
            )
        settings = doc["settings"]
        meta = {r["method"]: (r["paper"], r["year"], r["ternary"]) for r in doc["rows"]}
        return cls(
            rows=rows_from_runs(settings["methods"], doc["runs"], meta),
            settings=settings,
            interrupted=bool(doc.get("interrupted", False)),
            runs=list(doc["runs"]),
            sittings=list(doc.get("sittings", [])),
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
            "float infer s",
            "packed infer s",
            "packed speed-up",
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
                        *[""] * 8,
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
                    _fmt(record["float_inference_seconds"], lambda s: f"{s:.3f}"),
                    _fmt(record["packed_inference_seconds"], lambda s: f"{s:.3f}"),
                    _fmt(record["packed_speedup"], lambda r: f"{r:.2f}x"),
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
            f"ternary layers; float and packed infer s time the whole test set through the "
            f"trained model's own forward (float32, ternary weights as float) and through the "
            f"packed model loaded from its file (float32 activations), batch by batch in turn; "
            f"packed speed-up is their ratio.",
            "",
            f"Machine: {s['machine']}. ternref {s['ternref']}, numpy {s['numpy']}, "
            f"numba {s['numba']}, Python {s['python']}. Date: {s['date']}.",
            "",
            *_sittings_paragraph(self.sittings),
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


def _sittings_paragraph(sittings: list) -> list[str]:
    """How the runs ran (threads per run, jobs or cluster); for a resumed sweep, each sitting."""
    if not sittings:
        return []
    last = sittings[-1]
    threads = last.get("threads_per_run")
    where = (
        f"on a local Dask cluster of {last['jobs']} worker processes"
        if last.get("jobs")
        else f"on the Dask cluster at {last['scheduler']}"
        if last.get("scheduler")
        else "one after the other in one process"
    )
    text = (
        f"Runs ran {where}, with {threads} BLAS/Numba thread(s) each."
        if threads is not None
        else f"Runs ran {where}, with the thread limits of each worker (see `runs` in "
        f"compare.json)."
    )
    if len(sittings) > 1:
        text += f" The table was filled in {len(sittings)} sittings: " + "; ".join(
            f"`{p['command']}` ({p['date']}, {p['runs']} runs)" for p in sittings
        )
        text += "."
    return [text, ""]


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
            if bar is not None:  # None on a Dask worker: the client's bar counts whole runs
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
    x = dataset.x_test
    # One batch each first: the packed model's first call loads its compiled kernels from
    # Numba's cache (once per process); then both run batch by batch in turn, so that a change
    # of the machine's load hits both alike.
    loaded.forward(x[:INFERENCE_BATCH])
    model.forward(x[:INFERENCE_BATCH])
    packed_parts, trained_parts = [], []
    seconds = float_seconds = 0.0
    for i in range(0, len(x), INFERENCE_BATCH):
        batch = x[i : i + INFERENCE_BATCH]
        start = time.perf_counter()
        packed_parts.append(loaded.forward(batch))
        middle = time.perf_counter()
        trained_parts.append(model.forward(batch))
        seconds += middle - start
        float_seconds += time.perf_counter() - middle
    packed_logits = np.concatenate(packed_parts)
    trained_logits = np.concatenate(trained_parts)
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
        "float_seconds": float_seconds,
        "agreement": agreement,
    }


# ------------------------------------------------------------------------- one run, anywhere
def failed_record(method: str, seed: int, error: str | None, status: str = "failed") -> dict:
    """The record of a (method, seed) run that produced no model (also the template of a run)."""
    return {
        "method": method,
        "seed": seed,
        "status": status,
        "error": error,
        "accuracy": None,
        "sparsity": None,
        "epoch_seconds": None,
        "packed": None,
        "packing_error": None,
        "worker": None,
        "threads": None,
    }


def thread_report() -> dict:
    """The BLAS and Numba threads this thread has now (BLAS ``None`` without threadpoolctl)."""
    from ternref._distributed import effective_limits

    limits = effective_limits()
    return {"blas": limits["blas"], "numba": limits["numba"]}


def baseline_problem(record: dict) -> str:
    """Why the full-precision run ``record`` cannot start or teach the runs of its seed."""
    if record["status"] != "ok":
        return f"the full-precision baseline of this seed {record['status']}: {record['error']}"
    return (
        f"the full-precision run of seed {record['seed']}, trained again in this sitting for the "
        f"runs that start from it or learn from it, gave test accuracy {record['accuracy']!r}, "
        f"not the stored {record['expected_accuracy']!r}: something that decides the bits "
        f"changed (library versions, threads per run, machine), so those runs would not belong "
        f"in this table"
    )


def execute_run(
    name,
    data,
    args,
    seed,
    bar,
    fp_model,
    start,
    *,
    measure_packed,
    fp_problem=None,
    expected=None,
):
    """Train one (method, seed) and measure it; return ``(record, trained model or None)``.

    The same function runs in this process (sequential) and on a Dask worker, so both give the
    same record. ``fp_model``: the trained full-precision model of the seed (the start of
    ``start="fp"`` and the teacher of distillation), or ``None`` with ``fp_problem`` saying why.
    ``expected``: for a full-precision run trained again only for its dependents (a resumed
    sweep), the stored record it must reproduce; ``record["reproduces"]`` says whether it did.
    A failure becomes the record's status (``"failed"``, or ``"diverged"`` for a
    FloatingPointError); KeyboardInterrupt goes on.
    """
    from ternref import methods as registry

    record = failed_record(name, seed, None, status="ok")
    try:
        if name != FULL_PRECISION and fp_model is None and fp_problem is not None:
            if start == "fp" or registry.requires_teacher(name):
                raise RuntimeError(fp_problem)
        from_fp = start == "fp" and name != FULL_PRECISION
        if from_fp and fp_model is None:
            raise RuntimeError("the full-precision baseline of this seed failed")
        begin = fp_model if from_fp else None
        run = _run_one(name, data, args, seed, bar, fp_model, start_from=begin)
    except KeyboardInterrupt:
        raise
    except FloatingPointError as exc:
        record["status"], record["error"] = "diverged", str(exc)
        return record, None
    except Exception as exc:  # noqa: BLE001 - reported in the row, the sweep goes on
        record["status"], record["error"] = "failed", f"{type(exc).__name__}: {exc}"
        return record, None
    record["accuracy"] = float(run["accuracy"])
    record["sparsity"] = None if run["sparsity"] is None else float(run["sparsity"])
    record["epoch_seconds"] = float(run["epoch_seconds"])
    if expected is not None:
        record["expected_accuracy"] = expected["accuracy"]
        record["reproduces"] = (
            expected["status"] == "ok" and expected["accuracy"] == record["accuracy"]
        )
    if measure_packed:
        try:
            record["packed"] = _packed_stats(run["model"], data)
        except Exception as exc:  # noqa: BLE001
            record["packing_error"] = f"packing failed: {type(exc).__name__}: {exc}"
    return record, run["model"]


def model_state(model) -> list:
    """The trained state of ``model``: its parameters and BatchNorm statistics, in module order.

    A list of ``(attribute, array or int)`` pairs, copies; :func:`model_from_state` rebuilds the
    model. This is what travels from the worker that trained a full-precision model to the
    workers whose runs start from it or learn from it.
    """
    from ternref.nn.module import Parameter

    state = []
    for module in model.modules():
        for key, value in vars(module).items():
            if isinstance(value, Parameter):
                state.append((key, value.data.copy()))
            elif key in ("running_mean", "running_var"):
                state.append((key, np.array(value, copy=True)))
            elif key == "num_batches_tracked":
                state.append((key, int(value)))
    return state


def model_from_state(model_name: str, data, state: list):
    """Build model ``model_name`` for ``data`` and load ``state`` (from :func:`model_state`)."""
    from ternref.nn.module import Parameter
    from ternref.recipes import build_model

    model = build_model(model_name, data.image_shape, data.n_classes, np.random.default_rng(0))
    slots = []
    for module in model.modules():
        for key, value in vars(module).items():
            if isinstance(value, Parameter) or key in (
                "running_mean",
                "running_var",
                "num_batches_tracked",
            ):
                slots.append((module, key))
    if [k for _, k in slots] != [k for k, _ in state]:
        raise ValueError(
            f"model_from_state: the state does not fit model {model_name!r} "
            f"({len(state)} entries, the model has {len(slots)})"
        )
    for (module, key), (_, value) in zip(slots, state):
        target = getattr(module, key)
        if key == "num_batches_tracked":
            setattr(module, key, value)
            continue
        array = target.data if isinstance(target, Parameter) else target
        if array.shape != value.shape:
            raise ValueError(
                f"model_from_state: {type(module).__name__}.{key} has shape {array.shape}, "
                f"the state {value.shape}"
            )
        array[...] = value
    return model


def baseline_path(folder, seed: int) -> str:
    """Where the trained full-precision model of ``seed`` is saved in ``folder``."""
    return os.path.join(os.fspath(folder), f"fp-seed{int(seed)}.npz")


def save_baseline(folder, record: dict, state: list) -> str:
    """Save ``state`` (:func:`model_state`) of the full-precision run ``record`` in ``folder``,
    written to a temporary file and renamed (a reader never sees half a file)."""
    os.makedirs(folder, exist_ok=True)
    path = baseline_path(folder, record["seed"])
    arrays = {f"value{i}": np.asarray(value) for i, (_, value) in enumerate(state)}
    meta = {"seed": int(record["seed"]), "accuracy": record["accuracy"],
            "keys": [key for key, _ in state]}  # fmt: skip
    tmp = path + ".tmp.npz"
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)
    return path


def load_baseline(folder, record: dict) -> list | None:
    """The saved state of the full-precision run ``record``, or ``None`` if ``folder`` has none
    for its seed, or one saved with another test accuracy (the model of another run).

    Raises ValueError naming the file if it is there but not a baseline file."""
    path = baseline_path(folder, record["seed"])
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            if meta["accuracy"] != record["accuracy"] or meta["seed"] != record["seed"]:
                return None
            state = []
            for i, key in enumerate(meta["keys"]):
                value = f[f"value{i}"]
                state.append((key, int(value) if key == "num_batches_tracked" else value.copy()))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a baseline saved by ternref compare: {exc}") from None
    return state


# ------------------------------------------------------------------------- rows from runs
def _run_order(names: list):
    position = {name: i for i, name in enumerate(names)}
    return lambda run: (position.get(run["method"], len(position)), run["method"], run["seed"])


def rows_from_runs(names: list, runs: list, meta: dict) -> list[Row]:
    """Aggregate run records into the table's rows: one per method of ``names`` that has a run.

    The runs of a method are taken in seed order, whatever order they finished in, so a row's
    mean and standard deviation are the same bits for a sequential, a parallel and a resumed
    sweep. A failed or diverged run sets the row's status and error (the last such seed wins);
    the packed statistics are those of the lowest seed that measured them.
    ``meta[name]`` is ``(paper, year, ternary)``.
    """
    by_method: dict = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run)
    rows = []
    for name in names:
        mine = sorted(by_method.get(name, []), key=lambda r: r["seed"])
        if not mine:
            continue
        row = Row(name, *meta[name])
        packed_done = False
        for run in mine:
            if run["status"] != "ok":
                row.status, row.error = run["status"], run["error"]
                continue
            row.accuracies.append(run["accuracy"])
            if run["sparsity"] is not None:
                row.sparsities.append(run["sparsity"])
            row.epoch_seconds.append(run["epoch_seconds"])
            if packed_done or (run["packed"] is None and run["packing_error"] is None):
                continue
            packed_done = True
            if run["packing_error"] is not None:
                row.error = run["packing_error"]
            else:
                stats = run["packed"]
                row.packed_bytes = stats["packed_bytes"]
                row.float_bytes = stats["float_bytes"]
                row.bits_per_weight = stats["bits_per_weight"]
                row.packed_seconds = stats["seconds"]
                row.float_seconds = stats.get("float_seconds")  # absent in older sweeps
                row.packed_agreement = stats["agreement"]
        rows.append(row)
    return rows


def _method_meta(name: str) -> tuple:
    from ternref import methods as registry

    if name == FULL_PRECISION:
        return ("full-precision baseline", None, "-")
    info = registry.info(name)
    return (info.paper.split(":")[0], info.year, info.ternary)


def read_comparison(path) -> Comparison:
    """The :class:`Comparison` in ``path`` (an output folder or its ``compare.json``)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "compare.json")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return Comparison.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot resume from {path}: {exc}") from None


def _check_resumable(previous: Comparison, settings: dict, threads, where: str) -> None:
    """Refuse (ValueError naming the setting) to extend a sweep whose numbers were decided
    differently; warn when only library versions differ."""
    import warnings

    old = previous.settings
    for key in RESUME_KEYS:
        if old.get(key) != settings[key]:
            raise ValueError(
                f"cannot resume {where}: its {key} is {old.get(key)!r}, this command's is "
                f"{settings[key]!r}; run with the same {key}, or write to another --out folder"
            )
    old_threads = previous.sittings[-1].get("threads_per_run") if previous.sittings else None
    if old_threads is None:  # a cluster whose workers set their own limits: what the runs had
        had = {(r.get("threads") or {}).get("blas") for r in previous.runs}
        old_threads = had.pop() if len(had) == 1 else None
        old_threads = old_threads if isinstance(old_threads, int) else None
    if old_threads is not None and threads is not None and old_threads != threads:
        raise ValueError(
            f"cannot resume {where}: its runs had {old_threads} thread(s) per run, this command "
            f"gives {threads} (BLAS results depend on the thread count, so the new runs would "
            f"not reproduce a one-sitting sweep); pass --threads {old_threads}, or write to "
            f"another --out folder"
        )
    changed = [k for k in ("ternref", "numpy", "numba") if old.get(k) != settings[k]]
    if changed:
        warnings.warn(
            f"resuming {where}, whose runs used "
            + ", ".join(f"{k} {old.get(k)}" for k in changed)
            + "; this sitting uses "
            + ", ".join(f"{k} {settings[k]}" for k in changed),
            stacklevel=3,
        )


def _default_threads() -> int | None:
    """The BLAS threads this process runs with when nobody limits them."""
    from ternref._distributed import effective_limits, usable_cores

    blas = effective_limits()["blas"]
    if isinstance(blas, int):
        return blas
    for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return usable_cores()


# ------------------------------------------------------------------------- the sweep
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
    jobs: int | None = None,
    scheduler=None,
    threads: int | None = None,
    resume=None,
    connect_timeout: float = 10.0,
    baselines=None,
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
        Called with the :class:`Comparison` after each finished run (the CLI writes files there,
        so an interrupt leaves the finished rows on disk).
    jobs : int, optional
        Run on a Dask ``LocalCluster`` of ``jobs`` worker processes (the ``distributed``
        extra), each running one training at a time with ``threads`` threads.
    scheduler : str or distributed.Client, optional
        Run on the Dask cluster whose scheduler is at this address (``tcp://HOST:PORT``), or
        through this client. Each worker loads the data set from its own disk (``data_dir`` is
        a folder on the worker). Not with ``jobs``.
    threads : int, optional
        BLAS and Numba threads per run. Default: all this process has (sequential),
        ``cores // jobs`` (``jobs``), as each worker was started (``scheduler``).
    resume : Comparison, str or os.PathLike, optional
        A previous sweep (or its output folder, or its ``compare.json``) to extend: only the
        (method, seed) pairs it lacks, or whose run failed, are run; its settings must match
        (ValueError naming the first that differs). A folder without ``compare.json`` starts a
        new sweep.
    connect_timeout : float
        Seconds to wait for a remote scheduler and its first worker (ConnectionError after).
    baselines : str or os.PathLike, optional
        A folder for the trained full-precision models (see the module doc): each one trained
        here is saved there, and a resumed sweep loads the ones its runs need from there.

    Returns
    -------
    Comparison
    """
    from ternref import _distributed
    from ternref import methods as registry
    from ternref._progress import progress_bar, progress_line
    from ternref.data import DATASETS, load_dataset
    from ternref.recipes import recipe

    r = recipe(model, dataset)
    epochs = r.epochs if epochs is None else _validate.integer(epochs, "epochs", low=1)
    seeds = _validate.integer(seeds, "seeds", low=1)
    _validate.one_of(start, "start", STARTS)
    if jobs is not None:
        jobs = _validate.integer(jobs, "jobs", low=1)
    if threads is not None:
        threads = _validate.integer(threads, "threads", low=1)
    if jobs is not None and scheduler is not None:
        raise ValueError("give jobs (a local cluster) or scheduler (a running one), not both")
    on_cluster = jobs is not None or scheduler is not None
    if on_cluster:
        _distributed.require()
    names = registry.names() if methods is None else list(methods)
    unknown = [m for m in names if m != FULL_PRECISION and m not in registry.names()]
    if unknown:
        raise ValueError(
            f"unknown method(s) {unknown}; known methods: {', '.join(registry.names())}"
        )
    names = [FULL_PRECISION] + [m for m in names if m != FULL_PRECISION]
    seed_values = list(range(first_seed, first_seed + seeds))

    previous, where = None, None
    if isinstance(resume, Comparison):
        previous, where = resume, "the given comparison"
    elif resume is not None:
        where = os.fspath(resume)
        path = os.path.join(where, "compare.json") if os.path.isdir(where) else where
        if os.path.exists(path):
            previous = read_comparison(path)
        else:
            progress_line(
                f"compare: nothing to resume in {where} yet; starting a new sweep",
                enabled=progress,
                file=sys.stderr,
            )

    _validate.one_of(dataset, "dataset", DATASETS)
    if jobs is not None:
        per_run = threads if threads is not None else _distributed.threads_for(jobs)
    elif scheduler is not None:
        per_run = threads
    else:
        per_run = threads if threads is not None else _default_threads()

    settings = {
        "command": command or "ternref compare",
        "dataset": dataset,
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
    runs, sittings, meta = [], [], {}
    if previous is not None:
        _check_resumable(previous, settings, per_run, where)
        old_names = previous.settings["methods"]
        settings["methods"] = old_names + [m for m in names if m not in old_names]
        all_seeds = sorted(set(previous.settings["seed_values"]) | set(seed_values))
        settings["seed_values"], settings["seeds"] = all_seeds, len(all_seeds)
        runs, sittings = list(previous.runs), list(previous.sittings)
        meta = {row.method: (row.paper, row.year, row.ternary) for row in previous.rows}
    for name in names:
        meta[name] = _method_meta(name)
    packed_seed = settings["seed_values"][0]  # the packed model is measured on this seed's run
    # On a cluster the workers load the data set, each from its own disk; this process may not
    # have it at all. Here it loads after the resume check, so a refusal costs nothing.
    data = None if on_cluster else load_dataset(dataset, data_dir=data_dir)
    sitting = {
        "command": settings["command"],
        "date": settings["date"],
        "machine": settings["machine"],
        "jobs": jobs,
        "scheduler": scheduler if isinstance(scheduler, str) else None,
        "threads_per_run": per_run,
        "runs": 0,
        "interrupted": False,
    }
    result = Comparison(rows=[], settings=settings, runs=runs, sittings=[*sittings, sitting])
    result.rows = rows_from_runs(settings["methods"], runs, meta)

    # The plan: every requested pair without a kept run; the full-precision run of every seed
    # first. When runs that start from (or learn from) a seed's baseline remain but the baseline
    # itself was run in an earlier sitting, it is trained again for them (its trained model is
    # not stored) and must reproduce the stored record.
    stored = {(run["method"], run["seed"]): run for run in runs}
    kept = {key for key, run in stored.items() if run["status"] in KEPT_STATUSES}
    pending = [(n, s) for n in names for s in seed_values if (n, s) not in kept]

    def needs_baseline(name):
        return name != FULL_PRECISION and (start == "fp" or registry.requires_teacher(name))

    baseline_users = {s for n, s in pending if needs_baseline(n)}
    plan = []
    for seed in seed_values:
        if (FULL_PRECISION, seed) in pending:
            plan.append({"method": FULL_PRECISION, "seed": seed, "role": "row", "expected": None})
        elif seed in baseline_users:
            old = stored[(FULL_PRECISION, seed)]
            state = None if baselines is None else load_baseline(baselines, old)
            role = "baseline" if state is None else "stored"
            task = {"method": FULL_PRECISION, "seed": seed, "role": role, "expected": old}
            if state is not None:
                task["state"] = state
            plan.append(task)
    plan += [
        {"method": n, "seed": s, "role": "row", "expected": None}
        for n, s in pending
        if n != FULL_PRECISION
    ]
    for task in plan:
        task["measure_packed"] = task["role"] == "row" and task["seed"] == packed_seed
        task["return_state"] = task["method"] == FULL_PRECISION and (
            task["seed"] in baseline_users or baselines is not None
        )

    def keep_state(task, record, state):
        # a baseline trained in this sitting (not one loaded, not one that did not reproduce)
        if baselines is not None and state is not None and task["role"] != "stored":
            save_baseline(baselines, record, state)

    n_runs, finished = len(plan), 0
    bar = progress_bar(
        enabled=progress,
        total=n_runs if on_cluster else n_runs * epochs,
        desc="compare",
        unit="run" if on_cluster else "epoch",
    )

    def handle(task, record):
        nonlocal finished
        finished += 1
        name, seed = task["method"], task["seed"]
        if record["status"] == "ok":
            outcome = f"test accuracy {100 * record['accuracy']:.2f} %"
        else:
            outcome = f"{record['status']}: {record['error']}"
        if task["role"] == "stored":
            outcome = (
                f"loaded from {baseline_path(baselines, seed)} (test accuracy "
                f"{100 * record['accuracy']:.2f} %) for the runs that need it"
            )
        elif task["role"] == "baseline":
            verdict = (
                ""
                if record["status"] != "ok"
                else "; reproduces the stored run"
                if record.get("reproduces")
                else "; DIFFERS from the stored run"
            )
            outcome += f" (trained again for the runs that need it{verdict})"
        if on_cluster:
            bar.update(1)
            bar.set_postfix(method=name, seed=seed)
            if record.get("worker"):
                outcome += f" [{record['worker']}]"
        progress_line(
            f"compare [{finished}/{n_runs}] {name} seed {seed}: {outcome}",
            enabled=progress,
            file=sys.stderr,
        )
        if task["role"] != "row":
            return
        key = (name, seed)
        result.runs[:] = [r for r in result.runs if (r["method"], r["seed"]) != key]
        result.runs.append(record)
        sitting["runs"] += 1
        result.rows = rows_from_runs(settings["methods"], result.runs, meta)
        if on_row is not None:
            on_row(result)

    try:
        if on_cluster:
            _run_on_cluster(
                plan,
                handle,
                dataset,
                data_dir,
                args,
                start,
                per_run,
                jobs,
                scheduler,
                connect_timeout,
                needs_baseline,
                sitting,
                keep_state,
            )
        else:
            _run_here(plan, handle, data, args, start, threads, epochs, bar, keep_state)
    except KeyboardInterrupt:
        result.interrupted = sitting["interrupted"] = True
    finally:
        bar.close()
    return result


def _run_here(plan, handle, data, args, start, threads, epochs, bar, keep_state) -> None:
    """Run the plan in this process, in order (the default, no Dask)."""
    from ternref._distributed import limited_threads

    fp_models, fp_problems = {}, {}
    with limited_threads(threads):
        for task in plan:
            name, seed = task["method"], task["seed"]
            if task["role"] == "stored":  # a baseline saved by an earlier sitting
                fp_models[seed] = model_from_state(args["model"], data, task["state"])
                bar.update(epochs)
                handle(task, task["expected"])
                continue
            done_before = bar.n
            record, model = execute_run(
                name,
                data,
                args,
                seed,
                bar,
                fp_models.get(seed),
                start,
                measure_packed=task["measure_packed"],
                fp_problem=fp_problems.get(seed),
                expected=task["expected"],
            )
            if name == FULL_PRECISION:
                if model is not None and record.get("reproduces", True):
                    fp_models[seed] = model  # the start and the teacher of this seed's runs
                    if task["return_state"]:
                        keep_state(task, record, model_state(model))
                else:
                    fp_problems[seed] = baseline_problem(record)
            bar.update(epochs - (bar.n - done_before))  # a failed run skips its epochs
            record["threads"] = thread_report()
            handle(task, record)


def _run_on_cluster(
    plan,
    handle,
    dataset,
    data_dir,
    args,
    start,
    threads,
    jobs,
    scheduler,
    connect_timeout,
    needs_baseline,
    sitting,
    keep_state,
) -> None:
    """Run the plan on a Dask cluster (see :mod:`ternref._distributed`)."""
    import contextlib

    import ternref
    from ternref import _distributed
    from ternref.methods import base

    if jobs is not None:
        context = _distributed.local_cluster(jobs, threads)
    elif isinstance(scheduler, str):
        context = _distributed.connect(scheduler, connect_timeout)
    else:
        context = contextlib.nullcontext(scheduler)

    def spec_of(task):
        name = task["method"]
        return {
            "method": name,
            "seed": task["seed"],
            "dataset": dataset,
            "data_dir": None if data_dir is None else os.fspath(data_dir),
            "args": args,
            "start": start,
            "threads": threads,
            "measure_packed": task["measure_packed"],
            "expected": task["expected"],
            "return_state": task["return_state"],
            "method_class": None if name == FULL_PRECISION else base._METHODS[name],
            "ternref": ternref.__version__,
        }

    def depends_on(task):
        return task["seed"] if needs_baseline(task["method"]) else None

    with context as client:
        if sitting["scheduler"] is None and jobs is None:
            sitting["scheduler"] = client.scheduler.address
        _distributed.run(
            client, plan, handle, spec_of=spec_of, depends_on=depends_on, on_state=keep_state
        )


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
