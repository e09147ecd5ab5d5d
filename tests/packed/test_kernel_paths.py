"""Every packed kernel path, on random codes, against its NumPy twin and the dense product.

``linear(x, pack(t, fmt), activations)`` chooses its code by five discrete things:

================  =========================================================================
format            ``i2`` | ``tq1`` | ``bitplanes``: which module's kernels run
batch             ``n=1`` (a vector ``x``) and ``1<n<8`` run ``dot_f32`` / ``dot_i8`` (the
                  GEMV kernels, one output row per thread, accumulator lanes);
                  ``n>=8`` (``GEMM_MIN_BATCH``) runs ``gemm_f32`` / ``gemm_i8`` (tiles of
                  ``TILE_ROWS`` decoded weight rows); with AVX-512 VNNI, ``i2``'s int8
                  product runs ``dot_i8`` and ``tq1``'s ``gemm_i8_i2`` (tiles re-encoded
                  as ``i2``) at every such batch (``kernel_checks.kernel_names``)
activations       ``float32`` | ``int8`` (absmax-quantized rows, exact integer sums)
scales            ``symmetric`` | ``asymmetric`` (the kernels' ``asym`` branch: +1 and -1
                  sides accumulated apart) | ``symmetric+offset`` | ``asymmetric+offset``
                  (the ``has_offset`` branch, with either)
granularity       ``tensor`` | ``channel`` (one segment per row) | ``group`` (one segment per
                  group of ``group_size`` weights, each padded to the format's block)
================  =========================================================================

Each combination is its own pytest case (216), so no random draw can leave a path out; the
test id names the kernel, e.g. ``test_kernel_path[i2.dot_f32-1<n<8-asymmetric-group]``.
Hypothesis draws only the tensors: the sizes (``K`` around multiples of the format's block, a
number of rows that is and is not a multiple of the GEMM tile), the group size, the density of
nonzero codes (all-zero included), zero scales, the activation scale, and a seed for the values.
Every case also runs the fixed ``@example`` tensors below: two tiles and one row of a third,
partial blocks, a single weight, all-zero codes. What is checked: :mod:`kernel_checks`.

One more case per path runs a product large enough for the threaded kernels
(``n M K >= SERIAL_BELOW``), where the prange loops really run in parallel.
"""

import math
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ternref import Ternary
from ternref.packed import FORMATS, kernels, pack
from ternref.packed._gemm import TILE_ROWS  # the most rows per decoded GEMM tile
from ternref.packed.kernels import GEMM_MIN_BATCH, SERIAL_BELOW

sys.path.insert(0, str(Path(__file__).parent))
from kernel_checks import check_linear, kernel_names  # noqa: E402

