"""Text for byte-level language models: a Jane Austen novel embedded, all six when installed.

Sources
-------
- *Pride and Prejudice* (Jane Austen, 1813; public domain) ships inside ternref as
  ``pride_and_prejudice.txt.gz`` (685 KB of text, 249 KB compressed), so the default runs with
  nothing installed. ``scripts/make_text.py`` took it from Debian's ``r-cran-janeaustenr``
  package; source, versions and licence are in ``TEXT_LICENSE.txt`` next to this file.
- All six novels (4.0 MB) when that Debian package is installed
  (``apt-get install r-cran-janeaustenr``; it puts the R package in
  ``/usr/lib/R/site-library/janeaustenr``), or when its folder is given as
  ``janeaustenr_dir`` (for example a ``.deb`` unpacked with ``dpkg-deb -x``, which needs no R).
  The novels are read from the R package's lazy-load database by ``ternref.data.rdata``.
- Any UTF-8 text file, by path.

A novel's text is its R character vector (one element per printed line, empty elements for
blank lines) joined with ``"\\n"`` and ending with ``"\\n"``, encoded as UTF-8: exactly what R's
``writeLines`` writes. ``"austen"`` is the six texts concatenated in publication order
(``NOVELS``).

Integrity: the embedded file must decompress to ``EMBEDDED_BYTES`` bytes whose SHA-256 is
``EMBEDDED_SHA256``; loading refuses anything else.

Tokens and splits
-----------------
Tokens are the text's UTF-8 bytes (vocabulary 256, no tokenizer to train or ship). The held-out
split is the **last ``valid_fraction`` (default 10 %) of the bytes** of whatever text was loaded,
the same rule for every source: with ``n`` bytes the cut is at ``n - round(valid_fraction * n)``
(Python's ``round``, halves to even), moved forward past any UTF-8 continuation bytes
(``0b10xxxxxx``) so that both splits decode as UTF-8. For the embedded novel the held-out split
is bytes 616,291 onwards (68,477 bytes: the end of chapter 55 and chapters 56 to 61); for
``"austen"`` it is the last 402,503 bytes, *Persuasion* from part-way through its chapter 5.
Training batches are windows lying wholly inside the training split, so no held-out byte is ever
an input or a target of training. Nothing is random here: the split depends only on the text and
``valid_fraction``.

References
----------
J. Austen, *Pride and Prejudice*, 1813 (Project Gutenberg eBook #1342). J. Silge, janeaustenr:
Jane Austen's Complete Novels, R package version 1.0.0, 2022, MIT licence,
https://github.com/juliasilge/janeaustenr; Debian package ``r-cran-janeaustenr`` 1.0.0-1.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ternref import _validate as check
from ternref.data.rdata import LazyLoadDB

#: The six novels in the janeaustenr package, in publication order: R object name -> title.
NOVELS = {
    "sensesensibility": "Sense and Sensibility",  # 1811
    "prideprejudice": "Pride and Prejudice",  # 1813
    "mansfieldpark": "Mansfield Park",  # 1814
    "emma": "Emma",  # 1815
    "northangerabbey": "Northanger Abbey",  # December 1817, with Persuasion (dated 1818)
    "persuasion": "Persuasion",  # December 1817 (dated 1818)
}
#: Name of the six novels together.
ALL_NOVELS = "austen"
#: Names ``load_text`` accepts.
TEXTS = (ALL_NOVELS, *NOVELS)

EMBEDDED_NOVEL = "prideprejudice"
EMBEDDED_PATH = Path(__file__).with_name("pride_and_prejudice.txt.gz")
EMBEDDED_BYTES = 684_768
EMBEDDED_SHA256 = "dfc684d4f857fa938268f9ab9c5567b64bd0691251eca959644adeabe6287a4d"

#: Where the R package is looked for, in order: Debian's ``r-cran-*`` packages, then the
#: library R's ``install.packages`` uses when run as root on Debian.
JANEAUSTENR_DIRS = (
    Path("/usr/lib/R/site-library/janeaustenr"),
    Path("/usr/local/lib/R/site-library/janeaustenr"),
)
#: The lazy-load database of the package's data, relative to the package folder.
JANEAUSTENR_DB = Path("data") / "Rdata"

VOCAB_SIZE = 256
DEFAULT_VALID_FRACTION = 0.1


# ----------------------------------------------------------------------------- reading text


def lines_to_text(lines: list, source: str) -> bytes:
    """UTF-8 bytes of an R character vector of lines, as ``writeLines`` writes them.

    Raises ``ValueError`` naming ``source`` if the vector is empty, a line is NA, or a line
    holds a newline itself (then the vector is not one of lines: reading the text back line by
    line would not give it).
    """
    if not lines:
        raise ValueError(f"{source}: the character vector is empty")
    for k, line in enumerate(lines):
        if not isinstance(line, str):
            raise ValueError(f"{source}: line {k + 1} is NA, not text")
        if "\n" in line:
            raise ValueError(f"{source}: line {k + 1} contains a newline")
    return ("\n".join(lines) + "\n").encode("utf-8")


def text_sha256(data: bytes) -> str:
    """SHA-256 (hex) of the text's UTF-8 bytes (not of the compressed file)."""
    return hashlib.sha256(data).hexdigest()


