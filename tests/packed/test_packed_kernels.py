"""Packed ``linear``: constant codes, conv-shaped weights, dtypes, the int8 activation quantizer,
argument checks, the JIT-disabled debugger path, GEMM == GEMV for int8. Every kernel path on
random codes: test_kernel_paths.py; what "correct" means: kernel_checks.py."""

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref import Ternary
from ternref.packed import FORMATS, linear, pack, quantize_activations
from ternref.packed._gemm import (
    TILE_ROWS,  # the most rows per decoded GEMM tile
    dense_small,
    dense_small_numpy,
)
from ternref.packed.kernels import GEMM_MIN_BATCH

sys.path.insert(0, str(Path(__file__).parent))
from kernel_checks import check_linear, float_bound  # noqa: E402

BATCHES = (1, 3, GEMM_MIN_BATCH + 1)  # GEMV kernel, small-batch GEMV, tiled GEMM


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("fill", ["zero", "one", "minus"])
@pytest.mark.parametrize("n", BATCHES)
def test_constant_codes(fmt, fill, n):
    """All codes equal: the i2/tq1 identity sum c x = sum q x - sum x at its extremes (q all
    0, 1 or 2), where the float32 sums cancel most. (Random codes: test_kernel_paths.py.)"""
    rng = np.random.default_rng(1)
    for gran, gs in (("tensor", None), ("group", 64)):
        codes = np.full((5, 257), {"zero": 0, "one": 1, "minus": -1}[fill], np.int8)
        shape = Ternary.scale_shape(codes.shape, gran, gs)
        ap = (rng.random(shape) + 0.5).astype(np.float32)
        an = (rng.random(shape) + 0.5).astype(np.float32)
        off = rng.standard_normal(shape).astype(np.float32)
        for neg, offset in ((None, None), (an, None), (None, off), (an, off)):
            t = Ternary(codes, ap, neg, granularity=gran, group_size=gs, offset=offset)
            x = (rng.standard_normal((n, 257)) * 50).astype(np.float32)
            for activations in ("float32", "int8"):
                check_linear(t, pack(t, fmt), x, activations)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_conv_shaped_weight_and_vector_input(fmt):
    rng = np.random.default_rng(2)
    codes = rng.integers(-1, 2, (6, 3, 5, 5)).astype(np.int8)
    t = Ternary(codes, (rng.random(6) + 0.1).astype(np.float32), granularity="channel")
    p = pack(t, fmt)
    x = rng.standard_normal(75).astype(np.float32)
    y = linear(x, p)
    assert y.shape == (6,)
    ref = t.dense().reshape(6, -1).astype(np.float64) @ x.astype(np.float64)
    assert np.all(np.abs(y - ref) <= float_bound(t, x[None])[0])


def test_float64_input_gives_float64_output():
    t = Ternary(np.ones((3, 4), np.int8), np.float32(0.5))
    y = linear(np.ones((2, 4)), pack(t))
    assert y.dtype == np.float64
    assert np.array_equal(y, np.full((2, 3), 2.0))


def test_quantize_activations_formula():
    x = np.array([[0.0, 0.0, 0.0], [1.0, -0.5, 0.25], [-4.0, 2.0, 1e-9]], np.float32)
    xq, inv_s = quantize_activations(x)
    assert xq.dtype == np.int8
    assert xq.tolist() == [[0, 0, 0], [127, -64, 32], [-127, 64, 0]]  # rint(63.5) = 64 (even)
    assert np.allclose(inv_s, [0.0, 1 / 127, 4 / 127])
    assert np.all(np.isfinite(inv_s))


def test_linear_refuses_bad_arguments():
    p = pack(Ternary(np.ones((3, 4), np.int8), np.float32(1.0)))
    with pytest.raises(ValueError, match="4 features"):
        linear(np.ones(5, np.float32), p)
    with pytest.raises(ValueError, match="dimensions"):
        linear(np.ones((1, 1, 4), np.float32), p)
    with pytest.raises(TypeError, match="floating"):
        linear(np.ones(4, np.int32), p)
    with pytest.raises(ValueError, match="activations"):
        linear(np.ones(4, np.float32), p, "int4")
    with pytest.raises(ValueError, match="finite"):
        linear(np.full(4, np.nan, np.float32), p)
    with pytest.raises(TypeError, match="Packed"):
        linear(np.ones(4, np.float32), np.ones((3, 4)))


