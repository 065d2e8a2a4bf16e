"""Timing helpers shared by the benchmarks: medians of repeated runs, printed as ratios."""

from __future__ import annotations

import statistics
import time
import warnings

import torch

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")


def timed(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_pair(ours, theirs, repeats: int = 15, warmup: int = 1) -> tuple[float, float]:
    """Median times of two functions measured call by call in alternation (ours, theirs, ours, ...),
    so that the machine's drift affects both alike; returns (ours, theirs) in seconds."""
    for _ in range(warmup):
        ours()
        theirs()
    a, b = [], []
    for _ in range(repeats):
        for fn, out in ((ours, a), (theirs, b)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def report(rows: list[tuple[str, float, float, str]]) -> None:
    """rows: (what, ours seconds, theirs seconds, target) -> a table with the ratio."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'benchmark':<44} {'ours s':>8} {'ref s':>8} {'ratio':>6}  target")
    for what, ours, theirs, target in rows:
        print(f"{what:<44} {ours:8.3f} {theirs:8.3f} {ours / theirs:6.2f}  {target}")
