"""Charts for answers (issue 9): a structured spec the model fills, checked against a kept query
result, drawn with Altair (Vega-Lite) and exported to PNG / SVG with vl-convert, offline.

The flow (the lead's `make_chart` tool, and every later re-render of the artifact):
1. `check_chart(spec, columns, row_count)`: the spec against the result's columns and DuckDB types,
   before any data is read. Returns the spec normalised (exact column names, the currency filled in).
2. `chart_data(spec, parquet_path)`: reads only the spec's columns of the kept Parquet result (at
   most `MAX_CHART_ROWS` rows), applies the rules that need the values (categories, series,
   duplicates, percent scale, the waterfall's running total) and returns `ChartData` with notes.
3. `build_chart(spec, data)`: an Altair chart for `st.altair_chart` (inline data only).
4. `chart_png(chart)` / `chart_svg(chart)`: downloads, rendered by vl-convert with no network.
Every rule that refuses raises `ChartRefused(reason)`; the reason is written for the model (send it
back as `ModelRetry`). Re-rendering an artifact is steps 2-3 on the kept file: SQL never runs again.

Rules (also in the field descriptions the model reads):
- Marks: bar, stacked_bar (segments = series), line, area (stacked when there are series, except
  percent), scatter (numeric or date x; no series), waterfall (see below). A bar with series draws
  grouped bars side by side.
- y is always a numeric column. x may be text, a number, a DATE or a TIMESTAMP. series is any plain
  column; its values become coloured series.
- x_format "auto": a date column whose values are all the first (or all the last) day of their
  month reads as months, other dates as days; numbers are categories for bars and waterfalls and a
  numeric scale for line, area and scatter; text is categories. Waterfall x is always labels.
  "month" draws Jan 2024 style labels (`timeUnit` utcyearmonth, `%b %Y`; dates are truncated to
  their month), "date" draws days (`%Y-%m-%d`). Dates are handed to Vega as UTC (ISO dates, or
  timestamps with a Z), with UTC time units, so a month never shifts in the viewer's time zone.
- Bars are sums: rows with the same x (and series) are added up. More than `MAX_CATEGORIES`
  categories on a category x: the largest `MAX_CATEGORIES - 1` (by absolute total) are kept and the
  rest summed into "Other" (drawn last). More than `MAX_SERIES` series on a bar: likewise. A sum of
  percentages means nothing, so a percent bar chart with too many categories or series, or with
  two rows for one bar, is refused. Time axes on bars are never folded.
- Lines and areas: at most `MAX_SERIES` series (refused beyond: a line cannot be summed into
  "Other"), and one row per x and series (refused otherwise: a forgotten series or GROUP BY).
- Sort: "none" keeps the result's row order of categories (time and number axes run in order);
  "x" / "-x" by the x value; "y" / "-y" by the bar's total. Lines, areas and scatters on a time or
  number axis take only "none" or "x"; a waterfall takes only "none" (its order is the bridge).
- Percent: values are fractions (0.052 = 5.2%) or points (5.2 = 5.2%). `percent_base` says which;
  "auto" reads a result whose values all lie within ±1 as fractions and anything else as points
  (divided by 100 for drawing, with a note). Axis `.1~%`, tooltips `.2%`.
- Currency: the ISO code from `currency`, else from the y column's name (mrr_usd → USD), else none
  (plain amounts, with a note). USD axes read `$,.0f` (`$,.2f` when every value is under 100);
  other currencies `,.0f` with the code in the axis title; tooltips keep cents.
- Waterfall: one row per step, in bridge order: x = the step's label (distinct), y = its amount.
  Rows whose label is in `totals` are totals, drawn from zero to their amount, and the running
  total restarts from them; every other row is a change drawn from the running total before it to
  the total after it (green up, red down). Without `totals`, the first and the last row are the
  totals (start, changes..., end). A total that differs by a cent or more from the running total
  that reaches it gets a note (the bridge does not tie out); it is still drawn at its own amount.
- Limits: `MAX_CHART_ROWS` rows per chart (a larger result is refused by check_chart: aggregate or
  sample in SQL; chart_data reads at most that many and notes a cut), `MAX_CATEGORIES`,
  `MAX_SERIES`, `MAX_WATERFALL_STEPS`, `MAX_TITLE_CHARS`, `MAX_LABEL_CHARS`, `MAX_VALUE_LABEL_CHARS`.

Untrusted text (titles, labels, column names and every category value) reaches Vega only as plain
strings: in data values, titles and the sort list. Fields are renamed to fixed names (x, y, series),
so a column name is never parsed as a field path, and no format or expression comes from text.
The spec has no `url`, `href`, image mark or `usermeta`; `chart_png` / `chart_svg` check that
before rendering (`assert_offline`) and call vl-convert with `allowed_base_urls=[]`. Checked on this
machine (vl-convert 1.9): by default it fetches a `data.url` (refused with `allowed_base_urls=[]`)
and fetches an image mark's URL for PNG even with `allowed_base_urls=[]` — hence the spec check.
Fonts come from the system (no font is downloaded); `$schema` is never fetched.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import altair as alt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import vl_convert as vlc
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "CHART_HEIGHT",
    "EXPORT_WIDTH",
    "MAX_CATEGORIES",
    "MAX_CHART_ROWS",
    "MAX_LABEL_CHARS",
    "MAX_SERIES",
    "MAX_TITLE_CHARS",
    "MAX_VALUE_LABEL_CHARS",
    "MAX_WATERFALL_STEPS",
    "OTHER_LABEL",
    "ChartData",
    "ChartRefused",
    "ChartSpec",
    "assert_offline",
    "build_chart",
    "chart_data",
    "chart_png",
    "chart_spec_json",
    "chart_svg",
    "check_chart",
    "load_chart_spec",
    "render_chart",
]

MAX_CHART_ROWS = 5_000
"""Rows one chart draws from its result (points, bars before folding, line vertices)."""
MAX_CATEGORIES = 20
"""Bars on a category axis; beyond, the smallest are summed into "Other" (percent: refused)."""
MAX_SERIES = 12
"""Series (colours) per chart; bars fold the smallest into "Other", lines and areas refuse."""
MAX_WATERFALL_STEPS = MAX_CATEGORIES
"""Rows of a waterfall (totals included)."""
MAX_TITLE_CHARS = 120
MAX_LABEL_CHARS = 80
"""Axis titles (x_label, y_label)."""
MAX_VALUE_LABEL_CHARS = 100
"""A longer category or series value is cut (with …) before it goes into the chart."""
MAX_TOTALS = 10
OTHER_LABEL = "Other"
BLANK_LABEL = "(blank)"
CHART_HEIGHT = 320
EXPORT_WIDTH = 800
"""Width in pixels of PNG / SVG downloads (inline charts take the container's width)."""
MAX_PNG_SCALE = 4.0
PALETTE = [
    "#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b",
    "#b279a2", "#ff9da6", "#9d755d", "#bab0ac", "#1f3b73", "#8c6d31",
]
"""Twelve distinguishable colours, one per series (`MAX_SERIES`)."""
WATERFALL_COLORS = {"Increase": "#54a24b", "Decrease": "#e45756", "Total": "#4c78a8"}

_CURRENCY_CODES = ("usd", "eur", "gbp", "chf", "jpy", "cad", "aud", "nzd", "sek", "nok", "dkk", "inr", "brl", "mxn", "cny", "sgd", "hkd", "zar")
_NAME_TOKEN = re.compile(r"[a-z]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Mark = Literal["bar", "stacked_bar", "line", "area", "scatter", "waterfall"]
Kind = Literal["integer", "number", "date", "timestamp", "text", "other"]
Axis = Literal["month", "date", "category", "number"]


class ChartRefused(ValueError):
    """The spec does not fit its result; `reason` is a sentence for the model (send as ModelRetry)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _one_line(text: str) -> str:
    return " ".join(_CONTROL.sub(" ", text).split())


class ChartSpec(BaseModel):
    """A chart drawn from one kept run_sql result."""

    # The class docstring and the field descriptions are what the model reads (the tool's schema).
    model_config = ConfigDict(extra="forbid")

    result: str = Field(min_length=1, max_length=40, description="Handle of the run_sql result to draw, e.g. 'q3'.")
    mark: Mark = Field(
        description="bar; stacked_bar (segments = series); line; area; scatter (numeric or date x, no series); "
        "waterfall (a bridge: one row per step in order, see totals)."
    )
    x: str = Field(min_length=1, max_length=300, description=f"Column for the x axis: categories, a DATE/TIMESTAMP, or numbers; for waterfall the step label. "
        f"Bars show at most {MAX_CATEGORIES} categories (the smallest are summed into 'Other').")
    y: str = Field(min_length=1, max_length=300, description="Numeric column for the y axis (for waterfall the step's amount). Bars sum rows with the same x.")
    series: str | None = Field(
        default=None, max_length=300,
        description=f"Optional column whose values become coloured series (at most {MAX_SERIES}; extra bar series are summed into 'Other'). Not for scatter or waterfall.",
    )
    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS, description="Chart title, plain text (say the period and unit).")
    x_format: Literal["auto", "month", "date", "category", "number"] = Field(
        default="auto",
        description="'month': a DATE/TIMESTAMP column drawn as months (Jan 2024); 'date': as days; 'category': as labels; "
        "'number': a numeric scale; 'auto': months for first-of-month (or month-end) dates, else picked from the type.",
    )
    y_format: Literal["currency", "percent", "number"] = Field(
        default="number", description="'currency' for money, 'percent' for rates and shares, 'number' for counts and the rest."
    )
    currency: str | None = Field(
        default=None, pattern=r"^[A-Za-z]{3}$",
        description="ISO code for y_format 'currency', e.g. 'USD'; omit to take it from y's column name (mrr_usd → USD).",
    )
    percent_base: Literal["auto", "fraction", "points"] = Field(
        default="auto",
        description="For y_format 'percent': 'fraction' when 0.052 means 5.2%, 'points' when 5.2 means 5.2%; 'auto' reads values all within ±1 as fractions.",
    )
    sort: Literal["none", "x", "-x", "y", "-y"] = Field(
        default="none",
        description="Category order: 'none' keeps the result's row order, 'x'/'-x' by x, 'y'/'-y' by value ('-' = descending). Time and number axes always run in order.",
    )
    totals: list[str] | None = Field(
        default=None, max_length=MAX_TOTALS,
        description="Waterfall only: x labels drawn as full bars from zero (start, subtotals, end); every other row is a change "
        "added to the running total. Omit: the first and last rows are the totals.",
    )
    x_label: str | None = Field(default=None, max_length=MAX_LABEL_CHARS, description="x axis title; default: the column name.")
    y_label: str | None = Field(default=None, max_length=MAX_LABEL_CHARS, description="y axis title; default: the column name.")

    @field_validator("title", "x_label", "y_label", "result")
    @classmethod
    def _single_line(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = _one_line(v)
        if not v:
            raise ValueError("must not be blank")
        return v

    @field_validator("currency")
    @classmethod
    def _upper(cls, v: str | None) -> str | None:
        return v.upper() if v else v


@dataclass
class ChartData:
    """What `build_chart` draws: rows with fixed field names and the decisions taken on the values.

    `rows` hold `x` (date for month/date axes, float for number axes, str for categories), `y`
    (float; fractions for percent), `series` (str) when the spec has one, and for waterfalls
    `start`, `end`, `kind` ("Total" / "Increase" / "Decrease") and `label` (the amount as text).
    `x_order` / `series_order` are the drawing order of categories and series (None: natural).
    """

    rows: list[dict[str, Any]]
    x_axis: Axis
    x_order: list[str] | None
    series_order: list[str] | None
    currency: str | None
    percent_base: Literal["fraction", "points"] | None
    rows_read: int
    row_count: int
    notes: list[str] = field(default_factory=list)


# --- types ----------------------------------------------------------------------------------------

_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT", "INT", "INT1", "INT2", "INT4", "INT8", "LONG"}
_FLOAT_TYPES = {"FLOAT", "DOUBLE", "REAL", "FLOAT4", "FLOAT8"}
_TEXT_TYPES = {"VARCHAR", "TEXT", "STRING", "UUID", "BOOLEAN", "BOOL", "TIME", "TIME WITH TIME ZONE", "TIMETZ", "INTERVAL", "JSON", "CHAR", "BPCHAR"}


def _kind(duck_type: str) -> Kind:
    """The chart kind of a DuckDB type name as `QueryRun.columns` writes it."""
    t = duck_type.strip().upper()
    if t.endswith("]") or t.startswith(("STRUCT", "MAP", "UNION", "LIST", "ARRAY")):
        return "other"
    if t in _INTEGER_TYPES:
        return "integer"
    if t in _FLOAT_TYPES or t.startswith(("DECIMAL", "NUMERIC")):
        return "number"
    if t == "DATE":
        return "date"
    if t.startswith("TIMESTAMP") or t == "DATETIME":
        return "timestamp"
    if t in _TEXT_TYPES or t.startswith(("VARCHAR", "ENUM", "CHAR")):
        return "text"
    return "other"


def _duck_type(t: pa.DataType) -> str:
    """A DuckDB-style name for an Arrow type of a kept result (for the same messages and rules)."""
    if pa.types.is_dictionary(t):
        return _duck_type(t.value_type)
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_integer(t):
        return {8: "TINYINT", 16: "SMALLINT", 32: "INTEGER", 64: "BIGINT"}[t.bit_width]
    if pa.types.is_floating(t):
        return "FLOAT" if t.bit_width == 32 else "DOUBLE"
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision},{t.scale})"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP WITH TIME ZONE" if t.tz else "TIMESTAMP"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "VARCHAR"
    if pa.types.is_time(t):
        return "TIME"
    return str(t).upper()


def _columns_text(columns: list[dict]) -> str:
    shown = [f"{_clip(c['name'], 60)} ({_clip(c['type'], 40)})" for c in columns[:40]]
    more = f", and {len(columns) - 40} more" if len(columns) > 40 else ""
    return ", ".join(shown) + more


def _clip(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _resolve(name: str, role: str, columns: list[dict], handle: str) -> dict:
    """The column `name` names: exact, else the one column equal ignoring case, else the one whose
    name the model saw cut (the sandbox cuts names over 120 characters with a marker)."""
    for c in columns:
        if c["name"] == name:
            return c
    folded = [c for c in columns if c["name"].casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]
    from cfo_desk.analytics.sandbox import MAX_COLUMN_NAME_CHARS, clip_text

    cut = [c for c in columns if len(c["name"]) > MAX_COLUMN_NAME_CHARS and clip_text(c["name"], MAX_COLUMN_NAME_CHARS) == name]
    if len(cut) == 1:
        return cut[0]
    close = difflib.get_close_matches(name, [c["name"] for c in columns], n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(n) for n in close)}?" if close else ""
    raise ChartRefused(f"{handle} has no column {_clip(name, 80)!r} (the {role} field). Its columns are: {_columns_text(columns)}.{hint}")


def currency_from_name(name: str) -> str | None:
    """The ISO currency code a column name carries (mrr_usd → "USD"; the last one when several),
    else None. The agent's prompt (currency per table) uses the same rule."""
    tokens = [t for t in _NAME_TOKEN.findall(name.lower()) if t in _CURRENCY_CODES]
    return tokens[-1].upper() if tokens else None


def _continuous_x(spec: ChartSpec, x_kind: Kind) -> bool:
    """Whether x is drawn on a continuous (time or number) scale, where sorting does not apply."""
    if spec.mark not in ("line", "area", "scatter"):
        return False
    if spec.x_format in ("month", "date", "number"):
        return True
    return spec.x_format == "auto" and x_kind in ("date", "timestamp", "integer", "number")


def _validate(spec: ChartSpec, columns: list[dict], row_count: int, *, limit_rows: bool) -> ChartSpec:
    """The rules that need only the columns and the row count (shared by check_chart and chart_data)."""
    h = spec.result
    if row_count <= 0:
        raise ChartRefused(f"{h} has no rows; there is nothing to draw.")
    if limit_rows and row_count > MAX_CHART_ROWS:
        raise ChartRefused(
            f"{h} has {row_count:,} rows; a chart draws at most {MAX_CHART_ROWS:,}. Aggregate in SQL "
            "(e.g. GROUP BY month or category) or sample (USING SAMPLE 2000 ROWS), then chart that result."
        )
    xc = _resolve(spec.x, "x", columns, h)
    yc = _resolve(spec.y, "y", columns, h)
    sc = _resolve(spec.series, "series", columns, h) if spec.series else None
    xk, yk = _kind(xc["type"]), _kind(yc["type"])
    if xc["name"] == yc["name"]:
        raise ChartRefused(f"x and y are the same column ({_clip(xc['name'], 80)!r}); pick a different column for one of them.")
    if yk not in ("integer", "number"):
        raise ChartRefused(
            f"y must be a numeric column; {_clip(yc['name'], 80)!r} is {_clip(yc['type'], 60)}. Put the amounts in y and the labels in x "
            "(or CAST the column to a number in SQL)."
        )
    if xk == "other":
        raise ChartRefused(f"x {_clip(xc['name'], 80)!r} is {_clip(xc['type'], 60)}; a chart axis takes text, numbers or dates. Select a plain column.")
    if sc is not None:
        if spec.mark in ("scatter", "waterfall"):
            raise ChartRefused(f"A {spec.mark} takes no series; drop series, or use a line or bar chart to compare series.")
        if sc["name"] in (xc["name"], yc["name"]):
            raise ChartRefused(f"series {_clip(sc['name'], 80)!r} is already the {'x' if sc['name'] == xc['name'] else 'y'} field; pick another column or drop series.")
        if _kind(sc["type"]) == "other":
            raise ChartRefused(f"series {_clip(sc['name'], 80)!r} is {_clip(sc['type'], 60)}; series take text, numbers or dates.")
    is_date = xk in ("date", "timestamp")
    if spec.x_format in ("month", "date") and not is_date:
        raise ChartRefused(
            f"x_format {spec.x_format!r} needs a DATE or TIMESTAMP column; {_clip(xc['name'], 80)!r} is {_clip(xc['type'], 60)}. "
            "Return a date in SQL (e.g. date_trunc('month', d) or CAST(text AS DATE)) or use x_format 'category'."
        )
    if spec.x_format == "number" and xk not in ("integer", "number"):
        raise ChartRefused(f"x_format 'number' needs a numeric column; {_clip(xc['name'], 80)!r} is {_clip(xc['type'], 60)}. Use 'category' or 'auto'.")
    if spec.mark == "scatter" and (spec.x_format == "category" or xk == "text"):
        raise ChartRefused(f"A scatter needs a numeric or date x; {_clip(xc['name'], 80)!r} is {_clip(xc['type'], 60)}. Use a bar chart for categories.")
    if spec.mark == "waterfall" and spec.x_format not in ("auto", "category"):
        raise ChartRefused("A waterfall's x is its step labels; leave x_format 'auto' (or 'category').")
    if spec.totals is not None and spec.mark != "waterfall":
        raise ChartRefused("totals is for waterfall charts only; drop it.")
    if spec.sort != "none":
        if spec.mark == "waterfall":
            raise ChartRefused("A waterfall is drawn in the result's row order (the bridge order); use sort 'none' and ORDER BY in SQL.")
        if spec.mark == "scatter" and spec.sort != "x":
            raise ChartRefused("sort does not apply to a scatter; use sort 'none'.")
        if _continuous_x(spec, xk) and spec.sort != "x":
            raise ChartRefused(
                f"sort {spec.sort!r} orders categories; {_clip(xc['name'], 80)!r} is drawn as a time or number axis, always in order. "
                "Use sort 'none', or x_format 'category' to rank the values as labels."
            )
    currency = spec.currency or (currency_from_name(yc["name"]) if spec.y_format == "currency" else None)
    return spec.model_copy(update={"x": xc["name"], "y": yc["name"], "series": sc["name"] if sc else None, "currency": currency})


def check_chart(spec: ChartSpec, columns: list[dict], row_count: int) -> ChartSpec:
    """Check `spec` against its result's columns ([{"name", "type"}], DuckDB types) and row count.

    Returns the spec with exact column names and the currency filled in (from y's name when not
    given). Raises ChartRefused with a reason for the model: an unknown field (listing the
    result's columns), a non-numeric y (saying its type), a month/date format on a non-date x,
    series on a scatter or waterfall, a sort that does not apply, more than MAX_CHART_ROWS rows.
    The rules that need the values (categories, series, duplicates, totals) are in chart_data.
    """
    return _validate(spec, columns, row_count, limit_rows=True)


# --- data -----------------------------------------------------------------------------------------


def _label(value: object) -> str:
    """A category / series value as a label (plain text, cut to MAX_VALUE_LABEL_CHARS)."""
    if value is None:
        return BLANK_LABEL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        text = value.isoformat(sep=" ")
    elif isinstance(value, (date, dtime)):
        text = value.isoformat()
    elif isinstance(value, float):
        text = f"{value:.12g}" if math.isfinite(value) else BLANK_LABEL
    elif isinstance(value, Decimal):
        text = format(value.normalize(), "f") if value.is_finite() else BLANK_LABEL
    else:
        text = str(value)
    text = _one_line(text) or BLANK_LABEL
    return _clip(text, MAX_VALUE_LABEL_CHARS)


def _sort_key(value: object) -> tuple:
    if value is None:
        return (2, "")
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return (0, float(value))
    if isinstance(value, datetime):
        return (0, value.timestamp() if value.tzinfo else value.replace(tzinfo=timezone.utc).timestamp())
    if isinstance(value, date):
        return (0, datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp())
    return (1, str(value).casefold())


def _floats(arr: pa.ChunkedArray) -> list[float | None]:
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    out = pc.cast(arr, pa.float64(), safe=False).to_pylist()
    return [v if v is not None and math.isfinite(v) else None for v in out]


def _to_utc_naive(v: datetime) -> datetime:
    return v.astimezone(timezone.utc).replace(tzinfo=None) if v.tzinfo else v


def _month_like(values: Iterable[object]) -> bool:
    """All dates on the first day of their month, or all on the last (and at midnight)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return False
    for v in vals:
        if isinstance(v, datetime) and _to_utc_naive(v).time() != dtime(0):
            return False
    days = [_to_utc_naive(v).date() if isinstance(v, datetime) else v for v in vals]
    return all(d.day == 1 for d in days) or all((d + timedelta(days=1)).day == 1 for d in days)


def _read(parquet_path: Path, names: list[str]) -> tuple[pa.Table, int, bool]:
    """The named columns of the first MAX_CHART_ROWS rows; (table, rows in the file, cut)."""
    pf = pq.ParquetFile(parquet_path)
    total = pf.metadata.num_rows
    batches, n = [], 0
    for batch in pf.iter_batches(batch_size=MAX_CHART_ROWS + 1, columns=names):
        batches.append(batch)
        n += batch.num_rows
        if n > MAX_CHART_ROWS:
            break
    schema = pf.schema_arrow
    table = pa.Table.from_batches(batches, schema=pa.schema([schema.field(nm) for nm in names])) if batches else schema.empty_table().select(names)
    return table.slice(0, MAX_CHART_ROWS), total, total > MAX_CHART_ROWS


def _fold(keys: list[str], weight: dict[str, float], keep: int) -> tuple[set[str], int]:
    """The `keep` keys with the largest weight (ties: first appearance) and how many were folded."""
    ranked = sorted(range(len(keys)), key=lambda i: (-weight[keys[i]], i))
    kept = {keys[i] for i in ranked[:keep]}
    return kept, len(keys) - len(kept)


def _order(labels: list[str], sort: str, key: dict[str, tuple], total: dict[str, float]) -> list[str]:
    """Category order: row order, by x value, or by total; "Other" (when folded in) last."""
    rest = [lb for lb in labels if lb != OTHER_LABEL]
    if sort in ("x", "-x"):
        rest = sorted(rest, key=lambda lb: key[lb], reverse=sort == "-x")
    elif sort in ("y", "-y"):
        rest = sorted(rest, key=lambda lb: total[lb], reverse=sort == "-y")
    return rest + ([OTHER_LABEL] if OTHER_LABEL in labels else [])


def chart_data(spec: ChartSpec, parquet_path: Path) -> ChartData:
    """Read what `spec` draws from the kept result at `parquet_path` (only its x / y / series
    columns, at most MAX_CHART_ROWS rows, Decimal → float, dates stay dates) and apply the value
    rules (module docstring): folding into "Other", series limits, duplicates, percent scale,
    the waterfall's running total. Raises ChartRefused with a reason for the model."""
    parquet_path = Path(parquet_path)
    schema = pq.read_schema(parquet_path)
    columns = [{"name": f.name, "type": _duck_type(f.type)} for f in schema]
    num_rows = pq.ParquetFile(parquet_path).metadata.num_rows
    spec = _validate(spec, columns, num_rows, limit_rows=False)
    names = list(dict.fromkeys([spec.x, spec.y] + ([spec.series] if spec.series else [])))
    table, total_rows, cut = _read(parquet_path, names)
    notes: list[str] = []
    if cut:
        notes.append(f"Only the first {MAX_CHART_ROWS:,} of {total_rows:,} rows are drawn.")
    x_kind = _kind(next(c["type"] for c in columns if c["name"] == spec.x))
    xs_raw = table.column(spec.x)
    if pa.types.is_dictionary(xs_raw.type):
        xs_raw = xs_raw.cast(xs_raw.type.value_type)
    xs: list[Any] = _floats(xs_raw) if x_kind == "number" else xs_raw.to_pylist()
    ys = _floats(table.column(spec.y))
    ss = [_label(v) for v in table.column(spec.series).to_pylist()] if spec.series else None

    # The x axis.
    if spec.mark == "waterfall":
        axis: Axis = "category"
    elif spec.x_format != "auto":
        axis = spec.x_format
    elif x_kind in ("date", "timestamp"):
        axis = "month" if _month_like(xs) else "date"
    elif x_kind in ("integer", "number"):
        axis = "number" if spec.mark in ("line", "area", "scatter") else "category"
    else:
        axis = "category"

    keep = [i for i, y in enumerate(ys) if y is not None]
    if len(keep) < len(ys):
        notes.append(f"{len(ys) - len(keep):,} rows with an empty {_clip(spec.y, 60)!r} are left out.")
    if axis != "category":
        before = len(keep)
        keep = [i for i in keep if xs[i] is not None]
        if len(keep) < before:
            notes.append(f"{before - len(keep):,} rows with an empty {_clip(spec.x, 60)!r} are left out.")
    if not keep:
        raise ChartRefused(f"{spec.result} has no row with both a value in {_clip(spec.y, 60)!r} and an x to place it at; there is nothing to draw.")

    # x values: dates (truncated to month or day), floats, or labels with their sort keys.
    key: dict[str, tuple] = {}
    if axis == "month":
        xv = [_to_utc_naive(xs[i]).date().replace(day=1) if isinstance(xs[i], datetime) else xs[i].replace(day=1) for i in keep]
    elif axis == "date":
        xv = [_to_utc_naive(xs[i]).date() if isinstance(xs[i], datetime) else xs[i] for i in keep]
    elif axis == "number":
        xv = [float(xs[i]) for i in keep]
    else:
        xv = []
        for i in keep:
            lb = _label(xs[i])
            key.setdefault(lb, _sort_key(xs[i]))
            xv.append(lb)
    yv = [ys[i] for i in keep]
    sv = [ss[i] for i in keep] if ss is not None else None

    # Percent scale: fractions are drawn as they are, points divided by 100.
    base: Literal["fraction", "points"] | None = None
    if spec.y_format == "percent":
        base = spec.percent_base if spec.percent_base != "auto" else ("fraction" if all(abs(v) <= 1 for v in yv) else "points")
        if base == "points":
            yv = [v / 100 for v in yv]
            if spec.percent_base == "auto":
                notes.append("y values are read as percentage points (5.2 = 5.2%) because some exceed 1; set percent_base 'fraction' if 1.5 means 150%.")
    currency = spec.currency if spec.y_format == "currency" else None
    if spec.y_format == "currency" and not currency:
        notes.append(f"No currency is named for {_clip(spec.y, 60)!r}; the axis shows plain amounts. Set currency (e.g. 'USD') to show it.")

    series_order: list[str] | None = None
    x_order: list[str] | None = None
    if spec.mark == "waterfall":
        rows, x_order = _waterfall(spec, xv, yv, notes, currency, base)
    elif spec.mark in ("bar", "stacked_bar"):
        rows, x_order, series_order = _bars(spec, axis, xv, yv, sv, key, notes)
    else:
        rows, x_order, series_order = _lines(spec, axis, xv, yv, sv, key, notes)
    return ChartData(rows, axis, x_order, series_order, currency, base, len(table), total_rows, notes)


def _series_first_seen(sv: list[str]) -> list[str]:
    return list(dict.fromkeys(sv))


def _bars(spec, axis, xv, yv, sv, key, notes):
    """Bars are sums per (x, series); categories and series beyond the limits fold into "Other"."""
    percent = spec.y_format == "percent"
    sv = sv if sv is not None else [None] * len(xv)
    xkey = [x.isoformat() if isinstance(x, date) else x for x in xv]
    sums: dict[tuple, float] = {}
    for x, s, y in zip(xkey, sv, yv):
        if (x, s) in sums and percent:
            what = f" and series {s!r}" if s is not None else ""
            raise ChartRefused(
                f"{spec.result} has more than one row for x {_clip(str(x), 60)!r}{what}; a percent bar needs exactly one row per bar "
                "(rates cannot be added). Aggregate in SQL or add the series field."
            )
        sums[(x, s)] = sums.get((x, s), 0.0) + y
    series = _series_first_seen([s for (_, s) in sums]) if spec.series else None
    if series is not None and len(series) > MAX_SERIES:
        if percent:
            raise ChartRefused(
                f"{_clip(spec.series, 60)!r} has {len(series)} distinct values; a chart shows at most {MAX_SERIES} series and percentages "
                "cannot be summed into 'Other'. Keep the main series in SQL (WHERE ... IN ...) or drop series."
            )
        weight: dict[str, float] = {}
        for (_, s), y in sums.items():
            weight[s] = weight.get(s, 0.0) + abs(y)
        kept, folded = _fold(series, weight, MAX_SERIES - 1)
        merged: dict[tuple, float] = {}
        for (x, s), y in sums.items():
            k = (x, s if s in kept else OTHER_LABEL)
            merged[k] = merged.get(k, 0.0) + y
        sums = merged
        notes.append(f"{folded} smaller series of {_clip(spec.series, 60)!r} are summed into '{OTHER_LABEL}'.")
        series = _series_first_seen([s for (_, s) in sums])
    x_order = None
    if axis == "category":
        labels = list(dict.fromkeys(x for (x, _) in sums))
        total: dict[str, float] = {}
        for (x, _), y in sums.items():
            total[x] = total.get(x, 0.0) + y
        if len(labels) > MAX_CATEGORIES:
            if percent:
                raise ChartRefused(
                    f"{_clip(spec.x, 60)!r} has {len(labels)} categories; a bar chart shows at most {MAX_CATEGORIES} and percentages cannot "
                    "be summed into 'Other'. Keep the top ones in SQL (ORDER BY ... LIMIT 20) or chart another breakdown."
                )
            kept, folded = _fold(labels, {lb: abs(t) for lb, t in total.items()}, MAX_CATEGORIES - 1)
            merged = {}
            for (x, s), y in sums.items():
                k = (x if x in kept else OTHER_LABEL, s)
                merged[k] = merged.get(k, 0.0) + y
            sums = merged
            key[OTHER_LABEL] = (3, "")
            notes.append(f"{folded} smaller categories of {_clip(spec.x, 60)!r} are summed into '{OTHER_LABEL}' (the total is unchanged).")
            labels = list(dict.fromkeys(x for (x, _) in sums))
            total = {}
            for (x, _), y in sums.items():
                total[x] = total.get(x, 0.0) + y
        x_order = _order(labels, spec.sort, key, total)
    if series is not None and OTHER_LABEL in series:
        series = [s for s in series if s != OTHER_LABEL] + [OTHER_LABEL]
    rows = []
    for (x, s), y in sums.items():
        row = {"x": date.fromisoformat(x) if axis in ("month", "date") else x, "y": y}
        if spec.series:
            row["series"] = s
        rows.append(row)
    return rows, x_order, series


def _lines(spec, axis, xv, yv, sv, key, notes):
    """Lines, areas and scatters: one row per point; lines and areas need one row per x and series."""
    series = _series_first_seen(sv) if sv is not None else None
    if series is not None and len(series) > MAX_SERIES:
        raise ChartRefused(
            f"{_clip(spec.series, 60)!r} has {len(series)} distinct values; a {spec.mark} chart shows at most {MAX_SERIES} series "
            "(lines cannot be summed into 'Other'). Keep the main series in SQL, or group the rest as 'Other' there."
        )
    if spec.mark in ("line", "area"):
        seen: set[tuple] = set()
        for i, x in enumerate(xv):
            k = (x, sv[i] if sv is not None else None)
            if k in seen:
                at = x.strftime("%b %Y") if axis == "month" else (x.isoformat() if isinstance(x, date) else f"{x}")
                fix = "add the series field, or aggregate in SQL (GROUP BY)" if sv is None else "aggregate in SQL (GROUP BY x and series)"
                if axis == "month":
                    fix += ", or use x_format 'date' for daily points"
                raise ChartRefused(f"{spec.result} has more than one row at x {_clip(at, 60)!r}" + (f" for series {k[1]!r}" if sv is not None else "")
                                   + f"; a {spec.mark} needs one row per x{' and series' if sv is not None else ''}: {fix}.")
            seen.add(k)
    x_order = None
    if axis == "category":
        labels = list(dict.fromkeys(xv))
        total: dict[str, float] = {}
        for x, y in zip(xv, yv):
            total[x] = total.get(x, 0.0) + y
        x_order = _order(labels, spec.sort, key, total)
    rows = []
    for i, (x, y) in enumerate(zip(xv, yv)):
        row = {"x": x, "y": y}
        if sv is not None:
            row["series"] = sv[i]
        rows.append(row)
    if spec.mark == "area" and series and spec.y_format != "percent":
        # A stacked area needs every series at every x: a missing point is a zero in the sum
        # (else Vega interpolates the layer across the gap and the stack crosses itself).
        have = {(r["x"], r["series"]) for r in rows}
        missing = [{"x": x, "y": 0.0, "series": s} for x in dict.fromkeys(xv) for s in series if (x, s) not in have]
        if missing:
            rows.extend(missing)
            notes.append(f"{len(missing):,} missing points of the stacked series are drawn as 0.")
    if axis != "category":
        rows.sort(key=lambda r: _sort_key(r["x"]))
    return rows, x_order, series


def _waterfall(spec, xv, yv, notes, currency, base):
    """A bridge: totals drawn from zero, changes from the running total (module docstring)."""
    if len(xv) > MAX_WATERFALL_STEPS:
        raise ChartRefused(
            f"{spec.result} has {len(xv)} rows; a waterfall shows at most {MAX_WATERFALL_STEPS} steps. Group the small changes into one "
            "'Other changes' row in SQL."
        )
    dupes = [lb for lb, n in _counts(xv).items() if n > 1]
    if dupes:
        raise ChartRefused(f"A waterfall needs one row per step with distinct labels; {_clip(dupes[0], 60)!r} appears more than once. Aggregate in SQL.")
    if spec.totals is None:
        totals = {xv[0], xv[-1]}
    else:
        missing = [t for t in spec.totals if t not in xv]
        if missing:
            raise ChartRefused(
                f"totals names {_clip(missing[0], 60)!r}, which is not a label in {_clip(spec.x, 60)!r}; its labels are: "
                + ", ".join(repr(_clip(lb, 40)) for lb in xv[:MAX_WATERFALL_STEPS]) + "."
            )
        totals = set(spec.totals)
    rows, running = [], 0.0
    for i, (x, y) in enumerate(zip(xv, yv)):
        if x in totals:
            if i > 0 and abs(running - y) >= (0.0001 if base else 0.01) - 1e-12:
                notes.append(
                    f"The steps before {_clip(x, 40)!r} add up to {_plain(running, currency, base)}, but {_clip(x, 40)!r} is "
                    f"{_plain(y, currency, base)} (difference {_plain(y - running, currency, base, signed=True)}): the bridge does not tie out."
                )
            start, end, kind = 0.0, y, "Total"
        else:
            start, end, kind = running, running + y, "Increase" if y >= 0 else "Decrease"
        running = end
        rows.append({"x": x, "y": y, "start": start, "end": end, "top": max(start, end), "kind": kind,
                     "label": _plain(y, currency, base, signed=kind != "Total")})
    return rows, list(xv)


def _counts(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it] = out.get(it, 0) + 1
    return out


def _plain(value: float, currency: str | None, base: str | None, *, signed: bool = False) -> str:
    """A value as the chart shows it, for labels and notes: $1,234 / 1,234 EUR / 5.2% / 1,234.5."""
    sign = ("+" if value > 0 else "−" if value < 0 else "") if signed else ("−" if value < 0 else "")
    v = abs(value)
    if base is not None:
        return f"{sign}{v * 100:,.1f}%"
    if currency == "USD":
        return f"{sign}${v:,.0f}" if v >= 100 else f"{sign}${v:,.2f}"
    text = f"{v:,.0f}" if v >= 100 else f"{v:,.2f}".rstrip("0").rstrip(".")
    return f"{sign}{text}" + (f" {currency}" if currency else "")


# --- the chart ------------------------------------------------------------------------------------


def _y_formats(spec: ChartSpec, data: ChartData) -> tuple[str, str, str]:
    """(axis format, tooltip format, axis title) for y."""
    title = spec.y_label or spec.y
    if spec.y_format == "percent":
        return ".1~%", ".2%", title
    values = [abs(r[k]) for r in data.rows for k in ("y", "start", "end") if k in r]
    small = bool(values) and max(values) < 100
    if spec.y_format == "currency":
        if data.currency == "USD":
            return ("$,.2f" if small else "$,.0f"), "$,.2f", title
        suffix = f" ({data.currency})" if data.currency and not title.endswith(f"({data.currency})") else ""
        return (",.2f" if small else ",.0f"), ",.2f", title + suffix
    return (",.2~f" if small else ",.0f"), ",.2~f", title


def _json_value(v: Any) -> Any:
    if isinstance(v, datetime):
        return _to_utc_naive(v).isoformat() + "Z"
    if isinstance(v, date):
        return v.isoformat()  # a date-only ISO string is read as UTC midnight by Vega
    return v


def _x_encodings(spec: ChartSpec, data: ChartData) -> tuple[Any, Any]:
    """(x channel, x tooltip)."""
    title = spec.x_label or spec.x
    bars = spec.mark in ("bar", "stacked_bar", "waterfall")
    if data.x_axis in ("month", "date"):
        unit, fmt = ("utcyearmonth", "%b %Y") if data.x_axis == "month" else ("utcyearmonthdate", "%Y-%m-%d")
        tip = alt.Tooltip("x:T", timeUnit=unit, format=fmt, title=title)
        if bars:  # a band scale: bars, grouped bars and sort by value work
            sort = {"none": None, "x": None, "-x": "descending", "y": "y", "-y": "-y"}[spec.sort]
            axis = alt.Axis(format=fmt, labelAngle=0 if len({r["x"] for r in data.rows}) <= 12 else -40, labelOverlap=True)
            return alt.X("x:O", timeUnit=unit, title=title, axis=axis, sort=sort), tip
        return alt.X("x:T", timeUnit=unit, title=title, axis=alt.Axis(format=fmt, labelOverlap=True)), tip
    if data.x_axis == "number":
        xs = [r["x"] for r in data.rows]
        years = all(float(v).is_integer() and 1000 <= v <= 9999 for v in xs)
        fmt = "d" if years else ",.2~f"
        return (alt.X("x:Q", title=title, axis=alt.Axis(format=fmt), scale=alt.Scale(zero=False)),
                alt.Tooltip("x:Q", format=fmt, title=title))
    order = data.x_order or []
    angle = 0 if len(order) <= 6 and max((len(o) for o in order), default=0) <= 14 else -40
    return (alt.X("x:N", title=title, sort=order, axis=alt.Axis(labelAngle=angle, labelLimit=180)),
            alt.Tooltip("x:N", title=title))


def build_chart(spec: ChartSpec, data: ChartData) -> alt.TopLevelMixin:
    """The Altair chart for `spec` over `data` (from chart_data): inline data, width "container"
    (the lead draws it with `st.altair_chart(chart)`), height CHART_HEIGHT, formatted axes and
    plain-field tooltips. See the module docstring for the format rules."""
    values = [{k: _json_value(v) for k, v in r.items()} for r in data.rows]
    source = alt.InlineData(values=values)
    y_axis, y_tip, y_title = _y_formats(spec, data)
    x_enc, x_tip = _x_encodings(spec, data)
    title = alt.TitleParams(text=spec.title, anchor="start")
    base = alt.Chart(source)

    if spec.mark == "waterfall":
        tooltip = [x_tip, alt.Tooltip("y:Q", format="+" + y_tip, title=y_title), alt.Tooltip("end:Q", format=y_tip, title="Running total"), alt.Tooltip("kind:N", title="Step")]
        bars = base.mark_bar().encode(
            x=x_enc,
            y=alt.Y("start:Q", title=y_title, axis=alt.Axis(format=y_axis)),
            y2=alt.Y2("end:Q"),
            color=alt.Color("kind:N", scale=alt.Scale(domain=list(WATERFALL_COLORS), range=list(WATERFALL_COLORS.values())), legend=None),
            tooltip=tooltip,
        )
        labels = base.mark_text(baseline="bottom", dy=-3, fontSize=11).encode(x=x_enc, y=alt.Y("top:Q"), text=alt.Text("label:N"))
        chart: alt.TopLevelMixin = alt.layer(bars, labels)
        return chart.properties(title=title, width="container", height=CHART_HEIGHT)

    y_enc_args: dict[str, Any] = {"title": y_title, "axis": alt.Axis(format=y_axis)}
    tooltip = [x_tip]
    enc: dict[str, Any] = {"x": x_enc}
    if spec.series:
        tooltip.append(alt.Tooltip("series:N", title=spec.series))
        enc["color"] = alt.Color("series:N", title=spec.series, sort=data.series_order, scale=alt.Scale(domain=data.series_order, range=PALETTE[: len(data.series_order or [])] or PALETTE))
    tooltip.append(alt.Tooltip("y:Q", format=y_tip, title=y_title))

    if spec.mark in ("bar", "stacked_bar"):
        if spec.series and spec.mark == "bar":
            y_enc_args["stack"] = None
            enc["xOffset"] = alt.XOffset("series:N", sort=data.series_order)
        mark = base.mark_bar()
    elif spec.mark == "line":
        points = len(data.rows) // max(1, len(data.series_order or [None])) <= 60
        mark = base.mark_line(point=points)
    elif spec.mark == "area":
        if spec.series and spec.y_format == "percent":
            y_enc_args["stack"] = None
            mark = base.mark_area(opacity=0.45, line=True)
        else:
            mark = base.mark_area(opacity=0.85, line=True)
    else:
        mark = base.mark_circle(opacity=0.7, size=50)
    enc["y"] = alt.Y("y:Q", **y_enc_args)
    enc["tooltip"] = tooltip
    return mark.encode(**enc).properties(title=title, width="container", height=CHART_HEIGHT)


def render_chart(spec: ChartSpec | str, parquet_path: Path) -> tuple[alt.TopLevelMixin, ChartData]:
    """Re-render a kept chart from its spec (a ChartSpec or its JSON) and the kept result file:
    chart_data + build_chart, no SQL. Raises ChartRefused if the file no longer fits the spec."""
    spec = load_chart_spec(spec) if isinstance(spec, str) else spec
    data = chart_data(spec, parquet_path)
    return build_chart(spec, data), data


def chart_spec_json(spec: ChartSpec) -> str:
    """The spec as JSON, for the artifact (with the result handle and its kept Parquet file)."""
    return spec.model_dump_json()


def load_chart_spec(text: str) -> ChartSpec:
    """A ChartSpec back from `chart_spec_json`."""
    return ChartSpec.model_validate_json(text)


# --- exports --------------------------------------------------------------------------------------

_FORBIDDEN_KEYS = {"url", "href", "usermeta"}


def assert_offline(spec: dict) -> None:
    """Raise ValueError unless the Vega-Lite dict holds only inline data: no `url` (data loading),
    `href` (links), `usermeta`, or image mark anywhere outside the data values themselves."""

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in _FORBIDDEN_KEYS:
                    raise ValueError(f"chart spec has {k!r} at {path or '/'}; only inline data is allowed")
                if k == "datasets" and path == "":
                    continue  # the inline rows: text from data, never read as a URL
                if k == "values" and path.endswith("/data"):
                    continue
                if k == "mark" and (v == "image" or (isinstance(v, dict) and v.get("type") == "image")):
                    raise ValueError("chart spec has an image mark; images are not allowed")
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(spec, "")


def _export_spec(chart: alt.TopLevelMixin | dict) -> dict:
    spec = chart if isinstance(chart, dict) else chart.to_dict()
    spec = json.loads(json.dumps(spec))  # a copy
    assert_offline(spec)
    if spec.get("width") == "container":
        spec["width"] = EXPORT_WIDTH
    return spec


def _vl_version() -> str | None:
    """The Vega-Lite version Altair writes (e.g. '6.4'), when vl-convert has it; else its latest."""
    wanted = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return wanted if wanted in vlc.get_vegalite_versions() else None


def chart_png(chart: alt.TopLevelMixin | dict, scale: float = 2) -> bytes:
    """PNG bytes of the chart (EXPORT_WIDTH wide, `scale` × pixels, at most MAX_PNG_SCALE), offline."""
    scale = min(max(float(scale), 0.5), MAX_PNG_SCALE)
    return vlc.vegalite_to_png(_export_spec(chart), vl_version=_vl_version(), scale=scale, allowed_base_urls=[], format_locale="en-US", time_format_locale="en-US")


def chart_svg(chart: alt.TopLevelMixin | dict) -> str:
    """SVG text of the chart (EXPORT_WIDTH wide; labels and titles are SVG text), offline."""
    return vlc.vegalite_to_svg(_export_spec(chart), vl_version=_vl_version(), allowed_base_urls=[], format_locale="en-US", time_format_locale="en-US")
