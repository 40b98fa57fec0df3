"""The final "paper | ours | delta | notes" table every study prints and stores.

Long form (one line per row and metric) so any study's table fits one layout, and the
Markdown and CSV written to MLflow and ``docs/results/`` come from the same rows.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Comparison:
    """One cell of a paper's table beside our measurement.

    Args:
        row: the paper's row label (e.g. "VGG38 BN+RC, lr 1e-2").
        metric: the column (e.g. "val acc (%)").
        paper: the paper's number, or None where the paper gives none ("—").
        ours: our measured number, or None when not measured (row skipped or failed).
        notes: provenance, second reference values, deviations.
        paper_text: how the paper prints its number, when that differs ("00.01").
        digits: decimals shown.
    """

    row: str
    metric: str
    paper: float | None
    ours: float | None
    notes: str = ""
    paper_text: str | None = None
    digits: int = 2

    @property
    def delta(self) -> float | None:
        if self.paper is None or self.ours is None:
            return None
        return self.ours - self.paper

    def cells(self) -> list[str]:
        return [
            self.row,
            self.metric,
            self.paper_text or _fmt(self.paper, self.digits),
            _fmt(self.ours, self.digits),
            _fmt(self.delta, self.digits, signed=True),
            self.notes,
        ]


HEADER = ["row", "metric", "paper", "ours", "delta", "notes"]


def _fmt(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value != 0 and abs(value) < 10 ** -digits:  # gradients of 1e-18 stay readable
        return f"{value:+.2e}" if signed else f"{value:.2e}"
    if abs(value) >= 1000 and float(value).is_integer():
        return f"{int(value):+,}" if signed else f"{int(value):,}"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def text_table(rows: list[Comparison]) -> str:
    """An aligned plain-text table for the terminal."""
    grid = [HEADER] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
             for line in grid]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[Comparison]) -> str:
    """A GitHub-flavoured Markdown table."""
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r.cells()) + " |" for r in rows]
    return "\n".join(out)


def csv_table(rows: list[Comparison]) -> str:
    """CSV with raw numbers (no rounding) for further analysis."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADER)
    for r in rows:
        writer.writerow([r.row, r.metric, r.paper, r.ours, r.delta, r.notes])
    return buffer.getvalue()


def claim(statement: str, ours: float | None, holds: bool, expected: str,
          source: str = "", digits: int = 3) -> Comparison:
    """A qualitative claim checked on measured numbers, as one line of the table.

    Args:
        statement: the claim, e.g. "VGG38 train loss within ±0.02 of ln 100".
        ours: the measured number the check reads (None where it reads several).
        holds: the verdict.
        expected: the condition as shown in the paper column, e.g. "≤ 2.053".
        source: where the claim comes from (e.g. "SPEC §3.5").
    """
    notes = "; ".join(part for part in ("✓ holds" if holds else "✗ FAILS", source) if part)
    return Comparison("claim", statement, None, ours, notes, expected, digits)