def test_kernels_run_as_plain_python_with_jit_disabled(run_without_jit):
    """NUMBA_DISABLE_JIT=1: the same kernels execute line by line as Python (debugger path)."""
    script = """
        import numpy as np
        from ternref import Ternary
        from ternref.packed import FORMATS, linear, pack
        from ternref.packed import i2
        assert not hasattr(i2.dot_f32, "py_func"), "jit was not disabled"
        rng = np.random.default_rng(0)
        codes = rng.integers(-1, 2, (3, 130)).astype(np.int8)
        t = Ternary(codes, rng.random((3, 2)).astype(np.float32), granularity="group",
                    group_size=100)
        # groups, then one symmetric scale per row (the int8 GEMM's plain_int8_sums path)
        t_row = Ternary(codes, rng.random((3, 1)).astype(np.float32) + 0.5, granularity="channel")
        for tt in (t, t_row):
            for n in (2, 9):  # the GEMV kernels, then the tiled GEMM kernels
                x = rng.standard_normal((n, 130)).astype(np.float32)
                ref = x.astype(np.float64) @ tt.dense().astype(np.float64).T
                for fmt in FORMATS:
                    for act in ("float32", "int8"):
                        y = linear(x, pack(tt, fmt), act)
                        tol = 0.05 * np.abs(ref).max()
                        assert np.allclose(y, ref, rtol=0.05, atol=tol), (fmt, act)
        # the blocked convolution (gather, quantize, tile product, NCHW store), asymmetric
        from ternref.packed import conv2d
        w = rng.integers(-1, 2, (5, 3, 3, 3)).astype(np.int8)
        tc = Ternary(w, rng.random((5, 1, 1, 1)).astype(np.float32),
                     rng.random((5, 1, 1, 1)).astype(np.float32), granularity="channel")
        tc_sym = Ternary(w, rng.random((5, 1, 1, 1)).astype(np.float32), granularity="channel")
        xc = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
        for fmt in FORMATS:
            for act in ("float32", "int8"):
                for tt in (tc, tc_sym):
                    pc = pack(tt, fmt)
                    y = conv2d(xc, pc, 1, 1, act, relu=True)
                    y_twin = conv2d(xc, pc, 1, 1, act, relu=True, backend="numpy")
                    assert np.allclose(y, y_twin, rtol=1e-5, atol=1e-5), (fmt, act)
        print("ok")
        """
    run_without_jit(script)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("asymmetric", [False, True])
