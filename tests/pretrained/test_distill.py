"""TernaryBERT distillation: the pooling backward, the loss gradients, the student, a short run."""

import sys
from pathlib import Path

import numpy as np
import pytest

from ternref.methods.kd import TernaryBERTQuantizer
from ternref.nn.gradcheck import numerical_gradient, rel_error
from ternref.pretrained import l2_normalize, mean_pool
from ternref.pretrained.distill import (
    batches,
    distill_minilm,
    distillation_loss,
    freeze_student,
    make_student,
    pool_backward,
)
from ternref.pretrained.ptq import weight_matrices

sys.path.insert(0, str(Path(__file__).parent))
from minilm_helpers import tiny_encoder  # noqa: E402


def test_pool_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((3, 5, 4))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    de = rng.standard_normal((3, 4))
    for normalize in (True, False):
        pool = (lambda x: l2_normalize(mean_pool(x, mask))) if normalize else (
            lambda x: mean_pool(x, mask))  # fmt: skip
        num = numerical_gradient(pool, h, de)
        ana = pool_backward(h, mask, de, normalize)
        assert rel_error(ana, num) < 1e-7
        assert np.all(ana[mask == 0] == 0)  # padding gets no gradient


def test_loss_gradients_reach_every_parameter_correctly():
    """The whole objective (hidden states, scores, pooled embedding) against finite
    differences, float64, with the student's weights in float (no quantizer) so that the
    derivative exists."""
    teacher = tiny_encoder(0, np.float64)
    student = tiny_encoder(1, np.float64)
    ids = np.array([[2, 7, 8, 9, 3], [2, 10, 3, 0, 0]])
    mask = (np.arange(5)[None] < np.array([[5], [3]])).astype(np.int64)
    t_out = teacher.forward(ids, attention_mask=mask, output_hidden_states=True,
                            output_attention_scores=True)  # fmt: skip
    e_t = l2_normalize(mean_pool(t_out.last_hidden_state, mask))

    def loss():
        s_out = student.forward(ids, attention_mask=mask, output_hidden_states=True,
                                output_attention_scores=True)  # fmt: skip
        e_s = l2_normalize(mean_pool(s_out.last_hidden_state, mask))
        return distillation_loss(s_out, t_out, e_s, e_t, emb_weight=0.7), s_out

    (terms, d_hidden, d_scores, de), s_out = loss()
    assert terms["total"] == pytest.approx(
        terms["hidden"] + terms["attention"] + 0.7 * terms["embedding"]
    )
    student.zero_grad()
    student.backward(pool_backward(s_out.last_hidden_state, mask, de), d_hidden, d_scores)
    layer = student.layers[1]
    for param in (layer.attention.q_proj.weight, layer.output.bias, layer.attention_norm.weight,
                  student.layers[0].intermediate.weight):  # fmt: skip
        sl = (slice(0, 3),) * param.data.ndim
        # a basic-slice view: numerical_gradient perturbs the parameter itself in place
        num = numerical_gradient(lambda _: loss()[0][0]["total"], param.data[sl])
        assert rel_error(param.grad[sl], num) < 1e-6, param.name


def test_student_is_the_teacher_with_ternarybert_quantizers(tiny_model):
    student, method = make_student(tiny_model.encoder)
    assert method.info.name == "kd"
    for name, layer in weight_matrices(student).items():
        assert isinstance(layer.weight_quantizer, TernaryBERTQuantizer)
        np.testing.assert_array_equal(
            layer.weight.data, weight_matrices(tiny_model.encoder)[name].weight.data
        )
    assert weight_matrices(tiny_model.encoder)["encoder.layer.0.output.dense.weight"] \
        .weight_quantizer is None  # the teacher is untouched  # fmt: skip
    assert not student.word_embeddings.weight.requires_grad
    frozen, ternaries = freeze_student(student)
    for name, layer in weight_matrices(frozen).items():
        assert layer.weight_quantizer is None
        np.testing.assert_array_equal(layer.weight.data, ternaries[name].dense())
        assert len(np.unique(np.abs(layer.weight.data))) <= 2


def test_batches_are_reproducible_and_cover_the_data():
    sentences = [f"s{k}" for k in range(50)]
    lengths = [k % 7 for k in range(50)]
    a = batches(sentences, 4, np.random.default_rng(0), lengths)
    b = batches(sentences, 4, np.random.default_rng(0), lengths)
    first = [next(a) for _ in range(13)]  # one pass: 50 sentences in 13 batches
    assert first == [next(b) for _ in range(13)]
    assert sorted(s for batch in first for s in batch) == sorted(sentences)


def test_a_short_run_reduces_the_loss(tiny_model):
    train = ["a cat sat on the mat.", "the dog ran away!", "is it raining today?",
             "we went home late.", "she reads many books.", "he plays the piano.",
             "they like cold tea.", "my friend lives far."]  # fmt: skip
    student, history = distill_minilm(tiny_model, train, steps=40, batch_size=8, lr=3e-3,
                                      rng=np.random.default_rng(0))  # fmt: skip
    assert len(history) == 40
    first = np.mean([h["total"] for h in history[:3]])
    last = np.mean([h["total"] for h in history[-3:]])
    assert last < 0.7 * first
    assert history[0]["lr"] == pytest.approx(3e-3 / 4)  # warm-up: 4 of 40 steps
    assert history[-1]["lr"] == pytest.approx(3e-3 / 36)  # linear decay to 0
    with pytest.raises(ValueError, match="at least batch_size"):
        distill_minilm(tiny_model, train[:2], steps=1, batch_size=4)
