"""Runs: agent turns as jobs in the store, so they outlive the page that asked and the process
that ran them.

Life of a run (one row of `Run`):
1. The page *enqueues* it (`enqueue_question`, `enqueue_answer`): one short transaction, nothing
   else. A question asked while another runs in the thread waits behind it, in order.
2. A worker (services/worker.py: a thread in every app process, or a `cfo-desk worker` process)
   *claims* it: inserting the thread's `ThreadLease` row (primary key = thread, so a second insert
   fails) and moving the run from queued to running (compare-and-set on its status) commit
   together. That is "one run per thread" across processes and replicas, on SQLite and PostgreSQL.
3. `begin_run` adds the question under the thread's head (a queued question only becomes a
   message when its turn comes, so queued questions keep their order) and plans the turn.
4. While it runs, the worker saves each tool step to `Run.progress` and pushes the lease's
   `expires_at` forward (heartbeat); the page polls the row to show progress and Stop.
5. `finish_run` commits the reply, its artifacts, the head move, the run's final status and the
   lease's release in one transaction, only while the worker still owns the run.
6. A lease that expired (its process died: kill -9, OOM, restart) is swept by any worker
   (`recover_expired`): lease deleted (compare-and-set), run marked interrupted, an "interrupted"
   reply added under the question (so Retry is offered), the run's files removed.

Every function takes a session and commits what it changes (the worker's functions are called
with a session of their own). Times are UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from cfo_desk.agent.runner import TurnOutcome
from cfo_desk.config import get_settings
from cfo_desk.services import turns
from cfo_desk.services.errors import Conflict, NotFound
from cfo_desk.services.threads import DEFAULT_TITLE, create_thread_row, get_thread, is_on_path, touch_thread
from cfo_desk.storage.files import remove_tree, workspace_dir
from cfo_desk.storage.models import Message, MessageStatus, Role, Run, RunStatus, Thread, ThreadLease, Workspace, utcnow

__all__ = [
    "Run",
    "RunStatus",
    "begin_run",
    "claim_runs",
    "edit_question",
    "enqueue_answer",
    "enqueue_question",
    "finish_run",
    "get_run",
    "heartbeat",
    "open_runs",
    "open_runs_with_questions",
    "question_ids",
    "recover_expired",
    "regenerate",
    "request_stop",
    "runs_by_reply",
    "save_progress",
]

STOPPED = "Stopped by the analyst after {seconds:.1f} s. The question is kept; Retry runs it again."
OPEN = (RunStatus.queued, RunStatus.running)
_FINAL_RUN_STATUS = {
    MessageStatus.ok: RunStatus.done,
    MessageStatus.clarification: RunStatus.done,
    MessageStatus.failed: RunStatus.failed,
    MessageStatus.stopped: RunStatus.stopped,
    MessageStatus.interrupted: RunStatus.interrupted,
}


# ---------------------------------------------------------------------------------------------
# The page's side: enqueue, follow, stop.


def enqueue_question(*, session: Session, workspace_id: int, thread_id: int | None, content: str) -> Run:
    """Queue a new question in a thread (a new thread when `thread_id` is None); returns the run.

    Checks come before any write, so a refused question leaves nothing behind (no empty thread).
    The question waits behind a run already open in the thread and becomes a message when its
    turn comes. Raises InvalidInput (blank, longer than turns.MAX_PROMPT_CHARS), NotFound
    (workspace or thread gone, or the thread belongs to another workspace), Conflict (the head
    is a question without an answer and nothing runs to answer it, or the thread's queue is full).
    """
    content = turns.check_question(content)
    if session.get(Workspace, workspace_id) is None:
        raise NotFound("That workspace no longer exists.")
    if thread_id is None:
        thread = create_thread_row(session=session, workspace_id=workspace_id, title=turns.title_from(content))
    else:
        thread = get_thread(session=session, thread_id=thread_id)
        if thread.workspace_id != workspace_id:
            raise NotFound("That thread belongs to another workspace.")
        waiting = open_runs(session=session, thread_id=thread.id)
        if not waiting and turns.head_is_open_question(session=session, thread=thread):
            raise Conflict(turns.OPEN_QUESTION)
        limit = get_settings().cfo_desk_queued_per_thread
        if len(waiting) > limit:
            raise Conflict(
                f"{len(waiting) - 1} question(s) already wait in this thread behind the running one "
                f"(at most {limit}). Wait for an answer, or stop a run."
            )
        if thread.title == DEFAULT_TITLE and thread.head_message_id is None and not waiting:
            thread.title = turns.title_from(content)
            session.add(thread)
    run = Run(workspace_id=workspace_id, thread_id=thread.id, prompt=content)
    session.add(run)
    session.commit()
    session.refresh(run)
    return run


def enqueue_answer(*, session: Session, thread_id: int, user_message_id: int) -> Run:
    """Queue a run that answers a question already in the thread (Retry, or a question forked
    open). Raises NotFound when the question is not on the thread's path, Conflict while another
    run in the thread is open."""
    thread = get_thread(session=session, thread_id=thread_id)
    msg = session.get(Message, user_message_id)
    on_path = is_on_path(session=session, head_id=thread.head_message_id, message_id=user_message_id)
    if msg is None or msg.role != Role.user or not on_path:
        raise NotFound("That question is not part of this thread (any more).")
    if open_runs(session=session, thread_id=thread_id):
        raise Conflict("A run is already going in this thread; wait for it or stop it first.")
    head = session.get(Message, thread.head_message_id)
    if head.parent_id == user_message_id and MessageStatus(head.status).answered:
        raise Conflict("This question already has an answer (shown at the end of the thread).")
    run = Run(workspace_id=thread.workspace_id, thread_id=thread_id, user_message_id=user_message_id)
    session.add(run)
    session.commit()
    session.refresh(run)
    return run


def edit_question(*, session: Session, thread_id: int, message_id: int, content: str) -> Run:
    """Edit a past question and resend it: a new question with the same parent, written in this
    thread (a sibling of `message_id`: a new branch), becomes the head, and a queued run answers
    it (the background worker, or `worker.run_inline`, executes it). The old branch keeps its
    answers, artifacts and history (‹n/m› switches back). One transaction.

    Raises InvalidInput (blank or too long, as `turns.check_question`), NotFound (`message_id` is
    not a question on the thread's path), Conflict while a run of the thread is queued or running."""
    content = turns.check_question(content)
    thread = get_thread(session=session, thread_id=thread_id)
    old = session.get(Message, message_id)
    if old is None or old.role != Role.user or not is_on_path(session=session, head_id=thread.head_message_id, message_id=message_id):
        raise NotFound("That question is not part of this thread (any more).")
    if open_runs(session=session, thread_id=thread_id):
        raise Conflict("A run is already going in this thread; wait for it or stop it first.")
    msg = Message(workspace_id=thread.workspace_id, parent_id=old.parent_id, thread_id=thread.id, role=Role.user, content=content)
    session.add(msg)
    session.flush()
    touch_thread(session=session, thread=thread, head_message_id=msg.id)
    run = Run(workspace_id=thread.workspace_id, thread_id=thread.id, user_message_id=msg.id)
    session.add(run)
    session.commit()
    session.refresh(run)
    return run


def regenerate(*, session: Session, thread_id: int, message_id: int) -> Run:
    """Answer a question again: queue a run that answers the question of `message_id` (an answer on
    the thread's path). The head moves to `message_id` now (cutting the path below it, so a past
    answer can be regenerated too); when the run ends, its reply is a new sibling of that answer,
    written in this thread, and the head moves to it (`turns.record_reply`'s compare-and-set: the
    head is an answer to the same question). The old answer and everything below it stay as a
    branch. Raises NotFound (not an answer on the path), Conflict while a run of the thread is
    queued or running."""
    thread = get_thread(session=session, thread_id=thread_id)
    old = session.get(Message, message_id)
    if (
        old is None
        or old.role != Role.assistant
        or old.parent_id is None
        or not is_on_path(session=session, head_id=thread.head_message_id, message_id=message_id)
    ):
        raise NotFound("That answer is not part of this thread (any more).")
    if open_runs(session=session, thread_id=thread_id):
        raise Conflict("A run is already going in this thread; wait for it or stop it first.")
    if thread.head_message_id != old.id:
        touch_thread(session=session, thread=thread, head_message_id=old.id)
    run = Run(workspace_id=thread.workspace_id, thread_id=thread.id, user_message_id=old.parent_id)
    session.add(run)
    session.commit()
    session.refresh(run)
    return run


def get_run(*, session: Session, run_id: int) -> Run:
    """The run with this id, read fresh from the store; raises NotFound (e.g. its thread was deleted)."""
    run = session.get(Run, run_id, populate_existing=True)
    if run is None:
        raise NotFound("That run no longer exists.")
    return run


def open_runs(*, session: Session, thread_id: int) -> list[Run]:
    """The thread's queued and running runs, oldest first (the running one, if any, comes first)."""
    stmt = select(Run).where(Run.thread_id == thread_id, Run.status.in_(OPEN)).order_by(Run.id)
    return list(session.exec(stmt.execution_options(populate_existing=True)))


def question_ids(*, session: Session, run_ids: list[int]) -> set[int]:
    """The question (user message) ids of these runs, read now: a run that was queued when it was
    first read may have started since and committed its question."""
    if not run_ids:
        return set()
    stmt = select(Run.user_message_id).where(Run.id.in_(run_ids), Run.user_message_id.is_not(None))
    return set(session.exec(stmt))


def open_runs_with_questions(*, session: Session, thread_id: int) -> list[tuple[Run, str]]:
    """The thread's open runs (oldest first), each with its question's text: the message's for a
    run that started or answers an existing question, else the queued prompt."""
    current = open_runs(session=session, thread_id=thread_id)
    ids = [r.user_message_id for r in current if r.user_message_id is not None]
    texts = {m.id: m.content for m in session.exec(select(Message).where(Message.id.in_(ids)))} if ids else {}
    return [(r, texts.get(r.user_message_id, r.prompt or "") if r.user_message_id else (r.prompt or "")) for r in current]


def runs_by_reply(*, session: Session, message_ids: list[int]) -> dict[int, Run]:
    """The run that produced each of these assistant messages, by message id (one query)."""
    if not message_ids:
        return {}
    rows = session.exec(select(Run).where(Run.reply_message_id.in_(message_ids)))
    return {r.reply_message_id: r for r in rows}


def request_stop(*, session: Session, run_id: int) -> Run:
    """Stop a run. A queued run is withdrawn at once (status stopped; its question never became a
    message, and `Run.prompt` still holds it); a running one is flagged, and its worker cancels
    it within about one poll interval, recording a "stopped" reply that keeps its progress.
    Stopping a finished run changes nothing. Raises NotFound."""
    now = utcnow()
    withdrawn = session.execute(
        update(Run).where(Run.id == run_id, Run.status == RunStatus.queued).values(status=RunStatus.stopped, finished_at=now)
    )
    if withdrawn.rowcount == 0:
        session.execute(update(Run).where(Run.id == run_id, Run.status == RunStatus.running).values(stop_requested=True))
    session.commit()
    return get_run(session=session, run_id=run_id)


# ---------------------------------------------------------------------------------------------
# The worker's side: claim, begin, progress, heartbeat, finish, recover.


def claim_runs(*, session: Session, owner: str, limit: int, lease_s: float, run_ids: list[int] | None = None) -> list[int]:
    """Claim up to `limit` runs for `owner`: per thread the oldest queued run, when no lease is
    held on that thread (`run_ids` narrows the choice). Each claim is one transaction (lease
    insert + status compare-and-set); a run or thread another worker won in the meantime is
    skipped. Returns the claimed run ids, oldest first."""
    if limit <= 0:
        return []
    first_per_thread = select(func.min(Run.id)).where(Run.status == RunStatus.queued).group_by(Run.thread_id)
    leased = exists().where(ThreadLease.thread_id == Run.thread_id)
    stmt = select(Run.id, Run.thread_id).where(Run.id.in_(first_per_thread), ~leased)
    if run_ids is not None:
        stmt = stmt.where(Run.id.in_(run_ids))
    candidates = session.exec(stmt.order_by(Run.id).limit(limit)).all()
    session.rollback()  # end the read; each claim below is its own write transaction
    claimed: list[int] = []
    for run_id, thread_id in candidates:
        now = utcnow()
        try:
            session.add(ThreadLease(thread_id=thread_id, run_id=run_id, owner=owner, expires_at=now + timedelta(seconds=lease_s), heartbeat_at=now))
            session.flush()  # the INSERT: fails when another worker holds this thread
            moved = session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == RunStatus.queued)
                .values(status=RunStatus.running, owner=owner, started_at=now)
            )
            if moved.rowcount != 1:  # stopped or claimed meanwhile
                session.rollback()
                continue
            session.commit()
            claimed.append(run_id)
        except IntegrityError:
            session.rollback()
    return claimed


