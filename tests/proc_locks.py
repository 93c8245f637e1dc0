"""Another app process for the lock tests (tests/test_locks.py): same store and data home (from
the environment), one role per run. Prints "ready" once imported, waits for "go" on stdin, then
does its part and prints one JSON line: {"ok", "type", "types", "message", "elapsed", "result"}.

    python tests/proc_locks.py hold-upload WS_ID FILENAME CSV HOLD_S
        holds the workspace's writer: uploads CSV as FILENAME (keep both), prints "holding",
        keeps the writer HOLD_S seconds (a long upload)
    python tests/proc_locks.py hold-reader DB HOLD_S
        opens a sandboxed reader, reads, prints "holding", keeps it open HOLD_S seconds (a long query)
    python tests/proc_locks.py upload WS_ID FILENAME CSV ON_CONFLICT WAIT_S
        datasets.upload_file, waiting at most WAIT_S for a busy workspace
    python tests/proc_locks.py query DB SQL TIMEOUT_S
        sandbox.run_query with timeout_s=TIMEOUT_S (the agent's path)
    python tests/proc_locks.py list-tables DB,DB,...
        profile.list_tables on each file in turn (files that may not exist yet)
    python tests/proc_locks.py bench-readers
        (no "ready"/"go") 4 threads each run one CPU-bound query (~0.4 s) through
        store.sandboxed_reader on one workspace; prints wall time against 4 x one query alone

"elapsed" is measured from "go" to the end of the call (seconds).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def _outcome(started: float, fn) -> dict:
    try:
        result = fn()
        return {"ok": True, "type": None, "types": [], "message": "", "elapsed": time.monotonic() - started, "result": result}
    except Exception as exc:  # every outcome is reported: the test judges it
        return {
            "ok": False,
            "type": type(exc).__name__,
            "types": [c.__name__ for c in type(exc).__mro__],
            "message": str(exc),
            "elapsed": time.monotonic() - started,
            "result": None,
        }


def _go() -> float:
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    assert line and line[0] == "go", line
    return time.monotonic()


def bench_readers() -> None:
    import threading

    from cfo_desk.analytics import store

    db = Path(tempfile.mkdtemp()) / "ws.duckdb"
    with store.writer(db) as con:
        con.execute("CREATE TABLE t AS SELECT range AS i FROM range(100000)")
    sql = "SELECT count(*) FROM t a, range(1000) b WHERE (a.i * b.range) % 7 = 3"
    took: list[float] = []

    def one() -> None:
        t0 = time.perf_counter()
        with store.sandboxed_reader(db) as con:
            con.execute(sql).fetchall()
        took.append(time.perf_counter() - t0)

    one()
    took.clear()
    one()
    single = took.pop()
    threads = [threading.Thread(target=one) for _ in range(4)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    print(f"one query {single:.3f}s; 4 threads: wall {wall:.3f}s against 4 x one {4 * single:.3f}s; "
          f"each thread {', '.join(f'{x:.2f}' for x in sorted(took))}")


def main(argv: list[str]) -> int:
    if argv[0] == "bench-readers":
        bench_readers()
        return 0
    from cfo_desk.analytics import profile, sandbox, store
    from cfo_desk.services import datasets
    from cfo_desk.storage.db import session_scope
    from cfo_desk.storage.files import duckdb_path
    from cfo_desk.services.workspaces import get_workspace

    role = argv[0]
    if role == "hold-upload":
        ws_id, filename, csv, hold_s = int(argv[1]), argv[2], Path(argv[3]), float(argv[4])
        started = _go()

        def run():
            with session_scope() as session:
                ws = get_workspace(session=session, workspace_id=ws_id)
                with store.writer(duckdb_path(ws.key)):
                    made = datasets.upload_file(session=session, workspace_id=ws_id, filename=filename, data=csv.read_bytes(), on_conflict="keep_both")
                    print("holding", flush=True)
                    time.sleep(hold_s)
                    return [d.table_name for d in made]

        out = _outcome(started, run)
    elif role == "hold-reader":
        db, hold_s = Path(argv[1]), float(argv[2])
        started = _go()

        def run():
            with store.sandboxed_reader(db) as con:
                n = con.execute("SELECT count(*) FROM duckdb_tables()").fetchone()[0]
                print("holding", flush=True)
                time.sleep(hold_s)
                return n

        out = _outcome(started, run)
    elif role == "upload":
        ws_id, filename, csv, on_conflict, wait_s = int(argv[1]), argv[2], Path(argv[3]), argv[4], float(argv[5])
        datasets.WRITE_WAIT_S = wait_s  # (no effect on code without the bound)
        started = _go()

        def run():
            with session_scope() as session:
                made = datasets.upload_file(session=session, workspace_id=ws_id, filename=filename, data=csv.read_bytes(), on_conflict=on_conflict)
                return [d.table_name for d in made]

        out = _outcome(started, run)
    elif role == "query":
        db, sql, timeout_s = Path(argv[1]), argv[2], float(argv[3])
        # The sandbox opens its reader with the store's default wait; bound it by the query's own
        # timeout, as the sandbox does once it passes timeout_s through (see test_locks.py).
        if hasattr(store, "READ_WAIT_S"):
            store.READ_WAIT_S = min(store.READ_WAIT_S, timeout_s)
        started = _go()

        def run():
            with tempfile.TemporaryDirectory() as tmp:
                r = sandbox.run_query(db, sql, parquet_path=Path(tmp) / "q.parquet", timeout_s=timeout_s)
                return r.rows

        out = _outcome(started, run)
    elif role == "list-tables":
        paths = [Path(p) for p in argv[1].split(",")]
        started = _go()
        out = _outcome(started, lambda: [[t.name for t in profile.list_tables(p)] for p in paths])
    else:
        raise SystemExit(f"unknown role {role}")
    print(json.dumps(out, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
