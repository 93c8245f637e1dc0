"""Agent SQL in worker processes (analytics/isolation.py): same results and errors as in-process,
OS limits that keep this process's memory flat, timeouts, stop, kills, a pool that recovers."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from cfo_desk.analytics import isolation
from cfo_desk.analytics.isolation import SqlWorkerPool, run_query_isolated, shutdown_pool
from cfo_desk.analytics.sandbox import QueryError, QueryRefused, QueryStopped, QueryTimeout, run_query
from cfo_desk.config import get_settings

MEMORY_ERROR = re.compile(r"^The query needed more than \d+(\.\d+)? GB of memory and was stopped\.")
CROSS_JOIN = "SELECT count(*) FROM t a, t b WHERE a.v + b.v > 3"  # 1e12 pairs: CPU-bound, tiny memory


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """A small workspace file: t (1M rows of integers) and d (dates, decimals, text, NULLs)."""
    path = tmp_path_factory.mktemp("iso") / "ws.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT range AS i, range % 12 AS m, (range % 1000)::BIGINT AS v FROM range(1000000)")
    con.execute(
        "CREATE TABLE d AS SELECT DATE '2024-01-01' + range::INT AS day, (range * 1.25)::DECIMAL(12,2) AS amount, "
        "CASE WHEN range % 3 = 0 THEN NULL ELSE 'cust ' || range END AS customer, INTERVAL (range) DAY AS age FROM range(50)"
    )
    con.execute("COMMENT ON TABLE t IS 'sha256:" + "ab" * 32 + "'")
    con.close()
    return path


@pytest.fixture(scope="module", autouse=True)
def _pool_down():
    """The settings' pool (run_query_isolated) lives for this module; stopped at its end."""
    yield
    shutdown_pool()


@pytest.fixture(scope="module")
def pool() -> SqlWorkerPool:
    before = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = "sk-not-for-workers"  # must not reach a worker's environment
    try:
        p = SqlWorkerPool(size=2, memory_gb=2)
        p.warm(wait=True)
    finally:
        if before is None:
            del os.environ["OPENAI_API_KEY"]
        else:
            os.environ["OPENAI_API_KEY"] = before
    yield p
    p.close()


def _peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM (Linux >= 4.0)
        f.write("5")


def _peak_rss() -> int:
    return isolation._status("VmHWM")


EQUAL_QUERIES = [
    ("SELECT m, sum(v) AS total, count(*) AS n FROM t GROUP BY m ORDER BY m", {}),
    ("SELECT i, v FROM t ORDER BY i", {"rows_to_model": 7, "result_row_limit": 25_000}),
    ("SELECT * FROM d ORDER BY day", {}),
    ("SELECT a.m, b.m FROM t a JOIN t b USING (i) WHERE a.i < 3 ORDER BY a.i", {}),
    ("SELECT i FROM t WHERE i < 0", {}),
]


@pytest.mark.parametrize("sql,limits", EQUAL_QUERIES)
def test_results_equal_in_process(db, tmp_path, sql, limits):
    a = run_query(db, sql, parquet_path=tmp_path / "a.parquet", **limits)
    b = run_query_isolated(db, sql, parquet_path=tmp_path / "b.parquet", **limits)
    assert b.parquet_path == tmp_path / "b.parquet"
    for field in ("columns", "rows", "row_count", "truncated", "tables", "notes", "table_sha256"):
        assert getattr(b, field) == getattr(a, field), field
    assert pq.read_table(b.parquet_path).equals(pq.read_table(a.parquet_path))


@pytest.mark.parametrize(
    "sql,kind",
    [
        ("DROP TABLE t", QueryRefused),
        ("SELECT 1; SELECT 2", QueryRefused),
        ("SELECT no_such_column FROM t", QueryError),
        ("SELECT * FROM no_such_table", QueryError),
    ],
)
def test_errors_equal_in_process(db, tmp_path, sql, kind):
    with pytest.raises(kind) as in_process:
        run_query(db, sql, parquet_path=tmp_path / "a.parquet")
    with pytest.raises(kind) as isolated:
        run_query_isolated(db, sql, parquet_path=tmp_path / "b.parquet")
    assert type(isolated.value) is type(in_process.value)
    assert str(isolated.value) == str(in_process.value)
    assert not (tmp_path / "b.parquet").exists()


