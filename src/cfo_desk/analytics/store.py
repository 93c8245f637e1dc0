"""Connections to a workspace's DuckDB file: one trusted writer, one sandboxed reader.

DuckDB refuses two connections with different configurations to one file in one process, and a
writer blocks readers. Every connection here is therefore short-lived and taken under the
workspace's lock (`workspace_lock`), so ingest, previews and agent queries never collide.

The reader is the sandbox recipe of shared/FACTS.md: no file system, no network, no extensions,
configuration locked. It is used for every query whose text is not app code (the agent's SQL) and
for previews and profiles too, so there is a single read path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

# Named limits for the sandboxed reader (Datasette-style): memory and threads per connection.
SANDBOX_MEMORY_LIMIT = "1GB"
SANDBOX_THREADS = 2

SANDBOX_CONFIG: dict[str, object] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "python_enable_replacements": False,
    "memory_limit": SANDBOX_MEMORY_LIMIT,
    "threads": SANDBOX_THREADS,
    "temp_directory": "",
}

_locks: dict[str, threading.RLock] = {}
_locks_guard = threading.Lock()


def workspace_lock(db_path: Path) -> threading.RLock:
    """The process-wide re-entrant lock for one DuckDB file (keyed by its resolved path)."""
    key = str(Path(db_path).resolve())
    with _locks_guard:
        return _locks.setdefault(key, threading.RLock())


@contextmanager
def writer(db_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A trusted read-write connection for app code (ingest, drops), held under the workspace lock.

    Creates the file and its folder when missing. Closed on exit; the caller manages transactions.
    """
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with workspace_lock(db_path):
        con = duckdb.connect(str(db_path))
        try:
            yield con
        finally:
            con.close()


@contextmanager
def sandboxed_reader(db_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only, sandboxed connection (no files, network, extensions; config locked).

    Held under the workspace lock for its lifetime. A workspace without a database file yet gets an
    empty one created first (DuckDB cannot open a missing file read-only).
    """
    db_path = Path(db_path)
    with workspace_lock(db_path):
        if not db_path.exists():
            with writer(db_path):
                pass
        con = duckdb.connect(str(db_path), read_only=True, config=SANDBOX_CONFIG)
        try:
            # After connect, so the open database stays readable; lock last (shared/FACTS.md).
            con.execute("SET disabled_filesystems='LocalFileSystem'")
            con.execute("SET lock_configuration=true")
            yield con
        finally:
            con.close()


def quote_ident(name: str) -> str:
    """Quote an identifier for DuckDB (`"a""b"`); for app-chosen names only."""
    return '"' + name.replace('"', '""') + '"'


PROVENANCE_PREFIX = "sha256:"


def stamp_provenance(db_path: Path, sha256_by_table: dict[str, str]) -> None:
    """Record each table's source-file sha256 as its DuckDB comment, so the data carries its own
    provenance and a query can read it on the same connection that reads the rows."""
    with writer(db_path) as con:
        for table, sha in sha256_by_table.items():
            con.execute(f"COMMENT ON TABLE {quote_ident(table)} IS '{PROVENANCE_PREFIX}{sha}'")


def read_provenance(con: duckdb.DuckDBPyConnection, tables: list[str]) -> dict[str, str]:
    """{table: sha256} from the tables' comments (tables without a stamp are left out)."""
    if not tables:
        return {}
    rows = con.execute(
        "SELECT table_name, comment FROM duckdb_tables() WHERE database_name = current_database() AND list_contains(?, table_name)",
        [tables],
    ).fetchall()
    return {t: c[len(PROVENANCE_PREFIX) :] for t, c in rows if c and c.startswith(PROVENANCE_PREFIX)}
