"""Plain-text tables for the console (no dependency, aligned columns)."""

from __future__ import annotations

from collections.abc import Sequence


def format_cell(value) -> str:
    """Numbers with 4 significant decimals, everything else as ``str``.

    >>> format_cell(0.123456), format_cell(3), format_cell(None)
    ('0.1235', '3', '-')
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.4f}"
    return str(value)


def format_table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    """Align ``rows`` under ``headers``; first column left-aligned, the rest right-aligned.

    >>> print(format_table([["drift", 0.5], ["sft", 0.25]], ["method", "multi@1"]))
    method  multi@1
    ------  -------
    drift    0.5000
    sft      0.2500
    """
    cells = [[str(h) for h in headers]] + [[format_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])
