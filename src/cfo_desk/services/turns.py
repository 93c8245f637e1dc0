"""Turns: a user message and the agent's run, stored so any path replays to the model exactly.

A turn is executed as a run (services/runs.py: queue, lease, progress; services/worker.py: the
process's background worker). This module holds what a turn reads and writes: `plan_turn` reads
the question, its path's history and the agent's deps; `record_reply` adds the answer, its
artifacts and the head move in the run's final transaction. The user message is committed (and
becomes the thread's head) before the model starts. A run that ends without an answer (failed,
stopped, interrupted) commits an assistant message saying so, and its result files are removed;
the same question can then be answered again (Retry), which adds a new answer beside the old one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter
from pydantic_ai.models import Model
from pydantic_ai.usage import UsageLimits
from sqlmodel import Session, select

from cfo_desk.agent.deps import AgentDeps, DatasetRef, ResultRef, SqlLimits, datasets_read
from cfo_desk.agent.outputs import Clarification, FinalAnswer
from cfo_desk.agent.core import model_problem, resolve_model
from cfo_desk.agent.runner import Progress, TurnOutcome
from cfo_desk.config import get_settings
from cfo_desk.services import glossary as glossary_svc
from cfo_desk.services.errors import Conflict, InvalidInput, NotFound
from cfo_desk.services.threads import DEFAULT_TITLE, get_thread, is_on_path, messages_on_path, path_ids, touch_thread
from cfo_desk.storage.files import duckdb_path, remove_tree, workspace_dir
from cfo_desk.storage.models import Artifact, Dataset, Message, MessageStatus, Role, Thread, Workspace

__all__ = ["Progress", "TurnPlan", "add_user_message", "answer", "ask", "asking_problem", "configured_model", "model_history", "plan_turn", "record_reply"]

MAX_PROMPT_CHARS = 20_000
INTERRUPTED = "The run was interrupted before it finished (the app stopped or its process died). Retry to run it again."
TITLE_FROM_PROMPT_CHARS = 60


def configured_model() -> Model | str | None:
    """The model the next turn runs on (CFO_DESK_MODEL, or a test/eval override)."""
    return resolve_model(get_settings().model)


def asking_problem() -> str | None:
    """One sentence on what to set before questions can be asked, or None when asking works."""
    return model_problem(get_settings().model)


def model_history(*, session: Session, message_id: int | None) -> list[ModelMessage]:
    """The pydantic-ai history of the path ending at `message_id` (root first).

    Concatenates the stored run histories of the answered turns on the path; failed answers and
    unanswered questions contribute nothing. Empty for None.
    """
    if message_id is None:
        return []
    return _history_of(messages_on_path(session=session, message_id=message_id))


def _history_of(path: list[Message]) -> list[ModelMessage]:
    history: list[ModelMessage] = []
    for msg in path:
        if msg.role == Role.assistant and MessageStatus(msg.status).answered and msg.model_messages:
            history.extend(ModelMessagesTypeAdapter.validate_python(msg.model_messages))
    return history


def add_user_message(*, session: Session, thread_id: int, content: str) -> Message:
    """Commit the analyst's message as a child of the thread's head and make it the head.

    The first message of an untitled thread also names the thread. Raises InvalidInput when blank
    or longer than MAX_PROMPT_CHARS characters.
    """
    content = check_question(content)
    thread = get_thread(session=session, thread_id=thread_id)
    if head_is_open_question(session=session, thread=thread):
        raise Conflict(OPEN_QUESTION)
    msg = append_user_message(session=session, thread=thread, content=content)
    session.commit()
    session.refresh(msg)
    return msg


OPEN_QUESTION = (
    "The last question in this thread has no answer yet. Answer it first, or fork from an earlier message to ask something else."
)


def check_question(content: str | None) -> str:
    """The question, stripped; raises InvalidInput when blank or longer than MAX_PROMPT_CHARS."""
    content = (content or "").strip()
    if not content:
        raise InvalidInput("Type a question first.")
    if len(content) > MAX_PROMPT_CHARS:
        raise InvalidInput(
            f"This question is {len(content):,} characters long; questions are at most {MAX_PROMPT_CHARS:,}. "
            "Shorten it (put long material in a file and upload it instead). Nothing was saved."
        )
    return content


def head_is_open_question(*, session: Session, thread: Thread) -> bool:
    """True when the thread's head is a question without an answer."""
    head = session.get(Message, thread.head_message_id) if thread.head_message_id is not None else None
    return head is not None and head.role == Role.user