@dataclass
class Started:
    """A claimed run, ready for the model: its row's key facts and the turn's plan (None when the
    run could not start; it was then recorded as failed)."""

    run_id: int
    thread_id: int
    plan: turns.TurnPlan | None


def begin_run(*, session: Session, run_id: int, owner: str) -> Started:
    """Start a claimed run: add its question under the thread's head (when it asks a new one),
    then plan the turn. When the question is no longer on the thread (e.g. a branch was deleted),
    the run is finished as failed and `plan` is None."""
    run = get_run(session=session, run_id=run_id)
    thread_id = run.thread_id
    try:
        if run.user_message_id is None:
            thread = get_thread(session=session, thread_id=thread_id)
            msg = turns.append_user_message(session=session, thread=thread, content=run.prompt or "")
            run.user_message_id = msg.id
            session.add(run)
            session.commit()
        plan = turns.plan_turn(session=session, thread_id=thread_id, user_message_id=run.user_message_id)
    except NotFound as exc:
        session.rollback()
        _close(session, run_id, thread_id, owner, RunStatus.failed, str(exc))
        return Started(run_id, thread_id, None)
    session.execute(update(Run).where(Run.id == run_id).values(run_dir=plan.run_rel))
    session.commit()
    return Started(run_id, thread_id, plan)


