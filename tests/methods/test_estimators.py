"""Every gradient estimator of ``ternref.methods.estimators`` against its stated formula.

Hand-built cases, finite differences where the rule is an exact derivative (TTQ's scales, STTN's
alpha coupling), and integrals where the rule is a surrogate of a jump (GXNOR, ApproxSign).
"""

import numpy as np
import pytest

from ternref.methods import estimators as est
from ternref.nn.gradcheck import numerical_gradient, rel_error


# --------------------------------------------------------------------------- identity / clipped
def test_identity_ste_returns_g_unchanged():
    g = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)
    out = est.identity_ste(g)
    np.testing.assert_array_equal(out, g)
    assert out.dtype == np.float32


def test_clipped_ste_hand_built():
    w = np.array([-2.0, -1.0, -0.5, 0.0, 1.0, 1.5])
    g = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    # 1[|w| <= 1]: the boundary |w| = 1 passes
    np.testing.assert_array_equal(est.clipped_ste(g, w), [0, 2, 3, 4, 5, 0])
    # TernaryBERT's c = 2.5 keeps everything here
    np.testing.assert_array_equal(est.clipped_ste(g, w, clip=2.5), g)
    np.testing.assert_array_equal(est.clipped_ste(g, w, clip=0.75), [0, 0, 3, 4, 0, 0])


def test_clipped_ste_keeps_dtype_and_rejects_bad_clip():
    g = np.ones(3, dtype=np.float32)
    assert est.clipped_ste(g, np.zeros(3, dtype=np.float32)).dtype == np.float32
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="clip"):
            est.clipped_ste(g, g, clip=bad)


# --------------------------------------------------------------------------------------- TTQ
def _ttq_dense(codes, w_p, w_n):
    return w_p * (codes > 0) - w_n * (codes < 0)


def test_ttq_latent_gradient_hand_built():
    codes = np.array([1, 0, -1, 1, -1], dtype=np.int8)
    g = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    dw, d_wp, d_wn = est.ttq_scaled_ste(g, codes, w_p=0.5, w_n=2.0)
    # Eq. 8: W_p * g on I_p, 1 * g on I_0, W_n * g on I_n
    np.testing.assert_allclose(dw, [0.5, 2.0, 6.0, 2.0, 10.0])
    assert d_wp == pytest.approx(1.0 + 4.0)
    assert d_wn == pytest.approx(-(3.0 + 5.0))  # chain rule through the level -W_n


def test_ttq_scale_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    codes = rng.integers(-1, 2, size=(6, 9)).astype(np.int8)
    g = rng.standard_normal((6, 9))
    scales = np.array([0.7, 1.3])  # (W_p, W_n)

    def loss(s):  # L = <g, w_hat(W_p, W_n)>, so dL/dw_hat = g
        return np.sum(g * _ttq_dense(codes, s[0], s[1]))

    numeric = numerical_gradient(loss, scales)
    _, d_wp, d_wn = est.ttq_scaled_ste(g, codes, w_p=0.7, w_n=1.3)
    assert rel_error(np.array([d_wp, d_wn]), numeric) < 1e-8


def test_ttq_wn_gradient_sign_is_minus():
    # All weights negative, upstream gradient positive: increasing W_n lowers w_hat = -W_n and
    # therefore lowers L = sum(g * w_hat). The paper's printed Eq. 7 / the PyTorch port would give
    # +3 here; the chain rule gives -3.
    codes = -np.ones(3, dtype=np.int8)
    g = np.ones(3)
    _, d_wp, d_wn = est.ttq_scaled_ste(g, codes, w_p=1.0, w_n=1.0)
    assert d_wp == 0.0
    assert d_wn == -3.0


def test_ttq_keeps_dtype():
    codes = np.array([1, 0, -1], dtype=np.int8)
    dw, _, _ = est.ttq_scaled_ste(np.ones(3, dtype=np.float32), codes, 0.3, 0.4)
    assert dw.dtype == np.float32


# ------------------------------------------------------------------------------------- GXNOR
@pytest.mark.parametrize("r, a", [(1.0, 0.5), (2.0, 0.25), (0.5, 0.5)])
def test_gxnor_window_integrates_to_the_jump_on_each_side(r, a):
    # phi(x) = sign(x) 1[|x| > r] jumps by 1 at +r and by 1 at -r; the window derivative must
    # integrate to 1 over each half-line (midpoint rule on a fine grid).
    h = 1e-4
    x = np.arange(-10.0, 10.0, h) + h / 2
    d = est.gxnor_window(np.ones_like(x), x, r=r, a=a)
    assert np.sum(d[x > 0]) * h == pytest.approx(1.0, abs=1e-3)
    assert np.sum(d[x < 0]) * h == pytest.approx(1.0, abs=1e-3)


def test_gxnor_window_hand_built_default():
    x = np.array([0.0, 0.4, 0.5, 0.6, 1.0, 1.4, 1.5, 2.0, -1.0, -0.6])
    g = np.full_like(x, 3.0)
    # default r = 1, a = 0.5: height 1/(2a) = 1 on 0.5 < |x| < 1.5 (open), zero in the zero zone
    np.testing.assert_array_equal(est.gxnor_window(g, x), [0, 0, 0, 3, 3, 3, 0, 0, 3, 3])


def test_gxnor_window_rejects_bad_parameters():
    with pytest.raises(ValueError, match="^a must"):
        est.gxnor_window(np.ones(2), np.ones(2), a=0.0)
    with pytest.raises(ValueError, match="^r must"):
        est.gxnor_window(np.ones(2), np.ones(2), r=-1.0)