def title_from(content: str) -> str:
    """A thread title from its first question: one line, at most TITLE_FROM_PROMPT_CHARS characters."""
    one_line = " ".join(content.split())
    return one_line if len(one_line) <= TITLE_FROM_PROMPT_CHARS else one_line[: TITLE_FROM_PROMPT_CHARS - 1] + "…"


def append_user_message(*, session: Session, thread: Thread, content: str) -> Message:
    """Add the question under the thread's head, written in this thread, and make it the head (no
    commit: the caller's transaction). The first message of an untitled thread also names the thread."""
    msg = Message(workspace_id=thread.workspace_id, parent_id=thread.head_message_id, thread_id=thread.id, role=Role.user, content=content)
    session.add(msg)
    session.flush()
    if thread.head_message_id is None and thread.title == DEFAULT_TITLE:
        thread.title = title_from(content)
    touch_thread(session=session, thread=thread, head_message_id=msg.id)
    return msg


def _dataset_refs(session: Session, workspace_id: int) -> list[DatasetRef]:
    rows = session.exec(select(Dataset).where(Dataset.workspace_id == workspace_id).order_by(Dataset.table_name))
    refs = []
    for d in rows:
        source = d.source_filename + (f" [{d.sheet_name}]" if d.sheet_name else "")
        cols = [(c["name"], c["type"]) for c in d.columns]
        refs.append(DatasetRef(d.id, d.table_name, source, d.sha256, d.row_count, cols, tuple(d.notes), dict(d.date_ranges or {})))
    return refs


def _content_of(output: FinalAnswer | Clarification) -> tuple[str, str]:
    if isinstance(output, Clarification):
        options = "".join(f"\n- {o}" for o in output.options)
        return output.question + options, MessageStatus.clarification
    return output.answer_markdown, MessageStatus.ok


@dataclass
class TurnPlan:
    """Everything one run needs, read from the store before the model starts (no transaction stays
    open while it works): the question, the history of the path above it, and the agent's deps.

    `run_rel` is the run's result folder relative to the workspace folder; `datasets` maps table
    names to the datasets the agent sees (for provenance when the answer is recorded);
    `glossary_version` is the workspace glossary version whose text the instructions carry (0:
    none), recorded on the reply."""

    thread_id: int
    workspace_id: int
    user_message_id: int
    prompt: str
    history: list[ModelMessage]
    deps: AgentDeps
    usage_limits: UsageLimits
    run_rel: str
    datasets: dict[str, DatasetRef]
    glossary_version: int = 0


