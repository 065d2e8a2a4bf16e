"""How much memory each notebook's kernel holds once it has run top to bottom.

    python -m benchmarks.bench_kernel_memory              # every notebook (about 8 minutes)
    python -m benchmarks.bench_kernel_memory 00 10         # some

A learner keeps several notebooks open, each with its own kernel, so what matters on an 8 GB
laptop is the resident memory a kernel keeps after its notebook has run (bar: 1.2 GB each), and
the most it held on the way (its peak, Linux's VmHWM). Each notebook runs in a fresh kernel on
a copy; nothing in the checkout changes. ``make notebooks`` checks the same bar after each
notebook under nbval (conftest.py) on the kernel's private memory, which does not vary with how
the shared libraries' pages happen to be counted; this script prints both. It writes build/bench/kernel_memory.md.

    python -m benchmarks.bench_kernel_memory --together 01 04 06 11 15

keeps every kernel open until all the notebooks have run, as a learner with five tabs does, and
reports what they hold together: the sum of their proportional set sizes (Linux's Pss, which
splits each shared page between the processes that map it), which is the RAM the open kernels take.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BAR = 1.2e9


def _status_bytes(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def measure(path: Path) -> tuple[float, int | None, int | None, int]:
    """(seconds, resident bytes after the last cell, peak resident bytes, private resident bytes
    after the last cell: RssAnon + RssShmem, what the kernel adds beside the shared libraries) of
    `path` run alone."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        pid = client.km.provisioner.process.pid
        rss, peak = _status_bytes(pid, "VmRSS"), _status_bytes(pid, "VmHWM")
        private = (_status_bytes(pid, "RssAnon") or 0) + (_status_bytes(pid, "RssShmem") or 0)
    return time.perf_counter() - start, rss, peak, private


def _pss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def together(paths: list[Path]) -> None:
    """Run each notebook in its own kernel, all kept open, then report each kernel's resident,
    private and proportional memory, and their sums."""
    import nbformat
    from jupyter_core.utils import run_sync
    from nbclient import NotebookClient

    clients, rows = [], []
    try:
        for path in paths:
            nb = nbformat.read(str(path), as_version=4)
            client = NotebookClient(nb, kernel_name="python3", timeout=600,
                                    resources={"metadata": {"path": str(path.parent)}})
            client.km = client.create_kernel_manager()
            client.start_new_kernel()
            client.start_new_kernel_client()
            clients.append((path, client))
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
            print(f"ran {path.name}", flush=True)
        print(f"\n{'notebook (all kernels open)':<36} {'resident':>9} {'private':>8} {'Pss':>8}  GB")
        for path, client in clients:
            pid = client.km.provisioner.process.pid
            rss = _status_bytes(pid, "VmRSS") or 0
            private = (_status_bytes(pid, "RssAnon") or 0) + (_status_bytes(pid, "RssShmem") or 0)
            pss = _pss_bytes(pid) or 0
            rows.append((path.name, rss, private, pss))
            print(f"{path.name:<36} {rss / 1e9:9.2f} {private / 1e9:8.2f} {pss / 1e9:8.2f}")
        total = [sum(r[i] for r in rows) for i in (1, 2, 3)]
        print(f"{'sum':<36} {total[0] / 1e9:9.2f} {total[1] / 1e9:8.2f} {total[2] / 1e9:8.2f}")
        print(f"\n{len(rows)} open kernels take {total[2] / 1e9:.2f} GB of RAM (the sum of their Pss); the sum "
              f"of their resident sizes, {total[0] / 1e9:.2f} GB, counts the shared libraries once per kernel")
    finally:
        for _, client in clients:
            run_sync(client.km.shutdown_kernel)(now=True)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if argv and argv[0] == "--together":
        wanted = {a.zfill(2) for a in argv[1:]}
        together([p for p in notebooks if not wanted or p.name[:2] in wanted])
        return
    if argv:
        notebooks = [p for p in notebooks if p.name[:2] in {a.zfill(2) for a in argv}]
    rows = []
    print(f"{'notebook':<36} {'seconds':>8} {'kept GB':>8} {'peak GB':>8} {'private':>8}  bar {BAR / 1e9:.1f} GB kept")
    for path in notebooks:
        seconds, rss, peak, private = measure(path)
        ok = "ok" if rss is not None and rss <= BAR else "OVER"
        rows.append((path.name, seconds, rss, peak, private, ok))
        print(f"{path.name:<36} {seconds:8.1f} {rss / 1e9:8.2f} {peak / 1e9:8.2f} {private / 1e9:8.2f}  {ok}",
              flush=True)
    out = ROOT / "build" / "bench" / "kernel_memory.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| notebook | seconds | kept (GB) | peak (GB) | private (GB) | kept <= 1.2 GB |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {s:.0f} | {r / 1e9:.2f} | {p / 1e9:.2f} | {v / 1e9:.2f} | {ok} |" for n, s, r, p, v, ok in rows]
    out.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    if any(ok != "ok" for *_, ok in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
