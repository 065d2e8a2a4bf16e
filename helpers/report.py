"""What a notebook prints: figures that round-off cannot move.

Every notebook is committed with its outputs, and nbval compares them, character for character,
with a fresh run on the reader's machine. A different CPU, SIMD kernel (``ATEN_CPU_CAPABILITY``) or
thread count sums float32 numbers in a different order, so the last bits of every result move.
Three tools keep those bits out of what is printed:

``fmt(value, digits)``
    A figure rounded to ``digits`` decimals. While a notebook is executed for committing
    (``make execute``, which sets ``COURSE_STRICT=1``), it refuses a value that lies within the
    round-off margin of a rounding boundary (e.g. 0.12350001 at 3 decimals): print fewer digits.
    A value that passed there rounds the same on every machine whose result differs from the
    author's by less than the margin. ``-0.000`` is printed as ``0.000``.
``agree(name, ours, theirs, atol)``
    A parity check against a library: it asserts ``max |ours - theirs| <= atol`` and prints the
    verdict with the bound, never the residual itself (a residual is round-off by definition).
``table(rows, digits)``
    A fixed-width text table of such figures (``print(table(...))``), in place of a DataFrame's
    repr, whose column widths follow the widest entry, so that one value's sign moved every column.

The margin is ``RTOL * |value| + ATOL``. Measured on DermNet between PyTorch's default (no SIMD)
kernels and its AVX2 / AVX-512 ones (which agree bit for bit with each other, at 1, 2 and 4
threads): the DermSynth images themselves differ in their last bits, logits and IG sums then move
by up to 5e-6 relative and mask masses by up to 1.3e-5, within the default margin of 1e-4. Rank
correlations move by up to 2e-4 *absolute* (pixels tied on a plateau swap ranks): print them
with ``atol=1e-3`` or more, and 2 decimals.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch

RTOL = 1e-4
ATOL = 1e-6


def strict() -> bool:
    """True while a notebook is executed for committing (``COURSE_STRICT=1``)."""
    return os.environ.get("COURSE_STRICT", "") not in ("", "0")


def _scalar(value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"value must be a single number, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().double().item())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"value must be a number, got {type(value).__name__}") from None


def fmt(value, digits: int = 3, *, rtol: float = RTOL, atol: float = ATOL, sign: bool = False) -> str:
    """``value`` with ``digits`` decimals; under ``COURSE_STRICT=1``, only if round-off cannot move them.

    sign  True: always print the sign (``+0.120``)
    Integers and bools are printed as they are; NaN as ``nan``.
    """
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 0:
        raise ValueError(f"digits must be a non-negative int, got {digits!r}")
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:+d}" if sign else str(value)
    v = _scalar(value)
    if math.isnan(v):
        return "nan"
    spec = f"{'+' if sign else ''}.{digits}f"
    text = f"{v:{spec}}"
    if strict():
        margin = rtol * abs(v) + atol
        low, high = f"{v - margin:{spec}}", f"{v + margin:{spec}}"
        if not (_same(low, text) and _same(high, text)):
            raise ValueError(f"fmt: {v!r} lies within round-off ({margin:.1e}) of a rounding boundary at "
                             f"{digits} decimals ({low} vs {high}); print it with fewer digits")
    return _no_negative_zero(text)


def _no_negative_zero(text: str) -> str:
    if text.startswith("-") and not text.strip("-0."):
        return text[1:]
    return text


def _same(a: str, b: str) -> bool:
    return _no_negative_zero(a) == _no_negative_zero(b)


def agree(name: str, ours, theirs, atol: float, *, rtol: float = 0.0, quiet: bool = False) -> float:
    """Assert that ``ours`` and ``theirs`` agree within ``atol + rtol * |theirs|`` everywhere.

    Prints ``name: max |ours - theirs| <= 1e-06`` (the bound, not the residual) and returns the
    largest absolute difference for the caller's own use. Raises AssertionError with the residual
    when the bound is broken.
    """
    a = torch.as_tensor(ours).detach().double()
    b = torch.as_tensor(theirs).detach().double()
    if a.shape != b.shape:
        raise ValueError(f"{name}: ours has shape {tuple(a.shape)}, theirs {tuple(b.shape)}")
    diff = (a - b).abs()
    bound = atol + rtol * b.abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    if not bool((diff <= bound).all()):
        raise AssertionError(f"{name}: max |ours - theirs| = {worst:.3e} breaks the bound "
                             f"{atol:g}{f' + {rtol:g} |theirs|' if rtol else ''}")
    if not quiet:
        print(f"{name}: max |ours - theirs| <= {atol:g}{f' + {rtol:g} |theirs|' if rtol else ''}")
    return worst


def prediction_margin(scores: torch.Tensor) -> float:
    """The smallest gap between an image's top two scores, relative to its largest score's size,
    over a batch of scores ``[N, K]`` (``helpers.train.logits(model, x)``). A prediction (an argmax)
    won by less than round-off, about 1e-6 relative, could go the other way on another CPU: assert
    that this is far above it (1e-4) before choosing images or targets by prediction."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be a tensor [N, K] with K >= 2, got {getattr(scores, 'shape', scores)!r}")
    top2 = scores.detach().topk(2, 1).values
    return ((top2[:, 0] - top2[:, 1]) / scores.detach().abs().amax(1)).min().item()


