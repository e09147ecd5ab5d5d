"""bitnet: the released code's rule by default, the paper's by keyword, their difference at the
rounding boundary, Pi(Pi(w)) = p Pi(w), half-to-even ties, int8 absmax activations."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ternref.projections.bitnet import bitnet, bitnet_activation

vectors = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
    elements=st.floats(-10, 10, allow_subnormal=False),
)


def _released_code(w):
    """The FAQ / Hugging Face / bitnet.cpp ``weight_quant``, transcribed line by line in NumPy
    (in ``w``'s dtype: the code computes in float32 after ``.float()``)."""
    dtype = w.dtype.type
    gamma = dtype(np.abs(w).mean(dtype=np.float64))
    s = dtype(1) / np.maximum(gamma, dtype(1e-5))  # scale = 1 / w.abs().mean().clamp_(min=1e-5)
    codes = np.clip(np.round(w * s), -1, 1)  # (w * scale).round().clamp_(-1, 1)
    return codes, codes / s  # u = ... / scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_default_is_the_released_code_bit_for_bit(dtype, data):
    w = data.draw(
        hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=1, max_dims=2, max_side=8),
            elements=st.floats(-2, 2, width=32, allow_subnormal=False),
        )
    )
    codes, w_hat = _released_code(w)
    t = bitnet(w)
    np.testing.assert_array_equal(t.codes, codes)
    assert t.dtype == dtype and t.dense().dtype == dtype
    assert np.array_equal(t.dense(), w_hat)  # bit for bit, not approximately


@given(vectors)
def test_paper_form_divides_by_gamma_plus_eps(w):
    gamma = float(np.mean(np.abs(w)))
    t = bitnet(w, form="paper")
    np.testing.assert_array_equal(t.codes, np.clip(np.round(w / (gamma + 1e-5)), -1, 1))
    assert float(t.alpha_pos) == pytest.approx(gamma, rel=1e-12, abs=0)


def _up(v):
    return np.nextafter(v, np.inf)


def _down(v):
    return np.nextafter(v, 0.0)


