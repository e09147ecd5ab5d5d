"""EC2T (Marbán et al. 2020): learned centroids, entropy-constrained assignment, scaled STE, the
official code's per-layer lambda, centroid floor and initialisation."""

import numpy as np
import pytest

from ternref import methods, nn
from ternref.data import load_digits
from ternref.methods.ec2t import ClampCentroids, EC2TQuantizer, initial_centroids
from ternref.nn.gradcheck import numerical_gradient
from ternref.optim import Adam
from ternref.projections.ec2t import ec2t_lambda_max
from ternref.train import fit


def _cost_assignment(w, w_p, w_n, lam):
    """Brute-force EC2T assignment written from the formulas (independent of the projection)."""
    # preliminary nearest-centroid PMF (P_n, P_0, P_p), P_0 forced >= 1/2
    cands = np.array([-w_n, 0.0, w_p])
    pre = np.argmin(np.stack([(w - c) ** 2 for c in cands]), axis=0)
    # ties with 0 go to 0: argmin picks the first index, so test data avoid exact ties
    p = np.array([np.mean(pre == k) for k in range(3)])
    if p[1] < 0.5:
        d = 0.5 - p[1]
        s = p[0] + p[2]
        p = np.array([p[0] - p[0] / s * d, 0.5, p[2] - p[2] / s * d])
    info = -np.log2(p)
    cost = np.stack([(w - c) ** 2 + lam * i for c, i in zip(cands, info)])
    return np.argmin(cost, axis=0) - 1


def test_assignment_matches_brute_force_and_lambda_zero_is_nearest():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 30)) * 0.1
    q = EC2TQuantizer(0.15, 0.12, divider=0.0, dtype=np.float64)
    q(w)
    assert q.lam == 0.0
    # lambda = 0: thresholds at w_p / 2 and -w_n / 2
    expected = np.where(w > 0.075, 1, np.where(w < -0.06, -1, 0))
    np.testing.assert_array_equal(q.ternary.codes, expected)
    q = EC2TQuantizer(0.15, 0.12, divider=0.3, dtype=np.float64)
    q(w)
    assert q.lam > 0
    np.testing.assert_array_equal(q.ternary.codes, _cost_assignment(w, 0.15, 0.12, q.lam))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("divider", [0.0, 0.3, 1.0])
def test_training_projection_is_ec2t_at_lambda_of_w(dtype, divider):
    # the quantizer computes lambda_max and the assignment from one set of probabilities: the
    # result must be exactly ec2t(w, w_p, w_n, lambda_(w)) from the public functions
    from ternref.projections.ec2t import ec2t

    rng = np.random.default_rng(1)
    w = (rng.standard_normal((40, 50)) * 0.1).astype(dtype)
    q = EC2TQuantizer(0.15, 0.12, divider=divider, decay=0.7, dtype=dtype)
    lam = q.lambda_(w)
    t = q.project(w)
    assert q.lam == lam
    want = ec2t(w, *q._centroids(), lam=lam)
    np.testing.assert_array_equal(t.codes, want.codes)
    assert t.alpha_pos == want.alpha_pos and t.alpha_neg == want.alpha_neg


def test_sparsity_non_decreasing_in_lambda():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 64)).astype(np.float32) * 0.05
    sparsity = []
    for divider in (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0):
        q = EC2TQuantizer(0.08, 0.06, divider=divider)
        sparsity.append(q.to_ternary(w).sparsity)
    assert all(a <= b for a, b in zip(sparsity, sparsity[1:]))
    assert sparsity[-1] > sparsity[0]
    assert sparsity[-1] < 1.0  # lambda <= lambda_max keeps both sides non-empty


