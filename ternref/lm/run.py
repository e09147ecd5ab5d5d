"""One language-model training run from its settings: what ``ternref lm train`` does.

:class:`LMSettings` holds everything that defines a run (model size, method, budget, learning
rate, seed); :func:`run` builds the model, attaches the method, trains with AdamW and the
two-stage schedule, evaluates bits per byte on the whole held-out split, and saves the model.

Randomness: three generators spawned from ``seed`` (``numpy.random.SeedSequence``): model
initialisation, training batches, and a spare one for the method. The same settings give the
same numbers.

Checkpoints (``checkpoint=PATH``): at every evaluation the run writes PATH (an ``.npz`` with
every optimizer parameter, Adam's moments and step counts, the batch generator's state and the
step reached, plus a JSON header with the settings). ``resume=True`` rebuilds the same model
and method from the settings, restores all of that and continues from the step reached, so an
interrupted run ends where an uninterrupted one would (up to the method's own in-memory state
that is not a parameter: LAT_a's previous codes, TernaryStats' previous codes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ternref import _validate
from ternref.data.text import TextCorpus, load_text
from ternref.lm.schedule import TwoStageSchedule, adamw
from ternref.lm.training import LMHistory, evaluate_bpb, train_lm
from ternref.nn.transformer import TransformerLM

#: Peak learning rates of ternref's defaults. Not tuned by a sweep (the shared machine did not
#: allow one): 2e-3 is a usual Adam rate for a model of a few million parameters trained on
#: small batches, and ternary methods get twice that, since the FAQ found that 1.58-bit models
#: need and tolerate a higher rate than float ones (it used about 6x at 700M parameters).
DEFAULT_LR = {"float": 2e-3, "ternary": 4e-3}


@dataclass
class LMSettings:
    """Everything that defines a training run (the CLI's options)."""

    method: str | None = None  # None: full precision
    hyperparameters: dict = field(default_factory=dict)
    bitlinear: bool | None = None  # None: BitLinear for bitnet only
    subln: str = "projection"  # "shared": llama.cpp bitnet placement (quantize_transformer)
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4
    ffn_dim: int | None = None
    context: int = 128
    batch_size: int = 16
    steps: int = 400
    lr: float | None = None  # None: DEFAULT_LR
    warmup: int | None = None  # None: 5 % of the steps
    weight_decay: float = 0.1
    two_stage: bool | None = None  # None: two stages for ternary methods, one for float
    clip: float | None = 1.0
    seed: int = 0
    text: str | None = None  # a TEXTS name; None: the embedded novel
    text_path: str | None = None
    eval_every: int = 100
    eval_bytes: int = 8192

    def resolved(self) -> LMSettings:
        """A copy with every ``None`` default replaced by its value."""
        s = dataclasses.replace(self, hyperparameters=dict(self.hyperparameters))
        ternary = s.method is not None
        if s.lr is None:
            s.lr = DEFAULT_LR["ternary" if ternary else "float"]
        if s.warmup is None:
            s.warmup = max(1, round(0.05 * s.steps)) if s.steps > 1 else 0
        if s.two_stage is None:
            s.two_stage = ternary
        return s

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_model(s: LMSettings, vocab_size: int, rng: np.random.Generator) -> TransformerLM:
    return TransformerLM(vocab_size, dim=s.dim, n_layers=s.n_layers, n_heads=s.n_heads,
                         n_kv_heads=s.n_kv_heads, ffn_dim=s.ffn_dim, max_seq_len=s.context,
                         rng=rng)  # fmt: skip


def load_corpus(s: LMSettings) -> TextCorpus:
    if s.text_path is not None:
        return load_text(path=s.text_path)
    return load_text(s.text)


@dataclass
class Prepared:
    """A model ready to train: the method attached, optimizer and schedule built."""

    settings: LMSettings
    corpus: TextCorpus
    model: TransformerLM
    method: object
    callbacks: list
    optimizer: object
    schedule: TwoStageSchedule
    batch_rng: np.random.Generator


def prepare(settings: LMSettings) -> Prepared:
    """Build model, method, optimizer and schedule from ``settings`` (deterministic)."""
    s = settings.resolved()
    _validate.integer(s.steps, "steps", low=1)
    corpus = load_corpus(s)
    if s.context >= corpus.split:
        raise ValueError(f"context={s.context} is too long for a training split of "
                         f"{corpus.split} bytes")  # fmt: skip
    init_rng, batch_rng, _ = (np.random.default_rng(q)
                              for q in np.random.SeedSequence(s.seed).spawn(3))  # fmt: skip
    model = build_model(s, corpus.vocab_size, init_rng)
    method, callbacks = None, []
    if s.method is not None:
        from ternref import methods
        from ternref.methods.bitlinear import quantize_transformer

        method = methods.get(s.method, **s.hyperparameters)
        callbacks = quantize_transformer(model, method, bitlinear=s.bitlinear, subln=s.subln)
    elif s.hyperparameters:
        raise ValueError("hyper-parameters need a method")
    optimizer = adamw(model, s.lr, s.weight_decay)
    schedule = TwoStageSchedule(optimizer, s.steps, s.lr, warmup=s.warmup,
                                weight_decay=s.weight_decay, two_stage=s.two_stage)  # fmt: skip
    return Prepared(s, corpus, model, method, callbacks, optimizer, schedule, batch_rng)


# ----------------------------------------------------------------------------- checkpoints

CHECKPOINT_FORMAT = "ternref-lm-checkpoint"


def save_checkpoint(path, p: Prepared, step: int, evals: list) -> None:
    """Write the state needed to continue ``p`` from ``step`` (see the module docstring)."""
    arrays = {}
    for i, param in enumerate(p.optimizer.parameters()):
        arrays[f"param.{i}"] = param.data
        state = p.optimizer.state_for(param)
        if state:
            arrays[f"m.{i}"], arrays[f"v.{i}"] = state["m"], state["v"]
            arrays[f"step.{i}"] = np.array(state["step"], dtype=np.int64)
    header = {"format": CHECKPOINT_FORMAT, "version": 1, "settings": p.settings.to_dict(),
              "step": step, "rng": p.batch_rng.bit_generator.state, "evals": evals}  # fmt: skip
    raw = np.frombuffer(json.dumps(header, default=int).encode(), dtype=np.uint8)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, __header__=raw, **arrays)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def restore_checkpoint(path, p: Prepared) -> tuple[int, list]:
    """Load a checkpoint of the same settings into ``p``; return (step reached, evals)."""
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["__header__"].tobytes().decode())
        if header.get("format") != CHECKPOINT_FORMAT or header.get("version") != 1:
            raise ValueError(f"{path} is not a ternref-lm checkpoint")
        saved = dict(header["settings"])
        # checkpoints written before the subln setting existed trained the default placement
        saved.setdefault("subln", "projection")
        if saved != p.settings.to_dict():
            raise ValueError(f"{path} was written by a run with other settings: "
                             f"{header['settings']}")  # fmt: skip
        for i, param in enumerate(p.optimizer.parameters()):
            data = npz[f"param.{i}"]
            if data.shape != param.data.shape:
                raise ValueError(f"{path}: parameter {i} has shape {data.shape}, expected "
                                 f"{param.data.shape}")  # fmt: skip
            param.data[...] = data
            if f"m.{i}" in npz.files:
                state = p.optimizer.state_for(param)
                state["m"], state["v"] = npz[f"m.{i}"].copy(), npz[f"v.{i}"].copy()
                state["step"] = int(npz[f"step.{i}"])
        p.batch_rng.bit_generator.state = header["rng"]
    return int(header["step"]), list(header["evals"])


