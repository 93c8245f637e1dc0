"""Turns: a user message and the agent's run, stored so any path replays to the model exactly.

Transactions. The user message is committed (and becomes the thread's head) before the run
starts. When the run ends, the assistant message, its artifacts and the new head are committed
together. A failed run commits an assistant message with status "failed" and its error, and its
result files are removed; `answer` can then be called again on the same user message (Retry), which
adds a new answer beside the failed one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter
from pydantic_ai.models import Model
from pydantic_ai.usage import UsageLimits
from sqlmodel import Session, func, select

from cfo_desk.agent.deps import AgentDeps, DatasetRef, SqlLimits
from cfo_desk.agent.outputs import Clarification, FinalAnswer
from cfo_desk.agent.core import model_problem, resolve_model
from cfo_desk.agent.runner import Progress, TurnOutcome, run_agent
from cfo_desk.config import get_settings
from cfo_desk.services.errors import Conflict, InvalidInput, NotFound
from cfo_desk.services.threads import DEFAULT_TITLE, get_thread, messages_on_path, path_ids, touch_thread
from cfo_desk.storage.files import duckdb_path, remove_tree, workspace_dir
from cfo_desk.storage.models import Artifact, Dataset, Message, MessageStatus, Role, Thread, Workspace

__all__ = ["Progress", "add_user_message", "answer", "ask", "asking_problem", "configured_model", "model_history"]

MAX_PROMPT_CHARS = 20_000
INTERRUPTED = "The run was interrupted before it finished (the page changed or the app stopped). Retry to run it again."
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
        if msg.role == Role.assistant and msg.status != MessageStatus.failed and msg.model_messages_json:
            history.extend(ModelMessagesTypeAdapter.validate_json(msg.model_messages_json))
    return history


def add_user_message(*, session: Session, thread_id: int, content: str) -> Message:
    """Commit the analyst's message as a child of the thread's head and make it the head.

    The first message of an untitled thread also names the thread. Raises InvalidInput when blank
    or longer than MAX_PROMPT_CHARS characters.
    """
    content = (content or "").strip()
    if not content:
        raise InvalidInput("Type a question first.")
    if len(content) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"Questions are at most {MAX_PROMPT_CHARS:,} characters.")
    thread = get_thread(session=session, thread_id=thread_id)
    if thread.head_message_id is not None:
        head = session.get(Message, thread.head_message_id)
        if head is not None and head.role == Role.user:
            raise Conflict(
                "The last question in this thread has no answer yet (it may still be running). "
                "Answer it first, or fork from an earlier message to ask something else."
            )
    msg = Message(workspace_id=thread.workspace_id, parent_id=thread.head_message_id, role=Role.user, content=content)
    session.add(msg)
    session.flush()
    if thread.head_message_id is None and thread.title == DEFAULT_TITLE:
        one_line = " ".join(content.split())
        thread.title = one_line if len(one_line) <= TITLE_FROM_PROMPT_CHARS else one_line[: TITLE_FROM_PROMPT_CHARS - 1] + "…"
    touch_thread(session=session, thread=thread, head_message_id=msg.id)
    session.commit()
    session.refresh(msg)
    return msg


def _dataset_refs(session: Session, workspace_id: int) -> list[DatasetRef]:
    rows = session.exec(select(Dataset).where(Dataset.workspace_id == workspace_id).order_by(Dataset.table_name))
    refs = []
    for d in rows:
        source = d.source_filename + (f" [{d.sheet_name}]" if d.sheet_name else "")
        cols = [(c["name"], c["type"]) for c in json.loads(d.columns_json)]
        refs.append(DatasetRef(d.id, d.table_name, source, d.sha256, d.row_count, cols))
    return refs


def _content_of(output: FinalAnswer | Clarification) -> tuple[str, str]:
    if isinstance(output, Clarification):
        options = "".join(f"\n- {o}" for o in output.options)
        return output.question + options, MessageStatus.clarification
    return output.answer_markdown, MessageStatus.ok


def answer(
    *,
    session: Session,
    thread_id: int,
    user_message_id: int,
    model: Model | str,
    on_progress: Callable[[Progress], None] | None = None,
) -> Message:
    """Run the agent on a committed user message and commit its answer (or its failure).

    The history sent to the model is the path up to the user message's parent. Returns the
    assistant message (status ok, clarification or failed). It becomes the thread's head unless
    the thread moved on during the run (then it stays a branch of the tree). Raises NotFound when
    the user message is not on the thread. A run interrupted by a BaseException (Streamlit's
    rerun/stop) is committed as failed, its files removed, and the exception re-raised.
    """
    settings = get_settings()
    thread = get_thread(session=session, thread_id=thread_id)
    user_msg = session.get(Message, user_message_id)
    on_thread = thread.head_message_id is not None and user_message_id in path_ids(session=session, message_id=thread.head_message_id)
    if user_msg is None or user_msg.role != Role.user or not on_thread:
        raise NotFound("That question is not part of this thread (any more).")
    ws = session.get(Workspace, thread.workspace_id)
    path = messages_on_path(session=session, message_id=user_msg.id)
    history = _history_of(path[:-1])
    results_so_far = session.exec(select(func.count()).select_from(Artifact).where(Artifact.message_id.in_([m.id for m in path]))).one()
    run_rel = f"artifacts/run-{uuid.uuid4().hex[:16]}"
    run_dir = workspace_dir(ws.key) / run_rel
    datasets = _dataset_refs(session, ws.id)
    session.commit()  # hold no transaction open while the model works

    deps = AgentDeps(
        workspace_name=ws.name,
        db_path=duckdb_path(ws.key),
        run_dir=run_dir,
        datasets=datasets,
        first_handle=results_so_far + 1,
        limits=SqlLimits(settings.cfo_desk_sql_timeout, settings.cfo_desk_sql_rows_to_model, settings.cfo_desk_sql_result_row_limit),
    )
    limits = UsageLimits(
        request_limit=settings.cfo_desk_request_limit,
        tool_calls_limit=settings.cfo_desk_tool_calls_limit,
        total_tokens_limit=settings.cfo_desk_total_tokens_limit,
    )
    try:
        outcome = run_agent(prompt=user_msg.content, deps=deps, history=history, model=model, usage_limits=limits, on_progress=on_progress)
    except BaseException:  # the page was left or rerun mid-run (Streamlit raises from on_progress)
        interrupted = TurnOutcome(None, None, [], INTERRUPTED, 0.0)
        try:
            _commit_outcome(session, thread, user_msg, interrupted, run_rel, {})
        finally:
            remove_tree(run_dir)
        raise
    try:
        return _commit_outcome(session, thread, user_msg, outcome, run_rel, {d.table_name: d for d in datasets})
    except BaseException:
        session.rollback()
        remove_tree(run_dir)
        raise


def _commit_outcome(
    session: Session, thread: Thread, user_msg: Message, outcome: TurnOutcome, run_rel: str, datasets: dict[str, DatasetRef]
) -> Message:
    thread = session.get(Thread, thread.id)
    if thread is not None:
        session.refresh(thread)  # re-read: another session may have moved its head meanwhile
    reply = Message(
        workspace_id=user_msg.workspace_id,
        parent_id=user_msg.id,
        role=Role.assistant,
        duration_s=round(outcome.duration_s, 3),
        model_name=outcome.model_name,
        input_tokens=outcome.input_tokens,
        output_tokens=outcome.output_tokens,
        content="",
    )
    if outcome.error is not None or outcome.output is None:
        reply.status = MessageStatus.failed
        reply.error = outcome.error or "The run ended without an answer."
        reply.content = reply.error
        ws = session.get(Workspace, user_msg.workspace_id)
        remove_tree(workspace_dir(ws.key) / run_rel)
    else:
        reply.content, reply.status = _content_of(outcome.output)
        reply.output_json = outcome.output.model_dump_json()
        reply.model_messages_json = outcome.new_messages_json.decode()
    session.add(reply)
    session.flush()
    if reply.status != MessageStatus.failed:
        for rec in outcome.results:
            read = [  # the hash stamped on the table the query read, not the one known at turn start
                {"table": t, "dataset_id": d.dataset_id, "sha256": rec.run.table_sha256.get(t, d.sha256), "source": d.source}
                for t in rec.run.tables
                if (d := datasets.get(t)) is not None
            ]
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
                    columns_json=json.dumps(rec.run.columns),
                    datasets_json=json.dumps(read),
                    duration_s=round(rec.run.duration_s, 4),
                )
            )
    # Move the head only if it is still this question (compare-and-set): a turn that finishes after
    # the thread moved on stays in the tree as a branch instead of cutting the newer turns off.
    head = session.get(Message, thread.head_message_id) if thread is not None and thread.head_message_id else None
    if head is not None and user_msg.id in (head.id, head.parent_id):  # the question, or an answer to it (Retry)
        touch_thread(session=session, thread=thread, head_message_id=reply.id)
    session.commit()
    session.refresh(reply)
    return reply


def ask(
    *,
    session: Session,
    thread_id: int,
    content: str,
    model: Model | str,
    on_progress: Callable[[Progress], None] | None = None,
) -> Message:
    """A whole turn: commit the question, run the agent, commit the answer; returns the answer."""
    user_msg = add_user_message(session=session, thread_id=thread_id, content=content)
    return answer(session=session, thread_id=thread_id, user_message_id=user_msg.id, model=model, on_progress=on_progress)

