"""Knowledge distillation (TernaryBERT-style): loss, hidden-state taps, base methods, training.

Zhang et al., "TernaryBERT: Distillation-aware Ultra-low Bit BERT", EMNLP 2020, arXiv:2009.12812.
"""

import numpy as np
import pytest

from ternref import nn, optim
from ternref.data import load_digits
from ternref.methods import get, quantize_model, quantized_layers
from ternref.methods.bitnet import BitNetActivation
from ternref.methods.kd import HiddenStateTap, TernaryBERTQuantizer, distill
from ternref.methods.ttq import TTQQuantizer
from ternref.nn.gradcheck import numerical_gradient, rel_error
from ternref.train import fit


def _mlp(seed, sizes=(64, 32, 32, 10), dtype=np.float32):
    return nn.mlp(list(sizes), rng=np.random.default_rng(seed), dtype=dtype)


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# ------------------------------------------------------------------ TernaryBERT quantizer
def test_ternarybert_quantizer_clips_then_twn_and_cuts_the_gradient():
    # clip to [-2.5, 2.5]: [0.2, -3.0, 1.0, 4.0, -0.1] -> [0.2, -2.5, 1.0, 2.5, -0.1]
    # mean|.| = 6.3 / 5 = 1.26 -> Delta = 0.882; support {-2.5, 1.0, 2.5} -> alpha = 2.0
    w = np.array([0.2, -3.0, 1.0, 4.0, -0.1])
    q = TernaryBERTQuantizer()
    np.testing.assert_allclose(q(w), [0, -2.0, 2.0, 2.0, 0], rtol=1e-12)
    g = np.arange(1.0, 6.0)
    np.testing.assert_array_equal(q.backward(g), [1, 0, 3, 0, 5])  # zero where |w| > c


# ------------------------------------------------------------------------------- the loss
def test_loss_is_soft_ce_plus_hard_ce_and_plain_ce_without_teacher():
    teacher = _mlp(1)
    method = get("kd", teacher=teacher, temperature=2.0, hard_weight=0.5, hidden_weight=0.0)
    student = _mlp(0)
    callbacks = quantize_model(student, method)
    loss = method.loss()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 1, 8, 8)).astype(np.float64)
    y = rng.integers(0, 10, 6)
    for cb in callbacks:
        cb.on_batch_begin(x, y)
    z_t = teacher.forward(x)
    z_s = rng.standard_normal((6, 10))
    value = loss.forward(z_s, y)
    temp = 2.0
    p_t = np.exp(_log_softmax(z_t / temp))
    soft = temp**2 * np.mean(-(p_t * _log_softmax(z_s / temp)).sum(axis=1))
    hard = np.mean(-_log_softmax(z_s)[np.arange(6), y])
    assert value == pytest.approx(soft + 0.5 * hard, rel=1e-6)

    def f(z):
        for cb in callbacks:
            cb.on_batch_begin(x, y)
        return loss.forward(z, y)

    f(z_s)
    grad = loss.backward()
    numeric = numerical_gradient(f, z_s.copy())
    assert rel_error(grad, numeric) < 1e-5

    # the teacher outputs were consumed: an evaluation call is plain cross-entropy
    assert loss.forward(z_s, y) == pytest.approx(hard, rel=1e-6)


def test_hidden_tap_gradient_matches_finite_differences():
    from ternref.methods.kd import _TeacherState

    state = _TeacherState()
    rng = np.random.default_rng(4)
    h_t = rng.standard_normal((3, 5))
    state.hidden = {2: h_t}
    state.fresh = True
    tap = HiddenStateTap(state, weight=0.7)
    tap.index = 2
    x = rng.standard_normal((3, 5))
    assert tap.forward(x) is x  # identity forward
    assert tap.last_mse == pytest.approx(np.mean((x - h_t) ** 2))
    dy = rng.standard_normal((3, 5))
    dx = tap.backward(dy)

    def objective(v):  # <dy, x> + weight * MSE(x, h_t): the tap's contribution to the loss
        return np.sum(dy * v) + 0.7 * np.mean((v - h_t) ** 2)

    assert rel_error(dx, numerical_gradient(objective, x.copy())) < 1e-8
    tap.eval()
    tap.forward(x)
    np.testing.assert_array_equal(tap.backward(dy), dy)  # identity in evaluation


