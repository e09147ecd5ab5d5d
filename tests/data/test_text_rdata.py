"""The R reader (ternref.data.rdata): files written by R itself, hand-built serializations,
lazy-load databases, every refusal, and the embedded novel's checksum.

``RWriter`` below writes the subset of R's XDR serialization the reader accepts. It is checked
byte for byte against serializations made by R 4.2.2 (the hex constants, each with the R call
that produced it), so the hand-built streams used for the error cases are real R streams.
"""

import gzip
import hashlib
import struct
import zlib

import pytest

from ternref.data import rdata
from ternref.data.rdata import LazyLoadDB, RVector, as_text_object, read_rds, unserialize
from ternref.data.text import EMBEDDED_BYTES, EMBEDDED_PATH, EMBEDDED_SHA256

# --- Serializations written by R 4.2.2 in a UTF-8 locale (LANG=C.UTF-8 Rscript -e ...).
# x <- c("a", NA, enc2utf8("\u00a35"), iconv("\u00e9", "UTF-8", "latin1"), "")
# serialize(x, NULL, xdr = TRUE, version = 3)
R_CHARACTER_V3 = (
    "580a000000030004020200030500000000055554462d38000000100000000500040009000000016100000009"
    "ffffffff0000800900000003c2a3350000400900000001e90004000900000000"
)
# serialize(x, NULL, xdr = TRUE, version = 2)
R_CHARACTER_V2 = (
    "580a000000020004020200020300000000100000000500040009000000016100000009ffffffff0000800900"
    "000003c2a3350000400900000001e90004000900000000"
)
# serialize(data.frame(a = c("x", "y"), b = c("\u00a3", NA)), NULL, version = 3)
R_DATA_FRAME = (
    "580a000000030004020200030500000000055554462d380000031300000002000000100000000200040009"
    "000000017800040009000000017900000010000000020000800900000002c2a300000009ffffffff000004"
    "020000000100040009000000056e616d65730000001000000002000400090000000161000400090000000162"
    "00000402000000010004000900000005636c6173730000001000000001000400090000000a646174612e6672"
    "616d6500000402000000010004000900000009726f772e6e616d65730000000d0000000280000000fffffffe"
    "000000fe"
)
# serialize(list(p = c(a = "x"), q = c(b = "y")), NULL, version = 3): "names" three times,
# written once as a symbol and then twice as a reference to it (0x000001ff).
R_NESTED_NAMES = (
    "580a000000030004020200030500000000055554462d38000002130000000200000210000000010004000900"
    "00000178000004020000000100040009000000056e616d65730000001000000001000400090000000161000000"
    "fe000002100000000100040009000000017900000402000001ff00000010000000010004000900000001620000"
    "00fe00000402000001ff0000001000000002000400090000000170000400090000000171000000fe"
)
# serialize(list(p = structure("x", class = "k"), q = structure("y", names = "a",
#     class = "k2")), NULL, version = 3): symbols class (1) and names (2), then references to
#     each (0x000001ff, 0x000002ff).
R_TWO_SYMBOLS = (
    "580a000000030004020200030500000000055554462d3800000213000000020000031000000001000400090000"
    "00017800000402000000010004000900000005636c617373000000100000000100040009000000016b000000fe"
    "0000031000000001000400090000000179000004020000000100040009000000056e616d657300000010000000"
    "0100040009000000016100000402000001ff000000100000000100040009000000026b32000000fe0000040200"
    "0002ff0000001000000002000400090000000170000400090000000171000000fe"
)
# serialize(c(TRUE, NA, FALSE), NULL, version = 3)
R_LOGICAL = "580a000000030004020200030500000000055554462d380000000a00000003000000018000000000000000"
# serialize(1:3, NULL, version = 3): an ALTREP compact integer sequence.
R_ALTREP_SEQ = (
    "580a000000030004020200030500000000055554462d38000000ee000000020000000100040009000000"
    "0e636f6d706163745f696e747365710000000200000001000400090000000462617365000000020000000d"
    "000000010000000d000000fe0000000e0000000340080000000000003ff00000000000003ff00000000000"
    "00000000fe"
)
# serialize(1.5, NULL, version = 3)
R_DOUBLE = "580a000000030004020200030500000000055554462d380000000e000000013ff8000000000000"
# serialize(factor("q"), NULL, version = 3)
R_FACTOR = (
    "580a000000030004020200030500000000055554462d380000030d00000001000000010000040200000001"
    "00040009000000066c6576656c73000000100000000100040009000000017100000402000000010004000900"
    "000005636c6173730000001000000001000400090000000666616374 6f72000000fe"
).replace(" ", "")
# e <- new.env(); assign("a", c("x", "y"), envir = e)
# tools:::makeLazyLoadDB(e, "db1", compress = 1): db1.rdb and db1.rdx
R_DB1_RDB = (
    "00000031789c8be06260606066606162626066053219584343dc742d800c012066626061e004d28c1530462500"
    "455402ee"
)
R_DB1_RDX = (
    "1f8b08000000000000038be06260606066606162626066053219584343dc742d18189884c112109a11887981988901"
    "020c19803ac0e22c0c9c204d7989b9a9c54086009220632290f807358101a283f13f541103440e6c2a2304a3c83343"
    "0de12c4b2cca4c4cca019a0e11e02a4a4d4b2d4acd4b468824e7e71614a51617a7a6800c0500d476f768d2000000"
)
# The same with compress = 3 (xz), which the reader refuses.
R_DB3_RDB = (
    "000000315ae0003000265d002c027c19f9aff41d3b9e98357eead0f4214db34552c4c13a870d13be48e0109a0b"
    "aab1f36c0000"
)
R_DB3_RDX = (
    "1f8b08000000000000038be06260606066606162626066053219584343dc742d18189884c112109a11887981988901"
    "028c19803ac0e22c0c9c204d7989b9a9c54086009220632290f807358101a283f13f541103440e6c2a23c426147966"
    "a8219c6589459989493940d321025c45a969a945a979c90891e4fcdc82a2d4e2e2d41490a100ab2ea247d2000000"
)


