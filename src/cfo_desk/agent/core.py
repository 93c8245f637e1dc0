"""The CFO agent: instructions, tools and outputs (pydantic-ai), and which model it runs on.

Tool docstrings are the tool descriptions the model reads. SQL errors come back to the model as
`ModelRetry` so it can fix the query within its retry budget. No model-written code other than
one sandboxed SELECT at a time is ever executed.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import date
from functools import lru_cache
from typing import Any

from pydantic_ai import Agent, ModelRetry, RunContext
from pydantic_ai.exceptions import UserError
from pydantic_ai.models import Model, infer_model

from cfo_desk.agent.deps import AgentDeps, DeliverableRecord, QueryResultRecord
from cfo_desk.deliverables import charts
from cfo_desk.deliverables import workbook as wb
from cfo_desk.agent.outputs import Clarification, FinalAnswer
from cfo_desk.agent.tieout import tie_out
from cfo_desk.analytics.profile import profile_table as _profile_table
from cfo_desk.analytics.isolation import run_query_isolated
from cfo_desk.analytics.store import WorkspaceBusy
from cfo_desk.analytics.sandbox import (
    MAX_COLUMN_NAME_CHARS,
    MAX_COLUMNS_TO_MODEL,
    MAX_ERROR_CHARS,
    MAX_TYPE_CHARS,
    OVERVIEW_BUDGET_CHARS,
    OVERVIEW_COLUMNS_PER_TABLE,
    TOOL_RETURN_BUDGET_CHARS,
    QueryError,
    clip_notes,
    clip_text,
    fit_items,
    json_chars,
    result_for_model,
)

SQL_TOOL_RETRIES = 3
OUTPUT_RETRIES = 2

FINANCE_CONVENTIONS = """\
You are the CFO agent of CFO Desk: a careful finance analyst who answers with SQL over the
workspace's DuckDB tables. Finance conventions:
- Every figure you state comes from a run_sql result of this conversation; never invent or estimate
  numbers. Refer to results by handle (q1, q2) so the analyst can audit them.
- Key figures are checked: each must cite its result (query = handle, column = the column) and its
  value must be that cell's value (rounding is fine). Compute every headline number in SQL, one
  cell per figure; a figure that matches no cell is sent back to you, then shown as not traced.
  For a breakdown, set part_of on each part to the total's label: the parts must sum to the total.
- The workspace glossary (below, when set) is the analyst's own definitions: they override the
  standard ones. Name each glossary term you used in glossary_terms.
- State the period, the currency and the unit of every figure, and how it was computed (which
  tables, filters and formula). Round money to 2 decimals and percentages to 1 decimal in prose.
- State your assumptions. When a definition is genuinely ambiguous and changes the answer (what
  counts as an "active customer", gross vs net revenue, fiscal vs calendar year, which currency),
  ask a clarifying question instead of guessing (name the term it settles, so the analyst can save
  the answer to the glossary); otherwise use the standard definition and say so:
  MRR = normalised monthly recurring revenue of subscriptions active at period end (annual / 12);
  ARR = 12 × MRR; ARPU = MRR / active customers; logo churn rate = customers lost in the period /
  customers at the start; CAC = sales and marketing spend / new customers acquired; LTV = ARPU ×
  gross margin / monthly churn rate; CAC payback (months) = CAC / (ARPU × gross margin).
- Write DuckDB SQL: one SELECT (WITH ... SELECT allowed) per run_sql call; aggregate in SQL rather
  than fetching raw rows; use date_trunc('month', d) and last_day(d) for periods.
