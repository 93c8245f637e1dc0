"""Read-only views of a workspace's tables: list, preview rows, and a per-column profile.

All reads go through the sandboxed reader; the SQL here is app code with quoted identifiers.
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


def list_tables(db_path: Path) -> list[TableInfo]:
    """Every table of the workspace database with its columns (in order) and row count."""
    with sandboxed_reader(db_path) as con:
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


def preview(db_path: Path, table: str, limit: int = PREVIEW_ROWS) -> pd.DataFrame:
    """The first `limit` rows of `table` as a DataFrame (in stored order)."""
    with sandboxed_reader(db_path) as con:
        return con.execute(f"SELECT * FROM {quote_ident(table)} LIMIT ?", [int(limit)]).fetchdf()


def profile_table(db_path: Path, table: str) -> pd.DataFrame:
    """One row per column: column, type, rows, nulls, null_pct (%), distinct, min, max (as text).

    Min, max and null share come from DuckDB's SUMMARIZE; `distinct` is exact (count DISTINCT),
    not SUMMARIZE's approximation, since analysts reconcile against it.
    """
    with sandboxed_reader(db_path) as con:
        df = con.execute(f"SUMMARIZE {quote_ident(table)}").fetchdf()
        exprs = ", ".join(f"count(DISTINCT {quote_ident(c)})" for c in df["column_name"])
        distinct = list(con.execute(f"SELECT {exprs} FROM {quote_ident(table)}").fetchone()) if exprs else []
    rows = df["count"].astype("int64")
    nulls = (df["null_percentage"].astype(float) * rows / 100).round().astype("int64")
    return pd.DataFrame(
        {
            "column": df["column_name"],
            "type": df["column_type"],
            "rows": rows,
            "nulls": nulls,
            "null_pct": df["null_percentage"].astype(float).round(1),
            "distinct": pd.Series(distinct, dtype="int64"),
            "min": df["min"].astype("string"),
            "max": df["max"].astype("string"),
        }
    )
