"""Services on real SQLite: workspaces, threads, turns, forks (isolation both ways), deletes."""

from __future__ import annotations

import pytest
from agent_script import scripted, sql_script
from pydantic_ai.messages import ModelRequest, ModelResponse, ToolCallPart, UserPromptPart
from sqlmodel import func, select

from cfo_desk.services import artifacts as artifacts_svc
from cfo_desk.services import threads as threads_svc
from cfo_desk.services import turns
from cfo_desk.services import workspaces as ws_svc
from cfo_desk.services.errors import Conflict, InvalidInput, NotFound
from cfo_desk.storage.db import dispose_engines, session_scope
from cfo_desk.storage.files import workspace_dir
from cfo_desk.storage.models import Artifact, Message


def prompts_seen(messages) -> list[str]:
    """The user prompts in a message list sent to the model, in order."""
    return [p.content for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, UserPromptPart)]


@pytest.fixture
def session(store):
    """Every test here runs on SQLite and on PostgreSQL."""
    with session_scope() as s:
        yield s


def count(session, model) -> int:
    return session.exec(select(func.count()).select_from(model)).one()


def test_workspace_names_are_checked(session):
    ws = ws_svc.create_workspace(session=session, name="  FY2024   close ")
    assert ws.name == "FY2024 close"
    with pytest.raises(Conflict, match="already exists"):
        ws_svc.create_workspace(session=session, name="fy2024 CLOSE")
    with pytest.raises(InvalidInput):
        ws_svc.create_workspace(session=session, name="   ")
    other = ws_svc.create_workspace(session=session, name="Board pack")
    with pytest.raises(Conflict):
        ws_svc.rename_workspace(session=session, workspace_id=other.id, name="FY2024 close")
    assert ws_svc.rename_workspace(session=session, workspace_id=other.id, name="Board pack Q4").name == "Board pack Q4"
    assert [w.name for w in ws_svc.list_workspaces(session=session)] == ["Board pack Q4", "FY2024 close"]


