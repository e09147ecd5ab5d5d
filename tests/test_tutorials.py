"""The tutorials: committed notebooks match their sources, and every notebook runs from scratch.

The execution tests use the same code path as ``python scripts/build_tutorials.py --check``
(a fresh kernel on this interpreter, working directory ``tutorials/``), one test per notebook so
``pytest -n 2`` spreads them over workers. They need the ``tutorials`` extra (matplotlib,
nbformat, nbclient, ipykernel) and are skipped without it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "tutorials" / "src").glob("[0-9][0-9]_*.py"))


def _build_module():
    spec = importlib.util.spec_from_file_location(
        "build_tutorials", ROOT / "scripts" / "build_tutorials.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _build_module()


def test_sources_exist_and_are_numbered_uniquely():
    assert SOURCES, "no tutorial sources in tutorials/src"
    numbers = [s.name[:2] for s in SOURCES]
    assert len(numbers) == len(set(numbers)), numbers


def test_parse_percent_splits_cells_and_strips_markdown_comments():
    text = "# %% [markdown]\n# # Title\n#\n# text $x$\n\n# %%\nx = 1\n\nprint(x)\n\n# %%\n\n"
    assert build.parse_percent(text) == [
        ("markdown", "# Title\n\ntext $x$"),
        ("code", "x = 1\n\nprint(x)"),
    ]


def test_readme_lists_every_notebook():
    readme = (ROOT / "tutorials" / "README.md").read_text(encoding="utf-8")
    missing = [s.stem for s in SOURCES if f"({s.stem}.ipynb)" not in readme]
    assert not missing, f"tutorials/README.md does not link {missing}"


@pytest.mark.parametrize(
    "text",
    [
        "x = 1\n# %%\n",  # code before the first marker would be lost
        "# %% [raw]\nx\n",  # unknown marker
        "# %% [markdown]\nnot a comment\n",  # markdown line without '# '
    ],
)
def test_parse_percent_refuses_what_it_would_lose(text):
    with pytest.raises(ValueError):
        build.parse_percent(text)


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_committed_notebook_is_built_from_its_source(source):
    """The .ipynb exists, was executed, and its cells equal the source (never stale)."""
    nbformat = pytest.importorskip("nbformat")
    path = build.notebook_path(source)
    assert path.exists(), f"{path.name} is missing: run python scripts/build_tutorials.py"
    nb = nbformat.read(path, as_version=4)
    expected = build.parse_percent(source.read_text(encoding="utf-8"))
    got = [(c.cell_type, c.source) for c in nb.cells]
    assert got == expected, (
        f"{path.name} is stale: rebuild it with python scripts/build_tutorials.py {source.name[:2]}"
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{path.name} was not executed"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} was committed with an error output"


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_notebook_executes_from_scratch(source):
    for module in ("nbformat", "nbclient", "ipykernel", "matplotlib"):
        pytest.importorskip(module)
    nb = build.execute(source)  # raises CellExecutionError on any failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