def read_embedded_text(path: str | os.PathLike = EMBEDDED_PATH) -> bytes:
    """The embedded novel's UTF-8 bytes, verified against ``EMBEDDED_SHA256``.

    Raises ``ValueError`` naming the file if it is not gzip, or its content has another length
    or SHA-256 than recorded.
    """
    try:
        data = gzip.decompress(Path(path).read_bytes())
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e})") from None
    digest = text_sha256(data)
    if len(data) != EMBEDDED_BYTES or digest != EMBEDDED_SHA256:
        raise ValueError(
            f"{path}: integrity check failed: {len(data)} bytes with SHA-256 {digest}, expected "
            f"{EMBEDDED_BYTES} bytes with SHA-256 {EMBEDDED_SHA256}; the file is corrupt or was "
            "modified (regenerate it with scripts/make_text.py)"
        )
    return data


def find_janeaustenr(directory: str | os.PathLike | None = None) -> Path | None:
    """The folder of the installed R package janeaustenr, or ``None`` if there is none.

    Parameters
    ----------
    directory : str or os.PathLike, optional
        Use this folder (it must hold ``data/Rdata.rdx`` and ``data/Rdata.rdb``); otherwise
        the first of ``JANEAUSTENR_DIRS`` that holds them.

    Raises
    ------
    FileNotFoundError
        If ``directory`` was given and does not hold the database.
    """
    if directory is not None:
        folder = Path(directory)
        db = folder / JANEAUSTENR_DB
        if not (db.with_suffix(".rdx").is_file() and db.with_suffix(".rdb").is_file()):
            raise FileNotFoundError(
                f"janeaustenr_dir={str(directory)!r} does not hold the R package janeaustenr: "
                f"expected {db}.rdx and {db}.rdb"
            )
        return folder
    for folder in JANEAUSTENR_DIRS:
        if (folder / JANEAUSTENR_DB).with_suffix(".rdx").is_file():
            return folder
    return None


def read_novel(name: str, janeaustenr_dir: str | os.PathLike | None = None) -> bytes:
    """One novel's UTF-8 bytes from the installed R package (``NOVELS`` names them).

    Raises
    ------
    FileNotFoundError
        If the package is not installed (and ``janeaustenr_dir`` is not given); the message
        says how to install it.
    ValueError
        If ``name`` is not a novel, or the database does not hold it as a character vector.
    """
    check.one_of(name, "name", tuple(NOVELS))
    folder = find_janeaustenr(janeaustenr_dir)
    if folder is None:
        raise FileNotFoundError(
            f"the novel {name!r} needs the R package janeaustenr, not found in "
            f"{', '.join(map(str, JANEAUSTENR_DIRS))}. Install Debian's r-cran-janeaustenr "
            "(apt-get install r-cran-janeaustenr), or unpack its .deb without R "
            "(apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb DIR) "
            "and pass janeaustenr_dir=DIR/usr/lib/R/site-library/janeaustenr. Only "
            f"{EMBEDDED_NOVEL!r} is embedded in ternref."
        )
    db = LazyLoadDB(folder / JANEAUSTENR_DB)
    lines = db.read(name)
    if isinstance(lines, dict):
        raise ValueError(f"{db.data_path} object {name!r} is a data frame, not a novel's lines")
    return lines_to_text(lines, f"{db.data_path} object {name!r}")


def read_text_file(path: str | os.PathLike) -> bytes:
    """A UTF-8 text file's bytes, unchanged (a byte-order mark, if any, stays).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is empty, or not valid UTF-8 (the message gives the first bad byte's
        offset).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist or is not a file")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"text file {str(path)!r} is empty")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"text file {str(path)!r} is not UTF-8: byte {e.start} ({data[e.start]:#04x}) "
            f"cannot be decoded ({e.reason}); convert it first, e.g. iconv -t UTF-8"
        ) from None
    return data


# ----------------------------------------------------------------------------- tokens, split


def encode(text: str) -> np.ndarray:
    """Byte tokens of ``text``: its UTF-8 bytes as a uint8 array."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {check.describe(text)}")
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def decode(tokens) -> str:
    """Text of byte tokens (integers in 0..255); invalid UTF-8 becomes U+FFFD, since a model's
    sampled bytes need not form valid characters."""
    arr = np.asarray(tokens)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"tokens must be a 1-D integer array, got {check.describe(tokens)}")
    if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
        raise ValueError(
            f"tokens must be bytes in 0..{VOCAB_SIZE - 1}, got values in {arr.min()}..{arr.max()}"
        )
    return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def split_point(data: bytes, valid_fraction: float) -> int:
    """Index of the first held-out byte (the rule in the module docstring)."""
    cut = len(data) - round(valid_fraction * len(data))
    while cut < len(data) and data[cut] & 0b1100_0000 == 0b1000_0000:
        cut += 1
    return cut


