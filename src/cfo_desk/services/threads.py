"""Threads and the message tree: create, list, rename, delete, fork, branches, and read a conversation.

A thread's conversation is the path from the root message to the thread's head, read with one
recursive query (portable SQL: SQLite and PostgreSQL). Forking makes a new thread whose head is an
existing message; it copies no message, data or artifact, so its cost is one row.

Branches inside a thread are siblings in the same tree: every message names the thread whose turn
wrote it (`Message.thread_id`). A message's branches in thread T are the messages with the same
parent written in T, plus the message itself, ordered by id (creation); in a fork, the path it was
forked with counts as its own. A fork's messages are never branches of its source, nor the
reverse (the source's later turns never show in the fork). Messages older than revision 0006 that no run named
(`thread_id` NULL) show no branches but themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import delete, exists, func, literal, select as sa_select
from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from cfo_desk.services.errors import Conflict, InvalidInput, NotFound
from cfo_desk.storage.files import remove_tree, workspace_dir
from cfo_desk.storage.models import Artifact, Message, MessageStatus, Role, Thread, Workspace, utcnow

__all__ = [  # Message, MessageStatus, Role, Thread, utcnow are re-exported for the UI
    "Message",
    "MessageStatus",
    "Role",
    "BranchDeletion",
    "Comparison",
    "ComparedTurn",
    "FigureDiff",
    "ForkRef",
    "Siblings",
    "Thread",
    "TurnPair",
    "archive_thread",
    "compare",
    "compare_figures",
    "count_threads",
    "delete_branch",
    "fork_title",
    "forks_of",
    "is_on_path",
    "newest_leaf",
    "path_siblings",
    "siblings",
    "switch_branch",
    "unarchive_thread",
    "utcnow",
]

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


PAGE_SIZE = 50


def _thread_filter(workspace_id: int, query: str | None, archived: bool | None) -> list:
    conds = [Thread.workspace_id == workspace_id]
    if archived is not None:
        conds.append(Thread.archived_at.is_not(None) if archived else Thread.archived_at.is_(None))
    words = " ".join((query or "").split())
    if words:
        pattern = "%" + like_escape(words.lower()) + "%"
        in_title = func.lower(Thread.title).like(pattern, escape="\\")
        in_text = exists().where(Message.thread_id == Thread.id, func.lower(Message.content).like(pattern, escape="\\"))
        conds.append(in_title | in_text)
    return conds


def list_threads(
    *,
    session: Session,
    workspace_id: int,
    query: str | None = None,
    archived: bool | None = False,
    limit: int | None = PAGE_SIZE,
    offset: int = 0,
) -> list[Thread]:
    """The workspace's threads, most recently active first, one page at a time.

    `query` (spaces folded; blank: no filter) keeps the threads whose title, or the text of a
    message written in the thread (a question or an answer, on any branch), contains it, ignoring
    case (SQL lower(): on SQLite only ASCII letters fold); % and _ are plain characters. A fork's
    inherited messages belong to its source. `archived`: False (default) the threads in use, True
    the archived ones, None both. `limit` None: every thread."""
    stmt = (
        select(Thread)
        .where(*_thread_filter(workspace_id, query, archived))
        .order_by(Thread.updated_at.desc(), Thread.id.desc())
        .offset(max(0, offset))
    )
    if limit is not None:
        stmt = stmt.limit(max(0, limit))
    return list(session.exec(stmt))


def count_threads(*, session: Session, workspace_id: int, query: str | None = None, archived: bool | None = False) -> int:
    """How many threads `list_threads` with the same filters has in all its pages."""
    stmt = sa_select(func.count()).select_from(Thread).where(*_thread_filter(workspace_id, query, archived))
    return int(session.execute(stmt).scalar())


def archive_thread(*, session: Session, thread_id: int) -> Thread:
    """Archive a thread: it leaves the default list (`list_threads(archived=True)` lists it) and
    keeps everything; it can still be opened, forked and asked in. Archiving twice keeps the
    first time. Its activity time is not changed. Raises NotFound."""
    thread = get_thread(session=session, thread_id=thread_id)
    if thread.archived_at is None:
        thread.archived_at = utcnow()
        session.add(thread)
        session.commit()
        session.refresh(thread)
    return thread


def unarchive_thread(*, session: Session, thread_id: int) -> Thread:
    """Bring an archived thread back to the default list (where its last activity puts it)."""
    thread = get_thread(session=session, thread_id=thread_id)
    if thread.archived_at is not None:
        thread.archived_at = None
        session.add(thread)
        session.commit()
        session.refresh(thread)
    return thread


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


def _path_cte(message_id: int):
    """The recursive CTE of the path from `message_id` up to the root: (id, parent_id, depth from it)."""
    base = sa_select(Message.id, Message.parent_id, literal(0).label("depth")).where(Message.id == message_id)
    path = base.cte("path", recursive=True)
    step = sa_select(Message.id, Message.parent_id, (path.c.depth + 1).label("depth")).join(path, Message.id == path.c.parent_id)
    return path.union_all(step)


def path_ids(*, session: Session, message_id: int) -> list[int]:
    """Ids of the messages from the root to `message_id` inclusive, root first (one recursive query)."""
    path = _path_cte(message_id)
    rows = session.execute(sa_select(path.c.id).order_by(path.c.depth.desc())).all()
    return [r[0] for r in rows]


def conversation(*, session: Session, thread_id: int) -> list[Message]:
    """The thread's messages from root to head, in order; empty for a new thread."""
    thread = get_thread(session=session, thread_id=thread_id)
    if thread.head_message_id is None:
        return []
    return messages_on_path(session=session, message_id=thread.head_message_id)


