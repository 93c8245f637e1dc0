"""Benchmark: thread depth (issue 10), printed as ratios to the shallowest thread. Called by run.py
(`make bench`); also runs alone: `.venv/bin/python benchmarks/threads_depth.py`.

11. Threads of 10, 1,000 and 10,000 messages (one branch, rows inserted directly: no agent), on
    SQLite in a temporary home, and on PostgreSQL too when CFO_DESK_TEST_PG_URL is set (that
    database is emptied first, as the tests do). Measured, interleaved across depths, medians:
    - fork at the head: the path check walks up from the head until it meets the message.
      Target: within 1.5x of the 10-message thread (it cost 7-10x when the fork rebuilt the
      whole path to check the message was on it; that old check is printed for reference);
    - fork at the root: walks the whole path (O(depth)), for reference;
    - conversation load: one recursive query plus the rows (O(depth): every message is read);
    - siblings of the whole path: `siblings` with the path's ids (read first), and `path_siblings`
      (the path's ids never leave the store), and a branch switch at the head's question.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

DEPTHS = (10, 1_000, 10_000)
SAMPLES = int(os.environ.get("BENCH_DEPTH_SAMPLES", "25"))


def build_thread(session, workspace_id: int, depth: int) -> tuple[int, int, int]:
    """A thread of `depth` messages (question, answer, ...) inserted as rows; returns (thread id,
    root id, head id)."""
    from sqlalchemy import func, insert, select, text

    from cfo_desk.services import threads
    from cfo_desk.storage.models import Message, Role, Thread, utcnow

    thread = threads.create_thread(session=session, workspace_id=workspace_id, title=f"Depth {depth}")
    now = utcnow()
    first = (session.execute(select(func.max(Message.id))).scalar() or 0) + 1
    rows = [
        {
            "id": first + i,
            "workspace_id": workspace_id,
            "parent_id": first + i - 1 if i else None,
            "thread_id": thread.id,
            "role": Role.user if i % 2 == 0 else Role.assistant,
            "status": "ok",
            "content": f"message {i} of {depth}",
            "created_at": now,
        }
        for i in range(depth)
    ]
    for i in range(0, depth, 2_000):
        session.execute(insert(Message), rows[i : i + 2_000])
    if session.get_bind().dialect.name == "postgresql":  # ids were given: move the sequence past them
        session.execute(text("SELECT setval(pg_get_serial_sequence('message', 'id'), (SELECT max(id) FROM message))"))
    head = first + depth - 1
    session.execute(Thread.__table__.update().where(Thread.id == thread.id).values(head_message_id=head))
    session.commit()
    return thread.id, first, head


def measure(label: str) -> None:
    from cfo_desk.services import threads, workspaces
    from cfo_desk.storage.db import session_scope

    with session_scope() as s:
        ws = workspaces.create_workspace(session=s, name=f"bench depth {label}")
        made = {d: build_thread(s, ws.id, d) for d in DEPTHS}
        ops = {
            "fork at head": lambda tid, root, head: threads.fork_thread(session=s, thread_id=tid, message_id=head),
            "old check at head": lambda tid, root, head: head in threads.path_ids(session=s, message_id=head),
            "fork at root": lambda tid, root, head: threads.fork_thread(session=s, thread_id=tid, message_id=root),
            "conversation": lambda tid, root, head: threads.conversation(session=s, thread_id=tid),
            "siblings of path": lambda tid, root, head: threads.siblings(
                session=s, thread_id=tid, message_ids=threads.path_ids(session=s, message_id=head)
            ),
            "path_siblings": lambda tid, root, head: threads.path_siblings(session=s, thread_id=tid),
            "switch branch": lambda tid, root, head: threads.switch_branch(session=s, thread_id=tid, message_id=head - 1),
        }
        for name, op in ops.items():
            samples: dict[int, list[float]] = {d: [] for d in DEPTHS}
            for _ in range(SAMPLES):
                for d in DEPTHS:  # interleaved: every depth sees the same store and machine state
                    s.expunge_all()
                    t0 = time.perf_counter()
                    op(*made[d])
                    samples[d].append(time.perf_counter() - t0)
                    s.rollback()
            med = {d: statistics.median(v) for d, v in samples.items()}
            base = med[DEPTHS[0]]
            cells = ", ".join(f"{d:,}: {med[d] * 1e3:.2f} ms ({med[d] / base:.2f}x)" for d in DEPTHS)
            target = " (target <= 1.5x)" if name == "fork at head" else ""
            print(f"threads depth [{label}] {name}: {cells}{target}")


def main() -> None:
    from pydantic_ai import models

    from cfo_desk.storage.db import switched_environment, use_environment

    models.ALLOW_MODEL_REQUESTS = False
    tmp = Path(tempfile.mkdtemp(prefix="cfo-bench-depth-"))
    try:
        with switched_environment(CFO_DESK_HOME=str(tmp / "home"), DATABASE_URL=None):
            measure("SQLite")
            pg = os.environ.get("CFO_DESK_TEST_PG_URL")
            if pg:
                from sqlalchemy import create_engine, text

                engine = create_engine(pg)
                with engine.begin() as con:
                    con.execute(text("DROP SCHEMA public CASCADE"))
                    con.execute(text("CREATE SCHEMA public"))
                engine.dispose()
                use_environment(DATABASE_URL=pg)
                measure("PostgreSQL")
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
