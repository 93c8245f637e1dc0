"""Branches inside a thread (issue 10): edit and resend, regenerate, ‹n/m› siblings, switching
branches, deleting a branch, fork titles and lineage, compare, the threads list.

Services on real SQLite and PostgreSQL; the model is scripted (FunctionModel) and runs go through
the run queue and lease like the app's (worker.run_inline executes a queued run on this thread).
"""

from __future__ import annotations

import pytest
from agent_script import sql_script
from pydantic_ai.messages import ModelMessagesTypeAdapter
from sqlalchemy import event

from cfo_desk.services import runs, turns, worker
from cfo_desk.services import threads as threads_svc
from cfo_desk.services import workspaces as ws_svc
from cfo_desk.services.errors import Conflict, InvalidInput, NotFound
from cfo_desk.storage.models import Message, Run
from test_threads import count, prompts_seen, session  # noqa: F401  (session: the SQLite + PostgreSQL fixture)




def answer_with(text: str, seen: list | None = None, sql: str = "SELECT 1 AS x"):
    return sql_script([sql], {"answer_markdown": text}, seen=seen)


def ask(session, thread_id: int, q: str, a: str | None = None, seen: list | None = None) -> Message:
    return turns.ask(session=session, thread_id=thread_id, content=q, model=answer_with(a or f"A to {q}", seen))


def run(run_row: Run, text: str, seen: list | None = None) -> Message:
    """Execute a queued run here, as the background worker would, and return its reply."""
    return worker.run_inline(run_row.id, model=answer_with(text, seen))


def path(session, thread_id: int) -> list[str]:
    return [m.content for m in threads_svc.conversation(session=session, thread_id=thread_id)]


def head(session, thread_id: int) -> int | None:
    return threads_svc.get_thread(session=session, thread_id=thread_id).head_message_id


def new_thread(session, title: str = "T"):
    ws = ws_svc.create_workspace(session=session, name=f"W {title}")
    return ws, threads_svc.create_thread(session=session, workspace_id=ws.id, title=title)


def same_history(sent, stored: list) -> bool:
    """True when the messages sent to the model start with exactly the stored history: every part
    (prompts, tool calls with their ids and arguments, tool returns, timestamps) in order, as JSON.
    Compared part by part because pydantic-ai merges each turn's first request into the previous
    turn's last one (the output tool's return) and adds the current instructions."""
    def parts(messages):
        return [p for m in messages for p in m["parts"]]

    got, want = parts(ModelMessagesTypeAdapter.dump_python(sent, mode="json")), parts(stored)
    return len(got) > len(want) and got[: len(want)] == want


class QueryCounter:
    """Counts the SQL statements the store runs inside a `with` block."""

    def __init__(self, session):
        self.engine = session.get_bind()
        self.n = 0

    def _count(self, *args, **kwargs):
        self.n += 1

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._count)


# ---------------------------------------------------------------------------------------------
# Edit, regenerate, siblings, switch.


def test_edit_makes_a_sibling_question_and_moves_the_head(session):
    ws, t = new_thread(session)
    a1 = ask(session, t.id, "Q1")
    a2 = ask(session, t.id, "Q2")
    q2 = session.get(Message, a2.parent_id)
    assert (q2.thread_id, a2.thread_id) == (t.id, t.id)  # every new message names its thread

    seen: list = []
    edit = runs.edit_question(session=session, thread_id=t.id, message_id=q2.id, content="  Q2, but for 2024  ")
    new_q = session.get(Message, edit.user_message_id)
    assert (new_q.parent_id, new_q.thread_id, new_q.content) == (a1.id, t.id, "Q2, but for 2024")
    assert head(session, t.id) == new_q.id  # the head moved before the run started
    reply = run(edit, "A to the edit", seen)
    assert reply.parent_id == new_q.id and reply.thread_id == t.id
    assert path(session, t.id) == ["Q1", "A to Q1", "Q2, but for 2024", "A to the edit"]
    assert prompts_seen(seen[0]) == ["Q1", "Q2, but for 2024"]  # the old branch is not in the history
    # The old branch is kept whole.
    assert session.get(Message, q2.id) is not None and session.get(Message, a2.id) is not None

    # Editing the first question makes a new root.
    edit = runs.edit_question(session=session, thread_id=t.id, message_id=a1.parent_id, content="Q1 again")
    reply = run(edit, "fresh")
    assert path(session, t.id) == ["Q1 again", "fresh"]
    root = session.get(Message, edit.user_message_id)
    assert root.parent_id is None
    sib = threads_svc.siblings(session=session, thread_id=t.id, message_ids=[root.id, reply.id])
    assert (sib[root.id].ids, sib[root.id].index, sib[root.id].count) == ((a1.parent_id, root.id), 1, 2)
    assert sib[reply.id].count == 1