class RWriter:
    """Writes R's XDR serialization of character/integer/logical/list vectors (R 4.2.2 header).

    Symbols (attribute tags) are written once, then as references, as R does; the writer keeps
    the reference table, so build one object per writer, inner parts first (attribute values
    must not carry attributes themselves, or the table order would differ from R's).
    """

    ASCII, UTF8, LATIN1, BYTES = 64, 8, 4, 2

    def __init__(self, version=3, native="UTF-8"):
        self.version, self.native, self.symbols = version, native, []

    @staticmethod
    def i32(*values):
        return struct.pack(f">{len(values)}i", *values)

    def header(self):
        out = b"X\n" + self.i32(self.version, 0x040202, 0x030500 if self.version == 3 else 0x020300)
        if self.version == 3:
            out += self.i32(len(self.native)) + self.native.encode()
        return out

    def serialize(self, item):
        return self.header() + item

    def char(self, s, levels=None, raw=None):
        """A string: ``s`` (None for NA), or the bytes ``raw`` flagged with ``levels``."""
        if s is None and raw is None:
            return self.i32(9, -1)
        data = raw if raw is not None else s.encode("utf-8")
        if levels is None:
            levels = self.ASCII if data.isascii() else self.UTF8
        return self.i32(9 | levels << 12, len(data)) + data

    def _vector(self, kind, n, body, attrs, is_object=False):
        flags = kind | (1 << 8 if is_object else 0) | (1 << 9 if attrs else 0)
        return self.i32(flags, n) + body + (self.attributes(attrs) if attrs else b"")

    def strsxp(self, values, attrs=None):
        return self._vector(16, len(values), b"".join(self.char(v) for v in values), attrs)

    def intsxp(self, values, attrs=None):
        body = self.i32(*[-(2**31) if v is None else v for v in values]) if values else b""
        return self._vector(13, len(values), body, attrs)

    def lglsxp(self, values):
        return self._vector(
            10, len(values), self.i32(*[-(2**31) if v is None else int(v) for v in values]), None
        )

    def vecsxp(self, items, attrs=None, is_object=False):
        return self._vector(19, len(items), b"".join(items), attrs, is_object)

    def symbol(self, name):
        if name in self.symbols:
            return self.i32((self.symbols.index(name) + 1) << 8 | 255)
        self.symbols.append(name)
        return self.i32(1) + self.char(name)

    def attributes(self, attrs):
        nodes = b"".join(self.i32(0x402) + self.symbol(tag) + value for tag, value in attrs.items())
        return nodes + self.i32(254)

    def data_frame(self, columns):
        n = len(next(iter(columns.values())))
        cols = [self.strsxp(v) for v in columns.values()]
        attrs = {
            "names": self.strsxp(list(columns)),
            "class": self.strsxp(["data.frame"]),
            "row.names": self.intsxp([None, -n]),  # R's compact row names 1..n
        }
        return self.vecsxp(cols, attrs, is_object=True)


