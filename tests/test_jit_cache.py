"""Where Numba caches ternref's compiled kernels (ternref._jit).

An installed ternref must never write into its own package folder: pip does not record those
files, so uninstalling leaves ``site-packages/ternref/`` behind as a bare folder that shadows a
later editable install (issue 16, part 1). These tests install a copy of the package into a
folder with no pyproject beside it, as pip does, and compile one kernel in a fresh interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ternref
from ternref import _jit

PACKAGE = Path(ternref.__file__).resolve().parent

# Compiles one small serial kernel (MaxPool 2x2) with cache=True and runs it.
SCRIPT = """
import numpy as np
import ternref, ternref._jit as j
from ternref.nn import _kernels
x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
y, _ = _kernels.maxpool2d_forward(x, (2, 2), (2, 2))
assert y.shape == (2, 3, 2, 2) and y[0, 0, 0, 0] == 5.0
print(ternref.__file__)
print(j.kernel_cache_dir())
"""


def _installed_copy(tmp_path: Path) -> Path:
    site = tmp_path / "site-packages"
    shutil.copytree(PACKAGE, site / "ternref", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def _run(site: Path, env_extra: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}
    env.pop("NUMBA_DISABLE_JIT", None)
    env.update(PYTHONPATH=str(site), **env_extra)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=site.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")


def _numba_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc"))


def test_the_checkout_is_recognised_as_a_source_tree():
    assert _jit.is_source_checkout(PACKAGE)


@pytest.mark.slow
def test_installed_package_caches_in_the_user_cache_folder(tmp_path):
    site = _installed_copy(tmp_path)
    assert not _jit.is_source_checkout(site / "ternref")
    cache = tmp_path / "xdg-cache"
    file_, reported = _run(site, {"XDG_CACHE_HOME": str(cache)})[:2]
    assert Path(file_).resolve().is_relative_to(site)  # the copy was imported, not the checkout
    assert reported == str(cache / "ternref" / "numba")
    assert _numba_files(site) == [], "an installed ternref wrote Numba files into its package"
    written = _numba_files(cache / "ternref" / "numba")
    assert any(p.suffix == ".nbi" for p in written) and any(p.suffix == ".nbc" for p in written)
    # A second interpreter finds the cache and writes nothing new into the package either.
    _run(site, {"XDG_CACHE_HOME": str(cache)})
    assert _numba_files(site) == []


@pytest.mark.slow
def test_a_users_numba_cache_dir_is_honoured(tmp_path):
    site = _installed_copy(tmp_path)
    mine = tmp_path / "my-numba-cache"
    cache = tmp_path / "xdg-cache"
    reported = _run(site, {"NUMBA_CACHE_DIR": str(mine), "XDG_CACHE_HOME": str(cache)})[1]
    assert reported == "None"  # ternref leaves the choice to Numba
    assert _numba_files(mine), "nothing was cached in NUMBA_CACHE_DIR"
    assert _numba_files(site) == [] and not cache.exists()
