"""Every registered training method's digits MLP, written as GGUF and read back.

For each method of ``ternref.methods.names()`` (KD with a full-precision teacher), trained one
epoch on the embedded digits (``nn.mlp([64, 256, 256, 10])``: the hidden 256x256 layer is
ternary, its rows are 256 long), and for both TQ2_0 and TQ1_0:

* the default ``save_gguf`` writes the model exactly when its ternaries fit a TQ tensor
  (symmetric, no offset, groups of a multiple of 256) and otherwise refuses, naming the tensor
  and the reason, without writing a file;
* with ``split=True, pad=True`` every model is written, and ``gguf.quants.dequantize`` of the
  tensors listed in the file's metadata (summed, padding dropped) equals the ``w_hat`` that the
  trained layer's evaluation forward computes, up to the fp16 rounding of each scale
  (``|error| <= 2**-11 * |part|`` for every part);
* ``load_gguf`` rebuilds a model whose logits equal, bit for bit, those of the exported model
  with its scales rounded to fp16; against the trained model they stay within a bound derived
  from the measured scale error (``gguf_helpers.logit_bound``), and the argmax over the whole
  digits test set is the same.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from ternref import methods, packed
from ternref.data import load_digits
from ternref.interop import load_gguf, save_gguf, tq
from ternref.packed import PackedConv2d, PackedLinear, unpack

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")

sys.path.insert(0, str(Path(__file__).parent))
from gguf_helpers import (  # noqa: E402
    eval_weights,
    fp16_reference,
    layer_weight_from_gguf,
    logit_bound,
    train,
)

FP16_U = 2.0**-11  # fp16 unit roundoff: |fp16(s) - s| <= 2**-11 s in fp16's normal range


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits):
    cache = {}

    def get(name):
        if name not in cache:
            teacher = get(None) if name is not None and methods.requires_teacher(name) else None
            cache[name] = train(name, digits, teacher)
        return cache[name]

    return get


def _expected_problems(inference) -> list[str]:
    """What keeps each ternary layer from being one TQ tensor, read off its ternaries."""
    problems = []
    for layer in inference.layers:
        if not isinstance(layer, (PackedLinear, PackedConv2d)):
            continue
        t = unpack(layer.packed)
        if not t.symmetric:
            problems.append("asymmetric")
        if t.offset is not None:
            problems.append("offset")
        if tq.misfit(tq.row_length(t.shape), t.granularity, t.group_size):
            problems.append("not a multiple of 256")
    return problems


@pytest.mark.parametrize("quant", tq.QUANTS)
@pytest.mark.parametrize("name", methods.names())
def test_method_file_dequantizes_to_w_hat_and_predicts_the_same(
    tmp_path, digits, trained, name, quant
):
    model = trained(name)
    inference = packed.export(model)
    path = tmp_path / "model.gguf"

    problems = _expected_problems(inference)
    if problems:
        with pytest.raises(ValueError, match=r"tensor 'layers\.\d+\.weight'") as err:
            save_gguf(model, path, quant)
        for p in problems:
            assert p in str(err.value)
        assert not path.exists()
    report = save_gguf(model, path, quant, split=True, pad=True)

    # gguf's own dequantizer, on the tensors the metadata lists, gives w_hat up to the fp16
    # rounding of each scale: |error| <= sum over parts of |fp16(s) - s| |c| (+ the float32
    # rounding of adding the parts)
    ternary_at = [
        i for i, m in enumerate(inference.layers) if isinstance(m, (PackedLinear, PackedConv2d))
    ]
    w_hats = eval_weights(model)
    assert len(ternary_at) == len(w_hats) >= 1
    largest_rel, smallest = 0.0, np.inf
    for i, w_hat in zip(ternary_at, w_hats):
        seen = layer_weight_from_gguf(gguf, path, i)
        allowed = 2.0**-24 * np.abs(w_hat).astype(np.float64)
        for t in (unpack(p) for p in inference.layers[i].terms):
            sides = [(t.alpha_pos, t.codes > 0), (t.alpha_neg, t.codes < 0)]
            if t.offset is not None:
                sides.append((np.abs(t.offset), np.ones(t.shape, bool)))
            for s, where in sides:
                s = np.asarray(s, np.float64)
                e = np.abs(s.astype(np.float16).astype(np.float64) - s)
                allowed = allowed + np.where(where, t.expand(e), 0)
                if np.any(s > 0):
                    largest_rel = max(largest_rel, float(np.max(e[s > 0] / s[s > 0])))
                    smallest = min(smallest, float(s[s > 0].min()))
        err = np.abs(seen - w_hat.astype(np.float64))
        assert np.all(err <= allowed), f"{name}: layer {i} exceeds the fp16 scale error"
    # the report gives the real largest relative scale error
    assert report.max_rel_scale_error == pytest.approx(largest_rel, rel=1e-9, abs=0)
    # 2**-11 in fp16's normal range; below 2**-14 (subnormal: RTN's small offsets) it is larger
    assert largest_rel <= FP16_U or smallest < 2.0**-14

    # load_gguf: exactly the fp16-scaled model; within the derived bound of the trained one
    loaded = load_gguf(path)
    x = digits.x_test
    got = loaded.forward(x)
    np.testing.assert_array_equal(got, fp16_reference(inference).forward(x))
    want = model.forward(x)
    bound = logit_bound(inference, x, report.max_rel_scale_error)
    assert np.all(np.abs(got - want) <= bound), (
        f"{name}: max excess {np.max(np.abs(got - want) - bound)}"
    )
    assert np.array_equal(got.argmax(1), want.argmax(1)), f"{name}: argmax differs"