def test_edit_and_regenerate_refuse_what_they_must(session):
    ws, t = new_thread(session)
    a1 = ask(session, t.id, "Q1")
    with pytest.raises(InvalidInput):
        runs.edit_question(session=session, thread_id=t.id, message_id=a1.parent_id, content="   ")
    with pytest.raises(InvalidInput):
        runs.edit_question(session=session, thread_id=t.id, message_id=a1.parent_id, content="x" * (turns.MAX_PROMPT_CHARS + 1))
    with pytest.raises(NotFound):  # an answer is not a question
        runs.edit_question(session=session, thread_id=t.id, message_id=a1.id, content="Q")
    with pytest.raises(NotFound):  # a question is not an answer
        runs.regenerate(session=session, thread_id=t.id, message_id=a1.parent_id)
    other = threads_svc.create_thread(session=session, workspace_id=ws.id)
    with pytest.raises(NotFound):  # not on that thread's path
        runs.edit_question(session=session, thread_id=other.id, message_id=a1.parent_id, content="Q")
    with pytest.raises(NotFound):
        runs.regenerate(session=session, thread_id=other.id, message_id=a1.id)
    queued = runs.regenerate(session=session, thread_id=t.id, message_id=a1.id)
    with pytest.raises(Conflict):  # one run at a time
        runs.edit_question(session=session, thread_id=t.id, message_id=a1.parent_id, content="Q")
    with pytest.raises(Conflict):
        runs.regenerate(session=session, thread_id=t.id, message_id=a1.id)
    with pytest.raises(Conflict):
        threads_svc.switch_branch(session=session, thread_id=t.id, message_id=a1.id)
    assert count(session, Message) == 2  # nothing refused left a message behind
    run(queued, "again")


def test_regenerate_adds_a_sibling_answer(session):
    ws, t = new_thread(session)
    a1 = ask(session, t.id, "Q1", "first")
    r = runs.regenerate(session=session, thread_id=t.id, message_id=a1.id)
    assert r.user_message_id == a1.parent_id and head(session, t.id) == a1.id
    seen: list = []
    b1 = run(r, "second", seen)
    assert b1.parent_id == a1.parent_id and b1.thread_id == t.id
    assert head(session, t.id) == b1.id  # the head compare-and-set moved from the old answer
    assert path(session, t.id) == ["Q1", "second"]
    assert prompts_seen(seen[0]) == ["Q1"]
    sib = threads_svc.siblings(session=session, thread_id=t.id, message_ids=[a1.parent_id, b1.id])
    assert sib[b1.id].ids == (a1.id, b1.id) and sib[b1.id].index == 1
    assert sib[a1.parent_id].count == 1

    # Regenerating a past answer: the path below it stays on the old branch.
    ask(session, t.id, "Q2", "two")
    r = runs.regenerate(session=session, thread_id=t.id, message_id=b1.id)
    assert path(session, t.id) == ["Q1", "second"]  # cut below the answer while the new one runs
    c1 = run(r, "third")
    assert path(session, t.id) == ["Q1", "third"]
    assert threads_svc.siblings(session=session, thread_id=t.id, message_ids=[c1.id])[c1.id].ids == (a1.id, b1.id, c1.id)
    # Back to the second answer: its branch still has Q2 and its answer.
    threads_svc.switch_branch(session=session, thread_id=t.id, message_id=b1.id)
    assert path(session, t.id) == ["Q1", "second", "Q2", "two"]


def test_sibling_counts_and_order_in_two_queries(session):
    ws, t = new_thread(session)
    a1 = ask(session, t.id, "Q1")
    a2 = ask(session, t.id, "Q2")
    edits = []
    for text in ("Q2 b", "Q2 c"):
        current = threads_svc.conversation(session=session, thread_id=t.id)[2].id  # edit the question shown
        r = runs.edit_question(session=session, thread_id=t.id, message_id=current, content=text)
        run(r, f"A to {text}")
        edits.append(r.user_message_id)
    conv = threads_svc.conversation(session=session, thread_id=t.id)
    ids = [m.id for m in conv]
    with QueryCounter(session) as qc:
        sib = threads_svc.siblings(session=session, thread_id=t.id, message_ids=ids)
    assert qc.n <= 2
    q2s = (a2.parent_id, *edits)
    assert sib[edits[-1]] == threads_svc.Siblings(q2s, 2, 3)  # ‹3/3›, oldest first
    assert [sib[i].count for i in ids] == [1, 1, 3, 1]
    # Each branch lists the same siblings, its own position marked.
    for pos, qid in enumerate(q2s):
        threads_svc.switch_branch(session=session, thread_id=t.id, message_id=qid)
        here = threads_svc.siblings(session=session, thread_id=t.id, message_ids=[qid])[qid]
        assert (here.ids, here.index, here.count) == (q2s, pos, 3)
        assert path(session, t.id)[2:] == [session.get(Message, qid).content, f"A to {session.get(Message, qid).content}"]
    assert threads_svc.siblings(session=session, thread_id=t.id, message_ids=[]) == {}
    assert a1.id in threads_svc.siblings(session=session, thread_id=t.id, message_ids=[a1.id, 10**9])


def test_switch_restores_the_exact_history_and_runs_nothing(session):
    ws, t = new_thread(session)
    ask(session, t.id, "Q1", "one")
    a2 = ask(session, t.id, "Q2", "two", )
    a3 = ask(session, t.id, "Q3", "three")
    r = runs.edit_question(session=session, thread_id=t.id, message_id=a2.parent_id, content="Q2 other")
    other = run(r, "two other")
    ask(session, t.id, "Q3 other", "three other")
    exact_before = ModelMessagesTypeAdapter.dump_python(turns.model_history(session=session, message_id=a3.id), mode="json")

    runs_before, messages_before = count(session, Run), count(session, Message)
    thread = threads_svc.switch_branch(session=session, thread_id=t.id, message_id=a2.parent_id)
    assert thread.head_message_id == a3.id  # the branch's most recent leaf
    assert (count(session, Run), count(session, Message)) == (runs_before, messages_before)  # nothing ran
    assert path(session, t.id) == ["Q1", "one", "Q2", "two", "Q3", "three"]

    seen: list = []
    ask(session, t.id, "Q4", "four", seen)
    sent = seen[0]
    assert prompts_seen(sent) == ["Q1", "Q2", "Q3", "Q4"]
    assert same_history(sent, exact_before)

    # And back: the other branch's leaf, with its own history.
    threads_svc.switch_branch(session=session, thread_id=t.id, message_id=other.parent_id)
    assert path(session, t.id) == ["Q1", "one", "Q2 other", "two other", "Q3 other", "three other"]
    seen.clear()
    ask(session, t.id, "Q5", "five", seen)
    assert prompts_seen(seen[0]) == ["Q1", "Q2 other", "Q3 other", "Q5"]
    # A message of another thread is not a branch here.
    t2 = threads_svc.create_thread(session=session, workspace_id=ws.id)
    with pytest.raises(NotFound):
        threads_svc.switch_branch(session=session, thread_id=t2.id, message_id=a2.id)