def test_both_forms_at_and_around_the_rounding_boundaries():
    # Probes at |w|/gamma = 0.5 and 1.5: exactly on them, one ulp above and below, and inside /
    # outside the band 0.5 < |w|/gamma < 0.5 (1 + eps/gamma) where the two forms disagree.
    probes = np.array(
        [
            0.5,
            _up(0.5),
            _down(0.5),
            0.5 * (1 + 0.5e-5),  # inside the band (eps/gamma = 1e-5)
            0.5 * (1 - 0.5e-5),
            0.5 * (1 + 2e-5),  # beyond the band
            0.5 * (1 - 2e-5),
            1.5,
            _up(1.5),
            _down(1.5),
        ]
    )
    # padding so that mean|w| is exactly 1: 2 * (7 * 0.5 + 3 * 1.5) + 2 * 3 + 978 = 1000
    w = np.concatenate([probes, -probes, [3.0, -3.0], np.ones(978)])
    assert np.abs(w).mean(dtype=np.float64) == 1.0
    code = bitnet(w)  # w * s with s = 1 exactly
    paper = bitnet(w, form="paper")  # w / (1 + 1e-5)
    #                        0.5 +ulp -ulp in-band  -   beyond  -   1.5 +ulp -ulp
    expected_code = np.array([0, 1, 0, 1, 0, 1, 0, 1, 1, 1])
    expected_paper = np.array([0, 0, 0, 0, 0, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(code.codes[:10], expected_code)
    np.testing.assert_array_equal(code.codes[10:20], -expected_code)
    np.testing.assert_array_equal(paper.codes[:10], expected_paper)
    np.testing.assert_array_equal(paper.codes[10:20], -expected_paper)
    # the two forms differ exactly on the band above 0.5; 1.5 never changes a code (clip)
    assert np.flatnonzero(code.codes != paper.codes).tolist() == [1, 3, 11, 13]
    assert float(code.alpha_pos) == 1.0
    assert float(paper.alpha_pos) == 1.0


def test_the_code_multiplies_by_a_reciprocal_not_divides():
    # float32 case found by search: gamma = mean(|x|, |y|) = 0.056063946 exactly, and
    # x * fl(1/gamma) == 0.5 (-> 0, half to even) while fl(x / gamma) == 0.50000006 (-> 1).
    x, y = np.float32("0.028031975"), np.float32("0.08409592")
    w = np.array([x, y], dtype=np.float32)
    gamma = np.float32(np.abs(w).mean(dtype=np.float64))
    assert gamma == np.float32("0.056063946")
    assert x * (np.float32(1) / gamma) == np.float32(0.5)
    assert np.round(x / gamma) == 1.0
    np.testing.assert_array_equal(bitnet(w).codes, [0, 1])


def test_below_the_clamp_the_code_divides_by_eps():
    # gamma = 4e-6 < 1e-5: the code uses s = 1/1e-5, the paper divides by gamma + eps = 1.4e-5
    w = np.array([6e-6, -2e-6, 4e-6, -4e-6])
    t = bitnet(w)
    np.testing.assert_array_equal(t.codes, [1, 0, 0, 0])  # 0.6, 0.2, 0.4, 0.4
    assert float(t.alpha_pos) == pytest.approx(1e-5, rel=1e-15)
    np.testing.assert_array_equal(bitnet(w, form="paper").codes, [0, 0, 0, 0])  # 0.43, ...


def test_rounding_is_half_to_even_like_torch_round():
    # torch.round and np.round both round halves to even; only 0.5 -> 0 matters for the codes,
    # 1.5 -> 2 and 2.5 -> 2 are clipped to 1 either way.
    np.testing.assert_array_equal(np.round([0.5, 1.5, 2.5, -0.5]), [0, 2, 2, -0])
    for form in ("code", "paper"):
        t = bitnet(np.array([0.5, 1.5, -0.5, -1.5]), eps=0.0, form=form)  # gamma = 1
        np.testing.assert_array_equal(t.codes, [0, 1, 0, -1])


@pytest.mark.parametrize("form", ["code", "paper"])
@given(w=vectors)
def test_reprojection_multiplies_by_the_density(form, w):
    t = bitnet(w, form=form)
    p = np.count_nonzero(t.codes) / t.codes.size
    again = bitnet(t.dense(), form=form)
    np.testing.assert_array_equal(again.codes, t.codes)
    alpha = float(t.alpha_pos)
    # the new mean|W| is p * alpha, clamped at eps by the code's form
    factor = p if form == "paper" or alpha == 0 else max(p * alpha, 1e-5) / alpha
    np.testing.assert_allclose(again.dense(), factor * t.dense(), rtol=1e-12)


@pytest.mark.parametrize("form", ["code", "paper"])
@given(w=vectors)
def test_nonzero_iff_above_half_gamma_away_from_ties(form, w):
    gamma = float(np.mean(np.abs(w)))
    t = bitnet(w, eps=0.0, form=form)
    half = gamma / 2
    clear = np.abs(np.abs(w) - half) > 1e-9 * (gamma + 1e-300)
    np.testing.assert_array_equal((t.codes != 0)[clear], (np.abs(w) > half)[clear])
    assert float(t.alpha_pos) == pytest.approx(gamma, rel=1e-12)


def test_not_idempotent_concrete():
    w = np.array([1.0, 0.1, -2.0, 0.0], dtype=np.float32)
    t = bitnet(w)
    assert t.codes.tolist() == [1, 0, -1, 0]
    assert bitnet(t.dense()).alpha_pos == pytest.approx(0.5 * float(t.alpha_pos), rel=1e-6)


def test_eps_and_zero_input():
    # the code's form clamps gamma at eps: scale 1e-5, all codes 0, w_hat = 0
    t = bitnet(np.zeros((2, 3), dtype=np.float32))
    assert np.all(t.codes == 0) and t.dtype == np.float32
    assert float(t.alpha_pos) == pytest.approx(1e-5, rel=1e-6)
    assert np.all(t.dense() == 0)
    # the paper's form multiplies back by gamma = 0
    t = bitnet(np.zeros((2, 3), dtype=np.float32), form="paper")
    assert np.all(t.codes == 0) and t.alpha_pos == 0
    for form in ("code", "paper"):
        t = bitnet(np.zeros(3), eps=0.0, form=form)
        assert np.all(t.codes == 0) and np.all(np.isfinite(t.dense())) and t.alpha_pos == 0
    # eps dominates tiny weights: mean|w| = 1e-6 << 1e-5, every code rounds to 0.
    assert np.all(bitnet(np.array([1e-6, -1e-6])).codes == 0)
    assert np.all(bitnet(np.array([1e-6, -1e-6]), form="paper").codes == 0)


def test_subnormal_mean_with_eps_zero_stays_finite():
    # 1 / gamma overflows float32 for a subnormal gamma: the rule is applied in float64 there
    tiny = np.float32(1e-39)
    t = bitnet(np.array([tiny, -tiny, 0, 0], dtype=np.float32), eps=0.0)
    np.testing.assert_array_equal(t.codes, [1, -1, 0, 0])  # |w| / gamma = 2
    assert np.all(np.isfinite(t.dense()))


def test_channel_granularity_one_gamma_per_row():
    w = np.array([[1.0, -0.2, 0.3], [10.0, 4.0, -1.0]])
    t = bitnet(w, granularity="channel")
    assert t.granularity == "channel"
    for row, codes in zip(w, t.codes):
        np.testing.assert_array_equal(codes, _released_code(row)[0])


def test_activation_against_a_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 16)).astype(np.float32)
    x[1, 2] = 0.0  # an all-zero token
    q, s = bitnet_activation(x)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (3, 4, 1)
    for idx in np.ndindex(3, 4):
        row = x[idx].astype(np.float64)
        scale = 127.0 / max(np.abs(row).max(), 1e-5)
        expected = np.clip(np.round(row * scale), -128, 127)
        np.testing.assert_array_equal(q[idx], expected)
        assert s[idx][0] == pytest.approx(scale, rel=1e-6)
    assert np.all(q[1, 2] == 0)
    err = np.abs(x - q / s)
    assert np.all(err <= 0.5 / s + 1e-7)
    assert np.abs(q).max() == 127


@pytest.mark.parametrize(
    ("fn", "kwargs", "error", "word"),
    [
        (bitnet, {"w": np.array([np.nan])}, ValueError, "w"),
        (bitnet, {"w": np.array([1, 2])}, TypeError, "w"),
        (bitnet, {"w": np.ones(2), "eps": -1e-5}, ValueError, "eps"),
        (bitnet, {"w": np.ones(2), "form": "torch"}, ValueError, "form"),
        (bitnet_activation, {"x": np.array([np.inf])}, ValueError, "x"),
        (bitnet_activation, {"x": np.ones(2), "eps": 0.0}, ValueError, "eps"),
    ],
)
def test_bad_inputs(fn, kwargs, error, word):
    with pytest.raises(error, match=word):
        fn(**kwargs)
