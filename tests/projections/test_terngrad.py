"""TernGrad (Wen et al. 2017): unbiasedness, the two magnitudes {0, s}, clipping by c * sigma."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.terngrad import PAPER_CLIP, clip_by_stddev, terngrad

G = np.array([0.8, -0.05, 0.3, 0.0, -0.8, 0.61, -0.2, 1e-4])


def test_unbiased_within_5_sigma():
    n = 100_000
    tiled = np.broadcast_to(G, (n, G.size)).copy()  # max|g| is unchanged by tiling
    t = terngrad(tiled, np.random.default_rng(0))
    s = np.max(np.abs(G))
    assert float(t.alpha_pos) == s
    var = s * np.abs(G) - G**2  # E[g~^2] - g^2 with E[g~^2] = s^2 |g|/s
    assert np.all(np.abs(t.dense().mean(axis=0) - G) <= 5 * np.sqrt(var / n) + 1e-9)


@given(hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e3, 1e3)), st.integers(0, 9))
def test_magnitudes_are_zero_or_max_and_signs_are_kept(g, seed):
    t = terngrad(g, np.random.default_rng(seed))
    s = np.max(np.abs(g))
    d = t.dense()
    assert np.all((np.abs(d) == 0) | (np.abs(d) == s))
    assert np.all(d * np.sign(g) >= 0)
    assert np.all(d[np.abs(g) == s] == g[np.abs(g) == s])  # probability one at |g| = s
    assert np.all(d[g == 0] == 0)


def test_all_zero_gradient_gives_zero_scale_and_no_nan():
    t = terngrad(np.zeros((4, 3), dtype=np.float32), np.random.default_rng(0))
    assert float(t.alpha_pos) == 0.0 and t.dtype == np.float32
    assert np.all(t.dense() == 0)


def test_clip_by_stddev_matches_hand_computation():
    g = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    mean = sum(g) / 5
    sigma = (sum((x - mean) ** 2 for x in g) / 5) ** 0.5
    expected = [min(max(x, -2.5 * sigma), 2.5 * sigma) for x in g]
    assert np.allclose(clip_by_stddev(g, PAPER_CLIP), expected, rtol=1e-15)
    assert clip_by_stddev(g, 2.5)[-1] < 100.0


def test_clipping_sets_the_scale_and_stays_unbiased_for_the_clipped_gradient():
    g = np.array([0.1, -0.2, 0.05, 5.0, -0.15, 0.12, 0.0, -0.07])
    c = clip_by_stddev(g, 2.5)
    n = 50_000
    t = terngrad(np.broadcast_to(g, (n, g.size)).copy(), np.random.default_rng(1), clip=2.5)
    s = np.max(np.abs(c))
    assert np.isclose(float(t.alpha_pos), s, rtol=1e-12)
    var = s * np.abs(c) - c**2
    assert np.all(np.abs(t.dense().mean(axis=0) - c) <= 5 * np.sqrt(var / n) + 1e-9)


def test_same_seed_same_output_and_dtype_kept():
    g = np.random.default_rng(3).normal(size=(5, 7)).astype(np.float32)
    a = terngrad(g, np.random.default_rng(9))
    assert a == terngrad(g, np.random.default_rng(9))
    assert a.dtype == np.float32


def test_bad_arguments():
    with pytest.raises(TypeError, match="rng"):
        terngrad(G, 1)
    with pytest.raises(ValueError, match="clip"):
        terngrad(G, np.random.default_rng(0), clip=0.0)
    with pytest.raises(ValueError, match="g must be finite"):
        terngrad(np.array([np.nan]), np.random.default_rng(0))
    with pytest.raises(TypeError, match="g must have a floating-point dtype"):
        terngrad(np.array([1, 2]), np.random.default_rng(0))
