"""The ternref-lm file: round trips for float and ternary models (the loaded model's forward is
the saved model's evaluation forward), and every refusal of a damaged or unknown file."""

import json

import numpy as np
import pytest

from ternref import methods
from ternref.data.text import load_text
from ternref.lm import StoredTernary, generate_text, load_lm, save_lm
from ternref.methods.bitlinear import BitLinear, Identity, quantize_transformer
from ternref.nn import TransformerLM


def tiny(tie=True):
    return TransformerLM(
        256,
        dim=16,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=24,
        max_seq_len=16,
        tie_embeddings=tie,
        rng=np.random.default_rng(0),
    )


def trained(name, tie=True, **kw):
    """A model with a method attached and a few Adam steps (so LAT's D is not all ones)."""
    from ternref.lm import TwoStageSchedule, adamw, train_lm

    model = tiny(tie)
    method = methods.get(name, **kw) if name else None
    callbacks = quantize_transformer(model, method) if method else []
    opt = adamw(model, 3e-3)
    train_lm(model, load_text(), opt, TwoStageSchedule(opt, 3, 3e-3), steps=3, batch_size=2,
             context=16, rng=np.random.default_rng(1), callbacks=callbacks, progress=False,
             eval_bytes=32)  # fmt: skip
    return model, method


IDS = np.random.default_rng(2).integers(0, 256, (2, 12))


@pytest.mark.parametrize("name, tie", [(None, True), (None, False), ("bitnet", True),
                                       ("twn", True), ("ttq", False), ("lat", True),
                                       ("residual", True)])  # fmt: skip
def test_round_trip_reproduces_the_evaluation_forward(tmp_path, name, tie):
    model, method = trained(name, tie)
    model.eval()
    expected = model(IDS)
    path = tmp_path / "m.npz"
    save_lm(path, model, method, metadata={"note": "test"})
    loaded, header = load_lm(path)
    np.testing.assert_array_equal(loaded(IDS), expected)
    assert header["metadata"] == {"note": "test"}
    assert (header["method"] or {}).get("name") == name
    if name is not None:
        q = loaded.blocks[0].attn.q_proj.weight_quantizer
        assert isinstance(q, StoredTernary)
        with pytest.raises(RuntimeError, match="cannot be trained"):
            q.backward(np.zeros(q.terms[0].shape))
    if name == "bitnet":
        assert isinstance(loaded.blocks[0].attn.q_proj, BitLinear)
        assert isinstance(loaded.blocks[1].ffn_norm, Identity)
        # the codes in the file are the layer's to_ternary(): ready for a packed export
        np.testing.assert_array_equal(
            loaded.blocks[1].ffn.down_proj.to_ternary().codes,
            model.blocks[1].ffn.down_proj.to_ternary().codes,
        )
    # a loaded model generates as the saved one does (greedy)
    assert generate_text(loaded, "The", 5) == generate_text(model, "The", 5)
    save_lm(tmp_path / "again.npz", loaded, None)  # a loaded model can be saved again
    np.testing.assert_array_equal(load_lm(tmp_path / "again.npz")[0](IDS), expected)


def rewrite(path, out, header_fn=None, arrays_fn=None):
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["__header__"].tobytes().decode())
        arrays = {k: npz[k] for k in npz.files if k != "__header__"}
    if header_fn:
        header_fn(header)
    if arrays_fn:
        arrays_fn(arrays)
    raw = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(out, "wb") as f:
        np.savez(f, __header__=raw, **arrays)
    return out


@pytest.fixture(scope="module")
def bitnet_file(tmp_path_factory):
    model, method = trained("bitnet")
    path = tmp_path_factory.mktemp("lm") / "bitnet.npz"
    save_lm(path, model, method)
    return path


def _set(key, value):
    def f(h):
        h[key] = value

    return f


def _codes(value):
    def f(a):
        a["blk.0.attn.q_proj.term0.codes"] = np.full_like(a["blk.0.attn.q_proj.term0.codes"],
                                                          value)  # fmt: skip

    return f


@pytest.mark.parametrize(
    "header_fn, arrays_fn, match",
    [
        (_set("format", "ternref-packed"), None, "format"),
        (_set("version", 2), None, "version"),
        (_set("extra", 1), None, "unknown keys"),
        (lambda h: h["config"].update(dim=0), None, "config"),
        (lambda h: h["config"].pop("norm_eps"), None, "missing keys"),
        (lambda h: h["projections"]["blk.0.attn.q_proj"].update(kind="conv"), None, "invalid"),
        (lambda h: h["projections"].pop("blk.1.ffn.up_proj"), None, "missing"),
        (None, lambda a: a.pop("token_embd.weight"), "missing"),
        (None, lambda a: a.update(stray=np.zeros(3)), "not in the header"),
        (None, _codes(2), "SHA-256"),
    ],
)
def test_refuses_damaged_or_unknown_files(tmp_path, bitnet_file, header_fn, arrays_fn, match):
    bad = rewrite(bitnet_file, tmp_path / "bad.npz", header_fn, arrays_fn)
    with pytest.raises(ValueError, match=match):
        load_lm(bad)


def test_refuses_codes_outside_ternary_even_with_a_matching_checksum(tmp_path, bitnet_file):
    import hashlib

    def codes(a):
        a["blk.0.attn.q_proj.term0.codes"] = np.full_like(a["blk.0.attn.q_proj.term0.codes"], 2)

    def fix_sha(h):
        c = np.full(h["arrays"]["blk.0.attn.q_proj.term0.codes"]["shape"], 2, np.int8)
        h["arrays"]["blk.0.attn.q_proj.term0.codes"]["sha256"] = hashlib.sha256(
            c.tobytes()
        ).hexdigest()

    bad = rewrite(bitnet_file, tmp_path / "bad.npz", fix_sha, codes)
    with pytest.raises(ValueError, match="codes must be in"):
        load_lm(bad)


def test_refuses_files_that_are_not_npz_or_have_no_header(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="readable"):
        load_lm(junk)
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(2))
    with pytest.raises(ValueError, match="__header__"):
        load_lm(plain)


def test_save_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match="TransformerLM"):
        save_lm(tmp_path / "x.npz", object())


def test_round_trip_of_the_shared_subln_placement(tmp_path):
    from ternref.nn import RMSNorm

    model = tiny()
    quantize_transformer(model, methods.get("bitnet"), subln="shared")
    for p in model.parameters():
        if p.data.ndim == 1:
            p.data[...] = np.random.default_rng(5).uniform(0.5, 1.5, p.shape)
    model.eval()
    save_lm(tmp_path / "s.npz", model)
    loaded, header = load_lm(tmp_path / "s.npz")
    assert header["block_norms"] is True
    np.testing.assert_array_equal(loaded(IDS), model(IDS))
    blk = loaded.blocks[0]
    assert isinstance(blk.attn_norm, RMSNorm) and blk.attn.q_proj.input_norm is None
    assert isinstance(blk.attn.o_proj.input_norm, RMSNorm)
    assert isinstance(blk.ffn.down_proj.input_norm, RMSNorm) and blk.ffn.up_proj.input_norm is None
