"""im2col / col2im: index formula, adjointness, and convolution against the direct definition."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ternref.nn import Conv2d
from ternref.nn.functional import col2im, col2im_t, conv_output_shape, im2col, im2col_t, pair


@st.composite
def conv_geometry(draw):
    """(x_shape, kernel, stride, padding) with at least one output position."""
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 8))
    w = draw(st.integers(max(1, kw - 2 * pw), 8))
    return (n, c, h, w), (kh, kw), (sh, sw), (ph, pw)


def _as_arg(p, square):
    """Pass ints when both entries agree and ``square`` is set, to exercise both spellings."""
    return p[0] if square and p[0] == p[1] else p


def naive_im2col(x, k, s, p):
    """cols[(n, i, j), (c, a, b)] = x_pad[n, c, i*sh + a, j*sw + b], by explicit loops."""
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * p[0], w + 2 * p[1]), x.dtype)
    xp[:, :, p[0] : p[0] + h, p[1] : p[1] + w] = x
    oh = (h + 2 * p[0] - k[0]) // s[0] + 1
    ow = (w + 2 * p[1] - k[1]) // s[1] + 1
    cols = np.zeros((n * oh * ow, c * k[0] * k[1]), x.dtype)
    for b_ in range(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    for a in range(k[0]):
                        for b in range(k[1]):
                            row = (b_ * oh + i) * ow + j
                            col = (ch * k[0] + a) * k[1] + b
                            cols[row, col] = xp[b_, ch, i * s[0] + a, j * s[1] + b]
    return cols


def naive_conv(x, w, bias, s, p):
    """Direct definition y[n,o,i,j] = b[o] + sum_{c,a,b} w[o,c,a,b] x_pad[n,c,i*sh+a,j*sw+b]."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * p[0], wd + 2 * p[1]))
    xp[:, :, p[0] : p[0] + h, p[1] : p[1] + wd] = x
    oh = (h + 2 * p[0] - kh) // s[0] + 1
    ow = (wd + 2 * p[1] - kw) // s[1] + 1
    y = np.zeros((n, o, oh, ow))
    for b_ in range(n):
        for oc in range(o):
            for i in range(oh):
                for j in range(ow):
                    acc = bias[oc]
                    for ch in range(c):
                        for a in range(kh):
                            for b in range(kw):
                                acc += w[oc, ch, a, b] * xp[b_, ch, i * s[0] + a, j * s[1] + b]
                    y[b_, oc, i, j] = acc
    return y


@given(conv_geometry(), st.integers(0, 2**32 - 1), st.booleans())
def test_im2col_matches_index_formula(geom, seed, square):
    shape, k, s, p = geom
    x = np.random.default_rng(seed).standard_normal(shape)
    got = im2col(x, _as_arg(k, square), _as_arg(s, square), _as_arg(p, square))
    np.testing.assert_array_equal(got, naive_im2col(x, k, s, p))
    np.testing.assert_array_equal(im2col_t(x, k, s, p), got.T)
    assert got.flags.c_contiguous and im2col_t(x, k, s, p).flags.c_contiguous


@given(conv_geometry(), st.integers(0, 2**32 - 1))
def test_im2col_t_writes_into_a_usable_out_and_ignores_any_other(geom, seed):
    shape, k, s, p = geom
    x = np.random.default_rng(seed).standard_normal(shape)
    want = naive_im2col(x, k, s, p).T
    buf = np.full(want.shape, np.nan)  # stale contents must all be overwritten
    got = im2col_t(x, k, s, p, out=buf)
    assert got is buf
    np.testing.assert_array_equal(got, want)
    frozen = np.empty(want.shape)
    frozen.setflags(write=False)
    strided = np.empty((*want.shape, 2))[..., 0]  # not C-contiguous (unless a single element)
    for bad in (np.empty(want.shape, np.float32), np.empty((want.shape[0] + 1, want.shape[1])),
                *([strided] if want.size > 1 else []), frozen, "buffer"):  # fmt: skip
        other = im2col_t(x, k, s, p, out=bad)
        assert other is not bad and other.dtype == x.dtype and other.flags.c_contiguous
        np.testing.assert_array_equal(other, want)


