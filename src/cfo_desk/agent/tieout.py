"""Tie-out: every key figure of an answer must equal a cell of the result it cites.

`tie_out(answer, results)` checks a `FinalAnswer` against the run's results (handle → Parquet
file) and returns what it found: per figure a `FigureTrace` (the handle, row and column of the
matching cell, or why none matches), and notes for breakdowns whose parts don't sum to their total.
The agent's output validator (agent/core.py) sends the model back with the problems
(`ModelRetry`) while it has retries left; after that the answer is kept with the figures marked
"not traced", and the chat shows them in red.

When a figure "equals" a cell (`figure_matches`):
- the same number (relative difference below 1e-9), or
- the cell rounded to the figure's own precision, as long as that rounding keeps at least
  `MIN_SIGNIFICANT_DIGITS` significant digits of the cell: 312109.5 ties out as 312109.5,
  312110, 312100 or 312000, not as 310000;
- for a figure in '%', the cell may be the ratio (0.125 for 12.5 %), or already in percent;
- for a unit that says thousands or millions ("USD k", "kUSD", "USD thousands", "USD m",
  "EUR millions", "bn"), the cell divided by that scale.

Breakdowns: figures whose `part_of` names another figure's label are summed; the sum must equal
the total within half a unit of the coarsest precision among the parts and the total (so parts
rounded to cents may differ from the total by a cent or so per part).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cfo_desk.agent.outputs import FigureTrace, FinalAnswer, KeyFigure

__all__ = ["MIN_SIGNIFICANT_DIGITS", "TieOut", "figure_matches", "tie_out"]

MIN_SIGNIFICANT_DIGITS = 3
"""A rounded figure ties out only if its rounding keeps at least this many significant digits."""
MAX_VALUES_IN_REASON = 5
"""How many of the cited column's values the retry message quotes."""
MAX_REASON_CHARS = 400

_SCALES = (
    (re.compile(r"(?i)\b(?:bn|billions?)\b|^b(?=[A-Z]{3}$)"), 1e9),
    (re.compile(r"(?i)\b(?:m|mn|mm|millions?)\b|^m(?=[A-Z]{3}$)"), 1e6),
    (re.compile(r"(?i)\b(?:k|thousands?)\b|^k(?=[A-Z]{3}$)"), 1e3),
)


@dataclass
class TieOut:
    """What the check found: one trace per key figure (same order) and the breakdown notes."""

    traces: list[FigureTrace]
    breakdown_notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """One sentence per figure that doesn't tie out and per breakdown that doesn't sum."""
        return [t.reason or "" for t in self.traces if t.status != "traced"] + self.breakdown_notes

    def apply(self, answer: FinalAnswer) -> FinalAnswer:
        """`answer` with each figure's `trace` and the answer's `tie_out_notes` set (a copy)."""
        figures = [f.model_copy(update={"trace": t}) for f, t in zip(answer.key_figures, self.traces, strict=True)]
        return answer.model_copy(update={"key_figures": figures, "tie_out_notes": list(self.breakdown_notes)})


def _scale(unit: str) -> float:
    unit = (unit or "").strip()
    for pattern, scale in _SCALES:
        if pattern.search(unit):
            return scale
    return 1.0


def _decimals(value: float) -> int:
    """The decimals `value` is written with (negative for trailing zeros: 312000 → -3)."""
    if not math.isfinite(value) or value == 0:
        return 0
    text = repr(float(value))
    if "e" in text or "E" in text:
        return 0
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    if frac:
        return len(frac)
    digits = whole.lstrip("-")
    return -(len(digits) - len(digits.rstrip("0")))


def _matches(cells: np.ndarray, value: float) -> np.ndarray:
    """Boolean mask of `cells` (float64) that equal `value` exactly or after `value`'s rounding."""
    with np.errstate(invalid="ignore", over="ignore"):
        same = np.abs(cells - value) <= 1e-9 * np.maximum(np.abs(cells), abs(value))
        k = _decimals(value)
        unit = 10.0 ** (-k)
        rounded = np.round(cells, k) if k >= 0 else np.round(cells / unit) * unit
        keeps_digits = unit * 10 ** (MIN_SIGNIFICANT_DIGITS - 1) <= np.abs(cells) * (1 + 1e-12)
        near = np.abs(rounded - value) <= unit * 1e-6
    return same | (near & keeps_digits)


def figure_matches(value: float, cell: float, unit: str = "") -> bool:
    """True when a key figure `value` in `unit` ties out to one result `cell` (rules in the module docstring)."""
    return bool(_candidates(np.array([cell], dtype="float64"), value, unit)[0])


def _candidates(cells: np.ndarray, value: float, unit: str) -> np.ndarray:
    mask = _matches(cells, value)
    scale = _scale(unit)
    if scale != 1.0:
        mask |= _matches(cells / scale, value)
    if unit.strip() == "%" or "percent" in unit.lower():
        mask |= _matches(cells * 100.0, value)
    return mask


def _numeric_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)]


