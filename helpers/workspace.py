"""Your own copy of the notebooks: what ``make lab`` opens, so running the course never changes
the committed files.

    python -m helpers.workspace            # make or update my_notebooks/ (make lab runs this)
    python -m helpers.workspace --reset 04 # take the course's current notebook 04 (make reset NB=04)

``notebooks/`` holds the course as committed: each notebook with its outputs, and its jupytext
twin in ``notebooks/py/`` for readable diffs. ``my_notebooks/`` (ignored by git) holds a copy of
each notebook, made the first time and never overwritten: run it, save it, write your answers in
it. The copies carry no jupytext pairing, so saving one writes only that ``.ipynb``.

When the course changes (``git pull``), a notebook you have not copied yet is copied on the next
``make lab``; one you have is left alone, and ``make lab`` says that a newer version exists.
``make reset NB=04`` moves your copy to ``my_notebooks/.old/`` (hidden in JupyterLab's file
browser) and takes the new one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COURSE = ROOT / "notebooks"
MINE = ROOT / "my_notebooks"
OLD = ".old"
# JupyterLab settings make lab installs into the environment: no "get Jupyter news?" pop-up
LAB_OVERRIDES = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}


def _numbered(folder: Path) -> list[Path]:
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def learner_copy(source: Path) -> dict:
    """The notebook at `source` as a learner gets it: outputs kept, jupytext pairing dropped (so
    saving writes no .py twin), and the digest of the course version it was copied from."""
    nb = json.loads(source.read_text(encoding="utf-8"))
    nb["metadata"].pop("jupytext", None)
    nb["metadata"]["course"] = {"copied_from": _digest(source)}
    return nb


def _write(nb: dict, path: Path) -> None:
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _find(which: str, folder: Path) -> Path:
    number = which.zfill(2) if which.isdigit() and len(which) <= 2 else None
    matches = [p for p in _numbered(folder) if which in (p.name, p.stem) or p.name[:2] == number]
    if len(matches) != 1:
        names = ", ".join(p.name[:2] for p in _numbered(folder))
        raise SystemExit(f"NB={which!r} names no single course notebook: use its number ({names})")
    return matches[0]


def update(course: Path = COURSE, mine: Path = MINE, out=sys.stdout) -> list[Path]:
    """Copy every course notebook that `mine` does not have yet; never overwrite one. Say which
    copies the course has changed since (``make reset NB=..`` takes the new version). Returns
    the notebooks copied."""
    mine.mkdir(parents=True, exist_ok=True)
    copied, stale = [], []
    for source in _numbered(course):
        target = mine / source.name
        if not target.exists():
            _write(learner_copy(source), target)
            copied.append(target)
            continue
        try:
            origin = json.loads(target.read_text(encoding="utf-8"))["metadata"]["course"]["copied_from"]
        except (ValueError, KeyError, TypeError):
            origin = None
        if origin != _digest(source):
            stale.append(source)
    if copied:
        print(f"Copied {len(copied)} notebook(s) into {mine.name}/: your own copies, run and save them freely.",
              file=out)
    for source in stale:
        print(f"{source.name}: the course has a newer version than your copy. `make reset NB={source.name[:2]}` "
              f"takes it (yours moves to {mine.name}/{OLD}/).", file=out)
    return copied


def reset(which: str, course: Path = COURSE, mine: Path = MINE, out=sys.stdout) -> Path:
    """Replace your copy of notebook `which` ("04", or its file name) with the course's current
    version; yours is kept in ``my_notebooks/.old/`` with the time it was moved."""
    source = _find(which, course)
    target = mine / source.name
    mine.mkdir(parents=True, exist_ok=True)
    if target.exists():
        old = mine / OLD
        old.mkdir(exist_ok=True)
        kept = old / f"{source.stem}.{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
        target.rename(kept)
        print(f"Your copy is now {kept.relative_to(mine.parent)}.", file=out)
    _write(learner_copy(source), target)
    print(f"{target.relative_to(mine.parent)} is the course's current version.", file=out)
    return target


def install_lab_settings(prefix: Path = Path(sys.prefix)) -> Path:
    """Write JupyterLab's settings overrides into the environment at `prefix` (no news pop-up)."""
    path = prefix / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = json.loads(path.read_text()) if path.exists() else {}
    settings.update(LAB_OVERRIDES)
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helpers.workspace", description=__doc__.splitlines()[0])
    parser.add_argument("--reset", metavar="NB", help="take the course's current version of this notebook")
    parser.add_argument("--lab-settings", action="store_true", help="also install the JupyterLab settings")
    args = parser.parse_args(argv)
    if args.lab_settings:
        install_lab_settings()
    if args.reset:
        reset(args.reset)
    else:
        update()


if __name__ == "__main__":
    main()
