"""Kernel == NumPy twin == dense, for every format, granularity, awkward K, batch size and both
activation types. Float results are checked against a float64 dense product with a bound derived
from K; int8 results are checked for exact equality with an independent integer product."""

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref import Ternary
from ternref.packed import FORMATS, linear, pack, quantize_activations
from ternref.packed._gemm import TILE_ROWS
from ternref.packed.kernels import GEMM_MIN_BATCH

sys.path.insert(0, str(Path(__file__).parent))
from strategies import ternaries  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
BATCHES = (1, 3, GEMM_MIN_BATCH + 1)  # GEMV kernel, small-batch kernel, tiled BLAS path


def _dense2d(t):
    return t.dense().reshape(t.shape[0], -1).astype(np.float64)


def _scale_bound(t):
    """max |alpha_pos| + max |alpha_neg| + max |offset|: bounds every |w| and every partial sum."""
    b = float(np.max(t.alpha_pos)) + float(np.max(t.alpha_neg))
    return b + (float(np.max(np.abs(t.offset))) if t.offset is not None else 0.0)


def _float_tolerance(t, x2d):
    # Each output is a sum of K products computed in float32; the i2/tq1 identity
    # sum c x = sum q x - sum x has intermediates up to 3 sum|x|. Error <= c K eps S sum|x|.
    k = x2d.shape[1]
    return 4 * (k + 8) * EPS32 * _scale_bound(t) * np.abs(x2d).sum(axis=1, keepdims=True) + 1e-30


def _int8_expected(t, x2d):
    """Independent statement of the int8 path: exact integer dot products per scale group
    (int64 matmul on the codes), then the documented float64 epilogue, group by group."""
    xq, inv_s = quantize_activations(x2d)
    m = t.shape[0]
    codes = t.codes.reshape(m, -1).astype(np.int64)
    k = codes.shape[1]
    gs = t.group_size if t.granularity == "group" else k
    n_groups = -(-k // gs)

    def per_group(a):
        if t.granularity == "tensor":
            return np.full((m, n_groups), float(a))
        return np.broadcast_to(a.reshape(m, -1), (m, n_groups)).astype(np.float64)

    sp, sn = per_group(t.alpha_pos), per_group(t.alpha_neg)
    so = per_group(t.offset) if t.offset is not None else None
    xq64 = xq.astype(np.int64)
    yr = np.zeros((x2d.shape[0], m))
    for g in range(n_groups):
        cols = slice(g * gs, min(k, (g + 1) * gs))
        c, xg = codes[:, cols], xq64[:, cols]
        if t.symmetric:
            yr += sp[:, g] * (xg @ c.T).astype(np.float64)
        else:
            p = (xg @ (c == 1).T.astype(np.int64)).astype(np.float64)
            n = (xg @ (c == -1).T.astype(np.int64)).astype(np.float64)
            yr += sp[:, g] * p - sn[:, g] * n
        if so is not None:
            yr += so[:, g] * xg.sum(axis=1, keepdims=True).astype(np.float64)
    return (yr * inv_s[:, None]).astype(np.float32), xq, inv_s


def _check(t, fmt, n, rng):
    p = pack(t, fmt)
    k = p.shape[1]
    x2d = (rng.standard_normal((n, k)) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
    if n > 1:
        x2d[rng.integers(n)] = 0.0  # an all-zero activation row: no NaN from absmax
    w = _dense2d(t)
    ref = x2d.astype(np.float64) @ w.T

    y = linear(x2d, p)
    y_twin = linear(x2d, p, backend="numpy")
    assert y.dtype == np.float32 and y.shape == (n, t.shape[0])
    tol = _float_tolerance(t, x2d)
    if n < GEMM_MIN_BATCH:
        assert np.array_equal(y, y_twin)  # same algorithm, same order: bit for bit
    else:  # the GEMM tile loop reassociates (like BLAS in the twin): equal within the bound
        assert np.all(np.abs(y - y_twin) <= 2 * tol)
    assert np.all(np.abs(y - ref) <= tol)
    assert np.all(np.abs(y_twin - ref) <= tol)

    yq = linear(x2d, p, "int8")
    yq_twin = linear(x2d, p, "int8", backend="numpy")
    expected, _, inv_s = _int8_expected(t, x2d)
    assert np.array_equal(yq, expected)
    assert np.array_equal(yq_twin, expected)
    # and close to the float product: |x - xq inv_s| <= inv_s / 2 per entry
    bound = 0.5 * inv_s[:, None] * np.abs(w).sum(axis=1) + _float_tolerance(t, x2d) + 1e-6
    assert np.all(np.abs(yq - ref) <= bound * 1.001)


@settings(max_examples=40)
@given(
    t=ternaries(dtype=np.float32),
    fmt=st.sampled_from(sorted(FORMATS)),
    n=st.sampled_from(BATCHES),
    seed=st.integers(0, 2**16),
)
def test_kernel_equals_twin_equals_dense(t, fmt, n, seed):
    _check(t, fmt, n, np.random.default_rng(seed))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("fill", ["zero", "one", "minus"])
@pytest.mark.parametrize("n", BATCHES)
def test_constant_codes(fmt, fill, n):
    rng = np.random.default_rng(1)
    for gran, gs in (("tensor", None), ("group", 64)):
        codes = np.full((5, 257), {"zero": 0, "one": 1, "minus": -1}[fill], np.int8)
        shape = Ternary.scale_shape(codes.shape, gran, gs)
        ap = (rng.random(shape) + 0.5).astype(np.float32)
        an = (rng.random(shape) + 0.5).astype(np.float32)
        for neg in (None, an):
            t = Ternary(codes, ap, neg, granularity=gran, group_size=gs)
            _check(t, fmt, n, rng)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_conv_shaped_weight_and_vector_input(fmt):
    rng = np.random.default_rng(2)
    codes = rng.integers(-1, 2, (6, 3, 5, 5)).astype(np.int8)
    t = Ternary(codes, (rng.random(6) + 0.1).astype(np.float32), granularity="channel")
    p = pack(t, fmt)
    x = rng.standard_normal(75).astype(np.float32)
    y = linear(x, p)
    assert y.shape == (6,)
    ref = _dense2d(t) @ x.astype(np.float64)
    assert np.all(np.abs(y - ref) <= _float_tolerance(t, x[None])[0])


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
        for n in (2, 9):  # the GEMV kernels, then the tiled GEMM kernels
            x = rng.standard_normal((n, 130)).astype(np.float32)
            ref = x.astype(np.float64) @ t.dense().astype(np.float64).T
            for fmt in FORMATS:
                for act in ("float32", "int8"):
                    y = linear(x, pack(t, fmt), act)
                    assert np.allclose(y, ref, rtol=0.05, atol=0.05 * np.abs(ref).max()), (fmt, act)
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
