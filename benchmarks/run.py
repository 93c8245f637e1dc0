"""Benchmarks that print ratios (targets live here, never in timed tests). Run: `make bench`.

1. Fork cost vs artifact size: forking a thread whose answers hold 1 row vs 1,000,000 rows of
   results. Target: ratio ~1 (a fork is one row; it copies nothing).
2. Ingest throughput: a 200,000-row messy CSV ($ amounts, European decimals, DD.MM.YYYY dates), rows/s.
3. Sandbox overhead: run_query of a trivial SELECT vs a bare DuckDB execute on an open connection.
4-6. Background runs (benchmarks/runs.py): per-turn overhead of the queue/lease/worker path vs
   running the turn in the script; 10 threads asking at once at 4 vs 10 runs per process (wall
   time vs ideal, peak RSS); per-turn time at thread depth 1 vs 50.
7-9. Uploads (benchmarks/ingest.py): ingest in its worker vs in-process (200,000 and 1,000 rows);
   ours vs DuckDB read_csv vs pandas on 1,000,000-row clean and messy CSVs (time, peak RSS, each in
   a fresh process); a ~1 GB CSV only with BENCH_BIG=1.
10. Chat reruns (benchmarks/chat_rerun.py): server-side AppTest rerun of the chat page, 20 vs 200
   messages, with and without one 1M-row result.
11. Thread depth (benchmarks/threads_depth.py): fork at the head (target within 1.5x), fork at the
   root, conversation load, siblings of a path and a branch switch at 10 / 1,000 / 10,000 messages,
   as ratios to 10 (PostgreSQL too when CFO_DESK_TEST_PG_URL is set).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def timed(fn, repeat: int = 20) -> float:
    """Median seconds of `repeat` calls."""
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cfo-bench-"))
    os.environ["CFO_DESK_HOME"] = str(tmp / "home")
    from agent_script import sql_script

    from cfo_desk.analytics import ingest
    from cfo_desk.analytics.sandbox import run_query
    from cfo_desk.analytics.store import writer
    from cfo_desk.services import threads, turns, workspaces
    from cfo_desk.storage.db import session_scope

    with session_scope() as s:
        sources = {}
        for label, rows in (("small", 1), ("large", 1_000_000)):
            ws = workspaces.create_workspace(session=s, name=f"bench {label}")
            t = threads.create_thread(session=s, workspace_id=ws.id)
            reply = turns.ask(session=s, thread_id=t.id, content="q", model=sql_script([f"SELECT range AS i, range * 1.5 AS v FROM range({rows})"]))
            sources[label] = (t.id, reply.id)
        samples: dict[str, list[float]] = {"small": [], "large": []}
        for _ in range(40):  # interleaved, so both see the same store size and machine state
            for label, (tid, mid) in sources.items():
                t0 = time.perf_counter()
                threads.fork_thread(session=s, thread_id=tid, message_id=mid)
                samples[label].append(time.perf_counter() - t0)
        small, large = (statistics.median(samples[k]) for k in ("small", "large"))
        print(f"fork: 1-row artifact {small * 1e3:.2f} ms, 1M-row artifact {large * 1e3:.2f} ms, ratio {large / small:.2f} (target ~1)")

    n = 200_000
    csv = tmp / "messy.csv"
    with csv.open("w", encoding="utf-8") as f:
        f.write("Invoice Date;Customer;Amount;Net\n")
        for i in range(n):
            f.write(f"{(i % 28) + 1:02d}.{(i % 12) + 1:02d}.2024;Cust {i % 977};€{(i % 49) + 1}.{i % 1000:03d},{i % 100:02d};({i % 300},50)\n")
    t = time.perf_counter()
    (table,) = ingest.ingest_file(tmp / "ingest.duckdb", csv, original_name="messy.csv", table_names={None: "messy"})
    dt = time.perf_counter() - t
    print(f"ingest: {n:,} rows in {dt:.2f} s = {n / dt:,.0f} rows/s; types {[c.type for c in table.columns]}")

    db = tmp / "sandbox.duckdb"
    with writer(db) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS a")
        bare = timed(lambda: con.execute("SELECT 1 AS a").fetchall(), repeat=50)
    sandboxed = timed(lambda: run_query(db, "SELECT 1 AS a", parquet_path=tmp / "q.parquet"), repeat=50)
    print(f"sandbox: run_query {sandboxed * 1e3:.2f} ms vs bare execute {bare * 1e3:.3f} ms, ratio {sandboxed / bare:.0f}x (connection + gate + Parquet per query)")

    import runs  # benchmarks/runs.py (this folder is on sys.path when run as a script); own homes per scenario

    runs.main()

    import isolation  # benchmarks/isolation.py: agent SQL in a worker process vs in-process

    isolation.main()

    import ingest as ingest_bench  # benchmarks/ingest.py: uploads in the worker vs in-process, vs DuckDB and pandas (fresh processes)

    ingest_bench.main()

    import chat_rerun  # benchmarks/chat_rerun.py: chat page reruns vs thread depth and a 1M-row result

    chat_rerun.main()

    import threads_depth  # benchmarks/threads_depth.py: path load and fork against thread depth

    threads_depth.main()


if __name__ == "__main__":
    main()
