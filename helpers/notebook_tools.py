"""Tools for the committed notebooks.

``strip_widget_state(path)`` removes what only a running kernel can use from an executed notebook:
the saved widget state (``metadata.widgets``) and each output's widget view
(``application/vnd.jupyter.widget-view+json``). Without a kernel a widget is dead: GitHub and a
notebook opened before it runs show its text form (``VBox(children=(...``), and nbconvert's HTML
draws from the saved state a panel whose controls change nothing. What is left is the output's other
forms: for the explorer (``helpers.viz.Explorer``) a picture of its first view and a line saying
that it needs a running kernel. Run live, the same cell shows the working widget.

    python -m helpers.notebook_tools notebooks/04_cam_gradcam.ipynb ...   # after executing them
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def strip_widget_state(path) -> bool:
    """Remove the saved widget state and the widget views from the notebook at ``path``, in place.
    Returns whether anything was removed (the file is rewritten only then)."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    changed = nb.metadata.pop("widgets", None) is not None
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                del data[WIDGET_VIEW]
                changed = True
    if changed:
        nbformat.write(nb, path)
    return changed


def main(argv=None) -> None:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        raise SystemExit("usage: python -m helpers.notebook_tools NOTEBOOK.ipynb ...")
    for path in paths:
        if strip_widget_state(path):
            print(f"{path}: widget state removed")


if __name__ == "__main__":
    main()