def save_progress(*, session: Session, run_id: int, owner: str, progress: list[dict]) -> None:
    """Replace the run's progress list (only while `owner` runs it)."""
    session.execute(
        update(Run).where(Run.id == run_id, Run.owner == owner, Run.status == RunStatus.running).values(progress=progress)
    )
    session.commit()


def heartbeat(*, session: Session, owner: str, run_ids: list[int], lease_s: float, renew: bool = True) -> tuple[set[int], set[int]]:
    """Extend `owner`'s leases on these runs (when `renew`) and report on them.

    Returns (lost, stop): the runs whose lease `owner` no longer holds (swept as expired, or the
    thread deleted) and the runs the analyst asked to stop."""
    if not run_ids:
        return set(), set()
    now = utcnow()
    if renew:
        session.execute(
            update(ThreadLease)
            .where(ThreadLease.owner == owner, ThreadLease.run_id.in_(run_ids))
            .values(expires_at=now + timedelta(seconds=lease_s), heartbeat_at=now)
        )
        session.commit()
    held = set(session.exec(select(ThreadLease.run_id).where(ThreadLease.owner == owner, ThreadLease.run_id.in_(run_ids))).all())
    stop = set(session.exec(select(Run.id).where(Run.id.in_(run_ids), Run.stop_requested)).all())
    session.rollback()
    return set(run_ids) - held, stop


