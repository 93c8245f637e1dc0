"""Run one untrusted, read-only query on a workspace's DuckDB and keep its full result as Parquet.

Safety, in order (recipe and evidence: shared/FACTS.md):
1. Statement gate: DuckDB's own parser (`extract_statements`) must find exactly one statement, of
   type SELECT (this covers WITH, FROM-first, VALUES, DESCRIBE, SHOW, SUMMARIZE).
2. Function gate: the parse tree (`json_serialize_sql`) is walked for every function, table
   function, system view and SHOW target, in subqueries, CTEs and lateral joins too. Functions and
   views that reveal paths, settings, files, secrets, extensions, memory, temporary files, logs or
   the environment, or that run SQL text the gate cannot see, are refused with a reason naming
   them (`DENIED_FUNCTIONS`, `DENIED_VIEWS`); a table function in FROM must be on
   `ALLOWED_TABLE_FUNCTIONS`. SQL the parser cannot serialise is refused (fails closed).
3. The sandboxed reader of `store.py`: read-only, no file system, no network, no extensions,
   configuration locked.
4. A timeout: a timer interrupts the cursor (`QUERY_TIMEOUT_S` default 30 s).
5. Row caps: the first `rows_to_model` rows (default 200) are returned for the model; at most
   `result_row_limit` rows (default 1,000,000) are streamed into the Parquet file, batch by batch.
6. Size budgets for what reaches the model (`result_for_model`): every tool return is measured as
   the JSON the model receives and kept within `TOOL_RETURN_BUDGET_CHARS`, cutting cells, column
   names, types, columns, rows and notes with markers and saying what was cut.
"""

from __future__ import annotations

import json
import math
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cfo_desk.analytics.store import WorkspaceBusy, read_provenance, sandboxed_reader

QUERY_TIMEOUT_S = 30.0
ROWS_TO_MODEL = 200
RESULT_ROW_LIMIT = 1_000_000
ARROW_BATCH_ROWS = 10_000
ROW_GROUP_ROWS = 131_072
"""Rows per Parquet row group of a kept result (8 groups for 1M rows, like DuckDB's own export).
One group per 10k-row Arrow batch made 100 groups per 1M rows, 3x slower to read back."""
ROW_GROUP_BYTES = 64 * 1024 * 1024
"""A row group is also written once its buffered batches pass this many bytes (wide results)."""
MAX_SQL_CHARS = 20_000

# Named limits on what reaches the model (Datasette-style). Lengths are in characters of the JSON
# the model receives (`json.dumps`, so non-ASCII text counts as its escapes: a safe overestimate).
TOOL_RETURN_BUDGET_CHARS = 60_000
"""Every tool return (run_sql, profile_table, list_tables) fits in this many characters of JSON."""
MAX_MODEL_PAYLOAD_CHARS = TOOL_RETURN_BUDGET_CHARS
"""`run_query` stops collecting rows for the model once their JSON passes this (the first row is
always collected; `result_for_model` then fits everything into `TOOL_RETURN_BUDGET_CHARS`)."""
MAX_CELL_CHARS = 500
"""A longer text cell reaches the model cut, with a marker `…[N more chars]`."""
MAX_COLUMN_NAME_CHARS = 120
"""A longer column (or table) name reaches the model cut, with a marker; Parquet keeps it whole."""
MAX_TYPE_CHARS = 200
"""A longer type (a STRUCT with many fields) reaches the model cut, with a marker."""
MAX_COLUMNS_TO_MODEL = 100
"""At most this many columns of one result or table are shown; the return says how many were left out."""
MAX_NOTE_CHARS = 600
"""One note (what was cut, renamed, truncated) is cut to this many characters."""
MAX_NOTES = 12
"""At most this many notes go with one tool return (besides the one saying how many rows are shown)."""
MAX_ERROR_CHARS = 4_000
"""An error or refusal sent back to the model is cut to this many characters."""
OVERVIEW_BUDGET_CHARS = 20_000
"""The workspace overview in the agent's instructions (tables and their columns) fits this."""
OVERVIEW_COLUMNS_PER_TABLE = 60
"""The overview lists at most this many columns per table (list_tables/profile_table show more)."""