def character(values, **kw):
    w = RWriter(**kw)
    return w.serialize(w.strsxp(values))


def write_lazyload_db(prefix, objects, compressed=True, index_extra=None):
    """Write ``<prefix>.rdb``/``.rdx`` as ``tools:::makeLazyLoadDB`` does; ``objects`` maps each
    name to its serialization; ``index_extra`` maps a part of the index to a function
    ``writer -> bytes`` that replaces it. Returns the (offset, length) of each object."""
    rdb, keys = b"", {}
    for name, ser in objects.items():
        blob = struct.pack(">I", len(ser)) + zlib.compress(ser) if compressed else ser
        keys[name] = (len(rdb), len(blob))
        rdb += blob
    parts = {
        "variables": lambda w: w.vecsxp(
            [w.intsxp(list(k)) for k in keys.values()], {"names": w.strsxp(list(keys))}
        ),
        "references": lambda w: w.vecsxp([], {"names": w.strsxp([])}),
        "compressed": lambda w: w.intsxp([int(compressed)]),
    }
    parts.update(index_extra or {})
    w = RWriter()
    built = [build(w) for build in parts.values()]  # in stream order, for the symbol table
    index = w.vecsxp(built, {"names": w.strsxp(list(parts))})
    prefix.with_suffix(".rdb").write_bytes(rdb)
    prefix.with_suffix(".rdx").write_bytes(gzip.compress(w.serialize(index)))
    return keys


# ----------------------------------------------------------------------------- R's own bytes


@pytest.mark.parametrize("hexdata", [R_CHARACTER_V3, R_CHARACTER_V2], ids=["v3", "v2"])
def test_character_vector_written_by_r(hexdata):
    obj = unserialize(bytes.fromhex(hexdata))
    assert obj == RVector("character", ["a", None, "\u00a35", "\u00e9", ""])
    assert as_text_object(obj, "x") == ["a", None, "\u00a35", "\u00e9", ""]


def test_data_frame_written_by_r():
    obj = unserialize(bytes.fromhex(R_DATA_FRAME))
    assert obj.type == "list" and list(obj.attributes) == ["names", "class", "row.names"]
    assert obj.attributes["row.names"].values == [None, -2]
    assert as_text_object(obj, "df") == {"a": ["x", "y"], "b": ["\u00a3", None]}


def test_symbol_references_written_by_r():
    obj = unserialize(bytes.fromhex(R_NESTED_NAMES))
    assert obj.attribute_strings("names") == ["p", "q"]
    assert [v.values for v in obj.values] == [["x"], ["y"]]
    assert [v.attribute_strings("names") for v in obj.values] == [["a"], ["b"]]


def test_two_symbols_and_their_references_written_by_r():
    obj = unserialize(bytes.fromhex(R_TWO_SYMBOLS))
    assert obj.attribute_strings("names") == ["p", "q"]
    p, q = obj.values
    assert list(p.attributes) == ["class"] and p.attribute_strings("class") == ["k"]
    assert list(q.attributes) == ["names", "class"]
    assert q.attribute_strings("names") == ["a"] and q.attribute_strings("class") == ["k2"]
    with pytest.raises(ValueError, match="is an R k; only character vectors"):
        as_text_object(p, "p")