def messages_on_path(*, session: Session, message_id: int) -> list[Message]:
    """The messages from the root to `message_id` inclusive, root first (one recursive query
    joined to the rows)."""
    path = _path_cte(message_id)
    return list(session.exec(select(Message).join(path, Message.id == path.c.id).order_by(path.c.depth.desc())))


def fork_thread(*, session: Session, thread_id: int, message_id: int, title: str | None = None) -> Thread:
    """Fork: a new thread whose conversation is the source's path up to and including `message_id`.

    Records the lineage (source thread id and title, message id). Copies nothing else; later turns
    in either thread never show in the other. The title is unique in the workspace and readable
    (`fork_title`): "<source title> · fork N" by default, or `title` as typed. Checking that the
    message is on the source's path walks up from the head only until it meets the message
    (`is_on_path`), so forking at the head costs the same however long the thread is. Raises
    NotFound when the message is not on the source thread's path.
    """
    source = get_thread(session=session, thread_id=thread_id)
    if not is_on_path(session=session, head_id=source.head_message_id, message_id=message_id):
        raise NotFound("That message is not part of this thread.")
    fork = Thread(
        workspace_id=source.workspace_id,
        title=fork_title(session=session, workspace_id=source.workspace_id, source_title=source.title, title=title),
        head_message_id=message_id,
        forked_from_thread_id=source.id,
        forked_from_thread_title=source.title,
        forked_from_message_id=message_id,
    )
    session.add(fork)
    session.commit()
    session.refresh(fork)
    return fork


_FORK_SUFFIX = re.compile(r"(?:\s*·\s*fork\s+\d+|\s*\(fork\))+$")