def plan_turn(*, session: Session, thread_id: int, user_message_id: int) -> TurnPlan:
    """Read what a run of `user_message_id` needs. The history sent to the model is the path up to
    the question's parent. Raises NotFound when the question is not on the thread's path."""
    settings = get_settings()
    thread = get_thread(session=session, thread_id=thread_id)
    user_msg = session.get(Message, user_message_id)
    on_thread = is_on_path(session=session, head_id=thread.head_message_id, message_id=user_message_id)
    if user_msg is None or user_msg.role != Role.user or not on_thread:
        raise NotFound("That question is not part of this thread (any more).")
    ws = session.get(Workspace, thread.workspace_id)
    path = messages_on_path(session=session, message_id=user_msg.id)
    history = _history_of(path[:-1])
    earlier = session.exec(select(Artifact).where(Artifact.message_id.in_([m.id for m in path]))).all()
    results_so_far = sum(1 for a in earlier if a.kind == "query_result")
    run_rel = f"artifacts/run-{uuid.uuid4().hex[:16]}"
    datasets = _dataset_refs(session, ws.id)
    glossary = glossary_svc.current_glossary(session=session, workspace_id=ws.id)  # text and version from one read
    session.commit()  # hold no transaction open while the model works
    deps = AgentDeps(
        workspace_name=ws.name,
        db_path=duckdb_path(ws.key),
        run_dir=workspace_dir(ws.key) / run_rel,
        datasets=datasets,
        first_handle=results_so_far + 1,
        earlier_results={
            a.handle: ResultRef.from_artifact(a, workspace_dir(ws.key) / a.file_path)
            for a in earlier
            if a.kind == "query_result"
        },
        earlier_handles={p: sum(1 for a in earlier if a.kind == k) for p, k in (("c", "chart"), ("w", "workbook"))},
        glossary_text=glossary_svc.glossary_text(glossary),
        glossary_terms=frozenset(e.term_key for e in glossary.entries),
        limits=SqlLimits(settings.cfo_desk_sql_timeout, settings.cfo_desk_sql_rows_to_model, settings.cfo_desk_sql_result_row_limit),
    )
    limits = UsageLimits(
        request_limit=settings.cfo_desk_request_limit,
        tool_calls_limit=settings.cfo_desk_tool_calls_limit,
        total_tokens_limit=settings.cfo_desk_total_tokens_limit,
    )
    return TurnPlan(
        thread.id, ws.id, user_msg.id, user_msg.content, history, deps, limits, run_rel, {d.table_name: d for d in datasets}, glossary.version
    )


