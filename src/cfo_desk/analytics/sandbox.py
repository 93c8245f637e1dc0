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

import json
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

from cfo_desk.analytics.store import read_provenance, sandboxed_reader

QUERY_TIMEOUT_S = 30.0
ROWS_TO_MODEL = 200
RESULT_ROW_LIMIT = 1_000_000
ARROW_BATCH_ROWS = 10_000
MAX_SQL_CHARS = 20_000
MAX_CELL_CHARS = 500  # a longer text cell reaches the model cut, with a marker
MAX_MODEL_PAYLOAD_CHARS = 60_000  # rows for the model stop before their text passes this


class QueryError(Exception):
    """A query that did not produce a result; the message is meant for the model to fix it."""


class QueryRefused(QueryError):
    """The statement gate refused the SQL (not exactly one read-only SELECT)."""


class QueryTimeout(QueryError):
    """The query ran past its time limit and was interrupted."""


class QueryStopped(QueryError):
    """The query was interrupted because its run was stopped (the analyst pressed Stop)."""


WATCH_INTERVAL_S = 0.05  # how often the watchdog checks the deadline and the stop flag


@dataclass
class QueryRun:
    """What one query produced.

    `rows` are the first rows (at most rows_to_model) as JSON-friendly lists; `row_count` counts
    every row kept in the Parquet file; `truncated` says rows beyond `result_row_limit` were dropped.
    `tables` are the workspace tables the SQL reads (by DuckDB's parser), `table_sha256` their
    source files' sha256 as stamped on the tables at ingest. `duration_s` in seconds.
    """

    columns: list[dict[str, str]]
    rows: list[list[object]]
    row_count: int
    truncated: bool
    tables: list[str]
    duration_s: float
    parquet_path: Path
    notes: list[str] = field(default_factory=list)
    table_sha256: dict[str, str] = field(default_factory=dict)


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


def unique_names(names: list[str]) -> list[str]:
    """Column names made unique in order: a SELECT * over a join gives ["id", "id"] -> ["id", "id_2"]."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate in seen:
            n += 1
            candidate = f"{name}_{n}"
        seen.add(candidate)
        out.append(candidate)
    return out


def _base_tables(node: object, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
            out.add(node["table_name"])
        for value in node.values():
            _base_tables(value, out)
    elif isinstance(node, list):
        for value in node:
            _base_tables(value, out)
    return out


def tables_read(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """The workspace tables a query reads, by DuckDB's own parser.

    `get_table_names` binds the query and fails on some valid SQL (DuckDB 2.0: `JOIN ... USING`,
    `NATURAL JOIN`); then the parse tree from `json_serialize_sql` is walked for base-table
    references, kept when such a table exists (so CTE names drop out unless they shadow a table).
    """
    try:
        return sorted(con.get_table_names(sql))
    except duckdb.Error:
        pass
    (tree,) = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    names = _base_tables(json.loads(tree), set())
    existing = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()}
    return sorted(names & existing)


def _interval_text(value: object) -> str | None:
    """An Arrow month-day-nano interval as DuckDB writes it: '1 year 2 months 3 days 04:05:06'."""
    if value is None:
        return None
    if not hasattr(value, "months"):
        return str(value)
    years, months = divmod(value.months, 12)
    parts = [f"{n} {unit}{'s' if abs(n) != 1 else ''}" for n, unit in ((years, "year"), (months, "month"), (value.days, "day")) if n]
    if value.nanoseconds:
        secs = value.nanoseconds / 1e9
        h, rem = divmod(abs(secs), 3600)
        m, sec = divmod(rem, 60)
        parts.append(f"{'-' if secs < 0 else ''}{int(h):02d}:{int(m):02d}:{sec:09.6f}".rstrip("0").rstrip("."))
    return " ".join(parts) or "00:00:00"


def _storable(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Cast columns Parquet cannot hold (INTERVAL, unions, ...) to text, keeping the rest as is."""
    arrays = []
    for col in batch.columns:
        if pa.types.is_interval(col.type) or pa.types.is_union(col.type):
            arrays.append(pa.array([_interval_text(v) for v in col.to_pylist()], type=pa.string()))
        else:
            arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


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
    if isinstance(value, str):
        return value if len(value) <= MAX_CELL_CHARS else value[:MAX_CELL_CHARS] + f"…[{len(value) - MAX_CELL_CHARS:,} more chars]"
    if isinstance(value, (int, bool)):
        return value
    return _jsonable(str(value))


