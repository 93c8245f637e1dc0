"""What reaches the model fits its stated budgets: every tool return and the workspace overview,
measured as the JSON (or text) the model receives, however wide or long the data is."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from agent_script import output_call, scripted, turn_returns
from pydantic_ai.messages import ModelResponse, ToolCallPart

from cfo_desk.agent.core import build_agent, overview_text, profile_for_model, tables_for_model
from cfo_desk.agent.deps import AgentDeps, DatasetRef
from cfo_desk.analytics.sandbox import (
    MAX_COLUMN_NAME_CHARS,
    OVERVIEW_BUDGET_CHARS,
    TOOL_RETURN_BUDGET_CHARS,
    result_for_model,
    run_query,
)
from cfo_desk.analytics.store import writer

WIDE_COLS, WIDE_CELL = 5_000, 600  # measured leak: one row sent 2.8M characters to the model
LONG_COLS, LONG_NAME = 300, 3_000  # measured leak: 912 KB of column names


def long_name(i: int) -> str:
    return f"c{i:03d}_" + "n" * (LONG_NAME - 5)


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ws") / "data.duckdb"
    with writer(path) as con:
        con.execute("CREATE TABLE wide AS SELECT " + ", ".join(f"repeat('x', {WIDE_CELL}) AS w{i}" for i in range(WIDE_COLS)))
        con.execute("CREATE TABLE longnames AS SELECT " + ", ".join(f'{i} AS "{long_name(i)}"' for i in range(LONG_COLS)) + " FROM range(3)")
        con.execute("CREATE TABLE small AS SELECT range AS i, 'row ' || range AS label FROM range(10)")
    return path


def size(value) -> int:
    return len(json.dumps(value))


def test_a_row_of_5000_wide_columns_fits_the_budget(db, tmp_path):
    run = run_query(db, "SELECT * FROM wide", parquet_path=tmp_path / "q.parquet")
    assert size([run.columns, run.rows]) > 2_500_000  # what used to go to the model
    payload = result_for_model(run, "q1")
    assert size(payload) <= TOOL_RETURN_BUDGET_CHARS
    assert payload["column_count"] == WIDE_COLS and payload["rows_shown"] == 1
    assert len(payload["columns"]) == len(payload["rows"][0]) < WIDE_COLS
    left_out = WIDE_COLS - len(payload["columns"])
    assert any(f"({left_out:,} left out)" in n for n in payload["notes"])
    assert payload["rows"][0][0].endswith("…[100 more chars]")
    kept = pq.read_table(run.parquet_path)  # the full result is kept
    assert kept.num_columns == WIDE_COLS and len(kept.column("w4999")[0].as_py()) == WIDE_CELL


def test_300_columns_with_3000_character_names_fit_the_budget(db, tmp_path):
    run = run_query(db, "SELECT * FROM longnames", parquet_path=tmp_path / "q.parquet")
    assert size(run.columns) > 900_000
    payload = result_for_model(run, "q1")
    assert size(payload) <= TOOL_RETURN_BUDGET_CHARS
    first = payload["columns"][0]["name"]
    assert first.startswith("c000_nnn") and first.endswith(f"…[{LONG_NAME - MAX_COLUMN_NAME_CHARS:,} more chars]")
    assert any("Column names longer than" in n for n in payload["notes"])
    assert any("columns are shown to you" in n for n in payload["notes"])
    assert payload["rows_shown"] == 3 and payload["rows"][2][0] == 0
    assert pq.read_table(run.parquet_path).column_names == [long_name(i) for i in range(LONG_COLS)]  # real names kept


def test_many_rows_and_long_notes_fit_the_budget(db, tmp_path):
    run = run_query(db, "SELECT i, repeat('y', 400) AS t FROM small, range(50)", parquet_path=tmp_path / "q.parquet")
    run.notes = ["n" * 5_000] * 40  # notes are capped too
    payload = result_for_model(run, "q1")
    assert size(payload) <= TOOL_RETURN_BUDGET_CHARS
    assert 0 < payload["rows_shown"] < run.row_count and "did not fit" in payload["notes"][-1]
    assert len(payload["notes"]) <= 13 and all(len(n) <= 650 for n in payload["notes"])


def test_a_small_result_is_shown_whole(db, tmp_path):
    run = run_query(db, "SELECT * FROM small ORDER BY i", parquet_path=tmp_path / "q.parquet")
    payload = result_for_model(run, "q7")
    assert payload == {
        "result": "q7", "row_count": 10, "column_count": 2,
        "columns": [{"name": "i", "type": "BIGINT"}, {"name": "label", "type": "VARCHAR"}],
        "rows_shown": 10, "notes": [], "rows": [[i, f"row {i}"] for i in range(10)],
    }


def wide_refs(n_tables: int, n_cols: int = WIDE_COLS, name_len: int = 600) -> list[DatasetRef]:
    cols = [(f"col{i}_" + "z" * name_len, "VARCHAR") for i in range(n_cols)]
    return [DatasetRef(i, f"t{i}", f"file{i}.csv", "0" * 64, 1, cols) for i in range(n_tables)]


@pytest.mark.parametrize(("n_tables", "n_cols"), [(1, WIDE_COLS), (12, WIDE_COLS), (3_000, 2)])
def test_overview_and_list_tables_fit_their_budgets(n_tables, n_cols):
    refs = wide_refs(n_tables, n_cols)
    text = overview_text("ws", refs)
    assert len(text) <= OVERVIEW_BUDGET_CHARS and "- t0:" in text
    assert "more columns" in text or "more tables" in text
    listed = tables_for_model(refs)
    assert size(listed) <= TOOL_RETURN_BUDGET_CHARS and listed["table_count"] == n_tables
    assert listed["tables"][0]["table"] == "t0" and listed["notes"]


def test_profile_of_5000_columns_fits_the_budget():
    records = [{"column": f"c{i}_" + "q" * 3_000, "type": "VARCHAR", "rows": 1, "nulls": 0, "distinct": 1,
                "min": "a" * 600, "max": "b" * 600} for i in range(WIDE_COLS)]
    payload = profile_for_model("wide", records)
    assert size(payload) <= TOOL_RETURN_BUDGET_CHARS and 0 < len(payload["columns"]) < WIDE_COLS
    assert "columns are profiled here" in payload["notes"][0]


def test_every_tool_return_and_the_instructions_fit_through_the_agent(db, tmp_path):
    """The real agent and tools on the wide workspace: each ToolReturnPart the model receives fits."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        refs = []
        for i, table in enumerate(["wide", "longnames", "small"]):
            cols = con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index", [table]).fetchall()
            refs.append(DatasetRef(i, table, f"{table}.csv", "0" * 64, 1, cols))
    calls = [ToolCallPart("list_tables", {}), ToolCallPart("profile_table", {"table": "longnames"}),
             ToolCallPart("run_sql", {"purpose": "wide", "sql": "SELECT * FROM wide"}),
             ToolCallPart("run_sql", {"purpose": "long names", "sql": "SELECT * FROM longnames"})]
    instructions = []

    def plan(messages, info):
        instructions.append(info.instructions or "")
        done = turn_returns(messages)
        if len(done) < len(calls):
            return ModelResponse(parts=[calls[len(done)]])
        return ModelResponse(parts=[output_call(info, "FinalAnswer", {"answer_markdown": "ok"})])

    deps = AgentDeps(workspace_name="wide", db_path=db, run_dir=tmp_path / "run", datasets=refs)
    (tmp_path / "run").mkdir()
    result = build_agent().run_sync("look", model=scripted(plan), deps=deps)
    returns = [p for m in result.all_messages() for p in getattr(m, "parts", []) if p.part_kind == "tool-return" and not p.tool_name.startswith("final_result")]
    assert [r.tool_name for r in returns] == ["list_tables", "profile_table", "run_sql", "run_sql"]
    for r in returns:
        assert r.outcome == "success" and size(r.content) <= TOOL_RETURN_BUDGET_CHARS, (r.tool_name, size(r.content))
    assert max(len(t) for t in instructions) <= OVERVIEW_BUDGET_CHARS + 5_000  # overview + the conventions
    assert [rec.run.row_count for rec in deps.results] == [1, 3]
