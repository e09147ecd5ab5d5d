"""A GGUF file's own BPE tokenizer, rebuilt with Hugging Face's ``tokenizers`` library.

A GGUF language model carries its vocabulary: ``tokenizer.ggml.model`` (``"gpt2"`` for
byte-level BPE), ``tokenizer.ggml.tokens`` (token texts, id = position),
``tokenizer.ggml.token_type`` (1 normal, 3 control, 4 user-defined, ...),
``tokenizer.ggml.merges`` (``"left right"`` strings, highest priority first) and
``tokenizer.ggml.pre``, the name of llama.cpp's pre-tokenizer (``llama_vocab::impl::load`` in
``src/llama-vocab.cpp`` maps it to a list of regular expressions that cut the text into words
before BPE runs on each). :func:`gguf_tokenizer` rebuilds that pipeline from those fields:

* pre-tokenizer, by ``tokenizer.ggml.pre`` (only the ones whose llama.cpp expressions have an
  exact ``tokenizers`` equivalent are accepted; others are refused by name):

  - ``"gpt-2"``, ``"mpt"``, ``"olmo"`` (llama.cpp's ``LLAMA_VOCAB_PRE_TYPE_GPT2``): GPT-2's
    expression, ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|
    \\s+(?!\\S)`` (``ByteLevel(use_regex=True)``);
  - ``"smollm"``, ``"starcoder"``, ``"refact"``, ``"codeshell"``, ``"command-r"``: every digit
    alone (``\\p{N}``: ``Digits(individual_digits=True)``), then GPT-2's expression;
  - not ``"default"`` (or a missing key), which llama.cpp maps to four other expressions;

* bytes to GPT-2's printable unicode alphabet (``ByteLevel``), then BPE with the file's merges
  (no dropout, no unknown token: every byte is a token of a byte-level vocabulary);
* control (3) and user-defined (4) tokens as added tokens, matched whole before the rest
  (llama.cpp with ``parse_special=True``; the text ``"<|im_start|>"`` becomes one token);
* decoding: the ``ByteLevel`` decoder (printable alphabet back to bytes, then UTF-8).

No BOS or EOS is added (``tokenizer.ggml.add_bos_token`` is reported by
:func:`tokenizer_settings`; SmolLM2's is false). ``tests/interop/test_llama_tokenizer.py`` checks
the result against llama.cpp's own tokenizer on llama.cpp's tokenizer test inputs.

Needs the optional ``tokenizers`` package (``pip install "ternref[gguf]"``).

References
----------
A. Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2), 2019
(byte-level BPE, ``encoder.py``). R. Sennrich et al., "Neural Machine Translation of Rare Words
with Subword Units", ACL 2016, arXiv:1508.07909 (BPE).
"""

from __future__ import annotations

from ternref.interop import gguf_io

#: ``tokenizer.ggml.pre`` values and whether their llama.cpp expressions start with ``\p{N}``.
_PRE_TOKENIZERS = {
    "gpt-2": False,
    "mpt": False,
    "olmo": False,
    "smollm": True,
    "starcoder": True,
    "refact": True,
    "codeshell": True,
    "command-r": True,
}

_CONTROL, _USER_DEFINED = 3, 4


def require_tokenizers():
    """The ``tokenizers`` module, or ImportError saying how to install it."""
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError(
            "ternref.interop.tokenizer needs the optional 'tokenizers' package: "
            'pip install "ternref[gguf]"  (or: pip install tokenizers)'
        ) from e
    return tokenizers


def _fields(path) -> dict:
    reader = gguf_io._open(path)
    where = repr(str(path))
    meta = gguf_io._Metadata(reader, where)
    model = meta.get("tokenizer.ggml.model", "str")
    if model != "gpt2":
        meta.fail(f"tokenizer.ggml.model is {model!r}; gguf_tokenizer rebuilds byte-level BPE "
                  "('gpt2') vocabularies only")  # fmt: skip
    pre = meta.get("tokenizer.ggml.pre", "str", required=False) or "default (no key)"
    if pre not in _PRE_TOKENIZERS:
        meta.fail(f"tokenizer.ggml.pre {pre!r} has no exact tokenizers equivalent here "
                  f"(known: {sorted(_PRE_TOKENIZERS)})")  # fmt: skip
    tokens = meta.get("tokenizer.ggml.tokens", "strs")
    merges = meta.get("tokenizer.ggml.merges", "strs", required=False) or []
    types = meta.get("tokenizer.ggml.token_type", "ints", required=False) or [1] * len(tokens)
    if len(types) != len(tokens):
        meta.fail(f"{len(types)} token types for {len(tokens)} tokens")
    return {
        "tokens": tokens,
        "merges": merges,
        "types": types,
        "pre": pre,
        "add_bos": meta.get("tokenizer.ggml.add_bos_token", "bool", required=False),
        "bos": meta.get("tokenizer.ggml.bos_token_id", "int", required=False),
        "eos": meta.get("tokenizer.ggml.eos_token_id", "int", required=False),
        "fail": meta.fail,
    }


def tokenizer_settings(path) -> dict:
    """``pre``, ``add_bos``, ``bos``, ``eos`` of a GGUF file's tokenizer (None when absent)."""
    f = _fields(path)
    return {k: f[k] for k in ("pre", "add_bos", "bos", "eos")}


def gguf_tokenizer(path):
    """The ``tokenizers.Tokenizer`` of a GGUF file's byte-level BPE vocabulary.

    Parameters
    ----------
    path : str or os.PathLike
        A GGUF file with ``tokenizer.ggml.model = "gpt2"``.

    Returns
    -------
    tokenizers.Tokenizer
        ``encode(text, add_special_tokens=False).ids`` are the file's token ids;
        ``decode(ids)`` the text.

    Raises
    ------
    ValueError
        Another tokenizer model, an unknown pre-tokenizer, duplicate token texts, a merge that
        is not two tokens. (A merge whose result is not a token is dropped.)
    ImportError
        Without ``gguf`` or ``tokenizers``.
    """
    tk = require_tokenizers()
    from tokenizers import decoders, models, pre_tokenizers

    f = _fields(path)
    tokens = f["tokens"]
    vocab = {}
    for i, text in enumerate(tokens):
        if text in vocab:
            f["fail"](f"token text {text!r} appears twice (ids {vocab[text]} and {i})")
        vocab[text] = i
    merges = []
    for m in f["merges"]:
        left, sep, right = m.partition(" ")
        if not sep or left not in vocab or right not in vocab:
            f["fail"](f"merge {m!r} is not two tokens")
        if left + right in vocab:
            merges.append((left, right))
        # else: a merge into no token (ternref's byte vocabulary has one, never applicable);
        # tokenizers cannot hold it, and llama.cpp would split its result back into bytes
    tokenizer = tk.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _PRE_TOKENIZERS[f["pre"]]:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    special = [
        tk.AddedToken(tokens[i], special=True, normalized=False)
        for i, kind in enumerate(f["types"])
        if kind in (_CONTROL, _USER_DEFINED)
    ]
    if special:
        tokenizer.add_special_tokens(special)
    for t in special:  # adding must not have created new ids
        if tokenizer.token_to_id(t.content) != vocab[t.content]:
            raise ValueError(f"special token {t.content!r} got another id")  # pragma: no cover
    return tokenizer