@dataclass(frozen=True, eq=False)
class TextCorpus:
    """A text as byte tokens, split into a training part and a held-out part.

    Attributes
    ----------
    name : str
        ``"prideprejudice"`` (the embedded novel), another name of ``TEXTS``, or the file name.
    tokens : ndarray, uint8, shape (N,)
        All the text's bytes (read-only).
    split : int
        ``tokens[:split]`` is the training split, ``tokens[split:]`` the held-out split.
    vocab_size : int
        256.
    """

    name: str
    tokens: np.ndarray
    split: int
    vocab_size: int = VOCAB_SIZE

    def __post_init__(self):
        _tokens(self.tokens)
        check.integer(self.split, "split", low=2, high=self.tokens.size - 2)

    @property
    def train(self) -> np.ndarray:
        """The training split's tokens (a read-only view)."""
        return self.tokens[: self.split]

    @property
    def valid(self) -> np.ndarray:
        """The held-out split's tokens (a read-only view)."""
        return self.tokens[self.split :]

    def sample_batch(
        self, batch_size: int, context: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """A random training batch: ``sample_batch`` on the training split."""
        return sample_batch(self.train, batch_size, context, rng)

    def heldout_batches(
        self, batch_size: int, context: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every held-out byte predicted once: ``sequential_batches`` over the held-out split,
        preceded by the last training byte so that the first held-out byte is a target too
        (that one training byte is an input only, never a target)."""
        return sequential_batches(self.tokens[self.split - 1 :], batch_size, context)

    def __repr__(self) -> str:
        return (
            f"TextCorpus({self.name!r}, bytes={self.tokens.size}, train={self.split}, "
            f"valid={self.tokens.size - self.split}, vocab_size={self.vocab_size})"
        )


def load_text(
    name: str | None = None,
    *,
    path: str | os.PathLike | None = None,
    janeaustenr_dir: str | os.PathLike | None = None,
    valid_fraction: float = DEFAULT_VALID_FRACTION,
) -> TextCorpus:
    """Load a text as byte tokens with its held-out split.

    Parameters
    ----------
    name : str, optional
        One of ``TEXTS``: a novel's R name (``"prideprejudice"``, ``"emma"``, ...) or
        ``"austen"`` for all six. ``"prideprejudice"`` is always the embedded copy; the others
        need the R package janeaustenr (see ``find_janeaustenr``). Default: the embedded novel.
    path : str or os.PathLike, optional
        Load this UTF-8 text file instead (then ``name`` must not be given).
    janeaustenr_dir : str or os.PathLike, optional
        Folder of the R package janeaustenr, if not in a standard place.
    valid_fraction : float, default 0.1
        Share of the text, at its end, held out from training; in (0, 1).

    Returns
    -------
    TextCorpus

    Raises
    ------
    ValueError
        Unknown name, both ``name`` and ``path``, an empty or non-UTF-8 file, a text too short
        to leave at least 2 bytes in each split, or ``valid_fraction`` outside (0, 1).
    FileNotFoundError
        A missing file, or a novel other than the embedded one without the R package.

    References
    ----------
    J. Silge, janeaustenr 1.0.0, 2022, https://github.com/juliasilge/janeaustenr.
    """
    valid_fraction = check.real_number(
        valid_fraction, "valid_fraction", low=0.0, high=1.0, low_open=True, high_open=True
    )
    if path is not None:
        if name is not None:
            raise ValueError(f"give name or path, not both (got name={name!r}, path={path!r})")
        data, label = read_text_file(path), Path(path).name
    else:
        label = EMBEDDED_NOVEL if name is None else check.one_of(name, "name", TEXTS)
        if label == EMBEDDED_NOVEL:
            data = read_embedded_text()
        elif label == ALL_NOVELS:
            data = b"".join(read_novel(novel, janeaustenr_dir) for novel in NOVELS)
        else:
            data = read_novel(label, janeaustenr_dir)
    cut = split_point(data, valid_fraction)
    if cut < 2 or len(data) - cut < 2:
        raise ValueError(
            f"text {label!r} of {len(data)} bytes is too short to split with "
            f"valid_fraction={valid_fraction}: it gives {cut} training and {len(data) - cut} "
            "held-out bytes, and each split needs at least 2 (one input, one target)"
        )
    tokens = np.frombuffer(data, dtype=np.uint8)  # read-only: bytes are immutable
    return TextCorpus(label, tokens, cut)


# ----------------------------------------------------------------------------- batches


def _tokens(tokens, name: str = "tokens") -> np.ndarray:
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1:
        raise TypeError(f"{name} must be a 1-D numpy array, got {check.describe(tokens)}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got dtype {tokens.dtype}")
    return tokens


def sample_batch(
    tokens: np.ndarray, batch_size: int, context: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` random windows of ``context + 1`` consecutive tokens, as (inputs, targets).

    Window ``b`` starts at ``s_b``, drawn by ``rng.integers(0, N - context, size=batch_size)``
    (every start whose window fits, uniformly, with replacement); then
    ``inputs[b] = tokens[s_b : s_b + context]`` and ``targets[b] = tokens[s_b + 1 : s_b +
    context + 1]``: the target at each position is the next token.

    Parameters
    ----------
    tokens : ndarray of int, shape (N,)
        The training tokens.
    batch_size : int
        Windows per batch, >= 1.
    context : int
        Tokens per input window, ``1 <= context < N``.
    rng : numpy.random.Generator
        Source of the start positions; the same seed gives the same batches.

    Returns
    -------
    inputs, targets : ndarray, int64, shape (batch_size, context)
    """
    tokens = _tokens(tokens)
    batch_size = check.integer(batch_size, "batch_size", low=1)
    context = check.integer(context, "context", low=1)
    rng = check.generator(rng)
    if context >= tokens.size:
        raise ValueError(
            f"context={context} is too long for a text of {tokens.size} tokens: a window "
            f"needs context + 1 = {context + 1} tokens"
        )
    starts = rng.integers(0, tokens.size - context, size=batch_size)
    windows = tokens[starts[:, None] + np.arange(context + 1)].astype(np.int64)
    return windows[:, :-1], windows[:, 1:]


def sequential_batches(
    tokens: np.ndarray, batch_size: int, context: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (inputs, targets) that predict ``tokens[1:]``, each exactly once, in order.

    With ``M = N - 1`` targets, window ``k`` (for ``k < M // context``) has inputs
    ``tokens[k*context : (k+1)*context]`` and targets shifted by one; consecutive windows do
    not overlap, so each starts with no context. Full windows are grouped ``batch_size`` at a
    time (the last group may be smaller). The ``r = M % context`` remaining targets, if any,
    come last as one batch of shape ``(1, r)``. Nothing is random.

    To average a loss over the text, weight each batch's mean by ``targets.size`` (batches
    differ in size); ``bits_per_byte`` then converts the mean.

    Parameters
    ----------
    tokens : ndarray of int, shape (N,), N >= 2
    batch_size : int
        Windows per batch, >= 1.
    context : int
        Tokens per window, >= 1. It may exceed ``N - 1``: then there is one short window.

    Yields
    ------
    inputs, targets : ndarray, int64, shape (B, T) with B <= batch_size, T <= context
    """
    # Validate eagerly (before the first next()) so mistakes surface at the call site.
    tokens = _tokens(tokens)
    batch_size = check.integer(batch_size, "batch_size", low=1)
    context = check.integer(context, "context", low=1)
    if tokens.size < 2:
        raise ValueError(
            f"tokens must hold at least 2 tokens (one input, one target), got {tokens.size}"
        )
    return _sequential(tokens.astype(np.int64), batch_size, context)


def _sequential(tokens: np.ndarray, batch_size: int, context: int):
    n_targets = tokens.size - 1
    n_full = n_targets // context
    full = tokens[: n_full * context + 1]
    for first in range(0, n_full, batch_size):
        last = min(first + batch_size, n_full)
        rows = np.arange(first, last)[:, None] * context + np.arange(context)
        yield full[rows], full[rows + 1]
    rest = n_targets - n_full * context
    if rest:
        tail = tokens[-(rest + 1) :]
        yield tail[None, :-1], tail[None, 1:]


def bits_per_byte(mean_nats: float) -> float:
    """Bits per byte from a mean cross-entropy in nats per byte token: ``mean_nats / ln 2``.

    Parameters
    ----------
    mean_nats : float
        Mean negative log-likelihood (natural log) per predicted byte, >= 0.

    Returns
    -------
    float
        8.0 is a uniform guess over 256 bytes; lower is better.
    """
    mean_nats = check.real_number(mean_nats, "mean_nats", low=0.0)
    return mean_nats / math.log(2)