def test_branches_are_isolated_between_a_thread_and_its_fork(session):
    ws, s = new_thread(session, "Source")
    a1 = ask(session, s.id, "Q1")
    a2 = ask(session, s.id, "Q2")
    fork = threads_svc.fork_thread(session=session, thread_id=s.id, message_id=a2.id)
    # The fork edits Q2 and regenerates; the source edits Q2 too.
    run(runs.edit_question(session=session, thread_id=fork.id, message_id=a2.parent_id, content="Q2 in fork"), "fork answer")
    run(runs.edit_question(session=session, thread_id=s.id, message_id=a2.parent_id, content="Q2 in source"), "source answer")
    fork_q = threads_svc.conversation(session=session, thread_id=fork.id)[2]
    source_q = threads_svc.conversation(session=session, thread_id=s.id)[2]
    in_source = threads_svc.siblings(session=session, thread_id=s.id, message_ids=[a2.parent_id, source_q.id])
    in_fork = threads_svc.siblings(session=session, thread_id=fork.id, message_ids=[a2.parent_id, fork_q.id])
    assert in_source[source_q.id].ids == (a2.parent_id, source_q.id)  # the fork's edit is not a branch of the source
    # In the fork, the question it was forked with is its own first branch: ‹2/2› on its edit.
    assert in_fork[fork_q.id] == threads_svc.Siblings((a2.parent_id, fork_q.id), 1, 2)
    assert in_fork[a2.parent_id].ids == (a2.parent_id, fork_q.id)
    assert fork_q.id not in in_source[a2.parent_id].ids and source_q.id not in in_fork[a2.parent_id].ids
    with pytest.raises(NotFound):  # and can't be switched to from the other thread
        threads_svc.switch_branch(session=session, thread_id=s.id, message_id=fork_q.id)
    with pytest.raises(NotFound):
        threads_svc.switch_branch(session=session, thread_id=fork.id, message_id=source_q.id)
    # Switching the source to its first branch never picks up the fork's messages.
    threads_svc.switch_branch(session=session, thread_id=s.id, message_id=a2.parent_id)
    assert path(session, s.id) == ["Q1", "A to Q1", "Q2", "A to Q2"]
    assert path(session, fork.id) == ["Q1", "A to Q1", "Q2 in fork", "fork answer"]
    # The fork's inherited messages (written in the source) keep the fork's own head when picked.
    threads_svc.switch_branch(session=session, thread_id=fork.id, message_id=a1.id)
    assert path(session, fork.id) == ["Q1", "A to Q1", "Q2 in fork", "fork answer"]
    # Back to the question the fork was made with: its path up to the fork point, nothing of the
    # source's later branch.
    threads_svc.switch_branch(session=session, thread_id=fork.id, message_id=a2.parent_id)
    assert path(session, fork.id) == ["Q1", "A to Q1", "Q2", "A to Q2"]
    assert threads_svc.get_thread(session=session, thread_id=fork.id).head_message_id == a2.id
    # The fork's inherited branch outlives its source (no head reaches it now).
    threads_svc.switch_branch(session=session, thread_id=fork.id, message_id=fork_q.id)
    threads_svc.delete_thread(session=session, thread_id=s.id)
    assert session.get(Message, a2.id) is not None and session.get(Message, source_q.id) is None
    assert threads_svc.siblings(session=session, thread_id=fork.id, message_ids=[fork_q.id])[fork_q.id].count == 2
    threads_svc.switch_branch(session=session, thread_id=fork.id, message_id=a2.parent_id)
    assert path(session, fork.id) == ["Q1", "A to Q1", "Q2", "A to Q2"]


# ---------------------------------------------------------------------------------------------
# Deleting: a branch, and a whole thread, keep every other branch whole.


def result_dir(session, message_id: int):
    from cfo_desk.services import artifacts as artifacts_svc
    from cfo_desk.storage.files import workspace_dir

    (art,) = artifacts_svc.artifacts_by_message(session=session, message_ids=[message_id])[message_id]
    ws = ws_svc.get_workspace(session=session, workspace_id=art.workspace_id)
    return workspace_dir(ws.key) / art.file_path


