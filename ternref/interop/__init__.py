"""Other ecosystems' files: ternref models as GGUF (llama.cpp's format), and GGUF files read back.

:func:`save_gguf` writes a trained or packed ternref ``Sequential`` with every ternary layer as a
TQ2_0 or TQ1_0 tensor and metadata that says what each tensor is; :func:`load_gguf` rebuilds the
model; :func:`read_tensors` reads any GGUF's tensors (ternary ones as exact
:class:`~ternref.Ternary` objects). The block layouts are in :mod:`ternref.interop.tq`, the file
mapping and what maps exactly in :mod:`ternref.interop.gguf_io`. A
:class:`~ternref.nn.TransformerLM` goes to and comes from llama.cpp's ``llama`` architecture
(:mod:`ternref.interop.llama`: TQ projections, RoPE row order, a byte vocabulary), and a
BitNet b1.58 LM with shared SubLNs to and from llama.cpp's ``bitnet`` architecture
(:mod:`ternref.interop.bitnet`);
:mod:`ternref.interop.tokenizer` rebuilds a GGUF's BPE tokenizer with ``tokenizers``;
:mod:`ternref.interop.q8k` reproduces llama.cpp's Q8_K activation quantization.

Needs the optional ``gguf`` package: ``pip install "ternref[gguf]"`` (importing this package
works without it; the functions raise ImportError saying so).
"""

from ternref.interop.bitnet import pack_bitnet, read_bitnet, save_bitnet
from ternref.interop.gguf_io import (
    ExportReport,
    TensorReport,
    load_gguf,
    read_metadata,
    read_tensors,
    save_gguf,
)
from ternref.interop.llama import (
    pack_projections,
    perplexity,
    projection_layers,
    read_llama,
    save_llama,
    set_projection_weights,
    ternarize,
)

__all__ = [
    "ExportReport",
    "pack_bitnet",
    "read_bitnet",
    "save_bitnet",
    "TensorReport",
    "load_gguf",
    "read_metadata",
    "read_tensors",
    "save_gguf",
    "pack_projections",
    "perplexity",
    "projection_layers",
    "read_llama",
    "save_llama",
    "set_projection_weights",
    "ternarize",
]
