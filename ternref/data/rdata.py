"""Reader for the few R objects ternref needs: character vectors and data frames of them.

R packages with ``LazyData: true`` store their data sets in a *lazy-load database*: two files
with a common prefix, ``data/Rdata.rdx`` (the index) and ``data/Rdata.rdb`` (the objects). This
module reads such a database, and single XDR serializations, without R. It understands exactly
what a text corpus needs and refuses everything else with a ``ValueError`` naming the file:
numbers, factors, functions, environments, ALTREP objects and the bzip2/xz variants of the
database are not read, and nothing is ever half-loaded.

The lazy-load database
----------------------
::

    <prefix>.rdx   an RDS file (a serialization, gzip-compressed as saveRDS writes it) of a
                   named list with three elements:
                     variables    named list; element x is integer c(offset, length): object x
                                  is bytes [offset, offset + length) of the .rdb file
                     references   named list of environments the objects share (must be empty)
                     compressed   TRUE or 1 (zlib, R's default), FALSE or 0 (none);
                                  2 (bzip2) and 3 (xz) are refused
    <prefix>.rdb   the objects, one after another; each object's bytes are
                     if compressed: a 4-byte big-endian length of the serialization, then a
                                    zlib stream that inflates to exactly that many bytes
                     otherwise:     the serialization itself

A serialization (format ``X``: XDR, that is big-endian binary; R's default)
--------------------------------------------------------------------------
::

    "X\\n"                        format (ascii "A\\n" and native binary "B\\n" are refused)
    int32  version                2 or 3
    int32  R version that wrote it, int32 oldest R version that can read it
                                  (each 65536 * major + 256 * minor + patch)
    version 3 only: int32 n, then n bytes: the writer's native encoding, e.g. "UTF-8"
    one item (below), and nothing after it

    item   int32 flags = type          bits 0..7
                       | is-object     bit 8
                       | has-attributes bit 9
                       | has-tag       bit 10
                       | levels << 12  (for a string: its encoding, below)
           then, by type:
           NULL      254  nothing
           string      9  int32 n, then n bytes; n = -1 is NA_character_ (no bytes)
           logical    10  int32 n, then n int32 (0 FALSE, 1 TRUE, -2^31 NA)
           integer    13  int32 n, then n int32 (-2^31 is NA)
           character  16  int32 n, then n string items
           list       19  int32 n, then n items
           pairlist    2  [attributes item] [tag item] value item, then the rest of the list
                          (another pairlist node, or NULL); read here only as the attributes
                          of a vector: nodes with a symbol tag and a vector value
           symbol      1  a string item (its name); appended to the reference table; read
                          here only as a tag
           reference 255  index = flags >> 8 (if 0, an int32 follows), 1-based into the
                          table of symbols read so far
           vectors (logical, integer, character, list) are followed by their attributes
           (a pairlist whose tags are symbols) when has-attributes is set. A vector longer
           than 2^31 - 1 writes n = -1, then the upper and lower 32 bits of its length.

    string encoding (levels): 2 bytes (refused), 4 latin-1, 8 UTF-8, 64 ASCII; none of these
    means the writer's native encoding: the one in the version-3 header; a version-2 stream
    does not record it, and its unflagged strings are taken as UTF-8 (an invalid one is an
    error, never replaced).

Returned objects
----------------
``unserialize`` gives an ``RVector`` (R's type name, the values, the attributes by name):
character values are ``str`` or ``None`` for NA, integer and logical values are ``int``/``bool``
or ``None`` for NA, list values are items. ``LazyLoadDB.read`` goes one step further and accepts
only a character vector (returned as a list of ``str``/``None``) or a data frame whose columns
are all character vectors (returned as a dict, column name to list).

References
----------
R Core Team, "R Internals", sections "Serialization Formats" and "Lazy loading"
(https://cran.r-project.org/doc/manuals/r-release/R-ints.html); R's ``src/main/serialize.c``
(``ReadItem``, ``R_lazyLoadDBinsertValue``) and ``src/library/base/R/lazyload.R``. The layout
above was checked against files written by R 4.2 (``serialize``, ``saveRDS``,
``tools:::makeLazyLoadDB``); the tests hold a few such files as hex.
"""

