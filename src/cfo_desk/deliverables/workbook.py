"""Excel workbooks with live formulas, built from a structured spec (issue 9).

The CFO agent describes a workbook as a `WorkbookSpec`:

- data sheets, each one query result (a handle such as q1) laid out by `DATA_SHEET_LAYOUT`;
  values keep their types (numbers as numbers, dates as dates, text as text: a text value is never
  stored as a formula, whatever it starts with);
- model sheets, whose cells are inputs, labels, headers, formulas over the workbook itself and
  totals, styled by the finance convention (blue inputs on a light fill, black formulas);
- named inputs (workbook-wide names for input cells, usable in formulas) and native Excel charts.

`check_workbook` refuses a spec with a sentence naming the sheet, the cell and what was refused
(`WorkbookRefused`); formulas are checked by `formula_check` (tokenised by openpyxl, parsed by
`formulas`, functions on an allow-list, references only inside the workbook, no cycles).
`write_workbook` writes the .xlsx atomically (temporary file, then rename) with a Sources sheet
(per result: handle, purpose, SQL, datasets read with sha256, when it ran). `preview_workbook`
reads a written workbook back for display, with formula values computed by the `formulas`
engine, never by an evaluator of ours.

No Streamlit here: this layer sits below the UI and the agent.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import types
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from openpyxl import Workbook, load_workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.formula.tokenizer import Token, Tokenizer, TokenizerError
from openpyxl.chart import BarChart, LineChart, Reference as ChartReference, Series
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
from openpyxl.styles.numbers import is_date_format
from openpyxl.utils import get_column_letter
from openpyxl.utils.datetime import from_excel
from openpyxl.workbook.defined_name import DefinedName
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cfo_desk.deliverables.formula_check import (
    EXCEL_MAX_COLUMNS,
    EXCEL_MAX_ROWS,
    MAX_FORMULA_CHARS,
    CheckedFormula,
    FormulaRefused,
    Reference,
    check_formula,
    parse_area,
    quote_sheet,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cfo_desk.storage.models import Artifact

__all__ = [
    "DATA_SHEET_LAYOUT", "FORMULA_RULES", "CellSpec", "ChartSeries", "DataSheet", "ModelSheet",
    "NamedInput", "NativeChart", "ResultInfo", "SheetPreview", "WorkbookError", "WorkbookPreview",
    "WorkbookRefused", "WorkbookSpec", "WorkbookSummary", "check_workbook", "preview_workbook",
    "write_workbook",
]

# --- Limits -----------------------------------------------------------------------------------
MAX_SHEETS = 20
"""Model sheets plus data sheets per workbook (the Sources sheet comes on top)."""
MAX_MODEL_CELLS = 5_000
"""Cells one model sheet may define."""
MODEL_MAX_ROW = 5_000
MODEL_MAX_COLUMN = 200  # column GR
"""Model-sheet cells lie within A1:GR5000."""
MAX_TEXT_CHARS = 1_000
"""Characters of one text value in a model sheet (labels, headers, text inputs)."""
MAX_TITLE_CHARS = 200
"""Characters of the workbook title, a chart title, a series or axis title."""
MAX_SHEET_NAME_CHARS = 31  # Excel's limit
MAX_NAMED_INPUTS = 100
MAX_NAME_CHARS = 64
MAX_CHARTS = 10
MAX_SERIES_PER_CHART = 10
MAX_DATA_ROWS = EXCEL_MAX_ROWS - 1
"""Rows one data sheet may hold (Excel's 1,048,576 rows minus the header)."""
MAX_DATA_CELLS = 1_000_000
"""Cells (rows x columns) across all data sheets of one workbook: about 20 s of writing on this
2-core machine (openpyxl's pure-Python XML writer; with lxml installed it writes faster).
Aggregate in SQL first for more."""
EXCEL_MAX_TEXT_CHARS = 32_767
"""Characters Excel keeps in one cell; longer data text is cut (the summary notes how many)."""
PREVIEW_MAX_ROWS = 50
PREVIEW_MAX_COLS = 30
PREVIEW_ENGINE_MAX_CELLS = 10_000
"""Filled cells up to which the preview computes formulas with the `formulas` engine (about
0.3 ms per cell: ~4 s at the limit). A larger workbook is previewed without formula values."""
SOURCES_SHEET = "Sources"

NumberFormatName = Literal["currency", "percent", "number", "integer", "date", "month"]
CellKind = Literal["input", "formula", "label", "header", "total"]

DATA_SHEET_LAYOUT = (
    "Data sheet layout: each data sheet holds one query result. Row 1 is the header (the result's "
    "column names, in order); the data starts in row 2, one worksheet row per result row, with the "
    "result's columns in order from column A. A result with N rows fills rows 2 to N+1, so for a "
    "12-row result whose second column is starting_mrr, that column is 'MRR data'!B2:B13. Numbers "
    "are numbers, dates are dates, text is text; data sheets hold no formulas."
)
FORMULA_RULES = (
    "Formulas start with '=' and may refer only to cells of this workbook: on the same sheet (B3, "
    "B2:B13) or another sheet with its name in single quotes ('MRR data'!B2:B13), and to named "
    "inputs by name (=B5*(1+Growth)). No whole columns or rows (B:B): use explicit ranges. No "
    "links, files, URLs, other workbooks, DDE, INDIRECT/OFFSET, volatile functions (TODAY, NOW, "
    "RAND), no circular references. Allowed functions: arithmetic (+ - * / ^ %, &), SUM, SUMIF(S), "
    "SUMPRODUCT, PRODUCT, AVERAGE(IF/IFS), MEDIAN, MIN, MAX, MINIFS, MAXIFS, COUNT, COUNTA, "
    "COUNTBLANK, COUNTIF(S), ABS, ROUND, ROUNDUP, ROUNDDOWN, INT, MOD, POWER, SQRT, EXP, LN, LOG, "
    "LOG10, SIGN, CEILING, FLOOR, IF, IFERROR, IFNA, IFS, AND, OR, NOT, TRUE, FALSE, ISBLANK, "
    "ISNUMBER, ISTEXT, ISERROR, NA, INDEX, MATCH, XLOOKUP, XMATCH, VLOOKUP, HLOOKUP, CHOOSE, ROW(S), "
    "COLUMN(S), DATE, YEAR, MONTH, DAY, EOMONTH, EDATE, DAYS, WEEKDAY, TEXT, CONCATENATE, CONCAT, "
    "LEFT, RIGHT, MID, LEN, UPPER, LOWER, TRIM, VALUE, NPV, IRR, XNPV, XIRR, PMT, PV, FV, RATE. "
    "Prefer INDEX/MATCH to XLOOKUP (LibreOffice 7.4 cannot compute XLOOKUP)."
)

_CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CAD": "C$", "AUD": "A$"}
_SHEET_NAME_FORBIDDEN = set(":\\/?*[]")


def number_format_code(name: NumberFormatName, currency: str = "USD") -> str:
    """The Excel number format of a format keyword (currency uses the workbook's currency code)."""
    if name == "currency":
        sym = _CURRENCY_SYMBOLS.get(currency, currency + " ")
        return f'"{sym}"#,##0.00_);("{sym}"#,##0.00)'
    return {
        "percent": "0.0%", "number": "#,##0.00", "integer": "#,##0", "date": "yyyy-mm-dd",
        "month": "mmm yyyy",
    }[name]


# --- Errors -----------------------------------------------------------------------------------


class WorkbookError(Exception):
    """A workbook that could not be written (e.g. a result's Parquet file is unreadable)."""


class WorkbookRefused(WorkbookError):
    """A spec that may not be written; `reason` is one sentence naming the sheet, the cell and
    what was refused, meant for the model to fix (the agent turns it into ModelRetry)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- The spec (its field descriptions are the tool's argument schema) -------------------------


def _cell_ref(ref: str, *, what: str) -> tuple[int, int]:
    """(column, row) of a plain cell reference such as "B3"; raises ValueError."""
    area = parse_area(ref) if isinstance(ref, str) and "$" not in ref else None
    if not isinstance(area, tuple) or area[0] != area[2] or area[1] != area[3]:
        raise ValueError(f"{what} must be one cell in A1 style without $ or sheet, e.g. \"B3\" (got {ref!r})")
    return area[0], area[1]


def _checked_text(value: str, limit: int, what: str) -> str:
    if len(value) > limit:
        raise ValueError(f"{what} has {len(value):,} characters; the limit is {limit:,}")
    return value


class CellSpec(BaseModel):
    """One cell of a model sheet."""

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(description='The cell in A1 style, no sheet or $, e.g. "B3".', max_length=10)
    value: float | date | str | None = Field(
        default=None,
        description=(
            "A constant: a number, text, or an ISO date 'YYYY-MM-DD' (a date when number_format is "
            "date or month). Always stored as a literal, never as a formula, even if it starts with '='."
        ),
    )
    formula: str | None = Field(
        default=None,
        max_length=MAX_FORMULA_CHARS,
        description=(
            "An Excel formula starting with '=' over this workbook only, e.g. \"=SUM(B2:B13)\", "
            "\"='MRR data'!G13*(1+Growth)\". Set either value or formula."
        ),
    )
    kind: CellKind | None = Field(
        default=None,
        description=(
            "input: an assumption (blue font on a light fill); formula: black; label: plain text; "
            "header: bold, shaded; total: bold with a top border (formula or value). Default: "
            "formula when a formula is set, input for a number or date, label for text."
        ),
    )
    number_format: NumberFormatName | None = Field(
        default=None,
        description="currency, percent (0.05 shows 5.0%), number (2 decimals), integer, date (2024-12-31), month (Dec 2024).",
    )

    @field_validator("value", mode="before")
    @classmethod
    def _no_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("a value may not be true/false; use 1 or 0, or a formula")
        return v

    @model_validator(mode="after")
    def _shape(self) -> CellSpec:
        self.ref = self.ref.strip().upper()
        col, row = _cell_ref(self.ref, what="ref")
        if col > MODEL_MAX_COLUMN or row > MODEL_MAX_ROW:
            raise ValueError(
                f"{self.ref} is outside a model sheet's area (A1:{get_column_letter(MODEL_MAX_COLUMN)}{MODEL_MAX_ROW})"
            )
        if self.formula is not None and self.value is not None:
            raise ValueError(f"{self.ref}: set either value or formula, not both")
        if self.formula is None and self.value is None:
            raise ValueError(f"{self.ref}: set a value or a formula (leave empty cells out)")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError(f"{self.ref}: a number must be finite")
        if isinstance(self.value, str):
            _checked_text(self.value, MAX_TEXT_CHARS, f"{self.ref}: the text")
        if self.formula is not None and not self.formula.startswith("="):
            raise ValueError(f"{self.ref}: a formula must start with '='")
        if self.kind is None:
            self.kind = "formula" if self.formula is not None else "label" if isinstance(self.value, str) else "input"
        if self.formula is not None and self.kind not in ("formula", "total"):
            raise ValueError(f"{self.ref}: a cell with a formula must be of kind formula or total, not {self.kind}")
        if self.formula is None and self.kind == "formula":
            raise ValueError(f"{self.ref}: kind formula needs a formula")
        return self


def _sheet_name_problem(name: str) -> str | None:
    """Why `name` cannot be a sheet name, or None."""
    if not name or len(name) > MAX_SHEET_NAME_CHARS:
        return f"a sheet name needs 1 to {MAX_SHEET_NAME_CHARS} characters (got {len(name)})"
    if bad := sorted(set(name) & _SHEET_NAME_FORBIDDEN):
        return f"the sheet name {name!r} contains {' '.join(bad)}, which Excel does not allow"
    if "'" in name:  # Excel allows one inside, but the `formulas` engine then computes #REF!
        return f"the sheet name {name!r} may not contain an apostrophe (')"
    if name != name.strip():
        return f"the sheet name {name!r} may not start or end with a space"
    if any(ord(c) < 32 for c in name):
        return f"the sheet name {name!r} contains a control character"
    if name.upper() == "HISTORY":
        return "History is a sheet name Excel reserves"
    return None


class ModelSheet(BaseModel):
    """A sheet of labels, inputs and formulas."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Sheet name: 1-31 characters, none of : \\ / ? * [ ] ', unique in the workbook.", max_length=MAX_SHEET_NAME_CHARS)
    cells: list[CellSpec] = Field(description="The sheet's non-empty cells, any order.", min_length=1, max_length=MAX_MODEL_CELLS)
    column_widths: dict[str, float] = Field(
        default_factory=dict, max_length=MODEL_MAX_COLUMN,
        description='Optional widths in characters by column letter, e.g. {"A": 28}; other columns fit their content.',
    )
    freeze: str | None = Field(default=None, description='Optional: rows above and columns left of this cell stay visible, e.g. "B2".')