def test_logical_and_null_written_by_r():
    assert unserialize(bytes.fromhex(R_LOGICAL)) == RVector("logical", [True, None, False])
    assert unserialize(bytes.fromhex(R_CHARACTER_V3[:46] + "000000fe")) is None


def test_writer_reproduces_r_byte_for_byte():
    w = RWriter()
    latin1_e = w.char(None, RWriter.LATIN1, "\u00e9".encode("latin-1"))
    strings = [w.char("a"), w.char(None), w.char("\u00a35"), latin1_e, w.char("")]
    assert w.serialize(w._vector(16, 5, b"".join(strings), None)) == bytes.fromhex(R_CHARACTER_V3)
    w = RWriter()
    assert w.serialize(w.data_frame({"a": ["x", "y"], "b": ["\u00a3", None]})) == bytes.fromhex(
        R_DATA_FRAME
    )
    w = RWriter()
    inner = [
        w.strsxp(["x"], {"names": w.strsxp(["a"])}),
        w.strsxp(["y"], {"names": w.strsxp(["b"])}),
    ]
    assert w.serialize(w.vecsxp(inner, {"names": w.strsxp(["p", "q"])})) == bytes.fromhex(
        R_NESTED_NAMES
    )


def test_lazyload_db_written_by_r(tmp_path):
    (tmp_path / "db1.rdb").write_bytes(bytes.fromhex(R_DB1_RDB))
    (tmp_path / "db1.rdx").write_bytes(bytes.fromhex(R_DB1_RDX))
    db = LazyLoadDB(tmp_path / "db1")
    assert db.names == ("a",) and db.compressed
    assert db.read("a") == ["x", "y"]
    # The same database from our writer: the same bytes (the index up to its gzip wrapper).
    write_lazyload_db(tmp_path / "ours", {"a": character(["x", "y"])})
    assert (tmp_path / "ours.rdb").read_bytes() == bytes.fromhex(R_DB1_RDB)
    ours = gzip.decompress((tmp_path / "ours.rdx").read_bytes())
    assert ours == gzip.decompress(bytes.fromhex(R_DB1_RDX))
    assert LazyLoadDB(tmp_path / "ours.rdx").read("a") == ["x", "y"]


def test_xz_lazyload_db_is_refused(tmp_path):
    (tmp_path / "db3.rdb").write_bytes(bytes.fromhex(R_DB3_RDB))
    (tmp_path / "db3.rdx").write_bytes(bytes.fromhex(R_DB3_RDX))
    with pytest.raises(ValueError, match=r"db3.rdx: compressed = \[3\] is not supported"):
        LazyLoadDB(tmp_path / "db3")


@pytest.mark.parametrize(
    "hexdata, what",
    [(R_ALTREP_SEQ, "ALTREP object"), (R_DOUBLE, "double")],
    ids=["altrep", "double"],
)
def test_unsupported_types_written_by_r_are_refused(hexdata, what):
    with pytest.raises(ValueError, match=rf"<bytes>: at byte 23 .*R {what} \(SEXP type"):
        unserialize(bytes.fromhex(hexdata))


def test_factor_reads_but_is_not_text():
    obj = unserialize(bytes.fromhex(R_FACTOR))
    assert obj.type == "integer" and obj.attribute_strings("class") == ["factor"]
    with pytest.raises(ValueError, match="f: is an R factor; only character vectors"):
        as_text_object(obj, "f")


# ----------------------------------------------------------------------------- hand-built streams


