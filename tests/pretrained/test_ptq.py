"""Post-training ternarization of a BERT encoder by every projection, on the tiny model."""

import inspect

import numpy as np
import pytest

from ternref import projections
from ternref.pretrained import ptq

SENTENCES = [
    "a cat sat on the mat.", "the dog ran away!", "is it raining today?", "we went home late.",
    "she reads many books.", "he plays the piano well.", "they like cold tea.",
    "my friend lives far away.", "the sun is very hot.", "birds sing in trees.",
    "an apple a day.", "keep calm and carry on.", "the end of the story.", "quick brown fox.",
]  # fmt: skip


def test_specs_cover_every_weight_projection():
    specs = ptq.projection_specs()
    weight = [n for n in projections.names() if projections.get(n).input_kind == "weights"]
    assert sorted({s.name for s in specs}) == weight
    assert "sttn" not in weight and "terngrad" not in weight
    for name in weight:
        takes = "granularity" in inspect.signature(projections.get(name).fn).parameters
        grans = [s.granularity for s in specs if s.name == name]
        assert grans == (["tensor", "channel"] if takes else [None])
    with pytest.raises(ValueError, match="not a registered weight projection"):
        ptq.projection_specs(["sttn"])
    assert ptq.parse_spec("twn/channel") == ptq.ProjectionSpec("twn", "channel")
    assert ptq.parse_spec("twn") == ptq.ProjectionSpec("twn", "tensor")
    assert ptq.parse_spec("inq") == ptq.ProjectionSpec("inq", None)
    with pytest.raises(ValueError, match="granularities tensor, channel"):
        ptq.parse_spec("twn/group")


def test_ternarize_replaces_exactly_the_weight_matrices(tiny_model):
    enc = tiny_model.encoder
    before = {k: p.data.copy() for k, p in enc.hf_tensors().items()}
    spec = ptq.ProjectionSpec("twn", "channel")
    tern, ternaries = ptq.ternarize_encoder(enc, spec)
    matrices = ptq.weight_matrices(tern)
    assert len(matrices) == 6 * enc.n_layers == len(ternaries)
    for name, p in tern.hf_tensors().items():
        np.testing.assert_array_equal(enc.hf_tensors()[name].data, before[name])  # untouched
        if name in matrices:
            expected = projections.twn(before[name], granularity="channel").dense()
            np.testing.assert_array_equal(p.data, expected, err_msg=name)
            assert ternaries[name].granularity == "channel"
        else:
            np.testing.assert_array_equal(p.data, before[name], err_msg=name)  # kept float
    tern_e, t_e = ptq.ternarize_encoder(enc, spec, embeddings=True)
    table = tern_e.word_embeddings.weight.data
    assert len(t_e) == len(ternaries) + 3
    assert all(len(np.unique(np.abs(row))) <= 2 for row in table)  # {0, alpha_row}


def test_stochastic_projection_is_reproducible(tiny_model):
    spec = ptq.ProjectionSpec("tc", None)
    a = ptq.ternarize_encoder(tiny_model.encoder, spec, np.random.default_rng(3))[1]
    b = ptq.ternarize_encoder(tiny_model.encoder, spec, np.random.default_rng(3))[1]
    c = ptq.ternarize_encoder(tiny_model.encoder, spec, np.random.default_rng(4))[1]
    assert all(a[k] == b[k] for k in a)
    assert any(a[k] != c[k] for k in a)


def test_weight_stats_by_hand(tiny_model):
    enc = tiny_model.encoder
    _, ternaries = ptq.ternarize_encoder(enc, ptq.ProjectionSpec("twn", "tensor"))
    stats = ptq.weight_stats(enc, ternaries)
    errors, zeros, total = [], 0, 0
    for name, layer in ptq.weight_matrices(enc).items():
        w = layer.weight.data.astype(np.float64)
        errors.append(np.linalg.norm(w - ternaries[name].dense()) / np.linalg.norm(w))
        zeros += np.sum(ternaries[name].codes == 0)
        total += w.size
    assert stats["rel_err_mean"] == pytest.approx(np.mean(errors))
    assert stats["rel_err_max"] == pytest.approx(np.max(errors))
    assert stats["sparsity"] == pytest.approx(zeros / total)
    # 2 bits per code + one float32 scale per matrix
    assert stats["bits_per_weight"] == pytest.approx(2 + 32 * len(errors) / total)


