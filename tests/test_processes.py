"""Runs across processes sharing one store (SQLite file and PostgreSQL): nothing is lost when two
processes ask at once, exactly one process runs a thread, a killed process's turn is recovered, and
two worker processes share the queue.

The other processes are tests/proc_agent.py (the same services, a scripted model).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from conftest import reap
from agent_script import sql_script
from sqlalchemy import text
from sqlmodel import func, select

from cfo_desk.config import get_settings
from cfo_desk.services import datasets as datasets_svc
from cfo_desk.services import runs, turns
from cfo_desk.services import threads as threads_svc
from cfo_desk.services import workspaces as ws_svc
from cfo_desk.storage.db import session_scope
from cfo_desk.storage.files import duckdb_path, workspace_dir
from cfo_desk.storage.models import Message, Run, RunStatus, ThreadLease

PROC = str(Path(__file__).parent / "proc_agent.py")
TRIALS = 10


_spawned: list[subprocess.Popen] = []


@pytest.fixture
def session(store):
    with session_scope() as s:
        yield s
    reap(_spawned)  # no process outlives its test, whatever failed


def spawn(*args: str, name: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start tests/proc_agent.py with this test's store and data home; waits for its "ready"."""
    env = {**os.environ, "PROC_NAME": name, "CFO_DESK_HOME": str(get_settings().home), "CFO_DESK_RUN_POLL_S": "0.1", **(extra_env or {})}
    if get_settings().database_url:
        env["DATABASE_URL"] = get_settings().database_url
    proc = subprocess.Popen(
        [sys.executable, PROC, *args], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _spawned.append(proc)
    line = proc.stdout.readline().strip()
    assert line == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def go(procs: list[subprocess.Popen], delay_s: float = 0.5) -> list:
    """Start every process's plan at the same wall-clock moment; returns each one's JSON result."""
    start = time.time() + delay_s
    for p in procs:
        p.stdin.write(f"go {start}\n")
        p.stdin.flush()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_two_processes_asking_in_one_thread_at_once_lose_nothing(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    threads = [threads_svc.create_thread(session=session, workspace_id=ws.id).id for _ in range(TRIALS)]
    plans = {name: [[t, f"{name} asks in trial {i}"] for i, t in enumerate(threads)] for name in ("A", "B")}
    procs = [spawn("ask", json.dumps(plan), name=name) for name, plan in plans.items()]
    results = go(procs)
    assert all(status == "ok" for proc in results for _id, _parent, status in proc)
    for i, thread_id in enumerate(threads):
        conv = threads_svc.conversation(session=session, thread_id=thread_id)
        questions = [m.content for m in conv if m.role == "user"]
        assert sorted(questions) == [f"A asks in trial {i}", f"B asks in trial {i}"], (i, questions)
        assert [m.role for m in conv] == ["user", "assistant", "user", "assistant"]  # each answer right under its question
        assert all(m.status == "ok" for m in conv)
    assert session.exec(select(func.count()).select_from(ThreadLease)).one() == 0


def test_two_processes_racing_for_a_threads_lease_exactly_one_wins(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    run_ids = [runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content=f"Q{i}").id for i in range(TRIALS)]
    procs = [spawn("claim", json.dumps(run_ids), name=name, extra_env={"PROC_STEP_S": "0.15"}) for name in ("A", "B")]
    a, b = go(procs)
    for i, run_id in enumerate(run_ids):
        winners = [name for name, won in (("A", a[i]), ("B", b[i])) if won == [run_id]]
        assert len(winners) == 1, (i, a[i], b[i])
        run = runs.get_run(session=session, run_id=run_id)
        assert run.owner == winners[0] and run.status == RunStatus.running
        assert session.get(ThreadLease, run.thread_id, populate_existing=True).owner == winners[0]


def test_a_process_killed_mid_turn_leaves_an_interrupted_turn_and_a_healthy_store(session, monkeypatch):
    monkeypatch.setenv("CFO_DESK_RUN_LEASE_S", "2")
    get_settings.cache_clear()
    ws = ws_svc.create_workspace(session=session, name="W")
    datasets_svc.upload_file(session=session, workspace_id=ws.id, filename="revenue.csv", data=b"month,revenue\n2024-12-01,100\n")
    doomed = spawn("worker", "--hang", "60", name="doomed", extra_env={"CFO_DESK_RUN_LEASE_S": "2"})
    try:
        run = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="Will it survive?")
        deadline = time.monotonic() + 30
        while not any(p["kind"] == "tool_result" for p in runs.get_run(session=session, run_id=run.id).progress):
            assert time.monotonic() < deadline, doomed.stderr.read() if doomed.poll() is not None else "no progress"
            time.sleep(0.05)
        assert list((workspace_dir(ws.key) / "artifacts").rglob("*.parquet"))  # its first result is on disk
    finally:
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(10)

    deadline = time.monotonic() + 15
    while runs.get_run(session=session, run_id=run.id).status == RunStatus.running:  # any live worker sweeps
        assert time.monotonic() < deadline
        runs.recover_expired(session=session)
        time.sleep(0.2)
    assert runs.get_run(session=session, run_id=run.id).status == RunStatus.interrupted
    conv = threads_svc.conversation(session=session, thread_id=run.thread_id)
    assert [(m.role, m.status, m.content) for m in conv] == [
        ("user", "ok", "Will it survive?"),
        ("assistant", "interrupted", turns.INTERRUPTED),
    ]
    assert list((workspace_dir(ws.key) / "artifacts").rglob("*.parquet")) == []  # no orphan result files
    if session.get_bind().dialect.name == "sqlite":
        assert session.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    with duckdb.connect(str(duckdb_path(ws.key)), read_only=True) as con:
        assert con.execute("SELECT sum(revenue) FROM revenue").fetchone()[0] == 100
    reply = turns.ask(session=session, thread_id=run.thread_id, content="And now?", model=sql_script(["SELECT sum(revenue) AS r FROM revenue"]))
    assert reply.status == "ok"


def test_two_worker_processes_share_the_queue_and_each_run_is_claimed_once(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    # The workspace's DuckDB file exists before the workers read it: two processes creating it at
    # once collide on DuckDB's file lock (cross-process DuckDB locking is issue 6's).
    datasets_svc.upload_file(session=session, workspace_id=ws.id, filename="one.csv", data=b"n\n1\n")
    workers = [spawn("worker", "--delay", "0.3", name=name) for name in ("W1", "W2")]
    banners = [w.stdout.readline() for w in workers]
    assert all("cfo-desk worker" in b for b in banners), banners
    try:
        run_ids = [runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content=f"Q{i}").id for i in range(12)]
        deadline = time.monotonic() + 60
        while session.exec(select(func.count()).select_from(Run).where(Run.status.in_(runs.OPEN))).one():
            assert time.monotonic() < deadline, "runs still open"
            time.sleep(0.1)
        done = [runs.get_run(session=session, run_id=r) for r in run_ids]
        assert all(r.status == RunStatus.done for r in done), [(r.status, r.error) for r in done]
        owners = {r.owner.split(":")[1] for r in done}  # the pid part of host:pid:token
        assert owners == {str(w.pid) for w in workers}  # both processes took a share
        for r in done:  # one answer per question: no run executed twice
            replies = session.exec(select(Message).where(Message.parent_id == r.user_message_id)).all()
            assert len(replies) == 1 and replies[0].content in ("Answered by W1.", "Answered by W2.")
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                assert w.wait(20) == 0, w.stderr.read()[-2000:]  # a clean stop on SIGTERM
            finally:
                w.kill()