def like_escape(text: str) -> str:
    """`text` for a LIKE pattern with ESCAPE '\\': backslash, % and _ match themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def fork_title(*, session: Session, workspace_id: int, source_title: str, title: str | None = None) -> str:
    """A title for a new fork, unique among the workspace's threads (archived ones included).

    Without a typed title: "<source title> · fork N" with the smallest free N, starting at 1 (the
    first fork of "MRR Dec 2024" is "MRR Dec 2024 · fork 1", the next "· fork 2"). A fork of a fork
    counts on from the same base: forking "MRR Dec 2024 · fork 1" gives "MRR Dec 2024 · fork 2",
    never "· fork 1 · fork 1" (an old "(fork)" suffix is dropped the same way). A typed title is
    used as given (spaces folded); when a thread already has it, " (2)", " (3)" ... is added.
    Titles stay within MAX_TITLE_LENGTH (the base is cut, never the suffix). One query."""
    typed = " ".join((title or "").split())
    if typed:
        base = typed
        candidates = ((n, "" if n == 1 else f" ({n})") for n in range(1, 10**6))
    else:
        base = _FORK_SUFFIX.sub("", " ".join((source_title or "").split())).strip() or DEFAULT_TITLE
        candidates = ((n, f" · fork {n}") for n in range(1, 10**6))
    prefix = base[: MAX_TITLE_LENGTH - 20]
    like = like_escape(prefix) + "%"
    taken = set(session.execute(
        sa_select(Thread.title).where(Thread.workspace_id == workspace_id, Thread.title.like(like, escape="\\"))
    ).scalars())
    for _, suffix in candidates:
        room = MAX_TITLE_LENGTH - len(suffix)
        name = (base if len(base) <= room else base[: room - 1] + "…") + suffix
        if name not in taken:
            return name
    raise Conflict("Too many threads with this title.")  # pragma: no cover - a million forks


class ForkRef(NamedTuple):
    """A fork of a thread, as listed at the message it branches from."""

    thread_id: int
    title: str


def forks_of(*, session: Session, thread_id: int) -> dict[int, list[ForkRef]]:
    """The thread's forks by the message they branch from (`forked_from_message_id`), oldest
    first: {message_id: [ForkRef(thread_id, title), ...]}. One query; archived forks included."""
    source = get_thread(session=session, thread_id=thread_id)
    rows = session.execute(
        sa_select(Thread.id, Thread.title, Thread.forked_from_message_id)
        .where(Thread.workspace_id == source.workspace_id, Thread.forked_from_thread_id == source.id)
        .order_by(Thread.id)
    ).all()
    out: dict[int, list[ForkRef]] = {}
    for tid, title, mid in rows:
        if mid is not None:
            out.setdefault(mid, []).append(ForkRef(tid, title))
    return out


def delete_thread(*, session: Session, thread_id: int) -> None:
    """Delete a thread, then the messages (and artifact files) nothing keeps any more.

    A message is kept while the thread that wrote it exists (so every branch of every other
    thread stays) or while any thread's head or fork point reaches it (a fork keeps its whole
    path and the one it was forked with, whoever wrote them); the ancestors of a kept message are
    kept too.
    """
    thread = get_thread(session=session, thread_id=thread_id)
    ws = session.get(Workspace, thread.workspace_id)
    session.delete(thread)
    session.flush()
    orphans = _unreachable_message_ids(session=session, workspace_id=thread.workspace_id)
    run_dirs = _delete_messages(session, ws.id, orphans)
    session.commit()
    _remove_unused_dirs(session, ws, run_dirs)


def _delete_messages(session: Session, workspace_id: int, ids: list[int]) -> set[str]:
    """Delete these messages and their artifacts (no commit); returns the run folders their
    artifacts' files lie in (candidates for removal once the rows are gone for good)."""
    run_dirs: set[str] = set()
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        for (file_path,) in session.execute(sa_select(Artifact.file_path).where(Artifact.message_id.in_(chunk))).all():
            run_dirs.add(file_path.rsplit("/", 1)[0])
        session.execute(delete(Artifact).where(Artifact.message_id.in_(chunk)))
    for i in range(0, len(ids), _CHUNK):  # children may sit in another chunk: artifacts first, then messages
        session.execute(delete(Message).where(Message.id.in_(ids[i : i + _CHUNK])))
    return run_dirs


def _remove_unused_dirs(session: Session, ws: Workspace, run_dirs: set[str]) -> None:
    """Remove the run folders no remaining artifact uses (a chart keeps the file of the result it
    draws, which may lie in an earlier run's folder on a path that stays)."""
    if not run_dirs:
        return
    used = {fp.rsplit("/", 1)[0] for (fp,) in session.execute(sa_select(Artifact.file_path).where(Artifact.workspace_id == ws.id)).all()}
    session.rollback()
    for rel in run_dirs - used:
        remove_tree(workspace_dir(ws.key) / rel)


_CHUNK = 5_000  # ids per IN (...) list: well under SQLite's and PostgreSQL's bound-parameter limits


def _unreachable_message_ids(*, session: Session, workspace_id: int) -> list[int]:
    """Messages of the workspace that nothing keeps (one recursive query): kept are the messages
    written by a thread that still exists, the heads of the threads, the messages forks were made
    from (a fork's inherited branch), and every ancestor of those."""
    live = sa_select(Thread.id).where(Thread.workspace_id == workspace_id)
    heads = sa_select(Thread.head_message_id).where(Thread.workspace_id == workspace_id, Thread.head_message_id.is_not(None))
    fork_points = sa_select(Thread.forked_from_message_id).where(
        Thread.workspace_id == workspace_id, Thread.forked_from_message_id.is_not(None)
    )
    seeds = sa_select(Message.id.label("id")).where(
        Message.workspace_id == workspace_id,
        Message.thread_id.in_(live) | Message.id.in_(heads) | Message.id.in_(fork_points),
    )
    reach = seeds.cte("reach", recursive=True)
    step = sa_select(Message.parent_id.label("id")).join(reach, Message.id == reach.c.id).where(Message.parent_id.is_not(None))
    reach = reach.union(step)
    stmt = sa_select(Message.id).where(Message.workspace_id == workspace_id, Message.id.not_in(sa_select(reach.c.id)))
    return [r[0] for r in session.execute(stmt).all()]