class DataSheet(BaseModel):
    """A sheet holding one query result: header in row 1, data from row 2, the result's columns in
    order from column A (a 12-row result fills rows 2-13)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Sheet name: 1-31 characters, none of : \\ / ? * [ ] ', unique in the workbook.", max_length=MAX_SHEET_NAME_CHARS)
    result: str = Field(description='Handle of a query result of this conversation, e.g. "q1".', max_length=40)
    number_formats: dict[str, NumberFormatName] = Field(
        default_factory=dict, max_length=EXCEL_MAX_COLUMNS,
        description='Optional format per result column name, e.g. {"mrr_usd": "currency"}. Dates get a date format anyway.',
    )


class NamedInput(BaseModel):
    """A workbook-wide name for one input cell, usable in any formula."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Letters, digits, _ and . only, starting with a letter or _, e.g. Growth or churn_rate; must not look like a cell (TAX2024).",
        max_length=MAX_NAME_CHARS,
    )
    sheet: str = Field(description="The model sheet holding the input cell.", max_length=MAX_SHEET_NAME_CHARS)
    ref: str = Field(description='The input cell, e.g. "B3" (a cell of kind input on that sheet).', max_length=10)


class ChartSeries(BaseModel):
    """One series of a chart."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(description="Legend text.", max_length=MAX_TITLE_CHARS)
    values: str = Field(description="One column or row of numbers with its sheet, e.g. \"'MRR bridge'!G2:G13\".", max_length=200)


class NativeChart(BaseModel):
    """A native Excel chart over the workbook's own cells."""

    model_config = ConfigDict(extra="forbid")

    sheet: str = Field(description="The sheet the chart is placed on.", max_length=MAX_SHEET_NAME_CHARS)
    kind: Literal["line", "column", "bar"] = Field(description="line, column (vertical bars) or bar (horizontal bars).")
    title: str = Field(max_length=MAX_TITLE_CHARS)
    categories: str = Field(description="X-axis labels: one column or row with its sheet, e.g. \"'MRR bridge'!A2:A13\"; as long as each series.", max_length=200)
    series: list[ChartSeries] = Field(min_length=1, max_length=MAX_SERIES_PER_CHART)
    anchor: str = Field(default="J2", description='Cell at the chart\'s top-left corner, e.g. "J2" (keep it clear of the cells).', max_length=10)
    y_axis_title: str | None = Field(default=None, max_length=MAX_TITLE_CHARS)
    y_number_format: NumberFormatName | None = Field(default=None, description="Number format of the value axis.")


