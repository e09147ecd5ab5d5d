"""FGQ method: one scale per group of N weights along the row, identity STE, training smoke.

Mellempudi et al., "Ternary Neural Networks with Fine-Grained Quantization", arXiv:1705.01462.
"""

import itertools

import numpy as np
import pytest

from ternref import nn, optim
from ternref.data import load_digits
from ternref.methods import get, quantize_model, quantized_layers
from ternref.methods.fgq import FGQQuantizer
from ternref.train import fit


def _brute_force_group(g):
    """Best alpha * T over all 3^n codes T (alpha = least-squares for T's support)."""
    best, best_err = np.zeros_like(g), np.sum(g * g)
    for codes in itertools.product((-1, 0, 1), repeat=len(g)):
        t = np.array(codes, dtype=float)
        k = np.count_nonzero(t)
        if k == 0:
            continue
        alpha = max(np.sum(t * g) / k, 0.0)
        err = np.sum((g - alpha * t) ** 2)
        if err < best_err - 1e-12:
            best, best_err = alpha * t, err
    return best


def test_groups_run_along_the_row_and_are_solved_exactly():
    # rows of 10 with N = 4: groups [0:4], [4:8], [8:10] (the last one shorter)
    w = np.random.default_rng(0).standard_normal((3, 10))
    q = FGQQuantizer(group_size=4)
    w_hat = q(w)
    for r in range(3):
        for lo, hi in ((0, 4), (4, 8), (8, 10)):
            np.testing.assert_allclose(w_hat[r, lo:hi], _brute_force_group(w[r, lo:hi]), atol=1e-12)
    assert q.ternary.granularity == "group" and q.ternary.alpha_pos.shape == (3, 3)


def test_hand_built_group_twn_solver():
    # one row, N = 3: group [1.0, -0.1, 0.4]: mean 0.5, Delta 0.35 -> {1.0, 0.4}, alpha 0.7
    #                 group [-2.0, 0.2, 0.0]: mean 0.733, Delta 0.513 -> {-2.0}, alpha 2.0
    w = np.array([[1.0, -0.1, 0.4, -2.0, 0.2, 0.0]])
    q = FGQQuantizer(group_size=3, solver="twn")
    np.testing.assert_allclose(q(w), [[0.7, 0, 0.7, -2.0, 0, 0]], rtol=1e-12)


def test_conv_weight_groups_flatten_in_kh_kw():
    w = np.random.default_rng(1).standard_normal((2, 3, 2, 2))  # K = 12 per output channel
    w_hat = FGQQuantizer(group_size=4)(w)
    flat = w.reshape(2, 12)
    for r in range(2):
        for lo in range(0, 12, 4):
            np.testing.assert_allclose(
                w_hat.reshape(2, 12)[r, lo : lo + 4], _brute_force_group(flat[r, lo : lo + 4]),
                atol=1e-12,
            )  # fmt: skip


def test_identity_ste_and_to_ternary():
    rng = np.random.default_rng(2)
    w, g = rng.standard_normal((4, 16)).astype(np.float32), rng.standard_normal((4, 16))
    q = FGQQuantizer()
    q(w)
    np.testing.assert_array_equal(q.backward(g), g)
    q.eval()
    np.testing.assert_array_equal(q.to_ternary(w).dense(), q(w))
    assert q(w).dtype == np.float32


def test_default_group_size_is_the_fine_tuning_setting():
    assert get("fgq").group_size == 64


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"group_size": 0}, "group_size"),
        ({"solver": "lat"}, "solver"),
        ({"N": 4}, "N"),
    ],
)
def test_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        get("fgq", **kwargs)


def test_smoke_training_digits():
    ds = load_digits()
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks = quantize_model(model, get("fgq"))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    history = fit(model, ds, opt, epochs=5, batch_size=32, callbacks=callbacks, progress=False)
    # measured 0.975 after 5 epochs (seed 0)
    assert history.last["test_acc"] >= 0.93
    (layer,) = quantized_layers(model)
    t = layer.weight_quantizer.to_ternary(layer.weight.data)
    dense = t.dense().reshape(256, 4, 64)  # (out, groups, N)
    for row in dense:
        for group in row:
            assert len(np.unique(group)) <= 3
    assert 0.0 < t.sparsity < 1.0
    model.eval()
    model.forward(ds.x_test[:5])
    np.testing.assert_array_equal(layer._w_hat, t.dense())
