"""``tq1``'s int8 GEMM on AVX-512 VNNI: tiles of trits re-encoded as ``i2`` bytes.

What must hold: :func:`ternref.packed.tq1.to_i2_rows` gives, for any range of rows, exactly the
bytes ``pack(t, "i2")`` stores for the same weight (an independent encoder), and so does its
NumPy twin; and the GEMM built on it (:func:`ternref.packed.tq1.gemm_i8_i2`) equals the format's
int8 twin bit for bit, including under ``NUMBA_DISABLE_JIT`` (the debugger path). The product
paths themselves are in ``test_kernel_paths.py`` (``tq1.gemm_i8_i2-n>=8``)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref import Ternary
from ternref.packed import kernels, pack, tq1


@st.composite
def weights(draw):
    m = draw(st.integers(1, 9))
    k = draw(st.sampled_from([1, 31, 32, 127, 128, 129, 159, 160, 161, 256, 320, 641]))
    granularity = draw(st.sampled_from(["tensor", "channel", "group"]))
    group_size = (
        draw(st.sampled_from([1, 33, 96, 128, 130, 160, 200])) if granularity == "group" else None
    )
    density = draw(st.sampled_from([0.0, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    codes = (rng.integers(-1, 2, (m, k)) * (rng.random((m, k)) < density)).astype(np.int8)
    shape = Ternary.scale_shape(codes.shape, granularity, group_size)
    alpha = (rng.random(shape) + 0.5).astype(np.float32)
    t = Ternary(codes, alpha, granularity=granularity, group_size=group_size)
    r0 = draw(st.integers(0, m - 1))
    r1 = draw(st.integers(r0 + 1, m))
    return t, r0, r1


@settings(max_examples=60, deadline=None)
@given(case=weights())
def test_reencoded_rows_are_the_i2_encoding_of_the_same_weight(case):
    t, r0, r1 = case
    p, q = pack(t, "tq1"), pack(t, "i2")
    expected = q.arrays["codes"][r0:r1]
    out = np.full((r1 - r0, expected.shape[1]), 0xAA, np.uint8)  # garbage: all of it rewritten
    tq1.to_i2_rows(p.arrays["codes"], r0, r1, q.n_groups, out)
    twin = tq1.to_i2_rows_numpy(p.arrays["codes"], r0, r1, q.n_groups, q.padded_length)
    assert np.array_equal(out, expected)
    assert np.array_equal(twin, expected)


def _gemm_case(rng, m, k, n, asym, offset, granularity="group", group_size=96):
    codes = rng.integers(-1, 2, (m, k)).astype(np.int8)
    shape = Ternary.scale_shape(codes.shape, granularity, group_size)
    neg = (rng.random(shape) + 0.5).astype(np.float32) if asym else None
    off = rng.standard_normal(shape).astype(np.float32) if offset else None
    t = Ternary(codes, (rng.random(shape) + 0.5).astype(np.float32), neg,
                granularity=granularity, group_size=group_size, offset=off)  # fmt: skip
    return pack(t, "tq1"), rng.standard_normal((n, k)).astype(np.float32)


def _run_gemm_i8_i2(p, x, bias, relu, r0, r1):
    """The jitted kernel on rows ``r0 .. r1 - 1`` the way ``kernels.product`` calls it."""
    from ternref.packed import i2

    lay = kernels._layout(p, i2)
    xs, xsum, inv_s = kernels.prepare_streams(p, x, True, lay=lay)
    n, m = x.shape[0], p.shape[0]
    zeros = np.zeros((n, m, lay["n_groups"]) if not p.symmetric else (0, 0, 0), np.int32)
    y = np.full((n, m), np.nan, np.float32)
    tq1.gemm_i8_i2(p.arrays["codes"], xs, xsum, inv_s, p.kernel_scales()["sc"], zeros,
                   not p.symmetric, p.offset is not None, bias, True, relu, r0, r1, y)  # fmt: skip
    return y


def test_gemm_on_reencoded_tiles_equals_the_int8_twin_bit_for_bit():
    """Every scale kind, a tile boundary inside the row range (rows past one tile of
    ``I2_TILE_BYTES``), a row range that does not start at 0: the exact sums and the same
    float64 epilogue as ``kernels._gemm_i8_numpy``."""
    rng = np.random.default_rng(3)
    k = 300
    m = 2 * (tq1.I2_TILE_BYTES // (-(-k // 128) * 32)) + 5  # two tiles and part of a third
    for asym in (False, True):
        for offset in (False, True):
            p, x = _gemm_case(rng, m, k, 11, asym, offset)
            bias = rng.standard_normal(m).astype(np.float32)
            twin = kernels.product(p, x, True, backend="numpy", bias=bias, relu=True)
            y = _run_gemm_i8_i2(p, x, bias, True, 0, m)
            assert np.array_equal(y, twin), (asym, offset)
            part = _run_gemm_i8_i2(p, x, bias, True, 7, m - 3)
            assert np.array_equal(part[:, 7 : m - 3], twin[:, 7 : m - 3])
            assert np.isnan(part[:, :7]).all() and np.isnan(part[:, m - 3 :]).all()


def test_reencoding_and_its_gemm_run_as_plain_python_with_jit_disabled(run_without_jit):
    script = """
        import numpy as np
        from ternref import Ternary
        from ternref.packed import kernels, pack, tq1, i2
        assert not hasattr(tq1.to_i2_rows, "py_func"), "jit was not disabled"
        rng = np.random.default_rng(0)
        codes = rng.integers(-1, 2, (6, 170)).astype(np.int8)
        t = Ternary(codes, rng.random((6, 2)).astype(np.float32) + 0.5, granularity="group",
                    group_size=100)
        p, q = pack(t, "tq1"), pack(t, "i2")
        out = np.empty((4, q.arrays["codes"].shape[1]), np.uint8)
        tq1.to_i2_rows(p.arrays["codes"], 1, 5, q.n_groups, out)
        assert np.array_equal(out, q.arrays["codes"][1:5])
        x = rng.standard_normal((9, 170)).astype(np.float32)
        lay = kernels._layout(p, i2)
        xs, xsum, inv_s = kernels.prepare_streams(p, x, True, lay=lay)
        y = np.empty((9, 6), np.float32)
        tq1.gemm_i8_i2(p.arrays["codes"], xs, xsum, inv_s, p.kernel_scales()["sc"],
                       np.zeros((0, 0, 0), np.int32), False, False, np.zeros(0, np.float32),
                       False, False, 0, 6, y)
        assert np.array_equal(y, kernels.product(p, x, True, backend="numpy"))
        print("ok")
    """
    run_without_jit(script)