def table(rows, digits=3, *, index: str = "", rtol: float = RTOL, atol=ATOL) -> str:
    """A fixed-width text table: ``rows`` maps a row name to ``{column: value}`` (or is a DataFrame).

    digits      decimals for every float, or ``{column: decimals}`` (columns not named get 3)
    index       the header of the row-name column
    rtol, atol  ``fmt``'s round-off margin; ``atol`` may also be ``{column: atol}``
    Floats go through ``fmt``; other values are printed with ``str``. Returns the text.
    """
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame
        index = index or (rows.index.name or "")
        rows = rows.to_dict(orient="index")
    if not isinstance(rows, Mapping) or not rows:
        raise ValueError("rows must be a non-empty mapping {row name: {column: value}} or a DataFrame")
    columns: list = []
    for row in rows.values():
        if not isinstance(row, Mapping):
            raise ValueError(f"each row must map columns to values, got {type(row).__name__}")
        columns += [c for c in row if c not in columns]

    def cell(value, column) -> str:
        if value is None:
            return "-"
        if isinstance(value, float | torch.Tensor) or type(value).__module__ == "numpy":
            d = digits.get(column, 3) if isinstance(digits, Mapping) else digits
            a = atol.get(column, ATOL) if isinstance(atol, Mapping) else atol
            if hasattr(value, "dtype") and not str(value.dtype).startswith(("float", "torch.float")):
                return str(int(value))
            return fmt(value, d, rtol=rtol, atol=a)
        return str(value)

    body = [[str(name)] + [cell(row.get(c), c) for c in columns] for name, row in rows.items()]
    head = [index] + [str(c) for c in columns]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    for r in body:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    return "\n".join(line.rstrip() for line in lines)


_CLAIM_OPS = {">": (lambda v, b, m: v > b + m, "above"), ">=": (lambda v, b, m: v >= b + m, "at least"),
              "<": (lambda v, b, m: v < b - m, "below"), "<=": (lambda v, b, m: v <= b - m, "at most")}


def claim(statement: str, value, op: str, bound, *, digits: int = 2, margin: float | None = None,
          rtol: float = RTOL, atol: float = ATOL) -> str:
    """State a measured claim in one sentence, after checking it: the notebook's replacement for a
    bare ``assert`` in a teaching cell.

    ``claim("the shortcut model's ruler mass is above twice the ruler's share", mass, ">", 2 * share)``
    prints ``the shortcut model's ruler mass is above twice the ruler's share: 0.27 > 0.12`` and
    returns that line. ``op`` is ">", ">=", "<" or "<=" ("between": ``bound`` is ``(low, high)``).
    The claim must hold with room to spare, so that another CPU's round-off cannot turn it: by
    ``margin`` (default ``rtol * |bound| + atol``, the round-off margin ``fmt`` uses); pass a larger
    ``margin`` where the claim should survive more than round-off (a new draw of images). If the
    claim does not hold, AssertionError says by how much. The figures are printed with ``fmt``
    (``digits`` decimals, refused under ``COURSE_STRICT=1`` where round-off could move them).
    """
    if not isinstance(statement, str) or not statement.strip():
        raise ValueError("statement must be a non-empty sentence saying what is claimed")
    v = _scalar(value)
    if op == "between":
        if not (isinstance(bound, tuple | list) and len(bound) == 2):
            raise ValueError(f"for op 'between', bound must be (low, high), got {bound!r}")
        low, high = (_scalar(b) for b in bound)
        m = rtol * max(abs(low), abs(high)) + atol if margin is None else float(margin)
        holds, shown = low + m < v < high - m, f"{fmt(low, digits, rtol=rtol, atol=atol)} < {{v}} < " \
                                               f"{fmt(high, digits, rtol=rtol, atol=atol)}"
        gap = min(v - low, high - v) - m
    elif op in _CLAIM_OPS:
        b = _scalar(bound)
        m = rtol * abs(b) + atol if margin is None else float(margin)
        test, _ = _CLAIM_OPS[op]
        holds, shown = test(v, b, m), f"{{v}} {op} {fmt(b, digits, rtol=rtol, atol=atol)}"
        gap = (v - b if op in (">", ">=") else b - v) - m
    else:
        raise ValueError(f"op must be one of {[*_CLAIM_OPS, 'between']}, got {op!r}")
    if math.isnan(v) or not holds:
        raise AssertionError(f"claim does not hold: {statement} ({v!r} {op} {bound!r}, "
                             f"short by {-gap:.3g} with a margin of {m:.3g})")
    line = f"{statement}: " + shown.format(v=fmt(v, digits, rtol=rtol, atol=atol))
    print(line)
    return line
