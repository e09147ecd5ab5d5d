"""The float32 GEMM's AVX-512 block (``ternref.packed._f32_block``): the activation panels, and
the tile product built on the block (``_gemm.tile_matmul_t``) against the plain 4 x 4 loop
(``_gemm.tile_matmul_act``) and float64, on tile and batch sizes that are not multiples of the
block (6 weight rows x 32 activation rows), one element, all-zero input, NaN, bias and ReLU, an
activation range that starts at a later panel and a weight range at a later output column; the
weights decoded into panels for the convolution (the formats' ``dequant_panels``),
against the dense weight. The product paths that use the block are in ``test_kernel_paths.py``
and ``test_conv_kernels.py``; the plain loops compiled on their own (``TERNREF_F32_BLOCK=0``) are
checked here in a subprocess."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref import Ternary
from ternref.packed import FORMATS, _f32_block, kernels, pack
from ternref.packed._f32_block import COLS, ROWS, transpose_activations
from ternref.packed._gemm import NO_BIAS, tile_buffer, tile_matmul_act

needs_block = pytest.mark.skipif(
    not _f32_block.AVAILABLE,
    reason="no AVX-512F or AVX2 + FMA (or JIT disabled / TERNREF_F32_BLOCK=0)",
)


@given(
    n=st.integers(1, 70),
    k=st.integers(0, 40) | st.sampled_from([511, 512, 513, 700]),  # both copy orders
    extra=st.integers(0, 9) | st.just(0),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_panels_hold_32_rows_column_by_column(n, k, extra, seed):
    """``width = k + extra``: the panels of a one-group weight's unpadded activations have the
    padded row length, zeros in the rows past ``k``."""
    x = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    width = k + extra
    xt = transpose_activations(x, width) if extra else transpose_activations(x)
    panels = -(-n // COLS)
    assert xt.shape == (panels * width, COLS) and xt.dtype == np.float32
    padded = np.zeros((panels * COLS, width), np.float32)
    padded[:n, :k] = x
    expected = padded.reshape(panels, COLS, width).transpose(0, 2, 1).reshape(-1, COLS)
    assert np.array_equal(xt, expected)


def test_panels_refuse_a_width_below_the_columns():
    with pytest.raises(ValueError, match="width must be at least the 5 columns"):
        transpose_activations(np.zeros((3, 5), np.float32), 4)


@needs_block
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 100),
    nr=st.integers(1, 40),
    k=st.integers(1, 300),
    first_panel=st.integers(0, 1),
    r0=st.integers(0, 7),
    has_bias=st.booleans(),
    relu=st.booleans(),
    zero=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_block_tile_product_equals_the_plain_loop_and_float64(
    n, nr, k, first_panel, r0, has_bias, relu, zero, seed
):
    from ternref.packed._gemm import tile_matmul_t

    rng = np.random.default_rng(seed)
    x = np.zeros((n, k), np.float32) if zero else rng.standard_normal((n, k)).astype(np.float32)
    if n > 2 and not zero:
        x[n // 2, k // 2] = np.nan  # one activation row of NaN results, as with BLAS
    tile = tile_buffer(nr, k)
    tile[:nr] = rng.standard_normal((nr, k)).astype(np.float32)
    m = r0 + nr
    bias = rng.standard_normal(m).astype(np.float32) if has_bias else NO_BIAS
    n0 = min(first_panel * COLS, (n - 1) // COLS * COLS)  # a chunk of activation rows
    y_block = np.full((n, m), -7.0, np.float32)
    y_plain = np.full((n, m), -7.0, np.float32)
    tile_matmul_t(transpose_activations(x), tile, nr, y_block, r0, n0, n, k, bias, has_bias, relu)
    tile_matmul_act(x[n0:], tile, nr, y_plain[n0:], r0, k, bias, has_bias, relu)
    ref = x[n0:].astype(np.float64) @ tile[:nr].astype(np.float64).T + (
        bias[r0:].astype(np.float64) if has_bias else 0.0
    )
    if relu:
        ref = np.where(ref < 0, 0.0, ref)
    # untouched outside the block's rows and columns
    assert np.all(y_block[:n0] == -7.0) and np.all(y_block[:, :r0] == -7.0)
    got, plain = y_block[n0:, r0:], y_plain[n0:, r0:]
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan) and np.array_equal(np.isnan(plain), nan)
    u = np.finfo(np.float32).eps / 2
    bound = (k + 2) * u * (np.abs(np.nan_to_num(x[n0:])).astype(np.float64) @ np.abs(tile[:nr]).T)
    if has_bias:
        bound += 2 * u * np.abs(bias[r0:])
    for name, out in (("block", got), ("plain", plain)):
        err = np.abs(out[~nan] - ref[~nan])
        assert np.all(err <= bound[~nan]), f"{name}: error {err.max():.3g} above the bound"
    if zero:
        assert np.array_equal(got, plain)


def _panel_layout(rows: np.ndarray) -> np.ndarray:
    """``rows`` (M, L) as panels of 32 rows, zeros past M: what ``dequant_panels`` must write."""
    m, length = rows.shape
    panels = -(-m // COLS)
    padded = np.zeros((panels * COLS, length), rows.dtype)
    padded[:m] = rows
    return padded.reshape(panels, COLS, length).transpose(0, 2, 1).reshape(panels * length, COLS)


DEQUANT_PANELS_SCRIPT = """
import numpy as np
from ternref import Ternary
from ternref.packed import FORMATS, kernels, pack
rng = np.random.default_rng(3)
for fmt, mod in FORMATS.items():
    for m, k, gran, gs, asym in ((1, 1, "tensor", None, False), (37, 200, "group", 70, True)):
        codes = rng.integers(-1, 2, (m, k)).astype(np.int8)
        shape = Ternary.scale_shape(codes.shape, gran, gs)
        a_neg = (rng.random(shape) + 0.5).astype(np.float32) if asym else None
        t = Ternary(codes, (rng.random(shape) + 0.5).astype(np.float32), a_neg,
                    granularity=gran, group_size=gs)
        p = pack(t, fmt)
        panels = -(-m // 32)
        wt = np.full((panels * p.padded_length, 32), np.nan, np.float32)
        mod.dequant_panels(*kernels._data(p), m, p.kernel_scales()["lut"], wt)
        padded = np.zeros((panels * 32, p.padded_length), np.float32)
        padded[:m, kernels._layout(p)["plain"]] = t.dense()
        expected = padded.reshape(panels, 32, -1).transpose(0, 2, 1).reshape(-1, 32)
        assert np.array_equal(wt, expected), (fmt, m, k)
print("ok")
"""


@pytest.mark.parametrize("fmt", ["i2", "tq1", "bitplanes"])
@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 70),
    k=st.integers(1, 400),
    gran=st.sampled_from(["tensor", "channel", "group"]),
    group_size=st.sampled_from([5, 64, 161]),
    kind=st.sampled_from(["symmetric", "asymmetric", "offset"]),
    seed=st.integers(0, 2**16),
)
def test_dequant_panels_are_the_dense_weight_as_panels(fmt, m, k, gran, group_size, kind, seed):
    """The convolution's weight for the block (``conv_whole_f32``; ``i2`` and ``tq1`` decode it
    column by column from the codes, ``bitplanes`` rows then a transpose): equal to the dense
    weight at every real column, zero in the padding and in the rows past ``m`` of the last
    panel; every element of ``wt`` is written."""
    mod = FORMATS[fmt]
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, (m, k)).astype(np.int8)
    gs = group_size if gran == "group" else None
    shape = Ternary.scale_shape(codes.shape, gran, gs)
    a_neg = (rng.random(shape) + 0.5).astype(np.float32) if kind != "symmetric" else None
    offset = rng.standard_normal(shape).astype(np.float32) if kind == "offset" else None
    t = Ternary(codes, (rng.random(shape) + 0.5).astype(np.float32), a_neg,
                granularity=gran, group_size=gs, offset=offset)  # fmt: skip
    p = pack(t, fmt)
    lut = p.kernel_scales()["lut"]
    wt = np.full((-(-m // COLS) * p.padded_length, COLS), np.nan, np.float32)
    mod.dequant_panels(*kernels._data(p), m, lut, wt)
    rows = np.empty((m, p.padded_length), np.float32)
    mod.dequant_tile_numpy(*kernels._data(p), 0, lut, rows)  # the twin of dequant_row
    assert np.array_equal(wt, _panel_layout(rows))
    dense = np.zeros((m, p.padded_length), np.float32)
    dense[:, kernels._layout(p)["plain"]] = t.dense()
    if kind != "offset":  # with an offset the padding decodes to the offset, as in every tile
        assert np.array_equal(wt, _panel_layout(dense))


def test_dequant_panels_run_as_plain_python_with_jit_disabled(run_without_jit):
    run_without_jit(DEQUANT_PANELS_SCRIPT)


def test_block_constants_fit_the_registers():
    """Twelve accumulators of 16 lanes with AVX-512 (see the module docstring: sixteen spilled),
    eight of 8 lanes with AVX2 (its sixteen registers also hold the four activation vectors)."""
    expected = {"avx512f": (6, 32, 16), "avx2": (2, 32, 8), None: (6, 32, 16)}[_f32_block.ISA]
    assert (ROWS, COLS, _f32_block.LANES) == expected


@pytest.mark.slow
def test_plain_float32_gemm_when_the_block_is_switched_off(tmp_path):
    """``TERNREF_F32_BLOCK=0`` (or a CPU without AVX-512F): the float32 GEMM and convolution
    compile and run the plain 4 x 4 loop, equal to the twin within the float32 bound."""
    script = textwrap.dedent(
        """
        import numpy as np
        from ternref import Ternary
        from ternref.packed import _f32_block, linear, pack
        assert not _f32_block.AVAILABLE
        rng = np.random.default_rng(0)
        for m, k, n in ((5, 257, 8), (37, 300, 67)):
            t = Ternary(rng.integers(-1, 2, (m, k)).astype(np.int8),
                        (rng.random(m) + 0.5).astype(np.float32), granularity="channel")
            x = rng.standard_normal((n, k)).astype(np.float32)
            for fmt in ("i2", "tq1", "bitplanes"):
                p = pack(t, fmt)
                y, twin = linear(x, p), linear(x, p, backend="numpy")
                assert np.allclose(y, twin, rtol=1e-5, atol=1e-4), fmt
        from ternref.packed import conv2d
        tc = Ternary(rng.integers(-1, 2, (33, 3, 3, 3)).astype(np.int8),
                     (rng.random((33, 1, 1, 1)) + 0.5).astype(np.float32), granularity="channel")
        xc = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
        for fmt in ("i2", "tq1", "bitplanes"):
            pc = pack(tc, fmt)
            y = conv2d(xc, pc, 1, 1, relu=True)
            twin = conv2d(xc, pc, 1, 1, relu=True, backend="numpy")
            assert np.allclose(y, twin, rtol=1e-5, atol=1e-4), fmt
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}
    env["TERNREF_F32_BLOCK"] = "0"
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "cache")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