# ----------------------------------------------------------------------------- the run


def run(settings: LMSettings, *, save: str | None = None, checkpoint: str | None = None,
        resume: bool = False, progress: bool = True, log_file=None,
        metadata: dict | None = None) -> dict:  # fmt: skip
    """Train, evaluate on the whole held-out split, optionally save; return a result dict."""
    from ternref.lm.io import save_lm

    p = prepare(settings)
    s = p.settings
    start_step, evals = 0, []
    if resume:
        if checkpoint is None or not os.path.exists(checkpoint):
            raise FileNotFoundError(f"resume needs an existing checkpoint, got {checkpoint!r}")
        start_step, evals = restore_checkpoint(checkpoint, p)

    def on_eval(step, record):
        evals.append({k: v for k, v in record.items() if k != "layers"})
        if checkpoint is not None:
            save_checkpoint(checkpoint, p, step, evals)

    history: LMHistory = train_lm(
        p.model, p.corpus, p.optimizer, p.schedule, steps=s.steps, batch_size=s.batch_size,
        context=s.context, rng=p.batch_rng, callbacks=p.callbacks, clip=s.clip,
        eval_every=s.eval_every, eval_bytes=s.eval_bytes, progress=progress,
        log_file=log_file, start_step=start_step, on_eval=on_eval,
    )  # fmt: skip
    final = evaluate_bpb(p.model, p.corpus, s.context)
    n_params = sum(q.data.size for q in p.model.parameters())
    result = {
        "settings": s.to_dict(),
        "text": p.corpus.name,
        "parameters": int(n_params),
        "heldout_bytes": final["bytes"],
        "bits_per_byte": final["bits_per_byte"],
        "train_tokens": s.steps * s.batch_size * s.context,
        "tokens_per_second": history.tokens_per_second,
        "train_seconds": history.seconds,
        "last_train_loss": history.steps[-1]["loss"] if history.steps else None,
        "evals": evals,
        "schedule": p.schedule.describe(),
    }
    last = evals[-1] if evals else {}
    if "sparsity" in last:
        result["sparsity"] = last["sparsity"]
    if save is not None:
        save_lm(
            save,
            p.model,
            p.method,
            metadata={
                **(metadata or {}),
                **{k: result[k] for k in ("bits_per_byte", "text", "train_tokens", "settings")},
            },
        )
        result["saved"] = save
    return result