class QueryError(Exception):
    """A query that did not produce a result; the message is meant for the model to fix it."""


class QueryRefused(QueryError):
    """The statement gate refused the SQL (not exactly one read-only SELECT)."""


class QueryTimeout(QueryError):
    """The query ran past its time limit and was interrupted."""


class QueryBusy(QueryError):
    """The workspace stayed busy (an upload, maybe in another process) for the whole timeout."""


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
    """Raise QueryRefused unless `sql` is exactly one SELECT statement (DuckDB's parser decides)
    that uses no refused function, table function, system view or SHOW target (`check_functions`)."""
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
    check_functions(con, sql)


# --- The function gate ------------------------------------------------------------------------
# Trade-off: table functions (FROM f(...)) are an allow-list, because of DuckDB 2.0's 105 table
# functions most read files, change state, or report on the process (settings, memory, secrets,
# logs), an analyst's SQL needs only a handful, and a table function added by a later DuckDB or an
# extension is then refused until someone looks at it. Scalar, aggregate and window functions
# (over 900, nearly all pure computations) are a deny-list: an allow-list there would break ordinary
# SQL with every DuckDB release, and the few that reveal anything are listed below. System views
# (read like tables) are a deny-list too: information_schema, duckdb_tables/columns and pg_catalog
# show only catalog names (the catalog name is the file stem), never a path or a setting.

_PATHS = "reveals file paths or database files"
_SETTINGS = "reveals the configuration (settings include data and secret directories)"
_SECRETS = "reveals secrets or how they are stored"
_EXTENSIONS = "reveals extensions and where they are installed"
_MEMORY = "reveals memory, storage or temporary-file internals"
_ENV = "reveals the environment or the platform"
_LOGS = "reads or changes logging and profiling"
_FILES = "reads files (there is no file access; query the workspace tables)"
_HIDDEN_SQL = "runs SQL text the gate cannot check"
_STATE = "changes the database or the process"