def touch_thread(*, session: Session, thread: Thread, head_message_id: int | None) -> None:
    """Move a thread's head and mark it active now (no commit: part of the caller's transaction)."""
    thread.head_message_id = head_message_id
    thread.updated_at = utcnow()
    session.add(thread)



# ---------------------------------------------------------------------------------------------
# Branches inside a thread: siblings written in the thread, switching between them.


def is_on_path(*, session: Session, head_id: int | None, message_id: int) -> bool:
    """True when `message_id` lies on the path from the root to `head_id` (inclusive).

    One recursive query that walks up from the head and stops at the message: O(distance from the
    head to the message), so checking the head itself costs one step. A message that is not on
    the path costs the walk to the root."""
    if head_id is None:
        return False
    up = sa_select(Message.id, Message.parent_id).where(Message.id == head_id).cte("up", recursive=True)
    step = sa_select(Message.id, Message.parent_id).join(up, Message.id == up.c.parent_id).where(up.c.id != message_id)
    up = up.union_all(step)
    return bool(session.execute(sa_select(exists().where(up.c.id == message_id))).scalar())


@dataclass(frozen=True)
class Siblings:
    """A message's branches in one thread: `ids` in creation order (the message among them),
    `index` of the message in `ids` (0-based; the UI shows index + 1) and `count` == len(ids)."""

    ids: tuple[int, ...]
    index: int
    count: int


def _inherited(session: Session, thread: Thread | None) -> dict[int | None, int]:
    """A fork's inherited messages: the path from the root to the message it was forked from,
    as {parent_id: message id} (one recursive query; empty for a thread that is not a fork)."""
    if thread is None or thread.forked_from_message_id is None:
        return {}
    path = _path_cte(thread.forked_from_message_id)
    return {p: i for i, p in session.execute(sa_select(path.c.id, path.c.parent_id)).all()}


def siblings(*, session: Session, thread_id: int, message_ids: list[int]) -> dict[int, Siblings]:
    """The branches of each of these messages in the thread (usually the messages of its path):
    the messages with the same parent written in this thread, plus the message itself, by id. In a
    fork, the messages it was forked with (the path to its fork point, written in the source)
    count as its own too: after the fork edits an inherited question, ‹1/2› leads back to it.

    Two queries whatever the number of messages (their parents, then the siblings written in the
    thread), one more in a fork. Messages that no longer exist are left out of the result."""
    ids = list(dict.fromkeys(message_ids))
    if not ids:
        return {}
    rows = session.execute(sa_select(Message.id, Message.parent_id, Message.workspace_id).where(Message.id.in_(ids))).all()
    if not rows:
        return {}
    parents = {r.parent_id for r in rows if r.parent_id is not None}
    roots = any(r.parent_id is None for r in rows)
    cond = Message.parent_id.in_(parents) if parents else None
    if roots:
        root_cond = Message.parent_id.is_(None) & (Message.workspace_id == rows[0].workspace_id)
        cond = root_cond if cond is None else (cond | root_cond)
    children: dict[int | None, set[int]] = {}
    for sid, pid in session.execute(sa_select(Message.id, Message.parent_id).where(Message.thread_id == thread_id, cond)).all():
        children.setdefault(pid, set()).add(sid)
    for pid, sid in _inherited(session, session.get(Thread, thread_id)).items():
        children.setdefault(pid, set()).add(sid)
    out: dict[int, Siblings] = {}
    for r in rows:
        group = tuple(sorted(children.get(r.parent_id, set()) | {r.id}))
        out[r.id] = Siblings(group, group.index(r.id), len(group))
    return out


