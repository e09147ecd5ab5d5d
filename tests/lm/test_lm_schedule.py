"""The two-stage schedule (FAQ Figure 1 c-d), AdamW's groups, gradient clipping, evaluation and
checkpoints of ternref.lm."""

import numpy as np
import pytest

from ternref.data.text import load_text, sequential_batches
from ternref.lm import LMSettings, TwoStageSchedule, adamw, clip_grad_norm, evaluate_bpb
from ternref.lm.run import prepare, restore_checkpoint, run, save_checkpoint
from ternref.nn import LMCrossEntropyLoss, Parameter, TransformerLM


def small_model():
    return TransformerLM(256, dim=8, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=8,
                         max_seq_len=16, rng=np.random.default_rng(0))  # fmt: skip


def test_two_stage_schedule_reproduces_the_faq_figure():
    """700M model of the FAQ: 1.5e-3 -> 1e-3, 375 warm-up steps of 100k, wd 0.1 -> 0."""
    opt = adamw(small_model(), 1.5e-3)
    s = TwoStageSchedule(opt, 100_000, 1.5e-3, warmup=375, weight_decay=0.1)
    assert s.lr(0) == pytest.approx(1.5e-3 / 375)
    assert s.lr(374) == pytest.approx(1.5e-3)  # end of warm-up: the peak
    # just before halfway the first line, just after it the second (lower) one: a drop
    assert s.lr(49_999) == pytest.approx(1.5e-3 * 50_001 / 99_625)
    assert s.lr(50_000) == pytest.approx(1e-3 * 50_000 / 99_625)
    assert s.lr(49_999) > s.lr(50_000)
    assert s.lr(99_999) == pytest.approx(1e-3 / 99_625)  # decays to about 0
    assert s.decay(49_999) == 0.1 and s.decay(50_000) == 0.0
    s.apply(60_000)
    assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.param_groups[1]["weight_decay"] == 0
    assert all(g["lr"] == s.lr(60_000) for g in opt.param_groups)
    one = TwoStageSchedule(opt, 100, 1e-3, warmup=0, weight_decay=0.1, two_stage=False)
    assert one.decay(99) == 0.1 and one.lr(50) == pytest.approx(1e-3 * 50 / 100)


def test_adamw_decays_matrices_only():
    model = small_model()
    opt = adamw(model, 1e-3, weight_decay=0.1)
    decayed, rest = opt.param_groups
    assert all(p.data.ndim == 2 for p in decayed["params"])
    assert all(p.data.ndim == 1 for p in rest["params"]) and rest["weight_decay"] == 0.0
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[0]["decoupled"]


def test_clip_grad_norm():
    a, b = Parameter(np.zeros(3)), Parameter(np.zeros(4))
    a.grad[...] = [3.0, 0, 0]
    b.grad[...] = [0, 4.0, 0, 0]
    assert clip_grad_norm([a, b], 10.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(a.grad, [3.0, 0, 0])  # under the limit: untouched
    assert clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    total = np.sqrt(np.sum(a.grad**2) + np.sum(b.grad**2))
    assert total == pytest.approx(1.0, rel=1e-5)


def test_evaluate_bpb_scores_every_heldout_byte_once():
    corpus = load_text()
    model = small_model()
    result = evaluate_bpb(model, corpus, context=16, batch_size=64, max_bytes=1000)
    assert result["bytes"] == 1000
    # the same number by hand: mean cross-entropy over the windows, / ln 2
    loss = LMCrossEntropyLoss()
    tokens = corpus.tokens[corpus.split - 1 : corpus.split + 1000]
    nats = sum(loss(model(x), y) * y.size for x, y in sequential_batches(tokens, 64, 16))
    assert result["bits_per_byte"] == pytest.approx(nats / 1000 / np.log(2), rel=1e-9)
    with pytest.raises(ValueError, match="max_seq_len"):
        evaluate_bpb(model, corpus, context=17)


def test_schedule_refusals():
    opt = adamw(small_model(), 1e-3)
    with pytest.raises(ValueError, match="warmup"):
        TwoStageSchedule(opt, 10, 1e-3, warmup=10)
    with pytest.raises(ValueError, match="peak_lr"):
        TwoStageSchedule(opt, 10, 0.0)
    with pytest.raises(TypeError, match="Adam"):
        TwoStageSchedule(object(), 10, 1e-3)


TINY = {"dim": 8, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn_dim": 8, "context": 16,
        "batch_size": 2, "eval_bytes": 64}  # fmt: skip


@pytest.mark.parametrize("method", [None, "bitnet", "ttq"])
def test_checkpoint_resume_ends_where_an_uninterrupted_run_ends(tmp_path, method):
    from ternref.lm import train_lm

    settings = LMSettings(method=method, steps=6, eval_every=3, **TINY)
    full = run(settings, progress=False)
    ckpt = tmp_path / "run.ckpt"

    class Stop(Exception):
        pass

    def stop_at_3(step, record):  # the run is killed right after its checkpoint at step 3
        save_checkpoint(ckpt, first, step, [])
        if step == 3:
            raise Stop

    first = prepare(settings)
    s = first.settings
    with pytest.raises(Stop):
        train_lm(first.model, first.corpus, first.optimizer, first.schedule, steps=s.steps,
                 batch_size=s.batch_size, context=s.context, rng=first.batch_rng,
                 callbacks=first.callbacks, progress=False, eval_every=3, eval_bytes=64,
                 on_eval=stop_at_3)  # fmt: skip
    resumed = run(settings, checkpoint=ckpt, resume=True, progress=False)
    assert resumed["bits_per_byte"] == full["bits_per_byte"]  # bit for bit
    check = prepare(settings)
    assert restore_checkpoint(ckpt, check)[0] == 6  # the resumed run wrote its own at step 6
    with pytest.raises(ValueError, match="other settings"):
        restore_checkpoint(ckpt, prepare(LMSettings(method=method, steps=7, **TINY)))


def test_checkpoint_without_subln_setting_resumes_as_the_default_placement(tmp_path):
    """Checkpoints from before ``subln`` existed hold no such key: they trained the default."""
    import json

    import numpy as np

    settings = LMSettings(method="bitnet", steps=2, **TINY)
    p = prepare(settings)
    ckpt = tmp_path / "old.ckpt"
    save_checkpoint(ckpt, p, 1, [])
    with np.load(ckpt, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays["__header__"].tobytes().decode())
    del header["settings"]["subln"]
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "old2.ckpt.npz", **arrays)
    assert restore_checkpoint(tmp_path / "old2.ckpt.npz", prepare(settings))[0] == 1
    shared = LMSettings(method="bitnet", steps=2, subln="shared", **TINY)
    with pytest.raises(ValueError, match="other settings"):
        restore_checkpoint(tmp_path / "old2.ckpt.npz", prepare(shared))