class WorkbookSpec(BaseModel):
    """A workbook: model sheets first, then data sheets, then a Sources sheet added automatically."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(description="Workbook title, e.g. \"MRR bridge 2024\".", min_length=1, max_length=MAX_TITLE_CHARS)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$", description="ISO code for the currency format, e.g. USD.")
    model_sheets: list[ModelSheet] = Field(default_factory=list, max_length=MAX_SHEETS)
    data_sheets: list[DataSheet] = Field(default_factory=list, max_length=MAX_SHEETS)
    named_inputs: list[NamedInput] = Field(default_factory=list, max_length=MAX_NAMED_INPUTS)
    charts: list[NativeChart] = Field(default_factory=list, max_length=MAX_CHARTS)
    cited_results: list[str] = Field(
        default_factory=list, max_length=50,
        description="Handles of further results whose figures you typed into model sheets; listed on the Sources sheet too.",
    )

    @model_validator(mode="after")
    def _some_sheet(self) -> WorkbookSpec:
        if not self.model_sheets and not self.data_sheets:
            raise ValueError("a workbook needs at least one model sheet or data sheet")
        if len(self.model_sheets) + len(self.data_sheets) > MAX_SHEETS:
            raise ValueError(f"a workbook may have at most {MAX_SHEETS} sheets besides Sources")
        return self


# --- What the engine is given and returns -----------------------------------------------------


@dataclass(frozen=True)
class ResultInfo:
    """One kept query result as the workbook engine needs it.

    `parquet_path`: the result file; `datasets_read`: [{"table", "source", "sha256", ...}] the
    query read; `ran_at`: when it ran (aware or naive UTC); `columns`: [{"name", "type"}];
    `row_count`: rows kept in the file."""

    handle: str
    purpose: str
    sql: str
    parquet_path: Path
    datasets_read: list[dict[str, Any]]
    ran_at: datetime
    columns: list[dict[str, str]]
    row_count: int

    @classmethod
    def from_artifact(cls, artifact: Artifact, parquet_path: Path) -> ResultInfo:
        """From a stored query-result Artifact and its file's absolute path."""
        return cls(
            handle=artifact.handle, purpose=artifact.title, sql=artifact.sql or "",
            parquet_path=Path(parquet_path), datasets_read=list(artifact.datasets_read or []),
            ran_at=artifact.created_at, columns=list(artifact.columns or []), row_count=artifact.row_count,
        )


@dataclass
class WorkbookSummary:
    """What `write_workbook` wrote. `sheets` in workbook order (Sources last); `data_rows`: data
    rows per data sheet; `formula_cells`: formula cells in all model sheets; `size_bytes` of the
    file; `notes`: data that could not be kept exactly (cut text, NaN, ...), one sentence each."""

    path: Path
    title: str
    sheets: list[str]
    data_rows: dict[str, int]
    formula_cells: int
    named_inputs: list[str]
    charts: int
    results: list[str]
    size_bytes: int
    notes: list[str] = field(default_factory=list)


# --- Checking ---------------------------------------------------------------------------------


def _name_problem(name: str) -> str | None:
    """Why `name` cannot be a defined name, or None."""
    if not name or len(name) > MAX_NAME_CHARS:
        return f"a name needs 1 to {MAX_NAME_CHARS} characters"
    if not (name[0].isascii() and (name[0].isalpha() or name[0] == "_")):
        return f"the name {name!r} must start with a letter or _"
    if not all(c.isascii() and (c.isalnum() or c in "_.") for c in name):
        return f"the name {name!r} may contain only letters, digits, _ and ."
    upper = name.upper()
    if upper in ("TRUE", "FALSE"):
        return f"{name} is a logical value, not a name"
    if isinstance(parse_area(upper), (tuple, str)):
        return f"the name {name!r} looks like a cell reference"
    if _looks_r1c1(upper):
        return f"the name {name!r} looks like an R1C1 reference"
    return None


def _looks_r1c1(upper: str) -> bool:
    """Whether `upper` reads as an R1C1 reference (R, C, R2, C3, R2C3, RC3, R2C)."""
    i = 0
    if upper[i:i + 1] == "R":
        i += 1
        while i < len(upper) and upper[i].isdigit():
            i += 1
    if upper[i:i + 1] == "C":
        i += 1
        while i < len(upper) and upper[i].isdigit():
            i += 1
    return i == len(upper) and i > 0


@dataclass
class _Plan:
    """A checked spec: the checked formula of every formula cell, keyed by (sheet, ref)."""

    formulas: dict[tuple[str, str], CheckedFormula]
    sheet_names: list[str]
    handles: list[str]


def _where(sheet: str, ref: str | None = None) -> str:
    return f"Sheet {quote_sheet(sheet)}" + (f", cell {ref}" if ref else "")


def _one_d_range(text: str, sheets: list[str], what: str) -> Reference:
    """A sheet-qualified one-column or one-row range for a chart; raises WorkbookRefused."""
    try:
        tokens = Tokenizer("=" + text.strip()).items
    except (TokenizerError, IndexError, ValueError):
        tokens = []
    if len(tokens) != 1 or tokens[0].type != Token.OPERAND or tokens[0].subtype != Token.RANGE:
        raise WorkbookRefused(f"{what} {text!r} must be one range with its sheet, e.g. 'MRR bridge'!B2:B13")
    try:
        checked = check_formula("=" + text.strip(), sheets=sheets)
    except FormulaRefused as exc:
        raise WorkbookRefused(f"{what} {text!r}: {exc.reason}") from None
    ref = checked.references[0]
    if ref.sheet is None or ref.name is not None:
        raise WorkbookRefused(f"{what} {text!r} must be one range with its sheet, e.g. 'MRR bridge'!B2:B13")
    if ref.min_col != ref.max_col and ref.min_row != ref.max_row:
        raise WorkbookRefused(f"{what} {text!r} must be a single column or a single row")
    return ref


