"""Byte-level language models on the embedded text: train, evaluate, save, generate.

* :mod:`ternref.lm.schedule`: AdamW and BitNet b1.58's two-stage learning rate and weight decay
  (the FAQ's numbers are in its docstring), global gradient-norm clipping;
* :mod:`ternref.lm.training`: the training loop over token batches and bits per byte on the
  held-out split;
* :mod:`ternref.lm.run`: one run from its settings (what ``ternref lm train`` does), with
  checkpoints to resume;
* :mod:`ternref.lm.io`: the ``ternref-lm`` file (npz + JSON header, validated on load);
* :mod:`ternref.lm.packed`: :func:`pack_lm`, the packed inference copy of a ternary model
  (BitNet b1.58 as W1.58A8: SubLN in float, int8 activations, the i2 kernels).

The models are :class:`ternref.nn.TransformerLM`; BitNet b1.58 and the other ternary methods
attach to them with :func:`ternref.methods.bitlinear.quantize_transformer`.
"""

from ternref.lm.io import StoredTernary, load_lm, save_lm
from ternref.lm.packed import PackedBitLinear, pack_lm, pack_projection
from ternref.lm.run import LMSettings, prepare, run
from ternref.lm.schedule import TwoStageSchedule, adamw, clip_grad_norm
from ternref.lm.training import LMHistory, evaluate_bpb, train_lm


def generate_text(model, prompt: str, n_new: int, greedy: bool = True, temperature: float = 1.0,
                  rng=None) -> str:  # fmt: skip
    """Continue ``prompt`` by ``n_new`` bytes with the model's KV-cache generation.

    The prompt is encoded as UTF-8 bytes (a byte-level model's tokens); the result is the
    prompt followed by the new bytes, decoded with invalid UTF-8 replaced by U+FFFD. Raises
    ``ValueError`` for an empty prompt or when prompt + ``n_new`` exceed the model's context.
    """
    from ternref.data.text import decode, encode

    ids = encode(prompt)
    if ids.size == 0:
        raise ValueError("prompt must not be empty (the model needs at least one byte)")
    if ids.size + n_new > model.max_seq_len:
        raise ValueError(
            f"prompt of {ids.size} bytes + {n_new} new bytes exceeds the model's context of "
            f"{model.max_seq_len}; shorten the prompt or ask for fewer bytes"
        )
    out = model.generate(ids[None, :].astype(int), n_new, greedy=greedy,
                         temperature=temperature, rng=rng)  # fmt: skip
    return decode(out[0])


__all__ = [
    "LMHistory",
    "LMSettings",
    "PackedBitLinear",
    "StoredTernary",
    "TwoStageSchedule",
    "adamw",
    "clip_grad_norm",
    "evaluate_bpb",
    "generate_text",
    "load_lm",
    "pack_lm",
    "pack_projection",
    "prepare",
    "run",
    "save_lm",
    "train_lm",
]