def test_delete_a_branch_keeps_every_other_branch(session):
    ws, t = new_thread(session)
    ask(session, t.id, "Q1", "one")
    a2 = ask(session, t.id, "Q2", "two")
    a3 = ask(session, t.id, "Q3", "three")
    b = runs.edit_question(session=session, thread_id=t.id, message_id=a2.parent_id, content="Q2 b")
    b2 = run(b, "two b")
    b3 = ask(session, t.id, "Q3 b", "three b")
    c = runs.edit_question(session=session, thread_id=t.id, message_id=b.user_message_id, content="Q2 c")
    c2 = run(c, "two c")
    b, c = b.user_message_id, c.user_message_id  # the questions (a run's user_message_id is nulled with its message)
    files_b = result_dir(session, b2.id), result_dir(session, b3.id)
    history_a = turns.model_history(session=session, message_id=a3.id)
    history_c = turns.model_history(session=session, message_id=c2.id)

    threads_svc.switch_branch(session=session, thread_id=t.id, message_id=b)
    gone = threads_svc.delete_branch(session=session, thread_id=t.id, message_id=b)
    assert gone.deleted_ids == sorted([b, b2.id, b3.parent_id, b3.id]) and gone.kept_ids == []
    assert all(session.get(Message, i) is None for i in gone.deleted_ids)
    assert not any(f.exists() for f in files_b)
    # The head was inside: it moved to the parent's newest remaining leaf (branch c).
    assert gone.thread.head_message_id == c2.id
    assert path(session, t.id) == ["Q1", "one", "Q2 c", "two c"]
    sib = threads_svc.siblings(session=session, thread_id=t.id, message_ids=[c])[c]
    assert sib.ids == (a2.parent_id, c)
    # The other branches are whole, history and result files included.
    assert turns.model_history(session=session, message_id=a3.id) == history_a
    assert turns.model_history(session=session, message_id=c2.id) == history_c
    assert result_dir(session, a3.id).exists() and result_dir(session, c2.id).exists()
    threads_svc.switch_branch(session=session, thread_id=t.id, message_id=a2.parent_id)
    assert path(session, t.id) == ["Q1", "one", "Q2", "two", "Q3", "three"]

    # Deleting a branch the head is not in leaves the head alone.
    gone = threads_svc.delete_branch(session=session, thread_id=t.id, message_id=c)
    assert gone.thread.head_message_id == a3.id and path(session, t.id)[-1] == "three"
    # Deleting the last answer: the head moves up to its question.
    gone = threads_svc.delete_branch(session=session, thread_id=t.id, message_id=a3.id)
    assert gone.thread.head_message_id == a3.parent_id
    with pytest.raises(NotFound):  # gone
        threads_svc.delete_branch(session=session, thread_id=t.id, message_id=a3.id)


def test_delete_a_branch_keeps_what_a_fork_uses(session):
    ws, t = new_thread(session)
    a1 = ask(session, t.id, "Q1", "one")
    run(runs.regenerate(session=session, thread_id=t.id, message_id=a1.id), "one b")
    b1 = threads_svc.get_thread(session=session, thread_id=t.id).head_message_id
    b2 = ask(session, t.id, "Q2 b", "two b")
    b3 = ask(session, t.id, "Q3 b", "three b")
    fork = threads_svc.fork_thread(session=session, thread_id=t.id, message_id=b2.id)  # the fork's head is inside the branch
    other = threads_svc.create_thread(session=session, workspace_id=ws.id)
    with pytest.raises(NotFound):  # not a branch of that thread
        threads_svc.delete_branch(session=session, thread_id=other.id, message_id=b1)
    with pytest.raises(NotFound):  # the fork did not write it
        threads_svc.delete_branch(session=session, thread_id=fork.id, message_id=b1)

    gone = threads_svc.delete_branch(session=session, thread_id=t.id, message_id=b1)
    assert gone.kept_ids == sorted([b1, b2.parent_id, b2.id])  # the fork's path
    assert gone.deleted_ids == sorted([b3.parent_id, b3.id])
    assert gone.thread.head_message_id == a1.id  # the remaining branch
    assert path(session, fork.id) == ["Q1", "one b", "Q2 b", "two b"]
    assert result_dir(session, b2.id).exists()

    # Another fork wrote a branch below this thread's messages, then moved its head elsewhere (it
    # edited the first question): no head reaches its branch, but the fork still exists, so the
    # messages it hangs from stay.
    a2 = ask(session, t.id, "Q2 a", "two a")
    fork2 = threads_svc.fork_thread(session=session, thread_id=t.id, message_id=a2.id)
    f3 = ask(session, fork2.id, "Q3 in fork", "fork three")
    run(runs.edit_question(session=session, thread_id=fork2.id, message_id=a1.parent_id, content="Q1 in fork"), "fork one")
    gone = threads_svc.delete_branch(session=session, thread_id=t.id, message_id=a1.id)
    assert gone.kept_ids == sorted([a1.id, a2.parent_id, a2.id]) and gone.deleted_ids == []
    assert gone.thread.head_message_id == b2.id  # the newest remaining leaf under Q1
    threads_svc.switch_branch(session=session, thread_id=fork2.id, message_id=f3.parent_id)
    assert path(session, fork2.id) == ["Q1", "one", "Q2 a", "two a", "Q3 in fork", "fork three"]
    assert result_dir(session, f3.id).exists()
    # A branch of the fork's own is the fork's to delete; the source's messages stay.
    gone = threads_svc.delete_branch(session=session, thread_id=fork2.id, message_id=f3.parent_id)
    assert gone.deleted_ids == sorted([f3.parent_id, f3.id]) and gone.thread.head_message_id == a2.id


def test_delete_a_branch_keeps_result_files_a_kept_message_uses(session):
    """A chart keeps the Parquet file of the result it draws, which may lie in an earlier run's
    folder on the path that stays: deleting the chart's branch must not remove that folder."""
    from cfo_desk.storage.models import Artifact

    ws, t = new_thread(session)
    a1 = ask(session, t.id, "Q1", "one")
    a2 = ask(session, t.id, "Q2 chart it", "chart")
    q1_file = result_dir(session, a1.id)
    rel = q1_file.relative_to(q1_file.parents[2]).as_posix()
    session.add(Artifact(workspace_id=ws.id, message_id=a2.id, kind="chart", handle="c1", title="c", file_path=rel, spec={}))
    session.commit()
    gone = threads_svc.delete_branch(session=session, thread_id=t.id, message_id=a2.parent_id)
    assert a2.id in gone.deleted_ids
    assert q1_file.exists()  # the earlier result the chart drew stays with its message