def _cycle(formulas: dict[tuple[str, str], CheckedFormula], cells: dict[tuple[str, str], tuple[int, int]]) -> list[str] | None:
    """A circular chain of formula cells (as 'Sheet'!A1 texts, first repeated last), or None."""
    by_sheet: dict[str, dict[int, list[tuple[int, str]]]] = defaultdict(lambda: defaultdict(list))
    canonical: dict[str, str] = {}
    for (sheet, ref), (col, row) in cells.items():
        by_sheet[sheet.upper()][col].append((row, ref))
        canonical[sheet.upper()] = sheet
    for cols in by_sheet.values():
        for rows in cols.values():
            rows.sort()

    def deps(key: tuple[str, str]) -> list[tuple[str, str]]:
        sheet = key[0]
        out = []
        for r in formulas[key].references:
            if r.name is not None:
                continue  # named inputs are input cells, never formulas
            target = (r.sheet or sheet)
            cols = by_sheet.get(target.upper())
            if not cols:
                continue
            for col in range(r.min_col, r.max_col + 1):
                for row, ref in cols.get(col, ()):
                    if r.min_row <= row <= r.max_row:
                        out.append((canonical[target.upper()], ref))
        return out

    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(formulas, WHITE)
    for start in formulas:
        if color[start] != WHITE:
            continue
        stack: list[tuple[tuple[str, str], list[tuple[str, str]]]] = [(start, deps(start))]
        path = [start]
        color[start] = GREY
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                color[node] = BLACK
                continue
            nxt = todo.pop()
            if nxt not in color:
                continue
            if color[nxt] == GREY:
                loop = path[path.index(nxt):] + [nxt]
                return [f"{quote_sheet(s)}!{r}" for s, r in loop]
            if color[nxt] == WHITE:
                color[nxt] = GREY
                path.append(nxt)
                stack.append((nxt, deps(nxt)))
    return None


def _plan(spec: WorkbookSpec, results: Mapping[str, ResultInfo]) -> _Plan:
    """Check `spec` against `results`; returns the checked formulas. Raises WorkbookRefused."""
    names = [s.name for s in spec.model_sheets] + [s.name for s in spec.data_sheets]
    seen: dict[str, str] = {}
    for name in names:
        if problem := _sheet_name_problem(name):
            raise WorkbookRefused(problem)
        if name.upper() == SOURCES_SHEET.upper():
            raise WorkbookRefused(f"the sheet name {SOURCES_SHEET} is reserved for the sheet listing the sources")
        if name.upper() in seen:
            raise WorkbookRefused(f"two sheets are named {name!r} (sheet names must be unique, ignoring case)")
        seen[name.upper()] = name
    if len(names) > MAX_SHEETS:
        raise WorkbookRefused(f"a workbook may have at most {MAX_SHEETS} sheets besides Sources")

    known = ", ".join(sorted(results)) or "none yet: run a query first"
    data_cells = 0
    for ds in spec.data_sheets:
        info = results.get(ds.result)
        if info is None:
            raise WorkbookRefused(f"{_where(ds.name)}: there is no result {ds.result!r} in this conversation (results: {known})")
        if info.row_count > MAX_DATA_ROWS:
            raise WorkbookRefused(
                f"{_where(ds.name)}: result {ds.result} has {info.row_count:,} rows; an Excel sheet holds at most "
                f"{MAX_DATA_ROWS:,} below its header. Aggregate or filter in SQL first."
            )
        if len(info.columns) > EXCEL_MAX_COLUMNS:
            raise WorkbookRefused(f"{_where(ds.name)}: result {ds.result} has {len(info.columns):,} columns; Excel holds {EXCEL_MAX_COLUMNS:,}")
        columns = [c["name"] for c in info.columns]
        for col in ds.number_formats:
            if col not in columns:
                raise WorkbookRefused(f"{_where(ds.name)}: number_formats names {col!r}, which is not a column of {ds.result} (columns: {', '.join(columns)})")
        data_cells += max(info.row_count, 0) * len(columns)
    if data_cells > MAX_DATA_CELLS:
        raise WorkbookRefused(
            f"the data sheets would hold {data_cells:,} cells; a workbook may hold at most {MAX_DATA_CELLS:,}. "
            "Aggregate in SQL or select fewer columns."
        )
    for handle in spec.cited_results:
        if handle not in results:
            raise WorkbookRefused(f"cited_results names {handle!r}, which is not a result of this conversation (results: {known})")

    # Model cells, named inputs.
    cells: dict[tuple[str, str], CellSpec] = {}
    positions: dict[tuple[str, str], tuple[int, int]] = {}
    for ms in spec.model_sheets:
        for c in ms.cells:
            if (ms.name, c.ref) in cells:
                raise WorkbookRefused(f"{_where(ms.name, c.ref)}: the cell is defined twice")
            cells[(ms.name, c.ref)] = c
        if ms.freeze is not None:
            try:
                _cell_ref(ms.freeze.upper(), what="freeze")
            except ValueError as exc:
                raise WorkbookRefused(f"{_where(ms.name)}: {exc}") from None
        for letter, width in ms.column_widths.items():
            area = parse_area(f"{letter.upper()}1")
            if not isinstance(area, tuple) or not letter.isalpha() or area[0] > MODEL_MAX_COLUMN:
                raise WorkbookRefused(f"{_where(ms.name)}: column_widths key {letter!r} is not a column letter such as A or AB")
            if not 1 <= width <= 255:
                raise WorkbookRefused(f"{_where(ms.name)}: the width of column {letter} must be 1 to 255 characters")
    model_names = {ms.name.upper(): ms.name for ms in spec.model_sheets}
    defined: dict[str, str] = {}
    for ni in spec.named_inputs:
        if problem := _name_problem(ni.name):
            raise WorkbookRefused(f"named input {ni.name!r}: {problem}")
        if ni.name.upper() in defined:
            raise WorkbookRefused(f"the named input {ni.name!r} is defined twice (names ignore case)")
        sheet = model_names.get(ni.sheet.upper())
        if sheet is None:
            raise WorkbookRefused(f"named input {ni.name}: {ni.sheet!r} is not a model sheet of this workbook")
        ref = ni.ref.strip().upper()
        target = cells.get((sheet, ref))
        if target is None or target.kind != "input":
            raise WorkbookRefused(f"named input {ni.name}: {_where(sheet, ref)} must be a cell of kind input")
        defined[ni.name.upper()] = ni.name

    # Formulas, then cycles.
    checked: dict[tuple[str, str], CheckedFormula] = {}
    for (sheet, ref), c in cells.items():
        if c.formula is None:
            continue
        try:
            checked[(sheet, ref)] = check_formula(c.formula, sheets=names, names=defined.values())
        except FormulaRefused as exc:
            raise WorkbookRefused(f"{_where(sheet, ref)}: {exc.reason} (formula {c.formula[:200]})") from None
        positions[(sheet, ref)] = _cell_ref(ref, what="ref")
    loop = _cycle(checked, positions)
    if loop:
        raise WorkbookRefused(f"circular reference: {' -> '.join(loop)}; a formula may not depend on itself")

    # Charts.
    for chart in spec.charts:
        if chart.sheet.upper() not in seen:
            raise WorkbookRefused(f"chart {chart.title!r}: there is no sheet {chart.sheet!r} to place it on")
        try:
            _cell_ref(chart.anchor.upper(), what="anchor")
        except ValueError as exc:
            raise WorkbookRefused(f"chart {chart.title!r}: {exc}") from None
        cats = _one_d_range(chart.categories, names, f"chart {chart.title!r}: categories")
        n = max(cats.max_col - cats.min_col, cats.max_row - cats.min_row) + 1
        for s in chart.series:
            ref = _one_d_range(s.values, names, f"chart {chart.title!r}: series {s.title!r}")
            m = max(ref.max_col - ref.min_col, ref.max_row - ref.min_row) + 1
            if m != n:
                raise WorkbookRefused(f"chart {chart.title!r}: series {s.title!r} has {m} values but the categories have {n}")

    handles = list(dict.fromkeys([ds.result for ds in spec.data_sheets] + list(spec.cited_results)))
    return _Plan(checked, [s.name for s in spec.model_sheets] + [s.name for s in spec.data_sheets] + [SOURCES_SHEET], handles)