def finish_run(
    *,
    session: Session,
    started: Started,
    owner: str,
    outcome: TurnOutcome,
    progress: list[dict],
    status: MessageStatus | None = None,
) -> Message | None:
    """Commit a run's end in one transaction: the lease's release, the reply (answer, failure, or
    `status` stopped / interrupted), its artifacts, the head move, and the run's final status and
    progress. Does nothing and returns None (removing the run's files) when `owner` no longer
    holds the thread's lease for this run (it was swept as expired, or the thread deleted).

    Lock order, as in `claim_runs` and `recover_expired`: the lease row first, then the run row
    (PostgreSQL would otherwise deadlock a finisher against a sweeper)."""
    plan = started.plan
    released = session.execute(
        delete(ThreadLease).where(ThreadLease.thread_id == plan.thread_id, ThreadLease.run_id == started.run_id, ThreadLease.owner == owner)
    )
    if released.rowcount != 1:
        session.rollback()
        remove_tree(plan.deps.run_dir)
        return None
    try:
        reply = turns.record_reply(
            session=session,
            thread_id=plan.thread_id,
            user_message_id=plan.user_message_id,
            outcome=outcome,
            run_rel=plan.run_rel,
            datasets=plan.datasets,
            status=status,
            glossary_version=plan.glossary_version,
        )
        session.execute(
            update(Run)
            .where(Run.id == started.run_id, Run.owner == owner)
            .values(
                status=_FINAL_RUN_STATUS[MessageStatus(reply.status)],
                finished_at=utcnow(),
                error=outcome.error,
                progress=progress,
                reply_message_id=reply.id,
            )
        )
        session.commit()
    except BaseException:
        session.rollback()
        remove_tree(plan.deps.run_dir)
        raise
    session.refresh(reply)
    return reply


