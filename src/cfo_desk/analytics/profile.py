"""Read-only views of a workspace's tables: list, preview rows, and a per-column profile.

All reads go through the sandboxed reader; the SQL here is app code with quoted identifiers.
Each waits at most `timeout_s` seconds (None: `store.READ_WAIT_S`) for a busy workspace (an
upload here or in another process), then raises `store.WorkspaceBusy` (a sentence without paths
or PIDs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cfo_desk.analytics.store import quote_ident, sandboxed_reader

PREVIEW_ROWS = 50


@dataclass(frozen=True)
class TableInfo:
    """A table in the workspace database: name, row count and [(column, DuckDB type)]."""

    name: str
    row_count: int
    columns: list[tuple[str, str]]


def list_tables(db_path: Path, *, timeout_s: float | None = None) -> list[TableInfo]:
    """Every table of the workspace database with its columns (in order) and row count."""
    with sandboxed_reader(db_path, timeout_s=timeout_s) as con:
        cols = con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = 'main' ORDER BY table_name, column_index"
        ).fetchall()
        by_table: dict[str, list[tuple[str, str]]] = {}
        for table, column, dtype in cols:
            by_table.setdefault(table, []).append((column, dtype))
        out = []
        for table, columns in by_table.items():
            (count,) = con.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()
            out.append(TableInfo(table, int(count), columns))
    return out


def preview(db_path: Path, table: str, limit: int = PREVIEW_ROWS, *, timeout_s: float | None = None) -> pd.DataFrame:
    """The first `limit` rows of `table` as a DataFrame (in stored order)."""
    with sandboxed_reader(db_path, timeout_s=timeout_s) as con:
        return con.execute(f"SELECT * FROM {quote_ident(table)} LIMIT ?", [int(limit)]).fetchdf()


def profile_table(db_path: Path, table: str, *, timeout_s: float | None = None) -> pd.DataFrame:
    """One row per column: column, type, rows, nulls, null_pct (%), distinct, min, max (as text).

    Min and max come from DuckDB's SUMMARIZE; `nulls` and `distinct` are exact counts (SUMMARIZE's
    are a rounded percentage and an approximation), since analysts reconcile against them.
    """
    with sandboxed_reader(db_path, timeout_s=timeout_s) as con:
        df = con.execute(f"SUMMARIZE {quote_ident(table)}").fetchdf()
        cols = list(df["column_name"])
        exprs = ", ".join(f"count(DISTINCT {quote_ident(c)}), count(*) - count({quote_ident(c)})" for c in cols)
        counts = list(con.execute(f"SELECT {exprs} FROM {quote_ident(table)}").fetchone()) if cols else []
        distinct, nulls = counts[0::2], counts[1::2]
    rows = df["count"].astype("int64")
    return pd.DataFrame(
        {
            "column": df["column_name"],
            "type": df["column_type"],
            "rows": rows,
            "nulls": pd.Series(nulls, dtype="int64"),
            "null_pct": (pd.Series(nulls, dtype="float64") * 100 / rows.clip(lower=1)).round(2),
            "distinct": pd.Series(distinct, dtype="int64"),
            "min": df["min"].astype("string"),
            "max": df["max"].astype("string"),
        }
    )
