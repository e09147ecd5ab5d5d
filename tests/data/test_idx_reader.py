"""read_idx: round trips of hand-written IDX files in every dtype, and refusal of broken files."""

import gzip
import struct

import numpy as np
import pytest

from ternref.data import read_idx

# IDX dtype code -> (big-endian dtype used to write the payload), from the format description.
CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(arr, code, *, ndim=None, shape=None, magic=b"\x00\x00"):
    """An IDX file written with struct, independently of ternref."""
    shape = arr.shape if shape is None else shape
    ndim = len(shape) if ndim is None else ndim
    header = magic + bytes([code, ndim]) + struct.pack(f">{len(shape)}I", *shape)
    return header + arr.astype(CODES.get(code, ">u1")).tobytes()


def sample(code, shape, rng):
    """Values spanning the dtype's range, including its extremes."""
    dt = np.dtype(CODES[code]).newbyteorder("=")
    n = int(np.prod(shape))
    if dt.kind == "f":
        vals = rng.standard_normal(n) * 1e3
        vals[:3] = [np.finfo(dt).max, np.finfo(dt).tiny, -0.0][: min(3, n)]
    else:
        info = np.iinfo(dt)
        vals = rng.integers(info.min, info.max, size=n, endpoint=True)
        vals[:2] = [info.min, info.max][: min(2, n)]
    return vals.astype(dt).reshape(shape)


@pytest.mark.parametrize("code", sorted(CODES))
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2), (0, 4)])
@pytest.mark.parametrize("compressed", [False, True])
def test_round_trip(tmp_path, code, shape, compressed):
    arr = sample(code, shape, np.random.default_rng(code))
    data = idx_bytes(arr, code)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(data) if compressed else data)
    got = read_idx(path)
    assert got.shape == shape
    assert got.dtype == np.dtype(CODES[code]).newbyteorder("=")
    assert got.dtype.isnative
    assert np.array_equal(got, arr)
    got[...] = 0  # writable, not a read-only view of the file bytes


def test_multibyte_values_are_big_endian(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(b"\x00\x00\x0b\x01\x00\x00\x00\x02" + b"\x01\x02\xff\xfe")
    assert read_idx(path).tolist() == [0x0102, -2]
    path.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x3f\xc0\x00\x00")
    assert read_idx(path).tolist() == [1.5]


def test_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = idx_bytes(arr, 0x08)
    raw_named_gz = tmp_path / "raw.gz"
    raw_named_gz.write_bytes(data)
    gz_named_raw = tmp_path / "train-images-idx3-ubyte"
    gz_named_raw.write_bytes(gzip.compress(data))
    assert np.array_equal(read_idx(raw_named_gz), arr)
    assert np.array_equal(read_idx(str(gz_named_raw)), arr)


def write(tmp_path, data, name="bad-idx"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_payload(tmp_path, compressed):
    data = idx_bytes(np.zeros((4, 5), np.int16), 0x0B)[:-1]
    path = write(tmp_path, gzip.compress(data) if compressed else data)
    with pytest.raises(ValueError) as e:
        read_idx(path)
    msg = str(e.value)
    assert str(path) in msg and "truncated" in msg
    assert "expected 40 bytes" in msg and "got 39 bytes" in msg


def test_trailing_bytes(tmp_path):
    path = write(tmp_path, idx_bytes(np.zeros(6, np.uint8), 0x08) + b"\x00\x00")
    with pytest.raises(ValueError) as e:
        read_idx(path)
    msg = str(e.value)
    assert str(path) in msg and "trailing" in msg
    assert "expected 6 bytes" in msg and "got 8 bytes" in msg


def test_wrong_magic(tmp_path):
    path = write(tmp_path, idx_bytes(np.zeros(3, np.uint8), 0x08, magic=b"\x00\x01"))
    with pytest.raises(ValueError, match="magic must start with bytes 00 00, got 00 01") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_text_file_is_not_idx(tmp_path):
    path = write(tmp_path, b"hello world\n")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("length", [0, 3])
def test_too_short_for_a_header(tmp_path, length):
    path = write(tmp_path, b"\x00\x00\x08"[:length])
    with pytest.raises(ValueError, match=f"only {length} bytes") as e:
        read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("code", [0x00, 0x0A, 0x0F, 0xFF])
def test_unknown_dtype_code(tmp_path, code):
    path = write(tmp_path, b"\x00\x00" + bytes([code, 1]) + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match=f"unknown IDX dtype code 0x{code:02X}") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_zero_dimensions(tmp_path):
    path = write(tmp_path, b"\x00\x00\x08\x00\x05")
    with pytest.raises(ValueError, match="declares 0 dimensions, expected >= 1") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_header_shorter_than_its_dimension_count(tmp_path):
    # ndim says 4 but the file ends after 2 sizes: the header itself is incomplete.
    path = write(tmp_path, b"\x00\x00\x08\x04" + struct.pack(">2I", 1, 1))
    with pytest.raises(ValueError, match="declares 4 dimensions, which needs 20 header bytes") as e:
        read_idx(path)
    assert "only 12 bytes" in str(e.value) and str(path) in str(e.value)


def test_dimension_count_that_disagrees_with_the_data(tmp_path):
    # A (2, 3, 4) array written with ndim = 2: sizes (2, 3) are read and the third size word
    # plus the payload (4 + 24 bytes) no longer match the 6 bytes the header announces.
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write(tmp_path, idx_bytes(arr, 0x08, ndim=2))
    with pytest.raises(ValueError, match="expected 6 bytes of data for shape \\(2, 3\\)"):
        read_idx(path)


def test_corrupt_gzip_stream(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32), 0x0C))
    cut = write(tmp_path, good[: len(good) // 2], "cut.gz")
    with pytest.raises(ValueError, match="corrupt gzip stream") as e:
        read_idx(cut)
    assert str(cut) in str(e.value)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    bad = write(tmp_path, bytes(flipped), "flipped.gz")
    with pytest.raises(ValueError, match="corrupt gzip stream") as e:
        read_idx(bad)
    assert str(bad) in str(e.value)
    bad_crc = bytearray(good)
    bad_crc[-5] ^= 0x01  # the CRC-32 in the gzip trailer
    crc = write(tmp_path, bytes(bad_crc), "crc.gz")
    with pytest.raises(ValueError, match="corrupt gzip stream"):
        read_idx(crc)


def test_missing_file_and_bad_path_type(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        read_idx(3)


def test_huge_declared_sizes_are_a_length_mismatch_not_an_overflow(tmp_path):
    # 4 x (2**32 - 1) elements of float64: far beyond int64, must still be reported exactly.
    path = write(tmp_path, b"\x00\x00\x0e\x04" + struct.pack(">4I", *[2**32 - 1] * 4) + b"\x00")
    with pytest.raises(ValueError, match=f"expected {(2**32 - 1) ** 4 * 8} bytes"):
        read_idx(path)
