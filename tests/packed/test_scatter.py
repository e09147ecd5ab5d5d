"""The int8 activation layouts: ``scatter_i8_runs`` (contiguous runs) == ``scatter_i8`` (column
by column) == the NumPy twin, on every format's stream layout, with and without scale groups,
odd K, a single column, all-zero rows and rows of one large value."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref import Ternary
from ternref.packed import FORMATS, pack
from ternref.packed._gemm import layout_runs, scatter_i8, scatter_i8_runs
from ternref.packed.kernels import _layout, _scatter_numpy


@settings(max_examples=40, deadline=None)
@given(
    fmt=st.sampled_from(sorted(FORMATS)),
    k=st.integers(1, 300),
    group_size=st.sampled_from([None, 32, 64, 100]),
    n=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_run_scatter_equals_the_column_scatter_and_the_twin(fmt, k, group_size, n, seed):
    rng = np.random.default_rng(seed)
    gran = "tensor" if group_size is None else "group"
    codes = rng.integers(-1, 2, (3, k)).astype(np.int8)
    scale = np.ones(Ternary.scale_shape(codes.shape, gran, group_size), np.float32)
    p = pack(Ternary(codes, scale, granularity=gran, group_size=group_size), fmt)
    lay = _layout(p)
    x = (rng.standard_normal((n, k)) * rng.choice([1e-3, 1.0, 1e3])).astype(np.float32)
    x[0] = 0.0  # an all-zero row: scale 0, no NaN
    if n > 1:
        x[1] = 0.0
        x[1, rng.integers(k)] = -5.0  # one value: quantizes to -127
    width, groups = lay["width"], lay["n_groups"]
    outs = []
    for runs in (False, True):
        out = np.full((n, width), 99, np.int8)  # must be overwritten everywhere
        xsum = np.full((n, groups), 7, np.int64)
        inv_s = np.empty(n, np.float64)
        if runs:
            scatter_i8_runs(x, layout_runs(lay["stream"], lay["group"]), out, xsum, inv_s)
        else:
            scatter_i8(x, lay["stream"], lay["group"], out, xsum, inv_s)
        outs.append((out, xsum, inv_s))
    twin = _scatter_numpy(x, lay["stream"], lay["group"], groups, width, True)
    for out, xsum, inv_s in outs:
        np.testing.assert_array_equal(out, twin[0])
        np.testing.assert_array_equal(xsum, twin[1])
        np.testing.assert_array_equal(inv_s, twin[2])


def test_layout_runs_of_i2_are_the_32_column_sub_blocks():
    p = pack(Ternary(np.ones((2, 256), np.int8), np.float32(1.0)), "i2")
    runs = layout_runs(_layout(p)["stream"], _layout(p)["group"])
    assert runs.shape == (8, 4) and (runs[:, 2] == 32).all()
    np.testing.assert_array_equal(runs[:, 0], np.arange(0, 256, 32))
