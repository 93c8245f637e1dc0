"""Agent SQL in a warm pool of worker processes with OS limits, so no query can grow the app process.

DuckDB's `memory_limit` does not cap a giant scalar or list (`repeat('x', 1500000000)`,
`list(range(300000000))` passed 11 GB RSS; shared/FACTS.md): only an OS limit does, and only in a
process of its own. `run_query_isolated` has the contract of `sandbox.run_query` (same arguments,
same `QueryRun`, same exceptions) and runs `sandbox.run_query` in such a worker:

- **Workers.** `python -m cfo_desk.analytics.isolation <in-fd> <out-fd> <bytes>` started with
  `subprocess` (fork+exec: nothing of the app's threads, Streamlit or DuckDB state is inherited, and
  unlike `multiprocessing` spawn/forkserver the app's `__main__` (streamlit's CLI, pytest) is not
  re-imported; the child imports only `sandbox`). At start the child sets RLIMIT_AS (virtual memory,
  `CFO_DESK_SQL_MEMORY_GB`, default 2) and RLIMIT_CORE 0; before each query it sets RLIMIT_CPU to
  the CPU seconds used so far plus a budget (a backstop; the wall-clock limits below come first).
  The child's environment selects pyarrow's system allocator and at most two glibc arenas: with
  pyarrow's mimalloc (1 GB reserved up front) and per-thread arenas (64 MB each) a worker that has
  run one aggregate holds 2.1 GB of address space (VmSize) for 0.13 GB RSS; with these settings
  0.37 GB when ready, 0.5 GB after an aggregate over 10M rows, and a VmPeak of 1.3 GB for the
  heaviest normal queries measured (ORDER BY / GROUP BY over 10M rows, DuckDB's 1 GB memory_limit
  nearly full). A 2 GB cap runs all of those and stops the bombs (tests/test_isolation.py).
- **Pool.** `CFO_DESK_SQL_WORKERS` (default 2) workers, started in the background on first use and
  kept warm. A caller waits for a free worker; that wait counts against its timeout. A worker that was killed, crashed, hit a memory error or grew past
  `RECYCLE_RSS_BYTES` is replaced in the background.
- **Time.** The child's own watchdog (`run_query`) interrupts at the timeout; the parent waits the
  timeout plus `KILL_GRACE_S`, then kills the worker. When `stop` is set, the parent asks the child
  to interrupt (the child's stop event, ~0.05 s) and kills it if no answer comes within
  `STOP_GRACE_S`.
- **Memory.** A child that runs out of address space (MemoryError, DuckDB's out-of-memory error,
  Arrow's, std::bad_alloc) or dies of a signal meanwhile gives `QueryError("The query needed more
  than N GB of memory ...")`, N being the worker's cap, or DuckDB's own memory_limit (1 GB) when
  DuckDB's buffers were full; death by SIGXCPU gives a QueryTimeout.
- **Files.** The child writes the Parquet file at `parquet_path`; on any failure the parent removes
  whatever is there.
- **Locks.** The parent holds no lock of its own while a child reads: the child's read-only
  connection and the app's writer meet at DuckDB's file lock, which `store` waits on (retrying up to
  its deadline) on both sides, as with a second app process.
- **Environment.** A worker gets only PATH, HOME, locale, TZ, TMPDIR and PYTHONPATH of the app's
  environment (no provider keys), runs in a session of its own (a Ctrl-C in the app's terminal
  does not reach it) and exits when the app's end of its pipe closes (the app died).

Why not a library: `concurrent.futures.ProcessPoolExecutor` has no per-call timeout, cannot kill or
interrupt one call (terminating a worker breaks the whole pool: BrokenProcessPool for every caller)
and cannot set limits per call; `pebble` (not a dependency) kills on timeout but has no gentle
interrupt and, like ProcessPoolExecutor, goes through multiprocessing's re-import of `__main__`.
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cfo_desk.analytics.sandbox import (
    QUERY_TIMEOUT_S,
    RESULT_ROW_LIMIT,
    ROWS_TO_MODEL,
    QueryError,
    QueryRun,
    QueryStopped,
    QueryTimeout,
    run_query,
)
from cfo_desk.analytics import store

# Exceptions of run_query that reach the caller as they are. WorkspaceBusy: the store's "file
# locked by another process past the deadline".
_PASSED_ON: tuple[type[BaseException], ...] = (QueryError, store.WorkspaceBusy)

DEFAULT_WORKERS = 2
DEFAULT_MEMORY_GB = 2.0
KILL_GRACE_S = 2.0  # after the timeout, how long the child's own watchdog gets before the kill
STOP_GRACE_S = 0.5  # after `stop`, how long the child gets to interrupt before the kill
START_TIMEOUT_S = 60.0  # a worker that is not ready by then failed to start
RECYCLE_RSS_BYTES = 1 << 30  # a worker whose RSS stays above this after a query is replaced
POLL_S = 0.02
CHILD_ENV = {
    "ARROW_DEFAULT_MEMORY_POOL": "system",  # mimalloc reserves 1 GB of address space up front
    "MALLOC_ARENA_MAX": "2",  # each glibc arena reserves 64 MB of address space
    "OMP_NUM_THREADS": "1",
}
# All a worker inherits of the app's environment (no provider keys, no DATABASE_URL: defence in
# depth behind the sandbox, which already refuses getenv()).
_ENV_KEPT = {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH", "PYTHONHASHSEED", "LD_LIBRARY_PATH", "SYSTEMROOT"}


def _status(field: str) -> int:
    """A `/proc/self/status` size (VmRSS, VmHWM, VmSize, VmPeak) in bytes; 0 where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory_message(gb: float) -> str:
    return f"The query needed more than {gb:g} GB of memory and was stopped. Aggregate more, filter earlier, or select fewer columns."