def test_taps_are_inserted_in_front_of_ternary_layers_and_base_activation_quantizers():
    teacher = _mlp(1, (64, 32, 32, 32, 10))
    student = _mlp(0, (64, 32, 32, 32, 10))
    quantize_model(student, get("kd", teacher=teacher, base="bitnet"))
    kinds = [type(m).__name__ for m in student.layers]
    assert kinds == [
        "Flatten",
        "Linear",
        "ReLU",
        "HiddenStateTap",
        "BitNetActivation",
        "Linear",
        "ReLU",
        "HiddenStateTap",
        "BitNetActivation",
        "Linear",
        "ReLU",
        "Linear",
    ]
    taps = [m for m in student.layers if isinstance(m, HiddenStateTap)]
    assert [t.index for t in taps] == [1, 2]
    assert not any(isinstance(m, BitNetActivation) for m in teacher.layers)
    # the teacher's parameters never become the student's
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in student.parameters()}


def test_teacher_hidden_states_are_the_inputs_of_its_matching_weight_layers():
    teacher = _mlp(1)
    student = _mlp(0)
    callbacks = quantize_model(student, get("kd", teacher=teacher))
    x = np.random.default_rng(5).standard_normal((4, 1, 8, 8)).astype(np.float32)
    for cb in callbacks:
        cb.on_batch_begin(x, None)
    (tap,) = [m for m in student.layers if isinstance(m, HiddenStateTap)]
    # the teacher's weight layer 1 sees ReLU(Linear_0(flatten(x)))
    lin0 = teacher.layers[1]
    expected = np.maximum(x.reshape(4, -1) @ lin0.weight.data.T + lin0.bias.data, 0)
    np.testing.assert_allclose(tap._state.hidden[1], expected, rtol=1e-5)
    np.testing.assert_allclose(tap._state.logits, teacher.forward(x), rtol=1e-6)


def _lenet_like(seed):
    rng = np.random.default_rng(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, bias=True, rng=rng),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 8, rng=rng),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 3, rng=rng),
    )
    for layer in model.layers:  # running statistics and affine parameters away from 1 and 0
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            k = layer.num_features
            layer.running_mean[:] = rng.normal(size=k)
            layer.running_var[:] = rng.uniform(0.5, 2.0, size=k)
            layer.weight.data[:] = rng.uniform(0.5, 1.5, size=k)
            layer.bias.data[:] = rng.normal(size=k)
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_teacher_fused_forward_is_the_teachers_own_forward_bit_for_bit(dtype):
    from ternref.methods.kd import TeacherOutputs, _fusable_conv_block, _TeacherState

    teacher = _lenet_like(1)
    teacher.eval()
    assert _fusable_conv_block(teacher.layers, 0, np.zeros((1, 1, 12, 12), dtype))
    assert _fusable_conv_block(teacher.layers, 4, np.zeros((1, 4, 6, 6), dtype))
    cb = TeacherOutputs(teacher, _TeacherState(), hidden_indices=(1, 2))
    rng = np.random.default_rng(2)
    for n in (5, 5, 3):  # the buffers are reused, then re-allocated for a smaller batch
        x = rng.standard_normal((n, 1, 12, 12)).astype(dtype)
        cb.on_batch_begin(x, None)
        expected, hidden = x, {}
        for i, layer in enumerate(teacher.layers):
            if i in (4, 9):  # the inputs of weight layers 1 and 2
                hidden[{4: 1, 9: 2}[i]] = expected
            expected = layer.forward(expected)
        assert cb.state.logits.dtype == dtype
        np.testing.assert_array_equal(cb.state.logits, expected)
        assert set(cb.state.hidden) == {1, 2}
        for k in (1, 2):
            np.testing.assert_array_equal(cb.state.hidden[k], hidden[k])


