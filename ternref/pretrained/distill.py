"""TernaryBERT distillation of all-MiniLM-L6-v2 into a ternary student, on unlabelled sentences.

Zhang, Hou, Yin, Shang, Chen, Jiang, Liu, "TernaryBERT: Distillation-aware Ultra-low Bit BERT",
EMNLP 2020, arXiv:2009.12812; the layer-wise losses are TinyBERT's (Jiao et al., arXiv:1909.10351).

Teacher: the float MiniLM. Student: a copy of it (TernaryBERT initialises the student from the
teacher) whose 36 weight matrices carry the weight quantizer of ternref's ``kd`` method
(``ternref.methods.get("kd", teacher=..., base=...)``; the default base ``"ternarybert"`` is
TernaryBERT's ``TwnQuantizer``: clip to [-2.5, 2.5], TWN's ``Delta = 0.7 mean|W|`` and
least-squares ``alpha`` per tensor, the clipped straight-through estimator). The latent float
weights are trained; the forward pass always uses their ternary projection. For one batch of
sentences (ids, mask, padded to the longest), with ``h_l`` the L + 1 hidden states (embedding
output, then each layer's output), ``S_l`` the L pre-softmax attention scores (padded keys set to
0, TernaryBERT's ``torch.where(att <= -1e2, 0, att)``) and ``e`` the unit sentence embedding::

    L = sum_{l=0..L} MSE(h_l^s, h_l^t) + sum_{l=1..L} MSE(S_l^s, S_l^t)
        + emb_weight * (1/B) sum_b ||e_b^s - e_b^t||^2

MSE is the mean over all elements of the (B, T, D) or (B, H, T, T) arrays, padded positions
included, as ``F.mse_loss`` in the official ``quant_task_glue.py``. The last term replaces
TernaryBERT's prediction-layer loss (soft cross-entropy of task logits): a sentence-embedding
model has no logits, and its output is ``e``; for unit vectors ``||e^s - e^t||^2 = 2 (1 - cos)``.
Gradients: ``2 (x^s - x^t) / size`` for each MSE, passed to
:meth:`BertEncoder.backward` as ``d_hidden_states`` and ``d_attention_scores``; the embedding
term's goes back through the pooling by :func:`pool_backward`.

Choices of this budgeted run (not the paper's GLUE recipe, which trains thousands of steps with
lr 5e-5 on task data with data augmentation): unlabelled sentences of the training split of the
Austen novels (:func:`ternref.pretrained.sentences.corpus_sentences`), Adam with a linear warm-up
over the first 10 % of the steps then linear decay to 0 (BertAdam's ``warmup_linear``), the
three embedding tables frozen in full precision (they are not ternarized, and their Adam state
would be 3 x 47 MB for rows a short run hardly visits), biases and LayerNorms trained in float.
Batches are drawn with a ``numpy.random.Generator``: sentences are shuffled, cut into chunks of
``16 * batch_size``, each chunk sorted by length and cut into batches (less padding), and the
batches of a chunk shuffled.
"""

from __future__ import annotations

import copy
import time

import numpy as np

from ternref._validate import generator, integer, real_number
from ternref.methods import get as get_method
from ternref.optim import Adam
from ternref.pretrained.minilm import NORM_EPS, POOL_EPS
from ternref.pretrained.ptq import weight_matrices

__all__ = [
    "make_student",
    "freeze_student",
    "distillation_loss",
    "pool_backward",
    "batches",
    "distill_minilm",
]


def make_student(teacher_encoder, base="ternarybert", base_hyperparameters=None):
    """A copy of ``teacher_encoder`` whose 36 weight matrices carry the ``kd`` method's quantizer.

    Returns
    -------
    (BertEncoder, KD)
        The student and the method instance that made its quantizers.
    """
    method = get_method(
        "kd",
        teacher=teacher_encoder,
        base=base,
        base_hyperparameters=dict(base_hyperparameters or {}),
    )
    student = copy.deepcopy(teacher_encoder)
    for layer in weight_matrices(student).values():
        layer.weight_quantizer = method.weight_quantizer(layer)
    for table in (student.word_embeddings, student.position_embeddings,
                  student.token_type_embeddings):  # fmt: skip
        table.weight.requires_grad = False
    return student, method


