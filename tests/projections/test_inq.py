"""INQ ternary (Zhou et al. 2017): codebook exponent, the paper's >= tie rule, partition masks."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.inq import (
    FIVE_BIT_PORTIONS,
    TERNARY_PORTIONS,
    inq,
    inq_exponent,
    inq_partition,
)

finite = st.floats(-1e6, 1e6, allow_subnormal=False)


def test_hand_built_case():
    # s = 0.9: 4s/3 = 1.2, n1 = 0, level 1, nonzero iff |w| >= 1/2
    w = np.array([0.9, -0.4, 0.2, 0.5, -0.5, -0.4999, 0.6])
    t = inq(w)
    assert float(t.alpha_pos) == 1.0
    assert np.array_equal(t.codes, [1, 0, 0, 1, -1, 0, 1])


def test_tie_at_half_level_is_nonzero_per_paper():
    # 2^(n1-1) itself maps to the level (>=), unlike ternref's default strict rule
    w = np.array([0.75, 0.5, -0.5, 0.4999999])  # s = 0.75: 4s/3 = 1, n1 = 0, level 1
    t = inq(w)
    assert float(t.alpha_pos) == 1.0
    assert np.array_equal(t.codes, [1, 1, -1, 0])
    w = np.array([3.0, 1.0, -1.0, 0.999])  # s = 3: 4s/3 = 4, n1 = 2, level 4, threshold 2
    assert np.array_equal(inq(w).codes, [1, 0, 0, 0])
    w = np.array([3.0, 2.0, -2.0, 1.999])
    assert np.array_equal(inq(w).codes, [1, 1, -1, 0])


@pytest.mark.parametrize("k", [-20, -3, 0, 1, 7])
def test_exponent_at_its_boundaries(k):
    s = 0.75 * 2.0**k  # 4s/3 = 2^k exactly
    assert inq_exponent(s) == k
    assert inq_exponent(np.nextafter(s, 0)) == k - 1
    assert inq_exponent(np.nextafter(1.5 * 2.0**k, 0)) == k
    assert inq_exponent(1.5 * 2.0**k) == k + 1


@given(hnp.arrays(np.float64, st.integers(1, 40), elements=finite))
def test_support_and_level_against_the_definition(w):
    t = inq(w)
    s = np.max(np.abs(w))
    if s == 0:
        assert np.all(t.codes == 0)
        return
    level = float(t.alpha_pos)
    n1 = math.log2(level)
    assert n1 == round(n1)  # a power of two
    # the defining inequality of n1: (3/4) 2^n1 <= s < (3/2) 2^n1
    assert 0.75 * level <= s < 1.5 * level
    assert np.array_equal(t.codes != 0, np.abs(w) >= level / 2)
    assert np.array_equal(np.sign(t.codes), np.sign(w) * (t.codes != 0))
    # the largest weight always maps to +-2^n1
    i = np.argmax(np.abs(w))
    assert t.dense()[i] == np.sign(w[i]) * level


def test_float32_and_zero():
    t = inq(np.array([0.3, -0.1], dtype=np.float32))
    assert t.dtype == np.float32 and float(t.alpha_pos) == 0.25
    z = inq(np.zeros(5))
    assert np.all(z.dense() == 0) and float(z.alpha_pos) == 0.0


def test_schedules():
    # the paper's ternary (2-bit) schedule: ten stages; its 5-bit one: four
    assert TERNARY_PORTIONS == (0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 1.0)
    assert FIVE_BIT_PORTIONS == (0.5, 0.75, 0.875, 1.0)


@pytest.mark.parametrize("portions", [TERNARY_PORTIONS, FIVE_BIT_PORTIONS])
def test_partition_masks_are_nested_hit_the_fractions_and_take_the_largest(portions):
    w = np.random.default_rng(0).normal(size=(13, 11))
    n = w.size
    frozen = None
    for f in portions:
        new = inq_partition(w, f, frozen)
        assert new.sum() == math.ceil(f * n)
        if frozen is not None:
            assert np.all(new[frozen])  # nested
            added = new & ~frozen
            # the weights added are the largest among those that were free
            assert np.abs(w[added]).min() >= np.abs(w[~new]).max(initial=0)
        else:
            assert np.abs(w[new]).min() >= np.abs(w[~new]).max()
        frozen = new
    assert frozen.all()


def test_partition_ranks_only_free_weights():
    w = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    frozen = np.array([False, False, False, False, True, True])  # small ones frozen earlier
    new = inq_partition(w, 0.5, frozen)
    assert np.array_equal(new, [True, False, False, False, True, True])


def test_partition_ties_break_by_position():
    w = np.array([1.0, 2.0, 2.0, 2.0])
    assert np.array_equal(inq_partition(w, 0.5), [False, True, True, False])


def test_partition_errors():
    w = np.ones(4)
    with pytest.raises(ValueError, match="must not decrease"):
        inq_partition(w, 0.25, np.array([True, True, False, False]))
    with pytest.raises(ValueError, match="fraction"):
        inq_partition(w, 1.5)
    with pytest.raises(TypeError, match="boolean"):
        inq_partition(w, 0.5, np.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        inq_partition(w, 0.5, np.zeros(3, dtype=bool))


def test_bad_weights():
    with pytest.raises(ValueError, match="finite"):
        inq(np.array([1.0, np.inf]))
    with pytest.raises(TypeError, match="floating"):
        inq(np.array([1, 2]))
    with pytest.raises(ValueError, match="empty"):
        inq(np.zeros((0, 3)))
