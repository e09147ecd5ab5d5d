"""Build the tutorial notebooks from their percent-format sources, executed, with outputs.

Each tutorial is written as a plain Python file ``tutorials/src/NN_name.py`` in the "percent"
format (readable diffs, lintable, runnable as a script)::

    # %% [markdown]
    # # A title
    # Some prose; every number in it is printed by a code cell.

    # %%
    import numpy as np
    print(f"{np.pi:.3f}")

This script turns each source into ``tutorials/NN_name.ipynb`` with :mod:`nbformat`, executes it
from a clean kernel with :mod:`nbclient` (working directory ``tutorials/``), and writes the
notebook *with* its outputs, so a code-hosting site shows the figures and numbers.

Usage::

    python scripts/build_tutorials.py              # rebuild every notebook
    python scripts/build_tutorials.py 01 06        # only the ones whose name starts with 01 / 06
    python scripts/build_tutorials.py --check      # execute every notebook, write nothing

Needs the ``tutorials`` (or ``dev``) extra: ``pip install -e ".[dev]"``. No Jupyter set-up is
needed: the kernel is the interpreter running this script (a throw-away kernelspec pointing at
``sys.executable`` is written to a temporary directory), so it works in a fresh virtual
environment without ``python -m ipykernel install`` and ignores any ``python3`` kernel a user may
have registered for another interpreter. Figures are rendered by the inline backend
(``matplotlib_inline``, which draws with Agg) and embedded as PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
SOURCES = TUTORIALS / "src"

#: Seconds one cell may run before the build fails (CI budget is 3 minutes per notebook).
CELL_TIMEOUT = 300

_MARKER = re.compile(r"^# %%(?P<rest>.*)$")
_KERNEL_NAME = "python3"


# ----------------------------------------------------------------------------- parsing
def parse_percent(text: str) -> list[tuple[str, str]]:
    """Split a percent-format source into ``[(cell_type, source), ...]``.

    ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell whose lines are comments
    (``# text`` -> ``text``, ``#`` -> empty line). Blank lines around a cell are dropped.
    Anything before the first marker is refused, so nothing in a source is silently lost.
    """
    cells: list[tuple[str, list[str]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        m = _MARKER.match(line)
        if m:
            rest = m.group("rest").strip()
            if rest not in ("", "[markdown]"):
                raise ValueError(f"line {number}: unknown cell marker {line!r}")
            cells.append(("markdown" if rest else "code", []))
            continue
        if not cells:
            if line.strip():
                raise ValueError(f"line {number}: text before the first '# %%' marker")
            continue
        kind, lines = cells[-1]
        if kind == "markdown":
            if line.startswith("# "):
                line = line[2:]
            elif line.strip() == "#":
                line = ""
            elif line.strip():
                raise ValueError(f"line {number}: markdown lines must start with '# ': {line!r}")
        lines.append(line)
    out = []
    for kind, lines in cells:
        source = "\n".join(lines).strip("\n")
        if source.strip():
            out.append((kind, source))
    return out


def to_notebook(cells: list[tuple[str, str]]):
    """An unexecuted ``nbformat`` v4 notebook with deterministic cell ids."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": _KERNEL_NAME,
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for index, (kind, source) in enumerate(cells):
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(source)
        else:
            cell = nbformat.v4.new_code_cell(source)
        cell["id"] = f"cell-{index:02d}"  # stable ids keep diffs small
        nb.cells.append(cell)
    return nb


def sources() -> list[Path]:
    """Every tutorial source, in order."""
    return sorted(SOURCES.glob("[0-9][0-9]_*.py"))


def notebook_path(source: Path) -> Path:
    return TUTORIALS / (source.stem + ".ipynb")


# ----------------------------------------------------------------------------- executing
def _kernel_manager(workdir: str):
    """A kernel manager whose ``python3`` kernel runs ``sys.executable``."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = Path(workdir) / "kernels" / _KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3",
        "language": "python",
        "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)], ensure_native_kernel=False)
    # IPC sockets (Unix) keep the kernel traffic off the network; TCP elsewhere.
    transport = "ipc" if os.name == "posix" else "tcp"
    km = KernelManager(kernel_name=_KERNEL_NAME, kernel_spec_manager=ksm, transport=transport)
    if transport == "ipc":
        km.ip = str(Path(workdir) / "kernel")
    return km


def execute(source: Path, timeout: int = CELL_TIMEOUT):
    """Build the notebook of ``source`` and execute it in a fresh kernel.

    Returns the executed notebook; raises ``nbclient.exceptions.CellExecutionError`` (with the
    cell's traceback) if any cell fails.
    """
    from nbclient import NotebookClient

    nb = to_notebook(parse_percent(Path(source).read_text(encoding="utf-8")))
    with tempfile.TemporaryDirectory(prefix="ternref-kernel-") as workdir:
        km = _kernel_manager(workdir)
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            record_timing=False,
            resources={"metadata": {"path": str(TUTORIALS)}},
        )
        try:
            client.execute()
        finally:
            # nbclient leaves a kernel it did not create running: stop it here.
            if client.kc is not None:
                client.kc.stop_channels()
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    return nb


def write(nb, path: Path) -> int:
    """Write ``nb`` to ``path``; returns the size in bytes."""
    import nbformat

    nbformat.validate(nb)
    text = nbformat.writes(nb) + "\n"
    path.write_text(text, encoding="utf-8")
    return len(text.encode("utf-8"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="build only tutorials whose name starts so")
    parser.add_argument("--check", action="store_true", help="execute, but write nothing")
    args = parser.parse_args(argv)

    chosen = [s for s in sources() if not args.only or any(s.stem.startswith(p) for p in args.only)]
    if not chosen:
        print(f"no tutorial source matches {args.only} in {SOURCES}", file=sys.stderr)
        return 2
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet debugger warning
    failed = []
    for source in chosen:
        start = time.perf_counter()
        try:
            nb = execute(source)
        except Exception as exc:  # report every notebook, then fail
            failed.append(source.name)
            print(f"FAILED {source.name}: {type(exc).__name__}\n{exc}", file=sys.stderr)
            continue
        seconds = time.perf_counter() - start
        if args.check:
            print(f"ok     {source.name}  ({seconds:.1f} s)")
        else:
            size = write(nb, notebook_path(source))
            print(f"wrote  {notebook_path(source).name}  ({seconds:.1f} s, {size / 1024:.0f} KB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