def timeout_message(timeout_s: float) -> str:
    return f"The query ran longer than {timeout_s:g} seconds and was stopped. Aggregate more, filter earlier, or avoid cross joins."


# ----------------------------------------------------------------------------------------- child


def _is_memory_error(exc: BaseException) -> bool:
    import duckdb
    import pyarrow as pa

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (MemoryError, duckdb.OutOfMemoryException, pa.ArrowMemoryError)):
            return True
        text = str(seen)
        if "bad_alloc" in text or "Out of Memory" in text or "Cannot allocate memory" in text:
            return True
        if isinstance(seen, RuntimeError) and "can't start new thread" in text:  # no address space left for its stack
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_UNITS = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_BUFFER_USE = re.compile(r"\(([\d.]+) (bytes|KiB|MiB|GiB|TiB)/([\d.]+) (bytes|KiB|MiB|GiB|TiB) used\)")


def _is_duckdb_limit(exc: BaseException) -> bool:
    """DuckDB's own memory_limit was reached (its buffers full), rather than the worker's OS cap.

    DuckDB words both alike ("Out of Memory Error: failed to allocate data of size 2.0 GiB (40.0
    KiB/953.6 MiB used)" was a malloc refused by RLIMIT_AS); its buffers being (nearly) full tells
    them apart.
    """
    import duckdb

    cause = exc if isinstance(exc, duckdb.Error) else exc.__cause__
    if not isinstance(cause, duckdb.OutOfMemoryException):
        return False
    m = _BUFFER_USE.search(str(cause))
    if not m:
        return False
    used, limit = float(m[1]) * _UNITS[m[2]], float(m[3]) * _UNITS[m[4]]
    return used >= 0.9 * limit


def _duckdb_limit_gb() -> float | None:
    text = str(getattr(store, "SANDBOX_MEMORY_LIMIT", "")).strip().upper()
    try:
        return float(text.removesuffix("GB")) if text.endswith("GB") else None
    except ValueError:
        return None