def path_siblings(*, session: Session, thread_id: int, head_id: int | None = None) -> dict[int, Siblings]:
    """`siblings` of every message on the thread's path (to `head_id`, default its head), without
    sending the path's ids back to the store: one recursive query for the path, one for the
    siblings written in the thread under the path's parents (one more in a fork). For long
    threads (thousands of messages) this avoids `siblings`' id lists."""
    thread = get_thread(session=session, thread_id=thread_id)
    head_id = thread.head_message_id if head_id is None else head_id
    if head_id is None:
        return {}
    path = _path_cte(head_id)
    rows = session.execute(sa_select(path.c.id, path.c.parent_id)).all()
    parents = sa_select(path.c.parent_id).where(path.c.parent_id.is_not(None))
    cond = Message.parent_id.in_(parents)
    if any(p is None for _, p in rows):
        cond = cond | (Message.parent_id.is_(None) & (Message.workspace_id == thread.workspace_id))
    children: dict[int | None, set[int]] = {}
    for sid, pid in session.execute(sa_select(Message.id, Message.parent_id).where(Message.thread_id == thread.id, cond)).all():
        children.setdefault(pid, set()).add(sid)
    for pid, sid in _inherited(session, thread).items():
        children.setdefault(pid, set()).add(sid)
    out: dict[int, Siblings] = {}
    for mid, pid in rows:
        group = tuple(sorted(children.get(pid, set()) | {mid}))
        out[mid] = Siblings(group, group.index(mid), len(group))
    return out


def _open_run(session: Session, thread_id: int) -> bool:
    from cfo_desk.storage.models import Run, RunStatus

    stmt = sa_select(exists().where(Run.thread_id == thread_id, Run.status.in_((RunStatus.queued, RunStatus.running))))
    return bool(session.execute(stmt).scalar())


RUN_OPEN = "A run is going in this thread; wait for it or stop it first."


def _subtree(session: Session, message_id: int) -> list[tuple[int, int | None, int | None]]:
    """(id, parent_id, thread_id) of the message and all its descendants, any thread (one
    recursive query; O(size of the subtree))."""
    down = sa_select(Message.id, Message.parent_id, Message.thread_id).where(Message.id == message_id).cte("down", recursive=True)
    step = sa_select(Message.id, Message.parent_id, Message.thread_id).join(down, Message.parent_id == down.c.id)
    down = down.union_all(step)
    return [tuple(r) for r in session.execute(sa_select(down.c.id, down.c.parent_id, down.c.thread_id)).all()]


def _newest_leaf_in(rows: list[tuple[int, int | None, int | None]], thread_id: int, exclude: set[int] = frozenset()) -> int | None:
    """The newest (highest id) message written in the thread among `rows` that has no child
    written in the thread among them (`exclude`d ids count as absent); None when there is none."""
    mine = {i for i, _, t in rows if t == thread_id and i not in exclude}
    with_child = {p for i, p, _ in rows if i in mine}
    leaves = mine - with_child
    return max(leaves) if leaves else None


@dataclass(frozen=True)
class BranchLeaf:
    """The end of one branch of a thread: its last message and the question that starts its last
    turn (for a label); `is_head` for the branch the thread shows."""

    message_id: int
    question: str
    is_head: bool


MAX_BRANCH_LEAVES = 100
"""Branches `branch_leaves` lists (newest first)."""


def branch_leaves(*, session: Session, thread_id: int) -> list[BranchLeaf]:
    """The ends of the thread's branches, newest first (at most MAX_BRANCH_LEAVES): the messages
    written in the thread with no child written in it, and the head. Two queries."""
    thread = get_thread(session=session, thread_id=thread_id)
    child = aliased(Message)
    has_child = sa_select(child.id).where(child.parent_id == Message.id, child.thread_id == thread_id).exists()
    ids = [r[0] for r in session.execute(
        sa_select(Message.id).where(Message.thread_id == thread_id, ~has_child).order_by(Message.id.desc()).limit(MAX_BRANCH_LEAVES)
    ).all()]
    if thread.head_message_id is not None and thread.head_message_id not in ids:
        ids.insert(0, thread.head_message_id)
    rows = {m.id: m for m in session.exec(select(Message).where(Message.id.in_(ids)))}
    parents = {m.id: m for m in session.exec(select(Message).where(Message.id.in_({m.parent_id for m in rows.values() if m.parent_id})))}
    out = []
    for i in ids:
        m = rows.get(i)
        if m is None:
            continue
        q = m if m.role == Role.user else parents.get(m.parent_id)
        out.append(BranchLeaf(i, " ".join((q.content if q else m.content).split()), i == thread.head_message_id))
    return out