def test_centroid_gradients_match_finite_differences_with_chain_rule_sign():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 10)) * 0.1
    g = rng.standard_normal(w.shape)
    q = EC2TQuantizer(0.12, 0.09, divider=0.3, dtype=np.float64)
    q(w)
    dw = q.backward(g)
    codes = q.ternary.codes
    # w_hat is linear in (w_p, w_n) for a fixed assignment: exact finite differences
    for p in (q.w_p, q.w_n):
        fd = numerical_gradient(lambda _: q.forward(w), p.data, g)
        np.testing.assert_allclose(p.grad, fd, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(q.w_p.grad, g[codes > 0].sum(), rtol=1e-12)
    np.testing.assert_allclose(q.w_n.grad, -g[codes < 0].sum(), rtol=1e-12)  # chain-rule sign
    # scaled STE: w_p on I_p, 1 on I_0, w_n on I_n
    factor = np.where(codes > 0, 0.12, np.where(codes < 0, 0.09, 1.0))
    np.testing.assert_allclose(dw, g * factor, rtol=1e-12)


def _two_layer_model():
    # quantized: the 32x16 (512 weights) and 8x32 (256 weights) layers
    model = nn.mlp([12, 16, 32, 8, 3], rng=np.random.default_rng(0))
    return model


def test_lambda_decay_by_layer_size_is_the_official_formula():
    model = _two_layer_model()
    methods.quantize_model(model, methods.get("ec2t"))
    layers = methods.quantized_layers(model)
    assert [layer.weight.data.size for layer in layers] == [512, 256]
    decays = [layer.weight_quantizer.decay for layer in layers]
    # (n_l / n_largest + 0.05) / (1 + 0.05)
    np.testing.assert_allclose(decays, [1.0, (0.5 + 0.05) / 1.05], rtol=1e-15)
    # lambda of each layer is lambda_max * divider * decay
    x = np.random.default_rng(1).standard_normal((4, 12)).astype(np.float32)
    model.forward(x)
    for layer, decay in zip(layers, decays):
        q = layer.weight_quantizer
        w_p, w_n = float(q.w_p.data), float(q.w_n.data)
        lam_max = ec2t_lambda_max(layer.weight.data, w_p, w_n)
        assert q.lam == pytest.approx(lam_max * 0.2 * decay, rel=1e-12)


def test_constant_lambda_decay_on_request():
    model = _two_layer_model()
    methods.quantize_model(model, methods.get("ec2t", lambda_decay=0.5))
    assert [layer.weight_quantizer.decay for layer in methods.quantized_layers(model)] == [0.5] * 2


def test_centroid_floor_is_0675_std_with_bessel_after_each_step():
    model = _two_layer_model()
    callbacks = methods.quantize_model(model, methods.get("ec2t"))
    (clamp,) = [cb for cb in callbacks if isinstance(cb, ClampCentroids)]
    assert clamp.floor == 0.675
    small, large = methods.quantized_layers(model)
    w = small.weight.data
    std = np.sqrt(np.sum((w.astype(np.float64) - w.mean(dtype=np.float64)) ** 2) / (w.size - 1))
    q = small.weight_quantizer
    q.w_p.data[...] = 1e-4  # collapsed below the floor
    q.w_n.data[...] = 10 * std  # above it: untouched
    clamp.on_step_end(model, None)
    assert float(q.w_p.data) == pytest.approx(0.675 * std, rel=1e-6)
    assert float(q.w_n.data) == pytest.approx(10 * std, rel=1e-6)
    # floor 0: only non-negativity
    model = _two_layer_model()
    callbacks = methods.quantize_model(model, methods.get("ec2t", centroid_floor=0.0))
    (clamp,) = [cb for cb in callbacks if isinstance(cb, ClampCentroids)]
    q = methods.quantized_layers(model)[0].weight_quantizer
    q.w_p.data[...] = 1e-4
    q.w_n.data[...] = -0.5
    clamp.on_step_end(model, None)
    assert float(q.w_p.data) == pytest.approx(1e-4) and float(q.w_n.data) == 0.0


def test_floor_uses_bessel_correction_like_torch_std():
    # four weights: std with ddof=1 is sqrt(4/3) times the population std
    layer = nn.Linear(2, 2, rng=np.random.default_rng(0), dtype=np.float64)
    layer.weight.data[...] = [[1.0, -1.0], [3.0, -3.0]]
    layer.weight_quantizer = EC2TQuantizer(0.0, 0.0, divider=0.0, dtype=np.float64)
    ClampCentroids([layer]).on_step_end(None, None)
    expected = 0.675 * np.sqrt(20 / 3)  # sum of squares 20, mean 0, n - 1 = 3
    assert float(layer.weight_quantizer.w_p.data) == pytest.approx(expected, rel=1e-12)


def test_initial_centroids_default_and_official_rule():
    w = np.array([[0.9, -0.4, 0.05, -1.2, 0.3, 0.0]])
    # default: per-sign means beyond 0.7 mean|w| = 0.7 * 2.85 / 6 = 0.3325
    assert initial_centroids(w) == pytest.approx((0.9, (0.4 + 1.2) / 2))
    # the official code: w_p = max(w) * c, w_n = |min(w)| * c
    assert initial_centroids(w, 0.3) == pytest.approx((0.27, 0.36))
    model = _two_layer_model()
    methods.quantize_model(model, methods.get("ec2t", init_scaler=0.5))
    layer = methods.quantized_layers(model)[0]
    q = layer.weight_quantizer
    assert float(q.w_p.data) == pytest.approx(0.5 * float(layer.weight.data.max()), rel=1e-6)
    assert float(q.w_n.data) == pytest.approx(0.5 * -float(layer.weight.data.min()), rel=1e-6)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="lambda_max_divider"):
        methods.get("ec2t", lambda_max_divider=-0.1)
    with pytest.raises(ValueError, match="lambda_decay"):
        methods.get("ec2t", lambda_decay=-1.0)
    with pytest.raises(ValueError, match="lambda_decay"):
        methods.get("ec2t", lambda_decay="per_layer")
    with pytest.raises(ValueError, match="centroid_floor"):
        methods.get("ec2t", centroid_floor=-0.1)
    with pytest.raises(ValueError, match="init_scaler"):
        methods.get("ec2t", init_scaler=0.0)
    with pytest.raises(ValueError, match="no hyper-parameter"):
        methods.get("ec2t", lam=0.1)


def test_training_smoke_digits():
    data = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = methods.quantize_model(model, methods.get("ec2t"))
    opt = Adam(model.parameters(), lr=1e-3)
    hist = fit(model, data, opt, epochs=4, batch_size=64, callbacks=callbacks, progress=False)
    # measured 0.958 with sparsity 0.74 (4 epochs, batch 64, Adam 1e-3, divider 0.2)
    assert hist.last["test_acc"] >= 0.88
    assert 0.0 < hist.last["sparsity"] < 1.0
    assert hist.last["ec2t_lambda"][0] > 0
    layer = methods.quantized_layers(model)[0]
    q = layer.weight_quantizer
    assert float(q.w_p.data) > 0 and float(q.w_n.data) > 0
    dense = q.to_ternary(layer.weight.data).dense()
    assert len(np.unique(dense)) <= 3
    x = np.random.default_rng(2).standard_normal((5, layer.in_features)).astype(np.float32)
    model.eval()
    np.testing.assert_array_equal(layer.forward(x), x @ dense.T + layer.bias.data)