def test_delete_a_first_question_with_no_other_branch_empties_the_thread(session):
    ws, t = new_thread(session)
    a1 = ask(session, t.id, "Q1", "one")
    gone = threads_svc.delete_branch(session=session, thread_id=t.id, message_id=a1.parent_id)
    assert gone.thread.head_message_id is None and path(session, t.id) == []
    assert count(session, Message) == 0
    # A first question edited: deleting one root leaves the other.
    a1 = ask(session, t.id, "Q1", "one")
    b = runs.edit_question(session=session, thread_id=t.id, message_id=a1.parent_id, content="Q1 b")
    b1 = run(b, "one b")
    gone = threads_svc.delete_branch(session=session, thread_id=t.id, message_id=a1.parent_id)
    assert gone.thread.head_message_id == b1.id
    gone = threads_svc.delete_branch(session=session, thread_id=t.id, message_id=b1.parent_id)
    assert gone.thread.head_message_id is None


def test_delete_thread_keeps_the_branches_of_other_threads(session):
    ws, t = new_thread(session)
    a1 = ask(session, t.id, "Q1", "one")
    a2 = ask(session, t.id, "Q2", "two")
    b = runs.edit_question(session=session, thread_id=t.id, message_id=a2.parent_id, content="Q2 b")
    b2 = run(b, "two b")  # t's head is now branch b; branch a (Q2, two) is reached by no head
    u = threads_svc.create_thread(session=session, workspace_id=ws.id, title="U")
    u1 = ask(session, u.id, "U1", "u one")
    fork = threads_svc.fork_thread(session=session, thread_id=u.id, message_id=u1.id)
    ub = run(runs.regenerate(session=session, thread_id=u.id, message_id=u1.id), "u one b")  # u1: only the fork's head reaches it
    doomed = threads_svc.create_thread(session=session, workspace_id=ws.id, title="Doomed")
    d1 = ask(session, doomed.id, "D1", "d one")
    run(runs.regenerate(session=session, thread_id=doomed.id, message_id=d1.id), "d one b")

    threads_svc.delete_thread(session=session, thread_id=doomed.id)
    for kept in (a2.parent_id, a2.id, b2.id, u1.id, a1.id):
        assert session.get(Message, kept) is not None, kept
    assert result_dir(session, a2.id).exists()
    assert session.get(Message, d1.id) is None and session.get(Message, d1.parent_id) is None
    threads_svc.switch_branch(session=session, thread_id=t.id, message_id=a2.parent_id)
    assert path(session, t.id) == ["Q1", "one", "Q2", "two"]
    # Deleting U keeps what its fork's head reaches, and drops U's other branch.
    threads_svc.delete_thread(session=session, thread_id=u.id)
    assert path(session, fork.id) == ["U1", "u one"]
    assert session.get(Message, ub.id) is None
    assert count(session, Message) == 2 + 4 + 2  # t's two branches + the fork's path


# ---------------------------------------------------------------------------------------------
# Forks: titles, lineage, the path check.


def test_fork_titles_are_unique_and_readable(session):
    ws, t = new_thread(session, "MRR Dec 2024")
    a1 = ask(session, t.id, "Q1")
    fork = lambda **kw: threads_svc.fork_thread(session=session, thread_id=t.id, message_id=a1.id, **kw)  # noqa: E731
    assert [fork().title for _ in range(3)] == ["MRR Dec 2024 · fork 1", "MRR Dec 2024 · fork 2", "MRR Dec 2024 · fork 3"]
    by_title = lambda title: next(x for x in threads_svc.list_threads(session=session, workspace_id=ws.id) if x.title == title)  # noqa: E731
    f2 = by_title("MRR Dec 2024 · fork 2")
    threads_svc.delete_thread(session=session, thread_id=f2.id)
    assert fork().title == "MRR Dec 2024 · fork 2"  # the smallest free number
    # A fork of a fork counts on from the same base: never "· fork 1 · fork 1".
    f1 = by_title("MRR Dec 2024 · fork 1")
    assert threads_svc.fork_thread(session=session, thread_id=f1.id, message_id=a1.id).title == "MRR Dec 2024 · fork 4"
    legacy = threads_svc.create_thread(session=session, workspace_id=ws.id, title="Churn (fork) (fork)")
    turns.ask(session=session, thread_id=legacy.id, content="Q", model=answer_with("A"))
    legacy_head = threads_svc.get_thread(session=session, thread_id=legacy.id).head_message_id
    assert threads_svc.fork_thread(session=session, thread_id=legacy.id, message_id=legacy_head).title == "Churn · fork 1"
    # A typed title is used as given, made unique with (2), (3).
    assert fork(title="  What if  churn is 3%  ").title == "What if churn is 3%"
    assert fork(title="What if churn is 3%").title == "What if churn is 3% (2)"
    assert fork(title="MRR Dec 2024").title == "MRR Dec 2024 (2)"
    # LIKE wildcards in a title are plain characters; long titles keep their suffix.
    assert fork(title="50%_off").title == "50%_off" and fork(title="50%_off").title == "50%_off (2)"
    long = threads_svc.rename_thread(session=session, thread_id=t.id, title="x" * 200)
    titles = [threads_svc.fork_thread(session=session, thread_id=long.id, message_id=a1.id).title for _ in range(2)]
    assert titles[0].endswith("… · fork 1") and titles[1].endswith("… · fork 2") and all(len(x) == 200 for x in titles)
    # Titles are unique per workspace: another workspace starts again at 1.
    ws2 = ws_svc.create_workspace(session=session, name="Another")
    t2 = threads_svc.create_thread(session=session, workspace_id=ws2.id, title="MRR Dec 2024")
    b1 = ask(session, t2.id, "Q1")
    assert threads_svc.fork_thread(session=session, thread_id=t2.id, message_id=b1.id).title == "MRR Dec 2024 · fork 1"


