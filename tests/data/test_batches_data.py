"""batches: one epoch covers every sample once, seeded order, drop_last, argument checks."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ternref.data import batches


def epoch(n, batch_size, seed=0, **kw):
    x = np.arange(n, dtype=np.float32)
    y = np.arange(n, dtype=np.int64) * 10
    rng = np.random.default_rng(seed)
    return list(batches(x, y, batch_size, rng, **kw))


@given(
    n=st.integers(0, 60),
    batch_size=st.integers(1, 20),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
)
def test_epoch_covers_samples_exactly_once(n, batch_size, shuffle, drop_last):
    out = epoch(n, batch_size, shuffle=shuffle, drop_last=drop_last)
    sizes = [len(xb) for xb, _ in out]
    full, rest = divmod(n, batch_size)
    expected_sizes = [batch_size] * full + ([rest] if rest and not drop_last else [])
    assert sizes == expected_sizes
    seen = np.concatenate([xb for xb, _ in out]) if out else np.array([])
    # x and y stay aligned.
    for xb, yb in out:
        assert np.array_equal(yb, xb.astype(np.int64) * 10)
    # Each sample at most once; with drop_last only the `rest` leftover ones are missing.
    assert len(np.unique(seen)) == len(seen) == n - (rest if drop_last else 0)
    assert set(seen.tolist()) <= set(range(n))
    if not shuffle:
        assert seen.tolist() == list(range(len(seen)))


def test_same_seed_same_order_other_seed_other_order():
    a = np.concatenate([xb for xb, _ in epoch(100, 7, seed=1)])
    b = np.concatenate([xb for xb, _ in epoch(100, 7, seed=1)])
    c = np.concatenate([xb for xb, _ in epoch(100, 7, seed=2)])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, np.arange(100))  # actually shuffled


def test_order_is_the_documented_permutation():
    got = np.concatenate([xb for xb, _ in epoch(30, 4, seed=5)])
    assert np.array_equal(got, np.random.default_rng(5).permutation(30))


def test_consecutive_epochs_differ_with_one_generator():
    x = np.arange(50)
    rng = np.random.default_rng(0)
    e1 = np.concatenate([xb for xb, _ in batches(x, x, 8, rng)])
    e2 = np.concatenate([xb for xb, _ in batches(x, x, 8, rng)])
    assert sorted(e1) == sorted(e2) and not np.array_equal(e1, e2)


def test_images_keep_their_shape():
    x = np.zeros((10, 1, 8, 8), np.float32)
    y = np.zeros(10, np.int64)
    shapes = [xb.shape for xb, _ in batches(x, y, 4, np.random.default_rng(0))]
    assert shapes == [(4, 1, 8, 8), (4, 1, 8, 8), (2, 1, 8, 8)]


def test_drop_last_when_divisible_drops_nothing():
    assert [len(xb) for xb, _ in epoch(9, 3, drop_last=True)] == [3, 3, 3]
    assert [len(xb) for xb, _ in epoch(10, 3, drop_last=True)] == [3, 3, 3]
    assert epoch(2, 3, drop_last=True) == []


def test_no_rng_needed_without_shuffle():
    x = np.arange(5)
    out = list(batches(x, x, 2, shuffle=False))
    assert [xb.tolist() for xb, _ in out] == [[0, 1], [2, 3], [4]]


@pytest.mark.parametrize(
    "args, kwargs, error, fragment",
    [
        ((np.arange(4), np.arange(4), 2), {}, TypeError, "rng must be a numpy.random.Generator"),
        (
            (np.arange(4), np.arange(4), 2, np.random.RandomState(0)),
            {},
            TypeError,
            "rng must be a numpy.random.Generator",
        ),
        ((np.arange(4), np.arange(4), 2, 0), {}, TypeError, "rng must be a numpy.random.Generator"),
        (
            (np.arange(4), np.arange(4), 0),
            {"shuffle": False},
            ValueError,
            "batch_size must be >= 1",
        ),
        ((np.arange(4), np.arange(4), 2.0), {"shuffle": False}, TypeError, "batch_size must be an"),
        (
            (np.arange(4), np.arange(3), 2),
            {"shuffle": False},
            ValueError,
            "len\\(x\\)=4, len\\(y\\)=3",
        ),
    ],
)
def test_bad_arguments_fail_at_call_time(args, kwargs, error, fragment):
    # Raised by the call itself, not deferred to the first next().
    with pytest.raises(error, match=fragment):
        batches(*args, **kwargs)
