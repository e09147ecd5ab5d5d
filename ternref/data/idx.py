"""Reader for the IDX format of MNIST and Fashion-MNIST (raw or gzipped).

An IDX file is a 4-byte magic number, a header of dimension sizes, then the data, all big-endian::

    byte 0, 1   0x00 0x00                        magic
    byte 2      dtype code                       0x08 uint8   0x09 int8    0x0B int16
                                                 0x0C int32   0x0D float32 0x0E float64
    byte 3      ndim (>= 1)
    then        ndim x uint32, big-endian        size of each dimension, outermost first
    then        prod(sizes) x itemsize bytes     the array in C order, big-endian

``read_idx`` recognises gzip by its magic bytes ``1f 8b`` (not by the file name) and refuses the
whole file on any inconsistency; in particular the payload must have exactly the length the
header announces (a truncated download and trailing garbage are both errors).

References
----------
Y. LeCun, C. Cortes and C. J. C. Burges, "The MNIST database of handwritten digits", 1998
(format description). H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset
for Benchmarking Machine Learning Algorithms", 2017, arXiv:1708.07747.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

#: IDX dtype code -> big-endian NumPy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a NumPy array in native byte order.

    Parameters
    ----------
    path : str or os.PathLike
        The file. Gzip compression is detected from the content (magic ``1f 8b``).

    Returns
    -------
    ndarray
        Shape as given by the header; dtype uint8, int8, int16, int32, float32 or float64
        (native byte order), writable.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the gzip stream is corrupt, the magic number is wrong, the dtype code unknown, the
        header declares 0 dimensions or ends early, or the payload is not exactly
        ``prod(sizes) * itemsize`` bytes. The message names the file.

    References
    ----------
    Y. LeCun, C. Cortes and C. J. C. Burges, "The MNIST database of handwritten digits", 1998.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip stream ({e})") from None

    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file, only {len(data)} bytes (header needs 4)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file, magic must start with bytes 00 00, got {data[:2].hex(' ')}"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02X} (known: {known})")
    if ndim < 1:
        raise ValueError(f"{path}: IDX header declares {ndim} dimensions, expected >= 1")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{path}: IDX header declares {ndim} dimensions, which needs {header_len} header "
            f"bytes, but the file has only {len(data)} bytes"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on bogus sizes
    got = len(data) - header_len
    if got != expected:
        what = "truncated" if got < expected else "trailing bytes after the data"
        raise ValueError(
            f"{path}: IDX payload length mismatch ({what}): expected {expected} bytes of "
            f"data for shape {shape} of {dtype.name}, got {got} bytes"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    # astype copies, which also makes the array writable (frombuffer over bytes is read-only).
    return arr.astype(dtype.newbyteorder("="))