def test_fork_checks_the_path_and_lists_forks_at_their_messages(session):
    ws, t = new_thread(session, "Source")
    a1 = ask(session, t.id, "Q1")
    a2 = ask(session, t.id, "Q2")
    r = runs.edit_question(session=session, thread_id=t.id, message_id=a2.parent_id, content="Q2 b")
    b2 = run(r, "two b")
    # A message on another branch of the same thread is not on the path: refused.
    with pytest.raises(NotFound):
        threads_svc.fork_thread(session=session, thread_id=t.id, message_id=a2.id)
    with pytest.raises(NotFound):
        threads_svc.fork_thread(session=session, thread_id=t.id, message_id=10**9)
    empty = threads_svc.create_thread(session=session, workspace_id=ws.id)
    with pytest.raises(NotFound):
        threads_svc.fork_thread(session=session, thread_id=empty.id, message_id=a1.id)
    at_head = threads_svc.fork_thread(session=session, thread_id=t.id, message_id=b2.id)
    at_root = threads_svc.fork_thread(session=session, thread_id=t.id, message_id=a1.parent_id)
    at_a1 = threads_svc.fork_thread(session=session, thread_id=t.id, message_id=a1.id, title="Scenario")
    again = threads_svc.fork_thread(session=session, thread_id=t.id, message_id=b2.id)
    of_fork = threads_svc.fork_thread(session=session, thread_id=at_head.id, message_id=b2.id)
    assert threads_svc.forks_of(session=session, thread_id=t.id) == {
        b2.id: [(at_head.id, "Source · fork 1"), (again.id, "Source · fork 3")],
        a1.parent_id: [(at_root.id, "Source · fork 2")],
        a1.id: [(at_a1.id, "Scenario")],
    }
    assert threads_svc.forks_of(session=session, thread_id=at_head.id) == {b2.id: [(of_fork.id, "Source · fork 4")]}
    assert threads_svc.forks_of(session=session, thread_id=of_fork.id) == {}
    # Deleting a fork takes it off the list.
    threads_svc.delete_thread(session=session, thread_id=again.id)
    assert [f.thread_id for f in threads_svc.forks_of(session=session, thread_id=t.id)[b2.id]] == [at_head.id]


# ---------------------------------------------------------------------------------------------
# The threads list: search, archive, paging.


def test_threads_list_pages_past_fifty(session):
    ws = ws_svc.create_workspace(session=session, name="Many")
    made = [threads_svc.create_thread(session=session, workspace_id=ws.id, title=f"T{i:03d}").id for i in range(120)]
    pages = [threads_svc.list_threads(session=session, workspace_id=ws.id, offset=o) for o in (0, 50, 100, 150)]
    assert [len(p) for p in pages] == [50, 50, 20, 0]
    ids = [t.id for p in pages for t in p]
    assert ids == sorted(made, reverse=True)  # newest activity first, no thread twice, none missed
    assert threads_svc.count_threads(session=session, workspace_id=ws.id) == 120
    assert len(threads_svc.list_threads(session=session, workspace_id=ws.id, limit=None)) == 120
    assert [t.id for t in threads_svc.list_threads(session=session, workspace_id=ws.id, limit=3, offset=1)] == ids[1:4]
    assert threads_svc.list_threads(session=session, workspace_id=ws.id) == pages[0]  # the sidebar's call


def test_threads_list_search_and_archive(session):
    ws = ws_svc.create_workspace(session=session, name="W")
    mrr = threads_svc.create_thread(session=session, workspace_id=ws.id, title="MRR December")
    churn = threads_svc.create_thread(session=session, workspace_id=ws.id, title="Board pack")
    promo = threads_svc.create_thread(session=session, workspace_id=ws.id, title="50%_off promo")
    other = threads_svc.create_thread(session=session, workspace_id=ws.id, title="50 off promo")
    turns.ask(session=session, thread_id=churn.id, content="How many logos churned?", model=answer_with("12 Churned Logos in Q4"))
    fork = threads_svc.fork_thread(session=session, thread_id=churn.id, message_id=threads_svc.get_thread(session=session, thread_id=churn.id).head_message_id)
    turns.ask(session=session, thread_id=fork.id, content="And by segment?", model=answer_with("SMB leads"))
    elsewhere = ws_svc.create_workspace(session=session, name="Elsewhere")
    threads_svc.create_thread(session=session, workspace_id=elsewhere.id, title="MRR too")

    def found(q, **kw) -> set[int]:
        hits = {t.id for t in threads_svc.list_threads(session=session, workspace_id=ws.id, query=q, **kw)}
        assert threads_svc.count_threads(session=session, workspace_id=ws.id, query=q, **kw) == len(hits)
        return hits

    assert found("mrr") == {mrr.id}  # title, any case, this workspace only
    assert found("  CHURNED   logos ") == {churn.id}  # an answer's text; spaces folded
    assert found("logos churned") == {churn.id}  # a question's text
    assert found("segment") == {fork.id}  # the fork's own turn; its source does not match
    assert found("smb") == {fork.id}
    assert found("%") == {promo.id} and found("50%_") == {promo.id} and found("_") == {promo.id}
    assert found("") == found(None) == {mrr.id, churn.id, promo.id, other.id, fork.id}
    assert found("nothing like this") == set()

    archived = threads_svc.archive_thread(session=session, thread_id=mrr.id)
    assert archived.archived_at is not None
    assert threads_svc.archive_thread(session=session, thread_id=mrr.id).archived_at == archived.archived_at
    assert mrr.id not in found(None) and found("mrr") == set()
    assert found(None, archived=True) == {mrr.id} and found("MRR", archived=True) == {mrr.id}
    assert found(None, archived=None) == {mrr.id, churn.id, promo.id, other.id, fork.id}
    assert threads_svc.count_threads(session=session, workspace_id=ws.id) == 4
    # An archived thread still works: it can be read and asked in.
    turns.ask(session=session, thread_id=mrr.id, content="Still here?", model=answer_with("Yes"))
    assert path(session, mrr.id)[-1] == "Yes"
    back = threads_svc.unarchive_thread(session=session, thread_id=mrr.id)
    assert back.archived_at is None and found("mrr") == {mrr.id} and found(None, archived=True) == set()
    assert threads_svc.list_threads(session=session, workspace_id=ws.id)[0].id == mrr.id  # its last activity puts it first
    with pytest.raises(NotFound):
        threads_svc.archive_thread(session=session, thread_id=10**9)