def check_workbook(spec: WorkbookSpec, results: Mapping[str, ResultInfo]) -> None:
    """Check a spec before anything is written: sheet names (valid, unique, not Sources), result
    handles (known, within Excel's row limit and `MAX_DATA_CELLS`), number-format columns, model
    cells (each once), named inputs (valid names on input cells), every formula (allow-listed
    functions, references only to this workbook's sheets and named inputs, no external links,
    DDE, whole columns, cycles), charts (ranges on known sheets, matching lengths).

    `results`: {handle: ResultInfo} of the conversation. Raises WorkbookRefused with one sentence
    naming the sheet, the cell and what was refused."""
    _plan(spec, results)


# --- Writing ----------------------------------------------------------------------------------

_INPUT_FONT = Font(color="FF0000FF")
_INPUT_FILL = PatternFill("solid", fgColor="FFFFF2CC")
_FORMULA_FONT = Font(color="FF000000")
_BOLD = Font(bold=True)
_HEADER_FILL = PatternFill("solid", fgColor="FFD9E1F2")
_HEADER_BORDER = Border(bottom=Side(style="thin"))
_TOTAL_FONT = Font(bold=True, color="FF000000")
_TOTAL_BORDER = Border(top=Side(style="thin"))
_WRAP_TOP = Alignment(wrap_text=True, vertical="top")
_TOP = Alignment(vertical="top")
_MAX_EXACT_INT = 2**53
_DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
_EXCEL_FIRST_DATE = date(1900, 3, 1)  # before this, Excel's 1900 leap-year bug shifts serials


def _declare_size(ws: Any, max_col: int, max_row: int) -> None:
    """Have the sheet's <dimension> written (before its first row). openpyxl writes it for a
    write-only sheet only if the sheet has `calculate_dimension`; without it, every reader in
    read-only mode (the preview, pandas) parses the whole sheet just to learn its size."""
    ref = f"A1:{get_column_letter(max(max_col, 1))}{max(max_row, 1)}"
    ws.calculate_dimension = lambda: ref


def _text_cell(ws: Any, text: str) -> WriteOnlyCell:
    """A cell that holds `text` as text, whatever it starts with ('=', '+', '@', '#N/A', ...)."""
    cell = WriteOnlyCell(ws, value=text)
    if cell.data_type != "s":  # openpyxl stores "=..." as a formula and "#N/A" as an error
        cell.data_type = "s"
    return cell


class _Notes:
    """Counts of data values that could not be kept exactly, per sheet."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, sheet: str, what: str) -> None:
        self.counts[(sheet, what)] += 1

    def sentences(self) -> list[str]:
        texts = {
            "nan": "empty cells where the result had NaN or infinity (Excel has no such numbers)",
            "cut": f"text values cut to Excel's {EXCEL_MAX_TEXT_CHARS:,} characters",
            "illegal": "text values with control characters removed (Excel cannot store them)",
            "bigint": "whole numbers beyond 2^53 stored as text to keep every digit",
            "tz": "time-zone-aware timestamps written as UTC without zone (Excel has no time zones)",
            "olddate": "dates before 1900-03-01 written as ISO text (Excel cannot show them)",
            "other": "values of a nested or binary type written as text",
        }
        return [f"{quote_sheet(sheet)}: {n:,} {texts[what]}." for (sheet, what), n in self.counts.items()]


def _clean_text(value: str, sheet: str, notes: _Notes) -> str:
    if ILLEGAL_CHARACTERS_RE.search(value):
        value = ILLEGAL_CHARACTERS_RE.sub("", value)
        notes.add(sheet, "illegal")
    if len(value) > EXCEL_MAX_TEXT_CHARS:
        value = value[:EXCEL_MAX_TEXT_CHARS]
        notes.add(sheet, "cut")
    return value


def _data_value(ws: Any, value: Any, fmt: str | None, sheet: str, notes: _Notes) -> Any:
    """One result value as what a write-only row takes: a plain number/bool/None, or a cell
    (text kept as text, dates with a date format, formatted numbers)."""
    if value is None:
        return None
    if isinstance(value, str):
        return _text_cell(ws, _clean_text(value, sheet, notes))
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_EXACT_INT:
            notes.add(sheet, "bigint")
            return _text_cell(ws, str(value))
        plain: Any = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            notes.add(sheet, "nan")
            return None
        plain = value
    elif isinstance(value, Decimal):
        if not value.is_finite():
            notes.add(sheet, "nan")
            return None
        plain = float(value)
    elif isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
            notes.add(sheet, "tz")
        if value.date() < _EXCEL_FIRST_DATE:
            notes.add(sheet, "olddate")
            return _text_cell(ws, value.isoformat(sep=" "))
        plain = value
        fmt = fmt or _DATETIME_FORMAT
    elif isinstance(value, date):
        if value < _EXCEL_FIRST_DATE:
            notes.add(sheet, "olddate")
            return _text_cell(ws, value.isoformat())
        plain = value
        fmt = fmt or "yyyy-mm-dd"
    elif isinstance(value, (dtime, timedelta)):
        plain = value
    elif isinstance(value, (bytes, bytearray)):
        notes.add(sheet, "other")
        return _text_cell(ws, f"<{len(value)} bytes>")
    else:
        notes.add(sheet, "other")
        return _text_cell(ws, _clean_text(json.dumps(value, default=str, ensure_ascii=False), sheet, notes))
    if fmt is None:
        return plain
    cell = WriteOnlyCell(ws, value=plain)
    cell.number_format = fmt
    return cell


def _default_format(arrow_type: pa.DataType) -> str | None:
    """The number format a column of this type gets unless the spec names one."""
    if pa.types.is_decimal(arrow_type):
        scale = min(max(arrow_type.scale, 0), 6)
        return "#,##0" + ("." + "0" * scale if scale else "")
    if pa.types.is_date(arrow_type):
        return "yyyy-mm-dd"
    if pa.types.is_timestamp(arrow_type):
        return _DATETIME_FORMAT
    return None


def _display_width(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, (datetime,)):
        return 19
    if isinstance(value, date):
        return 10
    if isinstance(value, (float, Decimal)):
        return len(f"{float(value):,.2f}") if math.isfinite(float(value)) else 3
    text = str(value)
    return max((len(line) for line in text.splitlines()), default=0)


def _width(header: str, sample: list[Any], lo: int = 8, hi: int = 60) -> float:
    return float(min(hi, max(lo, len(header) + 3, *(w + 2 for w in map(_display_width, sample)))))


def _normalised_batch(batch: pa.RecordBatch) -> list[list[Any]]:
    """The batch's columns as Python lists (nanosecond timestamps cut to microseconds)."""
    cols = []
    for col in batch.columns:
        if pa.types.is_timestamp(col.type) and col.type.unit == "ns":
            col = col.cast(pa.timestamp("us", tz=col.type.tz), safe=False)
        elif pa.types.is_duration(col.type) and col.type.unit == "ns":
            col = col.cast(pa.duration("us"), safe=False)
        cols.append(col.to_pylist())
    return cols


