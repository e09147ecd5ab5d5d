"""Bit layouts pinned on hand-built examples, exact pack/unpack round trips, storage counts."""

import inspect
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref import Ternary
from ternref.packed import FORMATS, Packed, bitplanes, i2, pack, tq1, unpack

sys.path.insert(0, str(Path(__file__).parent))
from strategies import ternaries  # noqa: E402

# ------------------------------------------------------------------------------ round trips


@settings(max_examples=60)
@given(t=ternaries(), fmt=st.sampled_from(sorted(FORMATS)))
def test_unpack_inverts_pack_exactly(t, fmt):
    p = pack(t, fmt)
    p.validate()
    back = unpack(p)
    assert back == t
    assert back.symmetric == t.symmetric
    assert np.array_equal(back.dense(), t.dense())


conv_shapes = st.tuples(
    st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)
) | st.tuples(st.integers(1, 20))


@settings(max_examples=30)
@given(t=ternaries(shapes=conv_shapes), fmt=st.sampled_from(sorted(FORMATS)))
def test_round_trip_keeps_conv_and_vector_shapes(t, fmt):
    p = pack(t, fmt)
    assert p.orig_shape == t.shape
    assert p.shape == (t.shape[0], int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1)
    assert unpack(p) == t


# ------------------------------------------------------------------------------ i2 bit layout