# ---------------------------------------------------------------------------------------------
# Compare.


def figures_model(text: str, figures: list[tuple[str, float, str]]):
    """A model that selects each figure's value in one query and cites it (so every figure ties out)."""
    from agent_script import result_content

    cols = [f"f{i}" for i in range(len(figures))]
    sql = "SELECT " + ", ".join(f"CAST({v!r} AS DOUBLE) AS {c}" for (_, v, _), c in zip(figures, cols))

    def answer(returns):
        handle = result_content(returns[-1])["result"]
        return {
            "answer_markdown": text,
            "key_figures": [{"label": lab, "value": v, "unit": u, "query": handle, "column": c} for (lab, v, u), c in zip(figures, cols)],
        }

    return sql_script([sql], answer)


def test_compare_two_forks_from_where_they_diverge(session):
    ws, t = new_thread(session, "MRR Dec 2024")
    a1 = turns.ask(session=session, thread_id=t.id, content="MRR in Dec 2024?", model=figures_model("MRR was $1,000.", [("MRR", 1000.0, "USD")]))
    left = threads_svc.fork_thread(session=session, thread_id=t.id, message_id=a1.id)
    right = threads_svc.fork_thread(session=session, thread_id=t.id, message_id=a1.id)
    lf = [("MRR", 1000.0, "USD"), ("Churn rate", 2.5, "%"), ("New logos", 12, "customers"), ("ARPU", 50.0, "USD")]
    rf = [("churn  RATE", 2.54, "%"), ("MRR", 1000.004, "USD"), ("Logos added", 15, "customers"), ("NRR", 101.2, "%"), ("Gross margin", 80.0, "%")]
    la = turns.ask(session=session, thread_id=left.id, content="What if churn is 2.5%?", model=figures_model("Left.", lf))
    ra = turns.ask(session=session, thread_id=right.id, content="What if churn is 2.54%?", model=figures_model("Right.", rf))
    turns.ask(session=session, thread_id=right.id, content="And ARR?", model=figures_model("ARR.", [("ARR", 12000.0, "USD")]))

    with QueryCounter(session) as qc:
        cmp = threads_svc.compare(session=session, left_thread_id=left.id, right_thread_id=right.id)
    assert qc.n <= 6
    assert [m.id for m in cmp.common] == [a1.parent_id, a1.id]
    assert [m.content for m in cmp.left] == ["What if churn is 2.5%?", "Left."]
    assert [m.content for m in cmp.right] == ["What if churn is 2.54%?", "Right.", "And ARR?", "ARR."]
    first, second = cmp.pairs
    assert (first.left.question.id, first.left.answer.id, first.right.answer.id) == (la.parent_id, la.id, ra.id)
    figs = {f.label: f for f in first.figures}
    assert [f.label for f in first.figures] == ["MRR", "Churn rate", "New logos", "ARPU", "Gross margin"]
    mrr = figs["MRR"]
    assert (mrr.matched_by, mrr.left, mrr.right, mrr.unit) == ("label", 1000.0, 1000.004, "USD")
    assert mrr.difference == pytest.approx(0.004) and not mrr.changed  # within half a cent
    churn = figs["Churn rate"]
    assert churn.matched_by == "label" and churn.right_label == "churn  RATE" and not churn.changed  # 0.04 pp
    logos = figs["New logos"]
    assert (logos.matched_by, logos.right_label, logos.difference, logos.relative, logos.changed) == ("position", "Logos added", 3, 0.25, True)
    arpu = figs["ARPU"]
    assert (arpu.matched_by, arpu.right_label, arpu.difference, arpu.changed) == ("position", "NRR", None, True)  # units differ
    gm = figs["Gross margin"]
    assert (gm.matched_by, gm.left, gm.right, gm.changed) == ("right only", None, 80.0, True)
    assert first.changed and cmp.changed_figures == 3 + 1  # logos, ARPU/NRR, gross margin; + ARR
    assert second.left is None and second.right.answer.content == "ARR."
    assert [(f.matched_by, f.right) for f in second.figures] == [("right only", 12000.0)]

    # A source and its fork: the common part is the fork point's path.
    cmp = threads_svc.compare(session=session, left_thread_id=t.id, right_thread_id=left.id)
    assert [m.id for m in cmp.common] == [a1.parent_id, a1.id] and cmp.left == [] and len(cmp.pairs) == 1
    assert cmp.pairs[0].left is None and cmp.pairs[0].right.answer.id == la.id


