"""The direct float32 convolution of the inference plan (ternref.packed._direct_conv).

Kernel == NumPy twin == the training layer's im2col + GEMM forward, within a float32 tolerance
(the summation orders differ), on odd sizes, kernels wider than one five-tap pass, a single
output position, all-zero input; NaN and infinities propagate as in the GEMM; the plan runs the
kernel where it applies and the im2col path elsewhere, with the same outputs.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ternref.nn import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from ternref.packed import export
from ternref.packed._direct_conv import MAX_TAPS, conv2d_direct, conv2d_direct_numpy, flat_input

seeds = st.integers(0, 2**32 - 1)


def _kernel(x, w, b, padding, relu, n0=0, n1=None):
    n, _, h, wd = x.shape
    oh = h + 2 * padding[0] - w.shape[2] + 1
    ow = wd + 2 * padding[1] - w.shape[3] + 1
    y = np.full((n, w.shape[0], oh, ow), np.nan, np.float32)  # unwritten images stay NaN
    x_flat, hp, wp = flat_input(x, padding)
    bias = np.zeros(0, np.float32) if b is None else b
    conv2d_direct(x_flat, w, bias, b is not None, relu, hp, wp, n0, n if n1 is None else n1, y)
    return y


def _dense(x, w, b, padding, relu):
    """The training layer's forward (im2col + GEMM), the definition the kernel must equal."""
    layer = Conv2d(w.shape[1], w.shape[0], w.shape[2:], padding=padding, bias=b is not None)
    layer.weight.data[...] = w
    if b is not None:
        layer.bias.data[...] = b
    y = layer.forward(x)
    return np.maximum(y, 0) if relu else y


def _tolerance(x, w, b):
    """float32 rounding of a sum of |w x| terms of any order: a multiple of eps times the bound."""
    bound = np.abs(w).sum(axis=(1, 2, 3)).max() * max(np.abs(x).max(), 1.0)
    bound += 0.0 if b is None else np.abs(b).max()
    return 8 * w[0].size * np.finfo(np.float32).eps * bound


@given(
    st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.integers(1, 7),
    st.integers(1, 7), st.integers(0, 9), st.integers(0, 9), st.integers(0, 2),
    st.integers(0, 2), st.booleans(), st.booleans(), seeds,
)  # fmt: skip
def test_kernel_equals_twin_equals_im2col_gemm(n, c, o, kh, kw, dh, dw, ph, pw, bias, relu, seed):
    rng = np.random.default_rng(seed)
    h, wd = max(kh - 2 * ph, 1) + dh, max(kw - 2 * pw, 1) + dw  # at least one output position
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = rng.standard_normal((o, c, kh, kw)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    want = _dense(x, w, b, (ph, pw), relu)
    tol = _tolerance(x, w, b)
    np.testing.assert_allclose(_kernel(x, w, b, (ph, pw), relu), want, rtol=0, atol=tol)
    np.testing.assert_allclose(conv2d_direct_numpy(x, w, b, (ph, pw), relu), want, rtol=0, atol=tol)
    zeros = np.zeros_like(x)  # all-zero input: exactly the bias (or zero), no NaN
    expected = np.broadcast_to((b if b is not None else np.zeros(o, np.float32))[:, None, None],
                               want.shape[1:])  # fmt: skip
    expected = np.maximum(expected, 0) if relu else expected
    twin = conv2d_direct_numpy(zeros, w, b, (ph, pw), relu)
    for got in (_kernel(zeros, w, b, (ph, pw), relu), twin):
        np.testing.assert_array_equal(got, np.broadcast_to(expected, got.shape))


def test_kernel_computes_only_its_images_and_a_single_output_position():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 5, 5)).astype(np.float32)  # no padding: one position
    y = _kernel(x, w, None, (0, 0), False, n0=1, n1=3)
    assert y.shape == (4, 3, 1, 1)
    assert np.isnan(y[0]).all() and np.isnan(y[3]).all()
    want = np.einsum("nchw,ochw->no", x[1:3].astype(np.float64), w.astype(np.float64))
    np.testing.assert_allclose(y[1:3, :, 0, 0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [3, 5, 7])
def test_nan_and_inf_propagate_as_in_the_gemm_and_relu_keeps_nan(kw):
    """No zero-weight tap reads outside a window (0 * inf would make NaN where the GEMM has
    none): an inf in the input gives inf or NaN exactly where the dense product does."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 9, 11)).astype(np.float32)
    x[0, 1, 4, 5] = np.inf
    x[1, 0, 2, 8] = np.nan
    w = np.abs(rng.standard_normal((3, 2, 3, kw))).astype(np.float32) + 0.1
    for relu in (False, True):
        got = _kernel(x, w, None, (1, 1), relu)
        want = _dense(x, w, None, (1, 1), relu)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-4)


def test_plan_runs_small_convolutions_directly_and_matches_the_float_model(monkeypatch):
    """LeNet-shaped first layer (25 taps) goes through the kernel, a 3 x 3 x 16 one (144 taps)
    and a stride-2 one through im2col; the exported model equals the float model either way."""
    from ternref.packed import layers as packed_layers

    calls = []
    real = packed_layers.conv2d_direct

    def spy(*args):
        calls.append(args[-1].shape)
        return real(*args)

    monkeypatch.setattr(packed_layers, "conv2d_direct", spy)
    rng = np.random.default_rng(3)
    model = Sequential(
        Conv2d(1, 16, 5, padding=2, rng=rng), ReLU(), MaxPool2d(2),
        Conv2d(16, 8, 3, padding=1, rng=rng), ReLU(), Conv2d(8, 4, 3, stride=2, rng=rng),
        Flatten(), Linear(4 * 2 * 2, 3, rng=rng),
    )  # fmt: skip
    model.eval()
    assert 16 * 9 > MAX_TAPS
    exported = export(model)
    for n in (1, 5):
        calls.clear()
        x = rng.standard_normal((n, 1, 12, 12)).astype(np.float32)
        np.testing.assert_allclose(exported.forward(x), model.forward(x), rtol=1e-5, atol=1e-5)
        assert calls == [(n, 16, 12, 12)]  # the first convolution only
    x64 = rng.standard_normal((2, 1, 12, 12))  # float64 input: the im2col path, float64 out
    calls.clear()
    assert exported.forward(x64).dtype == model.forward(x64).dtype
    assert calls == []


def test_kernel_runs_as_plain_python_with_jit_disabled(run_without_jit):
    script = """
        import numpy as np
        from ternref.packed._direct_conv import conv2d_direct, conv2d_direct_numpy, flat_input
        assert not hasattr(conv2d_direct, "py_func"), "jit was not disabled"
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 2, 6, 7)).astype(np.float32)
        w = rng.standard_normal((3, 2, 3, 6)).astype(np.float32)
        b = rng.standard_normal(3).astype(np.float32)
        x_flat, hp, wp = flat_input(x, (1, 2))
        y = np.empty((2, 3, 6, 6), np.float32)
        conv2d_direct(x_flat, w, b, True, True, hp, wp, 0, 2, y)
        assert np.allclose(y, conv2d_direct_numpy(x, w, b, (1, 2), True), atol=1e-5)
        print("ok")
        """
    run_without_jit(script)