def _write_data_sheet(wb: Workbook, ds: DataSheet, info: ResultInfo, currency: str, notes: _Notes) -> int:
    """Append one data sheet; returns its data row count. Raises WorkbookError/WorkbookRefused."""
    ws = wb.create_sheet(ds.name)
    try:
        pf = pq.ParquetFile(info.parquet_path)
    except (OSError, pa.ArrowException) as exc:
        raise WorkbookError(f"the file of result {info.handle} could not be read ({type(exc).__name__}: {exc})") from exc
    with pf:
        schema = pf.schema_arrow
        rows = pf.metadata.num_rows
        if rows > MAX_DATA_ROWS:
            raise WorkbookRefused(f"{_where(ds.name)}: result {info.handle} has {rows:,} rows; an Excel sheet holds at most {MAX_DATA_ROWS:,}")
        names = list(schema.names)
        formats = [
            number_format_code(ds.number_formats[n], currency) if n in ds.number_formats else _default_format(t)
            for n, t in zip(names, schema.types)
        ]
        batches = pf.iter_batches(batch_size=10_000)
        try:
            first = next(batches, None)
            first_cols = _normalised_batch(first) if first is not None else [[] for _ in names]
            for j, name in enumerate(names):
                ws.column_dimensions[get_column_letter(j + 1)].width = _width(name, first_cols[j][:200])
            ws.freeze_panes = "A2"
            _declare_size(ws, len(names), rows + 1)
            if names:
                ws.auto_filter.ref = f"A1:{get_column_letter(len(names))}{rows + 1}"
            header = []
            for name in names:
                cell = _text_cell(ws, _clean_text(str(name), ds.name, notes))
                cell.font = _BOLD
                cell.fill = _HEADER_FILL
                cell.border = _HEADER_BORDER
                header.append(cell)
            ws.append(header)
            written = 0
            cols = first_cols
            while True:
                for row in zip(*cols):
                    ws.append([_data_value(ws, v, formats[j], ds.name, notes) for j, v in enumerate(row)])
                    written += 1
                batch = next(batches, None)
                if batch is None:
                    break
                cols = _normalised_batch(batch)
        except (OSError, pa.ArrowException) as exc:
            raise WorkbookError(f"the file of result {info.handle} could not be read ({type(exc).__name__}: {exc})") from exc
    return written


def _model_value(c: CellSpec) -> Any:
    """A model cell's literal value as written (ISO text becomes a date for date formats)."""
    v = c.value
    if isinstance(v, str) and c.number_format in ("date", "month"):
        try:
            return date.fromisoformat(v.strip())
        except ValueError:
            return v
    return v


def _write_model_sheet(wb: Workbook, ms: ModelSheet, plan: _Plan, currency: str) -> int:
    """Append one model sheet; returns its formula cell count."""
    ws = wb.create_sheet(ms.name)
    grid: dict[int, dict[int, CellSpec]] = defaultdict(dict)
    widths: dict[int, int] = defaultdict(int)
    for c in ms.cells:
        col, row = _cell_ref(c.ref, what="ref")
        grid[row][col] = c
        if isinstance(c.value, str) and c.kind in ("label", "header"):
            widths[col] = max(widths[col], _display_width(c.value) + (3 if c.kind == "header" else 2))
        else:
            widths[col] = max(widths[col], 14)
    explicit = {parse_area(f"{k.upper()}1")[0]: v for k, v in ms.column_widths.items()}  # type: ignore[index]
    for col in sorted(set(widths) | set(explicit)):
        ws.column_dimensions[get_column_letter(col)].width = float(explicit.get(col, min(50, max(10, widths[col]))))
    if ms.freeze:
        ws.freeze_panes = ms.freeze.upper()
    _declare_size(ws, max(max(r) for r in grid.values()), max(grid))
    formulas = 0
    for row in range(1, max(grid) + 1):
        cells_in_row = grid.get(row, {})
        out: list[Any] = [None] * (max(cells_in_row) if cells_in_row else 0)
        for col, c in cells_in_row.items():
            if c.formula is not None:
                cell = WriteOnlyCell(ws, value=plan.formulas[(ms.name, c.ref)].text)
                if cell.data_type != "f":  # pragma: no cover - a checked formula always starts with '='
                    raise WorkbookError(f"{_where(ms.name, c.ref)}: the formula was not stored as a formula")
                formulas += 1
            else:
                value = _model_value(c)
                if isinstance(value, str):
                    cell = _text_cell(ws, ILLEGAL_CHARACTERS_RE.sub("", value))
                else:
                    cell = WriteOnlyCell(ws, value=value)
            if c.kind == "input":
                cell.font, cell.fill = _INPUT_FONT, _INPUT_FILL
            elif c.kind == "formula":
                cell.font = _FORMULA_FONT
            elif c.kind == "header":
                cell.font, cell.fill, cell.border = _BOLD, _HEADER_FILL, _HEADER_BORDER
            elif c.kind == "total":
                cell.font, cell.border = _TOTAL_FONT, _TOTAL_BORDER
            if c.number_format:
                cell.number_format = number_format_code(c.number_format, currency)
            elif isinstance(cell.value, date) and not is_date_format(cell.number_format):
                cell.number_format = "yyyy-mm-dd"
            out[col - 1] = cell
        ws.append(out)
    return formulas


SOURCES_COLUMNS = ("Handle", "Purpose", "Used on sheet", "Rows", "Ran at (UTC)", "Tables read", "Source files", "SHA-256", "SQL")
"""The Sources sheet's header (row 1); one row per result used, from row 2. Tables, source files
and hashes of a result that read several datasets are listed one per line, in the same order."""


