"""Text data (ternref.data.text): sources, the held-out split, batches, bits per byte, and
every bad input. Tests that need Debian's r-cran-janeaustenr skip without it; a small fake
janeaustenr folder built here covers the same code paths everywhere."""

import gzip
import math

import numpy as np
import pytest

from ternref.data import TEXTS, TextCorpus, bits_per_byte, load_text, sample_batch
from ternref.data import sequential_batches as seq
from ternref.data import text as text_module
from ternref.data.text import (
    EMBEDDED_BYTES,
    EMBEDDED_PATH,
    NOVELS,
    decode,
    encode,
    find_janeaustenr,
    lines_to_text,
    read_embedded_text,
    read_novel,
    split_point,
)

from .test_text_rdata import RWriter, character, write_lazyload_db

INSTALLED = find_janeaustenr()
needs_debian_package = pytest.mark.skipif(
    INSTALLED is None,
    reason="Debian package r-cran-janeaustenr not installed "
    "(apt-get install --no-install-recommends r-cran-janeaustenr)",
)

#: Lines and bytes of each novel in janeaustenr 1.0.0 (Debian 1.0.0-1), as R reports them:
#: length(x) and sum(nchar(x, type = "bytes")) + length(x).
NOVEL_SIZES = {
    "sensesensibility": (12_624, 673_688),
    "prideprejudice": (13_030, 684_768),
    "mansfieldpark": (15_349, 883_280),
    "emma": (16_235, 883_028),
    "northangerabbey": (7_856, 433_411),
    "persuasion": (8_328, 466_854),
}

TINY_NOVELS = {name: [title.upper(), "", f"The text of {title}."] for name, title in NOVELS.items()}


@pytest.fixture
def fake_janeaustenr(tmp_path):
    """A folder laid out like the R package, holding six tiny 'novels' (and a data frame)."""
    data = tmp_path / "janeaustenr" / "data"
    data.mkdir(parents=True)
    objects = {name: character(lines) for name, lines in TINY_NOVELS.items()}
    w = RWriter()
    objects["frame"] = w.serialize(w.data_frame({"text": ["a"]}))
    write_lazyload_db(data / "Rdata", objects)
    return tmp_path / "janeaustenr"


@pytest.fixture
def no_system_janeaustenr(monkeypatch, tmp_path):
    monkeypatch.setattr(text_module, "JANEAUSTENR_DIRS", (tmp_path / "nowhere",))


# ----------------------------------------------------------------------------- the embedded novel


def test_default_is_the_embedded_novel_split_at_90_percent():
    corpus = load_text()
    assert isinstance(corpus, TextCorpus) and corpus.name == "prideprejudice"
    assert corpus.vocab_size == 256 and corpus.tokens.dtype == np.uint8
    assert corpus.tokens.size == EMBEDDED_BYTES
    assert corpus.split == 616_291 == EMBEDDED_BYTES - round(0.1 * EMBEDDED_BYTES)
    assert corpus.train.size == 616_291 and corpus.valid.size == 68_477
    assert not corpus.tokens.flags.writeable
    assert corpus.tokens.tobytes() == gzip.decompress(EMBEDDED_PATH.read_bytes())
    assert decode(corpus.train).startswith("PRIDE AND PREJUDICE\n")
    assert "Chapter 56" in decode(corpus.valid) and "Chapter 56" not in decode(corpus.train)
    r = repr(corpus)
    assert "prideprejudice" in r and "616291" in r and "68477" in r


def test_prideprejudice_by_name_is_the_embedded_copy(no_system_janeaustenr):
    assert load_text("prideprejudice").tokens.tobytes() == load_text().tokens.tobytes()


def test_split_is_a_deterministic_partition():
    a, b = load_text(), load_text()
    assert np.array_equal(a.tokens, b.tokens) and a.split == b.split
    joined = np.concatenate([a.train, a.valid])
    assert np.array_equal(joined, a.tokens)  # disjoint and complete: [0, split) and [split, N)
    other = load_text(valid_fraction=0.25)
    assert other.split == EMBEDDED_BYTES - round(0.25 * EMBEDDED_BYTES)


