"""Every notebook is paired with a py:percent file in sync, is numbered, and is listed in README."""

from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_paired_py_file_in_sync(path):
    py = path.with_suffix(".py")
    assert py.exists(), f"{py.name} missing: run `jupytext --sync {path.name}`"
    from_ipynb = [(c.cell_type, c.source.strip()) for c in jupytext.read(path).cells]
    from_py = [(c.cell_type, c.source.strip()) for c in jupytext.read(py).cells]
    assert from_ipynb == from_py, f"{path.name} and {py.name} differ: run `jupytext --sync {path.name}`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_with_outputs_in_order(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in code]
    assert all(counts), f"{path.name} has unexecuted cells: execute it top to bottom and save"
    assert counts == list(range(1, len(code) + 1)), f"{path.name} was not run top to bottom from a fresh kernel"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_listed_in_readme(path):
    assert path.name in (ROOT / "README.md").read_text()