def _unit(degrees):
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def test_retrieval_agreement_by_hand():
    ref = _unit([0, 10, 30, 90])  # nearest neighbours: 0->1, 1->0, 2->1, 3->2
    assert ptq.retrieval_agreement(ref, ref, k=1) == {"overlap": 1.0, "mrr": 1.0}
    other = _unit([0, 25, 10, 90])  # nearest: 0->2, 1->2, 2->0, 3->1; each ref top-1 is 2nd
    assert ptq.retrieval_agreement(ref, other, k=1) == {"overlap": 0.0, "mrr": 0.5}
    assert ptq.retrieval_agreement(ref, other, k=2)["overlap"] == 1.0  # same two, other order
    with pytest.raises(ValueError, match="k"):
        ptq.retrieval_agreement(ref, other, k=4)


def test_packed_layers_are_within_the_int8_bound(tiny_model):
    spec = ptq.ProjectionSpec("twn", "channel")
    tern, ternaries = ptq.ternarize_encoder(tiny_model.encoder, spec)
    ids, mask = tiny_model.batch_ids(SENTENCES)
    check = ptq.layer_int8_check(tern, ternaries, ids, mask)
    assert 0.0 < check["bound_ratio"] <= 1.0  # nonzero: int8 does round; <= 1: the bound holds
    assert check["max_rel_vs_int8_dense"] < 1e-6  # packing itself changes nothing


def test_packed_encoder_matches_its_dense_int8_twin(tiny_model):
    tern, ternaries = ptq.ternarize_encoder(tiny_model.encoder, ptq.ProjectionSpec("twn", "tensor"))
    packed = ptq.packed_encoder(tern, ternaries)
    e_packed = tiny_model.encode(SENTENCES, encoder=packed)
    e_dense = tiny_model.encode(SENTENCES, encoder=ptq.int8_dense_encoder(tern))
    e_tern = tiny_model.encode(SENTENCES, encoder=tern)
    np.testing.assert_allclose(e_packed, e_dense, atol=ptq.PACKED_ATOL)
    assert np.abs(e_packed - e_tern).max() > 10 * ptq.PACKED_ATOL  # int8 is not a no-op
    assert np.min(np.sum(e_packed * e_tern, axis=1)) > 0.99
    with pytest.raises(NotImplementedError, match="inference-only"):
        packed.layers[0].attention.q_proj.backward(np.zeros((1, 32)))


def test_ptq_table_on_the_tiny_model(tiny_model):
    specs = [ptq.ProjectionSpec("twn", "tensor"), ptq.ProjectionSpec("inq", None),
             ptq.ProjectionSpec("exact", "channel")]  # fmt: skip
    lines = []
    report = ptq.ptq_minilm(tiny_model, SENTENCES, specs=specs, packed="twn",
                            packed_sentences=12, log=lines.append)  # fmt: skip
    assert len(report.rows) == 3 == len(lines)
    by = {(r.projection, r.granularity): r for r in report.rows}
    exact = by["exact", "channel"]
    twn = by["twn", "tensor"]
    assert exact.rel_err_mean <= twn.rel_err_mean  # exact least squares per row beats TWN
    for r in report.rows:
        assert 0 <= r.sparsity <= 1 and r.bits_per_weight >= 2
        assert -1 <= r.cosine <= 1 and 0 <= r.overlap10 <= 1 and 0 < r.mrr <= 1
    table = ptq.format_table(report)
    cosines = [float(line.split("|")[7]) for line in table.splitlines()[2:5]]
    assert cosines == sorted(cosines, reverse=True)
    assert report.packed["layers"]["bound_ratio"] <= 1.0
    assert "sentences/s" in table and report.to_dict()["settings"]["sentences"] == 14
    with pytest.raises(ValueError, match="at least 12 sentences"):
        ptq.ptq_minilm(tiny_model, SENTENCES[:5], specs=specs)