def newest_leaf(*, session: Session, thread_id: int, message_id: int) -> int:
    """The branch's most recent leaf in the thread: the newest message (by id) among the
    descendants of `message_id` written in the thread that have no child written in it; the message
    itself when it has no such descendant. One recursive query, O(size of its subtree)."""
    rows = _subtree(session, message_id)
    leaf = _newest_leaf_in([r for r in rows if r[0] != message_id], thread_id)
    return leaf if leaf is not None else message_id


def switch_branch(*, session: Session, thread_id: int, message_id: int) -> Thread:
    """Show another branch: move the thread's head to the most recent leaf (`newest_leaf`) of
    `message_id`, a message written in this thread, on its current path, or (in a fork) on the
    path it was forked with. Runs nothing; every branch keeps its answers, artifacts and exact
    model history. When nothing below the message was written in this thread, the head stays if
    the message is on the current path, goes to the fork point for a fork's inherited message,
    else to the message itself. Raises NotFound (message gone, or not one of this thread's
    branches), Conflict while a run of the thread is queued or running."""
    thread = get_thread(session=session, thread_id=thread_id)
    msg = session.get(Message, message_id)
    if msg is None or msg.workspace_id != thread.workspace_id:
        raise NotFound("That message no longer exists.")
    on_path = is_on_path(session=session, head_id=thread.head_message_id, message_id=message_id)
    inherited = set(_inherited(session, thread).values()) if msg.thread_id != thread.id and not on_path else set()
    if msg.thread_id != thread.id and not on_path and message_id not in inherited:
        raise NotFound("That message is not a branch of this thread.")
    if _open_run(session, thread.id):
        raise Conflict(RUN_OPEN)
    rows = _subtree(session, message_id)
    leaf = _newest_leaf_in([r for r in rows if r[0] != message_id], thread.id)
    if leaf is None:
        if on_path:
            leaf = thread.head_message_id
        elif message_id in inherited:
            leaf = thread.forked_from_message_id  # the end of the inherited path below it
        else:
            leaf = message_id
    if leaf != thread.head_message_id:
        touch_thread(session=session, thread=thread, head_message_id=leaf)
    session.commit()
    session.refresh(thread)
    return thread


@dataclass(frozen=True)
class BranchDeletion:
    """What `delete_branch` did: the thread (its head moved when it was inside the branch), the
    ids of the messages removed, and the ids kept because another thread still uses them (a fork's
    head reaches them, or another thread wrote messages below them)."""

    thread: Thread
    deleted_ids: list[int]
    kept_ids: list[int]


def delete_branch(*, session: Session, thread_id: int, message_id: int) -> BranchDeletion:
    """Delete a branch of the thread: `message_id` (written in this thread) and its descendants
    written in this thread, with their artifacts and result files. Every other branch stays whole,
    and so does anything another thread uses: a message reached by another thread's head or fork
    point (a fork) or with another thread's messages below it is kept, with its ancestors. When the head was
    inside the branch it moves to the newest remaining leaf under the branch's parent (the parent
    itself when none; for a first question with no other branch, the thread becomes empty).

    One recursive query for the subtree (O(its size)), one for the parent's. Raises NotFound
    (message gone or not written in this thread), Conflict while a run of the thread is open."""
    thread = get_thread(session=session, thread_id=thread_id)
    msg = session.get(Message, message_id)
    if msg is None or msg.workspace_id != thread.workspace_id or msg.thread_id != thread.id:
        raise NotFound("That message is not a branch of this thread.")
    if _open_run(session, thread.id):
        raise Conflict(RUN_OPEN)
    rows = _subtree(session, message_id)
    parent_of = {i: p for i, p, _ in rows}
    other_heads: set[int] = set()
    for head_id, fork_point in session.execute(
        sa_select(Thread.head_message_id, Thread.forked_from_message_id).where(
            Thread.workspace_id == thread.workspace_id, Thread.id != thread.id
        )
    ).all():
        other_heads.update(x for x in (head_id, fork_point) if x is not None)
    protected: set[int] = set()
    for i, _, t in rows:
        node = i if (t != thread.id or i in other_heads) else None
        while node is not None and node not in protected:  # the seed and its ancestors inside the branch
            protected.add(node)
            node = parent_of.get(node)
    doomed = sorted(i for i, _, t in rows if t == thread.id and i not in protected)
    kept = sorted(i for i, _, t in rows if t == thread.id and i in protected)
    subtree = set(parent_of)
    if thread.head_message_id in subtree:
        if msg.parent_id is not None:
            around = [r for r in _subtree(session, msg.parent_id) if r[0] != msg.parent_id]
            new_head = _newest_leaf_in(around, thread.id, exclude=subtree)
            new_head = msg.parent_id if new_head is None else new_head
        else:
            mine = [tuple(r) for r in session.execute(
                sa_select(Message.id, Message.parent_id, Message.thread_id).where(Message.thread_id == thread.id)
            ).all()]
            new_head = _newest_leaf_in(mine, thread.id, exclude=subtree)
        touch_thread(session=session, thread=thread, head_message_id=new_head)
        session.flush()
    ws = session.get(Workspace, thread.workspace_id)
    run_dirs = _delete_messages(session, ws.id, doomed)
    session.commit()
    _remove_unused_dirs(session, ws, run_dirs)
    thread = get_thread(session=session, thread_id=thread.id)
    return BranchDeletion(thread, doomed, kept)


