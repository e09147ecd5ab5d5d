"""The benchmark's timing loop: interleaved calls, at least ``reps`` rounds, a time budget."""

import time

import pytest

from ternref.packed.bench import MAX_ROUNDS, interleaved_medians


def _recorder(log, name, seconds=0.0):
    def fn():
        log.append(name)
        if seconds:
            time.sleep(seconds)  # the callable's own work, not a pause between calls

    return fn


def test_calls_alternate_after_one_untimed_call_each():
    log = []
    ms = interleaved_medians({"a": _recorder(log, "a"), "b": _recorder(log, "b")}, 4, 0.0)
    assert log == ["a", "b"] * 5  # the compile call of each, then 4 rounds in turn
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())


def test_rounds_continue_until_the_time_budget():
    log = []
    fns = {"a": _recorder(log, "a", 0.001), "b": _recorder(log, "b", 0.001)}
    ms = interleaved_medians(fns, 2, min_seconds=0.05)
    rounds = len(log) // 2 - 1
    assert len(log) % 2 == 0 and log[::2] == ["a"] * (rounds + 1)
    # every round takes at least 2 ms, so 0.05 s of calls needs at most 25 rounds; and the
    # loop cannot have stopped at the 2 rounds asked for
    assert 2 < rounds <= 26
    assert ms["a"] >= 1.0 and ms["b"] >= 1.0


def test_rounds_stop_at_the_cap():
    log = []
    interleaved_medians({"a": _recorder(log, "a")}, 1, min_seconds=1e9)
    assert len(log) == MAX_ROUNDS + 1


@pytest.mark.parametrize("reps", [0, -3])
def test_reps_must_be_positive(reps):
    with pytest.raises(ValueError, match="reps must be a positive integer"):
        interleaved_medians({"a": lambda: None}, reps)