def test_native_encoding_from_the_header():
    latin = "caf\u00e9".encode("latin-1")
    w = RWriter(native="ISO-8859-1")
    assert unserialize(w.serialize(w._vector(16, 1, w.char(None, 0, latin), None))).values == [
        "caf\u00e9"
    ]
    # Version 2 records no native encoding: unflagged strings are taken as UTF-8.
    w = RWriter(version=2)
    data = w.serialize(w._vector(16, 1, w.char(None, 0, "\u00e9".encode()), None))
    assert unserialize(data).values == ["\u00e9"]
    bad = w.serialize(w._vector(16, 1, w.char(None, 0, latin), None))
    with pytest.raises(ValueError, match="string is not valid utf-8"):
        unserialize(bad)


def test_long_vector_length_is_decoded_then_checked():
    w = RWriter()
    data = w.serialize(w.i32(16, -1, 1, 0))  # 2**32 elements announced, none present
    with pytest.raises(ValueError, match="vector length 4294967296 exceeds the 0 bytes left"):
        unserialize(data)


def test_every_truncation_is_an_error():
    data = bytes.fromhex(R_DATA_FRAME)
    for end in range(len(data)):
        with pytest.raises(ValueError):
            unserialize(data[:end])


def deep_list(depth):
    w = RWriter()
    item = w.strsxp(["x"])
    for _ in range(depth):
        item = w.vecsxp([item])
    return w.serialize(item)


def test_nesting_limit():
    assert unserialize(deep_list(rdata.MAX_DEPTH)).type == "list"
    with pytest.raises(ValueError, match="nested deeper than 64"):
        unserialize(deep_list(rdata.MAX_DEPTH + 1))


W = RWriter()
GOOD = character(["x"])


MALFORMED = [
    (b"A\n" + GOOD[2:], r"at byte 2 .*expected the XDR format marker b'X\\n', found b'A\\n'"),
    (b"X\n" + W.i32(4) + GOOD[6:], "serialization version must be 2 or 3, got 4"),
    (GOOD[:14] + W.i32(0), "native encoding name of length 0"),
    (GOOD[:14] + W.i32(5) + b"EBCDX" + GOOD[23:], "unknown native encoding 'EBCDX'"),
    (GOOD + b"\0", "1 unexpected bytes after the object"),
    (W.header() + W.i32(99), r"R unknown type 99 \(SEXP type 99\) is not supported"),
    (W.header() + W.i32(3), r"R closure \(SEXP type 3\) is not supported"),
    (W.header() + W.i32(16, -2), "negative vector length -2"),
    (W.header() + W.i32(16, 1, 13, 0), "expected a string .SEXP type 9., got SEXP type 13"),
    (W.header() + W.i32(16, 1, 9, -5), "negative string length -5"),
    (W.header() + W.i32(16, 1) + W.char(None, 2, b"x"), "marked as raw bytes"),
    (W.header() + W.i32(16, 1) + W.char(None, 64, b"\xff"), "string is not valid ascii"),
    (W.header() + W.i32(16, 1) + W.char(None, 8, b"\xc3("), "string is not valid utf-8"),
    (W.header() + W.i32(16, 1, 9 | 1 << 9, 0), "a string with attributes"),
    # Attributes: a tagged pairlist of (symbol, vector) nodes, nothing else.
    (W.header() + W.i32(16 | 1 << 9, 0, 254), "attributes must be a pairlist"),
    (W.header() + W.i32(16 | 1 << 9, 0, 2), "attributes must be a pairlist of tagged nodes"),
    (W.header() + W.i32(16 | 1 << 9, 0, 0x402, 2 << 8 | 255), "reference 2 to a symbol"),
    (W.header() + W.i32(16 | 1 << 9, 0, 0x402, 16), r"expected a symbol \(SEXP type 1\)"),
    (
        W.header() + W.i32(16 | 1 << 9, 0, 0x402, 1) + W.char(None) + W.i32(254),
        "a symbol's name must not be NA",
    ),
    (
        W.header() + W.i32(16 | 1 << 9, 0, 0x402, 1) + W.char("a") + W.i32(254, 254),
        "attribute 'a' is NULL or repeated",
    ),
]