# ---------------------------------------------------------------------------------------------
# Compare two threads (or two branches of one) from where they diverge.

PERCENT_TOLERANCE = 0.05  # percentage points: a '%' figure shown to one decimal
AMOUNT_TOLERANCE = 0.005  # half a cent (and half a hundredth of any other unit)


@dataclass(frozen=True)
class FigureDiff:
    """One key figure on both sides of a compared turn.

    `left` / `right` are the values (None on the side that has no such figure), `unit` the unit
    (the left one when both have it), `difference` = right - left and `relative` = difference /
    |left| (None when a side is missing, the units differ, or left is 0). `changed` is True when
    the values differ beyond rounding (more than 0.05 percentage points for a '%' figure, half a
    cent, i.e. 0.005, for any other unit), when the units differ, or when one side is missing.
    `matched_by`: "label" (same label, ignoring case and spaces), "position" (the n-th figure
    left unmatched on each side), "left only" or "right only"."""

    label: str
    left: float | None
    right: float | None
    unit: str | None
    right_label: str | None
    right_unit: str | None
    difference: float | None
    relative: float | None
    changed: bool
    matched_by: str


@dataclass(frozen=True)
class ComparedTurn:
    """One turn of a compared path: its question, its answer (None while unanswered) and the
    answer's key figures (the dicts of `Message.output["key_figures"]`)."""

    question: Message | None
    answer: Message | None
    key_figures: list[dict]


@dataclass(frozen=True)
class TurnPair:
    """The n-th turn after the divergence on each side (None where one side has fewer turns), and
    the differences of their key figures."""

    left: ComparedTurn | None
    right: ComparedTurn | None
    figures: list[FigureDiff]

    @property
    def changed(self) -> bool:
        return any(f.changed for f in self.figures)


@dataclass(frozen=True)
class Comparison:
    """Two conversations side by side from the message where they diverge.

    `common`: the messages both paths share, root first (empty when they share nothing);
    `left` / `right`: each path after the divergence; `pairs`: their turns side by side. When
    the paths part between a question and its answers (a regenerated answer, or forks from a
    question), that question is the first turn's question on both sides."""

    left_thread_id: int
    right_thread_id: int
    left_head: int | None
    right_head: int | None
    common: list[Message]
    left: list[Message]
    right: list[Message]
    pairs: list[TurnPair]

    @property
    def changed_figures(self) -> int:
        return sum(1 for p in self.pairs for f in p.figures if f.changed)


def _fold(label: str | None) -> str:
    return " ".join((label or "").split()).casefold()


def _number(value) -> float | None:
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def figure_diff(left: dict | None, right: dict | None, matched_by: str) -> FigureDiff:
    """The difference of two key figures (dicts with label, value, unit); either may be None."""
    lv = _number(left.get("value")) if left else None
    rv = _number(right.get("value")) if right else None
    lu = (left or {}).get("unit")
    ru = (right or {}).get("unit")
    same_unit = left is not None and right is not None and _fold(lu) == _fold(ru)
    difference = relative = None
    if same_unit and lv is not None and rv is not None:
        difference = rv - lv
        relative = difference / abs(lv) if lv else None
        tolerance = PERCENT_TOLERANCE if (lu or "").strip() == "%" else AMOUNT_TOLERANCE
        changed = abs(difference) > tolerance + 1e-12
    else:
        changed = True
    label = (left or right or {}).get("label") or ""
    return FigureDiff(
        label=label,
        left=lv,
        right=rv,
        unit=lu if left is not None else ru,
        right_label=(right or {}).get("label") if left is not None else None,
        right_unit=ru,
        difference=difference,
        relative=relative,
        changed=changed,
        matched_by=matched_by,
    )