# ------------------------------------------------------------------------------ ApproxSign
def test_approx_sign_hand_built_and_integral():
    x = np.array([-2.0, -1.0, -0.5, 0.0, 0.25, 1.0, 3.0])
    np.testing.assert_allclose(est.approx_sign(np.ones_like(x), x), [0, 0, 1, 2, 1.5, 0, 0])
    h = 1e-4
    grid = np.arange(-3.0, 3.0, h) + h / 2
    total = np.sum(est.approx_sign(np.ones_like(grid), grid)) * h
    assert total == pytest.approx(2.0, abs=1e-6)  # the jump of sign at 0


def test_approx_sign_is_the_derivative_of_the_piecewise_polynomial():
    # Bi-Real Net's ApproxSign: F(x) = -1 (x < -1), 2x + x^2 (-1 <= x < 0), 2x - x^2 (0 <= x < 1),
    # 1 (x >= 1). Its derivative is 2 - 2|x| on |x| < 1, else 0.
    def f(x):
        return np.where(
            x < -1, -1.0, np.where(x < 0, 2 * x + x * x, np.where(x < 1, 2 * x - x * x, 1.0))
        )

    x = np.array([-1.7, -0.8, -0.3, 0.2, 0.6, 0.95, 1.4])
    g = np.random.default_rng(1).standard_normal(x.shape)
    numeric = numerical_gradient(f, x.copy(), g)
    assert rel_error(est.approx_sign(g, x), numeric) < 1e-7


# ------------------------------------------------------------------------------------- STTN
def _alpha(w1, w2):
    axes = tuple(range(1, w1.ndim))
    n = w1[0].size
    return (np.abs(w1).sum(axis=axes, keepdims=True) + np.abs(w2).sum(axis=axes, keepdims=True)) / (
        2 * n
    )


@pytest.mark.parametrize("shape", [(4, 7), (3, 2, 3, 3)])
def test_sttn_coupling_term_matches_finite_differences(shape):
    # With S_k = sign(W_k) held fixed, L(W1, W2) = <g1, alpha(W) S1> + <g2, alpha(W) S2>. Its exact
    # derivative is the alpha-coupling term; sttn_coupled adds the STE term alpha g_k 1[|W_k|<=c].
    rng = np.random.default_rng(2)
    w1 = rng.uniform(-1.5, 1.5, size=shape)
    w2 = rng.uniform(-1.5, 1.5, size=shape)
    g1 = rng.standard_normal(shape)
    g2 = rng.standard_normal(shape)
    s1, s2 = np.sign(w1), np.sign(w2)

    def loss_w1(_):
        a = _alpha(w1, w2)
        return np.sum(g1 * a * s1) + np.sum(g2 * a * s2)

    num1 = numerical_gradient(loss_w1, w1)
    num2 = numerical_gradient(loss_w1, w2)
    d1, d2 = est.sttn_coupled(g1, g2, w1, w2, clip=1.0)
    a = _alpha(w1, w2)
    ste1 = a * g1 * (np.abs(w1) <= 1.0)
    ste2 = a * g2 * (np.abs(w2) <= 1.0)
    assert rel_error(d1 - ste1, num1) < 1e-8
    assert rel_error(d2 - ste2, num2) < 1e-8


def test_sttn_coupling_counts_an_exact_zero_weight_as_plus_one():
    # The forward binarizes with sgn(0) = +1, so a zero latent weight contributes +alpha to the
    # output and its g to the alpha-coupling sum (the derivative of |W| at 0 stays 0).
    rng = np.random.default_rng(5)
    shape = (3, 6)
    w1 = rng.uniform(-1, 1, size=shape)
    w2 = rng.uniform(-1, 1, size=shape)
    w1[0, 2] = 0.0
    w2[1, 4] = 0.0
    g1 = rng.standard_normal(shape)
    g2 = rng.standard_normal(shape)
    b1, b2 = np.where(w1 >= 0, 1.0, -1.0), np.where(w2 >= 0, 1.0, -1.0)  # forward's sgn, fixed

    def loss(_):
        a = _alpha(w1, w2)
        return np.sum(g1 * a * b1) + np.sum(g2 * a * b2)

    d1, d2 = est.sttn_coupled(g1, g2, w1, w2, clip=1.0)
    a = _alpha(w1, w2)
    assert rel_error(d1 - a * g1, numerical_gradient(loss, w1)) < 1e-8
    assert rel_error(d2 - a * g2, numerical_gradient(loss, w2)) < 1e-8


def test_sttn_coupled_hand_built():
    # One output channel, n = 2. alpha = (|1| + |-0.5| + |2| + |0.25|) / 4 = 0.9375.
    w1 = np.array([[1.0, -0.5]])
    w2 = np.array([[2.0, 0.25]])
    g1 = np.array([[1.0, 2.0]])
    g2 = np.array([[-1.0, 0.5]])
    # coupling = (1*1 + 2*(-1) + (-1)*1 + 0.5*1) / (2n) = -1.5 / 4 = -0.375
    d1, d2 = est.sttn_coupled(g1, g2, w1, w2)
    np.testing.assert_allclose(d1, [[0.9375 * 1 - 0.375, 0.9375 * 2 + 0.375]])
    np.testing.assert_allclose(d2, [[0.0 - 0.375, 0.9375 * 0.5 - 0.375]])  # |2| > clip 1


def test_sttn_coupled_keeps_dtype():
    w = np.ones((2, 3), dtype=np.float32)
    d1, d2 = est.sttn_coupled(w, w, w, -w)
    assert d1.dtype == np.float32 and d2.dtype == np.float32