def _close(session: Session, run_id: int, thread_id: int, owner: str, status: RunStatus, error: str) -> None:
    """End a run that produced no reply (it could not start) and release its lease (lease first)."""
    session.execute(delete(ThreadLease).where(ThreadLease.thread_id == thread_id, ThreadLease.run_id == run_id, ThreadLease.owner == owner))
    session.execute(update(Run).where(Run.id == run_id, Run.owner == owner).values(status=status, finished_at=utcnow(), error=error))
    session.commit()


def recover_expired(*, session: Session, now: datetime | None = None) -> list[int]:
    """Mark interrupted the runs whose lease expired (their worker died), keeping the question.

    Per expired lease, one transaction: delete the lease (compare-and-set on its expiry, so one
    sweeper wins), set the run interrupted, add an "interrupted" reply under its question (Retry
    is then offered) and move the head to it if the head is still that question. The run's
    result files are removed after the commit. A run that died between its claim and its start
    (its question not yet a message) gets its question added first, so it is never lost. Lock
    order: lease, then run (as `finish_run`). Returns the ids of the runs recovered."""
    now = now or utcnow()
    expired = session.exec(select(ThreadLease.thread_id, ThreadLease.run_id).where(ThreadLease.expires_at < now)).all()
    session.rollback()
    recovered: list[int] = []
    for thread_id, run_id in expired:
        gone = session.execute(
            delete(ThreadLease).where(ThreadLease.thread_id == thread_id, ThreadLease.run_id == run_id, ThreadLease.expires_at < now)
        )
        if gone.rowcount != 1:
            session.rollback()
            continue
        run = session.get(Run, run_id, populate_existing=True)
        run_dir = None
        if run is not None and run.status == RunStatus.running:
            reply_id = None
            question_id = run.user_message_id
            if question_id is None and run.prompt:  # claimed, but died before its question was added
                thread = session.get(Thread, thread_id, populate_existing=True)
                question_id = turns.append_user_message(session=session, thread=thread, content=run.prompt).id
            if question_id is not None and session.get(Message, question_id) is not None:
                elapsed = (now - run.started_at).total_seconds() if run.started_at else 0.0
                reply_id = turns.record_reply(
                    session=session,
                    thread_id=thread_id,
                    user_message_id=question_id,
                    outcome=TurnOutcome(None, None, [], turns.INTERRUPTED, elapsed),
                    run_rel=None,
                    datasets={},
                    status=MessageStatus.interrupted,
                ).id
            session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == RunStatus.running)
                .values(
                    status=RunStatus.interrupted,
                    finished_at=now,
                    error=turns.INTERRUPTED,
                    user_message_id=question_id,
                    reply_message_id=reply_id,
                )
            )
            if run.run_dir:
                ws = session.get(Workspace, run.workspace_id)
                run_dir = workspace_dir(ws.key) / run.run_dir if ws else None
        session.commit()
        if run_dir is not None:
            remove_tree(run_dir)
        recovered.append(run_id)
    return recovered


def stopped_outcome(seconds: float) -> TurnOutcome:
    """The outcome recorded for a run the analyst stopped after `seconds`."""
    return TurnOutcome(None, None, [], STOPPED.format(seconds=seconds), seconds)


def abandon_leases(*, session: Session, owner: str) -> int:
    """Expire every lease `owner` holds (a worker that is shutting down), so the next sweep
    recovers its runs at once instead of after `CFO_DESK_RUN_LEASE_S`. Returns how many."""
    expired = session.execute(update(ThreadLease).where(ThreadLease.owner == owner).values(expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    return expired.rowcount


def thread_ids_with_open_runs(*, session: Session, thread_ids: list[int]) -> set[int]:
    """Which of these threads have a queued or running run (for the sidebar's markers)."""
    if not thread_ids:
        return set()
    return set(session.exec(select(Run.thread_id).where(Run.thread_id.in_(thread_ids), Run.status.in_(OPEN)).distinct()).all())