def answer(
    *,
    session: Session,
    thread_id: int,
    user_message_id: int,
    model: Model | str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> Message:
    """Answer a committed question now, on the calling thread, and return the reply (Retry, or a
    question forked open; the CLI and tests). Goes through the same run queue, lease and commit as
    the background worker, so it never races another run in the thread. Raises NotFound when the
    question is not on the thread, Conflict while another run in the thread is open."""
    from cfo_desk.services import runs, worker

    run = runs.enqueue_answer(session=session, thread_id=thread_id, user_message_id=user_message_id)
    return worker.run_inline(run.id, model=model, on_progress=on_progress)


def ask(
    *,
    session: Session,
    thread_id: int,
    content: str,
    model: Model | str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> Message:
    """A whole turn on the calling thread: queue the question, run it, return the committed answer.

    The question is committed (as the thread's head) before the model starts; the answer, its
    artifacts and the head move commit together. Raises InvalidInput/Conflict like
    `runs.enqueue_question`. `model` and `on_progress` apply when this call executes the run; if a
    background worker of this process claims it first, that worker's configured model runs it."""
    from cfo_desk.services import runs, worker

    thread = get_thread(session=session, thread_id=thread_id)
    run = runs.enqueue_question(session=session, workspace_id=thread.workspace_id, thread_id=thread_id, content=content)
    return worker.run_inline(run.id, model=model, on_progress=on_progress)


def _record_deliverables(session: Session, reply: Message, outcome: TurnOutcome, datasets: dict[str, DatasetRef]) -> None:
    """Artifact rows for the turn's charts and workbooks: provenance from the results they used."""
    if not outcome.deliverables:
        return
    ws = session.get(Workspace, reply.workspace_id)
    folder = workspace_dir(ws.key)
    this_turn = {r.handle: r for r in outcome.results}
    earlier = {a.handle: a for a in session.exec(select(Artifact).where(Artifact.workspace_id == ws.id, Artifact.kind == "query_result",
                                                                       Artifact.message_id.in_(path_ids(session=session, message_id=reply.id))))}
    for d in outcome.deliverables:
        read: dict[tuple, dict] = {}
        sqls = []
        for handle in d.results:
            if (rec := this_turn.get(handle)) is not None:
                items, sql = datasets_read(rec.run, datasets), rec.sql
            elif (art := earlier.get(handle)) is not None:
                items, sql = art.datasets_read, art.sql
            else:
                continue
            sqls.append(sql or "")
            for item in items:
                read[(item["table"], item["sha256"])] = item
        session.add(
            Artifact(
                workspace_id=reply.workspace_id,
                message_id=reply.id,
                kind=d.kind,
                handle=d.handle,
                title=d.title[:500],
                sql=sqls[0] if d.kind == "chart" and sqls else None,
                file_path=d.file.relative_to(folder).as_posix(),
                row_count=0,
                datasets_read=list(read.values()),
                spec=d.spec,
            )
        )


def record_reply(
    *,
    session: Session,
    thread_id: int,
    user_message_id: int,
    outcome: TurnOutcome,
    run_rel: str | None,
    datasets: dict[str, DatasetRef],
    status: MessageStatus | None = None,
    glossary_version: int | None = None,
) -> Message:
    """Add the assistant message for a finished run, its artifacts and the head move; the caller
    commits (one transaction with the run's own row).

    `status` overrides the reply's status for a turn that ended without an answer (stopped,
    interrupted); else it is ok/clarification from the output, or failed when `outcome.error`.
    `glossary_version` is the glossary version the run's instructions carried (TurnPlan).
    A reply without an answer keeps no files: `run_rel` is removed. The head moves only if it is
    still the question or an answer to it (compare-and-set): a turn that finishes after the thread
    moved on stays in the tree as a branch instead of cutting the newer turns off.
    """
    user_msg = session.get(Message, user_message_id)
    thread = session.get(Thread, thread_id)
    if thread is not None:
        session.refresh(thread)  # re-read: another session may have moved its head meanwhile
    reply = Message(
        workspace_id=user_msg.workspace_id,
        parent_id=user_msg.id,
        thread_id=thread_id,  # the run's thread: a branch of that thread only
        role=Role.assistant,
        duration_s=round(outcome.duration_s, 3),
        model_name=outcome.model_name,
        input_tokens=outcome.input_tokens,
        output_tokens=outcome.output_tokens,
        glossary_version=glossary_version,
        content="",
    )
    if status is not None or outcome.error is not None or outcome.output is None:
        reply.status = status or MessageStatus.failed
        reply.error = outcome.error or "The run ended without an answer."
        reply.content = reply.error
        if run_rel:
            ws = session.get(Workspace, user_msg.workspace_id)
            remove_tree(workspace_dir(ws.key) / run_rel)
    else:
        reply.content, reply.status = _content_of(outcome.output)
        reply.output = outcome.output.model_dump(mode="json")
        reply.model_messages = json.loads(outcome.new_messages_json)
    session.add(reply)
    session.flush()
    if reply.status.answered:
        for rec in outcome.results:
            read = datasets_read(rec.run, datasets)  # the hash stamped on the table the query read
            session.add(
                Artifact(
                    workspace_id=user_msg.workspace_id,
                    message_id=reply.id,
                    kind="query_result",
                    handle=rec.handle,
                    title=rec.purpose[:500],
                    sql=rec.sql,
                    file_path=f"{run_rel}/{rec.handle}.parquet",
                    row_count=rec.run.row_count,
                    truncated=rec.run.truncated,
                    columns=rec.run.columns,
                    datasets_read=read,
                    duration_s=round(rec.run.duration_s, 4),
                )
            )
        _record_deliverables(session, reply, outcome, datasets)
    head = session.get(Message, thread.head_message_id) if thread is not None and thread.head_message_id else None
    if head is not None and user_msg.id in (head.id, head.parent_id):  # the question, or an answer to it (Retry)
        touch_thread(session=session, thread=thread, head_message_id=reply.id)
    session.flush()
    return reply
