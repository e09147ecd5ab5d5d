"""The deterministic sentence split of the embedded text."""

import pytest

from ternref.data.text import find_janeaustenr
from ternref.pretrained.sentences import corpus_sentences, split_sentences


def test_split_rules():
    text = (
        'CHAPTER 1\n\nMr. Darcy came in. He bowed!  "Did he?" said\nMrs. Bennet; '
        '"_I_ never saw\nsuch a man."  And then? nothing.\n\nA new paragraph'
    )
    assert split_sentences(text) == [
        "CHAPTER 1",
        "Mr. Darcy came in.",  # no split after the abbreviation "Mr."
        "He bowed!",
        '"Did he?" said Mrs. Bennet; "I never saw such a man."',  # lines joined, _ removed
        "And then? nothing.",  # a lower-case start does not begin a sentence
        "A new paragraph",  # a paragraph's end ends a sentence
    ]


def test_split_refuses_bytes():
    with pytest.raises(TypeError, match="text must be a str"):
        split_sentences(b"bytes")


def test_embedded_novel_splits_are_disjoint_and_deterministic():
    valid = corpus_sentences("valid", "prideprejudice")
    train = corpus_sentences("train", "prideprejudice")
    assert valid == corpus_sentences("valid", "prideprejudice")
    assert len(valid) > 300 and len(train) > 3000
    assert not set(valid) & set(train)
    assert all(5 <= len(s.split()) <= 60 for s in valid + train)
    assert len(set(valid)) == len(valid)
    short = corpus_sentences("valid", "prideprejudice", min_words=1, max_words=4)
    assert short and all(len(s.split()) <= 4 for s in short)


@pytest.mark.skipif(find_janeaustenr() is None, reason="r-cran-janeaustenr is not installed")
def test_six_novels_give_enough_held_out_sentences():
    valid = corpus_sentences("valid")
    assert len(valid) == 2832 and len(corpus_sentences("train")) == 24973
    assert valid[0].startswith("He said he should not stay out long")  # Persuasion, ch. 5


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        corpus_sentences("test", "prideprejudice")
    with pytest.raises(ValueError, match="max_words"):
        corpus_sentences("valid", "prideprejudice", min_words=10, max_words=5)