from __future__ import annotations

import codecs
import gzip
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

#: SEXP type codes, as R writes them, to the names R's ``typeof`` prints (for messages).
R_TYPE_NAMES = {
    0: "NULL",
    1: "symbol",
    2: "pairlist",
    3: "closure",
    4: "environment",
    5: "promise",
    6: "language",
    7: "special",
    8: "builtin",
    9: "char",
    10: "logical",
    13: "integer",
    14: "double",
    15: "complex",
    16: "character",
    17: "...",
    19: "list",
    20: "expression",
    21: "bytecode",
    22: "externalptr",
    23: "weakref",
    24: "raw",
    25: "S4",
    238: "ALTREP object",
    241: "base environment",
    242: "empty environment",
    246: "class reference",
    247: "persistent reference",
    248: "package environment",
    249: "namespace",
    250: "base namespace",
    251: "missing argument",
    252: "unbound value",
    253: "global environment",
    254: "NULL",
    255: "reference",
}

SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, STRSXP, VECSXP = 1, 2, 9, 10, 13, 16, 19
NILVALUE_SXP, REFSXP = 254, 255

HAS_ATTR_BIT = 1 << 9
HAS_TAG_BIT = 1 << 10
BYTES_MASK, LATIN1_MASK, UTF8_MASK, ASCII_MASK = 1 << 1, 1 << 2, 1 << 3, 1 << 6

NA_INTEGER = -(2**31)
#: Nesting deeper than this is refused (a text corpus is a list of vectors at most).
MAX_DEPTH = 64


@dataclass
class RVector:
    """One R vector: ``type`` is R's ``typeof`` name ("character", "integer", "logical" or
    "list"), ``values`` its elements (``None`` for NA), ``attributes`` its attributes by name
    (each an ``RVector``), in the order R stored them."""

    type: str
    values: list
    attributes: dict[str, RVector] = field(default_factory=dict)

    def attribute_strings(self, name: str) -> list | None:
        """The attribute ``name`` if it is a character vector, else ``None``."""
        attr = self.attributes.get(name)
        return attr.values if attr is not None and attr.type == "character" else None


