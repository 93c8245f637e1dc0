"""Artifacts: the kept results of a run's queries, their provenance, and safe exports."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
from sqlmodel import Session, select

from cfo_desk.analytics.sandbox import read_result
from cfo_desk.services.errors import NotFound
from cfo_desk.storage.files import workspace_dir
from cfo_desk.storage.models import Artifact, Message, Workspace

# OWASP CSV injection: a cell starting with one of these is read as a formula by spreadsheets.
__all__ = ["Artifact", "artifacts_by_message", "get_artifact", "list_artifacts", "questions_for", "result_frame", "to_safe_csv"]

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def artifacts_by_message(*, session: Session, message_ids: Iterable[int]) -> dict[int, list[Artifact]]:
    """The artifacts of each message id, in handle order (q1, q2, ...); ids without any are absent."""
    ids = list(message_ids)
    if not ids:
        return {}
    out: dict[int, list[Artifact]] = {}
    for art in session.exec(select(Artifact).where(Artifact.message_id.in_(ids)).order_by(Artifact.id)):
        out.setdefault(art.message_id, []).append(art)
    return out


def list_artifacts(*, session: Session, workspace_id: int) -> list[Artifact]:
    """All artifacts of a workspace, newest first."""
    stmt = select(Artifact).where(Artifact.workspace_id == workspace_id).order_by(Artifact.id.desc())
    return list(session.exec(stmt))


def questions_for(*, session: Session, artifacts: Iterable[Artifact]) -> dict[int, str]:
    """{artifact id: the analyst's question whose answer produced it} (one query)."""
    arts = list(artifacts)
    answers = {m.id: m.parent_id for m in session.exec(select(Message).where(Message.id.in_({a.message_id for a in arts})))}
    questions = {m.id: m.content for m in session.exec(select(Message).where(Message.id.in_(set(answers.values()) - {None})))}
    return {a.id: questions.get(answers.get(a.message_id), "") for a in arts}


def get_artifact(*, session: Session, artifact_id: int) -> Artifact:
    """The artifact with this id; raises NotFound."""
    art = session.get(Artifact, artifact_id)
    if art is None:
        raise NotFound("That result no longer exists.")
    return art


def result_frame(*, session: Session, artifact: Artifact) -> pd.DataFrame:
    """A query result's rows as a DataFrame (all kept rows). Raises NotFound if its file is gone."""
    ws = session.get(Workspace, artifact.workspace_id)
    path = workspace_dir(ws.key) / artifact.file_path
    if not path.exists():
        raise NotFound(f"The result file of {artifact.handle} is missing from the workspace folder.")
    return read_result(path).to_pandas()


def escape_formula(value: object) -> object:
    """Prefix `'` to a text cell a spreadsheet would run as a formula; numbers pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def to_safe_csv(df: pd.DataFrame) -> bytes:
    """CSV bytes (UTF-8 with BOM, so Excel reads accents) with text cells formula-escaped."""
    safe = df.copy()
    for col in safe.columns:
        if safe[col].dtype == object or pd.api.types.is_string_dtype(safe[col]):
            safe[col] = safe[col].map(escape_formula)
    safe.columns = [str(escape_formula(str(c))) for c in safe.columns]
    return safe.to_csv(index=False).encode("utf-8-sig")
