"""INQ method: ternary schedule, stages spread over any run, nested vs re-ranked partitions,
frozen weights pinned, codebook, mixed forward, smoke training.

Zhou, Yao, Guo, Xu, Chen, "Incremental Network Quantization", ICLR 2017, arXiv:1702.03044.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ternref import nn, optim
from ternref.data import Dataset, load_digits
from ternref.methods import get, quantize_model, quantized_layers
from ternref.methods.inq import INQCallback, INQQuantizer
from ternref.projections.inq import FIVE_BIT_PORTIONS, TERNARY_PORTIONS
from ternref.train import Callback, fit


def _model(rng_seed=0, epochs_per_stage=1, **kwargs):
    model = nn.mlp([12, 16, 16, 3], rng=np.random.default_rng(rng_seed))
    callbacks = quantize_model(model, get("inq", epochs_per_stage=epochs_per_stage, **kwargs))
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


def test_default_schedule_is_the_papers_ternary_one():
    method = get("inq")
    assert method.portions == TERNARY_PORTIONS and len(method.portions) == 10
    assert method.epochs_per_stage is None and method.partition == "nested"
    assert get("inq", portions=FIVE_BIT_PORTIONS).portions == (0.5, 0.75, 0.875, 1.0)


@pytest.mark.parametrize("portions", [TERNARY_PORTIONS, FIVE_BIT_PORTIONS])
def test_fractions_hit_the_portions_one_stage_per_epoch(portions):
    model, cb, layer = _model(portions=portions)
    n = layer.weight.data.size
    cb.on_train_begin(model, None)
    fractions = [layer.weight_quantizer.frozen_fraction]
    for epoch in range(1, len(portions)):
        record = {}
        cb.on_epoch_end(model, epoch, record)
        fractions.append(layer.weight_quantizer.frozen_fraction)
        assert record["inq_stage"] == epoch + 1
        assert record["inq_frozen"] == fractions[-1]
    assert fractions == [math.ceil(p * n) / n for p in portions]
    # no later stage after 100%
    cb.on_epoch_end(model, len(portions), {})
    assert layer.weight_quantizer.frozen_fraction == 1.0


class _FrozenSpy(Callback):
    """Records the frozen fraction of one layer after every optimizer step."""

    def __init__(self, layer):
        self.layer = layer
        self.after_step = []

    def on_step_end(self, model, optimizer):
        self.after_step.append(self.layer.weight_quantizer.frozen_fraction)


def _tiny_dataset(n_train, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    x = rng.standard_normal((n_train + 8, 1, 1, 12)).astype(np.float32)
    y = rng.integers(0, 3, size=n_train + 8)
    return Dataset(
        "tiny", x[:n_train], y[:n_train], x[n_train:], y[n_train:], ("a", "b", "c"), (1, 1, 12)
    )


@pytest.mark.parametrize(("epochs", "n_train", "batch"), [(2, 80, 8), (1, 24, 8), (3, 5, 10)])
def test_a_short_run_passes_through_every_stage(epochs, n_train, batch):
    # default epochs_per_stage=None: the ten stages are spread over the epochs * steps of the
    # run, stage i after i * T / 9 steps; with T = 20, 3 or 3 steps they still all happen.
    model, cb, layer = _model(epochs_per_stage=None)
    spy = _FrozenSpy(layer)
    opt = optim.SGD(model.parameters(), lr=0.01)
    history = fit(
        model, _tiny_dataset(n_train), opt, epochs=epochs, batch_size=batch,
        callbacks=[cb, spy], progress=False,
    )  # fmt: skip
    steps = epochs * -(-n_train // batch)
    k = len(TERNARY_PORTIONS)
    assert cb.stage_starts == [i * steps // (k - 1) for i in range(k)]
    assert cb.stage == k - 1 and history.last["inq_stage"] == k
    assert history.last["inq_frozen"] == 1.0 and spy.after_step[-1] == 1.0
    n = layer.weight.data.size
    expected = [math.ceil(p * n) / n for p in TERNARY_PORTIONS]
    # after step s the frozen fraction is the portion of the last stage started by then
    for s, fraction in enumerate(spy.after_step, start=1):
        stage = max(i for i, start in enumerate(cb.stage_starts) if start <= s)
        assert fraction == expected[stage]
    if steps >= k - 1:  # one step or more per stage: every portion is seen in turn
        assert sorted(set(spy.after_step) | {expected[0]}) == expected


def test_spread_schedule_needs_the_run_length():
    model, cb, layer = _model(epochs_per_stage=None)
    with pytest.raises(RuntimeError, match="on_fit_begin"):
        cb.on_train_begin(model, None)
    cb.on_fit_begin(epochs=2, steps_per_epoch=9)
    cb.on_train_begin(model, None)
    assert cb.stage_starts == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]


def test_first_stage_freezes_the_largest_fifth():
    model, cb, layer = _model(rng_seed=3)
    w0 = layer.weight.data.copy()
    cb.on_train_begin(model, None)
    frozen = layer.weight_quantizer.frozen
    k = math.ceil(0.2 * w0.size)
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


def _rerank_case():
    # s = 1: 4s/3 = 1.33, n1 = 0, alpha = 1, threshold 1/2
    w = np.array([[1.0, 0.3, 0.29, 0.28, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01]])
    q = INQQuantizer()
    q.start(w)
    q.freeze_to(w, 0.4)  # the four largest: 1.0 -> 1, 0.3, 0.29, 0.28 -> 0
    assert q.frozen[0].tolist() == [True] * 4 + [False] * 6
    np.testing.assert_array_equal(w[0, :4], [1, 0, 0, 0])
    w[0, 4] = 0.6  # a free weight grew during re-training
    return w, q


def test_nested_partition_keeps_weights_quantized_to_zero_fixed():
    w, q = _rerank_case()
    q.freeze_to(w, 0.6)  # adds the two largest free weights: 0.6 -> 1, 0.05 -> 0
    assert q.frozen[0].tolist() == [True] * 6 + [False] * 4
    np.testing.assert_array_equal(w[0, :6], [1, 0, 0, 0, 1, 0])


def test_rerank_partition_frees_weights_quantized_to_zero_like_the_caffe_code():
    w, q = _rerank_case()
    q.freeze_to(w, 0.6, rerank=True)
    # masks reset, all ten re-ranked by |w| = 1, 0, 0, 0, 0.6, 0.05, 0.04, 0.03, 0.02, 0.01:
    # the top six are 1, 0.6, 0.05, 0.04, 0.03, 0.02; the three zeros are free again
    expected = [True, False, False, False, True, True, True, True, True, False]
    assert q.frozen[0].tolist() == expected
    np.testing.assert_array_equal(w[0], [1, 0, 0, 0, 1, 0, 0, 0, 0, 0.01])


def test_rerank_recomputes_the_codebook_nested_keeps_it():
    for rerank, alpha in ((False, 1.0), (True, 2.0)):
        w, q = _rerank_case()
        w[0, 4] = 1.6  # max|w| = 1.6: 4s/3 = 2.13, n1 = 1
        q.freeze_to(w, 0.6, rerank=rerank)
        assert q.alpha == alpha
        assert w[0, 4] == alpha  # 1.6 >= alpha / 2 either way
        assert w[0, 0] == (1.0 if not rerank else 2.0)  # 1.0 >= 2/2: re-quantized to 2


def test_rerank_method_runs_through_fit():
    model, cb, layer = _model(epochs_per_stage=None, partition="rerank")
    history = fit(
        model, _tiny_dataset(40), optim.SGD(model.parameters(), lr=0.05), epochs=2,
        batch_size=8, callbacks=[cb], progress=False,
    )  # fmt: skip
    assert history.last["inq_frozen"] == 1.0
    alpha = layer.weight_quantizer.alpha
    assert set(np.unique(layer.weight.data).tolist()) <= {0.0, alpha, -alpha}


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
    model, cb, layer = _model(rng_seed=seed % 7, portions=FIVE_BIT_PORTIONS)
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
    for epoch in range(1, len(TERNARY_PORTIONS)):
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
        {"partition": "caffe"},
    ],
)
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match="epochs_per_stage|portions|stages|partition"):
        get("inq", **kwargs)


def test_smoke_training_digits():
    ds = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = quantize_model(model, get("inq"))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    history = fit(model, ds, opt, epochs=5, batch_size=32, callbacks=callbacks, progress=False)
    # measured 0.967 after 5 epochs (seed 0); the ten ternary stages spread over the run
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