@given(conv_geometry(), st.integers(0, 2**32 - 1))
def test_col2im_is_the_adjoint_of_im2col(geom, seed):
    # <A x, y> == <x, A^T y> for the linear map A = im2col
    shape, k, s, p = geom
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    oh, ow = conv_output_shape(shape[2], shape[3], k, s, p)
    y = rng.standard_normal((shape[0] * oh * ow, shape[1] * k[0] * k[1]))
    lhs = np.sum(im2col(x, k, s, p) * y)
    back = col2im(y, shape, k, s, p)
    assert back.shape == shape
    np.testing.assert_allclose(lhs, np.sum(x * back), rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(col2im_t(np.ascontiguousarray(y.T), shape, k, s, p), back)


def test_col2im_counts_overlaps():
    # col2im(ones) = number of windows covering each pixel
    x_shape = (1, 1, 4, 4)
    ones = np.ones((9, 4))  # 3x3 output positions of a 2x2 kernel, stride 1
    counts = col2im(ones, x_shape, 2, 1, 0)[0, 0]
    expected = np.array([[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]], float)
    np.testing.assert_array_equal(counts, expected)


@given(conv_geometry(), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_im2col_gemm_is_direct_convolution(geom, out_ch, seed):
    shape, k, s, p = geom
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((out_ch, shape[1], *k))
    b = rng.standard_normal(out_ch)
    oh, ow = conv_output_shape(shape[2], shape[3], k, s, p)
    y = im2col(x, k, s, p) @ w.reshape(out_ch, -1).T + b
    y = y.reshape(shape[0], oh, ow, out_ch).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y, naive_conv(x, w, b, s, p), rtol=1e-12, atol=1e-12)


def test_conv_output_shape_floor_mode():
    assert conv_output_shape(28, 28, 5, 1, 2) == (28, 28)
    assert conv_output_shape(14, 14, 5) == (10, 10)
    assert conv_output_shape(7, 6, (3, 2), (2, 3), (1, 0)) == (4, 2)
    assert conv_output_shape(5, 5, 2, 2) == (2, 2)  # last row/column dropped


def test_dtype_is_preserved():
    x = np.ones((1, 2, 5, 5), np.float32)
    assert im2col(x, 3).dtype == np.float32
    assert col2im(im2col(x, 3), x.shape, 3).dtype == np.float32


def test_argument_errors():
    x = np.ones((1, 1, 4, 4))
    with pytest.raises(ValueError, match="larger than the padded input"):
        im2col(x, 5)
    with pytest.raises(ValueError, match="stride"):
        im2col(x, 2, stride=0)
    with pytest.raises(TypeError, match="kernel_size"):
        im2col(x, 2.5)
    with pytest.raises(TypeError, match="pair"):
        pair((1, 2, 3), "padding")
    with pytest.raises(ValueError, match="dimensions"):
        im2col(np.ones((4, 4)), 2)
    with pytest.raises(TypeError, match="floating"):
        im2col(np.ones((1, 1, 4, 4), int), 2)
    with pytest.raises(ValueError, match="shape"):
        col2im(np.ones((9, 5)), (1, 1, 4, 4), 2)


@given(conv_geometry(), st.integers(1, 3), st.booleans(), st.integers(0, 2**32 - 1))
def test_conv2d_layer_forward_is_direct_convolution(geom, out_ch, bias, seed):
    # the layer runs the transposed fast path (im2col_t, W2 @ cols_t), not im2col itself
    shape, k, s, p = geom
    rng = np.random.default_rng(seed)
    layer = Conv2d(shape[1], out_ch, k, stride=s, padding=p, bias=bias, rng=rng, dtype=np.float64)
    x = rng.standard_normal(shape)
    b = layer.bias.data if bias else np.zeros(out_ch)
    expect = naive_conv(x, layer.weight.data, b, s, p)
    np.testing.assert_allclose(layer(x), expect, rtol=1e-12, atol=1e-12)
    assert layer(x.astype(np.float32)).dtype == np.float32


@given(conv_geometry(), st.integers(0, 2**32 - 1), st.sampled_from([np.float64, np.float16]))
def test_col2im_t_overwrites_a_given_out(geom, seed, dtype):
    # float64 runs the Numba kernel, float16 the NumPy twin; both must overwrite stale contents
    shape, k, s, p = geom
    oh, ow = conv_output_shape(shape[2], shape[3], k, s, p)
    rng = np.random.default_rng(seed)
    cols_t = rng.standard_normal((shape[1] * k[0] * k[1], shape[0] * oh * ow)).astype(dtype)
    want = col2im_t(cols_t, shape, k, s, p)
    big = np.full((shape[0] + 2, *shape[1:]), np.nan, dtype)
    got = col2im_t(cols_t, shape, k, s, p, out=big[1:-1])  # a slice of a larger array
    assert np.shares_memory(got, big) and got.shape == shape
    np.testing.assert_array_equal(got, want)
    assert np.isnan(big[0]).all() and np.isnan(big[-1]).all()  # nothing outside out is touched


def test_col2im_t_refuses_an_unusable_out():
    shape, k = (2, 3, 5, 5), 3
    cols_t = np.ones((3 * 9, 2 * 9))
    frozen = np.empty(shape)
    frozen.setflags(write=False)
    overlapping = cols_t.reshape(-1)[: np.prod(shape)].reshape(shape)
    for bad in (np.empty(shape, np.float32), np.empty((3, 3, 5, 5)),
                np.empty((*shape, 2))[..., 0], frozen, overlapping):  # fmt: skip
        with pytest.raises(ValueError, match="out must be a C-contiguous, writeable float64"):
            col2im_t(cols_t, shape, k, out=bad)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray, got list"):
        col2im_t(cols_t, shape, k, out=[0.0])


@given(conv_geometry(), st.integers(1, 3), st.integers(0, 2**32 - 1), st.integers(0, 3))
def test_conv2d_in_chunks_of_images_is_the_unchunked_formula(geom, out_ch, seed, per):
    # Conv2d computes Y = W2 @ cols_t + b, and in its backward dcols = W2.T @ dY and col2im,
    # a chunk of images at a time; any chunk size (one image, a size that does not divide N,
    # all at once) gives the docstring's formulas on the whole batch
    import ternref.nn.layers as layers

    shape, k, s, p = geom
    rng = np.random.default_rng(seed)
    layer = Conv2d(shape[1], out_ch, k, stride=s, padding=p, rng=rng, dtype=np.float64)
    x = rng.standard_normal(shape)
    oh, ow = conv_output_shape(shape[2], shape[3], k, s, p)
    dy = rng.standard_normal((shape[0], out_ch, oh, ow))
    w2 = layer.weight.data.reshape(out_ch, -1)
    cols = im2col(x, k, s, p)
    y_t = w2 @ cols.T + layer.bias.data[:, None]
    want_y = y_t.reshape(out_ch, shape[0], oh, ow).transpose(1, 0, 2, 3)
    d_y = dy.transpose(1, 0, 2, 3).reshape(out_ch, -1)
    want_dx = col2im((w2.T @ d_y).T, shape, k, s, p)
    per_image_bytes = max(w2.shape) * oh * ow * 8  # the larger of the two workspaces
    budget = per_image_bytes * per if per else 2**40  # 0 images: everything in one chunk
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(layers, "_CHUNK_BYTES", budget)
        y = layer(x)
        dx = layer.backward(dy)
    assert y.flags.c_contiguous and dx.flags.c_contiguous
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad.reshape(out_ch, -1), d_y @ cols, rtol=1e-12,
                               atol=1e-12)  # fmt: skip