def test_turn_is_stored_with_history_and_artifacts(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    thread = threads_svc.create_thread(session=session, workspace_id=ws.id)
    model = sql_script(["SELECT 40 + 2 AS answer"], lambda r: {"answer_markdown": "It is **42**.", "key_figures": [{"label": "Answer", "value": 42, "unit": "USD"}]})
    reply = turns.ask(session=session, thread_id=thread.id, content="What is the answer?", model=model)

    assert reply.status == "ok" and reply.content == "It is **42**."
    thread = threads_svc.get_thread(session=session, thread_id=thread.id)
    assert thread.title == "What is the answer?"  # first question names the thread
    conv = threads_svc.conversation(session=session, thread_id=thread.id)
    assert [(m.role, m.content) for m in conv] == [("user", "What is the answer?"), ("assistant", "It is **42**.")]
    (art,) = artifacts_svc.artifacts_by_message(session=session, message_ids=[reply.id])[reply.id]
    assert (art.handle, art.sql, art.row_count) == ("q1", "SELECT 40 + 2 AS answer", 1)
    assert artifacts_svc.result_frame(session=session, artifact=art)["answer"].tolist() == [42]
    # The stored history replays the whole run: prompt, tool call, tool return, output.
    history = turns.model_history(session=session, message_id=reply.id)
    kinds = [p.part_kind for m in history for p in m.parts]
    assert "tool-call" in kinds and "tool-return" in kinds and prompts_seen(history) == ["What is the answer?"]


def test_fork_is_isolated_both_ways_and_survives_source_delete(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    source = threads_svc.create_thread(session=session, workspace_id=ws.id, title="Source")
    a1 = turns.ask(session=session, thread_id=source.id, content="Q1", model=sql_script(["SELECT 1 AS x"]))
    a2 = turns.ask(session=session, thread_id=source.id, content="Q2", model=sql_script(["SELECT 2 AS x"]))
    messages_before, files_before = count(session, Message), sorted(workspace_dir(ws.key).rglob("*"))

    fork = threads_svc.fork_thread(session=session, thread_id=source.id, message_id=a1.id)
    assert (fork.forked_from_thread_id, fork.forked_from_thread_title, fork.forked_from_message_id) == (source.id, "Source", a1.id)
    # Forking copies nothing: no message rows, no files.
    assert count(session, Message) == messages_before
    assert sorted(workspace_dir(ws.key).rglob("*")) == files_before
    assert [m.content for m in threads_svc.conversation(session=session, thread_id=fork.id)][-1] == a1.content

    # The fork's next turn sends the model exactly the path up to the fork point.
    seen: list = []
    f3 = turns.ask(session=session, thread_id=fork.id, content="Q3 in fork", model=sql_script(["SELECT 3 AS x"], seen=seen))
    assert prompts_seen(seen[0]) == ["Q1", "Q3 in fork"]
    # Result handles continue along each path: the fork's q2 and the source's q2 are different results.
    handles = artifacts_svc.artifacts_by_message(session=session, message_ids=[a1.id, a2.id, f3.id])
    assert [handles[m.id][0].handle for m in (a1, a2, f3)] == ["q1", "q2", "q2"]
    s3 = turns.ask(session=session, thread_id=source.id, content="Q4 in source", model=sql_script(["SELECT 4 AS x"]))

    fork_conv = [m.content for m in threads_svc.conversation(session=session, thread_id=fork.id) if m.role == "user"]
    source_conv = [m.content for m in threads_svc.conversation(session=session, thread_id=source.id) if m.role == "user"]
    assert fork_conv == ["Q1", "Q3 in fork"]
    assert source_conv == ["Q1", "Q2", "Q4 in source"]

    # Deleting the source keeps the fork whole, removes what only the source reached, files too.
    q2_dir = workspace_dir(ws.key) / artifacts_svc.artifacts_by_message(session=session, message_ids=[a2.id])[a2.id][0].file_path
    assert q2_dir.exists()
    threads_svc.delete_thread(session=session, thread_id=source.id)
    assert [m.content for m in threads_svc.conversation(session=session, thread_id=fork.id) if m.role == "user"] == ["Q1", "Q3 in fork"]
    fork = threads_svc.get_thread(session=session, thread_id=fork.id)
    assert fork.forked_from_thread_title == "Source"  # lineage still shown
    assert session.get(Message, a2.id) is None and session.get(Message, s3.id) is None
    assert session.get(Message, a1.id) is not None and session.get(Message, f3.id) is not None
    assert not q2_dir.exists()
    fork_art = artifacts_svc.artifacts_by_message(session=session, message_ids=[a1.id])[a1.id][0]
    assert artifacts_svc.result_frame(session=session, artifact=fork_art)["x"].tolist() == [1]
    # The fork goes on working after its source is gone.
    seen.clear()
    turns.ask(session=session, thread_id=fork.id, content="Q5", model=sql_script(["SELECT 5 AS x"], seen=seen))
    assert prompts_seen(seen[0]) == ["Q1", "Q3 in fork", "Q5"]


def test_fork_rejects_message_from_another_thread(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    t1 = threads_svc.create_thread(session=session, workspace_id=ws.id)
    t2 = threads_svc.create_thread(session=session, workspace_id=ws.id)
    a = turns.ask(session=session, thread_id=t1.id, content="Q", model=sql_script([]))
    with pytest.raises(NotFound):
        threads_svc.fork_thread(session=session, thread_id=t2.id, message_id=a.id)


def test_fork_from_a_question_then_answer_it(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    t = threads_svc.create_thread(session=session, workspace_id=ws.id)
    a1 = turns.ask(session=session, thread_id=t.id, content="Q1", model=sql_script([]))
    fork = threads_svc.fork_thread(session=session, thread_id=t.id, message_id=a1.parent_id)
    conv = threads_svc.conversation(session=session, thread_id=fork.id)
    assert [m.role for m in conv] == ["user"]
    seen: list = []
    reply = turns.answer(session=session, thread_id=fork.id, user_message_id=conv[-1].id, model=sql_script([], seen=seen))
    assert reply.status == "ok" and prompts_seen(seen[0]) == ["Q1"]
    # The original answer and the fork's answer are siblings; each thread shows its own.
    assert [m.id for m in threads_svc.conversation(session=session, thread_id=t.id)][-1] == a1.id
    assert [m.id for m in threads_svc.conversation(session=session, thread_id=fork.id)][-1] == reply.id


def test_failed_run_keeps_question_then_retry(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    t = threads_svc.create_thread(session=session, workspace_id=ws.id)

    def broken(messages, info):
        raise RuntimeError("provider exploded")

    failed = turns.ask(session=session, thread_id=t.id, content="What was MRR?", model=scripted(broken))
    assert failed.status == "failed" and "provider exploded" in failed.error
    assert failed.model_messages is None
    conv = threads_svc.conversation(session=session, thread_id=t.id)
    assert [(m.role, m.status) for m in conv] == [("user", "ok"), ("assistant", "failed")]
    assert count(session, Artifact) == 0
    assert not (workspace_dir(ws.key) / "artifacts").exists() or not any((workspace_dir(ws.key) / "artifacts").iterdir())

    retried = turns.answer(session=session, thread_id=t.id, user_message_id=failed.parent_id, model=sql_script(["SELECT 7 AS mrr"]))
    assert retried.status == "ok"
    assert [m.id for m in threads_svc.conversation(session=session, thread_id=t.id)] == [failed.parent_id, retried.id]


def test_failed_run_after_a_query_leaves_no_files(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    t = threads_svc.create_thread(session=session, workspace_id=ws.id)

    def query_then_crash(messages, info):
        from agent_script import turn_returns

        if not turn_returns(messages):
            return ModelResponse(parts=[ToolCallPart("run_sql", {"purpose": "p", "sql": "SELECT 1 AS a"})])
        raise RuntimeError("connection reset")

    failed = turns.ask(session=session, thread_id=t.id, content="Q", model=scripted(query_then_crash))
    assert failed.status == "failed"
    assert count(session, Artifact) == 0
    assert list((workspace_dir(ws.key) / "artifacts").rglob("*.parquet")) == []


def test_clarifying_question_then_reply(session):
    from agent_script import output_call

    ws = ws_svc.create_workspace(session=session, name="W")
    t = threads_svc.create_thread(session=session, workspace_id=ws.id)

    def ask_back(messages, info):
        return ModelResponse(parts=[output_call(info, "Clarification", {"question": "Active how?", "options": ["Paying", "Logged in"]})])

    clar = turns.ask(session=session, thread_id=t.id, content="How many active customers?", model=scripted(ask_back))
    assert clar.status == "clarification" and "Active how?" in clar.content and "Paying" in clar.content
    seen: list = []
    turns.ask(session=session, thread_id=t.id, content="Paying", model=sql_script([], seen=seen))
    assert prompts_seen(seen[0]) == ["How many active customers?", "Paying"]


def test_everything_comes_back_after_restart(session):
    ws = ws_svc.create_workspace(session=session, name="Persisted")
    t = threads_svc.create_thread(session=session, workspace_id=ws.id)
    reply = turns.ask(session=session, thread_id=t.id, content="Q", model=sql_script(["SELECT 9 AS n"]))
    fork = threads_svc.fork_thread(session=session, thread_id=t.id, message_id=reply.id)
    session.close()
    dispose_engines()  # as if the process restarted
    with session_scope() as fresh:
        assert [w.name for w in ws_svc.list_workspaces(session=fresh)] == ["Persisted"]
        assert {x.id for x in threads_svc.list_threads(session=fresh, workspace_id=ws.id)} == {t.id, fork.id}
        assert len(threads_svc.conversation(session=fresh, thread_id=fork.id)) == 2
        (art,) = artifacts_svc.list_artifacts(session=fresh, workspace_id=ws.id)
        assert artifacts_svc.result_frame(session=fresh, artifact=art)["n"].tolist() == [9]
        assert turns.model_history(session=fresh, message_id=reply.id)


def test_delete_workspace_removes_rows_and_folder(session):
    ws = ws_svc.create_workspace(session=session, name="Doomed")
    t = threads_svc.create_thread(session=session, workspace_id=ws.id)
    turns.ask(session=session, thread_id=t.id, content="Q", model=sql_script(["SELECT 1 AS a"]))
    threads_svc.fork_thread(session=session, thread_id=t.id, message_id=threads_svc.get_thread(session=session, thread_id=t.id).head_message_id)
    contents = ws_svc.workspace_contents(session=session, workspace_id=ws.id)
    assert (contents.threads, contents.messages, contents.artifacts) == (2, 2, 1) and contents.bytes_on_disk > 0
    ws_svc.delete_workspace(session=session, workspace_id=ws.id)
    assert not workspace_dir(ws.key).exists()
    assert count(session, Message) == 0 and count(session, Artifact) == 0


def test_no_second_question_while_one_is_unanswered(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    t = threads_svc.create_thread(session=session, workspace_id=ws.id)
    turns.add_user_message(session=session, thread_id=t.id, content="Q1")
    with pytest.raises(Conflict, match="no answer yet"):
        turns.add_user_message(session=session, thread_id=t.id, content="Q2 from another tab")


def test_a_stale_retry_never_cuts_off_later_turns(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    t = threads_svc.create_thread(session=session, workspace_id=ws.id)
    a1 = turns.ask(session=session, thread_id=t.id, content="Q1", model=sql_script([]))
    a2 = turns.ask(session=session, thread_id=t.id, content="Q2", model=sql_script([]))
    late = turns.answer(session=session, thread_id=t.id, user_message_id=a1.parent_id, model=sql_script([]))
    assert late.status == "ok" and late.parent_id == a1.parent_id
    assert [m.id for m in threads_svc.conversation(session=session, thread_id=t.id)][-1] == a2.id
    other = threads_svc.create_thread(session=session, workspace_id=ws.id)
    with pytest.raises(NotFound):  # a question of another thread can't be answered here
        turns.answer(session=session, thread_id=other.id, user_message_id=a1.parent_id, model=sql_script([]))


def test_sqlite_runs_with_wal_and_foreign_keys():
    from sqlalchemy import text

    with session_scope() as sqlite_session:  # the default store: SQLite under CFO_DESK_HOME
        assert sqlite_session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert sqlite_session.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_question_is_committed_before_the_run_starts(session):
    from agent_script import output_call

    ws = ws_svc.create_workspace(session=session, name="W")
    t = threads_svc.create_thread(session=session, workspace_id=ws.id)
    seen_in_store: list = []

    def plan(messages, info):
        with session_scope() as other:  # another connection sees the question while the model works
            seen_in_store.append([(m.role, m.content) for m in threads_svc.conversation(session=other, thread_id=t.id)])
        return ModelResponse(parts=[output_call(info, "FinalAnswer", {"answer_markdown": "ok"})])

    turns.ask(session=session, thread_id=t.id, content="Is it saved?", model=scripted(plan))
    assert seen_in_store == [[("user", "Is it saved?")]]


def test_threads_are_listed_newest_activity_first(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    old = threads_svc.create_thread(session=session, workspace_id=ws.id, title="old")
    new = threads_svc.create_thread(session=session, workspace_id=ws.id, title="new")
    assert [t.id for t in threads_svc.list_threads(session=session, workspace_id=ws.id)] == [new.id, old.id]
    turns.ask(session=session, thread_id=old.id, content="Q", model=sql_script([]))  # activity moves it up
    assert [t.id for t in threads_svc.list_threads(session=session, workspace_id=ws.id)] == [old.id, new.id]
