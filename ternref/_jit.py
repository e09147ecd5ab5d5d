"""The ``njit`` every ternref kernel uses, and where Numba's cache of compiled kernels lands.

Numba's ``cache=True`` writes compiled machine code (``*.nbi`` index and ``*.nbc`` data files)
next to the source, in ``__pycache__``, whenever that folder is writable. For a source checkout
that is what a developer wants. For an *installed* ternref it is not: the files land inside
``site-packages/ternref/``, pip does not know them, and uninstalling (or ``pip install -e`` over
a ``pip install .``) leaves ``site-packages/ternref/`` behind as a bare folder, which Python then
imports as an empty namespace package that shadows the real one.

So the rule is:

1. ``NUMBA_CACHE_DIR`` set by the user: Numba's own rule applies unchanged (everything goes
   there).
2. ternref imported from a source checkout (the folder above the package holds ternref's
   ``pyproject.toml``): Numba's default, ``__pycache__`` beside the source (git-ignored).
3. Otherwise (an installed package): the user's cache folder, ``$XDG_CACHE_HOME/ternref/numba``
   (``~/.cache/ternref/numba`` when ``XDG_CACHE_HOME`` is unset; ``~/Library/Caches`` on macOS,
   ``%LOCALAPPDATA%`` on Windows). Numba keys each entry by the full path of the source file and
   the file's content, so two installations never share or reuse each other's entries.

The location is chosen when a kernel is decorated (Numba fixes a function's cache locator then),
by setting ``numba.config.CACHE_DIR`` for the duration of the decoration only; nothing else in
the process is affected.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numba

PACKAGE_DIR = Path(__file__).resolve().parent


def is_source_checkout(package_dir: Path = PACKAGE_DIR) -> bool:
    """True if ``package_dir`` sits in a ternref source tree (its parent has our pyproject)."""
    pyproject = package_dir.parent / "pyproject.toml"
    try:
        return 'name = "ternref"' in pyproject.read_text(encoding="utf-8")
    except OSError:
        return False


def user_cache_root() -> Path:
    """The platform's per-user cache folder (XDG on Linux)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def kernel_cache_dir() -> Path | None:
    """Where ternref's kernels are cached, or ``None`` for "Numba's own rule" (cases 1 and 2)."""
    if numba.config.CACHE_DIR or is_source_checkout():
        return None
    return user_cache_root() / "ternref" / "numba"


@contextlib.contextmanager
def _cache_dir(path: Path | None):
    if path is None:
        yield
        return
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(path)
    try:
        yield
    finally:
        numba.config.CACHE_DIR = saved


def njit(*args, **options):
    """``numba.njit`` with ``cache=True`` by default and the cache location of this module.

    Use exactly as ``numba.njit``: ``@njit``, ``@njit(parallel=True)``, ``@njit(cache=False)``.
    """
    options.setdefault("cache", True)
    if args and callable(args[0]):  # bare @njit
        return njit(*args[1:], **options)(args[0])

    def decorate(fn):
        with _cache_dir(kernel_cache_dir() if options["cache"] else None):
            return numba.njit(*args, **options)(fn)

    return decorate
