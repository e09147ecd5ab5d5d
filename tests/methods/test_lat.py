"""LAT method: D = sqrt(Adam v) + 1e-8, LAT_a alternation from previous codes, Adam only, smoke.

Hou & Kwok, "Loss-aware Weight Quantization of Deep Networks", ICLR 2018, arXiv:1802.08635.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ternref import nn, optim
from ternref.data import load_digits
from ternref.methods import get, quantize_model, quantized_layers
from ternref.methods.lat import LATCallback, LATQuantizer
from ternref.projections import exact
from ternref.projections.lat import lat_step
from ternref.train import fit


def _weighted_error(w, d, w_hat):
    return float(np.sum(d * (w.astype(np.float64) - w_hat) ** 2))


def _brute_force(w, d):
    """min over all 3^n codes of sum d (w - alpha b)^2 with the best alpha >= 0 for each code."""
    best = (np.inf, None)
    for b in itertools.product((-1, 0, 1), repeat=w.size):
        b = np.array(b, dtype=np.float64)
        den = np.sum(d * b * b)
        alpha = max(0.0, np.sum(d * w * b) / den) if den > 0 else 0.0
        err = _weighted_error(w, d, alpha * b)
        if err < best[0] - 1e-12:
            best = (err, alpha * b)
    return best


def _attach(quantizer, v):
    """Give the quantizer a fake Adam state holding ``v`` (through the real callback path)."""
    p = nn.Parameter(np.zeros_like(v), "weight")
    opt = optim.Adam([p], lr=1e-3)
    opt.state_for(p)["v"] = v
    quantizer.second_moment = lambda: opt.state_for(p).get("v")
    return opt, p


def test_uses_exactly_sqrt_v_plus_eps_brute_force():
    # A D that changes the answer: with D = 1 the optimum keeps {2.0, 1.1, -1.0}; the heavy
    # weight on 0.6 pulls it into the support under D.
    w = np.array([2.0, 1.1, -1.0, 0.6, 0.05, -0.3])
    v = np.array([1e-6, 1e-6, 1e-6, 4.0, 1e-6, 1e-6])
    d = np.sqrt(v) + 1e-8
    q = LATQuantizer("exact", False)
    _attach(q, v)
    w_hat = q(w)
    err, w_best = _brute_force(w, d)
    np.testing.assert_allclose(w_hat, w_best, rtol=1e-12, atol=1e-12)
    _, w_euclid = _brute_force(w, np.ones_like(w))
    assert not np.allclose(w_euclid, w_best)  # the test would notice D being ignored


@given(seed=st.integers(0, 2**16), n=st.integers(2, 7))
def test_exact_variant_is_the_weighted_optimum(seed, n):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n)
    v = rng.exponential(size=n) ** 2
    q = LATQuantizer("exact", False)
    _attach(q, v)
    err, _ = _brute_force(w, np.sqrt(v) + 1e-8)
    assert _weighted_error(w, np.sqrt(v) + 1e-8, q(w)) <= err + 1e-9 * (1 + err)


def test_before_first_step_d_is_one():
    w = np.random.default_rng(4).standard_normal((6, 5))
    q = LATQuantizer("exact", False)  # second_moment() -> None
    assert q.hessian(w) is None
    np.testing.assert_array_equal(q(w), exact(w).dense())


@pytest.mark.parametrize("c", [1e-6, 0.3, 25.0])
def test_constant_d_gives_exact_euclidean_codes(c):
    # D = c I: P11 says LAT equals exact TWN (the weighted objective is c times the Euclidean one).
    rng = np.random.default_rng(7)
    w = rng.standard_normal((20, 30))
    q = LATQuantizer("exact", False)
    _attach(q, np.full(w.shape, (c - 1e-8) ** 2))
    assert np.ptp(q.hessian(w)) == 0  # really a constant diagonal
    t = exact(w)
    np.testing.assert_array_equal(q.to_ternary(w).codes, t.codes)
    np.testing.assert_allclose(q.to_ternary(w).alpha_pos, t.alpha_pos, rtol=1e-9)


@pytest.mark.parametrize("c", [1e-6, 0.3, 25.0])
def test_constant_d_approx_variant_near_exact_optimum(c):
    # LAT_a is a local alternation stopped by a tolerance (official: |d alpha| < 1e-6, at most 10
    # steps), so it may stop a few codes short of the exact optimum; its error is within 0.1%.
    rng = np.random.default_rng(7)
    w = rng.standard_normal((20, 30))
    q = LATQuantizer("approx", False)
    _attach(q, np.full(w.shape, (c - 1e-8) ** 2))
    best = _weighted_error(w, 1.0, exact(w).dense())
    got = _weighted_error(w, 1.0, q.to_ternary(w).dense())
    assert best <= got <= best * (1 + 1e-3)


@given(seed=st.integers(0, 2**16), steps=st.integers(1, 6), two_scales=st.booleans())
def test_each_alternation_never_increases_weighted_error(seed, steps, two_scales):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(40) * rng.exponential()
    d = rng.exponential(size=40) + 1e-3
    codes = rng.integers(-1, 2, size=40).astype(np.int8)
    # error of the starting codes with their best scale(s)
    pos, neg = codes > 0, codes < 0
    if two_scales:
        a_p = max(0.0, (d * w)[pos].sum() / d[pos].sum()) if pos.any() else 0.0
        a_n = max(0.0, -(d * w)[neg].sum() / d[neg].sum()) if neg.any() else 0.0
    else:
        den = d[codes != 0].sum()
        a_p = a_n = max(0.0, (d * w * codes).sum() / den) if den > 0 else 0.0
    prev = _weighted_error(w, d, a_p * pos - a_n * neg)
    for _ in range(steps):
        t = lat_step(w, d, codes, two_scales=two_scales)
        err = _weighted_error(w, d, t.dense())
        assert err <= prev + 1e-9 * (1 + prev)
        prev, codes = err, t.codes


def test_approx_starts_from_previous_training_codes():
    # Reference LAT_a written out (official laq.py): alpha = sum d|w||b| / sum d|b|,
    # b = I_{alpha/2}(w), from the codes of the previous training forward pass.
    rng = np.random.default_rng(11)
    w1 = rng.standard_normal(50)
    w2 = w1 + 0.3 * rng.standard_normal(50)
    v = rng.exponential(size=50) ** 2
    d = np.sqrt(v) + 1e-8
    q = LATQuantizer("approx", False)
    _attach(q, v)
    q(w1)
    b = q.prev_codes.astype(np.float64)
    for _ in range(10):
        alpha = np.sum(d * np.abs(w2) * np.abs(b)) / np.sum(d * np.abs(b))
        b_new = np.sign(w2) * (np.abs(w2) > alpha / 2)
        if np.array_equal(b_new, b):
            break
        b = b_new
    np.testing.assert_allclose(q(w2), alpha * b, rtol=1e-12)
    # evaluation mode does not move the starting codes
    codes = q.prev_codes.copy()
    q.eval()
    q(w1 * 3)
    np.testing.assert_array_equal(q.prev_codes, codes)


def test_identity_ste_backward():
    rng = np.random.default_rng(8)
    q = LATQuantizer("approx", True)
    w = rng.standard_normal((5, 7))
    g = rng.standard_normal((5, 7))
    q(w)
    np.testing.assert_array_equal(q.backward(g), g)


def test_adam_v_is_the_official_second_moment_accumulator():
    # official mnist.py: acc <- 0.999 acc + 0.001 g^2 with g = dloss/dWb (gradient at w_hat)
    rng = np.random.default_rng(5)
    layer = nn.Linear(
        5, 4, rng=rng, dtype=np.float64, weight_quantizer=LATQuantizer("exact", False)
    )
    model = nn.Sequential(layer)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    cb = LATCallback(model, clip=1.0)
    cb.on_train_begin(model, opt)
    acc = np.zeros_like(layer.weight.data)
    for _ in range(4):
        x = rng.standard_normal((8, 5))
        opt.zero_grad()
        y = model.forward(x)
        w_hat = layer._w_hat.copy()
        dy = rng.standard_normal(y.shape)
        model.backward(dy)
        g_at_w_hat = dy.T @ x  # dL/dw_hat of L = sum(dy * (x @ w_hat.T + b))
        np.testing.assert_allclose(y - layer.bias.data, x @ w_hat.T, rtol=1e-12)
        acc = 0.999 * acc + 0.001 * g_at_w_hat**2
        opt.step()
        cb.on_step_end(model, opt)
        np.testing.assert_allclose(opt.state_for(layer.weight)["v"], acc, rtol=1e-12)
        np.testing.assert_allclose(layer.weight_quantizer.hessian(layer.weight.data),
                                   np.sqrt(acc) + 1e-8, rtol=1e-12)  # fmt: skip
        assert np.all(np.abs(layer.weight.data) <= 1.0)


def test_sgd_is_refused():
    model = nn.mlp([12, 8, 8, 3], rng=np.random.default_rng(0))
    (cb, *_) = quantize_model(model, get("lat"))
    with pytest.raises(TypeError, match="Adam"):
        cb.on_train_begin(model, optim.SGD(model.parameters(), lr=0.1))
    ds = load_digits()
    model = nn.mlp([64, 8, 8, 10], rng=np.random.default_rng(0))
    callbacks = quantize_model(model, get("lat"))
    with pytest.raises(TypeError, match="Adam"):
        fit(model, ds, optim.SGD(model.parameters(), lr=0.1), epochs=1, callbacks=callbacks,
            progress=False)  # fmt: skip


def test_weight_not_in_optimizer_is_refused():
    model = nn.mlp([12, 8, 8, 3], rng=np.random.default_rng(0))
    (cb, *_) = quantize_model(model, get("lat"))
    with pytest.raises(ValueError, match="not given"):
        cb.on_train_begin(model, optim.Adam([model.parameters()[-1]], lr=0.1))


def test_latent_weights_clipped_after_step():
    model = nn.mlp([12, 8, 8, 3], rng=np.random.default_rng(0))
    (cb, *_) = quantize_model(model, get("lat", clip=0.25))
    opt = optim.Adam(model.parameters(), lr=10.0)
    cb.on_train_begin(model, opt)
    for p in model.parameters():
        p.grad[...] = 1.0
    opt.step()
    cb.on_step_end(model, opt)
    (layer,) = quantized_layers(model)
    assert np.max(np.abs(layer.weight.data)) == np.float32(0.25)
    assert np.max(np.abs(model.parameters()[0].data)) > 0.25  # first (FP) layer not clipped


@pytest.mark.parametrize(
    "kwargs",
    [{"variant": "fast"}, {"clip": 0.0}, {"clip": -1.0}, {"beta2": 0.99}],
)
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        get("lat", **kwargs)


def test_two_scales_must_be_bool():
    with pytest.raises(TypeError, match="two_scales"):
        get("lat", two_scales="yes")


@pytest.mark.parametrize(
    "hp",
    [
        {"variant": "exact"},
        pytest.param({"variant": "approx", "two_scales": True}, marks=pytest.mark.slow),
    ],
)
def test_smoke_training_digits(hp):
    ds = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = quantize_model(model, get("lat", **hp))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    history = fit(model, ds, opt, epochs=4, batch_size=64, callbacks=callbacks, progress=False)
    # measured 0.967 (LAT_e) and 0.961 (LAT2a) after 4 epochs, batch 64 (seed 0)
    assert history.last["test_acc"] >= 0.92
    (layer,) = quantized_layers(model)
    t = layer.weight_quantizer.to_ternary(layer.weight.data)
    assert len(np.unique(t.dense())) <= 3
    assert 0.0 < t.sparsity < 1.0
    assert 0.0 < history.last["sparsity"] < 1.0
    assert np.max(np.abs(layer.weight.data)) <= 1.0
    model.eval()
    model.forward(ds.x_test[:5])
    np.testing.assert_array_equal(layer._w_hat, t.dense())