DENIED_FUNCTIONS: dict[str, str] = {
    # paths and attached databases
    "duckdb_databases": _PATHS, "database_list": _PATHS, "pragma_database_list": _PATHS,
    "duckdb_approx_database_count": _PATHS, "read_duckdb": _PATHS,
    # settings
    "duckdb_settings": _SETTINGS, "current_setting": _SETTINGS, "pg_settings": _SETTINGS,
    "duckdb_profiling_settings": _SETTINGS, "getvariable": _SETTINGS, "duckdb_variables": _SETTINGS,
    # secrets
    "duckdb_secrets": _SECRETS, "which_secret": _SECRETS, "duckdb_secret_types": _SECRETS,
    "duckdb_secret_type_parameters": _SECRETS, "add_parquet_key": _SECRETS,
    # extensions
    "duckdb_extensions": _EXTENSIONS, "duckdb_extension_repositories": _EXTENSIONS,
    "extension_versions": _EXTENSIONS, "duckdb_grammar_extensions": _EXTENSIONS,
    # memory, storage, temporary files, caches
    "duckdb_temporary_files": _MEMORY, "duckdb_memory": _MEMORY, "duckdb_eviction_queues": _MEMORY,
    "pragma_database_size": _MEMORY, "database_size": _MEMORY, "pragma_storage_info": _MEMORY,
    "storage_info": _MEMORY, "pragma_metadata_info": _MEMORY, "metadata_info": _MEMORY,
    "duckdb_external_file_cache": _MEMORY, "duckdb_connection_count": _MEMORY, "get_block_size": _MEMORY,
    # environment and platform
    "getenv": _ENV, "pragma_platform": _ENV, "platform": _ENV, "pragma_user_agent": _ENV, "user_agent": _ENV,
    # logs and profiling
    "duckdb_logs": _LOGS, "duckdb_logs_parsed": _LOGS, "duckdb_log_contexts": _LOGS, "enable_logging": _LOGS,
    "disable_logging": _LOGS, "truncate_duckdb_logs": _LOGS, "write_log": _LOGS, "enable_profiling": _LOGS,
    "disable_profiling": _LOGS, "duckdb_available_metrics": _LOGS, "parse_duckdb_log_message": _LOGS,
    # files (already impossible in the sandbox; refused here with a clearer reason)
    "read_csv": _FILES, "read_csv_auto": _FILES, "read_single_csv_file": _FILES, "sniff_csv": _FILES,
    "read_parquet": _FILES, "parquet_scan": _FILES, "read_single_parquet_file": _FILES,
    "parquet_metadata": _FILES, "parquet_file_metadata": _FILES, "parquet_full_metadata": _FILES,
    "parquet_kv_metadata": _FILES, "parquet_schema": _FILES, "parquet_bloom_probe": _FILES,
    "read_json": _FILES, "read_json_auto": _FILES, "read_json_objects": _FILES, "read_json_objects_auto": _FILES,
    "read_ndjson": _FILES, "read_ndjson_auto": _FILES, "read_ndjson_objects": _FILES,
    "read_single_json_file": _FILES, "read_text": _FILES, "read_blob": _FILES, "glob": _FILES,
    "arrow_scan": _FILES, "arrow_scan_dumb": _FILES, "python_arrow_scan": _FILES, "pandas_scan": _FILES,
    "python_map_function": _FILES,
    # SQL in a string, which the parse tree does not show
    "query": _HIDDEN_SQL, "query_table": _HIDDEN_SQL, "json_execute_serialized_sql": _HIDDEN_SQL,
    "json_serialize_plan": _HIDDEN_SQL,
    # state changes
    "checkpoint": _STATE, "force_checkpoint": _STATE, "create_external_resource": _STATE,
    "register_external_resource": _STATE, "register_external_resource_type": _STATE,
    "deregister_external_resource": _STATE, "destroy_external_resource": _STATE,
    "duckdb_external_resources": _STATE, "duckdb_external_resource_types": _STATE,
    "import_database": _STATE, "copy_database": _STATE,
}
"""Functions and views refused wherever they appear, with the reason the model is told."""

DENIED_VIEWS = {name for name in DENIED_FUNCTIONS}
"""System views refused like the functions of the same name (`FROM duckdb_databases`,
`pragma_database_list`, `pg_catalog.pg_settings`, `duckdb_logs`), unless a workspace table of that
name shadows them (an unqualified name then reads the workspace table)."""

ALLOWED_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "json_each", "json_tree", "repeat", "repeat_row", "summary",
    "duckdb_tables", "duckdb_columns", "duckdb_views", "duckdb_schemas", "duckdb_types",
    "duckdb_constraints", "duckdb_indexes", "duckdb_sequences", "duckdb_dependencies",
    "duckdb_functions", "duckdb_keywords", "pragma_table_info", "pragma_show", "pragma_version",
    "pragma_collations", "pg_timezone_names", "icu_calendar_names",
})
"""The table functions agent SQL may call in FROM: generators, unnesting, JSON, and the catalog
(tables, columns, types); everything else in FROM position is refused. Not `histogram` /
`histogram_values`: these table macros take a table name as a bare identifier, which the parse
tree shows as a column, so `histogram(duckdb_databases, path)` would read the path unseen."""

ALLOWED_SHOW_SPECIAL = frozenset({'"tables"', "__show_tables_expanded", '"databases"', '"schemas"', '"variables"'})
"""SHOW TABLES / SHOW ALL TABLES / SHOW DATABASES / SHOW SCHEMAS / SHOW VARIABLES (names only)."""