class _Stream:
    """Big-endian reads from a bytes object, with errors that say where and in what."""

    def __init__(self, data: bytes, source: str):
        self.data, self.source, self.pos = data, source, 0

    def fail(self, message: str) -> ValueError:
        return ValueError(f"{self.source}: at byte {self.pos} of the serialization: {message}")

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail(f"truncated: {n} bytes needed, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def int32s(self, n: int) -> tuple[int, ...]:
        return struct.unpack(f">{n}i", self.take(4 * n))


class _Unserializer:
    """``ReadItem`` of R's serialize.c, cut down to the types listed in the module docstring."""

    def __init__(self, data: bytes, source: str):
        self.stream = _Stream(data, source)
        self.symbols: list[str] = []  # the reference table; only symbols can enter it here
        self.native_codec = "utf-8"

    def read(self):
        s = self.stream
        fmt = s.take(2)
        if fmt != b"X\n":
            raise s.fail(
                f"expected the XDR format marker b'X\\n', found {fmt!r} (only R's default "
                "binary XDR serialization is read, not the ascii or native formats)"
            )
        version = s.int32()
        if version not in (2, 3):
            raise s.fail(f"serialization version must be 2 or 3, got {version}")
        s.int32s(2)  # writer's R version, oldest reader's R version: not needed
        if version == 3:
            n = s.int32()
            if not 0 < n <= 64:
                raise s.fail(f"native encoding name of length {n}")
            name = s.take(n).decode("ascii", errors="replace")
            try:
                self.native_codec = codecs.lookup(name).name
            except LookupError:
                raise s.fail(f"unknown native encoding {name!r} of the writer") from None
        item = self.item(depth=0)
        if s.pos != len(s.data):
            raise s.fail(f"{len(s.data) - s.pos} unexpected bytes after the object")
        return item

    def item(self, depth: int):
        """One object: NULL (``None``) or a vector with its attributes (``RVector``)."""
        s = self.stream
        if depth > MAX_DEPTH:
            raise s.fail(f"objects nested deeper than {MAX_DEPTH} levels")
        flags = s.int32()
        kind = flags & 0xFF
        if kind == NILVALUE_SXP:
            return None
        if kind not in (LGLSXP, INTSXP, STRSXP, VECSXP):
            s.pos -= 4
            name = R_TYPE_NAMES.get(kind, f"unknown type {kind}")
            raise s.fail(
                f"R {name} (SEXP type {kind}) is not supported: only character, integer, "
                "logical and list vectors, their attributes, and NULL are read"
            )
        vector = self.vector(kind, depth)
        if flags & HAS_ATTR_BIT:
            vector.attributes = self.attributes(depth)
        return vector

    def symbol(self) -> str:
        """A symbol (an attribute's tag): its name, read now or found in the reference table."""
        s = self.stream
        flags = s.int32()
        if flags & 0xFF == REFSXP:
            index = flags >> 8 or s.int32()
            if not 1 <= index <= len(self.symbols):
                raise s.fail(f"reference {index} to a symbol not yet read")
            return self.symbols[index - 1]
        if flags & 0xFF != SYMSXP:
            raise s.fail(f"expected a symbol (SEXP type 1), got SEXP type {flags & 0xFF}")
        name = self.string(s.int32())
        if name is None:
            raise s.fail("a symbol's name must not be NA")
        self.symbols.append(name)
        return name

    def length(self) -> int:
        s = self.stream
        n = s.int32()
        if n == -1:  # long vector: upper and lower 32 bits follow
            upper, lower = s.int32s(2)
            n = (upper << 32) + (lower & 0xFFFFFFFF)
        if n < 0:
            raise s.fail(f"negative vector length {n}")
        if 4 * n > len(s.data) - s.pos:  # every element takes at least 4 bytes
            raise s.fail(f"vector length {n} exceeds the {len(s.data) - s.pos} bytes left")
        return n

    def vector(self, kind: int, depth: int) -> RVector:
        n = self.length()
        if kind == STRSXP:
            return RVector("character", [self.string(self.stream.int32()) for _ in range(n)])
        if kind == VECSXP:
            return RVector("list", [self.item(depth + 1) for _ in range(n)])
        raw = self.stream.int32s(n)
        if kind == INTSXP:
            return RVector("integer", [None if v == NA_INTEGER else v for v in raw])
        return RVector("logical", [None if v == NA_INTEGER else bool(v) for v in raw])

    def string(self, flags: int) -> str | None:
        """A string (CHARSXP) whose flags were just read: ``None`` for NA."""
        s = self.stream
        if flags & 0xFF != CHARSXP:
            raise s.fail(f"expected a string (SEXP type 9), got SEXP type {flags & 0xFF}")
        if flags & HAS_ATTR_BIT:  # only old versions of R wrote these
            raise s.fail("a string with attributes (an old R serialization) is not supported")
        n = s.int32()
        if n == -1:
            return None
        if n < 0:
            raise s.fail(f"negative string length {n}")
        raw = s.take(n)
        levels = flags >> 12
        if levels & UTF8_MASK:
            codec = "utf-8"
        elif levels & LATIN1_MASK:
            codec = "latin-1"
        elif levels & BYTES_MASK:
            raise s.fail("a string marked as raw bytes (no encoding) cannot be decoded")
        elif levels & ASCII_MASK:
            codec = "ascii"
        else:
            codec = self.native_codec
        try:
            return raw.decode(codec)
        except UnicodeDecodeError as e:
            raise s.fail(f"string is not valid {codec}: {e}") from None

    def attributes(self, depth: int) -> dict[str, RVector]:
        """The attributes of a vector: a pairlist of (symbol tag, vector value) nodes, read
        node by node (R writes each node's tag and value, then the rest of the list)."""
        s = self.stream
        attrs = {}
        while True:
            flags = s.int32()
            if flags & 0xFF == NILVALUE_SXP and attrs:
                return attrs
            if flags & 0xFF != LISTSXP or not flags & HAS_TAG_BIT or flags & HAS_ATTR_BIT:
                raise s.fail(f"attributes must be a pairlist of tagged nodes, got flags {flags:#x}")
            tag = self.symbol()
            value = self.item(depth + 1)
            if value is None or tag in attrs:
                raise s.fail(f"attribute {tag!r} is NULL or repeated")
            attrs[tag] = value


def unserialize(data: bytes, source: str = "<bytes>"):
    """Read one R object from its XDR serialization (the bytes ``serialize(x, NULL)`` gives).

    Parameters
    ----------
    data : bytes
        The serialization, uncompressed, starting with ``b"X\\n"``.
    source : str
        Where the bytes came from, for error messages.

    Returns
    -------
    RVector or None
        ``None`` for R's ``NULL``.

    Raises
    ------
    ValueError
        On any type outside the supported set, a truncated or over-long stream, or a string
        invalid in its encoding. The message names ``source`` and the byte offset.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    return _Unserializer(bytes(data), source).read()


def read_rds(path: str | os.PathLike):
    """Read an RDS file (what ``saveRDS`` writes: a serialization, gzip-compressed or not).

    Returns the object as ``unserialize`` does. bzip2 and xz RDS files are refused.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip stream: {e}") from None
    return unserialize(raw, str(path))


def as_text_object(obj, name: str) -> list | dict[str, list]:
    """Check that ``obj`` is a character vector or a data frame of character columns.

    Returns the vector's values (``str``, or ``None`` for NA) as a list, or the data frame as a
    dict from column name to such a list; raises ``ValueError`` naming ``name`` otherwise.
    """
    if not isinstance(obj, RVector):
        raise ValueError(f"{name}: expected a character vector or a data frame, got R NULL")
    classes = obj.attribute_strings("class") or []
    if obj.type == "character" and not classes:
        return obj.values
    if obj.type == "list" and "data.frame" in classes:
        columns = obj.attribute_strings("names")
        if columns is None or len(columns) != len(obj.values) or None in columns:
            raise ValueError(f"{name}: data frame without one name per column")
        frame = {}
        for column, values in zip(columns, obj.values):
            col_classes = values.attribute_strings("class") if isinstance(values, RVector) else None
            if not isinstance(values, RVector) or values.type != "character" or col_classes:
                kind = "NULL" if values is None else (col_classes or [values.type])[0]
                raise ValueError(
                    f"{name}: column {column!r} is an R {kind}; only character columns are read"
                )
            frame[column] = values.values
        lengths = {len(v) for v in frame.values()}
        if len(lengths) > 1:
            raise ValueError(f"{name}: data frame columns of different lengths {sorted(lengths)}")
        return frame
    kind = classes[0] if classes else obj.type
    raise ValueError(
        f"{name}: is an R {kind}; only character vectors and data frames of character "
        "columns are read"
    )


class LazyLoadDB:
    """An R lazy-load database: ``<prefix>.rdx`` (index) and ``<prefix>.rdb`` (objects).

    Parameters
    ----------
    prefix : str or os.PathLike
        The common path without extension, e.g.
        ``/usr/lib/R/site-library/janeaustenr/data/Rdata``. A path ending in ``.rdx`` or
        ``.rdb`` is accepted too.

    Attributes
    ----------
    names : tuple of str
        The objects stored, in the index's order.

    Raises
    ------
    FileNotFoundError
        If either file is missing.
    ValueError
        If the index is malformed, uses bzip2/xz compression, or points outside the ``.rdb``.

    Examples
    --------
    >>> db = LazyLoadDB("/usr/lib/R/site-library/janeaustenr/data/Rdata")  # doctest: +SKIP
    >>> lines = db.read("persuasion")  # doctest: +SKIP
    """

    def __init__(self, prefix: str | os.PathLike):
        prefix = Path(prefix)
        if prefix.suffix in (".rdx", ".rdb"):
            prefix = prefix.with_suffix("")
        self.index_path = prefix.with_name(prefix.name + ".rdx")
        self.data_path = prefix.with_name(prefix.name + ".rdb")
        for p in (self.index_path, self.data_path):
            if not p.is_file():
                raise FileNotFoundError(f"R lazy-load database file {p} does not exist")
        self._entries, self.compressed = self._read_index()
        self.names = tuple(self._entries)

    def _read_index(self) -> tuple[dict[str, tuple[int, int]], bool]:
        where = str(self.index_path)
        index = read_rds(self.index_path)
        parts = {}
        if isinstance(index, RVector) and index.type == "list":
            parts = dict(zip(index.attribute_strings("names") or [], index.values))
        variables, references = parts.get("variables"), parts.get("references")
        compressed = parts.get("compressed")
        if not all(isinstance(p, RVector) for p in (variables, references, compressed)):
            raise ValueError(
                f"{where}: not a lazy-load index (a list of variables, references, compressed)"
            )
        if references.values:
            raise ValueError(f"{where}: objects that share environments are not supported")
        flag = compressed.values[0] if len(compressed.values) == 1 else None
        if compressed.type not in ("logical", "integer") or flag not in (0, 1):
            raise ValueError(
                f"{where}: compressed = {compressed.values} is not supported (only TRUE or 1, "
                "zlib, R's default, and FALSE or 0, none; 2 is bzip2, 3 is xz)"
            )
        names = variables.attribute_strings("names") or []
        if len(names) != len(variables.values):
            raise ValueError(f"{where}: variables without one name each")
        size = self.data_path.stat().st_size
        entries = {}
        for name, key in zip(names, variables.values):
            ok = isinstance(key, RVector) and key.type == "integer" and len(key.values) == 2
            offset, length = key.values if ok else (None, None)
            if not ok or None in (offset, length) or offset < 0 or length < 0:
                raise ValueError(f"{where}: entry {name!r} is not an (offset, length) pair")
            if offset + length > size:
                raise ValueError(
                    f"{where}: entry {name!r} ends at byte {offset + length}, past the end "
                    f"of {self.data_path} ({size} bytes)"
                )
            entries[name] = (offset, length)
        return entries, bool(flag)

    def read_serialization(self, name: str) -> bytes:
        """The uncompressed serialization of object ``name`` (see the module docstring)."""
        if name not in self._entries:
            raise KeyError(f"{name!r} is not in {self.data_path}; it holds {list(self.names)}")
        offset, length = self._entries[name]
        with open(self.data_path, "rb") as f:
            f.seek(offset)
            blob = f.read(length)
        where = f"{self.data_path} object {name!r}"
        if not self.compressed:
            return blob
        if length < 4:
            raise ValueError(f"{where}: {length} bytes, too short for a compressed object")
        expected = struct.unpack(">I", blob[:4])[0]
        try:
            inflater = zlib.decompressobj()
            data = inflater.decompress(blob[4:], expected + 1)
        except zlib.error as e:
            raise ValueError(f"{where}: corrupt zlib stream: {e}") from None
        if len(data) > expected:
            raise ValueError(
                f"{where}: zlib stream inflates to more than the {expected} bytes "
                "its header announces"
            )
        if not inflater.eof or len(data) != expected:
            raise ValueError(f"{where}: zlib stream is truncated ({len(data)} of {expected} bytes)")
        if inflater.unused_data:
            raise ValueError(f"{where}: {len(inflater.unused_data)} bytes after the zlib stream")
        return data

    def read_object(self, name: str):
        """Object ``name`` as ``unserialize`` returns it."""
        return unserialize(self.read_serialization(name), f"{self.data_path} object {name!r}")

    def read(self, name: str) -> list | dict[str, list]:
        """Object ``name``, which must be a character vector or a data frame of character
        columns (see ``as_text_object``)."""
        return as_text_object(self.read_object(name), f"{self.data_path} object {name!r}")
