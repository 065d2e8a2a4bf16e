"""helpers.notebook_tools: an executed notebook keeps, for viewers without a kernel, the explorer's
picture and not a dead widget."""

import base64

import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

from helpers.notebook_tools import WIDGET_VIEW, main, strip_widget_state

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


def _executed_notebook():
    nb = new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    nb.cells = [
        new_code_cell("explorer('Grad-CAM')", execution_count=1, outputs=[new_output(
            "execute_result", execution_count=1,
            data={WIDGET_VIEW: {"model_id": "abc", "version_major": 2, "version_minor": 0},
                  "image/png": PNG, "text/plain": "Explorer (Grad-CAM). A snapshot ..."},
            metadata={"image/png": {"alt": "the explorer"}})]),
        new_code_cell("print(1)", execution_count=2, outputs=[new_output("stream", name="stdout", text="1\n")]),
    ]
    return nb


def test_strip_widget_state_keeps_the_picture_and_the_line(tmp_path):
    path = tmp_path / "nb.ipynb"
    nbformat.write(_executed_notebook(), path)
    assert strip_widget_state(path)
    nb = nbformat.read(path, as_version=4)
    assert "widgets" not in nb.metadata
    out = nb.cells[0].outputs[0]
    assert set(out.data) == {"image/png", "text/plain"} and out.data["image/png"] == PNG
    assert out.metadata == {"image/png": {"alt": "the explorer"}}
    assert nb.cells[1].outputs[0].text == "1\n"
    nbformat.validate(nb)
    before = path.read_bytes()
    assert not strip_widget_state(path) and path.read_bytes() == before  # nothing left to strip: untouched


def test_strip_from_the_command_line(tmp_path, capsys):
    path = tmp_path / "nb.ipynb"
    nbformat.write(_executed_notebook(), path)
    main([str(path)])
    assert "widget state removed" in capsys.readouterr().out
    assert "widgets" not in nbformat.read(path, as_version=4).metadata


def test_an_executed_explorer_is_a_picture_in_static_html(tmp_path):
    """Run the explorer in a kernel as `make execute` does, strip, convert to HTML as a website would."""
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = new_notebook(cells=[new_code_cell(
        "import torch\n"
        "from helpers.models import DermNet\n"
        "from helpers.viz import explorer\n"
        "torch.manual_seed(0)\n"
        "explorer('saliency', models={'shortcut': DermNet().eval(), 'debiased': DermNet().eval()})")])
    NotebookClient(nb, kernel_name="python3", timeout=300).execute()
    out = nb.cells[0].outputs[-1]
    assert {WIDGET_VIEW, "image/png", "text/plain"} <= set(out.data)  # live: the widget comes first
    assert "widgets" in nb.metadata  # nbclient saved the widget state, as make execute does
    path = tmp_path / "explorer.ipynb"
    nbformat.write(nb, path)
    assert strip_widget_state(path)
    stripped = nbformat.read(path, as_version=4)
    html, _ = HTMLExporter().from_notebook_node(stripped)
    assert "application/vnd.jupyter.widget" not in html and "VBox(" not in html
    assert f'src="data:image/png;base64,{out.data["image/png"]}"' in html  # the picture, its note drawn in
    # the picture's description, for the templates that read it (nbconvert's classic one)
    html, _ = HTMLExporter(template_name="classic").from_notebook_node(stripped)
    assert 'alt="The explorer: nv image, clinic B: predicted' in html
