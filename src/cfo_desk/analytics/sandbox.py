"""Run one untrusted, read-only query on a workspace's DuckDB and keep its full result as Parquet.

Safety, in order (recipe and evidence: shared/FACTS.md):
1. Statement gate: DuckDB's own parser (`extract_statements`) must find exactly one statement, of
   type SELECT (this covers WITH, FROM-first, VALUES, DESCRIBE, SHOW, SUMMARIZE).
2. The sandboxed reader of `store.py`: read-only, no file system, no network, no extensions,
   configuration locked.
3. A timeout: a timer interrupts the cursor (`QUERY_TIMEOUT_S` default 30 s).
4. Row caps: the first `rows_to_model` rows (default 200) are returned for the model; at most
   `result_row_limit` rows (default 1,000,000) are streamed into the Parquet file, batch by batch.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cfo_desk.analytics.store import sandboxed_reader

QUERY_TIMEOUT_S = 30.0
ROWS_TO_MODEL = 200
RESULT_ROW_LIMIT = 1_000_000
ARROW_BATCH_ROWS = 10_000
MAX_SQL_CHARS = 20_000


class QueryError(Exception):
    """A query that did not produce a result; the message is meant for the model to fix it."""


class QueryRefused(QueryError):
    """The statement gate refused the SQL (not exactly one read-only SELECT)."""


class QueryTimeout(QueryError):
    """The query ran past its time limit and was interrupted."""


@dataclass
class QueryRun:
    """What one query produced.

    `rows` are the first rows (at most rows_to_model) as JSON-friendly lists; `row_count` counts
    every row kept in the Parquet file; `truncated` says rows beyond `result_row_limit` were dropped.
    `tables` are the workspace tables the SQL reads (by DuckDB's parser). `duration_s` in seconds.
    """

    columns: list[dict[str, str]]
    rows: list[list[object]]
    row_count: int
    truncated: bool
    tables: list[str]
    duration_s: float
    parquet_path: Path
    notes: list[str] = field(default_factory=list)


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise QueryRefused unless `sql` is exactly one SELECT statement (DuckDB's parser decides)."""
    if not sql or not sql.strip():
        raise QueryRefused("The SQL is empty.")
    if len(sql) > MAX_SQL_CHARS:
        raise QueryRefused(f"The SQL is longer than {MAX_SQL_CHARS:,} characters.")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"SQL parse error: {exc}") from exc
    if len(statements) != 1:
        raise QueryRefused(f"Send exactly one SQL statement; this has {len(statements)}.")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryRefused(f"Only read-only SELECT queries are allowed (this statement is {kind.name}).")


def _jsonable(value: object) -> object:
    """A JSON-friendly form of one cell (dates as ISO text, Decimals as float, NaN as None)."""
    if value is None:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (date, datetime, dtime)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (int, str, bool)):
        return value
    return str(value)


def run_query(
    db_path: Path,
    sql: str,
    *,
    parquet_path: Path,
    timeout_s: float = QUERY_TIMEOUT_S,
    rows_to_model: int = ROWS_TO_MODEL,
    result_row_limit: int = RESULT_ROW_LIMIT,
) -> QueryRun:
    """Run `sql` in the sandbox over the workspace database at `db_path`.

    Writes the result (up to `result_row_limit` rows) to `parquet_path` (removed again on error).
    Raises QueryRefused (gate), QueryTimeout (after `timeout_s` seconds) or QueryError (DuckDB's
    message, e.g. a binder error naming the unknown column).
    """
    parquet_path.parent.mkdir(parents=True, exist_ok=True)
    with sandboxed_reader(db_path) as con:
        check_statement(con, sql)
        try:
            tables = sorted(con.get_table_names(sql))
        except duckdb.Error:
            tables = []
        cur = con.cursor()
        timed_out = threading.Event()

        def _interrupt() -> None:
            timed_out.set()
            cur.interrupt()

        timer = threading.Timer(timeout_s, _interrupt)
        started = time.perf_counter()
        timer.start()
        writer: pq.ParquetWriter | None = None
        try:
            relation = cur.sql(sql)
            columns = [{"name": n, "type": str(t)} for n, t in zip(relation.columns, relation.types)]
            reader = relation.to_arrow_reader(ARROW_BATCH_ROWS)
            schema = reader.schema
            writer = pq.ParquetWriter(parquet_path, schema)
            kept, truncated, head = 0, False, []
            for batch in reader:
                room = result_row_limit - kept
                if batch.num_rows > room:
                    batch, truncated = batch.slice(0, room), True
                if batch.num_rows:
                    writer.write_batch(batch)
                    kept += batch.num_rows
                    if len(head) < rows_to_model:
                        need = rows_to_model - len(head)
                        part = batch.slice(0, need).to_pylist()
                        head.extend([[_jsonable(v) for v in row.values()] for row in part])
                if truncated:
                    break
            writer.close()
            writer = None
        except duckdb.InterruptException as exc:
            parquet_path.unlink(missing_ok=True)
            if timed_out.is_set():
                raise QueryTimeout(
                    f"The query ran longer than {timeout_s:g} seconds and was stopped. "
                    "Aggregate more, filter earlier, or avoid cross joins."
                ) from exc
            raise QueryError("The query was interrupted.") from exc
        except duckdb.Error as exc:
            parquet_path.unlink(missing_ok=True)
            if timed_out.is_set():
                raise QueryTimeout(f"The query ran longer than {timeout_s:g} seconds and was stopped.") from exc
            raise QueryError(str(exc)) from exc
        except BaseException:
            parquet_path.unlink(missing_ok=True)
            raise
        finally:
            timer.cancel()
            if writer is not None:
                writer.close()
            cur.close()
        duration = time.perf_counter() - started
    notes = []
    if truncated:
        notes.append(f"Only the first {result_row_limit:,} rows were kept.")
    return QueryRun(columns, head, kept, truncated, tables, duration, parquet_path, notes)


def read_result(parquet_path: Path) -> pa.Table:
    """Load a kept query result (Parquet) as an Arrow table."""
    return pq.read_table(parquet_path)
