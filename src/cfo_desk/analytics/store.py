"""Connections to a workspace's DuckDB file: one trusted writer, sandboxed readers.

Two kinds of lock guard a workspace's DuckDB file:

* In this process, a readers-writer lock per file (`workspace_lock`). Readers share one read-only,
  sandboxed connection per file (DuckDB refuses two connections with different configurations to
  one file in one process) and each gets its own cursor, so readers of one workspace run at the
  same time. A writer is exclusive: it waits for the readers to finish, and the shared read-only
  connection is closed when the last reader leaves, so the writer can open the file read-write.
  A waiting writer goes before readers that arrive after it (no starvation). The writer is
  re-entrant per thread: a `writer()` inside another `writer()` of the same thread gets the same
  connection, so a service can hold the file for a whole upload while ingest opens "its" writer.
* Across processes, DuckDB's own file lock: a writer excludes everything, readers share. A
  connect that meets another process's lock ("Could not set lock ...") is retried with tenacity
  until the caller's deadline; then `WorkspaceBusy` is raised, whose message is one sentence for
  the analyst or model, without paths or PIDs. Writers also hold an exclusive `flock` on
  `<file>.writer-lock` from their first to their last statement, so a writer can `lend` the file
  to a child process (ingest's worker writes straight into the workspace, `lent_writer`) without
  letting another process's writer in meanwhile: only readers can come between.

Every wait (for the in-process lock and for the other process) counts against one deadline, the
`timeout_s` of `writer()` / `sandboxed_reader()`.

The reader is the sandbox recipe of shared/FACTS.md: no file system, no network, no extensions,
configuration locked (its cursors inherit all of it). It is used for every query whose text is not
app code (the agent's SQL) and for previews and profiles too, so there is a single read path.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb
from tenacity import RetryError, Retrying, retry_if_exception, wait_random_exponential

# Named limits for the sandboxed reader (Datasette-style): memory and threads per database
# instance, shared by the concurrent readers of one workspace in this process.
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

# How long a reader / writer waits for the workspace by default (seconds). A reader's default
# matches the agent's query timeout; callers with their own bound pass `timeout_s`.
READ_WAIT_S = 30.0
WRITE_WAIT_S = 30.0
# Polling another process's file lock: random exponential back-off between these bounds (seconds).
LOCK_POLL_MIN_S = 0.01
LOCK_POLL_MAX_S = 0.25

BUSY_MESSAGE = "The workspace is busy with an upload or another query; try again in a moment."


class WorkspaceBusy(Exception):
    """The workspace's DuckDB file stayed locked (by an upload or query, in this process or
    another) past the caller's deadline. `str()` is a sentence without paths or PIDs."""

    def __init__(self, message: str = BUSY_MESSAGE):
        super().__init__(message)


T = TypeVar("T")


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _locked_elsewhere(exc: BaseException) -> bool:
    """Whether a connect failed because another process holds the file: wait and retry."""
    return isinstance(exc, duckdb.IOException) and "Could not set lock" in str(exc)