SMALL_BATCH, GEMM_BATCH = f"1<n<{GEMM_MIN_BATCH}", f"n>={GEMM_MIN_BATCH}"
BATCHES = ("n=1", SMALL_BATCH, GEMM_BATCH)
SCALES = ("symmetric", "asymmetric", "symmetric+offset", "asymmetric+offset")
GRANULARITIES = ("tensor", "channel", "group")
ACTIVATIONS = ("float32", "int8")
# Random examples per path, on top of the fixed ones: a tenth of the profile's max_examples
# (10 by default, 100 with TERNREF_HYPOTHESIS=thorough).
EXAMPLES_PER_PATH = max(6, settings().max_examples // 10)


@dataclass(frozen=True)
class Tensors:
    """What hypothesis draws for one case; :func:`build` makes the arrays from it.

    ``K = max(1, blocks * BLOCK + extra)`` with the format's ``BLOCK`` (i2 128, tq1 160,
    bitplanes 64), so sizes fall on, just below, just above and far from block boundaries for
    every format alike.
    """

    m: int  # weight rows (output features)
    blocks: int
    extra: int
    group_size: int  # used when granularity == "group"
    batch_extra: int  # rows of x beyond the smallest batch of the path
    density: float  # fraction of nonzero codes
    zero_scale: bool  # set one scale (alpha_pos of the first row or group) to 0
    zero_row: bool  # set one row of x (all of x for n=1) to 0
    x_scale: float
    float64_scales: bool
    seed: int


tensors = st.builds(
    Tensors,
    m=st.integers(1, 2 * TILE_ROWS + 8),
    blocks=st.integers(0, 3),
    extra=st.integers(-1, 160),
    group_size=st.sampled_from([1, 3, 31, 32, 64, 100, 128, 129, 160, 256, 320, 1000]),
    batch_extra=st.integers(0, 9),
    density=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
    zero_scale=st.booleans(),
    zero_row=st.booleans(),
    x_scale=st.sampled_from([1e-3, 1.0, 50.0]),
    float64_scales=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)


def _fixed(**kw):
    base = dict(
        group_size=100, batch_extra=0, density=0.7, zero_scale=False, zero_row=False,
        x_scale=1.0, float64_scales=False,
    )  # fmt: skip
    return Tensors(**{**base, **kw})


FIXED = (
    # two full GEMM tiles and one row of a third; rows of x not a multiple of the 4 x 4
    # register block; two full blocks and a partial one reaching every i2/tq1 sub-block
    _fixed(m=2 * TILE_ROWS + 1, blocks=2, extra=97, batch_extra=3, zero_row=True, seed=1),
    # K a multiple of the block, groups spanning several blocks, a zero scale, float64 scales,
    # the smallest GEMM batch (n = GEMM_MIN_BATCH)
    _fixed(
        m=TILE_ROWS + 3,
        blocks=3,
        extra=0,
        group_size=256,
        density=1.0,
        zero_scale=True,
        x_scale=50.0,
        float64_scales=True,
        seed=2,
    ),
    # a single weight
    _fixed(m=1, blocks=0, extra=1, group_size=1, batch_extra=9, density=1.0, seed=3),
    # all-zero codes (the output is the offset term alone, or 0)
    _fixed(m=5, blocks=1, extra=3, group_size=64, batch_extra=1, density=0.0, seed=4),
)


def batch_size(batch: str, extra: int) -> int:
    if batch == "n=1":
        return 1
    if batch == SMALL_BATCH:
        return 2 + extra % (GEMM_MIN_BATCH - 2)
    return GEMM_MIN_BATCH + extra


def build(case: Tensors, fmt: str, scales: str, granularity: str, salt: str):
    """The Ternary and activations of one case. ``salt`` (the path's id) gives each path its
    own values for the same drawn sizes: hypothesis runs every parametrization with the same
    derandomized draws."""
    rng = np.random.default_rng([case.seed, zlib.crc32(salt.encode())])
    k = max(1, case.blocks * FORMATS[fmt].BLOCK + case.extra)
    shape = (case.m, k)
    nonzero = rng.random(shape) < case.density
    codes = np.where(nonzero, rng.choice(np.array([-1, 1], np.int8), shape), 0).astype(np.int8)
    group_size = case.group_size if granularity == "group" else None
    sshape = Ternary.scale_shape(shape, granularity, group_size)
    dtype = np.float64 if case.float64_scales else np.float32
    alpha_pos = (rng.random(sshape) * 2).astype(dtype)
    if case.zero_scale:
        alpha_pos.flat[0] = 0.0
    alpha_neg = (rng.random(sshape) * 2).astype(dtype) if scales.startswith("asym") else None
    offset = rng.standard_normal(sshape).astype(dtype) if scales.endswith("offset") else None
    t = Ternary(
        codes, alpha_pos, alpha_neg, granularity=granularity, group_size=group_size, offset=offset
    )
    assert t.symmetric == (alpha_neg is None)
    return t, rng


def activations_for(case: Tensors, batch: str, k: int, rng) -> np.ndarray:
    n = batch_size(batch, case.batch_extra)
    x = (rng.standard_normal((n, k)) * case.x_scale).astype(np.float32)
    if case.zero_row:
        x[rng.integers(n)] = 0.0  # an all-zero row: int8 absmax scale 0, no NaN
    return x[0] if batch == "n=1" else x


def _path_id(fmt, batch, activations):
    n = {"n=1": 1, SMALL_BATCH: 2, GEMM_BATCH: GEMM_MIN_BATCH}[batch]
    return kernel_names(fmt, n, activations)[0]


PATHS = [
    pytest.param(fmt, batch, act, id=f"{_path_id(fmt, batch, act)}-{batch}")
    for fmt in sorted(FORMATS)
    for act in ACTIVATIONS
    for batch in BATCHES
]


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize(("fmt", "batch", "activations"), PATHS)
@settings(max_examples=EXAMPLES_PER_PATH)
@given(case=tensors)
@example(case=FIXED[0])
@example(case=FIXED[1])
@example(case=FIXED[2])
@example(case=FIXED[3])
def test_kernel_path(fmt, batch, activations, scales, granularity, case):
    salt = f"{fmt}-{batch}-{activations}-{scales}-{granularity}"
    t, rng = build(case, fmt, scales, granularity, salt)
    x = activations_for(case, batch, t.shape[1], rng)
    check_linear(t, pack(t, fmt), x, activations)


@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize(("fmt", "batch", "activations"), [p for p in PATHS if "n=1" not in p.id])
def test_kernel_path_threaded(monkeypatch, fmt, batch, activations, scales):
    """Products of at least ``SERIAL_BELOW`` multiply-adds are split into chunks run by helper
    threads (below it the calling thread runs them alone, small GEMVs in one fused ``gemv_*``
    call): chunks' row ranges and buffers must not collide. The ``vpdpbusd`` GEMM's own serial
    threshold (``kernels.SERIAL_VNNI_GEMM_BELOW``) is lowered so that it splits too (by
    activation rows)."""
    monkeypatch.setattr(kernels, "SERIAL_VNNI_GEMM_BELOW", 0)
    n = GEMM_MIN_BATCH - 1 if batch == SMALL_BATCH else GEMM_MIN_BATCH + 5
    m = 6 * TILE_ROWS + 5
    k = -(-SERIAL_BELOW // (n * m)) + 37
    case = _fixed(m=m, blocks=0, extra=k, group_size=200, seed=5)  # groups reach every sub-block
    t, rng = build(case, fmt, scales, "group", f"threaded-{fmt}-{batch}-{activations}-{scales}")
    x = (rng.standard_normal((n, k))).astype(np.float32)
    assert n * m * k >= SERIAL_BELOW and (n < GEMM_MIN_BATCH) == (batch == SMALL_BATCH)
    check_linear(t, pack(t, fmt), x, activations)


KERNEL_FUNCTIONS = (
    "gemv_f32", "gemv_i8", "dot_f32", "dot_i8", "gemm_f32", "gemm_i8", "gemm_i8_i2",
    "dot_f32_numpy", "dot_i8_numpy",
)  # fmt: skip


@pytest.mark.parametrize(("fmt", "batch", "activations"), PATHS)
def test_linear_runs_the_kernel_the_path_is_named_after(monkeypatch, fmt, batch, activations):
    """The dispatch the grid above relies on: a batch of each kind runs exactly the named kernel
    and twin. (If a rewrite adds a path, this fails until the grid names it.)"""
    calls = []
    case = _fixed(m=3, blocks=1, extra=5, seed=6)
    t, rng = build(case, fmt, "asymmetric", "tensor", "dispatch")
    x = activations_for(case, batch, t.shape[1], rng)
    p = pack(t, fmt)
    # compile first: a kernel compiled while its module's functions are spied on would resolve
    # its callees to the Python wrappers (Numba reads globals at compile time) and fail
    kernels.linear(x, pack(t, fmt), activations)

    def spy(owner, name):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls.append(f"{label}.{name}")
            return real(*args, **kwargs)

        label = fmt if owner is FORMATS[fmt] else "kernels"
        monkeypatch.setattr(owner, name, wrapper)

    for name in KERNEL_FUNCTIONS:
        if hasattr(FORMATS[fmt], name):  # gemm_i8_i2 is tq1's only
            spy(FORMATS[fmt], name)
    for name in ("_gemm_f32_numpy", "_gemm_i8_numpy"):
        spy(kernels, name)
    kernel, twin = kernel_names(fmt, math.prod(x.shape[:-1]), activations)
    kernels.linear(x, p, activations)
    assert calls == [kernel]
    calls.clear()
    kernels.linear(x, p, activations, backend="numpy")
    assert calls == [twin]


VNNI_FLAGS = (("i2", "STREAM_GEMM_I8"), ("tq1", "I2_TILE_GEMM_I8"))
"""Formats whose int8 GEMM leaves the decoded-tile ``gemm_i8`` where the CPU has VNNI."""


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize(("fmt", "flag"), VNNI_FLAGS)
@settings(max_examples=EXAMPLES_PER_PATH)
@given(case=tensors)
@example(case=FIXED[0])
@example(case=FIXED[3])
def test_decoded_tile_int8_gemm_where_vnni_takes_the_path(fmt, flag, scales, granularity, case):
    """With the VNNI flag off (as on a CPU without it) the int8 GEMM is ``gemm_i8``: keep it
    proven on machines where the grid above runs the ``vpdpbusd`` kernels instead."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FORMATS[fmt], flag, False)
        assert kernel_names(fmt, GEMM_MIN_BATCH, "int8")[0] == f"{fmt}.gemm_i8"
        t, rng = build(case, fmt, scales, granularity, f"tiles-{fmt}-{scales}-{granularity}")
        x = activations_for(case, GEMM_BATCH, t.shape[1], rng)
        check_linear(t, pack(t, fmt), x, "int8")
