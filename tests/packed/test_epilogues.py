"""The vectorized epilogues of the common case equal the general ones bit for bit.

``finish_plain_i8`` / ``finish_plain_f32`` claim the same float64 and float32 operations, in the
same order, as ``add_group_int`` / ``add_group`` followed by ``finish_rows``; these tests hold
them to it, signed zeros and NaN included, with and without bias and ReLU, at an offset ``r0``.
"""

import numpy as np
import pytest

from ternref.packed._gemm import (
    add_group,
    add_group_int,
    finish_plain_f32,
    finish_plain_i8,
    finish_rows,
)

M, R0, R = 23, 5, 13  # 13 output rows starting at row 5 of a 23-row weight


def _scales(rng):
    sc = np.zeros((3, M, 1))
    sc[0, :, 0] = rng.uniform(0.01, 2.0, M)
    sc[0, R0, 0] = 0.0  # a zero scale: 0 * D, a signed zero when D < 0
    sc[1, :, 0] = sc[0, :, 0]
    return sc


@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_plain_int8_epilogue_equals_the_general_one(has_bias, relu):
    rng = np.random.default_rng(0)
    sc = _scales(rng)
    sums = rng.integers(-300, 300, R).astype(np.int32)
    sums[0] = -5  # D < 0 with the zero scale of row R0: -0.0 in the product
    sums[1] = 7  # D = 0 exactly below (x_sum = 7)
    xsum = np.array([[7]], np.int64)
    bias = rng.standard_normal(M).astype(np.float32) if has_bias else np.zeros(0, np.float32)
    bias_any = bias if has_bias else np.zeros(M, np.float32)
    inv_s = 0.0123
    fast = np.full(M, np.float32(99.0))
    finish_plain_i8(
        sums, xsum[0, 0], sc[0, R0 : R0 + R, 0].copy(), inv_s, bias_any, has_bias, relu, R0, fast
    )
    total = np.zeros(R)
    add_group_int(total, sums, np.zeros((0, 0, 0), np.int32), xsum, 0, 0, sc, R0, False, False)
    general = np.full(M, np.float32(99.0))
    finish_rows(total, inv_s, bias_any, has_bias, relu, R0, general)
    assert fast.tobytes() == general.tobytes()  # bit for bit, signs of zeros included
    assert (fast[:R0] == 99.0).all() and (fast[R0 + R :] == 99.0).all()  # only its rows


@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_plain_float32_epilogue_equals_the_general_one(has_bias, relu):
    rng = np.random.default_rng(1)
    sc = _scales(rng)
    sums = rng.standard_normal(R).astype(np.float32)
    sums[2] = np.float32(np.nan)  # NaN passes through bias and ReLU
    xsum = np.array([[float(sums[1])]])  # D = 0: 0.0 + alpha * 0.0
    bias = rng.standard_normal(M).astype(np.float32)
    fast = np.full(M, np.float32(99.0))
    finish_plain_f32(sums, xsum[0, 0], sc[0, R0 : R0 + R, 0].copy(), bias, has_bias, relu, R0, fast)
    total = np.zeros(R)
    add_group(total, sums, np.zeros((0, 0, 0), np.float32), xsum, 0, 0, sc, R0, False, False)
    general = np.full(M, np.float32(99.0))
    finish_rows(total, 1.0, bias, has_bias, relu, R0, general)
    assert fast.tobytes() == general.tobytes()
    assert np.isnan(fast[R0 + 2])