def _create_empty(db_path: Path) -> None:
    """Create an empty DuckDB database at `db_path` unless one exists, atomically: it is made under
    a temporary name and hard-linked into place, so no connection (in any process) ever opens a
    half-made file. (Opened while another process had created but not yet locked or written it,
    a file read as "not a valid DuckDB database file".) Two creators at once: the first link wins."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_name(f".{db_path.name}.{uuid.uuid4().hex}.new")
    try:
        duckdb.connect(str(tmp)).close()
        try:
            os.link(tmp, db_path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)


def _connect(open_: Callable[[], T], *, deadline: float) -> T:
    """`open_()`, retried (tenacity) while another process holds the file, until `deadline`
    (time.monotonic()); then WorkspaceBusy. Sleeps are cut to the time left, so the last attempt
    falls on the deadline and none after it."""
    backoff = wait_random_exponential(multiplier=LOCK_POLL_MIN_S, min=LOCK_POLL_MIN_S, max=LOCK_POLL_MAX_S)
    retrying = Retrying(
        retry=retry_if_exception(_locked_elsewhere),
        stop=lambda _state: time.monotonic() >= deadline,
        wait=lambda state: min(backoff(state), _left(deadline)),
    )
    try:
        return retrying(open_)
    except RetryError:
        raise WorkspaceBusy() from None  # the IOException names the file and the other PID: not chained


def _open_sandboxed(db_path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(db_path), read_only=True, config=SANDBOX_CONFIG)
    try:
        # After connect, so the open database stays readable; lock last (shared/FACTS.md). Cursors
        # of this connection inherit both (the settings are the database's).
        con.execute("SET disabled_filesystems='LocalFileSystem'")
        con.execute("SET lock_configuration=true")
    except BaseException:
        con.close()
        raise
    return con


class _Workspace:
    """In-process state of one DuckDB file: a readers-writer lock and the open connections.

    Readers share `ro_con` (opened by the first, closed by the last); the writer owns `rw_con`.
    Thread ids identify holders: a thread's nested reads and nested writes re-enter; a thread that
    holds one side and asks for the other gets RuntimeError (it would wait for itself).
    """

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.readers: Counter[int] = Counter()  # thread id -> read holds
        self.writer: int | None = None
        self.writer_depth = 0
        self.writers_waiting = 0
        self.opening = threading.Lock()  # one thread at a time opens the shared read-only connection
        self.ro_con: duckdb.DuckDBPyConnection | None = None
        self.rw_con: duckdb.DuckDBPyConnection | None = None
        self.flock: int | None = None  # fd of the held `<file>.writer-lock` (see `writer`)

    def acquire_read(self, deadline: float) -> None:
        me = threading.get_ident()
        with self.cond:
            if self.writer == me:
                raise RuntimeError("This thread holds the workspace's writer; close it before opening a reader.")
            if not self.readers[me]:
                # A waiting writer goes first, so a stream of readers cannot starve it.
                free = self.cond.wait_for(lambda: self.writer is None and not self.writers_waiting, timeout=_left(deadline))
                if not free:
                    raise WorkspaceBusy()
            self.readers[me] += 1

    def release_read(self) -> None:
        me = threading.get_ident()
        with self.cond:
            self.readers[me] -= 1
            if self.readers[me] <= 0:
                del self.readers[me]
            if not self.readers:
                con, self.ro_con = self.ro_con, None
                if con is not None:
                    con.close()  # the last reader left: let writers (here and in other processes) in
                self.cond.notify_all()

    def reader_cursor(self, db_path: Path, deadline: float) -> duckdb.DuckDBPyConnection:
        """A cursor on the shared sandboxed connection (opened first if needed); call while reading."""
        if not self.opening.acquire(timeout=_left(deadline)):
            raise WorkspaceBusy()
        try:
            if self.ro_con is None:
                self.ro_con = _connect(lambda: _open_sandboxed(db_path), deadline=deadline)
            return self.ro_con.cursor()
        finally:
            self.opening.release()

    def acquire_write(self, deadline: float) -> None:
        me = threading.get_ident()
        with self.cond:
            if self.writer == me:
                self.writer_depth += 1
                return
            if self.readers[me]:
                raise RuntimeError("This thread holds a reader of the workspace; close it before writing.")
            self.writers_waiting += 1
            free = False
            try:
                free = self.cond.wait_for(lambda: self.writer is None and not self.readers, timeout=_left(deadline))
            finally:
                self.writers_waiting -= 1
                if not free:
                    self.cond.notify_all()  # readers held back for this writer may go now
            if not free:
                raise WorkspaceBusy()
            self.writer, self.writer_depth = me, 1

    def release_write(self) -> None:
        with self.cond:
            self.writer_depth -= 1
            if self.writer_depth > 0:
                return
            con, self.rw_con = self.rw_con, None
            fd, self.flock = self.flock, None
            try:
                if con is not None:
                    con.close()
            finally:
                if fd is not None:
                    os.close(fd)  # releases the flock
                self.writer = None
                self.cond.notify_all()


_workspaces: dict[str, _Workspace] = {}
_workspaces_guard = threading.Lock()


def _workspace(db_path: Path) -> _Workspace:
    key = str(Path(db_path).resolve())
    with _workspaces_guard:
        return _workspaces.setdefault(key, _Workspace())


class WorkspaceLock:
    """One side of a workspace's in-process readers-writer lock, without a connection.

    Exclusive (the default) or shared. Use it as a context manager (waits at most `timeout_s`, then
    WorkspaceBusy), or like a `threading.Lock`: `acquire(timeout=...)` returns False when the wait
    ran out, `release()` ends the hold (same thread). It does not hold the file against other
    processes: `writer()` and `sandboxed_reader()` do that with DuckDB's own lock.
    """

    def __init__(self, ws: _Workspace, *, shared: bool, timeout_s: float | None):
        self._ws, self._shared = ws, shared
        self._timeout_s = WRITE_WAIT_S if timeout_s is None else timeout_s

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock; waits `timeout` seconds (negative: the lock's own `timeout_s`; not
        blocking: not at all). True when taken."""
        wait = 0.0 if not blocking else (self._timeout_s if timeout is None or timeout < 0 else timeout)
        try:
            (self._ws.acquire_read if self._shared else self._ws.acquire_write)(time.monotonic() + wait)
        except WorkspaceBusy:
            return False
        return True

    def release(self) -> None:
        (self._ws.release_read if self._shared else self._ws.release_write)()

    def __enter__(self) -> WorkspaceLock:
        if not self.acquire():
            raise WorkspaceBusy()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def workspace_lock(db_path: Path, *, shared: bool = False, timeout_s: float | None = None) -> WorkspaceLock:
    """The in-process lock of one DuckDB file (keyed by its resolved path), see WorkspaceLock.

    Exclusive: no reader or other writer of this process runs meanwhile, and `writer()` in the same
    thread re-enters it. Shared: other readers run too, writers wait. `timeout_s` (None:
    `WRITE_WAIT_S`) bounds the wait of `with` and of `acquire()` without a timeout. Nested holds
    of one side in one thread re-enter; asking for the other side while holding one raises
    RuntimeError.
    """
    return WorkspaceLock(_workspace(db_path), shared=shared, timeout_s=timeout_s)