def _write_sources(wb: Workbook, spec: WorkbookSpec, plan: _Plan, results: Mapping[str, ResultInfo], notes: _Notes) -> None:
    ws = wb.create_sheet(SOURCES_SHEET)
    for j, width in enumerate((8, 40, 20, 10, 20, 24, 30, 66, 90), start=1):
        ws.column_dimensions[get_column_letter(j)].width = width
    ws.freeze_panes = "A2"
    _declare_size(ws, len(SOURCES_COLUMNS), len(plan.handles) + 1)
    header = []
    for name in SOURCES_COLUMNS:
        cell = _text_cell(ws, name)
        cell.font, cell.fill, cell.border = _BOLD, _HEADER_FILL, _HEADER_BORDER
        header.append(cell)
    ws.append(header)
    for handle in plan.handles:
        info = results[handle]
        used_on = ", ".join(ds.name for ds in spec.data_sheets if ds.result == handle) or "(figures cited in the model)"
        ran_at = info.ran_at
        if ran_at.tzinfo is not None:
            ran_at = ran_at.astimezone(timezone.utc).replace(tzinfo=None)
        ran_cell = WriteOnlyCell(ws, value=ran_at)
        ran_cell.number_format = _DATETIME_FORMAT
        datasets = info.datasets_read or []
        texts = [
            handle, info.purpose, used_on, None, None,
            "\n".join(str(d.get("table", "")) for d in datasets),
            "\n".join(str(d.get("source", "") or "") for d in datasets),
            "\n".join(str(d.get("sha256", "") or "") for d in datasets),
            info.sql,
        ]
        row: list[Any] = []
        for j, text in enumerate(texts):
            if j == 3:
                row.append(WriteOnlyCell(ws, value=int(info.row_count)))
            elif j == 4:
                row.append(ran_cell)
            else:
                cell = _text_cell(ws, _clean_text(str(text or ""), SOURCES_SHEET, notes))
                cell.alignment = _WRAP_TOP if j in (1, 5, 6, 7, 8) else _TOP
                row.append(cell)
        ws.append(row)


def _add_chart(sheets: dict[str, Any], chart: NativeChart, names: list[str], currency: str) -> None:
    def ref_of(text: str) -> ChartReference:
        r = _one_d_range(text, names, "chart range")
        canonical = next(n for n in names if n.upper() == (r.sheet or "").upper())
        return ChartReference(sheets[canonical], min_col=r.min_col, min_row=r.min_row, max_col=r.max_col, max_row=r.max_row)

    if chart.kind == "line":
        obj: Any = LineChart()
    else:
        obj = BarChart()
        obj.type = "bar" if chart.kind == "bar" else "col"
    obj.title = chart.title
    obj.width, obj.height = 18, 9  # cm
    for s in chart.series:
        obj.series.append(Series(ref_of(s.values), title=s.title))
    obj.set_categories(ref_of(chart.categories))
    if chart.y_axis_title:
        obj.y_axis.title = chart.y_axis_title
    if chart.y_number_format:
        obj.y_axis.number_format = number_format_code(chart.y_number_format, currency)
        obj.y_axis.majorGridlines = obj.y_axis.majorGridlines
    obj.x_axis.delete = False  # openpyxl 3.1 hides axes unless told otherwise
    obj.y_axis.delete = False
    target = next(n for n in names if n.upper() == chart.sheet.upper())
    sheets[target].add_chart(obj, chart.anchor.upper())


def _discard(wb: Workbook) -> None:
    """Close a write-only workbook that will not be saved and remove the temporary files its
    sheets were streamed to (openpyxl would otherwise keep them until the process exits)."""
    for ws in wb.worksheets:
        try:
            ws.close()
        except Exception:  # noqa: BLE001 - already closed or saved
            pass
        writer = getattr(ws, "_writer", None)
        if writer is not None:
            try:
                writer.cleanup()
            except Exception:  # noqa: BLE001 - already removed
                pass