def run_query(
    db_path: Path,
    sql: str,
    *,
    parquet_path: Path,
    timeout_s: float = QUERY_TIMEOUT_S,
    rows_to_model: int = ROWS_TO_MODEL,
    result_row_limit: int = RESULT_ROW_LIMIT,
    stop: threading.Event | None = None,
) -> QueryRun:
    """Run `sql` in the sandbox over the workspace database at `db_path`.

    Writes the result (up to `result_row_limit` rows) to `parquet_path` (removed again on error).
    A watchdog thread interrupts the query after `timeout_s` seconds, or within about 0.05 s of
    `stop` being set. Raises QueryRefused (gate), QueryTimeout, QueryStopped, or QueryError
    (DuckDB's message, e.g. a binder error naming the unknown column).
    """
    parquet_path.parent.mkdir(parents=True, exist_ok=True)
    with sandboxed_reader(db_path) as con:
        check_statement(con, sql)
        tables = tables_read(con, sql)
        provenance = read_provenance(con, tables)  # same connection, same lock: matches the rows read
        cur = con.cursor()
        timed_out, stopped, finished = threading.Event(), threading.Event(), threading.Event()
        started = time.perf_counter()

        def _watchdog() -> None:
            deadline = started + timeout_s
            while not finished.wait(min(WATCH_INTERVAL_S, max(0.0, deadline - time.perf_counter()))):
                if stop is not None and stop.is_set():
                    stopped.set()
                    cur.interrupt()
                    return
                if time.perf_counter() >= deadline:
                    timed_out.set()
                    cur.interrupt()
                    return

        watchdog = threading.Thread(target=_watchdog, name="sql-watchdog", daemon=True)
        watchdog.start()
        writer: pq.ParquetWriter | None = None
        try:
            relation = cur.sql(sql)
            original_names = list(relation.columns)
            names = unique_names(original_names)
            columns = [{"name": n, "type": str(t)} for n, t in zip(names, relation.types)]
            reader = relation.to_arrow_reader(ARROW_BATCH_ROWS)
            kept, truncated, head, head_chars, head_full = 0, False, [], 0, False
            for batch in reader:
                batch = _storable(pa.RecordBatch.from_arrays(batch.columns, names=names))
                if writer is None:
                    writer = pq.ParquetWriter(parquet_path, batch.schema)
                room = result_row_limit - kept
                if batch.num_rows > room:
                    batch, truncated = batch.slice(0, room), True
                if batch.num_rows:
                    writer.write_batch(batch)
                    kept += batch.num_rows
                    if not head_full and len(head) < rows_to_model:
                        part = batch.slice(0, rows_to_model - len(head))
                        for row in zip(*(c.to_pylist() for c in part.columns)):  # by position, never by name
                            cells = [_jsonable(v) for v in row]
                            head_chars += len(repr(cells))
                            if head and head_chars > MAX_MODEL_PAYLOAD_CHARS:
                                head_full = True
                                break
                            head.append(cells)
                if truncated:
                    break
            if writer is None:  # no batch at all: an empty result still gets its (empty) file
                writer = pq.ParquetWriter(parquet_path, pa.schema([(n, pa.string()) for n in names]))
            writer.close()
            writer = None
        except duckdb.InterruptException as exc:
            parquet_path.unlink(missing_ok=True)
            if stopped.is_set():
                raise QueryStopped("The run was stopped.") from exc
            if timed_out.is_set():
                raise QueryTimeout(
                    f"The query ran longer than {timeout_s:g} seconds and was stopped. "
                    "Aggregate more, filter earlier, or avoid cross joins."
                ) from exc
            raise QueryError("The query was interrupted.") from exc
        except pa.ArrowException as exc:
            parquet_path.unlink(missing_ok=True)
            raise QueryError(f"The result could not be stored ({exc}); cast unusual columns to VARCHAR or DOUBLE.") from exc
        except duckdb.Error as exc:
            parquet_path.unlink(missing_ok=True)
            if timed_out.is_set():
                raise QueryTimeout(f"The query ran longer than {timeout_s:g} seconds and was stopped.") from exc
            raise QueryError(str(exc)) from exc
        except BaseException:
            parquet_path.unlink(missing_ok=True)
            raise
        finally:
            finished.set()
            if writer is not None:
                writer.close()
            cur.close()
        duration = time.perf_counter() - started
    notes = []
    if head_full:
        notes.append(f"Only {len(head)} rows fit the size limit for what you are shown; aggregate or select fewer columns.")
    if names != original_names:
        notes.append("Duplicate column names were made unique: " + ", ".join(c["name"] for c in columns) + ".")
    if truncated:
        notes.append(f"Only the first {result_row_limit:,} rows were kept.")
    return QueryRun(columns, head, kept, truncated, tables, duration, parquet_path, notes, provenance)


def read_result(parquet_path: Path) -> pa.Table:
    """Load a kept query result (Parquet) as an Arrow table."""
    return pq.read_table(parquet_path)