def _writer_flock(db_path: Path, *, deadline: float) -> int:
    """An exclusive `flock` on `<db_path>.writer-lock` (created once, never deleted: removing a
    lock file races), waited for like the DuckDB file lock (tenacity, until `deadline`, then
    WorkspaceBusy). Returns the open file descriptor; closing it releases the lock."""
    fd = os.open(db_path.with_name(db_path.name + ".writer-lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    backoff = wait_random_exponential(multiplier=LOCK_POLL_MIN_S, min=LOCK_POLL_MIN_S, max=LOCK_POLL_MAX_S)
    try:
        Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, BlockingIOError)),
            stop=lambda _state: time.monotonic() >= deadline,
            wait=lambda state: min(backoff(state), _left(deadline)),
        )(fcntl.flock, fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except RetryError:
        os.close(fd)
        raise WorkspaceBusy() from None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def _write_held(db_path: Path, timeout_s: float | None) -> Iterator[tuple[_Workspace, float]]:
    deadline = time.monotonic() + (WRITE_WAIT_S if timeout_s is None else timeout_s)
    ws = _workspace(db_path)
    ws.acquire_write(deadline)
    try:
        if ws.flock is None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            ws.flock = _writer_flock(db_path, deadline=deadline)
        yield ws, deadline
    finally:
        ws.release_write()


@contextmanager
def write_lock(db_path: Path, *, timeout_s: float | None = None) -> Iterator[None]:
    """The writer's locks (this process's and the cross-process flock) without a connection: a
    `writer()` of the same thread inside the block re-enters them and opens the connection when
    first needed, and `lend` can hand the file to a child process meanwhile. Waits like `writer()`
    (at most `timeout_s`, then WorkspaceBusy)."""
    with _write_held(Path(db_path), timeout_s):
        yield


@contextmanager
def writer(db_path: Path, *, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A trusted read-write connection for app code (ingest, drops), exclusive in this process and
    across processes (the writer flock and DuckDB's file lock) for as long as it is open.

    Waits at most `timeout_s` seconds (None: `WRITE_WAIT_S`) for readers and writers here and in
    other processes, then raises WorkspaceBusy. Re-entrant: inside another `writer()` or
    `write_lock()` (or an exclusive `workspace_lock`) of the same thread it yields that
    connection, opened first if none is, and leaves it open. Creates the file and its folder when
    missing. Closed when the outermost hold exits; the caller manages transactions.
    """
    db_path = Path(db_path)
    with _write_held(db_path, timeout_s) as (ws, deadline):
        if ws.rw_con is None:
            if not db_path.exists():
                _create_empty(db_path)
            ws.rw_con = _connect(lambda: duckdb.connect(str(db_path)), deadline=deadline)
        yield ws.rw_con


@contextmanager
def lend(db_path: Path) -> Iterator[Path]:
    """Inside this thread's `writer()` or `write_lock()`: close its connection (if one is open) so that a child process can open the
    file read-write (`lent_writer`) while this process keeps both writer locks (no writer here or
    in another process can start; readers of other processes can). Yields the file's path. The
    next `writer()` of the block reopens the connection; connections yielded before are closed.
    RuntimeError when this thread holds no writer of the file."""
    db_path = Path(db_path)
    ws = _workspace(db_path)
    with ws.cond:
        if ws.writer != threading.get_ident() or ws.flock is None:
            raise RuntimeError("lend() needs this thread's writer() or write_lock() of the workspace")
        con, ws.rw_con = ws.rw_con, None
    if con is not None:
        con.close()
    yield db_path


@contextmanager
def lent_writer(db_path: Path, *, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection to a file another process has lent (`lend`) to this one: it takes
    no lock of its own (the lender holds them) and waits at most `timeout_s` (None:
    `WRITE_WAIT_S`) for readers of other processes to let go (then WorkspaceBusy). Closed on exit."""
    deadline = time.monotonic() + (WRITE_WAIT_S if timeout_s is None else timeout_s)
    con = _connect(lambda: duckdb.connect(str(db_path)), deadline=deadline)
    try:
        yield con
    finally:
        con.close()


@contextmanager
def sandboxed_reader(db_path: Path, *, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only, sandboxed connection (no files, network, extensions; config locked).

    It is a cursor of the workspace's shared read-only connection in this process: readers of one
    workspace run side by side; writers wait for them. Waits at most `timeout_s` seconds (None:
    `READ_WAIT_S`) for a writer (here or in another process) to finish, then raises
    WorkspaceBusy. A workspace without a database file yet gets an empty one created first (DuckDB
    cannot open a missing file read-only), atomically, so readers in two processes can do so at once.
    The readers share the database's `memory_limit` and `threads`.
    """
    db_path = Path(db_path)
    deadline = time.monotonic() + (READ_WAIT_S if timeout_s is None else timeout_s)
    if not db_path.exists():
        _create_empty(db_path)
    ws = _workspace(db_path)
    ws.acquire_read(deadline)
    try:
        cur = ws.reader_cursor(db_path, deadline)
        try:
            yield cur
        finally:
            cur.close()
    finally:
        ws.release_read()


def quote_ident(name: str) -> str:
    """Quote an identifier for DuckDB (`"a""b"`); for app-chosen names only."""
    return '"' + name.replace('"', '""') + '"'


PROVENANCE_PREFIX = "sha256:"


def stamp_provenance(db_path: Path, sha256_by_table: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """Record each table's source-file sha256 as its DuckDB comment, so the data carries its own
    provenance and a query can read it on the same connection that reads the rows.

    Returns, read on the same connection, each table's date range per DATE/TIMESTAMP column:
    {table: {column: [first, last]}} as ISO text (YYYY-MM-DD, or a timestamp's ISO form); a
    column with no values is left out. One aggregate query per table (DuckDB answers min/max of
    a freshly written table from its row-group statistics)."""
    ranges: dict[str, dict[str, list[str]]] = {}
    with writer(db_path) as con:
        for table, sha in sha256_by_table.items():
            con.execute(f"COMMENT ON TABLE {quote_ident(table)} IS '{PROVENANCE_PREFIX}{sha}'")
            ranges[table] = _date_ranges(con, table)
    return ranges


def _date_ranges(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, list[str]]:
    cols = [
        name
        for name, dtype in con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() AND table_name = ?", [table]
        ).fetchall()
        if dtype == "DATE" or dtype.startswith("TIMESTAMP")
    ]
    if not cols:
        return {}
    select = ", ".join(f"min({quote_ident(c)})::VARCHAR, max({quote_ident(c)})::VARCHAR" for c in cols)
    row = con.execute(f"SELECT {select} FROM {quote_ident(table)}").fetchone()
    return {c: [row[2 * i], row[2 * i + 1]] for i, c in enumerate(cols) if row[2 * i] is not None}


def read_provenance(con: duckdb.DuckDBPyConnection, tables: list[str]) -> dict[str, str]:
    """{table: sha256} from the tables' comments (tables without a stamp are left out)."""
    if not tables:
        return {}
    rows = con.execute(
        "SELECT table_name, comment FROM duckdb_tables() WHERE database_name = current_database() AND list_contains(?, table_name)",
        [tables],
    ).fetchall()
    return {t: c[len(PROVENANCE_PREFIX) :] for t, c in rows if c and c.startswith(PROVENANCE_PREFIX)}
