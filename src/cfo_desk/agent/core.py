"""The CFO agent: instructions, tools and outputs (pydantic-ai), and which model it runs on.

Tool docstrings are the tool descriptions the model reads. SQL errors come back to the model as
`ModelRetry` so it can fix the query within its retry budget. No model-written code other than
one sandboxed SELECT at a time is ever executed.
"""

from __future__ import annotations

import re
import uuid
from datetime import date
from functools import lru_cache
from typing import Any

from pydantic_ai import Agent, ModelRetry, RunContext
from pydantic_ai.exceptions import UserError
from pydantic_ai.models import Model, infer_model

from cfo_desk.agent.deps import AgentDeps, QueryResultRecord
from cfo_desk.agent.outputs import Clarification, FinalAnswer
from cfo_desk.analytics.profile import profile_table as _profile_table
from cfo_desk.analytics.sandbox import QueryError, run_query

SQL_TOOL_RETRIES = 3
OUTPUT_RETRIES = 2

FINANCE_CONVENTIONS = """\
You are the CFO agent of CFO Desk: a careful finance analyst who answers with SQL over the
workspace's DuckDB tables. Finance conventions:
- Every figure you state comes from a run_sql result of this conversation; never invent or estimate
  numbers. Refer to results by handle (q1, q2) so the analyst can audit them.
- State the period, the currency and the unit of every figure, and how it was computed (which
  tables, filters and formula). Round money to 2 decimals and percentages to 1 decimal in prose.
- State your assumptions. When a definition is genuinely ambiguous and changes the answer (what
  counts as an "active customer", gross vs net revenue, fiscal vs calendar year, which currency),
  ask a clarifying question instead of guessing; otherwise use the standard definition and say so:
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
        """Today's date and the workspace's tables, re-evaluated every run (a fork sees today's data)."""
        lines = [f"Today is {date.today().isoformat()}. Workspace: {ctx.deps.workspace_name}."]
        if not ctx.deps.datasets:
            lines.append("The workspace has no datasets yet: tell the analyst to upload CSV or Excel files.")
        else:
            lines.append("Tables (name: source file, rows; columns):")
            for d in ctx.deps.datasets:
                cols = ", ".join(f"{n} {t}" for n, t in d.columns)
                lines.append(f"- {d.table_name}: {d.source}, {d.row_count:,} rows; {cols}")
        return "\n".join(lines)

    @agent.tool
    def list_tables(ctx: RunContext[AgentDeps]) -> list[dict[str, Any]]:
        """List the workspace's tables: name, source file, row count, and columns with their DuckDB types."""
        return [
            {
                "table": d.table_name,
                "source": d.source,
                "rows": d.row_count,
                "columns": [{"name": n, "type": t} for n, t in d.columns],
            }
            for d in ctx.deps.datasets
        ]

    @agent.tool(retries=SQL_TOOL_RETRIES)
    def profile_table(ctx: RunContext[AgentDeps], table: str) -> list[dict[str, Any]]:
        """Profile one table: per column its type, null count, distinct count, min and max.

        Args:
            table: The table name, as given by list_tables.
        """
        known = {d.table_name for d in ctx.deps.datasets}
        if table not in known:
            raise ModelRetry(f"Unknown table {table!r}. Tables: {', '.join(sorted(known)) or 'none'}.")
        df = _profile_table(ctx.deps.db_path, table)
        return df.drop(columns=["null_pct"]).to_dict(orient="records")

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
            run = run_query(
                ctx.deps.db_path,
                sql,
                parquet_path=pending,
                timeout_s=limits.timeout_s,
                rows_to_model=limits.rows_to_model,
                result_row_limit=limits.result_row_limit,
                stop=ctx.deps.stop,
            )
        except QueryError as exc:
            raise ModelRetry(f"The query failed: {exc}") from exc
        handle = ctx.deps.next_handle()  # only results get handles, so they read q1, q2, ... without gaps
        run.parquet_path = pending.rename(ctx.deps.run_dir / f"{handle}.parquet")
        ctx.deps.add_result(QueryResultRecord(handle=handle, purpose=purpose.strip() or handle, sql=sql, run=run))
        return {
            "result": handle,
            "row_count": run.row_count,
            "columns": run.columns,
            "rows": run.rows,
            "rows_shown": len(run.rows),
            "notes": run.notes
            + ([f"Only the first {len(run.rows)} of {run.row_count:,} rows are shown to you."] if len(run.rows) < run.row_count else []),
        }

    return agent


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