def _child_main(in_fd: int, out_fd: int, memory_bytes: int) -> None:
    """The worker loop: answer ("run", args) messages one at a time; ("stop",) interrupts the current one."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    inbox = Connection(in_fd, writable=False)
    outbox = Connection(out_fd, readable=False)
    jobs: queue.Queue[tuple[dict[str, Any], threading.Event]] = queue.Queue()
    current: list[threading.Event] = [threading.Event()]

    def _reader() -> None:  # the pipe from the parent: jobs, stops, and EOF when the parent goes
        while True:
            try:
                msg = inbox.recv()
            except BaseException:
                os._exit(0)
            if msg[0] == "stop":
                current[0].set()
            else:
                event = threading.Event()
                current[0] = event
                jobs.put((msg[1], event))

    threading.Thread(target=_reader, name="sql-worker-inbox", daemon=True).start()
    outbox.send(("ready", os.getpid(), _status("VmSize")))
    while True:
        args, stop = jobs.get()
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        cpu_s = args.pop("cpu_s")
        _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(used + cpu_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        try:
            run = run_query(Path(args.pop("db_path")), args.pop("sql"), parquet_path=Path(args.pop("parquet_path")), stop=stop, **args)
            reply: tuple = ("ok", run)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a reply
            reply = _failure(exc)
        try:
            outbox.send(reply + (_status("VmRSS"),))
        except MemoryError:
            outbox.send(("memory", None, 0))


def _failure(exc: BaseException) -> tuple:
    """The reply for a failed query: ("memory", text) or ("raise", the exception to raise in the parent).

    The sandbox's own exceptions (QueryError and subclasses, the store's WorkspaceBusy) travel as
    they are (pickled; their chained causes stay behind); anything else becomes a QueryError.
    """
    if _is_memory_error(exc):
        return ("memory", _duckdb_limit_gb() if _is_duckdb_limit(exc) else None)
    if isinstance(exc, _PASSED_ON):
        try:
            pickle.loads(pickle.dumps(exc))
            return ("raise", exc)
        except Exception:  # noqa: BLE001
            pass
    return ("raise", QueryError(str(exc) if isinstance(exc, QueryError) else f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------------------------------- parent


def start_child(module: str, *args: str, stderr: int | None = None) -> tuple[subprocess.Popen, Connection, Connection]:
    """Start `python -m <module> <p2c_read_fd> <c2p_write_fd> *args` as a child process: fork+exec
    (no app state inherited), the reduced environment (`_ENV_KEPT` + `CHILD_ENV`, no provider
    keys), its own session (a Ctrl-C in the app's terminal does not reach it), and two pipes.
    Returns (process, connection to send on, connection to receive on). Also used by
    `ingest_worker` for uploads."""
    import cfo_desk

    p2c_r, p2c_w = os.pipe()
    c2p_r, c2p_w = os.pipe()
    root = str(Path(cfo_desk.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEPT or k.startswith("LC_")} | CHILD_ENV
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, str(p2c_r), str(c2p_w), *args],
            pass_fds=(p2c_r, c2p_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=root,
            env=env,
            start_new_session=True,
        )
    finally:
        os.close(p2c_r)
        os.close(c2p_w)
    return proc, Connection(p2c_w, readable=False), Connection(c2p_r, writable=False)


class _WorkerGone(Exception):
    def __init__(self, returncode: int | None):
        super().__init__(f"worker exited ({returncode})")
        self.returncode = returncode


class _Worker:
    """One child process and its two pipe ends."""

    def __init__(self, memory_bytes: int):
        self.proc, self.tx, self.rx = start_child("cfo_desk.analytics.isolation", str(memory_bytes))
        self.virt = 0
        self.queries = 0

    def wait_ready(self, timeout_s: float) -> None:
        msg = self.recv(time.monotonic() + timeout_s)
        if msg is None or msg[0] != "ready":
            self.kill()
            raise QueryError(f"The SQL worker did not start ({msg!r}).")
        self.virt = msg[2]

    def recv(self, deadline: float) -> tuple | None:
        """The child's next message, None at the deadline; raises _WorkerGone when it died."""
        try:
            if self.rx.poll(max(0.0, deadline - time.monotonic())):
                return self.rx.recv()
        except (EOFError, OSError):
            pass
        else:
            if self.proc.poll() is None:
                return None
        try:
            code = self.proc.wait(timeout=1)  # its pipe closed: it is exiting
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        raise _WorkerGone(code)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for conn in (self.tx, self.rx):
            conn.close()

    def alive(self) -> bool:
        return self.proc.poll() is None


class SqlWorkerPool:
    """A fixed number of warm SQL worker processes; `run` borrows one per query."""

    def __init__(self, size: int = DEFAULT_WORKERS, memory_gb: float = DEFAULT_MEMORY_GB, cpu_s: float | None = None):
        self.size = size
        self.memory_gb = memory_gb
        self.memory_bytes = int(memory_gb * (1 << 30))
        self.cpu_s = cpu_s  # CPU seconds per query; None: 3 x the timeout + 5
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0  # idle + busy + starting
        self._closed = False
        self.started = 0  # workers started over the pool's life (tests, benchmarks)

    # -- workers -----------------------------------------------------------------------------

    def warm(self, wait: bool = False) -> None:
        """Start workers up to `size` in the background (`wait`: until they are ready)."""
        threads = [threading.Thread(target=self._refill, name="sql-worker-start", daemon=True) for _ in range(self.size)]
        for t in threads:
            t.start()
        if wait:
            for t in threads:
                t.join()

    def _refill(self) -> None:
        with self._cond:
            if self._closed or self._live >= self.size:
                return
            self._live += 1
        try:
            worker = self._start()
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify_all()
            return
        self._give_back(worker, healthy=True)

    def _start(self) -> _Worker:
        worker = _Worker(self.memory_bytes)
        with self._cond:
            self.started += 1
        worker.wait_ready(START_TIMEOUT_S)
        return worker

    def _take(self, deadline: float, stop: threading.Event | None, timeout_s: float) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise QueryError("The SQL workers are shut down.")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        return worker
                    self._live -= 1
                    worker.kill()
                if self._live < self.size:
                    self._live += 1
                    break
                if stop is not None and stop.is_set():
                    raise QueryStopped("The run was stopped.")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QueryTimeout(timeout_message(timeout_s) + " (It waited for a free SQL worker.)")
                self._cond.wait(min(POLL_S * 5, left))
        try:
            return self._start()
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify_all()
            raise

    def _give_back(self, worker: _Worker, healthy: bool) -> None:
        with self._cond:
            if healthy and not self._closed and worker.alive():
                self._idle.append(worker)
                self._cond.notify_all()
                return
            self._live -= 1
            self._cond.notify_all()
        worker.kill()
        if not self._closed:  # keep the pool warm: the replacement starts in the background
            threading.Thread(target=self._refill, name="sql-worker-start", daemon=True).start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.kill()

    # -- queries -----------------------------------------------------------------------------

    def run(
        self,
        db_path: Path,
        sql: str,
        *,
        parquet_path: Path,
        timeout_s: float = QUERY_TIMEOUT_S,
        rows_to_model: int = ROWS_TO_MODEL,
        result_row_limit: int = RESULT_ROW_LIMIT,
        stop: threading.Event | None = None,
    ) -> QueryRun:
        """`sandbox.run_query` in a worker process; same arguments, result and exceptions."""
        deadline = time.monotonic() + timeout_s
        if stop is not None and stop.is_set():
            raise QueryStopped("The run was stopped.")
        # No lock of this process is held: the child's reader and the app's writers meet at DuckDB's
        # file lock, which the store waits on (up to its deadline) on both sides.
        try:
            worker = self._take(deadline, stop, timeout_s)
            healthy = False
            try:
                reply = self._ask(worker, db_path, sql, parquet_path, deadline, timeout_s, rows_to_model, result_row_limit, stop)
                healthy = reply[0] != "memory" and reply[-1] < RECYCLE_RSS_BYTES
            finally:
                worker.queries += 1
                self._give_back(worker, healthy)
            if reply[0] == "ok":
                run = reply[1]
                run.parquet_path = parquet_path
                return run
            if reply[0] == "memory":  # the limit that refused: DuckDB's memory_limit, else the worker's cap
                raise QueryError(memory_message(reply[1] or self.memory_gb))
            exc = reply[1]
            if isinstance(exc, QueryTimeout):  # the child was given what was left of the timeout: name the whole
                raise QueryTimeout(timeout_message(timeout_s))
            raise exc
        except BaseException:
            Path(parquet_path).unlink(missing_ok=True)
            raise

    def _ask(self, worker: _Worker, db_path, sql, parquet_path, deadline, timeout_s, rows_to_model, result_row_limit, stop) -> tuple:
        """Send one query and wait for its answer; returns the child's reply tuple (kind, ..., rss)."""
        left = max(0.05, deadline - time.monotonic())
        cpu_s = self.cpu_s if self.cpu_s is not None else 3 * timeout_s + 5
        args = {
            "db_path": str(Path(db_path).resolve()),
            "sql": sql,
            "parquet_path": str(Path(parquet_path).resolve()),
            "timeout_s": left,
            "rows_to_model": rows_to_model,
            "result_row_limit": result_row_limit,
            "cpu_s": cpu_s,
        }
        kill_at = deadline + KILL_GRACE_S
        stop_sent_at: float | None = None
        try:
            worker.tx.send(("run", args))
            while True:
                now = time.monotonic()
                if stop is not None and stop.is_set() and stop_sent_at is None:
                    worker.tx.send(("stop",))
                    stop_sent_at = now
                    kill_at = min(kill_at, now + STOP_GRACE_S)
                if now >= kill_at:
                    worker.kill()
                    if stop_sent_at is not None:
                        raise QueryStopped("The run was stopped.")
                    raise QueryTimeout(timeout_message(timeout_s))
                reply = worker.recv(min(kill_at, now + POLL_S * 2.5))
                if reply is not None:
                    return reply
        except (_WorkerGone, BrokenPipeError, OSError) as exc:
            code = exc.returncode if isinstance(exc, _WorkerGone) else worker.proc.poll()
            worker.kill()
            if code is not None and code == -signal.SIGXCPU:
                raise QueryTimeout(timeout_message(timeout_s) + " (CPU time limit.)") from None
            if stop_sent_at is not None:
                raise QueryStopped("The run was stopped.") from None
            if code is not None and code < 0:  # killed by a signal: under RLIMIT_AS, an allocation that failed
                raise QueryError(memory_message(self.memory_gb)) from None
            raise QueryError(f"The SQL worker ended unexpectedly (exit code {code}).") from None


_pool: SqlWorkerPool | None = None
_pool_guard = threading.Lock()


def get_pool() -> SqlWorkerPool:
    """The process's pool, made from the settings (and warmed in the background) on first use."""
    global _pool
    with _pool_guard:
        if _pool is None:
            from cfo_desk.config import get_settings

            s = get_settings()
            _pool = SqlWorkerPool(size=s.cfo_desk_sql_workers, memory_gb=s.cfo_desk_sql_memory_gb)
            _pool.warm()
        return _pool


def shutdown_pool() -> None:
    """Stop the pool's workers (atexit; tests that change the settings)."""
    global _pool
    with _pool_guard:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


atexit.register(shutdown_pool)


def run_query_isolated(
    db_path: Path,
    sql: str,
    *,
    parquet_path: Path,
    timeout_s: float = QUERY_TIMEOUT_S,
    rows_to_model: int = ROWS_TO_MODEL,
    result_row_limit: int = RESULT_ROW_LIMIT,
    stop: threading.Event | None = None,
) -> QueryRun:
    """`sandbox.run_query` in a warm worker process with OS limits (see the module docstring).

    With `CFO_DESK_SQL_WORKERS=0` it runs in-process (no isolation), as `run_query` does.
    """
    Path(parquet_path).parent.mkdir(parents=True, exist_ok=True)
    pool = get_pool()
    if pool.size == 0:
        return run_query(db_path, sql, parquet_path=parquet_path, timeout_s=timeout_s, rows_to_model=rows_to_model, result_row_limit=result_row_limit, stop=stop)
    return pool.run(db_path, sql, parquet_path=parquet_path, timeout_s=timeout_s, rows_to_model=rows_to_model, result_row_limit=result_row_limit, stop=stop)


if __name__ == "__main__":
    _child_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