def write_workbook(spec: WorkbookSpec, results: Mapping[str, ResultInfo], path: Path | str) -> WorkbookSummary:
    """Check `spec` (as `check_workbook`) and write it as an .xlsx at `path`.

    Sheets in order: model sheets, data sheets, Sources. Data sheets follow DATA_SHEET_LAYOUT
    (bold frozen header with a filter, sized columns, values typed: text always text, DECIMAL as
    a number, dates with a date format). Model cells are styled by kind (inputs blue on a light
    fill, formulas black, headers bold and shaded, totals bold with a top border) and formatted by
    their number_format. Named inputs become workbook-wide defined names; charts are native.

    The file appears at `path` only when complete (written to a temporary file in the same folder,
    then renamed over `path`): on any failure nothing is left behind and an existing file at
    `path` is untouched. Raises WorkbookRefused (the spec) or WorkbookError (a result's file)."""
    plan = _plan(spec, results)
    path = Path(path)
    wb = Workbook(write_only=True)
    wb.properties.title = spec.title
    wb.properties.creator = "CFO Desk"
    notes = _Notes()
    formula_cells = 0
    data_rows: dict[str, int] = {}
    tmp: Path | None = None
    try:
        sheets: dict[str, Any] = {}
        for ms in spec.model_sheets:
            formula_cells += _write_model_sheet(wb, ms, plan, spec.currency)
            sheets[ms.name] = wb[ms.name]
        for ds in spec.data_sheets:
            data_rows[ds.name] = _write_data_sheet(wb, ds, results[ds.result], spec.currency, notes)
            sheets[ds.name] = wb[ds.name]
        _write_sources(wb, spec, plan, results, notes)
        names = [n for n in plan.sheet_names if n != SOURCES_SHEET]
        for chart in spec.charts:
            _add_chart(sheets, chart, names, spec.currency)
        model_names = {ms.name.upper(): ms.name for ms in spec.model_sheets}
        for ni in spec.named_inputs:
            sheet = model_names[ni.sheet.upper()]
            col, row = _cell_ref(ni.ref.strip().upper(), what="ref")
            wb.defined_names[ni.name] = DefinedName(ni.name, attr_text=f"{quote_sheet(sheet)}!${get_column_letter(col)}${row}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem[:40]}.", suffix=".xlsx.tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        wb.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _discard(wb)
        raise
    return WorkbookSummary(
        path=path, title=spec.title, sheets=plan.sheet_names, data_rows=data_rows, formula_cells=formula_cells,
        named_inputs=[ni.name for ni in spec.named_inputs], charts=len(spec.charts), results=plan.handles,
        size_bytes=path.stat().st_size, notes=notes.sentences(),
    )


# --- Preview ----------------------------------------------------------------------------------


@dataclass
class SheetPreview:
    """The top-left corner of one sheet: `rows[i][j]` is the value of cell (row i+1, column j+1),
    formula cells holding their computed value (None when not computed); `formulas` maps cell refs
    ("G13") to their formula text; `more_rows`/`more_cols` say the sheet goes on beyond."""

    name: str
    rows: list[list[Any]]
    formulas: dict[str, str]
    more_rows: bool
    more_cols: bool

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame indexed by Excel row number, columns named by letter."""
        import pandas as pd

        width = max((len(r) for r in self.rows), default=0)
        return pd.DataFrame(
            [r + [None] * (width - len(r)) for r in self.rows],
            index=range(1, len(self.rows) + 1),
            columns=[get_column_letter(j + 1) for j in range(width)],
            dtype=object,
        )


@dataclass
class WorkbookPreview:
    """A written workbook read back for display. `computed` is True when the `formulas` engine
    computed the formula cells; otherwise `engine_note` says why not (too large, or the engine
    failed on this workbook) and formula cells show None."""

    sheets: list[SheetPreview]
    computed: bool
    engine_note: str | None = None


_ENGINE_LOCK = threading.Lock()  # one computation at a time: CPU-bound, and `formulas` keeps global state


class _QuietProgress:
    """Stands in for tqdm inside `formulas` (it draws a progress bar on stderr for every model)."""

    total = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _QuietProgress:
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def refresh(self) -> None:
        pass


def _compute(path: Path) -> dict[tuple[str, str], Any]:
    """{(SHEET NAME UPPER, "B4"): value} of every cell the `formulas` engine computed."""
    import formulas
    import formulas.excel as fx
    import schedula as sh
    from formulas.tokens.operand import XlError

    if getattr(fx, "tqdm", None) is not None and not isinstance(getattr(fx, "tqdm"), types.SimpleNamespace):
        fx.tqdm = types.SimpleNamespace(tqdm=_QuietProgress)  # this module's name only, not tqdm itself
    with _ENGINE_LOCK:
        solution = formulas.ExcelModel().loads(str(path)).finish().calculate()
    out: dict[tuple[str, str], Any] = {}
    for key, ranges in solution.items():
        ref = str(key)
        if "!" not in ref or ":" in ref.rsplit("!", 1)[1]:
            continue
        book_sheet, cell = ref.rsplit("!", 1)
        sheet = book_sheet.strip("'").split("]", 1)[-1].replace("''", "'")
        try:
            value = ranges.value[0][0]
        except Exception:  # noqa: BLE001 - a range the engine could not resolve
            continue
        if value is sh.EMPTY:
            value = None
        elif isinstance(value, XlError):
            value = str(value)
        elif hasattr(value, "item"):
            value = value.item()
        out[(sheet.upper(), cell.replace("$", "").upper())] = value
    return out


def preview_workbook(
    path: Path | str,
    *,
    max_rows: int = PREVIEW_MAX_ROWS,
    max_cols: int = PREVIEW_MAX_COLS,
    engine_max_cells: int = PREVIEW_ENGINE_MAX_CELLS,
) -> WorkbookPreview:
    """Read a workbook back for display: per sheet the first `max_rows` x `max_cols` cells, the
    formula behind each formula cell, and formula values computed by the `formulas` engine.

    Bounded work: sheets are read only as far as the preview window, and the engine runs only
    when the workbook has at most `engine_max_cells` filled cells (counting stops there). When
    the engine is skipped or fails, `computed` is False and `engine_note` says why; this never
    raises for an engine failure. Raises OSError / openpyxl errors if the file is unreadable."""
    path = Path(path)
    wb = load_workbook(path, read_only=True)
    try:
        sheets: list[SheetPreview] = []
        date_cells: set[tuple[str, str]] = set()
        any_formula = False
        for ws in wb.worksheets:
            rows: list[list[Any]] = []
            formulas_: dict[str, str] = {}
            more_rows = more_cols = False
            for r, row in enumerate(ws.iter_rows(min_row=1, max_row=max_rows + 1, max_col=max_cols + 1), start=1):
                if r > max_rows:
                    more_rows = any(c.value is not None for c in row)
                    break
                values, used = [], 0
                for j, c in enumerate(row, start=1):
                    if j > max_cols:
                        more_cols = more_cols or c.value is not None
                        break
                    v = c.value
                    if c.data_type == "f":
                        ref = f"{get_column_letter(j)}{r}"
                        formulas_[ref] = str(v)
                        if is_date_format(c.number_format or "General"):
                            date_cells.add((ws.title.upper(), ref))
                        v, used = None, j  # computed below
                    elif v is not None:
                        used = j
                    values.append(v)
                rows.append(values[:used])
            any_formula = any_formula or bool(formulas_)
            sheets.append(SheetPreview(ws.title, rows, formulas_, more_rows, more_cols))
        if not any_formula:
            return WorkbookPreview(sheets, computed=True)
        filled = 0
        for ws in wb.worksheets:
            for row in ws.iter_rows(values_only=True):
                filled += sum(v is not None for v in row)
                if filled > engine_max_cells:
                    break
            if filled > engine_max_cells:
                break
    finally:
        wb.close()
    if filled > engine_max_cells:
        return WorkbookPreview(
            sheets, computed=False,
            engine_note=(f"Formula values are not computed in the preview: the workbook has over {engine_max_cells:,} "
                         "filled cells. Open it in Excel or LibreOffice to see them."),
        )
    try:
        values = _compute(path)
    except Exception as exc:  # noqa: BLE001 - any engine failure becomes a note, never an error
        return WorkbookPreview(
            sheets, computed=False,
            engine_note=f"The formula engine could not compute this workbook ({type(exc).__name__}: {str(exc)[:300]}).",
        )
    for sp in sheets:
        for ref, _ in sp.formulas.items():
            key = (sp.name.upper(), ref)
            value = values.get(key)
            if key in date_cells and isinstance(value, (int, float)) and not isinstance(value, bool):
                try:
                    value = from_excel(value)
                except (ValueError, OverflowError):
                    pass
            area = parse_area(ref)
            col, row = area[0], area[1]  # type: ignore[index]
            while len(sp.rows) < row:
                sp.rows.append([])
            cells = sp.rows[row - 1]
            if len(cells) < col:
                cells.extend([None] * (col - len(cells)))
            cells[col - 1] = value
    return WorkbookPreview(sheets, computed=True)


def preview_path(workbook_path: Path) -> Path:
    """Where a workbook's preview is kept: `<name>.preview.json` beside it. The agent computes it
    once, when the workbook is built (`preview_json`), so pages never run the formula engine."""
    return Path(workbook_path).with_suffix(".preview.json")


def preview_json(preview: WorkbookPreview) -> dict[str, Any]:
    """A workbook preview as JSON-able data: {"computed", "engine_note", "sheets": [{"name",
    "rows", "formulas", "more_rows", "more_cols"}]}; write it with `json.dumps(..., default=str)`
    (dates and other values become text)."""
    return {
        "computed": preview.computed,
        "engine_note": preview.engine_note,
        "sheets": [
            {"name": sh.name, "rows": sh.rows, "formulas": sh.formulas, "more_rows": sh.more_rows, "more_cols": sh.more_cols}
            for sh in preview.sheets
        ],
    }
