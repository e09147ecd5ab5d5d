"""Helpers for ternref.pretrained tests: a tiny BERT model folder in the all-MiniLM-L6-v2 layout.

The tiny folder (2 layers, width 32, a 70-token WordPiece vocabulary of letters) is written by
the test itself with the same libraries the loader reads with (``safetensors``,
``tokenizers``), so the loader, the PTQ table and the distillation can be tested without the
90 MB model. Tests that need the real model use ``real_minilm``, skipped with the reason when
the package is not installed.
"""

import json
import string

import numpy as np

from ternref.nn import BertEncoder

TINY = {
    "vocab_size": 70,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 40,
    "type_vocab_size": 2,
}
TINY_MAX_SEQ = 24


def tiny_vocab() -> dict:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    tokens += list(".,!?;:'\"-()0123456789")[: TINY["vocab_size"] - len(tokens)]
    assert len(tokens) == TINY["vocab_size"]
    return {t: i for i, t in enumerate(tokens)}


def tiny_encoder(seed: int = 0, dtype=np.float32) -> BertEncoder:
    """A random encoder of the tiny shape, LayerNorms perturbed away from (1, 0)."""
    rng = np.random.default_rng(seed)
    enc = BertEncoder(
        TINY["vocab_size"], dim=32, n_layers=2, n_heads=4, ffn_dim=64, max_position=40,
        init_std=0.2, rng=rng, dtype=dtype,
    )  # fmt: skip
    for name, p in enc.hf_tensors().items():
        if "LayerNorm" in name or name.endswith("bias"):
            p.data[...] += 0.1 * rng.standard_normal(p.data.shape)
    return enc


def write_tiny_model(folder, encoder=None, *, tensors=None, config=None) -> dict:
    """Write a model folder; returns the tensors written ({name: array})."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    folder.mkdir(parents=True, exist_ok=True)
    encoder = tiny_encoder() if encoder is None else encoder
    if tensors is None:
        tensors = {k: np.ascontiguousarray(p.data) for k, p in encoder.hf_tensors().items()}
        tensors["embeddings.position_ids"] = np.arange(40, dtype=np.int64)[None]
        tensors["pooler.dense.weight"] = np.zeros((32, 32), np.float32)
        tensors["pooler.dense.bias"] = np.zeros(32, np.float32)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = {"model_type": "bert", "hidden_act": "gelu", "layer_norm_eps": 1e-12, **TINY}
    cfg.update(config or {})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": TINY_MAX_SEQ, "do_lower_case": False})
    )
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    )
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"type": "sentence_transformers.models.Transformer"},
                {"type": "sentence_transformers.models.Pooling"},
                {"type": "sentence_transformers.models.Normalize"},
            ]
        )  # fmt: skip
    )
    tok = Tokenizer(models.WordPiece(tiny_vocab(), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )  # fmt: skip
    # as the shipped file: truncation and padding entries that the loader must override
    tok.enable_truncation(8)
    tok.enable_padding(length=8)
    tok.save(str(folder / "tokenizer.json"))
    return tensors