def freeze_student(student):
    """The inference form: a plain encoder with ``W_hat`` as weights, and its ternaries.

    Returns ``(BertEncoder, {hf name: Ternary})`` (the quantizers' ``to_ternary``).
    """
    out = copy.deepcopy(student)
    ternaries = {}
    for name, layer in weight_matrices(out).items():
        t = layer.weight_quantizer.to_ternary(layer.weight.data)
        layer.weight_quantizer = None
        layer.weight.data[...] = t.dense()
        ternaries[name] = t
    return out, ternaries


def pool_backward(hidden: np.ndarray, mask: np.ndarray, de: np.ndarray,
                  normalize: bool = True) -> np.ndarray:  # fmt: skip
    """dL/dH (B, T, D) from dL/de (B, D) for ``e = normalize(mean_pool(H, mask))``.

    With ``u = sum_t m_t H_t / c`` (``c = max(sum_t m_t, 1e-9)``) and ``e = u / n``,
    ``n = max(||u||, 1e-12)``: ``de/du = (I - e e^T) / n`` (for ``||u|| > 1e-12``; below it,
    ``n`` is a constant and ``de/du = I / n``), and ``dL/dH_t = m_t dL/du / c``.
    """
    m = mask.astype(hidden.dtype)
    count = np.maximum(m.sum(axis=1), hidden.dtype.type(POOL_EPS))  # (B,)
    if normalize:
        u = np.einsum("btd,bt->bd", hidden, m) / count[:, None]
        norm = np.sqrt(np.einsum("bd,bd->b", u, u))
        n = np.maximum(norm, hidden.dtype.type(NORM_EPS))
        e = u / n[:, None]
        radial = np.where(norm > NORM_EPS, np.einsum("bd,bd->b", e, de), 0.0)
        du = (de - e * radial[:, None]) / n[:, None]
    else:
        du = de
    return (m / count[:, None])[:, :, None] * du[:, None, :]


