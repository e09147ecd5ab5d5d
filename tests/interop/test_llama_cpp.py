"""A ternref TransformerLM with BitNet-ternarized projections, exported as a TQ2_0 ``llama`` GGUF,
run by llama.cpp (through ``llama-cpp-python``): same tokens, same logits, same greedy text.

Skipped without ``llama_cpp`` (``pip install llama-cpp-python`` compiles llama.cpp; see the
README's Interoperability section). The model is untrained (random weights, ternarized with
``ternref.projections.bitnet``: absmean per tensor, BitNet b1.58's reference rule): what is
tested is that two implementations compute one function, which a random model shows as well as
a trained one.

The tolerance. llama.cpp multiplies every TQ2_0 weight by activations quantized to Q8_K
(:mod:`ternref.interop.q8k`); everything else (embedding lookup, RMSNorm, RoPE, softmax, SiLU,
the F32 output head, an F32 KV cache) it computes in float32. So:

1. ternref's forward with :class:`~ternref.interop.q8k.Q8KProjection` layers (the Q8_K
   arithmetic reproduced) must be closer to llama.cpp than the float forward is. Not
   float32-equal: rounding to the Q8_K grid is discontinuous, so a last-bit difference upstream
   (summation order, ggml's own expf in softmax and SiLU) now and then moves an activation by one
   whole step ``d_b = amax_b / 127``, where the float forward's errors are all of the other
   values' half steps. The size of one such disagreement is measured, ``e_flip``
   (:func:`q8k_flips.nearest_tie_flips`: the largest logit change when one of the 8 activations
   nearest to a rounding boundary is rounded the other way), and the test asks
   ``|L_cpp - L_q8k| <= max(e_q / 10, 2 e_flip)``, with
2. ``e_q = max |L_q8k - L_float|``, the effect of the quantization itself on this model and
   prompt, measured; and ``|L_cpp - L_float| <= 1.1 e_q``, the tolerance against the float
   model, derived from Q8_K rather than guessed. (Measured with llama-cpp-python 0.3.36 built
   here: logits of magnitude up to 4.1, ``e_q = 0.072``, ``|L_cpp - L_q8k| = 1.3e-2``, all of
   it at position 0, every other position bit-equal: one rounding decision; ``e_flip =
   0.068``; ``|L_cpp - L_float| = 0.072``. An earlier build gave ``|L_cpp - L_q8k| = 1.2e-3``.)
3. greedy decoding: a token can differ only where ternref's top-two logit gap is below twice the
   logit tolerance; the test asserts that the first 32 tokens agree and prints the smallest gap
   along the way (to tell a real disagreement from a near tie if it fails).
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from ternref.interop import llama as ll
from ternref.interop import load_gguf
from ternref.nn import TransformerLM

pytest.importorskip("gguf")
try:  # the package without its compiled library raises at import too (FileNotFoundError)
    import llama_cpp
except (ImportError, OSError, RuntimeError) as e:
    pytest.skip(f"llama-cpp-python is not usable ({type(e).__name__}: {e}); "
                "pip install llama-cpp-python", allow_module_level=True)  # fmt: skip

sys.path.insert(0, str(Path(__file__).parent))
from q8k_flips import nearest_tie_flips  # noqa: E402

PROMPT = "It is a truth universally acknowledged, that a single man"
N_GREEDY = 40
GGML_TYPE_F32 = 0


def byte_model(seed=0):
    """Widths multiple of 256 (TQ rows), GQA, tied head, norm gains away from 1."""
    rng = np.random.default_rng(seed)
    model = TransformerLM(256, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=768,
                          max_seq_len=128, rope_theta=1e4, norm_eps=1e-5, init_std=0.05,
                          rng=rng)  # fmt: skip
    for norm in [m for b in model.blocks for m in (b.attn_norm, b.ffn_norm)] + [model.output_norm]:
        norm.weight.data[...] = rng.uniform(0.5, 1.5, model.dim)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = byte_model()
    path = tmp_path_factory.mktemp("llama_cpp") / "bitnet-tq2_0.gguf"
    ll.save_llama(model, path, ll.ternarize(model, "bitnet"), projection="bitnet")
    tern = ll.ternaries(load_gguf(path))  # exactly the file's ternaries (fp16 scales)
    float_model = ll.set_projection_weights(byte_model(), tern)
    q8k_model = ll.q8k_projections(byte_model(), tern)
    cpp = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=128,
        n_batch=128,
        n_threads=2,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        verbose=False,
    )
    return float_model, q8k_model, cpp


def test_llama_cpp_tokenizes_text_into_bytes(exported):
    _, _, cpp = exported
    for text in [PROMPT, "Pâté à 3€ 😀\n\ttabs  and  spaces"]:
        ids = cpp.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert ids == list(text.encode("utf-8")), text
        assert cpp.detokenize(ids).decode("utf-8") == text


def test_logits_agree_within_the_q8k_tolerance(exported):
    float_model, q8k_model, cpp = exported
    ids = np.array([list(PROMPT.encode())])
    cpp.reset()
    cpp.eval(ids[0].tolist())
    l_cpp = np.array(cpp.scores[: ids.shape[1]], np.float64)
    l_float = float_model(ids)[0].astype(np.float64)
    l_q8k = q8k_model(ids)[0].astype(np.float64)
    e_q = np.abs(l_q8k - l_float).max()
    to_q8k, to_float = np.abs(l_cpp - l_q8k).max(), np.abs(l_cpp - l_float).max()
    e_flip = nearest_tie_flips(lambda: q8k_model(ids)[0], 8)
    print(f"|cpp-q8k| {to_q8k:.2e}, |cpp-float| {to_float:.2e}, e_q = |q8k-float| {e_q:.2e}, "
          f"e_flip {e_flip:.2e} (logits up to {np.abs(l_float).max():.2f})")  # fmt: skip
    assert e_q > 1e-3  # the quantization matters on this model: the test can tell
    # llama.cpp quantizes its activations as Q8_K does, up to two rounding decisions
    assert to_q8k <= max(0.1 * e_q, 2 * e_flip)
    assert to_float <= 1.1 * e_q


def test_greedy_generation_is_the_same_for_32_tokens_and_more(exported):
    float_model, _, cpp = exported
    prompt = list(PROMPT.encode())
    ours = float_model.generate(np.array([prompt]), N_GREEDY)[0, len(prompt) :].tolist()
    # ternref's logits along its own greedy path: the top-two gap at every step
    path = np.array([prompt + ours[:-1]])
    logits = np.sort(float_model(path)[0, len(prompt) - 1 :].astype(np.float64), axis=-1)
    gaps = logits[:, -1] - logits[:, -2]
    cpp.reset()
    cpp.eval(prompt)
    theirs = []
    for _ in range(N_GREEDY):
        nxt = int(np.argmax(cpp.scores[cpp.n_tokens - 1]))
        theirs.append(nxt)
        cpp.eval([nxt])
    agree = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), N_GREEDY)
    print(f"greedy: {agree} of {N_GREEDY} tokens agree; smallest top-two gap of the first 32: "
          f"{gaps[:32].min():.3e}")  # fmt: skip
    assert agree >= 32, (ours, theirs, gaps)
    assert ours[:32] == theirs[:32]
