"""The sample workspace: deterministic SaaS data a newcomer can question at once."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sqlmodel import Session, func, select

from cfo_desk.analytics.sample_data import SAMPLE_QUESTIONS, write_sample_files
from cfo_desk.services.datasets import upload_file
from cfo_desk.services.workspaces import create_workspace
from cfo_desk.storage.models import Workspace

SAMPLE_WORKSPACE_NAME = "Sample SaaS company"

__all__ = ["SAMPLE_QUESTIONS", "SAMPLE_WORKSPACE_NAME", "load_sample_workspace", "suggested_questions"]

SAMPLE_TABLES = frozenset({"customers", "subscriptions", "orders", "marketing_spend"})


def load_sample_workspace(*, session: Session) -> Workspace:
    """Create a workspace holding the sample customers, subscriptions, orders and marketing spend.

    Named "Sample SaaS company" (with " 2", " 3" ... when taken). Returns the workspace; its four
    datasets are ingested like any upload.
    """
    name, n = SAMPLE_WORKSPACE_NAME, 1
    while session.exec(select(func.count()).select_from(Workspace).where(Workspace.name == name)).one():
        n += 1
        name = f"{SAMPLE_WORKSPACE_NAME} {n}"
    ws = create_workspace(session=session, name=name)
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_sample_files(Path(tmp)):
            upload_file(session=session, workspace_id=ws.id, filename=path.name, data=path.read_bytes())
    return ws


def suggested_questions(*, session: Session, workspace_id: int) -> list[str]:
    """Starter questions for an empty thread: the sample's when the workspace holds its tables.

    For other workspaces, one generic question per dataset (at most four).
    """
    from cfo_desk.services.datasets import list_datasets

    tables = [d.table_name for d in list_datasets(session=session, workspace_id=workspace_id)]
    if SAMPLE_TABLES <= set(tables):
        return list(SAMPLE_QUESTIONS)
    return [f"Summarise what {t} contains: periods, totals and anything unusual." for t in tables[:4]]
