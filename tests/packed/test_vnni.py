"""The ``vpdpbusd`` intrinsics of ``ternref.packed._vnni`` against the dense sum they compute,
on every length the i2 kernels can give them (multiples of 32 bytes, with and without the
32-byte tail), both masks, extreme activations, and one or four activation rows. Skipped where
the CPU (or ``NUMBA_DISABLE_JIT`` / ``TERNREF_VNNI=0``) rules the intrinsic out: there the i2
kernels run the plain loops, which the kernel-path tests cover."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref.packed import _vnni

pytestmark = pytest.mark.skipif(not _vnni.AVAILABLE, reason="no AVX-512 VNNI kernels here")

if _vnni.AVAILABLE:
    from ternref._jit import njit
    from ternref.packed._vnni import i2_field_dot, i2_field_dot4

    @njit
    def _dot1(row, xs, n, t0, mask):
        return i2_field_dot(row, xs, n, t0, mask)

    @njit
    def _dot4(row, xs, n0, t0, mask):
        return i2_field_dot4(row, xs, n0, t0, mask)


def _dense(row, xs, n, t0, mask):
    """``sum_t sum_s ((row[t] >> 2 s) & mask) * xs[n, s, t0 + t]`` in int64."""
    x = xs[n, :, t0 : t0 + row.shape[0]].astype(np.int64)
    return int(sum((((row.astype(np.int64) >> (2 * s)) & mask) * x[s]).sum() for s in range(4)))


@settings(max_examples=60, deadline=None)
@given(
    blocks=st.integers(1, 9),  # 32-byte blocks: odd counts leave the 256-bit tail
    offset_blocks=st.integers(0, 3),
    rows=st.integers(4, 7),
    mask=st.sampled_from([1, 3]),
    extreme=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_field_dot_is_the_dense_sum(blocks, offset_blocks, rows, mask, extreme, seed):
    rng = np.random.default_rng(seed)
    nbytes, t0 = 32 * blocks, 32 * offset_blocks
    width = t0 + nbytes + 32 * rng.integers(0, 2)
    fields = rng.integers(0, 3, (nbytes, 4))  # i2 never stores the pattern 0b11
    row = (fields[:, 0] | fields[:, 1] << 2 | fields[:, 2] << 4 | fields[:, 3] << 6).astype(
        np.uint8
    )
    if extreme:  # every product at its largest magnitude
        xs = rng.choice(np.array([-127, 127], np.int8), (rows, 4, width))
        row[:] = 0b10101010
    else:
        xs = rng.integers(-127, 128, (rows, 4, width)).astype(np.int8)
    for n in range(rows):
        assert _dot1(row, xs, n, t0, mask) == _dense(row, xs, n, t0, mask)
    for n0 in range(rows - 3):
        got = _dot4(row, xs, n0, t0, mask)
        assert list(got) == [_dense(row, xs, n0 + i, t0, mask) for i in range(4)]


def test_field_dot_of_a_non_contiguous_stream_batch():
    """The streams are addressed through their strides: a batch sliced from a bigger one."""
    rng = np.random.default_rng(3)
    big = rng.integers(-127, 128, (12, 4, 96)).astype(np.int8)
    xs = big[::3]  # every third activation row: outer stride 3x the row size
    row = rng.integers(0, 3, 64).astype(np.uint8) * 0b01010101
    for n in range(xs.shape[0]):
        assert _dot1(row, xs, n, 32, 3) == _dense(row, xs, n, 32, 3)


def test_typing_refuses_wrong_dtypes():
    from numba.core.errors import TypingError

    with pytest.raises(TypingError, match="uint8 codes row"):
        _dot1(np.zeros(32, np.int8), np.zeros((1, 4, 32), np.int8), 0, 0, 3)
