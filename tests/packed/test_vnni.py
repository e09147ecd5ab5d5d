"""The byte dot-product intrinsics of ``ternref.packed._vnni`` (``vpdpbusd`` with AVX-512 VNNI,
``vpmaddubsw`` with AVX2: whichever ``_vnni.ISA`` names) against the dense sum they compute,
on every length the i2 kernels can give them (multiples of 32 bytes, with and without the
32-byte tail), both masks, extreme activations, and one or four activation rows. Skipped where
the CPU (or ``NUMBA_DISABLE_JIT`` / ``TERNREF_VNNI=0``) rules the intrinsic out: there the i2
kernels run the plain loops, which the kernel-path tests cover."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref.packed import _vnni

pytestmark = pytest.mark.skipif(
    not _vnni.AVAILABLE, reason="no byte dot-product kernels here (AVX-512 VNNI or AVX2)"
)

if _vnni.AVAILABLE:
    from ternref._jit import njit
    from ternref.packed._vnni import (
        i2_field_block,
        i2_field_dot,
        i2_field_dot_4acts,
        i2_field_dot_4rows,
    )

    @njit
    def _block(codes, r, t0, seg, xs, n, mask, out, c):
        i2_field_block(codes, r, t0, seg, xs, n, mask, out, c)

    @njit
    def _dot1(codes, r, t0, seg, xs, n, mask):
        return i2_field_dot(codes, r, t0, seg, xs, n, mask)

    @njit
    def _dot_4rows(codes, r, t0, seg, xs, n, mask):
        return i2_field_dot_4rows(codes, r, t0, seg, xs, n, mask)

    @njit
    def _dot_4acts(codes, r, t0, seg, xs, n, mask):
        return i2_field_dot_4acts(codes, r, t0, seg, xs, n, mask)


def _dense(codes, r, t0, seg, xs, n, mask):
    """``sum_t sum_s ((codes[r, t0 + t] >> 2 s) & mask) * xs[n, s, t0 + t]`` in int64."""
    row = codes[r, t0 : t0 + seg].astype(np.int64)
    x = xs[n, :, t0 : t0 + seg].astype(np.int64)
    return int(sum((((row >> (2 * s)) & mask) * x[s]).sum() for s in range(4)))


def _random_codes(rng, rows, nbytes):
    fields = rng.integers(0, 3, (rows, nbytes, 4))  # i2 never stores the pattern 0b11
    packed = fields[..., 0] | fields[..., 1] << 2 | fields[..., 2] << 4 | fields[..., 3] << 6
    return packed.astype(np.uint8)


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
    seg, t0 = 32 * blocks, 32 * offset_blocks
    width = t0 + seg + 32 * int(rng.integers(0, 2))
    codes = _random_codes(rng, rows, width)
    if extreme:  # every product at its largest magnitude
        xs = rng.choice(np.array([-127, 127], np.int8), (rows, 4, width))
        codes[:] = 0b10101010
    else:
        xs = rng.integers(-127, 128, (rows, 4, width)).astype(np.int8)
    args = (t0, seg, xs)
    for r in range(rows):
        for n in range(rows):
            assert _dot1(codes, r, *args, n, mask) == _dense(codes, r, *args, n, mask)
    for first in range(rows - 3):
        for other in range(rows):
            got = _dot_4rows(codes, first, *args, other, mask)
            assert list(got) == [_dense(codes, first + j, *args, other, mask) for j in range(4)]
            got = _dot_4acts(codes, other, *args, first, mask)
            assert list(got) == [_dense(codes, other, *args, first + i, mask) for i in range(4)]
    for r in range(rows - 3):
        for n in range(rows - 3):
            out = np.full((4, rows + 2), -1, np.int32)
            _block(codes, r, *args, n, mask, out, 1)
            want = [[_dense(codes, r + j, *args, n + i, mask) for j in range(4)] for i in range(4)]
            assert out[:, 1:5].tolist() == want
            assert (out[:, 0] == -1).all() and (out[:, 5:] == -1).all()  # nothing else written


@pytest.mark.parametrize("value", [-128, 127])
def test_largest_sums_do_not_saturate(value):
    """Every field 2 and every activation ``value``: the AVX2 form's int16 pair sums of the four
    streams reach ``4 * 2 * 2 * value`` (-2048 with -128), the most any int8 input can give; a
    saturating or overflowing lane would show here. One and three 64-byte steps (and a tail)."""
    for nbytes in (32, 64, 96, 224):
        codes = np.full((4, nbytes), 0b10101010, np.uint8)
        xs = np.full((4, 4, nbytes), value, np.int8)
        want = 2 * 4 * nbytes * value
        assert _dot1(codes, 0, 0, nbytes, xs, 0, 3) == want
        assert list(_dot_4rows(codes, 0, 0, nbytes, xs, 0, 3)) == [want] * 4
        assert list(_dot_4acts(codes, 0, 0, nbytes, xs, 0, 3)) == [want] * 4
        out = np.zeros((4, 4), np.int32)
        _block(codes, 0, 0, nbytes, xs, 0, 3, out, 0)
        assert (out == want).all()


def test_field_dot_through_strides():
    """Rows are addressed through their strides: a batch and code rows sliced from bigger
    arrays (only the last axis must be contiguous)."""
    rng = np.random.default_rng(3)
    xs = rng.integers(-127, 128, (12, 4, 96)).astype(np.int8)[::3]
    codes = _random_codes(rng, 10, 128)[::2, 32:]
    for r in range(codes.shape[0] - 3):
        for n in range(xs.shape[0]):
            want = [_dense(codes, r + j, 32, 64, xs, n, 3) for j in range(4)]
            assert list(_dot_4rows(codes, r, 32, 64, xs, n, 3)) == want
            assert _dot1(codes, r, 32, 64, xs, n, 3) == want[0]


def test_typing_refuses_wrong_dtypes():
    from numba.core.errors import TypingError

    with pytest.raises(TypingError, match="uint8 codes"):
        _dot1(np.zeros((1, 32), np.int8), 0, 0, 32, np.zeros((1, 4, 32), np.int8), 0, 3)
