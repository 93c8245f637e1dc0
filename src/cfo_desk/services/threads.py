"""Threads and the message tree: create, list, rename, delete, fork, and read a conversation.

A thread's conversation is the path from the root message to the thread's head, read with one
recursive query (portable SQL: SQLite and PostgreSQL). Forking makes a new thread whose head is an
existing message; it copies no message, data or artifact, so its cost is one row.
"""

from __future__ import annotations

from sqlalchemy import delete, literal, select as sa_select
from sqlmodel import Session, select

from cfo_desk.services.errors import InvalidInput, NotFound
from cfo_desk.storage.files import remove_tree, workspace_dir
from cfo_desk.storage.models import Artifact, Message, MessageStatus, Role, Thread, Workspace, utcnow

__all__ = ["Message", "MessageStatus", "Role", "Thread", "utcnow"]  # re-exported for the UI

MAX_TITLE_LENGTH = 200
DEFAULT_TITLE = "New thread"


def _title(title: str | None) -> str:
    title = " ".join((title or "").split()) or DEFAULT_TITLE
    return title if len(title) <= MAX_TITLE_LENGTH else title[: MAX_TITLE_LENGTH - 1] + "…"


def create_thread(*, session: Session, workspace_id: int, title: str | None = None) -> Thread:
    """A new, empty thread in the workspace (title defaults to "New thread"). Raises NotFound."""
    if session.get(Workspace, workspace_id) is None:
        raise NotFound("That workspace no longer exists.")
    thread = create_thread_row(session=session, workspace_id=workspace_id, title=title)
    session.commit()
    session.refresh(thread)
    return thread


def create_thread_row(*, session: Session, workspace_id: int, title: str | None = None) -> Thread:
    """Add a new thread to the caller's transaction (flushed for its id, not committed)."""
    thread = Thread(workspace_id=workspace_id, title=_title(title))
    session.add(thread)
    session.flush()
    return thread


def list_threads(*, session: Session, workspace_id: int) -> list[Thread]:
    """The workspace's threads, most recently active first."""
    stmt = select(Thread).where(Thread.workspace_id == workspace_id).order_by(Thread.updated_at.desc(), Thread.id.desc())
    return list(session.exec(stmt))


def get_thread(*, session: Session, thread_id: int) -> Thread:
    """The thread with this id, read fresh (runs move heads from other sessions); raises NotFound."""
    thread = session.get(Thread, thread_id, populate_existing=True)
    if thread is None:
        raise NotFound("That thread no longer exists.")
    return thread


def rename_thread(*, session: Session, thread_id: int, title: str) -> Thread:
    """Rename a thread; raises InvalidInput for a blank title."""
    if not " ".join((title or "").split()):
        raise InvalidInput("A thread needs a title.")
    thread = get_thread(session=session, thread_id=thread_id)
    thread.title = _title(title)
    session.add(thread)
    session.commit()
    session.refresh(thread)
    return thread


def get_message(*, session: Session, message_id: int) -> Message:
    """The message with this id; raises NotFound."""
    msg = session.get(Message, message_id)
    if msg is None:
        raise NotFound("That message no longer exists.")
    return msg


def path_ids(*, session: Session, message_id: int) -> list[int]:
    """Ids of the messages from the root to `message_id` inclusive, root first (one recursive query)."""
    base = sa_select(Message.id, Message.parent_id, literal(0).label("depth")).where(Message.id == message_id)
    path = base.cte("path", recursive=True)
    step = sa_select(Message.id, Message.parent_id, (path.c.depth + 1).label("depth")).join(path, Message.id == path.c.parent_id)
    path = path.union_all(step)
    rows = session.execute(sa_select(path.c.id).order_by(path.c.depth.desc())).all()
    return [r[0] for r in rows]


def conversation(*, session: Session, thread_id: int) -> list[Message]:
    """The thread's messages from root to head, in order; empty for a new thread."""
    thread = get_thread(session=session, thread_id=thread_id)
    if thread.head_message_id is None:
        return []
    return messages_on_path(session=session, message_id=thread.head_message_id)


def messages_on_path(*, session: Session, message_id: int) -> list[Message]:
    """The messages from the root to `message_id` inclusive, root first."""
    ids = path_ids(session=session, message_id=message_id)
    by_id = {m.id: m for m in session.exec(select(Message).where(Message.id.in_(ids)))}
    return [by_id[i] for i in ids]


def fork_thread(*, session: Session, thread_id: int, message_id: int, title: str | None = None) -> Thread:
    """Fork: a new thread whose conversation is the source's path up to and including `message_id`.

    Records the lineage (source thread id and title, message id). Copies nothing else; later turns
    in either thread never show in the other. Raises NotFound when the message is not on the
    source thread's path.
    """
    source = get_thread(session=session, thread_id=thread_id)
    if source.head_message_id is None or message_id not in path_ids(session=session, message_id=source.head_message_id):
        raise NotFound("That message is not part of this thread.")
    fork = Thread(
        workspace_id=source.workspace_id,
        title=_title(title or f"{source.title} (fork)"),
        head_message_id=message_id,
        forked_from_thread_id=source.id,
        forked_from_thread_title=source.title,
        forked_from_message_id=message_id,
    )
    session.add(fork)
    session.commit()
    session.refresh(fork)
    return fork


def delete_thread(*, session: Session, thread_id: int) -> None:
    """Delete a thread, then the messages (and artifact files) no other thread's path reaches.

    Forks keep their own path: shared ancestors stay as long as any thread reaches them.
    """
    thread = get_thread(session=session, thread_id=thread_id)
    ws = session.get(Workspace, thread.workspace_id)
    session.delete(thread)
    session.flush()
    orphans = _unreachable_message_ids(session=session, workspace_id=thread.workspace_id)
    run_dirs: set[str] = set()
    if orphans:
        for art in session.exec(select(Artifact).where(Artifact.message_id.in_(orphans))):
            run_dirs.add(art.file_path.rsplit("/", 1)[0])
        session.execute(delete(Artifact).where(Artifact.message_id.in_(orphans)))
        session.execute(delete(Message).where(Message.id.in_(orphans)))
    session.commit()
    for rel in run_dirs:  # files go only after the rows are gone for good
        remove_tree(workspace_dir(ws.key) / rel)


def _unreachable_message_ids(*, session: Session, workspace_id: int) -> list[int]:
    """Messages of the workspace that lie on no thread's path (one recursive query)."""
    heads = sa_select(Thread.head_message_id.label("id")).where(
        Thread.workspace_id == workspace_id, Thread.head_message_id.is_not(None)
    )
    reach = heads.cte("reach", recursive=True)
    step = sa_select(Message.parent_id.label("id")).join(reach, Message.id == reach.c.id).where(Message.parent_id.is_not(None))
    reach = reach.union(step)
    stmt = sa_select(Message.id).where(Message.workspace_id == workspace_id, Message.id.not_in(sa_select(reach.c.id)))
    return [r[0] for r in session.execute(stmt).all()]


def touch_thread(*, session: Session, thread: Thread, head_message_id: int | None) -> None:
    """Move a thread's head and mark it active now (no commit: part of the caller's transaction)."""
    thread.head_message_id = head_message_id
    thread.updated_at = utcnow()
    session.add(thread)

