"""Benchmark: agent SQL in a warm worker process vs in the app process.

1. A 12-row aggregate over 10M rows: median of in-process `run_query` vs `run_query`-in-a-worker
   (`SqlWorkerPool.run`, warm), interleaved. Target: ratio <= 1.2x.
2. `SELECT 1`: the same pair, the difference being the worker's per-query overhead in ms.
3. Cold start: the time from a new pool to all its workers ready, and one worker's address space
   (VmSize) when ready, which the memory cap must leave room above.

Run: `.venv/bin/python benchmarks/isolation.py [repetitions]` (default 30). `main()` prints the lines.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(repeat: int = 30) -> None:
    import duckdb

    from cfo_desk.analytics.isolation import DEFAULT_MEMORY_GB, SqlWorkerPool
    from cfo_desk.analytics.sandbox import run_query

    tmp = Path(tempfile.mkdtemp(prefix="cfo-bench-iso-"))
    db = tmp / "bench.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t AS SELECT range % 12 AS m, random() AS v FROM range(10000000)")
    con.close()

    t0 = time.perf_counter()
    pool = SqlWorkerPool(size=2, memory_gb=DEFAULT_MEMORY_GB)
    pool.warm(wait=True)
    cold = time.perf_counter() - t0
    virt = max(w.virt for w in pool._idle)
    print(f"isolation: cold start of a 2-worker pool {cold * 1e3:.0f} ms; a ready worker's VmSize {virt / 2**20:.0f} MiB (cap {DEFAULT_MEMORY_GB:g} GiB)")

    try:
        for label, sql in (("12-row aggregate over 10M rows", "SELECT m, sum(v) AS s, count(*) AS n FROM t GROUP BY m ORDER BY m"), ("SELECT 1", "SELECT 1 AS a")):
            inproc: list[float] = []
            isolated: list[float] = []
            for i in range(2):  # warm both paths (page cache, worker's first query)
                run_query(db, sql, parquet_path=tmp / "w.parquet")
                pool.run(db, sql, parquet_path=tmp / "w.parquet")
            for i in range(repeat):  # interleaved, so both see the same machine state
                t = time.perf_counter()
                a = run_query(db, sql, parquet_path=tmp / "a.parquet")
                inproc.append(time.perf_counter() - t)
                t = time.perf_counter()
                b = pool.run(db, sql, parquet_path=tmp / "b.parquet")
                isolated.append(time.perf_counter() - t)
                assert a.row_count == b.row_count and [r[0] for r in a.rows] == [r[0] for r in b.rows]  # sums of floats vary in the last digits
            m_in, m_iso = statistics.median(inproc), statistics.median(isolated)
            print(
                f"isolation: {label}: in-process {m_in * 1e3:.2f} ms, worker {m_iso * 1e3:.2f} ms, "
                f"ratio {m_iso / m_in:.2f}x, overhead {(m_iso - m_in) * 1e3:.2f} ms"
                + (" (target <= 1.2x)" if "aggregate" in label else "")
            )
    finally:
        pool.close()
    print(f"isolation: workers started {pool.started} (2 expected: no worker was replaced)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