def _mse(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    diff = a - b
    return float(np.mean(diff * diff, dtype=np.float64)), diff * (2.0 / diff.size)


def distillation_loss(student_out, teacher_out, e_s, e_t, emb_weight: float = 1.0):
    """The loss of the module docstring and its gradients.

    Parameters
    ----------
    student_out, teacher_out : BertOutput
        With ``hidden_states`` and ``attention_scores``.
    e_s, e_t : ndarray (B, D)
        Student and teacher sentence embeddings.
    emb_weight : float

    Returns
    -------
    (dict, list, list, ndarray)
        The terms ``{"hidden", "attention", "embedding", "total"}``, ``d_hidden_states``,
        ``d_attention_scores`` and ``dL/de_s``.
    """
    hidden, d_hidden = 0.0, []
    for hs, ht in zip(student_out.hidden_states, teacher_out.hidden_states):
        value, grad = _mse(hs, ht)
        hidden += value
        d_hidden.append(grad)
    attention, d_scores = 0.0, []
    for ss, st in zip(student_out.attention_scores, teacher_out.attention_scores):
        value, grad = _mse(ss, st)
        attention += value
        d_scores.append(grad)
    diff = e_s - e_t
    b = e_s.shape[0]
    embedding = float(np.sum(diff * diff, dtype=np.float64)) / b
    de = (emb_weight * 2.0 / b) * diff
    terms = {
        "hidden": hidden,
        "attention": attention,
        "embedding": embedding,
        "total": hidden + attention + emb_weight * embedding,
    }
    return terms, d_hidden, d_scores, de


def batches(sentences, batch_size: int, rng: np.random.Generator, lengths):
    """An endless stream of batches (lists of sentences), as the module docstring says."""
    n = len(sentences)
    chunk = 16 * batch_size
    while True:
        order = rng.permutation(n)
        for start in range(0, n, chunk):
            part = order[start : start + chunk]
            part = part[np.argsort([lengths[i] for i in part], kind="stable")]
            groups = [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
            for g in rng.permutation(len(groups)):
                yield [sentences[i] for i in groups[g]]


def distill_minilm(
    model,
    train_sentences,
    *,
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 1e-4,
    warmup: float = 0.1,
    emb_weight: float = 1.0,
    base="ternarybert",
    base_hyperparameters=None,
    rng=None,
    max_seconds: float | None = None,
    log=None,
    log_every: int = 10,
):
    """Distil a ternary student from ``model.encoder`` (see the module docstring).

    Parameters
    ----------
    model : MiniLM
        The teacher (its encoder is not modified).
    train_sentences : list of str
        Unlabelled training sentences.
    steps, batch_size : int
    lr : float
        Peak learning rate of Adam.
    warmup : float in [0, 1)
        Share of the steps with a linearly rising learning rate.
    emb_weight : float >= 0
        Weight of the sentence-embedding term.
    base, base_hyperparameters
        The ``kd`` method's base (default TernaryBERT's quantizer).
    rng : numpy.random.Generator
        Draws the batches.
    max_seconds : float, optional
        Stop early after this much wall time (the history records where).
    log : callable, optional
        Called with a line every ``log_every`` steps.

    Returns
    -------
    (BertEncoder, list of dict)
        The trained student (with its quantizers) and the history, one record per step.

    References
    ----------
    W. Zhang et al., "TernaryBERT: Distillation-aware Ultra-low Bit BERT", EMNLP 2020,
    arXiv:2009.12812.
    """
    steps = integer(steps, "steps", low=1)
    batch_size = integer(batch_size, "batch_size", low=1)
    lr = real_number(lr, "lr", low=0.0, low_open=True)
    warmup = real_number(warmup, "warmup", low=0.0, high=1.0, high_open=True)
    emb_weight = real_number(emb_weight, "emb_weight", low=0.0)
    rng = generator(rng, "rng") if rng is not None else np.random.default_rng(0)
    log = log or (lambda line: None)
    train_sentences = list(train_sentences)
    if len(train_sentences) < batch_size:
        raise ValueError(
            f"need at least batch_size={batch_size} training sentences, got {len(train_sentences)}"
        )
    teacher = model.encoder
    teacher.eval()
    student, _ = make_student(teacher, base, base_hyperparameters)
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = Adam(params, lr=lr)
    lengths = [len(e.ids) for e in model.tokenizer.encode_batch(train_sentences)]
    stream = batches(train_sentences, batch_size, rng, lengths)
    warm = max(1, round(warmup * steps))
    history = []
    t_start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(steps):
        # BertAdam warmup_linear: x / w below w, then (1 - x) / (1 - w), x = step / steps
        factor = (step + 1) / warm if step < warm else max(0.0, (steps - step) / (steps - warm))
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        ids, mask = model.batch_ids(next(stream))
        t_out = teacher.forward(ids, attention_mask=mask, output_hidden_states=True,
                                output_attention_scores=True)  # fmt: skip
        e_t = model.pool(t_out.last_hidden_state, mask)
        s_out = student.forward(ids, attention_mask=mask, output_hidden_states=True,
                                output_attention_scores=True)  # fmt: skip
        e_s = model.pool(s_out.last_hidden_state, mask)
        terms, d_hidden, d_scores, de = distillation_loss(s_out, t_out, e_s, e_t, emb_weight)
        dy = pool_backward(s_out.last_hidden_state, mask, de, model.normalize)
        optimizer.zero_grad()
        student.backward(dy, d_hidden, d_scores)
        optimizer.step()
        elapsed = time.perf_counter() - t_start
        record = {"step": step + 1, "lr": lr * factor, "sentences": int(ids.shape[0]),
                  "tokens": int(mask.sum()), "seconds": elapsed,
                  "cpu_seconds": time.process_time() - cpu_start, **terms}  # fmt: skip
        history.append(record)
        if (step + 1) % log_every == 0 or step == 0:
            log(
                f"step {step + 1}/{steps}  loss {terms['total']:.4f} (hidden {terms['hidden']:.4f}"
                f", attention {terms['attention']:.4f}, embedding {terms['embedding']:.4f})  "
                f"lr {lr * factor:.2e}  {elapsed:.0f} s"
            )
        if max_seconds is not None and elapsed > max_seconds and step + 1 < steps:
            log(f"stopped after {step + 1} steps: {elapsed:.0f} s > max_seconds={max_seconds}")
            break
    student.eval()
    return student, history