@pytest.mark.parametrize("data, message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_streams_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        unserialize(data, "<bytes>")


def test_unserialize_wants_bytes():
    with pytest.raises(TypeError, match="data must be bytes, got str"):
        unserialize("X\n")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda w: w.intsxp([1]), "x: is an R integer; only character vectors"),
        (lambda w: w.vecsxp([w.strsxp(["a"])]), "x: is an R list"),
        (lambda w: w.strsxp(["a"], {"class": w.strsxp(["glue"])}), "x: is an R glue"),
        (lambda w: w.i32(254), "x: expected a character vector or a data frame, got R NULL"),
    ],
)
def test_non_text_objects_are_refused(build, message):
    w = RWriter()
    with pytest.raises(ValueError, match=message):
        as_text_object(unserialize(w.serialize(build(w))), "x")


def test_data_frame_checks():
    w = RWriter()
    frame = w.vecsxp(
        [w.strsxp(["a"]), w.intsxp([1])],
        {"names": w.strsxp(["s", "n"]), "class": w.strsxp(["data.frame"])},
        is_object=True,
    )
    with pytest.raises(ValueError, match="column 'n' is an R integer; only character columns"):
        as_text_object(unserialize(w.serialize(frame)), "x")
    w = RWriter()
    ragged = w.vecsxp(
        [w.strsxp(["a"]), w.strsxp(["b", "c"])],
        {"names": w.strsxp(["s", "t"]), "class": w.strsxp(["data.frame"])},
    )
    with pytest.raises(ValueError, match=r"columns of different lengths \[1, 2\]"):
        as_text_object(unserialize(w.serialize(ragged)), "x")
    w = RWriter()
    unnamed = w.vecsxp([w.strsxp(["a"])], {"class": w.strsxp(["data.frame"])})
    with pytest.raises(ValueError, match="without one name per column"):
        as_text_object(unserialize(w.serialize(unnamed)), "x")
    # A tibble (extra classes) of character columns is still a data frame.
    w = RWriter()
    tibble = w.vecsxp(
        [w.strsxp(["a", "b"])],
        {"names": w.strsxp(["text"]), "class": w.strsxp(["tbl_df", "tbl", "data.frame"])},
    )
    assert as_text_object(unserialize(w.serialize(tibble)), "x") == {"text": ["a", "b"]}


# ----------------------------------------------------------------------------- RDS and databases


def test_read_rds_plain_and_gzip(tmp_path):
    (tmp_path / "plain.rds").write_bytes(GOOD)
    (tmp_path / "gz.rds").write_bytes(gzip.compress(GOOD))
    assert read_rds(tmp_path / "plain.rds").values == ["x"]
    assert read_rds(tmp_path / "gz.rds").values == ["x"]
    (tmp_path / "bad.rds").write_bytes(gzip.compress(GOOD)[:-6])
    with pytest.raises(ValueError, match="bad.rds: corrupt gzip stream"):
        read_rds(tmp_path / "bad.rds")


def test_database_reads_objects_by_name(tmp_path):
    objects = {"one": character(["a", "b"]), "two": character(["\u00a3"])}
    for compressed in (True, False):
        write_lazyload_db(tmp_path / "db", objects, compressed=compressed)
        db = LazyLoadDB(tmp_path / "db.rdb")
        assert db.names == ("one", "two") and db.compressed is compressed
        assert db.read("two") == ["\u00a3"] and db.read("one") == ["a", "b"]
        assert db.read_serialization("one") == objects["one"]
        with pytest.raises(KeyError, match="'three' is not in .*db.rdb; it holds"):
            db.read("three")


def test_database_missing_file(tmp_path):
    write_lazyload_db(tmp_path / "db", {"a": GOOD})
    (tmp_path / "db.rdb").unlink()
    with pytest.raises(FileNotFoundError, match="db.rdb does not exist"):
        LazyLoadDB(tmp_path / "db")


