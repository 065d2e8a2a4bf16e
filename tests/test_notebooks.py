"""Every notebook is paired with a py:percent twin in notebooks/py/ and in sync, asks for the
course's kernel, is numbered, committed with its outputs, and listed in README; make lab's own
copy of the notebooks (helpers.workspace) leaves the checkout as git has it."""

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
    py = path.parent / "py" / f"{path.stem}.py"
    assert py.exists(), f"py/{py.name} missing: run `jupytext --sync {path.name}`"
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


def test_the_folder_of_notebooks_holds_only_notebooks_and_their_twins():
    """What a learner sees in notebooks/: one entry per notebook, and the folder of twins."""
    entries = {p.name for p in (ROOT / "notebooks").iterdir() if not p.name.startswith(".")}
    assert entries == {p.name for p in NOTEBOOKS} | {"py"}, entries - {p.name for p in NOTEBOOKS}
    twins = {p.name for p in (ROOT / "notebooks" / "py").iterdir() if not p.name.startswith(".")}
    assert twins == {f"{p.stem}.py" for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_pairing_and_kernel_in_the_metadata(path):
    meta = nbformat.read(path, as_version=4).metadata
    assert meta.get("jupytext", {}).get("formats") == "ipynb,py//py:percent", meta.get("jupytext")
    assert meta.kernelspec == {"display_name": "Python (interpretability course)", "language": "python",
                               "name": "interp-course"}, meta.kernelspec


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_execution_timestamps(path):
    """nbconvert's per-cell timings change at every run, and JupyterLab drops them on save."""
    nb = nbformat.read(path, as_version=4)
    assert not [i for i, c in enumerate(nb.cells) if "execution" in c.metadata]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_dead_widgets(path):
    """Without a kernel a saved widget is a dead panel; make execute strips them (notebook_tools)."""
    from helpers.notebook_tools import WIDGET_VIEW

    nb = nbformat.read(path, as_version=4)
    assert "widgets" not in nb.metadata
    assert not [i for i, c in enumerate(nb.cells) for o in c.get("outputs", []) if WIDGET_VIEW in o.get("data", {})]