def compare_figures(left: list[dict], right: list[dict]) -> list[FigureDiff]:
    """Pair two answers' key figures: by label (ignoring case and spaces) first, then the ones
    left over by position; figures with no partner come last, marked changed. Left order kept."""
    right_by_label: dict[str, list[int]] = {}
    for j, fig in enumerate(right):
        right_by_label.setdefault(_fold(fig.get("label")), []).append(j)
    partner: dict[int, tuple[int, str]] = {}
    used: set[int] = set()
    for i, fig in enumerate(left):
        candidates = right_by_label.get(_fold(fig.get("label")), [])
        if candidates:
            j = candidates.pop(0)
            partner[i] = (j, "label")
            used.add(j)
    rest_left = [i for i in range(len(left)) if i not in partner]
    rest_right = [j for j in range(len(right)) if j not in used]
    for i, j in zip(rest_left, rest_right):
        partner[i] = (j, "position")
        used.add(j)
    out = []
    for i, fig in enumerate(left):
        if i in partner:
            j, how = partner[i]
            out.append(figure_diff(fig, right[j], how))
        else:
            out.append(figure_diff(fig, None, "left only"))
    out.extend(figure_diff(None, right[j], "right only") for j in range(len(right)) if j not in used)
    return out


def _turns(messages: list[Message], lead_question: Message | None) -> list[ComparedTurn]:
    """Group a path's messages into turns (a question and the answer under it)."""
    turns_out: list[ComparedTurn] = []
    question = lead_question
    for msg in messages:
        if msg.role == Role.user:
            if question is not None:
                turns_out.append(ComparedTurn(question, None, []))
            question = msg
        else:
            figures = list((msg.output or {}).get("key_figures") or []) if MessageStatus(msg.status).answered else []
            turns_out.append(ComparedTurn(question, msg, figures))
            question = None
    if question is not None and question is not lead_question:
        turns_out.append(ComparedTurn(question, None, []))
    return turns_out


def _compare_head(session: Session, thread: Thread, head: int | None) -> int | None:
    if head is None:
        return thread.head_message_id
    msg = session.get(Message, head)
    if msg is None or msg.workspace_id != thread.workspace_id:
        raise NotFound("That message no longer exists.")
    if (
        msg.thread_id != thread.id
        and not is_on_path(session=session, head_id=thread.head_message_id, message_id=head)
        and head not in _inherited(session, thread).values()
    ):
        raise NotFound("That message is not part of this thread.")
    return head


def compare(
    *,
    session: Session,
    left_thread_id: int,
    right_thread_id: int,
    left_head: int | None = None,
    right_head: int | None = None,
) -> Comparison:
    """Compare two threads, or two branches of one thread (the same thread id twice, with the
    heads of the branches: any message written in that thread or on its path), from the message
    where their paths diverge: the common messages, each side's turns after it side by side, and
    the differences of their key figures (`compare_figures`). Reads only; two recursive path
    queries. Raises NotFound (a thread or head gone, a head not in its thread), InvalidInput
    (threads of two workspaces)."""
    lt = get_thread(session=session, thread_id=left_thread_id)
    rt = get_thread(session=session, thread_id=right_thread_id)
    if lt.workspace_id != rt.workspace_id:
        raise InvalidInput("Only threads of one workspace can be compared.")
    lh, rh = _compare_head(session, lt, left_head), _compare_head(session, rt, right_head)
    lpath = messages_on_path(session=session, message_id=lh) if lh is not None else []
    rpath = messages_on_path(session=session, message_id=rh) if rh is not None else []
    n = 0
    while n < len(lpath) and n < len(rpath) and lpath[n].id == rpath[n].id:
        n += 1
    common, left, right = lpath[:n], lpath[n:], rpath[n:]
    lead = common[-1] if common and common[-1].role == Role.user else None
    lturns, rturns = _turns(left, lead), _turns(right, lead)
    pairs = []
    for i in range(max(len(lturns), len(rturns))):
        a = lturns[i] if i < len(lturns) else None
        b = rturns[i] if i < len(rturns) else None
        pairs.append(TurnPair(a, b, compare_figures(a.key_figures if a else [], b.key_figures if b else [])))
    return Comparison(lt.id, rt.id, lh, rh, common, left, right, pairs)