def test_database_corrupt_objects(tmp_path):
    keys = write_lazyload_db(tmp_path / "db", {"a": GOOD, "b": GOOD})
    rdb = tmp_path / "db.rdb"
    good = rdb.read_bytes()
    offset_b = keys["b"][0]
    # The length header disagrees with the inflated stream, one way or the other.
    rdb.write_bytes(good[:offset_b] + struct.pack(">I", len(GOOD) + 1) + good[offset_b + 4 :])
    with pytest.raises(ValueError, match=r"object 'b': zlib stream is truncated \(\d+ of \d+"):
        LazyLoadDB(tmp_path / "db").read("b")
    rdb.write_bytes(good[:offset_b] + struct.pack(">I", len(GOOD) - 1) + good[offset_b + 4 :])
    with pytest.raises(ValueError, match=r"object 'b': zlib stream inflates to more than the"):
        LazyLoadDB(tmp_path / "db").read("b")
    # Garbage instead of the zlib stream.
    rdb.write_bytes(good[: offset_b + 4] + b"\x00" * (len(good) - offset_b - 4))
    with pytest.raises(ValueError, match="object 'b': corrupt zlib stream"):
        LazyLoadDB(tmp_path / "db").read("b")
    # A truncated .rdb: the index points past its end.
    rdb.write_bytes(good[:-1])
    with pytest.raises(ValueError, match="entry 'b' ends at byte"):
        LazyLoadDB(tmp_path / "db")


def test_database_entry_longer_than_its_zlib_stream(tmp_path):
    blob = struct.pack(">I", len(GOOD)) + zlib.compress(GOOD) + b"junk"
    variables = {
        "variables": lambda w: w.vecsxp([w.intsxp([0, len(blob)])], {"names": w.strsxp(["a"])})
    }
    write_lazyload_db(tmp_path / "db", {"a": GOOD}, index_extra=variables)
    (tmp_path / "db.rdb").write_bytes(blob)
    with pytest.raises(ValueError, match="object 'a': 4 bytes after the zlib stream"):
        LazyLoadDB(tmp_path / "db").read("a")


def test_database_malformed_index(tmp_path):
    cases = [
        ({"compressed": lambda w: w.intsxp([3])}, r"compressed = \[3\] is not supported"),
        ({"compressed": lambda w: w.intsxp([1, 1])}, r"compressed = \[1, 1\] is not supported"),
        ({"compressed": lambda w: w.strsxp(["yes"])}, r"compressed = \['yes'\] is not supported"),
        (
            {"references": lambda w: w.vecsxp([w.strsxp(["env"])])},
            "objects that share environments",
        ),
        (
            {"variables": lambda w: w.vecsxp([w.intsxp([0])], {"names": w.strsxp(["a"])})},
            "entry 'a' is not an .offset, length. pair",
        ),
        (
            {"variables": lambda w: w.vecsxp([w.intsxp([-1, 4])], {"names": w.strsxp(["a"])})},
            "entry 'a' is not an .offset, length. pair",
        ),
        ({"variables": lambda w: w.vecsxp([w.intsxp([0, 1])])}, "variables without one name"),
    ]
    for extra, message in cases:
        write_lazyload_db(tmp_path / "db", {"a": GOOD}, index_extra=extra)
        with pytest.raises(ValueError, match=message):
            LazyLoadDB(tmp_path / "db")
    (tmp_path / "db.rdx").write_bytes(gzip.compress(GOOD))
    with pytest.raises(ValueError, match="not a lazy-load index"):
        LazyLoadDB(tmp_path / "db")


# ----------------------------------------------------------------------------- the embedded text


def test_embedded_text_checksum():
    """Recomputed here with hashlib and gzip alone (no ternref code): the recorded SHA-256."""
    text = gzip.decompress(EMBEDDED_PATH.read_bytes())
    assert len(text) == EMBEDDED_BYTES == 684_768
    assert hashlib.sha256(text).hexdigest() == EMBEDDED_SHA256
    assert EMBEDDED_PATH.stat().st_size < 300_000
    assert text.startswith(b"PRIDE AND PREJUDICE\n\nBy Jane Austen\n")
    assert text.endswith(b"had been the means of uniting them.\n")
    assert text.count(b"\n") == 13_030  # the R character vector's length