def test_i2_weight_j_lands_in_byte_j_mod_32_at_bit_2_j_div_32():
    for j in range(128):
        codes = np.zeros((1, 128), np.int8)
        codes[0, j] = 1  # q = 2 = 0b10 at weight j, q = 1 = 0b01 everywhere else
        b = i2.encode(codes)["codes"][0]
        expect = np.full(32, 0b01010101, np.uint8)
        shift = 2 * (j // 32)
        expect[j % 32] = (0b01010101 & ~(0b11 << shift)) | (0b10 << shift)
        assert np.array_equal(b, expect), j


def test_i2_second_block_starts_at_byte_32_and_q_is_c_plus_1():
    codes = np.zeros((1, 256), np.int8)
    codes[0, 128 + 33] = -1  # block 1, weight 33 -> byte 32 + 1, bits 2-3, q = 0
    b = i2.encode(codes)["codes"][0]
    assert b.shape == (64,)
    assert b[33] == 0b01010001
    assert np.all(np.delete(b, 33) == 0b01010101)


def test_i2_refuses_the_unused_pattern_3():
    with pytest.raises(ValueError, match="0b11"):
        i2.decode({"codes": np.full((1, 32), 0xFF, np.uint8)})


# ------------------------------------------------------------------------------ tq1


def test_tq1_decode_formula_for_all_243_words():
    v = np.arange(243)
    byte = np.ceil(v * 256 / 243).astype(np.int64)  # the stored fixed-point fraction
    assert byte.max() <= 255
    digits = [(v // 3 ** (4 - n)) % 3 for n in range(5)]  # independent: division and modulo
    for n in range(5):
        assert np.array_equal(tq1.decode_trit(byte, n), digits[n]), n


def test_tq1_decoders_use_no_division():
    # every line that decodes a trit (the "& 255" wrap, the uint8 wrap of _trit, or a call of
    # _trit) multiplies and shifts only
    kernels = (tq1._code_sums_f32, tq1._zero_sums_f32, tq1._code_sums_i8, tq1._zero_sums_i8)
    for fn in (tq1.decode_trit, tq1._trits, *(k.py_func for k in (tq1._trit, *kernels))):
        lines = [
            ln for ln in inspect.getsource(fn).splitlines()
            if "& 255" in ln or "_trit(" in ln or "byte * power" in ln
        ]  # fmt: skip
        assert lines, fn
        for ln in lines:
            assert "//" not in ln and "%" not in ln and "/" not in ln, ln


def test_tq1_narrow_trit_decoder_equals_the_formula_for_every_byte():
    """``_trit`` (8/16-bit arithmetic, what the float32 kernels vectorize) against
    ``((b 3^s) & 255) 3 >> 8`` in Python ints, every byte and trit, jitted and not."""
    b = np.arange(256)
    for s, power in enumerate((1, 3, 9, 27, 81)):
        want = (((b * power) & 255) * 3) >> 8
        for fn in (tq1._trit, tq1._trit.py_func):
            got = [int(fn(np.uint8(v), np.uint8(power))) for v in b]
            assert got == want.tolist(), (s, fn)


def test_tq1_weight_w_lands_in_byte_w_mod_32_as_trit_w_div_32():
    for w in (0, 1, 31, 32, 77, 128, 159):
        codes = np.full((1, 160), -1, np.int8)  # all trits 0
        codes[0, w] = 1  # trit 2
        b = tq1.encode(codes)["codes"][0]
        n = w // 32
        v = 2 * 3 ** (4 - n)
        expect = np.zeros(32, np.uint8)
        expect[w % 32] = -(-v * 256 // 243)
        assert np.array_equal(b, expect), w


def test_tq1_refuses_bytes_that_encode_nothing():
    with pytest.raises(ValueError, match="5-trit"):
        tq1.decode({"codes": np.ones((1, 32), np.uint8)})  # v=0 -> 0, v=1 -> 2: 1 is unused


# ------------------------------------------------------------------------------ bitplanes


def test_bitplanes_weight_k_is_bit_k_mod_64_of_word_k_div_64():
    codes = np.zeros((1, 192), np.int8)
    codes[0, 0] = 1
    codes[0, 63] = -1
    codes[0, 64 + 5] = 1
    codes[0, 128 + 7] = -1
    pl = bitplanes.encode(codes)
    assert pl["pos"].dtype == np.uint64
    assert pl["pos"][0].tolist() == [1, 1 << 5, 0]
    assert pl["neg"][0].tolist() == [1 << 63, 0, 1 << 7]


def test_bitplanes_refuse_a_weight_in_both_planes():
    one = np.ones((1, 1), np.uint64)
    with pytest.raises(ValueError, match="both"):
        bitplanes.decode({"pos": one, "neg": one})


# ------------------------------------------------------------------------------ padding, storage


def test_group_segments_are_padded_per_group():
    codes = np.ones((1, 300), np.int8)
    t = Ternary(codes, np.ones((1, 3), np.float32), granularity="group", group_size=100)
    p = pack(t, "i2")
    assert (p.n_groups, p.segment, p.padded_length) == (3, 128, 384)
    full = i2.decode(p.arrays)[0]
    assert np.all(full.reshape(3, 128)[:, :100] == 1) and np.all(full.reshape(3, 128)[:, 100:] == 0)


@pytest.mark.parametrize(
    "fmt,k,bits", [("i2", 1280, 2.0), ("tq1", 1280, 1.6), ("bitplanes", 1280, 2.0)]
)
def test_bits_per_weight_without_padding(fmt, k, bits):
    m = 6
    t = Ternary(np.zeros((m, k), np.int8), np.ones(m, np.float32), granularity="channel")
    p = pack(t, fmt)
    assert p.bits_per_weight == pytest.approx(bits)
    assert p.code_nbytes == m * k * bits / 8
    assert p.scale_nbytes == 4 * m
    assert p.nbytes == p.code_nbytes + 4 * m
    assert p.bits_per_weight_with_scales == pytest.approx(bits + 32 / k)


def test_padding_counts_against_bits_per_weight():
    t = Ternary(np.zeros((2, 129), np.int8), np.float32(1.0))
    assert pack(t, "i2").bits_per_weight == pytest.approx(2.0 * 256 / 129)


def test_asymmetric_and_offset_scales_are_stored_and_counted():
    shape = (3, 10)
    t = Ternary(
        np.zeros(shape, np.int8),
        np.ones((3, 1), np.float64),
        np.full((3, 1), 2.0),
        granularity="channel",
        offset=np.zeros(3),
    )
    p = pack(t, "tq1")
    assert p.alpha_neg is not None and p.offset is not None
    assert p.scale_nbytes == 3 * 3 * 8
    assert p.dtype == np.float64


# ------------------------------------------------------------------------------ errors


def test_pack_refuses_bad_arguments():
    t = Ternary(np.zeros((2, 3), np.int8), np.float32(1.0))
    with pytest.raises(TypeError, match="Ternary"):
        pack(np.zeros((2, 3)), "i2")
    with pytest.raises(ValueError, match="format"):
        pack(t, "q4")
    with pytest.raises(TypeError, match="Packed"):
        unpack(t)


def test_validate_refuses_wrong_array_shape_and_dtype():
    t = Ternary(np.zeros((2, 3), np.int8), np.float32(1.0))
    p = pack(t, "i2")
    bad = Packed(**{**p.__dict__, "arrays": {"codes": p.arrays["codes"][:, :-1]}, "_cache": {}})
    with pytest.raises(ValueError, match="shape"):
        bad.validate()
    bad = Packed(**{**p.__dict__, "arrays": {"codes": p.arrays["codes"].astype(np.int16)}})
    with pytest.raises(ValueError, match="uint8"):
        bad.validate()
    bad = Packed(**{**p.__dict__, "alpha_pos": np.ones(2, np.float32), "_cache": {}})
    with pytest.raises(ValueError, match="alpha_pos"):
        bad.validate()