def test_teacher_forward_falls_back_to_the_layers_in_training_mode_or_when_quantized():
    from ternref.methods.kd import _fusable_conv_block

    teacher = _lenet_like(1)
    x = np.zeros((2, 1, 10, 10), np.float32)
    assert not _fusable_conv_block(teacher.layers, 0, x)  # training mode
    teacher.eval()
    assert _fusable_conv_block(teacher.layers, 0, x)
    assert not _fusable_conv_block(teacher.layers, 0, x.astype(np.float16))
    assert not _fusable_conv_block(teacher.layers, 1, x)
    teacher.layers[0].weight_quantizer = TTQQuantizer(0.05, 0.5, 0.5)
    assert not _fusable_conv_block(teacher.layers, 0, x)


def test_any_base_method_can_be_distilled():
    teacher = _mlp(1)
    for base in ("ttq", get("ttq", t=0.1)):
        student = _mlp(0)
        quantize_model(student, get("kd", teacher=teacher, base=base))
        (layer,) = quantized_layers(student)
        assert isinstance(layer.weight_quantizer, TTQQuantizer)
    method = distill("twn", teacher, temperature=3.0)
    assert method.temperature == 3.0 and method.base == "twn"


def test_hyperparameters_are_json_friendly():
    import json

    teacher = _mlp(1)
    hp = get("kd", teacher=teacher, base=get("ttq", t=0.1)).hyperparameters()
    assert hp["base"] == "ttq" and hp["base_hyperparameters"]["t"] == 0.1
    assert hp["teacher"].startswith("Sequential with ")
    json.dumps(hp)
    assert get("kd").hyperparameters()["teacher"] is None


def test_missing_teacher_is_a_clear_error_and_leaves_the_model_alone():
    student = _mlp(0)
    method = get("kd")
    with pytest.raises(ValueError, match="teacher"):
        quantize_model(student, method)
    assert not quantized_layers(student)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"hard_weight": -1.0}, "hard_weight"),
        ({"hidden_weight": -0.1}, "hidden_weight"),
        ({"base": "nope"}, "nope"),
        ({"base": "kd"}, "kd"),
        ({"base_hyperparameters": {"factor": 1.5}}, "factor"),
        ({"base_hyperparameters": {"t": 0.1}}, "t"),
        ({"base": "ttq", "base_hyperparameters": {"t": 2.0}}, "t"),
        ({"alpha": 0.5}, "alpha"),
    ],
)
def test_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        get("kd", **kwargs)


def test_teacher_must_be_a_module():
    with pytest.raises(TypeError, match="teacher"):
        get("kd", teacher="model.npz")


def test_smoke_training_digits():
    ds = load_digits()
    teacher = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(1))
    fit(teacher, ds, optim.Adam(teacher.parameters(), lr=1e-3), epochs=4, batch_size=32,
        progress=False)  # fmt: skip
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    method = get("kd", teacher=teacher)
    callbacks = quantize_model(model, method)
    loss = method.loss()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    history = fit(model, ds, opt, loss=loss, epochs=5, batch_size=32, callbacks=callbacks,
                  progress=False)  # fmt: skip
    # measured 0.978 after 5 epochs (seed 0; teacher 4 epochs)
    assert history.last["test_acc"] >= 0.93
    assert loss.last_terms.keys() == {"hard"}  # the last call was the evaluation pass
    (layer,) = quantized_layers(model)
    t = layer.weight_quantizer.to_ternary(layer.weight.data)
    assert len(np.unique(t.dense())) <= 3
    assert 0.0 < t.sparsity < 1.0
    model.eval()
    model.forward(ds.x_test[:5])
    np.testing.assert_array_equal(layer._w_hat, t.dense())