def test_compare_two_branches_of_one_thread(session):
    ws, t = new_thread(session)
    a1 = turns.ask(session=session, thread_id=t.id, content="Churn?", model=figures_model("2.5%", [("Churn", 2.5, "%")]))
    r = runs.regenerate(session=session, thread_id=t.id, message_id=a1.id)
    b1 = worker.run_inline(r.id, model=figures_model("2.6%", [("Churn", 2.6, "%")]))
    cmp = threads_svc.compare(session=session, left_thread_id=t.id, right_thread_id=t.id, left_head=a1.id, right_head=b1.id)
    assert [m.id for m in cmp.common] == [a1.parent_id]
    (pair,) = cmp.pairs
    # The question they share is each side's question; the answers differ.
    assert pair.left.question.id == pair.right.question.id == a1.parent_id
    assert (pair.left.answer.id, pair.right.answer.id) == (a1.id, b1.id)
    (churn,) = pair.figures
    assert churn.difference == pytest.approx(0.1) and churn.relative == pytest.approx(0.04) and churn.changed
    # Same head on both sides: nothing after the common path.
    same = threads_svc.compare(session=session, left_thread_id=t.id, right_thread_id=t.id)
    assert same.pairs == [] and [m.id for m in same.common] == [a1.parent_id, b1.id]
    other_ws, other = new_thread(session, "Other")
    with pytest.raises(InvalidInput):
        threads_svc.compare(session=session, left_thread_id=t.id, right_thread_id=other.id)
    x = ask(session, other.id, "X")
    with pytest.raises(NotFound):  # a head must belong to its thread
        threads_svc.compare(session=session, left_thread_id=t.id, right_thread_id=t.id, right_head=x.id)


def test_compare_figures_tolerances():
    diff = threads_svc.compare_figures
    assert not diff([{"label": "a", "value": 10.0, "unit": "%"}], [{"label": "A", "value": 10.05, "unit": "%"}])[0].changed
    assert diff([{"label": "a", "value": 10.0, "unit": "%"}], [{"label": "A", "value": 10.06, "unit": "%"}])[0].changed
    assert not diff([{"label": "a", "value": 1.0, "unit": "USD"}], [{"label": "a", "value": 1.005, "unit": "usd"}])[0].changed
    assert diff([{"label": "a", "value": 1.0, "unit": "USD"}], [{"label": "a", "value": 1.006, "unit": "USD"}])[0].changed
    assert diff([{"label": "a", "value": 1.0, "unit": "USD"}], [{"label": "a", "value": 1.0, "unit": "EUR"}])[0].changed
    zero = diff([{"label": "a", "value": 0, "unit": "USD"}], [{"label": "a", "value": 5, "unit": "USD"}])[0]
    assert (zero.difference, zero.relative, zero.changed) == (5, None, True)
    assert diff([], []) == []


def test_delete_a_branch_keeps_a_forks_inherited_path(session):
    """A fork that edited its first question has moved its head off the path it was forked with;
    that path is still its branch (‹1/2›), so deleting it in the source keeps it."""
    ws, t = new_thread(session)
    a1 = ask(session, t.id, "Q1", "one")
    a2 = ask(session, t.id, "Q2", "two")
    fork = threads_svc.fork_thread(session=session, thread_id=t.id, message_id=a2.id)
    run(runs.edit_question(session=session, thread_id=fork.id, message_id=a1.parent_id, content="Q1 in fork"), "fork one")
    gone = threads_svc.delete_branch(session=session, thread_id=t.id, message_id=a2.parent_id)
    assert gone.kept_ids == sorted([a2.parent_id, a2.id]) and gone.deleted_ids == []
    assert gone.thread.head_message_id == a1.id
    threads_svc.switch_branch(session=session, thread_id=fork.id, message_id=a1.parent_id)
    assert path(session, fork.id) == ["Q1", "one", "Q2", "two"]


def test_path_siblings_match_siblings(session):
    ws, t = new_thread(session)
    a1 = ask(session, t.id, "Q1")
    run(runs.edit_question(session=session, thread_id=t.id, message_id=a1.parent_id, content="Q1 b"), "one b")
    b2 = ask(session, t.id, "Q2")
    run(runs.regenerate(session=session, thread_id=t.id, message_id=b2.id), "two b")
    fork = threads_svc.fork_thread(session=session, thread_id=t.id, message_id=b2.parent_id)
    run(runs.edit_question(session=session, thread_id=fork.id, message_id=b2.parent_id, content="Q2 in fork"), "fork two")
    for thread_id, counts in ((t.id, [2, 1, 1, 2]), (fork.id, [1, 1, 2, 1])):  # the source's first Q1 is not the fork's
        ids = [m.id for m in threads_svc.conversation(session=session, thread_id=thread_id)]
        with QueryCounter(session) as qc:
            got = threads_svc.path_siblings(session=session, thread_id=thread_id)
        assert qc.n <= 4
        assert got == threads_svc.siblings(session=session, thread_id=thread_id, message_ids=ids)
        assert [got[i].count for i in ids] == counts
    assert threads_svc.path_siblings(session=session, thread_id=t.id, head_id=a1.id)[a1.parent_id].index == 0
    empty = threads_svc.create_thread(session=session, workspace_id=ws.id)
    assert threads_svc.path_siblings(session=session, thread_id=empty.id) == {}
