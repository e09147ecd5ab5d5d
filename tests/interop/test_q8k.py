"""llama.cpp's Q8_K activation quantization as ternref reproduces it, and its error bound."""

import numpy as np
import pytest

from ternref import projections
from ternref.interop.q8k import Q8KProjection, q8k_dequantize, q8k_error_bound, q8k_quantize


def q8k_loop(x):
    """``quantize_row_q8_K_ref`` (ggml-quants.c), transcribed loop by loop with float32
    scalars: the reference the vectorized version must equal bit for bit."""
    f32 = np.float32
    q = np.zeros(x.shape, np.int8)
    d = np.zeros(x.size // 256, np.float32)
    for i in range(x.size // 256):
        block = x[256 * i : 256 * (i + 1)]
        amax, mx = f32(0), f32(0)
        for v in block:
            if abs(v) > amax:
                amax, mx = abs(v), v
        if amax == 0:
            continue
        iscale = f32(f32(-127.0) / mx)
        for j, v in enumerate(block):
            # nearest_int: adding 1.5 * 2**23 in float32 rounds to the nearest, ties to even
            q[256 * i + j] = min(127, int(f32(f32(iscale * v) + f32(12582912.0))) - 12582912)
        d[i] = f32(f32(1.0) / iscale)
    return q, d


def test_matches_ggmls_loop_bit_for_bit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1024).astype(np.float32)
    x[256:512] = 0  # an all-zero block: d = 0, q = 0
    x[512:768] = np.round(np.clip(x[512:768], -1, 1) * 4) / 4  # ties of iscale * x
    x[600], x[700] = -2.0, 2.0  # the largest magnitude twice: the first (-2) is m, iscale > 0
    q, d = q8k_quantize(x)
    q_ref, d_ref = q8k_loop(x)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(d, d_ref)
    assert d[1] == 0 and not q[256:512].any()
    assert q[600] == -127 and q[700] == 127 and d[2] == np.float32(2 / 127)


def test_dequantized_error_is_at_most_half_a_step():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((5, 512)) * rng.uniform(0.01, 10, (5, 1))).astype(np.float32)
    xq = q8k_dequantize(x)
    step = np.abs(x).reshape(5, 2, 256).max(-1) / 127
    err = np.abs(xq - x).reshape(5, 2, 256).max(-1)
    assert np.all(err <= step / 2 * (1 + 1e-5))
    assert np.all(err >= step / 2 * 0.9)  # and it is that large: 256 values fill the grid
    with pytest.raises(ValueError, match="multiple of 256"):
        q8k_quantize(np.zeros((2, 100), np.float32))


def test_product_error_within_bound_1():
    """|x~ W^T - x W^T| <= sum_b alpha (amax_b / 254) nnz_b, and the bound is not vacuous."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 768)).astype(np.float32)
    t = projections.twn(w, granularity="channel")
    x = rng.standard_normal((9, 768)).astype(np.float32)
    err = np.abs(q8k_dequantize(x).astype(np.float64) @ t.dense().T - x.astype(np.float64)
                 @ t.dense().T)  # fmt: skip
    bound = q8k_error_bound(x, t)
    assert np.all(err <= bound)
    assert err.max() > 0.01 * bound.max()  # independent errors: ~sqrt(n) below the worst case


def test_projection_layer_is_the_dequantized_product():
    rng = np.random.default_rng(3)
    t = projections.bitnet(rng.standard_normal((32, 512)).astype(np.float32))
    layer = Q8KProjection(t)
    x = rng.standard_normal((2, 3, 512)).astype(np.float32)
    y = layer(x)
    assert y.shape == (2, 3, 32) and y.dtype == np.float32
    ref = q8k_dequantize(x.reshape(6, 512)).astype(np.float64) @ t.dense().astype(np.float64).T
    np.testing.assert_allclose(y.reshape(6, 32), ref, rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of 256"):
        Q8KProjection(projections.bitnet(np.ones((4, 100), np.float32)))