def test_modified_embedded_file_is_refused(tmp_path):
    text = bytearray(gzip.decompress(EMBEDDED_PATH.read_bytes()))
    text[1000] ^= 1
    (tmp_path / "changed.gz").write_bytes(gzip.compress(bytes(text)))
    with pytest.raises(ValueError, match="changed.gz: integrity check failed: 684768 bytes"):
        read_embedded_text(tmp_path / "changed.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(bytes(text[:-1])))
    with pytest.raises(ValueError, match="short.gz: integrity check failed: 684767 bytes"):
        read_embedded_text(tmp_path / "short.gz")
    (tmp_path / "plain.gz").write_bytes(bytes(text))
    with pytest.raises(ValueError, match="plain.gz: not a valid gzip file"):
        read_embedded_text(tmp_path / "plain.gz")


def test_package_data_includes_the_text():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    from fnmatch import fnmatch
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["ternref"]
    for name in ("pride_and_prejudice.txt.gz", "TEXT_LICENSE.txt"):
        assert (EMBEDDED_PATH.parent / name).is_file()
        assert any(fnmatch(f"data/{name}", p) for p in patterns), name


# ----------------------------------------------------------------------------- the six novels


@needs_debian_package
def test_all_six_novels_load_from_the_debian_package():
    for name, (n_lines, n_bytes) in NOVEL_SIZES.items():
        corpus = load_text(name)
        assert corpus.name == name and corpus.tokens.size == n_bytes
        assert corpus.tokens.tobytes().count(b"\n") == n_lines
    assert "\u00a320,000" in decode(load_text("mansfieldpark").tokens)  # the one UTF-8 line
    everything = load_text("austen")
    assert everything.tokens.size == sum(b for _, b in NOVEL_SIZES.values()) == 4_025_029
    assert everything.tokens.tobytes() == b"".join(read_novel(n) for n in NOVELS)
    assert everything.valid.size == 402_503
    # The held-out part lies inside Persuasion, the last novel.
    assert everything.valid.tobytes() in read_novel("persuasion")


@needs_debian_package
def test_debian_copy_of_the_embedded_novel_is_identical():
    assert read_novel("prideprejudice") == read_embedded_text()


def test_novels_from_an_explicit_folder(fake_janeaustenr):
    emma = load_text("emma", janeaustenr_dir=fake_janeaustenr)
    assert emma.tokens.tobytes() == b"EMMA\n\nThe text of Emma.\n"
    everything = load_text("austen", janeaustenr_dir=fake_janeaustenr)
    expected = b"".join(lines_to_text(TINY_NOVELS[n], "x") for n in NOVELS)
    assert everything.tokens.tobytes() == expected
    assert expected.startswith(b"SENSE AND SENSIBILITY\n")  # publication order
    assert expected.endswith(b"The text of Persuasion.\n")


def test_novel_without_the_package_says_how_to_install_it(no_system_janeaustenr):
    assert find_janeaustenr() is None
    for name in ("emma", "austen"):
        with pytest.raises(FileNotFoundError, match="apt-get install r-cran-janeaustenr"):
            load_text(name)


def test_explicit_folder_must_hold_the_database(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not hold the R package janeaustenr"):
        load_text("emma", janeaustenr_dir=tmp_path)


def test_novel_must_be_a_character_vector(fake_janeaustenr, monkeypatch):
    monkeypatch.setitem(text_module.NOVELS, "frame", "A data frame")
    with pytest.raises(ValueError, match="object 'frame' is a data frame, not a novel's lines"):
        read_novel("frame", fake_janeaustenr)


def test_lines_to_text_refuses_what_writelines_would_not_round_trip():
    assert lines_to_text(["a", "", "b"], "x") == b"a\n\nb\n"
    with pytest.raises(ValueError, match="x: line 2 is NA"):
        lines_to_text(["a", None], "x")
    with pytest.raises(ValueError, match="x: line 1 contains a newline"):
        lines_to_text(["a\nb"], "x")
    with pytest.raises(ValueError, match="x: the character vector is empty"):
        lines_to_text([], "x")


# ----------------------------------------------------------------------------- a user's file


def test_user_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("caf\u00e9 " * 30, encoding="utf-8")
    corpus = load_text(path=path)
    assert corpus.name == "notes.txt" and corpus.tokens.tobytes() == path.read_bytes()
    assert decode(corpus.train) + decode(corpus.valid) == "caf\u00e9 " * 30


def test_split_never_cuts_a_character():
    data = ("a" * 17 + "\u00e9" + "b").encode()  # 20 bytes; é at bytes 17-18
    assert split_point(data, 0.1) == 19  # naive cut 18 falls on the continuation byte a9
    assert split_point(data, 0.15) == 17  # naive cut 17 is é's first byte: kept
    data = "\u20ac\u20ac\u20ac\u20ac".encode()  # four 3-byte characters
    for fraction in np.linspace(0.05, 0.95, 19):
        cut = split_point(data, fraction)
        assert cut % 3 == 0  # on a character boundary, so both splits decode


@pytest.mark.parametrize(
    "content, error, message",
    [
        (b"", ValueError, "is empty"),
        (b"caf\xe9 au lait", ValueError, r"is not UTF-8: byte 3 \(0xe9\) cannot be decoded"),
        (b"\xc3", ValueError, "is not UTF-8: byte 0"),
        (b"ab", ValueError, "of 2 bytes is too short to split .* 2 training and 0 held-out"),
    ],
    ids=["empty", "latin-1", "truncated-utf8", "too-short"],
)
def test_bad_user_files(tmp_path, content, error, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(error, match=message):
        load_text(path=path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist or is not a file"):
        load_text(path=tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="does not exist or is not a file"):
        load_text(path=tmp_path)


def test_bad_arguments(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello world")
    with pytest.raises(ValueError, match="give name or path, not both"):
        load_text("emma", path=path)
    with pytest.raises(ValueError, match=r"name must be one of \[.*'austen'.*\], got 'hamlet'"):
        load_text("hamlet")
    assert set(TEXTS) == {"austen", *NOVELS}
    for fraction in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="valid_fraction must be"):
            load_text(valid_fraction=fraction)
    with pytest.raises(TypeError, match="valid_fraction must be a real number"):
        load_text(valid_fraction="0.1")


# ----------------------------------------------------------------------------- tokens


def test_encode_decode():
    assert encode("\u00a320").tolist() == [0xC2, 0xA3, 0x32, 0x30]
    assert decode(encode("\u00a320,000 a year")) == "\u00a320,000 a year"
    assert decode(np.array([0x61, 0xC2], dtype=np.int64)) == "a\ufffd"  # broken UTF-8 shown
    with pytest.raises(ValueError, match=r"bytes in 0..255, got values in 0..256"):
        decode(np.array([0, 256]))
    with pytest.raises(TypeError, match="1-D integer array"):
        decode(np.array([0.5]))
    with pytest.raises(TypeError, match="text must be a str"):
        encode(b"bytes")


# ----------------------------------------------------------------------------- batches


def test_sample_batch_windows_and_shift():
    tokens = np.arange(1000, dtype=np.int32)  # token value == its position
    x, y = sample_batch(tokens, 8, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int64
    assert np.array_equal(y, x + 1)  # targets are the inputs shifted by one position
    assert np.array_equal(x, x[:, :1] + np.arange(16))  # consecutive tokens
    assert x.min() >= 0 and y.max() <= 999


def test_sample_batch_is_reproducible_and_reaches_every_start():
    tokens = np.arange(20, dtype=np.uint8)
    a = sample_batch(tokens, 500, 4, np.random.default_rng(7))
    b = sample_batch(tokens, 500, 4, np.random.default_rng(7))
    c = sample_batch(tokens, 500, 4, np.random.default_rng(8))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    # Starts 0 .. N - context - 1 = 15 all occur, nothing beyond.
    assert sorted(set(a[0][:, 0].tolist())) == list(range(16))


def test_corpus_checks_its_fields():
    with pytest.raises(ValueError, match="split must be <= 8, got 9"):
        TextCorpus("x", np.arange(10, dtype=np.uint8), split=9)
    with pytest.raises(ValueError, match="split must be >= 2, got 1"):
        TextCorpus("x", np.arange(10, dtype=np.uint8), split=1)
    with pytest.raises(TypeError, match="tokens must be a 1-D numpy array"):
        TextCorpus("x", b"0123456789", split=5)


def test_training_batches_never_touch_the_held_out_split():
    corpus = TextCorpus("positions", np.arange(200, dtype=np.uint8), split=150)
    x, y = corpus.sample_batch(2000, 10, np.random.default_rng(1))
    assert y.max() == 149 and x.min() == 0
    real = load_text()
    x, y = real.sample_batch(4, 32, np.random.default_rng(0))
    train = real.train.tobytes()
    for row_x, row_y in zip(x, y):
        window = bytes(row_x.astype(np.uint8)) + bytes([row_y[-1]])
        assert window in train


@pytest.mark.parametrize("n, batch, context", [(2, 1, 1), (11, 3, 5), (100, 4, 7), (9, 2, 50)])
def test_sequential_batches_predict_every_token_once(n, batch, context):
    tokens = np.arange(n, dtype=np.int64)
    pairs = list(seq(tokens, batch, context))
    targets = np.concatenate([y.ravel() for _, y in pairs])
    assert np.array_equal(targets, tokens[1:])  # each target once, in order
    for x, y in pairs:
        assert x.shape == y.shape and x.shape[0] <= batch and x.shape[1] <= min(context, n - 1)
        assert np.array_equal(y, x + 1)
    assert all(np.array_equal(p[1], q[1]) for p, q in zip(pairs, seq(tokens, batch, context)))
    # Only the final batch may be short in either dimension.
    assert all(x.shape == (batch, context) for x, _ in pairs[: -2 if len(pairs) > 1 else 0])


def test_heldout_batches_cover_the_held_out_split_exactly():
    corpus = load_text()
    pairs = list(corpus.heldout_batches(16, 128))
    targets = np.concatenate([y.ravel() for _, y in pairs])
    assert np.array_equal(targets, corpus.valid)  # every held-out byte predicted once
    assert pairs[0][0][0, 0] == corpus.train[-1]  # context only, never a target
    # A uniform guess over 256 bytes, averaged as sequential_batches documents, is 8 bits.
    nats = sum(math.log(256) * y.size for _, y in pairs) / sum(y.size for _, y in pairs)
    assert bits_per_byte(nats) == pytest.approx(8.0, abs=1e-12)


BAD_BATCH_ARGS = [
    (dict(batch_size=0), ValueError, "batch_size must be >= 1, got 0"),
    (dict(batch_size=-2), ValueError, "batch_size must be >= 1, got -2"),
    (dict(batch_size=2.0), TypeError, "batch_size must be an integer"),
    (dict(context=0), ValueError, "context must be >= 1, got 0"),
    (dict(context=True), TypeError, "context must be an integer"),
    (dict(tokens=[1, 2, 3]), TypeError, "tokens must be a 1-D numpy array, got list"),
    (dict(tokens=np.zeros((2, 5), np.uint8)), TypeError, "1-D numpy array, got ndarray"),
    (dict(tokens=np.zeros(10)), TypeError, "tokens must have an integer dtype, got dtype float64"),
]


@pytest.mark.parametrize("change, error, message", BAD_BATCH_ARGS)
def test_bad_batch_arguments(change, error, message):
    args = dict(tokens=np.arange(10, dtype=np.uint8), batch_size=2, context=3) | change
    with pytest.raises(error, match=message):
        sample_batch(rng=np.random.default_rng(0), **args)
    with pytest.raises(error, match=message):
        seq(**args)  # raised at the call, before iteration starts


def test_context_longer_than_the_text():
    tokens = np.arange(10, dtype=np.uint8)
    with pytest.raises(ValueError, match="context=10 is too long for a text of 10 tokens"):
        sample_batch(tokens, 2, 10, np.random.default_rng(0))
    assert sample_batch(tokens, 2, 9, np.random.default_rng(0))[0].shape == (2, 9)
    corpus = load_text()
    with pytest.raises(ValueError, match="context=700000 is too long for a text of 616291"):
        corpus.sample_batch(1, 700_000, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        seq(tokens[:1], 1, 1)


def test_sample_batch_needs_a_generator():
    tokens = np.arange(10, dtype=np.uint8)
    for rng in (None, 0, np.random.RandomState(0)):
        with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
            sample_batch(tokens, 2, 3, rng)


# ----------------------------------------------------------------------------- bits per byte


def test_bits_per_byte():
    assert bits_per_byte(math.log(2)) == pytest.approx(1.0, abs=1e-15)
    assert bits_per_byte(0) == 0.0
    assert bits_per_byte(np.float32(math.log(256))) == pytest.approx(8.0, rel=1e-7)
    with pytest.raises(ValueError, match="mean_nats must be >= 0"):
        bits_per_byte(-0.1)
    with pytest.raises(ValueError, match="mean_nats must be finite"):
        bits_per_byte(float("nan"))
    with pytest.raises(TypeError, match="mean_nats must be a real number"):
        bits_per_byte(np.array([1.0, 2.0]))
