"""The training kernels of ternref.nn._kernels against their NumPy twins.

MaxPool 2x2, col2im and ReLU's backward: bit-identical (same comparisons, same order of
additions). BatchNorm: the kernel sums in float64, the twin in the input dtype, so they agree
within a float32 tolerance.
The layers' gradients through the kernels are checked against finite differences in
test_gradients.py (float64 runs the kernels).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ternref.nn import BatchNorm2d, MaxPool2d, ReLU
from ternref.nn import _kernels as K
from ternref.nn.functional import (
    _col2im_t_numpy,
    _im2col_t_numpy,
    col2im_t,
    conv_output_shape,
    im2col_t,
)

from .test_functional import conv_geometry

DTYPES = [np.float32, np.float64]
seeds = st.integers(0, 2**32 - 1)


def _tied_values(rng, shape, dtype, nan_rate=0.0):
    """Few distinct values so that windows often tie; optionally some NaN."""
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    if nan_rate:
        x[rng.random(shape) < nan_rate] = np.nan
    return x


# ------------------------------------------------------------------------------ MaxPool2d


@given(
    st.integers(1, 3), st.integers(1, 3), st.integers(2, 9), st.integers(2, 9),
    st.sampled_from(DTYPES), st.sampled_from([0.0, 0.1]), seeds,
)  # fmt: skip
def test_maxpool2x2_kernel_equals_twin_bit_for_bit(n, c, h, w, dtype, nan_rate, seed):
    rng = np.random.default_rng(seed)
    x = _tied_values(rng, (n, c, h, w), dtype, nan_rate)
    y, cache = K.maxpool2d_forward(x, (2, 2), (2, 2))
    assert cache[0] == "arg"  # the kernel ran
    y_twin = K.maxpool2d_forward_numpy(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(y, y_twin)  # NaN in the same places (assert treats NaN == NaN)
    assert y.dtype == y_twin.dtype
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = K.maxpool2d_backward(dy, cache, (2, 2), (2, 2))
    dx_twin = K.maxpool2d_backward_numpy(x, y_twin, dy, (2, 2), (2, 2))
    np.testing.assert_array_equal(dx, dx_twin)
    # every finite window routes its gradient to exactly one element; NaN windows route none
    oh, ow = y.shape[2:]
    windows = dx[:, :, : 2 * oh, : 2 * ow].reshape(n, c, oh, 2, ow, 2)
    routed = np.count_nonzero(windows, axis=(3, 5))
    np.testing.assert_array_equal(routed, ~np.isnan(y) & (dy != 0))
    assert not dx[:, :, 2 * oh :].any() and not dx[:, :, :, 2 * ow :].any()  # floor mode


@given(
    st.integers(1, 3), st.integers(1, 3), st.integers(2, 9), st.integers(2, 9),
    st.sampled_from(DTYPES), st.sampled_from([0.0, 0.1]), seeds,
)  # fmt: skip
def test_maxpool2x2_inference_kernel_equals_twin_bit_for_bit(n, c, h, w, dtype, nan_rate, seed):
    """The forward-only kernel of the inference plan: odd sizes (floor mode drops the last row
    or column), ties, NaN windows, an all-zero input."""
    x = _tied_values(np.random.default_rng(seed), (n, c, h, w), dtype, nan_rate)
    for arr in (x, np.zeros_like(x)):
        y = np.empty((n, c, h // 2, w // 2), dtype)
        K.maxpool2x2_inference(arr, y)
        np.testing.assert_array_equal(y, K.maxpool2d_forward_numpy(arr, (2, 2), (2, 2)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2x2_kernel_all_zero_input_routes_to_the_first_element(dtype):
    x = np.zeros((1, 1, 4, 4), dtype)
    layer = MaxPool2d(2)
    y = layer(x)
    np.testing.assert_array_equal(y, 0)
    dx = layer.backward(np.ones_like(y))
    np.testing.assert_array_equal(dx[0, 0], np.tile([[1, 0], [0, 0]], (2, 2)))


def test_maxpool_other_windows_and_dtypes_run_the_twin():
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 7)).astype(np.float32)
    assert K.maxpool2d_forward(x, (3, 3), (2, 2))[1][0] == "x"
    assert K.maxpool2d_forward(x.astype(np.float16), (2, 2), (2, 2))[1][0] == "x"


# ------------------------------------------------------------------------------ BatchNorm


@given(
    st.integers(1, 4), st.integers(1, 3), st.integers(1, 12), st.sampled_from(DTYPES),
    st.booleans(), seeds,
)  # fmt: skip
def test_batchnorm_kernels_equal_twins(n, c, p, dtype, constant_channel, seed):
    if n * p < 2:
        n = 2
    rng = np.random.default_rng(seed)
    x3 = (rng.standard_normal((n, c, p)) * 3 + 1).astype(dtype)
    if constant_channel:
        x3[:, 0, :] = 1.5  # var = 0: must not give NaN
    gamma = (rng.random(c) + 0.5).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    tol = {"rtol": 2e-5, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-11, "atol": 1e-11}
    y, mu, var, inv_std = K.batchnorm_train_forward(x3, gamma, beta, 1e-5)
    y_t, mu_t, var_t, inv_std_t = K.batchnorm_train_forward_numpy(x3, gamma, beta, 1e-5)
    for got, want in ((y, y_t), (mu, mu_t), (var, var_t), (inv_std, inv_std_t)):
        assert got.dtype == want.dtype == dtype
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, **tol)
    a = gamma * inv_std
    dy = rng.standard_normal(x3.shape).astype(dtype)
    got = K.batchnorm_train_backward(dy, x3, mu, inv_std, a)
    want = K.batchnorm_train_backward_numpy(dy, x3, mu, inv_std, a)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == dtype
        scale = max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(g / scale, w / scale, **tol)


def test_batchnorm_layer_float16_runs_the_twin_and_matches_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    y32 = BatchNorm2d(2)(x)
    y16 = BatchNorm2d(2)(x.astype(np.float16))
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16, y32, atol=1e-2)


# ------------------------------------------------------------------------------ col2im


@given(conv_geometry(), st.sampled_from(DTYPES), seeds)
def test_col2im_kernel_equals_twin_bit_for_bit(geom, dtype, seed):
    shape, k, s, p = geom
    oh, ow = conv_output_shape(shape[2], shape[3], k, s, p)
    rows, cols = shape[1] * k[0] * k[1], shape[0] * oh * ow
    cols_t = np.random.default_rng(seed).standard_normal((rows, cols)).astype(dtype)
    got = col2im_t(cols_t, shape, k, s, p)  # float32/64: the kernel
    want = _col2im_t_numpy(cols_t, shape, k, s, p, (oh, ow))
    assert got.dtype == want.dtype == dtype and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


@given(conv_geometry(), st.sampled_from(DTYPES), seeds, st.booleans())
def test_im2col_kernel_equals_twin_bit_for_bit(geom, dtype, seed, given_out):
    """Every geometry of the strategy (strides 1-3, so both loop nests of the kernel, padding
    0-2, kernels wider than the input with padding), into a fresh array or a given ``out``."""
    shape, k, s, p = geom
    oh, ow = conv_output_shape(shape[2], shape[3], k, s, p)
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    want = _im2col_t_numpy(x, k, s, p, (oh, ow))
    out = np.full(want.shape, np.nan, dtype) if given_out else None
    got = im2col_t(x, k, s, p, out=out)  # float32/64: the kernel
    assert got.dtype == want.dtype == dtype and got.flags.c_contiguous
    assert (got is out) == given_out
    np.testing.assert_array_equal(got, want)


def test_kernels_run_as_plain_python_with_jit_disabled(run_without_jit):
    """NUMBA_DISABLE_JIT=1: the kernels execute line by line as Python and agree with the twins."""
    script = """
        import numpy as np
        from ternref.nn import _kernels as K
        from ternref.nn.functional import (_col2im_t_numpy, _im2col_t_numpy, col2im_t,
                                           conv_output_shape, im2col_t)
        assert not hasattr(K._maxpool2x2_forward_kernel, "py_func"), "jit was not disabled"
        rng = np.random.default_rng(0)
        x = rng.integers(-2, 3, (2, 3, 5, 6)).astype(np.float32)
        y, cache = K.maxpool2d_forward(x, (2, 2), (2, 2))
        assert np.array_equal(y, K.maxpool2d_forward_numpy(x, (2, 2), (2, 2)))
        y_inference = np.empty_like(y)
        K.maxpool2x2_inference(x, y_inference)
        assert np.array_equal(y_inference, y)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        assert np.array_equal(K.maxpool2d_backward(dy, cache, (2, 2), (2, 2)),
                              K.maxpool2d_backward_numpy(x, y, dy, (2, 2), (2, 2)))
        x3 = rng.standard_normal((4, 3, 5))
        g, b = rng.random(3) + 0.5, rng.standard_normal(3)
        for got, want in zip(K.batchnorm_train_forward(x3, g, b, 1e-5),
                             K.batchnorm_train_forward_numpy(x3, g, b, 1e-5)):
            assert np.allclose(got, want, rtol=1e-12, atol=1e-12)
        xi = rng.standard_normal((2, 3, 5, 6))
        for stride in (1, 2):
            oh, ow = conv_output_shape(5, 6, (3, 3), (stride, stride), (1, 0))
            assert np.array_equal(im2col_t(xi, 3, stride, (1, 0)),
                                  _im2col_t_numpy(xi, (3, 3), (stride,) * 2, (1, 0), (oh, ow)))
        cols = rng.standard_normal((3 * 9, 2 * 4 * 5))
        assert np.array_equal(col2im_t(cols, (2, 3, 5, 6), 3, 1, (1, 0)),
                              _col2im_t_numpy(cols, (2, 3, 5, 6), (3, 3), (1, 1), (1, 0), (5, 4)))
        x = rng.standard_normal((2, 3, 5))
        y, dy = np.maximum(x, 0), rng.standard_normal(x.shape)
        assert np.array_equal(K.relu_backward(dy, y), K.relu_backward_numpy(dy, y))
        print("ok")
        """
    run_without_jit(script)


# ------------------------------------------- eval-mode BatchNorm -> ReLU -> MaxPool (fused)


@given(
    st.integers(1, 3), st.integers(1, 4), st.integers(2, 9), st.integers(2, 9),
    st.sampled_from(DTYPES), st.sampled_from([0.0, 0.1]), seeds,
)  # fmt: skip
def test_affine_relu_maxpool2x2_kernel_equals_twin_bit_for_bit(c, n, h, w, dtype, nan_rate, seed):
    rng = np.random.default_rng(seed)
    y_t = _tied_values(rng, (c, n, h, w), dtype, nan_rate)  # (C, N, H, W): a GEMM's layout
    a = rng.choice([-1.0, 0.5, 1.0, 2.0], size=c).astype(dtype)
    b = rng.choice([-1.0, 0.0, 0.25], size=c).astype(dtype)
    out = K.affine_relu_maxpool2x2(y_t, a, b)
    twin = K.affine_relu_maxpool2x2_numpy(y_t, a, b)
    assert out.dtype == twin.dtype and out.shape == (n, c, h // 2, w // 2)
    np.testing.assert_array_equal(out, twin)
    # and the layers' path: transpose, BatchNorm's y * a + b, ReLU, MaxPool2d
    z = np.ascontiguousarray(y_t.transpose(1, 0, 2, 3)) * a[None, :, None, None]
    z += b[None, :, None, None]
    np.testing.assert_array_equal(out, MaxPool2d(2).forward(np.maximum(z, dtype(0))))


def test_affine_relu_maxpool2x2_other_dtypes_run_the_twin():
    y_t = np.arange(2 * 1 * 4 * 4, dtype=np.float16).reshape(2, 1, 4, 4) - 8
    a, b = np.ones(2, np.float16), np.zeros(2, np.float16)
    out = K.affine_relu_maxpool2x2(y_t, a, b)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, K.affine_relu_maxpool2x2_numpy(y_t, a, b))


# ------------------------------------------------------------------------------ ReLU


def _special_values(rng, shape, dtype):
    """Ties at zero, signed zeros, NaN and infinities among ordinary values."""
    pool = np.array([-2.0, -1.0, -0.0, 0.0, 0.5, 3.0, np.nan, np.inf, -np.inf], dtype)
    return rng.choice(pool, size=shape)


@given(
    st.lists(st.integers(1, 7), min_size=1, max_size=4), st.sampled_from(DTYPES),
    st.booleans(), seeds,
)  # fmt: skip
def test_relu_backward_equals_twin_and_the_input_mask_bit_for_bit(shape, dtype, strided, seed):
    rng = np.random.default_rng(seed)
    x = _special_values(rng, shape, dtype)
    dy = _special_values(rng, shape, dtype)
    if strided:  # a non-contiguous gradient, as a transposed upstream view
        dy = np.ascontiguousarray(dy.T).T
    with np.errstate(invalid="ignore"):
        relu = ReLU()
        y = relu.forward(x)
        dx = relu.backward(dy)
        twin = K.relu_backward_numpy(dy, y)
        by_input = dy * (x > 0)  # the definition: the mask of the input, not of the output
    assert dx.dtype == twin.dtype == dtype and dx.shape == x.shape
    for want in (twin, by_input):  # bytes: NaN payloads and the sign of zero included
        assert np.ascontiguousarray(dx).tobytes() == np.ascontiguousarray(want).tobytes()


def test_relu_backward_kernel_on_empty_arrays():
    for dtype in DTYPES:
        empty = np.empty((0, 3), dtype)
        dx = K.relu_backward(empty, empty)
        assert dx.shape == (0, 3) and dx.dtype == dtype


def test_relu_backward_other_dtypes_run_the_twin():
    x = np.array([-1.0, 0.0, 2.0], np.float16)
    dy = np.array([3.0, 4.0, 5.0], np.float16)
    dx = K.relu_backward(dy, np.maximum(x, np.float16(0)))
    assert dx.dtype == np.float16
    np.testing.assert_array_equal(dx, [0.0, 0.0, 5.0])
