"""Runs in the background: the queue, the worker, Stop, one run per thread, crash recovery.

Services on real SQLite and PostgreSQL; the model is scripted (FunctionModel) with asyncio delays
standing in for a real model's latency.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import pytest
from agent_script import sql_script, then_wait
from sqlmodel import func, select

from cfo_desk.agent.core import use_model
from cfo_desk.services import runs, turns, worker
from cfo_desk.services import threads as threads_svc
from cfo_desk.services import workspaces as ws_svc
from cfo_desk.services.errors import Conflict, InvalidInput
from cfo_desk.storage.db import session_scope
from cfo_desk.storage.files import workspace_dir
from cfo_desk.storage.models import Message, MessageStatus, Run, RunStatus, Thread, ThreadLease, utcnow
from test_threads import prompts_seen


@pytest.fixture
def session(store):
    """Every test here runs on SQLite and on PostgreSQL."""
    with session_scope() as s:
        yield s


@pytest.fixture
def fast_worker(monkeypatch):
    """The process's background worker, polling every 50 ms."""
    monkeypatch.setenv("CFO_DESK_RUN_POLL_S", "0.05")
    from cfo_desk.config import get_settings

    get_settings.cache_clear()
    yield worker.start_worker()
    worker.shutdown_worker()


def wait_closed(run_id: int, timeout_s: float = 30.0) -> Run:
    """Poll the store until the run is no longer queued or running; returns it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_scope() as s:
            run = runs.get_run(session=s, run_id=run_id)
            if run.status not in (RunStatus.queued, RunStatus.running):
                return run
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} still open after {timeout_s} s")


def wait_for(predicate, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached in {timeout_s} s")


def count(session, model) -> int:
    return session.exec(select(func.count()).select_from(model)).one()


def test_background_run_answers_and_keeps_its_progress(session, fast_worker):
    ws = ws_svc.create_workspace(session=session, name="W")
    use_model(sql_script(["SELECT 41 + 1 AS answer"], {"answer_markdown": "It is **42**."}, delay_s=0.05))
    run = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="What is the answer?")
    thread = threads_svc.get_thread(session=session, thread_id=run.thread_id)
    assert thread.title == "What is the answer?"  # named at once, before the run starts
    done = wait_closed(run.id)
    assert done.status == RunStatus.done and done.owner == fast_worker.owner
    conv = threads_svc.conversation(session=session, thread_id=run.thread_id)
    assert [(m.role, m.content) for m in conv] == [("user", "What is the answer?"), ("assistant", "It is **42**.")]
    assert done.reply_message_id == conv[-1].id and done.user_message_id == conv[0].id
    calls = [p for p in done.progress if p["kind"] == "tool_call" and p["tool"] == "run_sql"]
    results = [p for p in done.progress if p["kind"] == "tool_result" and p["tool"] == "run_sql"]
    assert calls[0]["sql"] == "SELECT 41 + 1 AS answer" and calls[0]["purpose"] == "Step 1"
    assert results[0]["row_count"] == 1 and results[0]["at_s"] >= calls[0]["at_s"] >= 0
    assert count(session, ThreadLease) == 0  # released with the final commit


def test_two_questions_10_ms_apart_are_both_answered_in_order(session, fast_worker):
    ws = ws_svc.create_workspace(session=session, name="W")
    seen: list = []
    use_model(sql_script([], {"answer_markdown": "ok"}, seen=seen, delay_s=0.2))
    first = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="Q1")
    time.sleep(0.01)
    second = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=first.thread_id, content="Q2")
    wait_closed(first.id), wait_closed(second.id)
    conv = threads_svc.conversation(session=session, thread_id=first.thread_id)
    assert [(m.role, m.content) for m in conv] == [("user", "Q1"), ("assistant", "ok"), ("user", "Q2"), ("assistant", "ok")]
    assert prompts_seen(seen[-1]) == ["Q1", "Q2"]  # the second turn saw the first one's history


def test_a_question_while_one_waits_is_refused_clearly_once_the_queue_is_full(session, monkeypatch):
    monkeypatch.setenv("CFO_DESK_QUEUED_PER_THREAD", "1")
    from cfo_desk.config import get_settings

    get_settings.cache_clear()
    ws = ws_svc.create_workspace(session=session, name="W")
    first = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="Q1")
    runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=first.thread_id, content="Q2")  # waits behind Q1
    with pytest.raises(Conflict, match="already wait in this thread"):
        runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=first.thread_id, content="Q3")
    assert [r.prompt for r in runs.open_runs(session=session, thread_id=first.thread_id)] == ["Q1", "Q2"]


def test_an_overlong_question_is_refused_before_anything_is_written(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    with pytest.raises(InvalidInput, match="20,001 characters long; questions are at most 20,000"):
        runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="x" * (turns.MAX_PROMPT_CHARS + 1))
    with pytest.raises(InvalidInput):
        runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="   ")
    assert (count(session, Thread), count(session, Run), count(session, Message)) == (0, 0, 0)


def test_stop_records_a_stopped_turn_with_its_progress_and_retry_answers(session, fast_worker):
    ws = ws_svc.create_workspace(session=session, name="W")
    use_model(then_wait("SELECT 7 AS seven", wait_s=60))
    run = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="Slow one")
    wait_for(lambda: any(p["kind"] == "tool_result" for p in runs.get_run(session=session, run_id=run.id).progress), what="a tool result")
    asked = time.monotonic()
    runs.request_stop(session=session, run_id=run.id)
    stopped = wait_closed(run.id)
    assert time.monotonic() - asked < 3  # not the model's 60 s
    assert stopped.status == RunStatus.stopped and [p["tool"] for p in stopped.progress][:2] == ["run_sql", "run_sql"]
    conv = threads_svc.conversation(session=session, thread_id=run.thread_id)
    assert [(m.role, m.status) for m in conv] == [("user", "ok"), ("assistant", "stopped")]
    assert "Stopped by the analyst" in conv[-1].content and stopped.reply_message_id == conv[-1].id
    assert list(workspace_dir(ws.key).rglob("*.parquet")) == []  # a stopped run keeps no result files
    assert turns.model_history(session=session, message_id=conv[-1].id) == []  # not replayed to the model

    use_model(sql_script(["SELECT 8 AS eight"], {"answer_markdown": "Now answered."}))
    retry = runs.enqueue_answer(session=session, thread_id=run.thread_id, user_message_id=conv[0].id)
    assert wait_closed(retry.id).status == RunStatus.done
    assert threads_svc.conversation(session=session, thread_id=run.thread_id)[-1].content == "Now answered."


def test_stop_interrupts_a_long_query_in_flight(session, fast_worker):
    ws = ws_svc.create_workspace(session=session, name="W")
    slow_sql = "SELECT count(*) AS n FROM range(200000) a, range(200000) b WHERE a.range + b.range = 7"  # 4e10 pairs
    use_model(sql_script([slow_sql], {"answer_markdown": "never"}))
    run = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="Cross join")
    wait_for(lambda: runs.get_run(session=session, run_id=run.id).progress, what="the query to start")
    time.sleep(0.3)
    asked = time.monotonic()
    runs.request_stop(session=session, run_id=run.id)
    assert wait_closed(run.id).status == RunStatus.stopped
    assert time.monotonic() - asked < 3  # the 30 s query timeout did not have to pass


def test_withdrawing_a_queued_question_keeps_its_text_and_runs_nothing(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    first = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="Q1")
    second = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=first.thread_id, content="Q2")
    withdrawn = runs.request_stop(session=session, run_id=second.id)
    assert withdrawn.status == RunStatus.stopped and withdrawn.prompt == "Q2"
    assert [r.id for r in runs.open_runs(session=session, thread_id=first.thread_id)] == [first.id]


def test_exactly_one_worker_wins_a_threads_lease(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    for trial in range(10):
        run = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content=f"Q{trial}")
        barrier = threading.Barrier(6)
        won: list[tuple[str, list[int]]] = []

        def claim(owner: str) -> None:
            with session_scope() as s:
                barrier.wait()
                won.append((owner, runs.claim_runs(session=s, owner=owner, limit=5, lease_s=30, run_ids=[run.id])))

        pool = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(6)]
        [t.start() for t in pool]
        [t.join(30) for t in pool]
        winners = [owner for owner, ids in won if ids]
        assert len(won) == 6 and len(winners) == 1, won
        lease = session.get(ThreadLease, run.thread_id, populate_existing=True)
        assert lease.owner == winners[0] and lease.run_id == run.id
        assert runs.get_run(session=session, run_id=run.id).owner == winners[0]


def test_a_second_run_waits_while_the_thread_is_leased(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    first = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="Q1")
    second = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=first.thread_id, content="Q2")
    other = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="Other thread")
    assert runs.claim_runs(session=session, owner="a", limit=5, lease_s=30) == [first.id, other.id]
    assert runs.claim_runs(session=session, owner="b", limit=5, lease_s=30) == []  # Q2 waits for Q1's lease


def test_an_expired_lease_is_recovered_as_interrupted_and_the_thread_goes_on(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    run = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="Dies mid-run")
    assert runs.claim_runs(session=session, owner="dead-process", limit=1, lease_s=30) == [run.id]
    started = runs.begin_run(session=session, run_id=run.id, owner="dead-process")
    started.plan.deps.run_dir.mkdir(parents=True)
    (started.plan.deps.run_dir / "q1.parquet").write_bytes(b"half a result")  # what a killed run leaves
    assert runs.recover_expired(session=session) == []  # not expired yet
    later = utcnow() + timedelta(seconds=31)
    assert runs.recover_expired(session=session, now=later) == [run.id]
    assert runs.recover_expired(session=session, now=later) == []  # one sweeper wins
    gone = runs.get_run(session=session, run_id=run.id)
    assert gone.status == RunStatus.interrupted and count(session, ThreadLease) == 0
    conv = threads_svc.conversation(session=session, thread_id=run.thread_id)
    assert [(m.role, m.status, m.content) for m in conv] == [
        ("user", "ok", "Dies mid-run"),
        ("assistant", "interrupted", turns.INTERRUPTED),
    ]
    assert not started.plan.deps.run_dir.exists()
    # The dead worker wakes up late: its commit is refused, nothing is added.
    from cfo_desk.agent.runner import TurnOutcome

    late = runs.finish_run(session=session, started=started, owner="dead-process", outcome=TurnOutcome(None, None, [], "x", 1.0), progress=[])
    assert late is None and len(threads_svc.conversation(session=session, thread_id=run.thread_id)) == 2
    # The question is kept: Retry answers it, and a new question runs.
    reply = turns.answer(session=session, thread_id=run.thread_id, user_message_id=conv[0].id, model=sql_script([], {"answer_markdown": "Back."}))
    assert reply.status == MessageStatus.ok
    assert turns.ask(session=session, thread_id=run.thread_id, content="Next", model=sql_script([])).status == MessageStatus.ok


def test_deleting_a_thread_while_its_run_goes_commits_nothing(session, fast_worker, caplog):
    caplog.set_level(logging.WARNING, logger="cfo_desk")
    ws = ws_svc.create_workspace(session=session, name="W")
    use_model(then_wait("SELECT 1 AS one", wait_s=1.0))
    run = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="Q")
    wait_for(lambda: runs.get_run(session=session, run_id=run.id).progress, what="the run to start")
    threads_svc.delete_thread(session=session, thread_id=run.thread_id)
    wait_for(lambda: not fast_worker.tasks, what="the worker to let go")
    assert (count(session, Message), count(session, Run), count(session, ThreadLease)) == (0, 0, 0)
    assert list(workspace_dir(ws.key).rglob("*.parquet")) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # let go cleanly, not by an error


def test_a_run_that_died_before_its_question_was_added_keeps_the_question(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    run = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="Claimed, then killed")
    assert runs.claim_runs(session=session, owner="dead-process", limit=1, lease_s=30) == [run.id]  # no begin_run
    assert runs.recover_expired(session=session, now=utcnow() + timedelta(seconds=31)) == [run.id]
    conv = threads_svc.conversation(session=session, thread_id=run.thread_id)
    assert [(m.role, m.status, m.content) for m in conv] == [
        ("user", "ok", "Claimed, then killed"),
        ("assistant", "interrupted", turns.INTERRUPTED),
    ]


def test_shutting_down_the_worker_records_its_runs_as_interrupted_at_once(session, fast_worker):
    ws = ws_svc.create_workspace(session=session, name="W")
    use_model(then_wait("SELECT 1 AS one", wait_s=60))
    run = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="Q")
    wait_for(lambda: runs.get_run(session=session, run_id=run.id).progress, what="the run to start")
    worker.shutdown_worker()
    done = runs.get_run(session=session, run_id=run.id)
    assert done.status == RunStatus.interrupted and count(session, ThreadLease) == 0  # no lease left to expire
    assert threads_svc.conversation(session=session, thread_id=run.thread_id)[-1].status == MessageStatus.interrupted


def test_a_failing_heartbeat_does_not_fail_the_run(session, fast_worker, monkeypatch):
    ws = ws_svc.create_workspace(session=session, name="W")
    real, calls = runs.heartbeat, []

    def flaky(**kwargs):
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("database is locked")
        return real(**kwargs)

    monkeypatch.setattr(runs, "heartbeat", flaky)
    use_model(sql_script(["SELECT 1 AS one"], {"answer_markdown": "Made it."}, delay_s=0.3))
    run = runs.enqueue_question(session=session, workspace_id=ws.id, thread_id=None, content="Q")
    assert wait_closed(run.id).status == RunStatus.done and len(calls) > 3
    assert threads_svc.conversation(session=session, thread_id=run.thread_id)[-1].content == "Made it."


def test_an_answered_question_is_not_answered_again(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    t = threads_svc.create_thread(session=session, workspace_id=ws.id)
    reply = turns.ask(session=session, thread_id=t.id, content="Q", model=sql_script([]))
    with pytest.raises(Conflict, match="already has an answer"):
        runs.enqueue_answer(session=session, thread_id=t.id, user_message_id=reply.parent_id)
