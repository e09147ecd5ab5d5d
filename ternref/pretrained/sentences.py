"""Sentences from the embedded text (Jane Austen's novels), split deterministically.

The held-out sentences of the MiniLM experiments and the unlabelled training sentences of its
distillation come from :func:`ternref.data.load_text` (all six novels when Debian's
``r-cran-janeaustenr`` is installed, else the embedded *Pride and Prejudice*), split by the
byte rule of that module: the last 10 % of the text is held out, the rest is for training.

The rule, applied to each split's text separately (nothing random):

1. Paragraphs are the pieces between blank lines; inside one, line breaks become spaces, runs of
   white space one space, and the ``_`` italics markers of the Project Gutenberg text go.
2. A sentence ends after ``.``, ``!`` or ``?`` (possibly several, possibly followed by closing
   quotes or brackets) that is followed by white space and then an upper-case letter or an
   opening quote, unless the word before the ``.`` is a title abbreviation (``Mr.``, ``Mrs.``,
   ``Dr.``, ... ``ABBREVIATIONS``). A paragraph's end ends a sentence too.
3. Kept: sentences of ``min_words`` to ``max_words`` words (white-space separated), first
   occurrence only. The first sentence of the held-out split and the last of the training split
   are dropped (the byte cut falls inside a sentence), and a held-out sentence that also occurs
   in the training split is dropped, so no held-out sentence is ever trained on.
"""

from __future__ import annotations

import os
import re

from ternref._validate import integer, one_of
from ternref.data.text import load_text

__all__ = ["ABBREVIATIONS", "split_sentences", "corpus_sentences"]

#: Words after which a full stop does not end a sentence.
ABBREVIATIONS = frozenset({"Mr", "Mrs", "Dr", "St", "Col", "Capt", "Esq", "Messrs", "Mess", "Rev"})

# end punctuation, optional closing quotes/brackets, white space, then an upper-case start
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z])")
_LAST_WORD = re.compile(r"([A-Za-z]+)\.$")


def _paragraphs(text: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        para = " ".join(block.replace("_", "").split())
        if para:
            out.append(para)
    return out


def split_sentences(text: str) -> list[str]:
    """Every sentence of ``text`` by rules 1 and 2 of the module docstring, in order."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    sentences = []
    for para in _paragraphs(text):
        start = 0
        for match in _BOUNDARY.finditer(para):
            head = para[start : match.start() + 1]
            word = _LAST_WORD.search(head)
            if word and word.group(1) in ABBREVIATIONS and para[match.start()] == ".":
                continue
            sentences.append(para[start : match.end()].strip())
            start = match.end()
        tail = para[start:].strip()
        if tail:
            sentences.append(tail)
    return sentences


def _keep(sentences, min_words: int, max_words: int, exclude=frozenset()) -> list[str]:
    seen, out = set(exclude), []
    for s in sentences:
        n = len(s.split())
        if min_words <= n <= max_words and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def corpus_sentences(
    split: str = "valid",
    text: str = "austen",
    *,
    min_words: int = 5,
    max_words: int = 60,
    janeaustenr_dir: str | os.PathLike | None = None,
) -> list[str]:
    """The sentences of one split of an embedded text (rule 3 of the module docstring).

    Parameters
    ----------
    split : {"valid", "train"}
        The held-out part (the last 10 % of the bytes) or the training part.
    text : str, default "austen"
        A name :func:`ternref.data.load_text` accepts ("austen" needs the R package
        janeaustenr; "prideprejudice" is embedded in ternref).
    min_words, max_words : int
        Sentence length bounds in words.
    janeaustenr_dir : path, optional
        Passed to :func:`ternref.data.load_text`.

    Returns
    -------
    list of str
        In text order. For "austen": 2,832 held-out and 24,973 training sentences with the
        defaults (Debian r-cran-janeaustenr 1.0.0-1).
    """
    one_of(split, "split", ("valid", "train"))
    min_words = integer(min_words, "min_words", low=1)
    max_words = integer(max_words, "max_words", low=min_words)
    corpus = load_text(text, janeaustenr_dir=janeaustenr_dir)
    train = split_sentences(bytes(corpus.train).decode("utf-8"))[:-1]
    kept_train = _keep(train, min_words, max_words)
    if split == "train":
        return kept_train
    valid = split_sentences(bytes(corpus.valid).decode("utf-8"))[1:]
    return _keep(valid, min_words, max_words, exclude=frozenset(train))
