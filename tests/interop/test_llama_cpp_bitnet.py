"""A BitNet b1.58 LM trained by ternref, exported as llama.cpp's ``bitnet`` architecture, run by
llama.cpp (through ``llama-cpp-python``): same logits within a derived tolerance, same greedy text.

Skipped without ``llama_cpp`` (``pip install llama-cpp-python`` compiles llama.cpp; see the
README's Interoperability section).

The model (``data/bitnet-shared-256.gguf.xz``, 0.7 MB) was trained and written with::

    ternref lm train --method bitnet --subln shared --dim 256 --layers 2 --heads 4 \\
        --kv-heads 2 --ffn 768 --context 128 --steps 300 --eval-every 100 --save m.npz
    ternref lm export-gguf m.npz bitnet-shared-256.gguf

(seed 0, the embedded novel; 2.6-2.9 bits per byte held out, see data/README.md). ternref's
side is the model read back from that file (:func:`ternref.interop.load_gguf`): the trained
model's evaluation forward with its scales rounded to fp16, as ``test_bitnet_gguf.py`` proves.

The tolerance
-------------
Three ternref forwards of the file's model, on the same prompt:

* ``L_t``: ternref's own, activations int8 absmax **per token** (BitLinear, as trained);
* ``L_q``: activations quantized as llama.cpp does, ``Q8_K``, one absmax per **256 values**
  (:class:`ternref.interop.bitnet.Q8KActivation`). At width 256 a row of q/k/v, o, gate/up
  input is one block and the two grids coincide; ``ffn_down``'s input (768 values) gets three
  scales instead of one, each <= the row's, so llama.cpp's rounding steps there are finer;
* ``L_f``: float activations.

``e_q = max |L_q - L_f|`` and ``e_t = max |L_t - L_f|`` measure what each activation
quantization does to this model. llama.cpp computes ``L_q`` up to float32 summation order and
its own expf; rounding to an int8 grid is discontinuous, so a last-bit difference upstream moves
an activation lying next to a rounding boundary by one whole step, and the change propagates
(through the KV cache, to every later position). Its size is measured, not guessed: ``e_flip``
(:func:`q8k_flips.nearest_tie_flips`), the largest logit change when one of the 8 activations
nearest to a rounding boundary is rounded the other way. (On a random model, llama.cpp's
disagreement was exactly one such flip, to 6 digits.) So:

1. ``|L_cpp - L_q| <= max(e_q / 10, 2 e_flip)``: llama.cpp quantizes activations as Q8_K, up
   to at most two rounding decisions taken the other way;
2. ``|L_cpp - L_t| <= max(e_q / 10, 2 e_flip) + e_q + e_t`` (triangle inequality through
   ``L_q`` and ``L_f``): the tolerance against ternref's own per-token forward, derived from
   the per-token vs per-256 difference;
3. greedy decoding: 40 tokens, the first 32 must agree (the smallest top-two logit gap along
   ternref's path is printed, to tell a real disagreement from a near tie).
"""

import lzma
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ternref.interop import bitnet as bn
from ternref.interop import load_gguf

pytest.importorskip("gguf")
try:  # the package without its compiled library raises at import too (FileNotFoundError)
    import llama_cpp
except (ImportError, OSError, RuntimeError) as e:
    pytest.skip(f"llama-cpp-python is not usable ({type(e).__name__}: {e}); "
                "pip install llama-cpp-python", allow_module_level=True)  # fmt: skip

sys.path.insert(0, str(Path(__file__).parent))
from q8k_flips import nearest_tie_flips  # noqa: E402

DATA = Path(__file__).parent / "data" / "bitnet-shared-256.gguf.xz"
PROMPT = "It is a truth universally acknowledged, that a single man"
N_GREEDY = 40
GGML_TYPE_F32 = 0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("bitnet_cpp") / "bitnet-shared-256.gguf"
    with lzma.open(DATA) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    cpp = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=128, n_threads=2,
                          logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32,
                          verbose=False)  # fmt: skip
    return path, cpp


def llama_logits(cpp, ids):
    cpp.reset()
    cpp.eval(list(ids))
    return np.array(cpp.scores[: len(ids)], np.float64)


def test_the_file_is_a_shared_subln_bitnet_model(exported):
    path, _ = exported
    model = load_gguf(path)
    assert model.dim == 256 and model.n_layers == 2 and model.ffn_dim == 768
    assert set(bn.bitnet_layout(model)) == {f"blocks.{n}.{p}" for n in range(2)
                                            for p in bn.PROJECTIONS}  # fmt: skip


def test_logits_agree_within_the_derived_tolerance(exported):
    path, cpp = exported
    ids = np.array([list(PROMPT.encode())])
    l_cpp = llama_logits(cpp, ids[0])
    ours = load_gguf(path)
    q8k = bn.q8k_activations(load_gguf(path))
    l_t = ours(ids)[0].astype(np.float64)
    l_q = q8k(ids)[0].astype(np.float64)
    l_f = bn.float_activations(load_gguf(path))(ids)[0].astype(np.float64)
    e_q, e_t = np.abs(l_q - l_f).max(), np.abs(l_t - l_f).max()
    # the logit change of one Q8_K rounding decision taken the other way (nearest ties)
    e_flip = nearest_tie_flips(lambda: q8k(ids)[0], 8)
    to_q, to_t = np.abs(l_cpp - l_q).max(), np.abs(l_cpp - l_t).max()
    tol_q = max(0.1 * e_q, 2 * e_flip)
    print(f"|cpp-q8k| {to_q:.2e} (tol {tol_q:.2e}), |cpp-ternref int8/token| {to_t:.2e} "
          f"(tol {tol_q + e_q + e_t:.2e}); e_q = |q8k-float| {e_q:.2e}, e_t = |int8-float| "
          f"{e_t:.2e}, e_flip {e_flip:.2e}, |int8-q8k| {np.abs(l_t - l_q).max():.2e}; logits up "
          f"to {np.abs(l_f).max():.2f}")  # fmt: skip
    assert e_q > 1e-3 and e_t > 1e-3  # the quantizations matter on this model: it can tell
    assert to_q <= tol_q
    assert to_t <= tol_q + e_q + e_t


def test_greedy_generation_is_the_same_for_32_tokens_and_more(exported):
    path, cpp = exported
    model = load_gguf(path)
    prompt = list(PROMPT.encode())
    ours = model.generate(np.array([prompt]), N_GREEDY)[0, len(prompt) :].tolist()
    path_ids = np.array([prompt + ours[:-1]])
    logits = np.sort(model(path_ids)[0, len(prompt) - 1 :].astype(np.float64), axis=-1)
    gaps = logits[:, -1] - logits[:, -2]
    cpp.reset()
    cpp.eval(prompt)
    theirs = []
    for _ in range(N_GREEDY):
        nxt = int(np.argmax(cpp.scores[cpp.n_tokens - 1]))
        theirs.append(nxt)
        cpp.eval([nxt])
    agree = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), N_GREEDY)
    print(f"greedy: {agree} of {N_GREEDY} tokens agree ({bytes(ours)!r}); smallest top-two "
          f"gap of the first 32: {gaps[:32].min():.3e}")  # fmt: skip
    assert agree >= 32, (bytes(ours), bytes(theirs), gaps)
    assert ours[:32] == theirs[:32]
