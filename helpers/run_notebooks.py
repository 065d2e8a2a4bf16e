"""Execute every notebook headless with papermill; print how long each took (``make run``).

    python -m helpers.run_notebooks notebooks build

Executed copies go to the output folder; the committed notebooks are not touched.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def run_all(src: Path, out: Path) -> list[tuple[str, float, str]]:
    import papermill as pm

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    notebooks = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise SystemExit(f"no numbered notebooks in {src}")
    for nb in notebooks:
        start = time.perf_counter()
        status = "ok"
        try:
            pm.execute_notebook(str(nb), str(out / nb.name), cwd=str(src), progress_bar=True,
                                kernel_name="python3")
        except pm.PapermillExecutionError as err:
            status = f"FAILED: {err.ename}: {err.evalue}"
        rows.append((nb.name, time.perf_counter() - start, status))
    return rows


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    src = Path(argv[0] if argv else "notebooks")
    out = Path(argv[1] if len(argv) > 1 else "build")
    rows = run_all(src, out)
    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'notebook':<{width}}  seconds  status")
    for name, seconds, status in rows:
        print(f"{name:<{width}}  {seconds:7.1f}  {status}")
    print(f"{'total':<{width}}  {sum(s for _, s, _ in rows):7.1f}")
    if any(status != "ok" for _, _, status in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
