"""Build ``ternref/data/pride_and_prejudice.txt.gz`` from Debian's ``r-cran-janeaustenr``.

Build-time tool only; it needs the Debian package's files, never R. Either install the package
(``apt-get install r-cran-janeaustenr``, which also installs R) or unpack it without R:

    cd /tmp && apt-get download r-cran-janeaustenr
    dpkg-deb -x r-cran-janeaustenr_*.deb /tmp/jane
    python scripts/make_text.py --root /tmp/jane          # writes the file, prints its SHA-256
    python scripts/make_text.py --root /tmp/jane --check  # rebuilds in memory and compares

``--root`` is the file-system root the package was unpacked into (``/`` when installed). The
novel is read from ``<root>/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb`` by
``ternref.data.rdata``, turned into text by ``ternref.data.text.lines_to_text`` (the same code
the loader uses for the other five novels), and gzip-compressed (level 9, no time stamp, so the
file is the same on every run). The printed SHA-256 (of the text, not of the ``.gz``) must equal
``EMBEDDED_SHA256`` in ``ternref/data/text.py``; paste it there if the text ever changes, and
update ``TEXT_LICENSE.txt`` with the package versions printed.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from pathlib import Path

from ternref.data.rdata import LazyLoadDB
from ternref.data.text import (
    EMBEDDED_BYTES,
    EMBEDDED_NOVEL,
    EMBEDDED_PATH,
    EMBEDDED_SHA256,
    JANEAUSTENR_DB,
    JANEAUSTENR_DIRS,
    lines_to_text,
    text_sha256,
)

DEBIAN_PACKAGE = "r-cran-janeaustenr"


def package_versions(root: Path) -> tuple[str, str]:
    """(upstream version from the R package's DESCRIPTION, Debian version from its changelog)."""
    description = (root / JANEAUSTENR_DIRS[0].relative_to("/") / "DESCRIPTION").read_text()
    upstream = re.search(r"^Version:\s*(\S+)", description, re.MULTILINE)
    changelog = root / "usr/share/doc" / DEBIAN_PACKAGE / "changelog.Debian.gz"
    debian = None
    if changelog.is_file():
        first = gzip.decompress(changelog.read_bytes()).decode().splitlines()[0]
        debian = re.match(rf"{DEBIAN_PACKAGE} \(([^)]+)\)", first)
    return (
        upstream.group(1) if upstream else "unknown",
        debian.group(1) if debian else "unknown",
    )


def build_text(root: Path) -> bytes:
    db = LazyLoadDB(root / JANEAUSTENR_DIRS[0].relative_to("/") / JANEAUSTENR_DB)
    lines = db.read(EMBEDDED_NOVEL)
    if not isinstance(lines, list):
        sys.exit(f"{db.data_path}: {EMBEDDED_NOVEL!r} is not a character vector")
    text = lines_to_text(lines, f"{db.data_path} object {EMBEDDED_NOVEL!r}")
    # Pride and Prejudice in janeaustenr 1.0.0 is plain ASCII and opens with its title.
    if not text.startswith(b"PRIDE AND PREJUDICE\n"):
        sys.exit(f"{db.data_path}: {EMBEDDED_NOVEL!r} does not start with its title")
    print(f"{db.data_path}: {EMBEDDED_NOVEL!r}, {len(lines)} lines, {len(text)} bytes")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/"), help="where the .deb was unpacked")
    parser.add_argument("--out", type=Path, default=EMBEDDED_PATH)
    parser.add_argument("--check", action="store_true", help="compare with the existing file")
    args = parser.parse_args()
    upstream, debian = package_versions(args.root)
    print(f"janeaustenr {upstream}, Debian package {DEBIAN_PACKAGE} {debian}")
    text = build_text(args.root)
    digest = text_sha256(text)
    if args.check:
        stored = gzip.decompress(args.out.read_bytes())
        same = stored == text
        print(f"{args.out}: {'identical' if same else 'DIFFERENT'}; sha256 {digest}")
        sys.exit(0 if same and digest == EMBEDDED_SHA256 and len(text) == EMBEDDED_BYTES else 1)
    args.out.write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(f"sha256 of the text: {digest} ({len(text)} bytes)")
    if digest != EMBEDDED_SHA256 or len(text) != EMBEDDED_BYTES:
        print("NOTE: update EMBEDDED_SHA256 and EMBEDDED_BYTES in ternref/data/text.py")


if __name__ == "__main__":
    main()
