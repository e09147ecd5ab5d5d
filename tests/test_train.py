"""fit / evaluate: history, callbacks, reproducibility, divergence."""

import numpy as np
import pytest

from ternref import nn
from ternref.data import load_digits
from ternref.optim import SGD, Adam, CosineLR
from ternref.train import Callback, evaluate, fit


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _model(seed=0):
    return nn.mlp([64, 64, 10], rng=np.random.default_rng(seed))


def test_fit_records_every_epoch_and_learns(digits):
    model = _model()
    opt = Adam(model.parameters(), lr=3e-3)
    hist = fit(
        model, digits, opt, epochs=3, batch_size=64, schedule=CosineLR(opt, 3), progress=False
    )
    assert len(hist) == 3 and hist["epoch"] == [1, 2, 3]
    for key in ("loss", "train_acc", "test_acc", "test_loss", "seconds", "lr"):
        assert all(v is not None for v in hist[key])
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist.last["test_acc"] > 0.85
    # The learning rate follows the schedule: 3e-3, then the cosine values.
    np.testing.assert_allclose(hist["lr"], [3e-3, 3e-3 * 0.75, 3e-3 * 0.25])
    # evaluate() agrees with the recorded test accuracy and restores training mode.
    model.train()
    assert evaluate(model, digits.x_test, digits.y_test)["accuracy"] == hist.last["test_acc"]
    assert model.training


def test_same_seed_same_run(digits):
    runs = []
    for _ in range(2):
        model = _model(seed=3)
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        hist = fit(model, digits, opt, epochs=2, rng=np.random.default_rng(7), progress=False)
        runs.append((hist["loss"], model.parameters()[0].data.copy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_callbacks_are_called_in_order(digits):
    calls = []

    class Spy(Callback):
        def on_train_begin(self, model, optimizer):
            calls.append("begin")

        def on_batch_begin(self, xb, yb):
            calls.append("batch")

        def after_backward(self, model, optimizer):
            # Gradients exist here and the step has not happened yet.
            assert any(np.any(p.grad != 0) for p in model.parameters())
            calls.append("backward")

        def on_step_end(self, model, optimizer):
            calls.append("step")

        def on_epoch_end(self, model, epoch, record):
            record["spy"] = epoch
            calls.append("epoch")

    model = _model()
    hist = fit(
        model,
        digits,
        Adam(model.parameters()),
        epochs=1,
        batch_size=1000,
        callbacks=[Spy()],
        progress=False,
    )
    assert calls == ["begin", "batch", "backward", "step", "batch", "backward", "step", "epoch"]
    assert hist.last["spy"] == 1


def test_divergence_is_reported_not_hidden(digits):
    model = _model()
    with pytest.raises(FloatingPointError, match="diverged"):
        fit(model, digits, SGD(model.parameters(), lr=1e6), epochs=3, progress=False)


def test_bad_arguments(digits):
    model = _model()
    opt = Adam(model.parameters())
    with pytest.raises(ValueError, match="epochs"):
        fit(model, digits, opt, epochs=0, progress=False)
    with pytest.raises(TypeError, match="rng"):
        fit(model, digits, opt, epochs=1, rng=42, progress=False)
    with pytest.raises(ValueError, match="same length"):
        evaluate(model, digits.x_test, digits.y_test[:-1])