class _Result:
    """One result file, read lazily: its schema, then only the numeric columns asked for."""

    def __init__(self, handle: str, path: Path):
        self.handle = handle
        self.path = path
        self._file: pq.ParquetFile | None = None
        self._columns: dict[str, np.ndarray] = {}

    @property
    def file(self) -> pq.ParquetFile:
        if self._file is None:
            self._file = pq.ParquetFile(self.path)
        return self._file

    @property
    def column_names(self) -> list[str]:
        return list(self.file.schema_arrow.names)

    @property
    def numeric(self) -> list[str]:
        return _numeric_columns(self.file.schema_arrow)

    def cells(self, column: str) -> np.ndarray:
        if column not in self._columns:
            col = self.file.read(columns=[column]).column(0)
            if pa.types.is_decimal(col.type):
                col = col.cast(pa.float64())
            self._columns[column] = col.to_numpy(zero_copy_only=False).astype("float64")  # nulls → NaN
        return self._columns[column]

    def sample(self, column: str | None) -> str:
        """What the result holds, for the retry message: the named column's first values, else the
        first row's numeric cells (at most `MAX_VALUES_IN_REASON` values either way)."""
        rows = self.file.metadata.num_rows
        if column is not None:
            values = self.cells(column)[:MAX_VALUES_IN_REASON]
            shown = ", ".join(f"{v:,.10g} (row {i})" for i, v in enumerate(values) if not math.isnan(v))
            more = rows - len(values)
            return f"{column} holds {shown or 'no numbers'}" + (f" and {more:,} more rows" if more > 0 else "")
        cells = [f"{c}={self.cells(c)[0]:,.10g}" for c in self.numeric[:MAX_VALUES_IN_REASON] if rows]
        return f"{self.handle} has {rows:,} row(s); row 0 holds " + (", ".join(cells) or "no numbers")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def _trace(fig: KeyFigure, results: dict[str, _Result]) -> FigureTrace:
    name = f"Key figure {fig.label!r} ({fig.value:,.10g} {fig.unit})".replace("  ", " ")
    known = ", ".join(sorted(results, key=lambda h: (len(h), h))) or "none"
    if not fig.query:
        return FigureTrace(status="not_traced", reason=_clip(f"{name} cites no result: set query to the handle of the result it comes from (results: {known})."))
    res = results.get(fig.query.strip())
    if res is None:
        return FigureTrace(status="not_traced", reason=_clip(f"{name} cites {fig.query!r}, which is not a result of this conversation (results: {known})."))
    try:
        numeric = res.numeric
    except (OSError, pa.ArrowException) as exc:
        return FigureTrace(status="not_traced", handle=res.handle, reason=_clip(f"{name}: result {res.handle} could not be read ({exc})."))
    if fig.column and fig.column not in res.column_names:
        cols = ", ".join(res.column_names)
        return FigureTrace(status="not_traced", handle=res.handle, reason=_clip(f"{name} names column {fig.column!r}, which {res.handle} does not have (columns: {cols})."))
    order = [fig.column] if fig.column in numeric else []
    order += [c for c in numeric if c != fig.column]
    for column in order:
        hits = np.flatnonzero(_candidates(res.cells(column), float(fig.value), fig.unit))
        if hits.size:
            row = int(hits[0])
            return FigureTrace(status="traced", handle=res.handle, row=row, column=column, cell=float(res.cells(column)[row]))
    if not numeric:
        return FigureTrace(status="not_traced", handle=res.handle, reason=_clip(f"{name}: {res.handle} has no numeric column to tie it to."))
    shown = res.sample(fig.column if fig.column in numeric else None)
    return FigureTrace(
        status="not_traced", handle=res.handle, reason=_clip(f"{name} matches no cell of {res.handle} after rounding; {shown}.")
    )


def _breakdown_notes(figures: list[KeyFigure]) -> list[str]:
    notes = []
    by_label = {f.label.strip().lower(): f for f in figures}
    groups: dict[str, list[KeyFigure]] = {}
    for f in figures:
        if f.part_of and f.part_of.strip().lower() in by_label:
            groups.setdefault(f.part_of.strip().lower(), []).append(f)
    for key, parts in groups.items():
        total = by_label[key]
        got = math.fsum(p.value for p in parts)
        coarsest = max(10.0 ** (-_decimals(x.value)) for x in [total, *parts])
        if abs(got - total.value) > max(coarsest / 2 * len(parts), 1e-9 * abs(total.value)):
            listed = " + ".join(f"{p.value:,.10g}" for p in parts)
            notes.append(
                _clip(f"The parts of {total.label!r} ({listed} = {got:,.10g}) don't sum to its value {total.value:,.10g} (difference {got - total.value:,.10g}).")
            )
    for f in figures:
        if f.part_of and f.part_of.strip().lower() not in by_label:
            notes.append(_clip(f"Key figure {f.label!r} is part_of {f.part_of!r}, but no key figure has that label."))
    return notes


def tie_out(answer: FinalAnswer, results: Mapping[str, Path]) -> TieOut:
    """Check each key figure of `answer` against `results` (handle → Parquet file of that result:
    this turn's and earlier turns' on the same path). Reads only the schema and the numeric columns
    needed; never raises for a bad figure (it becomes a "not_traced" trace with a reason)."""
    opened = {h: _Result(h, p) for h, p in results.items()}
    traces = [_trace(f, opened) for f in answer.key_figures]
    return TieOut(traces=traces, breakdown_notes=_breakdown_notes(answer.key_figures))