def test_int8_gemm_equals_int8_gemv_row_by_row(fmt, asymmetric):
    """gemm_i8 (tiles of decoded codes) and dot_i8 (packed bytes) form the same exact integers
    and share the float64 epilogue: bit-identical, over several tiles and a partial last one."""
    rng = np.random.default_rng(3)
    m, k, gs = 2 * TILE_ROWS + 5, 300, 64
    codes = rng.integers(-1, 2, (m, k)).astype(np.int8)
    shape = Ternary.scale_shape(codes.shape, "group", gs)
    ap = (rng.random(shape) + 0.5).astype(np.float32)
    an = (rng.random(shape) + 0.5).astype(np.float32) if asymmetric else None
    t = Ternary(codes, ap, an, granularity="group", group_size=gs)
    p = pack(t, fmt)
    x = rng.standard_normal((GEMM_MIN_BATCH + 3, k)).astype(np.float32)
    batch = linear(x, p, "int8")
    rows = np.stack([linear(row, p, "int8") for row in x])
    assert np.array_equal(batch, rows)
    assert np.array_equal(linear(x, p, "int8", backend="numpy"), batch)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, GEMM_MIN_BATCH - 1),
    m=st.integers(1, 11),
    k=st.integers(1, 70),
    has_bias=st.booleans(),
    relu=st.booleans(),
    zero=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_dense_small_equals_its_twin_and_float64(n, m, k, has_bias, relu, zero, seed):
    """The batch-1 full-precision Linear of packed models: kernel == twin == float64 product
    within the float32 summation bound ((k + 2) u sum |x w| + |b| u), on row counts that are not
    multiples of its four-row blocks, single elements and all-zero input."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, k), np.float32) if zero else rng.standard_normal((n, k)).astype(np.float32)
    w = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) if has_bias else np.zeros(0, np.float32)
    y, y_twin = np.full((n, m), np.nan, np.float32), np.full((n, m), np.nan, np.float32)
    dense_small(x, w, b, has_bias, relu, y)
    dense_small_numpy(x, w, b, has_bias, relu, y_twin)
    ref = x.astype(np.float64) @ w.astype(np.float64).T + (b if has_bias else 0.0)
    if relu:
        ref = np.maximum(ref, 0.0)
    u = np.finfo(np.float32).eps / 2
    bound = (k + 2) * u * (np.abs(x).astype(np.float64) @ np.abs(w).T) + u * (
        np.abs(b) if has_bias else 0.0
    )
    for name, got in (("dense_small", y), ("dense_small_numpy", y_twin)):
        err = np.abs(got - ref)
        assert np.all(err <= bound), f"{name}: error {err.max():.3g} above the bound"
    if zero:
        assert np.array_equal(y, y_twin)


@settings(max_examples=40, deadline=None)
@given(
    fmt=st.sampled_from(sorted(FORMATS)),
    n=st.integers(GEMM_MIN_BATCH, 70),
    m=st.integers(1, 37),
    k=st.integers(1, 300),
    has_bias=st.booleans(),
    relu=st.booleans(),
    zero=st.booleans(),
    chunked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_gemm_f32_bias_and_relu_in_the_tile_stores(
    fmt, n, m, k, has_bias, relu, zero, chunked, seed
):
    """The float32 GEMM applies bias and ReLU as it stores each block (``tile_matmul_act``'s
    4 x 4, or the AVX-512 block's registers, ``ternref.packed._f32_block``): kernel == twin
    (NumPy epilogue after ``X @ tile.T``) == float64 within the float32 bound plus the bias
    rounding, on row and column counts that are not
    multiples of the blocks, one element, all-zero input, a NaN row (ReLU keeps NaN as
    ``np.maximum`` does), serial and cut into chunks over two threads."""
    from ternref.packed import _threads
    from ternref.packed.kernels import product

    with pytest.MonkeyPatch.context() as mp:
        if chunked:  # every product parallel, in chunks of weight rows or of activation rows
            mp.setattr(_threads, "SERIAL_BELOW", 0)
            mp.setattr(_threads, "MIN_CHUNK_WORK", 1)
            mp.setattr(_threads, "_threads", 2)
        _check_gemm_epilogue(product, fmt, n, m, k, has_bias, relu, zero, seed)


def _check_gemm_epilogue(product, fmt, n, m, k, has_bias, relu, zero, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, (m, k)).astype(np.int8)
    t = Ternary(codes, (rng.random(m) + 0.5).astype(np.float32), granularity="channel")
    p = pack(t, fmt)
    x = np.zeros((n, k), np.float32) if zero else rng.standard_normal((n, k)).astype(np.float32)
    x[n // 2, 0] = np.nan
    b = rng.standard_normal(m).astype(np.float32) if has_bias else None
    y = product(p, x, False, bias=b, relu=relu)
    y_twin = product(p, x, False, backend="numpy", bias=b, relu=relu)
    ref = x.astype(np.float64) @ t.dense().reshape(m, k).astype(np.float64).T
    if has_bias:
        ref += b
    if relu:
        ref = np.where(np.isnan(ref), ref, np.maximum(ref, 0.0))
    bound = float_bound(t, np.nan_to_num(x)) + (
        np.finfo(np.float32).eps * np.abs(b) if has_bias else 0.0
    )
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(y), nan) and np.array_equal(np.isnan(y_twin), nan)
    for name, got in (("kernel", y), ("twin", y_twin)):
        err = np.abs(got[~nan] - ref[~nan])
        assert np.all(err <= bound[~nan]), f"{name}: error {err.max():.3g} above the bound"
    if relu:
        assert np.all(y[~nan] >= 0)