def _clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters plus a marker saying how many were cut."""
    return text if len(text) <= limit else text[:limit] + f"…[{len(text) - limit:,} more chars]"


def _refuse(name: str, reason: str) -> QueryRefused:
    return QueryRefused(f"{_clip(name, MAX_COLUMN_NAME_CHARS)} is not allowed: it {reason}.")


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if len(name) >= 2 and name[0] == name[-1] == '"' else name


def _references(node: object, out: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Every function call, table-function call, base table and SHOW target in a parse tree, as
    (kind, node) with kind one of "function", "table_function", "table", "show"."""
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
            out.append(("table_function", node["function"]))
        elif node.get("class") == "FUNCTION" or (kind == "FUNCTION" and "function_name" in node):
            out.append(("function", node))
        elif kind == "BASE_TABLE":
            out.append(("table", node))
        elif kind == "SHOW_REF":
            out.append(("show", node))
        for value in node.values():
            _references(value, out)
    elif isinstance(node, list):
        for value in node:
            _references(value, out)
    return out


def check_functions(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise QueryRefused when the SQL calls a denied function, a table function not allowed in
    FROM, a denied system view, or SHOWs a setting. Fails closed: SQL whose parse tree DuckDB cannot
    produce is refused (in DuckDB 2.0 every statement that passes the SELECT gate, DESCRIBE, SHOW and
    SUMMARIZE included, has one; `json_serialize_sql` rejects only non-SELECT statements such as
    PIVOT, which the statement gate refuses first as MULTI)."""
    try:
        (tree_text,) = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
        tree = json.loads(tree_text)
    except (duckdb.Error, ValueError, TypeError) as exc:
        raise QueryRefused(f"This SQL could not be checked, so it is refused ({_clip(str(exc), 300)}).") from exc
    if not isinstance(tree, dict) or tree.get("error") or not tree.get("statements"):
        detail = tree.get("error_message", "") if isinstance(tree, dict) else ""
        raise QueryRefused(
            "This SQL could not be checked, so it is refused"
            + (f" ({_clip(str(detail), 300)})" if detail else "")
            + ". Write it as a plain SELECT."
        )
    refs = _references(tree, [])
    workspace_tables: set[str] | None = None
    settings: set[str] | None = None
    for kind, node in refs:
        if kind in ("function", "table_function"):
            name = str(node.get("function_name", "")).lower()
            if name in DENIED_FUNCTIONS:
                raise _refuse(f"{name}()", DENIED_FUNCTIONS[name])
            if kind == "table_function" and name not in ALLOWED_TABLE_FUNCTIONS:
                raise QueryRefused(
                    f"{_clip(name, MAX_COLUMN_NAME_CHARS)}() is not allowed: in FROM only these table functions may be used: "
                    + ", ".join(sorted(ALLOWED_TABLE_FUNCTIONS)) + "."
                )
        elif kind == "table":
            name = str(node.get("table_name", "")).lower()
            if name in DENIED_VIEWS:
                qualified = bool(node.get("schema_name") or node.get("catalog_name"))
                if workspace_tables is None:
                    workspace_tables = _workspace_tables(con)
                if qualified or name not in workspace_tables:
                    raise _refuse(name, DENIED_FUNCTIONS[name])
        elif kind == "show":
            show_type, target = node.get("show_type"), str(node.get("table_name") or "")
            if show_type == "SHOW_SPECIAL" and target not in ALLOWED_SHOW_SPECIAL:
                raise QueryRefused(f"SHOW {_clip(_unquote(target), MAX_COLUMN_NAME_CHARS)} is not allowed; use SHOW TABLES or DESCRIBE <table>.")
            if show_type == "SHOW" and target:
                plain = _unquote(target).lower()
                if settings is None:
                    settings = {r[0].lower() for r in con.execute("SELECT name FROM duckdb_settings()").fetchall()}
                if plain in settings:
                    raise _refuse(f"SHOW {_clip(plain, MAX_COLUMN_NAME_CHARS)}", _SETTINGS)
                # Otherwise SHOW <name> describes a table or view: column names and types only.


def _workspace_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {
        r[0].lower()
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "UNION SELECT view_name FROM duckdb_views() WHERE database_name = current_database() AND NOT internal"
        ).fetchall()
    }


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
    refs = _references(json.loads(tree), [])
    names = {node["table_name"] for kind, node in refs if kind == "table" and isinstance(node.get("table_name"), str)}
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
        return _clip(value, MAX_CELL_CHARS)
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
    started = time.perf_counter()  # waiting for a busy workspace counts against timeout_s
    with ExitStack() as stack:
        try:
            con = stack.enter_context(sandboxed_reader(db_path, timeout_s=timeout_s))
        except WorkspaceBusy as exc:
            raise QueryBusy(str(exc)) from None  # a sentence without paths or PIDs
        check_statement(con, sql)
        tables = tables_read(con, sql)
        provenance = read_provenance(con, tables)  # same connection, same lock: matches the rows read
        cur = con.cursor()
        timed_out, stopped, finished = threading.Event(), threading.Event(), threading.Event()

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
            pending: list[pa.RecordBatch] = []  # batches buffered into one row group
            pending_rows = pending_bytes = 0
            for batch in reader:
                batch = _storable(pa.RecordBatch.from_arrays(batch.columns, names=names))
                if writer is None:
                    writer = pq.ParquetWriter(parquet_path, batch.schema)
                room = result_row_limit - kept
                if batch.num_rows > room:
                    batch, truncated = batch.slice(0, room), True
                if batch.num_rows:
                    pending.append(batch)
                    pending_rows += batch.num_rows
                    pending_bytes += batch.nbytes
                    if pending_rows >= ROW_GROUP_ROWS or pending_bytes >= ROW_GROUP_BYTES:
                        _write_group(writer, pending)
                        pending, pending_rows, pending_bytes = [], 0, 0
                    kept += batch.num_rows
                    if not head_full and len(head) < rows_to_model:
                        part = batch.slice(0, rows_to_model - len(head))
                        for row in zip(*(c.to_pylist() for c in part.columns)):  # by position, never by name
                            cells = [_jsonable(v) for v in row]
                            head_chars += json_chars(cells)
                            if head and head_chars > MAX_MODEL_PAYLOAD_CHARS:
                                head_full = True
                                break
                            head.append(cells)
                if truncated:
                    break
            if pending:
                _write_group(writer, pending)
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
        renamed = [n for n, o in zip(names, original_names) if n != o]
        notes.append(_clip("Duplicate column names were made unique: " + ", ".join(renamed) + ".", MAX_NOTE_CHARS))
    if truncated:
        notes.append(f"Only the first {result_row_limit:,} rows were kept.")
    return QueryRun(columns, head, kept, truncated, tables, duration, parquet_path, notes, provenance)


def _write_group(writer: pq.ParquetWriter, batches: list[pa.RecordBatch]) -> None:
    """Write buffered batches as one row group (a batch per `write_batch` would make one group each)."""
    table = pa.Table.from_batches(batches)
    writer.write_table(table, row_group_size=max(table.num_rows, 1))


def read_result(parquet_path: Path) -> pa.Table:
    """Load a kept query result (Parquet) as an Arrow table."""
    return pq.read_table(parquet_path)


# --- What the model receives ------------------------------------------------------------------


def json_chars(value: object) -> int:
    """Characters of `value` as JSON (`json.dumps` with its default separators and ASCII escapes),
    the measure every budget here uses."""
    return len(json.dumps(value, default=str))


def clip_text(value: object, limit: int) -> object:
    """A string cut to `limit` characters with a marker; anything else unchanged."""
    return _clip(value, limit) if isinstance(value, str) else value


def clip_notes(notes: list[str]) -> list[str]:
    """At most `MAX_NOTES` notes of at most `MAX_NOTE_CHARS` each; the last says how many were left out."""
    out = [_clip(str(n), MAX_NOTE_CHARS) for n in notes]
    if len(out) > MAX_NOTES:
        out = out[: MAX_NOTES - 1] + [f"{len(out) - MAX_NOTES + 1} more notes were left out."]
    return out


def fit_items(payload: dict, key: str, items: list, budget_chars: int) -> int:
    """Set `payload[key]` to the longest prefix of `items` that keeps `json_chars(payload)` within
    `budget_chars`; returns how many items went in."""
    payload[key] = []
    size = json_chars(payload)
    shown: list = []
    for item in items:
        extra = json_chars(item) + (2 if shown else 0)  # ", " between list items
        if size + extra > budget_chars:
            break
        shown.append(item)
        size += extra
    payload[key] = shown
    return len(shown)


_NOTE_RESERVE = MAX_NOTE_CHARS + 40  # room kept for the note that says how many rows are shown


def result_for_model(run: QueryRun, handle: str, *, budget_chars: int = TOOL_RETURN_BUDGET_CHARS) -> dict:
    """The run_sql tool return: the result's handle, counts, columns, first rows and notes, within
    `budget_chars` characters of JSON.

    Column names and types are cut (`MAX_COLUMN_NAME_CHARS`, `MAX_TYPE_CHARS`), at most
    `MAX_COLUMNS_TO_MODEL` columns are shown (fewer when even one row would not fit), rows are added
    while they fit, and the notes say what was cut. The kept Parquet result is untouched.
    """
    total_cols = len(run.columns)
    shown_cols = min(total_cols, MAX_COLUMNS_TO_MODEL)
    while True:
        columns = [{"name": _clip(c["name"], MAX_COLUMN_NAME_CHARS), "type": _clip(c["type"], MAX_TYPE_CHARS)} for c in run.columns[:shown_cols]]
        cut: list[str] = []
        if shown_cols < total_cols:
            cut.append(
                f"Only the first {shown_cols:,} of {total_cols:,} columns are shown to you ({total_cols - shown_cols:,} left out); "
                f"the kept result {handle} has them all. Select fewer columns."
            )
        if any(len(c["name"]) > MAX_COLUMN_NAME_CHARS for c in run.columns[:shown_cols]):
            cut.append(f"Column names longer than {MAX_COLUMN_NAME_CHARS} characters are cut (…[N more chars]); the kept result has the full names. Alias long names in SQL.")
        if any(len(c["type"]) > MAX_TYPE_CHARS for c in run.columns[:shown_cols]):
            cut.append(f"Column types longer than {MAX_TYPE_CHARS} characters are cut.")
        payload: dict = {
            "result": handle,
            "row_count": run.row_count,
            "column_count": total_cols,
            "columns": columns,
            "rows_shown": len(run.rows),
            "notes": clip_notes(run.notes + cut),
        }
        n = fit_items(payload, "rows", [row[:shown_cols] for row in run.rows], budget_chars - _NOTE_RESERVE)
        payload["rows_shown"] = n
        if n < run.row_count:
            why = f" (the rest did not fit the {budget_chars:,}-character budget of what you are shown)" if n < len(run.rows) else ""
            payload["notes"].append(f"Only the first {n:,} of {run.row_count:,} rows are shown to you{why}.")
        if (json_chars(payload) <= budget_chars and (n or not run.rows)) or shown_cols <= 1:
            break
        shown_cols = max(1, shown_cols // 2)  # not even one row fits: show fewer columns
    if json_chars(payload) > budget_chars:  # one column whose name, type and first cell are too wide
        payload["rows"], payload["rows_shown"] = [], 0
        payload["notes"] = clip_notes(payload["notes"][:MAX_NOTES - 1] + ["No rows fit the size budget of what you are shown."])
    return payload