@pytest.mark.parametrize(
    "sql,gb",
    [
        ("SELECT repeat('x', 1500000000)", 2),  # RLIMIT_AS refuses DuckDB's 2 GiB malloc (no cap: 1.5 GB cell kept)
        ("SELECT list(range(300000000))", 2),
        ("SELECT a.m, list(b.i) FROM t a, t b GROUP BY a.m", 1),  # cross join runaway: DuckDB's 1 GB memory_limit (1.07 GB RSS in-process)
        ("SELECT repeat('x', 200000000) AS big", 2),  # one 200 MB cell (2.1 GB RSS in-process)
    ],
    ids=["repeat-1.5e9", "list-3e8", "cross-join-list", "cell-200MB"],
)
def test_memory_bombs_leave_this_process_flat(db, tmp_path, sql, gb):
    run_query_isolated(db, "SELECT 1", parquet_path=tmp_path / "warm.parquet")  # the pool is up
    out = tmp_path / "bomb.parquet"
    _peak_rss_reset()
    started = time.monotonic()
    error: BaseException | None = None
    try:
        run_query_isolated(db, sql, parquet_path=out, timeout_s=30)
    except BaseException as exc:  # noqa: BLE001 - checked below, after this process's memory
        error = exc
    assert _peak_rss() < 1 << 30, f"this process peaked at {_peak_rss() / 2**20:.0f} MiB"
    assert type(error) is QueryError, repr(error)
    assert MEMORY_ERROR.match(str(error)), str(error)
    assert f"more than {gb} GB" in str(error)
    assert time.monotonic() - started < 20
    assert not out.exists()
    run = run_query_isolated(db, "SELECT m, count(*) AS n FROM t GROUP BY m ORDER BY m", parquet_path=tmp_path / "next.parquet")
    assert run.rows[0] == [0, 83334]


def test_cap_leaves_room_above_an_idle_worker(pool):
    """The cap is set against measured address space: a ready worker (duckdb, pyarrow imported)
    reserves well under half of it, because the child uses pyarrow's system allocator and two glibc
    arenas (pyarrow's mimalloc alone would reserve 1 GB)."""
    w = pool._idle[0]
    assert 0 < w.virt < pool.memory_bytes / 2
    env = open(f"/proc/{w.proc.pid}/environ", "rb").read().split(b"\0")
    assert b"ARROW_DEFAULT_MEMORY_POOL=system" in env and b"MALLOC_ARENA_MAX=2" in env
    assert not [v for v in env if v.startswith((b"OPENAI_API_KEY=", b"DATABASE_URL=", b"CFO_DESK_"))]
    limits = open(f"/proc/{w.proc.pid}/limits").read()
    (line,) = [ln for ln in limits.splitlines() if ln.startswith("Max address space")]
    assert line.split()[3] == str(pool.memory_bytes)


def test_heavy_normal_queries_fit_the_cap(db, pool, tmp_path):
    for sql in ("SELECT * FROM t ORDER BY v DESC, i", "SELECT i, count(*) FROM t GROUP BY i", "SELECT m, median(v), quantile_cont(v, 0.9) FROM t GROUP BY m"):
        run = pool.run(db, sql, parquet_path=tmp_path / "h.parquet")
        assert run.row_count > 0


def test_timeout_is_honoured(db, pool, tmp_path):
    out = tmp_path / "t.parquet"
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"ran longer than 1 seconds"):
        pool.run(db, CROSS_JOIN, parquet_path=out, timeout_s=1)
    assert 1 <= time.monotonic() - started < 1.5  # the child's own watchdog; no kill needed
    assert not out.exists()


def test_stop_interrupts_within_a_second(db, pool, tmp_path):
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    workers_before = pool.started
    started = time.monotonic()
    with pytest.raises(QueryStopped):
        pool.run(db, CROSS_JOIN, parquet_path=tmp_path / "s.parquet", timeout_s=30, stop=stop)
    assert time.monotonic() - started < 0.3 + isolation.STOP_GRACE_S  # before any kill
    time.sleep(0.3)
    assert pool.started == workers_before  # the child interrupted itself: no kill, no new worker
    assert pool.run(db, "SELECT 42 AS x", parquet_path=tmp_path / "n.parquet").rows == [[42]]


