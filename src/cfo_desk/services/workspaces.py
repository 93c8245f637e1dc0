"""Workspaces: create, list, rename, delete (with their folder), and what a delete removes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete, func
from sqlmodel import Session, select

from cfo_desk.services.errors import Conflict, InvalidInput, NotFound
from cfo_desk.storage.files import remove_tree, workspace_dir
from cfo_desk.storage.models import Artifact, Dataset, Message, Thread, Workspace

MAX_NAME_LENGTH = 120


def _clean_name(name: str) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise InvalidInput("A workspace needs a name.")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"Workspace names are at most {MAX_NAME_LENGTH} characters.")
    return name


def _check_unique(session: Session, name: str, except_id: int | None = None) -> None:
    clash = session.exec(select(Workspace).where(func.lower(Workspace.name) == name.lower())).first()
    if clash is not None and clash.id != except_id:
        raise Conflict(f"A workspace named “{clash.name}” already exists.")


def create_workspace(*, session: Session, name: str) -> Workspace:
    """Create a workspace (its folder is made on first upload).

    Raises InvalidInput for a blank or over-long name, Conflict when the name (any case) exists.
    """
    name = _clean_name(name)
    _check_unique(session, name)
    ws = Workspace(name=name, key=f"ws-{uuid.uuid4().hex[:12]}")
    session.add(ws)
    session.commit()
    session.refresh(ws)
    return ws


def list_workspaces(*, session: Session) -> list[Workspace]:
    """All workspaces, by name."""
    return list(session.exec(select(Workspace).order_by(func.lower(Workspace.name))))


def get_workspace(*, session: Session, workspace_id: int) -> Workspace:
    """The workspace with this id; raises NotFound."""
    ws = session.get(Workspace, workspace_id)
    if ws is None:
        raise NotFound("That workspace no longer exists.")
    return ws


def rename_workspace(*, session: Session, workspace_id: int, name: str) -> Workspace:
    """Rename a workspace; its folder is keyed by an unchanging key, so nothing moves on disk."""
    ws = get_workspace(session=session, workspace_id=workspace_id)
    name = _clean_name(name)
    _check_unique(session, name, except_id=ws.id)
    ws.name = name
    session.add(ws)
    session.commit()
    session.refresh(ws)
    return ws


@dataclass(frozen=True)
class WorkspaceContents:
    """What a workspace holds: counts shown before a delete; bytes on disk."""

    datasets: int
    threads: int
    messages: int
    artifacts: int
    bytes_on_disk: int


def workspace_contents(*, session: Session, workspace_id: int) -> WorkspaceContents:
    """Count the workspace's datasets, threads, messages and artifacts, and its folder's size."""
    ws = get_workspace(session=session, workspace_id=workspace_id)

    def count(model) -> int:
        return session.exec(select(func.count()).select_from(model).where(model.workspace_id == ws.id)).one()

    folder = workspace_dir(ws.key)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
    return WorkspaceContents(count(Dataset), count(Thread), count(Message), count(Artifact), size)


def delete_workspace(*, session: Session, workspace_id: int) -> None:
    """Delete a workspace, its rows (datasets, threads, messages, artifacts) and its folder."""
    ws = get_workspace(session=session, workspace_id=workspace_id)
    key = ws.key
    # One statement per table, threads first: they point at messages.
    for model in (Thread, Artifact, Message, Dataset, Workspace):
        column = Workspace.id if model is Workspace else model.workspace_id
        session.execute(delete(model).where(column == ws.id))
    session.commit()
    remove_tree(workspace_dir(key))
