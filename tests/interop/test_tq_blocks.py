"""TQ2_0 / TQ1_0 block bytes: pinned by hand, equal to ternref's i2/tq1 blocks, equal to what
the ``gguf`` library's own quantizer writes, and read back exactly by its dequantizer.

The hand-built pins do not use the encoder under test: one nonzero code at one weight must land
in the byte and the bit (or base-3 digit) that llama.cpp's layout says (``block_tq2_0`` /
``block_tq1_0`` in ggml-common.h, as gguf-py's ``quants.py`` reads them).
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref import Ternary
from ternref.interop import tq
from ternref.packed import i2, tq1

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")
from gguf.quants import dequantize, quantize  # noqa: E402

QTYPE = {"tq2_0": gguf.GGMLQuantizationType.TQ2_0, "tq1_0": gguf.GGMLQuantizationType.TQ1_0}


def _byte(trits):
    """Hand computation of one TQ1_0 byte: base-3 digits (first most significant) -> ceil."""
    v = sum(t * 3 ** (4 - n) for n, t in enumerate(trits))
    return math.ceil(256 * v / 243)


# ------------------------------------------------------------------------------ hand-built pins


@pytest.mark.parametrize("w", [0, 1, 31, 32, 63, 64, 100, 127, 128, 129, 160, 200, 255])
@pytest.mark.parametrize("code", [-1, 1])
def test_tq2_0_one_weight_lands_in_its_byte_and_bits(w, code):
    codes = np.zeros((1, 256), np.int8)
    codes[0, w] = code
    raw = tq.encode(codes, np.array([[0.5]]), "tq2_0")[0]
    assert raw.shape == (66,)
    # all-zero codes are q = 1 in every 2-bit field: 0b01010101
    want = np.full(64, 0b01010101, np.uint8)
    byte = 32 * (w // 128) + w % 32
    shift = 2 * ((w % 128) // 32)
    want[byte] = (want[byte] & ~np.uint8(3 << shift)) | np.uint8((code + 1) << shift)
    assert np.array_equal(raw[:64], want)
    assert raw[64:].view("<f2")[0] == np.float16(0.5)


@pytest.mark.parametrize("w", [0, 5, 31, 32, 100, 159, 160, 161, 175, 176, 239, 240, 243, 255])
def test_tq1_0_one_weight_lands_in_its_byte_and_digit(w):
    codes = np.zeros((1, 256), np.int8)
    codes[0, w] = 1  # trit 2 where every other trit is 1 (code 0)
    raw = tq.encode(codes, np.array([[2.0]]), "tq1_0")[0]
    assert raw.shape == (54,)
    if w < 160:
        byte, digit, n_trits = w % 32, w // 32, 5
    elif w < 240:
        byte, digit, n_trits = 32 + (w - 160) % 16, (w - 160) // 16, 5
    else:
        byte, digit, n_trits = 48 + (w - 240) % 4, (w - 240) // 4, 4
    want = np.array([_byte([1] * 5)] * 48 + [_byte([1] * 4 + [0])] * 4, np.uint8)
    trits = [1] * n_trits + [0] * (5 - n_trits)
    trits[digit] = 2
    want[byte] = _byte(trits)
    assert np.array_equal(raw[:52], want)
    assert raw[52:].view("<f2")[0] == np.float16(2.0)


def test_tq2_0_code_bytes_are_two_i2_blocks_and_tq1_0_starts_with_a_tq1_block():
    rng = np.random.default_rng(0)
    codes = rng.integers(-1, 2, (3, 512)).astype(np.int8)
    d = np.ones((3, 2))
    tq2 = tq.encode(codes, d, "tq2_0").reshape(3, 2, 66)
    i2_bytes = i2.encode(codes)["codes"].reshape(3, 4, 32)  # four 128-weight i2 blocks
    for b in range(2):
        assert np.array_equal(tq2[:, b, :32], i2_bytes[:, 2 * b])
        assert np.array_equal(tq2[:, b, 32:64], i2_bytes[:, 2 * b + 1])
    tq1_bytes = tq.encode(codes, d, "tq1_0").reshape(3, 2, 54)
    for b in range(2):
        first160 = codes[:, 256 * b : 256 * b + 160]
        assert np.array_equal(tq1_bytes[:, b, :32], tq1.encode(first160)["codes"])


# ------------------------------------------------------------------------ against gguf.quants


@settings(max_examples=40)
@given(
    rows=st.integers(1, 5),
    blocks=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
    quant=st.sampled_from(tq.QUANTS),
    density=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
)
def test_encode_equals_gguf_quantizer_and_gguf_dequantizes_exactly(
    rows, blocks, seed, quant, density
):
    rng = np.random.default_rng(seed)
    shape = (rows, 256 * blocks)
    codes = np.where(rng.random(shape) < density, rng.choice([-1, 1], shape), 0).astype(np.int8)
    d = rng.uniform(1e-3, 10.0, (rows, blocks))
    raw = tq.encode(codes, d, quant)
    d16 = d.astype(np.float16).astype(np.float32)
    w = np.repeat(d16, 256, axis=1) * codes  # what the bytes mean
    # gguf's dequantizer reads exactly fp16(d) * c
    assert np.array_equal(dequantize(raw, QTYPE[quant]), w)
    # gguf's quantizer writes the same bytes; it sets d = 0 for an all-zero block, so the scale
    # bytes are compared only where a block has a nonzero code
    theirs = quantize(w, QTYPE[quant]).reshape(rows, blocks, -1)
    ours = raw.reshape(rows, blocks, -1)
    assert np.array_equal(theirs[..., :-2], ours[..., :-2])
    nonzero = np.any(codes.reshape(rows, blocks, 256) != 0, axis=2)
    assert np.array_equal(theirs[..., -2:][nonzero], ours[..., -2:][nonzero])
    # and decode inverts encode
    back, d_back = tq.decode(raw, quant)
    assert np.array_equal(back, codes)
    assert np.array_equal(d_back, d.astype(np.float16))


def test_tq_sizes_agree_with_gguf():
    for quant, qtype in QTYPE.items():
        assert gguf.GGML_QUANT_SIZES[qtype] == (tq.QK, tq.TYPE_SIZE[quant])


# ------------------------------------------------------------------------------ corrupt bytes


def test_decode_refuses_bytes_no_encoder_writes():
    codes = np.zeros((1, 256), np.int8)
    raw = tq.encode(codes, np.ones((1, 1)), "tq2_0")
    raw[0, 7] |= 0b11  # the unused TQ2_0 pattern (ggml would read +2)
    with pytest.raises(ValueError, match="unused bit pattern"):
        tq.decode(raw, "tq2_0")

    valid = {_byte([(v // 3 ** (4 - n)) % 3 for n in range(5)]) for v in range(243)}
    invalid = sorted(set(range(256)) - valid)
    assert len(invalid) == 256 - 243
    for where in (3, 40):  # part 1 (the tq1 block) and part 2 (16 lanes)
        raw = tq.encode(codes, np.ones((1, 1)), "tq1_0")
        raw[0, where] = invalid[0]
        with pytest.raises(ValueError, match="encodes no"):
            tq.decode(raw, "tq1_0")
    raw = tq.encode(codes, np.ones((1, 1)), "tq1_0")
    raw[0, 49] = _byte([1, 1, 1, 1, 1])  # a qh byte whose unused fifth trit is not 0
    with pytest.raises(ValueError, match="encodes no"):
        tq.decode(raw, "tq1_0")
    with pytest.raises(ValueError, match="whole 54-byte blocks"):
        tq.decode(raw[:, :53], "tq1_0")


# ------------------------------------------------------------------------------ row layouts


@st.composite
def symmetric_ternaries(draw):
    m = draw(st.integers(1, 4))
    k = draw(st.sampled_from([1, 25, 64, 255, 256, 300, 512, 768, 800]))
    gran = draw(st.sampled_from(["tensor", "channel", "group"]))
    gs = draw(st.sampled_from([64, 100, 256, 512])) if gran == "group" else None
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    codes = rng.integers(-1, 2, (m, k)).astype(np.int8)
    # fp16-representable scales, so the round trip must be exact
    scales = rng.uniform(0.01, 4, Ternary.scale_shape((m, k), gran, gs))
    scales = scales.astype(np.float16).astype(np.float32)
    return Ternary(codes, scales, granularity=gran, group_size=gs)


@settings(max_examples=60)
@given(t=symmetric_ternaries(), quant=st.sampled_from(tq.QUANTS))
def test_layout_round_trip_and_gguf_reads_w_hat(t, quant):
    k = t.shape[1]
    padded = tq.misfit(k, t.granularity, t.group_size) is not None
    layout = tq.RowLayout(k, t.granularity, t.group_size, padded)
    codes, scales = layout.to_blocks(t)
    raw = tq.encode(codes, scales, quant)
    seen = dequantize(raw, QTYPE[quant])
    assert seen.shape == (t.shape[0], layout.length)
    assert np.array_equal(seen[:, layout.logical_columns()], t.dense())
    if padded:  # padding columns dequantize to 0
        pad = np.ones(layout.length, bool)
        pad[layout.logical_columns()] = False
        assert np.all(seen[:, pad] == 0)
    back = layout.from_blocks(*tq.decode(raw, quant), t.shape)
    assert back == t


def test_unpadded_layout_needs_whole_blocks_and_groups():
    assert tq.misfit(512, "group", 256) is None
    assert tq.misfit(768, "group", 512) is None  # a last, shorter group of 256 is fine
    assert "not a multiple of 256" in tq.misfit(800, "channel", None)
    assert "scale groups hold 64" in tq.misfit(256, "group", 64)
    with pytest.raises(ValueError, match="whole blocks"):
        tq.RowLayout(25, "tensor", None, padded=False)
    layout = tq.RowLayout(768, "group", 512, padded=False)
    assert layout.block_group().tolist() == [0, 0, 1]
    padded = tq.RowLayout(300, "group", 100, padded=True)
    assert (padded.segment, padded.length) == (256, 768)
    assert padded.logical_columns()[[0, 99, 100, 299]].tolist() == [0, 99, 256, 611]


def test_from_blocks_refuses_blocks_that_break_the_layout():
    t = Ternary(np.ones((2, 512), np.int8), np.float32(0.5))
    layout = tq.RowLayout(512, "tensor", None, padded=False)
    codes, d = layout.to_blocks(t)
    d16 = d.astype(np.float16)
    other = d16.copy()
    other[1, 1] = np.float16(0.25)
    with pytest.raises(ValueError, match="different scales"):
        layout.from_blocks(codes, other, t.shape)
    rows = d16.copy()
    rows[1, :] = np.float16(0.25)  # constant per row, but the granularity is per tensor
    with pytest.raises(ValueError, match="granularity is 'tensor'"):
        layout.from_blocks(codes, rows, t.shape)
    padded = tq.RowLayout(300, "channel", None, padded=True)
    t = Ternary(np.ones((2, 300), np.int8), np.ones(2, np.float32), granularity="channel")
    codes, d = padded.to_blocks(t)
    codes[0, 400] = 1
    with pytest.raises(ValueError, match="padding columns"):
        padded.from_blocks(codes, d.astype(np.float16), t.shape)