def _freeze_idle_workers(pool: SqlWorkerPool) -> list[int]:
    pids = [w.proc.pid for w in pool._idle]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # a child that can no longer answer (as if stuck in C code)
    return pids


def test_an_unresponsive_worker_is_killed_at_the_timeout_and_replaced(db, tmp_path):
    p = SqlWorkerPool(size=1, memory_gb=2)
    p.warm(wait=True)
    try:
        (pid,) = _freeze_idle_workers(p)
        out = tmp_path / "k.parquet"
        out.write_bytes(b"partial")  # whatever the child left is removed
        started = time.monotonic()
        with pytest.raises(QueryTimeout, match="ran longer than 1 seconds"):
            p.run(db, "SELECT 1", parquet_path=out, timeout_s=1)
        assert 1 + isolation.KILL_GRACE_S <= time.monotonic() - started < 1.5 + isolation.KILL_GRACE_S
        assert not out.exists()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped
        assert p.run(db, "SELECT 1 AS a", parquet_path=out).rows == [[1]]
        assert p.started == 2
    finally:
        p.close()


def test_an_unresponsive_worker_is_killed_on_stop(db, tmp_path):
    p = SqlWorkerPool(size=1, memory_gb=2)
    p.warm(wait=True)
    try:
        _freeze_idle_workers(p)
        stop = threading.Event()
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        with pytest.raises(QueryStopped):
            p.run(db, "SELECT 1", parquet_path=tmp_path / "k.parquet", timeout_s=30, stop=stop)
        assert time.monotonic() - started < 0.2 + isolation.STOP_GRACE_S + 0.5
        assert p.run(db, "SELECT 1 AS a", parquet_path=tmp_path / "k.parquet").rows == [[1]]
    finally:
        p.close()


def test_cpu_limit_is_a_timeout(db, tmp_path):
    p = SqlWorkerPool(size=1, memory_gb=2, cpu_s=1)
    p.warm(wait=True)
    try:
        with pytest.raises(QueryTimeout, match="CPU time limit"):
            p.run(db, CROSS_JOIN, parquet_path=tmp_path / "c.parquet", timeout_s=30)
        assert p.run(db, "SELECT 1 AS a", parquet_path=tmp_path / "c.parquet").rows == [[1]]
    finally:
        p.close()


def test_concurrent_callers_share_the_pool(db, pool, tmp_path):
    results: dict[int, object] = {}

    def call(k: int) -> None:
        try:
            results[k] = pool.run(db, f"SELECT {k} AS k, count(*) AS n FROM t WHERE m = {k % 12}", parquet_path=tmp_path / f"c{k}.parquet").rows
        except BaseException as exc:  # noqa: BLE001
            results[k] = exc

    threads = [threading.Thread(target=call, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {k: [[k, 83334 if k % 12 < 4 else 83333]] for k in range(8)}


def test_waiting_for_a_worker_counts_against_the_timeout(db, tmp_path):
    p = SqlWorkerPool(size=1, memory_gb=2)
    p.warm(wait=True)
    try:
        outcome: list[BaseException] = []

        def hold_the_worker() -> None:
            try:
                p.run(db, CROSS_JOIN, parquet_path=tmp_path / "b.parquet", timeout_s=2)
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)

        busy = threading.Thread(target=hold_the_worker)
        busy.start()
        time.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(QueryTimeout, match="waited for a free SQL worker"):
            p.run(db, "SELECT 1", parquet_path=tmp_path / "w.parquet", timeout_s=0.5)
        assert time.monotonic() - started < 1
        busy.join()
        assert [type(e) for e in outcome] == [QueryTimeout]
        assert p.started == 1  # the busy worker answered its own timeout and was kept
    finally:
        p.close()


def test_zero_workers_runs_in_process(db, tmp_path, monkeypatch):
    shutdown_pool()
    monkeypatch.setenv("CFO_DESK_SQL_WORKERS", "0")
    get_settings.cache_clear()
    try:
        assert run_query_isolated(db, "SELECT 3 AS a", parquet_path=tmp_path / "z.parquet").rows == [[3]]
        assert isolation.get_pool().size == 0
    finally:
        shutdown_pool()