- Look at the tables (list_tables, profile_table) before querying columns you are unsure of.
"""


def build_agent() -> Agent[AgentDeps, FinalAnswer | Clarification]:
    """A new CFO agent (model chosen per run; see `resolve_model`)."""
    agent: Agent[AgentDeps, FinalAnswer | Clarification] = Agent(
        None,
        deps_type=AgentDeps,
        output_type=[FinalAnswer, Clarification],
        instructions=FINANCE_CONVENTIONS,
        retries={"tools": SQL_TOOL_RETRIES, "output": OUTPUT_RETRIES},
        name="cfo_agent",
    )

    @agent.instructions
    def workspace_overview(ctx: RunContext[AgentDeps]) -> str:
        """Today's date, where the data ends, the workspace glossary and the tables, re-evaluated
        every run (a fork sees today's data and glossary).

        Fits `OVERVIEW_BUDGET_CHARS`: at most `OVERVIEW_COLUMNS_PER_TABLE` columns per table (fewer
        when the tables would not fit), then as many tables as fit, saying what was left out."""
        return overview_text(ctx.deps.workspace_name, ctx.deps.datasets, glossary_text=ctx.deps.glossary_text)

    @agent.output_validator
    def figures_tie_out(ctx: RunContext[AgentDeps], output: FinalAnswer | Clarification) -> FinalAnswer | Clarification:
        """Every key figure must equal a cell of the result it cites (agent/tieout.py). While output
        retries are left, a figure that doesn't is sent back to the model (ModelRetry) naming the
        figure and what the result holds; on the last try the answer is kept, those figures marked
        "not_traced" (the chat shows them in red) and the breakdown notes kept with it."""
        if not isinstance(output, FinalAnswer):
            return output
        # An answer can only cite terms the glossary it was given has (a term it names otherwise is dropped).
        output.glossary_terms = [t for t in output.glossary_terms if " ".join(t.lower().split()) in ctx.deps.glossary_terms]
        check = tie_out(output, ctx.deps.result_files())
        if check.problems and ctx.retry < (ctx.max_retries or 0):
            raise ModelRetry(
                clip_text(
                    "Some key figures don't tie out to the results they cite. "
                    + " ".join(check.problems)
                    + " Copy each key figure from its result cell (cite the handle in query and the column in "
                    "column), or run a query that computes it.",
                    MAX_ERROR_CHARS,
                )
            )
        return check.apply(output)

    @agent.tool
    def list_tables(ctx: RunContext[AgentDeps]) -> dict[str, Any]:
        """List the workspace's tables: name, source file, row count, columns with their DuckDB types,
        and ingest_notes: how the file was read (total rows left out, assumed date order, column
        types the analyst chose, values kept as text in <column>_raw). Read them before summing.

        Long lists are cut to fit the size budget; the notes say what was left out."""
        return tables_for_model(ctx.deps.datasets)

    @agent.tool(retries=SQL_TOOL_RETRIES)
    def profile_table(ctx: RunContext[AgentDeps], table: str) -> dict[str, Any]:
        """Profile one table: per column its type, null count, distinct count, min and max.

        Args:
            table: The table name, as given by list_tables.
        """
        known = {d.table_name for d in ctx.deps.datasets}
        if table not in known:
            raise ModelRetry(clip_text(f"Unknown table {table!r}. Tables: {', '.join(sorted(known)) or 'none'}.", MAX_ERROR_CHARS))
        try:
            df = _profile_table(ctx.deps.db_path, table, timeout_s=ctx.deps.limits.timeout_s)
        except WorkspaceBusy as exc:  # a sentence without paths or PIDs
            raise ModelRetry(str(exc)) from None
        return profile_for_model(table, df.drop(columns=["null_pct"]).to_dict(orient="records"))

    @agent.tool(retries=SQL_TOOL_RETRIES)
    def run_sql(ctx: RunContext[AgentDeps], purpose: str, sql: str) -> dict[str, Any]:
        """Run one read-only DuckDB SELECT over the workspace's tables and get its result.

        The full result is kept for the analyst under a handle (q1, q2, ...); you see at most the
        first rows (see rows_shown). Aggregate in SQL instead of fetching raw rows.

        Args:
            purpose: What this query computes, in a few words (shown to the analyst as its title).
            sql: Exactly one SELECT statement (WITH ... SELECT allowed) in DuckDB SQL.
        """
        limits = ctx.deps.limits
        pending = ctx.deps.run_dir / f"pending-{uuid.uuid4().hex}.parquet"
        try:
            run = run_query_isolated(  # in a warm worker process with OS memory and CPU limits
                ctx.deps.db_path,
                sql,
                parquet_path=pending,
                timeout_s=limits.timeout_s,
                rows_to_model=limits.rows_to_model,
                result_row_limit=limits.result_row_limit,
                stop=ctx.deps.stop,
            )
        except QueryError as exc:
            raise ModelRetry(clip_text(f"The query failed: {exc}", MAX_ERROR_CHARS)) from exc
        handle = ctx.deps.next_handle()  # only results get handles, so they read q1, q2, ... without gaps
        run.parquet_path = pending.rename(ctx.deps.run_dir / f"{handle}.parquet")
        if note := fan_out_note(run.row_count, run.tables, ctx.deps.datasets):
            run.notes.append(note)
        ctx.deps.add_result(QueryResultRecord(handle=handle, purpose=purpose.strip() or handle, sql=sql, run=run))
        return result_for_model(run, handle)

    @agent.tool(retries=SQL_TOOL_RETRIES)
    def make_chart(ctx: RunContext[AgentDeps], spec: charts.ChartSpec) -> dict[str, Any]:
        """Draw a chart of one kept run_sql result; it is shown under your answer with PNG and SVG downloads.

        Shape the result in SQL first: one row per bar or point (aggregate), at most 5,000 rows, in the
        order the chart should read (sort 'none' keeps the row order). Money → y_format 'currency',
        rates → 'percent', months → a DATE column (date_trunc('month', ...)). A bridge (waterfall): one
        row per step in order — start, signed changes (churn and contraction negative), end. Returns the
        chart's handle (c1, c2, ...) and notes (what was folded, cut or did not tie out); a spec that does
        not fit its result comes back with the reason: fix the spec or the SQL."""
        return make_chart_for(ctx.deps, spec)

    @agent.tool(retries=SQL_TOOL_RETRIES, description=BUILD_WORKBOOK_DESCRIPTION)
    def build_workbook(ctx: RunContext[AgentDeps], spec: wb.WorkbookSpec) -> dict[str, Any]:
        return make_workbook(ctx.deps, spec)

    return agent


def make_chart_for(deps: AgentDeps, spec: charts.ChartSpec) -> dict[str, Any]:
    """The make_chart tool: check the spec against its result's columns, build the chart from the
    kept Parquet file (no SQL), record it as a deliverable (the normalised spec and the result
    file) and return its handle, points drawn and notes. ModelRetry with the reason when the spec
    does not fit (unknown handle, field, type, too many series ...)."""
    refs = deps.result_refs()
    ref = refs.get(spec.result.strip())
    if ref is None:
        known = ", ".join(sorted(refs, key=lambda h: (len(h), h))) or "none yet: run a query first"
        raise ModelRetry(f"{spec.result!r} is not a result of this conversation (results: {known}).")
    try:
        checked = charts.check_chart(spec, ref.columns, ref.row_count)
        if checked.y_format == "currency" and checked.currency is None:
            # y's name names no currency: take the one the tables it read carry, when they name exactly one
            read = {d["table"] for d in ref.datasets_read}
            codes = {c for d in deps.datasets if d.table_name in read for c in currency_codes(d.columns)}
            if len(codes) == 1:
                checked = checked.model_copy(update={"currency": codes.pop()})
        data = charts.chart_data(checked, ref.parquet_path)
        charts.build_chart(checked, data)
    except charts.ChartRefused as exc:
        raise ModelRetry(clip_text(f"The chart was not made: {exc.reason}", MAX_ERROR_CHARS)) from None
    handle = deps.next_deliverable_handle("c")
    deps.add_deliverable(
        DeliverableRecord("chart", handle, checked.title, json.loads(charts.chart_spec_json(checked)), ref.parquet_path, [ref.handle])
    )
    return {"chart": handle, "result": ref.handle, "mark": checked.mark, "points": len(data.rows), "notes": clip_notes(list(data.notes))}


BUILD_WORKBOOK_DESCRIPTION = (
    "Build an Excel workbook (.xlsx) with live formulas for the analyst: a model, bridge, schedule or projection they "
    "can open in Excel. First run the queries it needs (each result has a handle such as q1). Then describe it. "
    f"data_sheets: one per result. {wb.DATA_SHEET_LAYOUT} model_sheets: labels, headers, inputs (assumptions you type, "
    "shown blue) and formulas (totals, ratios, growth, bridges, projections). Link figures to data sheets with formulas "
    "('MRR data'!G13) rather than typing them; list any result whose figures you typed in cited_results. named_inputs: "
    "names for input cells, used as =B5*(1+Growth). charts: native charts over the workbook's ranges. "
    f"{wb.FORMULA_RULES} A Sources sheet (each result's purpose, SQL, datasets with sha256, when it ran) is added "
    "automatically. If the workbook is refused, the reason names the sheet, the cell and what to fix. The workbook is "
    "shown under your answer with a download; you get back its handle (w1, w2, ...) and the computed values of its "
    "model sheets' first cells, to check them."
)
MAX_PREVIEW_TO_MODEL_CELLS = 400
"""Computed model-sheet cells returned to the model after build_workbook (the file has them all)."""


def make_workbook(deps: AgentDeps, spec: wb.WorkbookSpec) -> dict[str, Any]:
    """The build_workbook tool: check and write the workbook into the run's folder as
    `<handle>.xlsx`, keep its computed preview beside it, record it as a deliverable, and return
    its handle, sheets and the computed values of its model sheets (at most
    MAX_PREVIEW_TO_MODEL_CELLS cells). A refused spec raises ModelRetry with the reason."""
    results = deps.result_refs()  # deliverables.workbook.ResultInfo each
    deps.run_dir.mkdir(parents=True, exist_ok=True)
    pending = deps.run_dir / f"pending-{uuid.uuid4().hex}.xlsx"
    try:
        summary = wb.write_workbook(spec, results, pending)
    except wb.WorkbookError as exc:  # WorkbookRefused (the spec) or a result file that can't be read
        raise ModelRetry(clip_text(f"The workbook was not built: {exc}", MAX_ERROR_CHARS)) from None
    handle = deps.next_deliverable_handle("w")
    path = pending.rename(deps.run_dir / f"{handle}.xlsx")
    preview = wb.preview_workbook(path)
    wb.preview_path(path).write_text(json.dumps(wb.preview_json(preview), default=str))
    deps.add_deliverable(
        DeliverableRecord("workbook", handle, spec.title, spec.model_dump(mode="json"), path, list(summary.results))
    )
    model_sheets = {m.name for m in spec.model_sheets}
    cells: dict[str, dict[str, Any]] = {}
    budget = MAX_PREVIEW_TO_MODEL_CELLS
    for sheet in preview.sheets:
        if sheet.name not in model_sheets:
            continue
        for ref in list(sheet.formulas)[:budget]:
            cells.setdefault(sheet.name, {})[ref] = _cell_value(sheet, ref)
        budget -= len(cells.get(sheet.name, {}))
    return {
        "workbook": handle,
        "title": spec.title,
        "sheets": summary.sheets,
        "data_rows": summary.data_rows,
        "formula_cells": summary.formula_cells,
        "computed_formula_values": cells if preview.computed else None,
        "notes": clip_notes(summary.notes + ([preview.engine_note] if preview.engine_note else [])),
    }


def _cell_value(sheet: wb.SheetPreview, ref: str) -> Any:
    from openpyxl.utils.cell import coordinate_from_string, column_index_from_string

    col, row = coordinate_from_string(ref)
    j = column_index_from_string(col) - 1
    values = sheet.rows[row - 1] if row - 1 < len(sheet.rows) else []
    value = values[j] if j < len(values) else None
    return value if value is None or isinstance(value, (int, float, str, bool)) else str(value)


def fan_out_note(row_count: int, tables: list[str], datasets: list) -> str | None:
    """A note for the model when a query over two or more tables returns more rows than the largest
    table it read: a join whose keys are not unique multiplies rows, and sums over it count the same
    amount more than once. None otherwise."""
    sizes = {d.table_name: d.row_count for d in datasets}
    read = [t for t in tables if t in sizes]
    if len(read) < 2 or row_count <= max(sizes[t] for t in read):
        return None
    largest = max(read, key=lambda t: sizes[t])
    return (
        f"Check the joins: this result has {row_count:,} rows, more than the largest table it read ({largest}, "
        f"{sizes[largest]:,} rows). A join on keys that are not unique multiplies rows, so sums over it overstate "
        "the figures; join on unique keys or aggregate each table before joining."
    )


# ---------------------------------------------------------------------------------------------
# What the model is shown about the tables: each fits a stated character budget (sandbox.py names them).

MAX_SOURCE_CHARS = 200
MAX_NOTE_CHARS = 300  # per ingest note in list_tables
MAX_NOTES_PER_TABLE = 8
"""A dataset's source (file and sheet name) reaches the model cut to this many characters."""
MAX_PROFILE_VALUE_CHARS = 200
"""A profile's min and max reach the model cut to this many characters."""
_COLUMN_CAPS = (MAX_COLUMNS_TO_MODEL, 20, 5, 0)  # columns per table tried in turn until every table fits


def _column_entries(columns: list[tuple[str, str]], cap: int) -> list[dict[str, str]]:
    return [{"name": clip_text(n, MAX_COLUMN_NAME_CHARS), "type": clip_text(t, MAX_TYPE_CHARS)} for n, t in columns[:cap]]


def tables_for_model(datasets: list, *, budget_chars: int = TOOL_RETURN_BUDGET_CHARS) -> dict[str, Any]:
    """The list_tables return within `budget_chars` of JSON: every table with up to
    `MAX_COLUMNS_TO_MODEL` columns, fewer columns per table when the tables would not all fit, and
    as many tables as fit when even names alone do not; `notes` say what was cut."""
    reserve = 1_000  # for the notes
    for cap in _COLUMN_CAPS:
        entries = []
        for d in datasets:
            entry: dict[str, Any] = {
                "table": clip_text(d.table_name, MAX_COLUMN_NAME_CHARS),
                "source": clip_text(d.source, MAX_SOURCE_CHARS),
                "rows": d.row_count,
                "column_count": len(d.columns),
                "columns": _column_entries(d.columns, cap),
            }
            if len(d.columns) > cap:
                entry["columns_not_shown"] = len(d.columns) - cap
            if d.notes:  # how the file was read: the model must know what was left out or assumed
                entry["ingest_notes"] = [clip_text(n, MAX_NOTE_CHARS) for n in d.notes[:MAX_NOTES_PER_TABLE]]
            entries.append(entry)
        payload: dict[str, Any] = {"table_count": len(datasets), "tables": entries, "notes": []}
        if json_chars(payload) <= budget_chars - reserve:
            break
    shown = fit_items(payload, "tables", entries, budget_chars - reserve)
    notes = []
    if any("columns_not_shown" in e for e in payload["tables"]):
        notes.append("Some tables have more columns than shown (columns_not_shown); profile_table or DESCRIBE <table> lists them.")
    if any(len(n) > MAX_COLUMN_NAME_CHARS for d in datasets for n, _ in d.columns[:cap]):
        notes.append(f"Names longer than {MAX_COLUMN_NAME_CHARS} characters are cut (…[N more chars]); quote the full name in SQL (DESCRIBE shows it).")
    if shown < len(datasets):
        left = ", ".join(d.table_name for d in datasets[shown:])
        notes.append(f"Only {shown:,} of {len(datasets):,} tables fit the {budget_chars:,}-character budget; left out: {left}")
    payload["notes"] = clip_notes(notes)
    return payload


def profile_for_model(table: str, records: list[dict[str, Any]], *, budget_chars: int = TOOL_RETURN_BUDGET_CHARS) -> dict[str, Any]:
    """The profile_table return within `budget_chars` of JSON: at most `MAX_COLUMNS_TO_MODEL`
    columns' profiles (names, types and min/max cut), as many as fit; `notes` say what was cut."""

    def clean(rec: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in rec.items():
            if v is not None and not isinstance(v, (str, int, float, bool)):
                v = None if str(v) in ("<NA>", "nan", "NaT") else str(v)
            limit = {"column": MAX_COLUMN_NAME_CHARS, "type": MAX_TYPE_CHARS}.get(k, MAX_PROFILE_VALUE_CHARS)
            out[k] = clip_text(v, limit)
        return out

    payload: dict[str, Any] = {"table": clip_text(table, MAX_COLUMN_NAME_CHARS), "column_count": len(records), "columns": [], "notes": []}
    shown = fit_items(payload, "columns", [clean(r) for r in records[:MAX_COLUMNS_TO_MODEL]], budget_chars - 1_000)
    notes = []
    if shown < len(records):
        notes.append(
            f"Only the first {shown:,} of {len(records):,} columns are profiled here (size budget {budget_chars:,} characters, "
            f"at most {MAX_COLUMNS_TO_MODEL} columns); SUMMARIZE (SELECT <columns> FROM <table>) profiles others."
        )
    if any(isinstance(v, str) and "more chars]" in v for r in payload["columns"] for v in r.values()):
        notes.append("Long names, types and min/max values are cut (…[N more chars]).")
    payload["notes"] = clip_notes(notes)
    return payload


MAX_OVERVIEW_NOTES_CHARS = 600
"""A table's ingest notes in the instructions are cut to this many characters (list_tables has them all)."""
_REMOVED = re.compile(r"after removing ([^;]*)")


def currency_codes(columns: list[tuple[str, str]]) -> dict[str, list[str]]:
    """{ISO code: numeric columns whose names carry it} (mrr_usd → {"USD": ["mrr_usd"]})."""
    codes: dict[str, list[str]] = {}
    for name, dtype in columns:
        if dtype.startswith(("DECIMAL", "DOUBLE", "BIGINT", "INTEGER", "HUGEINT", "FLOAT")) and (code := charts.currency_from_name(name)):
            codes.setdefault(code, []).append(name)
    return codes


def currency_hint(columns: list[tuple[str, str]], notes: tuple[str, ...] | list[str] = ()) -> str | None:
    """Where a table's currency is known: ISO codes in its numeric column names (mrr_usd → USD),
    else the currency symbols ingest removed from its values ($, €, £: the currency itself is not
    named). None when neither says anything."""
    codes = currency_codes(columns)
    if codes:
        return "; ".join(f"{code} (column names: {', '.join(cols[:3])}{', …' if len(cols) > 3 else ''})" for code, cols in codes.items())
    removed = " ".join(m.group(1) for n in notes if (m := _REMOVED.search(n)))  # ingest's "read as numbers after removing $ and ..."
    symbols = [sym for sym in "$€£" if sym in removed]
    if symbols:
        return f"not named; values carried {' '.join(symbols)} (removed at ingest): ask or state the currency you assume"
    return None


def data_end(datasets: list, today: date) -> tuple[str, str] | None:
    """The latest date in the workspace's data that is not after `today`, and where it is
    ("2024-12-31", "subscriptions.end_date"); None when no dataset has a dated column. Dates after
    today (contract ends, due dates) don't move the end of the data."""
    best: tuple[str, str] | None = None
    for d in datasets:
        for col, (first, last) in (getattr(d, "date_ranges", None) or {}).items():
            day = last[:10]
            if day <= today.isoformat() and (best is None or day > best[0]):
                best = (day, f"{d.table_name}.{col}")
    return best


def _table_details(d, today: date) -> str:
    parts = []
    ranges = getattr(d, "date_ranges", None) or {}
    if ranges:
        parts.append("dates " + ", ".join(f"{clip_text(c, MAX_COLUMN_NAME_CHARS)} {a[:10]}..{b[:10]}" for c, (a, b) in list(ranges.items())[:10]))
    elif any(t == "DATE" or t.startswith("TIMESTAMP") for _, t in d.columns):
        parts.append("date range not recorded (re-ingest to record it)")
    if cur := currency_hint(d.columns, d.notes):
        parts.append(f"currency {cur}")
    if d.notes:
        parts.append("ingest notes: " + clip_text(" | ".join(d.notes), MAX_OVERVIEW_NOTES_CHARS))
    return ("  " + "; ".join(parts)) if parts else ""


def overview_text(
    workspace_name: str, datasets: list, *, glossary_text: str = "", today: date | None = None, budget_chars: int = OVERVIEW_BUDGET_CHARS
) -> str:
    """The instructions' workspace overview within `budget_chars` characters: today's date and
    where the data ends (relative periods are read against the data), the workspace glossary
    (`glossary_text`, from services/glossary.py), and per table its source, rows, columns, date
    range per date column, currency where known and ingest notes. When it would not fit, fewer
    columns per table are listed, then no details, then as many tables as fit."""
    today = today or date.today()
    head = [f"Today is {today.isoformat()}. Workspace: {clip_text(workspace_name, MAX_SOURCE_CHARS)}."]
    if end := data_end(datasets, today):
        head.append(
            f"The data ends on {end[0]} (latest date on or before today, in {clip_text(end[1], 2 * MAX_COLUMN_NAME_CHARS)}). "
            "Read relative periods ('last month', 'last year', 'YTD', 'latest') against where the data ends, not against today, "
            "and state that as an assumption."
        )
    if glossary_text:
        head.append(glossary_text)
    if not datasets:
        head.append("The workspace has no datasets yet: tell the analyst to upload CSV or Excel files.")
        return "\n".join(head)
    head.append("Tables (name: source file, rows; columns; then dates, currency and how the file was read):")
    reserve = 400  # the closing line about tables left out
    for cap, details in ((OVERVIEW_COLUMNS_PER_TABLE, True), (15, True), (15, False), (3, False), (0, False)):
        lines = []
        for d in datasets:
            cols = ", ".join(f"{clip_text(n, MAX_COLUMN_NAME_CHARS)} {clip_text(t, MAX_TYPE_CHARS)}" for n, t in d.columns[:cap])
            more = len(d.columns) - cap
            if more > 0:
                cols += f"{', ' if cols else ''}… {more:,} more columns (list_tables, profile_table)"
            line = f"- {clip_text(d.table_name, MAX_COLUMN_NAME_CHARS)}: {clip_text(d.source, MAX_SOURCE_CHARS)}, {d.row_count:,} rows; {cols}"
            if details and (extra := _table_details(d, today)):
                line += "\n" + extra
            lines.append(line)
        if len("\n".join(head + lines)) <= budget_chars - reserve:
            break
    out, size = list(head), len("\n".join(head))
    for i, line in enumerate(lines):
        if size + 1 + len(line) > budget_chars - reserve:
            out.append(f"- … {len(lines) - i:,} more tables are not listed here: call list_tables.")
            break
        out.append(line)
        size += 1 + len(line)
    return "\n".join(out)


@lru_cache(maxsize=1)
def get_agent() -> Agent[AgentDeps, FinalAnswer | Clarification]:
    """The process's CFO agent (stateless between runs, so one instance serves every session)."""
    return build_agent()


# ---------------------------------------------------------------------------------------------
# Which model: CFO_DESK_MODEL, unless tests or evals put a Model object in place.

_model_override: Model | None = None


def use_model(model: Model | None) -> None:
    """Run every turn on `model` (a pydantic-ai Model, e.g. FunctionModel) instead of the configured
    one; None restores the configured model. For tests and evals: no real provider is called."""
    global _model_override
    _model_override = model


def resolve_model(model_string: str | None) -> Model | str | None:
    """The model for the next run: the override if set, else the configured model string."""
    return _model_override if _model_override is not None else model_string


def model_problem(model_string: str | None) -> str | None:
    """One sentence saying what to set when asking cannot work, or None when a model is usable.

    Checks that CFO_DESK_MODEL is set and that the provider can be built (its API key is present).
    """
    if _model_override is not None:
        return None
    if not model_string:
        return (
            "To ask questions, set CFO_DESK_MODEL to a model such as openai-chat:gpt-4.1 or "
            "anthropic:claude-sonnet-4-5 (and its API key) in the environment or .env, then restart."
        )
    try:
        infer_model(model_string)
    except Exception as exc:  # UserError: missing key or base URL; unknown model string
        text = str(exc)
        if isinstance(exc, UserError) and (var := re.search(r"`([A-Z][A-Z0-9_]+)` environment variable", text)):
            return f"To ask questions with {model_string}, set {var.group(1)} in the environment or .env, then restart."
        first = text.split(". ")[0].rstrip(".")
        return f"CFO_DESK_MODEL={model_string} can't be used: {first}."
    return None
