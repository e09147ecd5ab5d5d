"""INQ method: partition fractions, frozen weights pinned, codebook, mixed forward, smoke training.

Zhou, Yao, Guo, Xu, Chen, "Incremental Network Quantization", ICLR 2017, arXiv:1702.03044.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ternref import nn, optim
from ternref.data import load_digits
from ternref.methods import get, quantize_model, quantized_layers
from ternref.methods.inq import INQCallback, INQQuantizer
from ternref.train import fit


def _model(rng_seed=0, epochs_per_stage=1):
    model = nn.mlp([12, 16, 16, 3], rng=np.random.default_rng(rng_seed))
    callbacks = quantize_model(model, get("inq", epochs_per_stage=epochs_per_stage))
    (inq_cb,) = [cb for cb in callbacks if isinstance(cb, INQCallback)]
    (layer,) = quantized_layers(model)
    return model, inq_cb, layer


def test_codebook_level_brackets_max_weight():
    # paper: n1 = floor(log2(4s/3)), i.e. (3/4) 2^n1 <= s < (3/2) 2^n1, and alpha = 2^n1
    for s in (0.01, 0.3, 0.75, 0.76, 1.0, 1.5, 7.3):
        w = np.array([[s, -0.1 * s, 0.2 * s]])
        q = INQQuantizer()
        q.start(w)
        n1 = round(math.log2(q.alpha))
        assert q.alpha == 2.0**n1
        assert 0.75 * q.alpha <= s < 1.5 * q.alpha


def test_fixed_codebook_rule_hand_built():
    # s = 0.9 -> 4s/3 = 1.2 -> n1 = 0, alpha = 1, threshold 1/2 with the paper's ">=" tie rule
    w = np.array([[0.9, 0.5, -0.5, 0.49, -0.7, 0.0]])
    q = INQQuantizer()
    q.start(w)
    assert q.alpha == 1.0
    np.testing.assert_array_equal(q.to_ternary(w).dense(), [[1.0, 1.0, -1.0, 0.0, -1.0, 0.0]])


def test_fractions_hit_paper_portions_and_take_largest_first():
    model, cb, layer = _model()
    w0 = layer.weight.data.copy()
    n = w0.size
    cb.on_train_begin(model, None)
    fractions = [layer.weight_quantizer.frozen_fraction]
    for epoch in (1, 2, 3):
        cb.on_epoch_end(model, epoch, {})
        fractions.append(layer.weight_quantizer.frozen_fraction)
    expected = [math.ceil(p * n) / n for p in (0.5, 0.75, 0.875, 1.0)]
    assert fractions == expected
    # no later stage after 100%
    cb.on_epoch_end(model, 4, {})
    assert layer.weight_quantizer.frozen_fraction == 1.0


def test_first_stage_freezes_the_largest_half():
    model, cb, layer = _model(rng_seed=3)
    w0 = layer.weight.data.copy()
    cb.on_train_begin(model, None)
    frozen = layer.weight_quantizer.frozen
    k = math.ceil(0.5 * w0.size)
    cut = np.sort(np.abs(w0).ravel())[::-1][k - 1]  # k-th largest magnitude
    assert np.all(np.abs(w0[frozen]) >= cut)
    assert np.all(np.abs(w0[~frozen]) <= cut)
    # frozen entries now hold their codebook values, free entries are untouched
    alpha = layer.weight_quantizer.alpha
    expected = alpha * np.sign(w0) * (np.abs(w0) >= alpha / 2)
    np.testing.assert_array_equal(layer.weight.data[frozen], expected[frozen].astype(np.float32))
    np.testing.assert_array_equal(layer.weight.data[~frozen], w0[~frozen])


def test_training_forward_is_mixed_and_eval_forward_fully_quantized():
    q = INQQuantizer()
    w = np.array([[0.9, -0.6, 0.3, -0.2]])
    q.start(w)
    q.freeze_to(w, 0.5)  # freezes 0.9 -> 1, -0.6 -> -1 (alpha = 1)
    w_latent = w + np.array([[0.0, 0.0, 0.05, 0.0]])  # free entry moved by training
    np.testing.assert_array_equal(q(w_latent), [[1.0, -1.0, 0.35, -0.2]])
    q.eval()
    np.testing.assert_array_equal(q(w_latent), [[1.0, -1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(q.to_ternary(w_latent).dense(), q(w_latent))


def test_backward_masks_frozen_gradients():
    model, cb, layer = _model()
    cb.on_train_begin(model, None)
    x = np.random.default_rng(1).standard_normal((5, 12)).astype(np.float32)
    model.zero_grad()
    out = model.forward(x)
    model.backward(np.ones_like(out))
    grad_before = layer.weight.grad.copy()
    cb.after_backward(model, None)
    frozen = layer.weight_quantizer.frozen
    assert np.all(layer.weight.grad[frozen] == 0)
    np.testing.assert_array_equal(layer.weight.grad[~frozen], grad_before[~frozen])
    assert np.any(grad_before[frozen] != 0)  # the mask did something


@given(
    seed=st.integers(0, 2**16),
    stage_steps=st.lists(st.integers(1, 4), min_size=3, max_size=3),
)
def test_frozen_weights_never_change(seed, stage_steps):
    rng = np.random.default_rng(seed)
    model, cb, layer = _model(rng_seed=seed % 7)
    # Adam with weight decay moves zero-gradient entries through m, v and decay: the pinning
    # must undo that.
    opt = optim.Adam(model.parameters(), lr=0.05, weight_decay=0.1)
    cb.on_train_begin(model, opt)
    pinned = {}
    epoch = 0
    for n_steps in [*stage_steps, 2]:
        q = layer.weight_quantizer
        for idx in zip(*np.nonzero(q.frozen)):
            pinned.setdefault(idx, float(layer.weight.data[idx]))
        for _ in range(n_steps):
            opt.zero_grad()
            for p in model.parameters():
                p.grad[...] = rng.standard_normal(p.grad.shape)
            cb.after_backward(model, opt)
            opt.step()
            cb.on_step_end(model, opt)
            for idx, value in pinned.items():
                assert layer.weight.data[idx] == value
        epoch += 1
        cb.on_epoch_end(model, epoch, {})
    alpha = layer.weight_quantizer.alpha
    assert all(v in (0.0, alpha, -alpha) for v in pinned.values())
    assert len(pinned) == layer.weight.data.size


def test_all_weights_on_codebook_at_the_end():
    model, cb, layer = _model(rng_seed=5)
    cb.on_train_begin(model, None)
    for epoch in (1, 2, 3):
        cb.on_epoch_end(model, epoch, {})
    alpha = layer.weight_quantizer.alpha
    assert set(np.unique(layer.weight.data).tolist()) <= {0.0, alpha, -alpha}
    # inference form is then the weights themselves
    np.testing.assert_array_equal(
        layer.weight_quantizer.to_ternary(layer.weight.data).dense(), layer.weight.data
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs_per_stage": 0},
        {"portions": (0.5, 0.4, 1.0)},
        {"portions": (0.5, 0.75)},
        {"portions": (0.0, 1.0)},
        {"portions": ()},
        {"stages": 3},
    ],
)
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match="epochs_per_stage|portions|stages"):
        get("inq", **kwargs)


def test_smoke_training_digits():
    ds = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = quantize_model(model, get("inq", epochs_per_stage=1))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    history = fit(model, ds, opt, epochs=5, batch_size=32, callbacks=callbacks, progress=False)
    # measured 0.969 after 5 epochs (seed 0); stages 50/75/87.5/100% at epochs 1-4
    assert history.last["test_acc"] >= 0.90
    (layer,) = quantized_layers(model)
    assert layer.weight_quantizer.frozen_fraction == 1.0
    t = layer.weight_quantizer.to_ternary(layer.weight.data)
    assert len(np.unique(t.dense())) <= 3
    assert 0.0 < t.sparsity < 1.0
    assert 0.0 < history.last["sparsity"] < 1.0
    model.eval()
    model.forward(ds.x_test[:5])
    np.testing.assert_array_equal(layer._w_hat, t.dense())
