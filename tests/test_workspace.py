"""make lab's own copy of the notebooks (helpers.workspace): made once, never overwritten, reset
one notebook at a time, and running and saving a copy leaves the checkout as git has it."""

import io
import json
import os
import shutil
import subprocess

import nbformat
import pytest

from helpers import workspace

ROOT = workspace.ROOT
COURSE = sorted(workspace.COURSE.glob("[0-9][0-9]_*.ipynb"))


def _git_status():
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def course(tmp_path):
    """A course folder of three small notebooks (so the test may change one)."""
    folder = tmp_path / "course"
    folder.mkdir()
    for k in range(3):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"x = {k}")])
        nb.metadata["jupytext"] = {"formats": "ipynb,py//py:percent"}
        nb.metadata["kernelspec"] = {"name": "interp-course", "display_name": "Python (interpretability course)",
                                     "language": "python"}
        nbformat.write(nb, str(folder / f"0{k}_n{k}.ipynb"))
    return folder


def test_copies_are_made_once_without_pairing_and_never_overwritten(course, tmp_path):
    mine = tmp_path / "mine"
    out = io.StringIO()
    assert len(workspace.update(course, mine, out)) == 3
    copy = json.loads((mine / "01_n1.ipynb").read_text())
    assert "jupytext" not in copy["metadata"] and copy["metadata"]["kernelspec"]["name"] == "interp-course"
    assert "".join(copy["cells"][0]["source"]) == "x = 1"
    (mine / "01_n1.ipynb").write_text((mine / "01_n1.ipynb").read_text().replace("x = 1", "x = 'my answer'"))
    out = io.StringIO()
    assert workspace.update(course, mine, out) == [] and out.getvalue() == ""  # nothing new, nothing changed
    assert "my answer" in (mine / "01_n1.ipynb").read_text()
    # the course changes notebook 01 and adds 03: 03 is copied, 01 is left alone and reported
    nb = nbformat.read(str(course / "01_n1.ipynb"), as_version=4)
    nb.cells[0].source = "x = 'updated'"
    nbformat.write(nb, str(course / "01_n1.ipynb"))
    shutil.copy(course / "00_n0.ipynb", course / "03_n3.ipynb")
    out = io.StringIO()
    assert workspace.update(course, mine, out) == [mine / "03_n3.ipynb"]
    assert "01_n1.ipynb: the course has a newer version" in out.getvalue() and "make reset NB=01" in out.getvalue()
    assert "my answer" in (mine / "01_n1.ipynb").read_text()


def test_reset_keeps_the_learners_copy_and_takes_the_course_version(course, tmp_path):
    mine = tmp_path / "mine"
    workspace.update(course, mine, io.StringIO())
    (mine / "02_n2.ipynb").write_text((mine / "02_n2.ipynb").read_text().replace("x = 2", "x = 'mine'"))
    workspace.reset("2", course, mine, io.StringIO())
    assert "x = 2" in (mine / "02_n2.ipynb").read_text()
    (kept,) = (mine / workspace.OLD).iterdir()
    assert kept.name.startswith("02_n2.") and "x = 'mine'" in kept.read_text()
    for bad in ("7", "notebooks", ""):
        with pytest.raises(SystemExit, match="NB="):
            workspace.reset(bad, course, mine, io.StringIO())


def test_lab_settings_turn_the_news_off(tmp_path):
    path = workspace.install_lab_settings(tmp_path)
    assert json.loads(path.read_text())["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"
    assert path == tmp_path / "share" / "jupyter" / "lab" / "settings" / "overrides.json"


def test_running_and_saving_a_copy_leaves_the_checkout_clean():
    """A learner's copy of notebook 00 is run (its first cells, in a real kernel) and saved the
    way JupyterLab saves it, through jupytext's contents manager: only that .ipynb is written,
    in a folder git ignores. The control: the committed notebook, saved the same way beside it,
    does write a .py twin, so the check could have failed."""
    from jupytext import TextFileContentsManager
    from nbclient import NotebookClient

    before = _git_status()
    folder = workspace.MINE / f"pytest-{os.getpid()}"
    try:
        workspace.update(workspace.COURSE, folder, io.StringIO())
        path = folder / COURSE[0].name
        nb = nbformat.read(str(path), as_version=4)
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        nb.cells = nb.cells[:code[1] + 1]  # the imports and the first cell that uses them
        NotebookClient(nb, kernel_name="python3", timeout=300,
                       resources={"metadata": {"path": str(folder)}}).execute()
        manager = TextFileContentsManager(root_dir=str(ROOT))
        manager.save({"type": "notebook", "content": nb}, str(path.relative_to(ROOT)))
        shown = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))  # JupyterLab hides dotfiles
        assert shown == sorted(p.name for p in COURSE)
        assert _git_status() == before
        control = nbformat.read(str(COURSE[0]), as_version=4)
        manager.save({"type": "notebook", "content": control}, str((folder / "control.ipynb").relative_to(ROOT)))
        assert (folder / "py" / "control.py").exists()
        assert _git_status() == before
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if workspace.MINE.exists() and not any(workspace.MINE.iterdir()):
            workspace.MINE.rmdir()
