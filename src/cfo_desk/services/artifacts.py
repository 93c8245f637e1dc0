"""Artifacts: what a run made (query results, charts, workbooks), their provenance, and safe exports."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlmodel import Session, func, select

from cfo_desk.analytics.sandbox import read_result
from cfo_desk.deliverables import charts
from cfo_desk.deliverables.charts import ChartRefused, chart_png, chart_svg  # re-exported for pages (PNG/SVG downloads)
from cfo_desk.deliverables.workbook import preview_path
from cfo_desk.services.errors import NotFound
from cfo_desk.services.session import open_session
from cfo_desk.storage.files import workspace_dir
from cfo_desk.storage.models import Artifact, Message, Workspace

__all__ = [
    "ARTIFACT_KINDS", "Artifact", "ChartRefused", "chart_png", "chart_svg", "artifact_bytes", "artifact_file", "artifacts_by_message", "chart_of", "workbook_preview", "count_artifacts", "get_artifact", "list_artifacts", "made_in", "questions_for",
    "result_csv", "result_frame", "result_head", "to_safe_csv",
]

# OWASP CSV injection: a cell starting with one of these is read as a formula by spreadsheets.
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


ARTIFACT_KINDS = ("query_result", "chart", "workbook")
"""The kinds of artifact a run makes (Artifact's docstring says what each keeps)."""


def _filtered(stmt, session: Session, workspace_id: int, kind: str | None, thread_id: int | None):
    stmt = stmt.where(Artifact.workspace_id == workspace_id)
    if kind is not None:
        stmt = stmt.where(Artifact.kind == kind)
    if thread_id is not None:  # what that thread shows: the artifacts of the messages on its path
        from cfo_desk.services.threads import get_thread, path_ids

        thread = get_thread(session=session, thread_id=thread_id)
        ids = path_ids(session=session, message_id=thread.head_message_id) if thread.head_message_id else []
        stmt = stmt.where(Artifact.message_id.in_(ids))
    return stmt


def list_artifacts(
    *,
    session: Session,
    workspace_id: int,
    limit: int | None = None,
    offset: int = 0,
    kind: str | None = None,
    thread_id: int | None = None,
) -> list[Artifact]:
    """The artifacts of a workspace, newest first: all of them, or `limit` after skipping `offset`
    (a page). `kind` keeps one kind (ARTIFACT_KINDS); `thread_id` keeps those the thread shows
    (on its path, forks' included up to the fork point). Raises NotFound for an unknown thread."""
    stmt = _filtered(select(Artifact), session, workspace_id, kind, thread_id)
    return list(session.exec(stmt.order_by(Artifact.id.desc()).offset(offset).limit(limit)))


def count_artifacts(*, session: Session, workspace_id: int, kind: str | None = None, thread_id: int | None = None) -> int:
    """How many artifacts a workspace has, with the same filters as `list_artifacts` (one COUNT query)."""
    return session.exec(_filtered(select(func.count()).select_from(Artifact), session, workspace_id, kind, thread_id)).one()


def made_in(*, session: Session, artifacts: Iterable[Artifact]) -> dict[int, tuple[int, str]]:
    """{artifact id: (thread id, thread title)} of the thread whose run made it (the run that
    wrote its message); artifacts whose thread is gone are absent. One query."""
    from cfo_desk.storage.models import Run, Thread

    arts = list(artifacts)
    if not arts:
        return {}
    rows = session.exec(
        select(Run.reply_message_id, Thread.id, Thread.title)
        .join(Thread, Thread.id == Run.thread_id)
        .where(Run.reply_message_id.in_({a.message_id for a in arts}))
    ).all()
    by_message = {m: (t, title) for m, t, title in rows}
    return {a.id: by_message[a.message_id] for a in arts if a.message_id in by_message}


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


def _result_path(session: Session, artifact: Artifact) -> Path:
    """The artifact's Parquet file; raises NotFound if it is gone."""
    ws = session.get(Workspace, artifact.workspace_id)
    path = workspace_dir(ws.key) / artifact.file_path
    if not path.exists():
        raise NotFound(f"The result file of {artifact.handle} is missing from the workspace folder.")
    return path


def artifact_file(*, session: Session, artifact: Artifact) -> Path:
    """The absolute path of an artifact's file (a result's Parquet, the result a chart draws from,
    a workbook's .xlsx); raises NotFound if it is gone."""
    return _result_path(session, artifact)


def artifact_bytes(artifact_id: int) -> bytes:
    """The bytes of an artifact's file (a workbook's .xlsx download), read when asked; raises NotFound."""
    with open_session() as session:
        return artifact_file(session=session, artifact=get_artifact(session=session, artifact_id=artifact_id)).read_bytes()


def workbook_preview(*, session: Session, artifact: Artifact) -> dict[str, Any]:
    """A workbook artifact's preview as computed when it was built (deliverables.workbook.preview_json
    shape); raises NotFound when the workbook or its preview is gone."""
    path = preview_path(_result_path(session, artifact))
    if not path.exists():
        raise NotFound(f"The preview of {artifact.handle} is missing from the workspace folder.")
    return json.loads(path.read_text())


def chart_of(*, session: Session, artifact: Artifact) -> tuple[Any, list[str]]:
    """A chart artifact re-drawn from its spec and the result file it reads (no SQL): (Altair
    chart, notes). Raises NotFound when the result file is gone, charts.ChartRefused when the file
    no longer fits the spec."""
    chart, data = charts.render_chart(json.dumps(artifact.spec or {}), _result_path(session, artifact))
    return chart, list(data.notes)


def result_frame(*, session: Session, artifact: Artifact) -> pd.DataFrame:
    """A query result's rows as a DataFrame (all kept rows, up to 1,000,000: tens of MB; pages
    show `result_head` instead). Raises NotFound if its file is gone."""
    return read_result(_result_path(session, artifact)).to_pandas()


def result_head(*, session: Session, artifact: Artifact, rows: int) -> pd.DataFrame:
    """The first `rows` rows of a query result (fewer if it has fewer), with all its columns and
    the same dtypes as `result_frame`. Reads only the start of the Parquet file (its first row
    group), never the whole result; `artifact.row_count` says how many rows there are in all.
    Raises NotFound if the file is gone, ValueError for rows < 1, pyarrow errors if it is unreadable."""
    if rows < 1:
        raise ValueError("rows must be at least 1")
    with pq.ParquetFile(_result_path(session, artifact)) as pf:
        first = next(pf.iter_batches(batch_size=rows), None)
        head = pa.Table.from_batches([first]) if first is not None else pf.schema_arrow.empty_table()
    return head.to_pandas()


def result_rows(*, session: Session, artifact: Artifact, start: int, stop: int) -> pd.DataFrame:
    """Rows `start` (0-based, inclusive) to `stop` (exclusive) of a query result, read from only the
    Parquet row groups that hold them (bounded work however large the result; the index is the
    0-based row number). Raises NotFound if the file is gone, ValueError when start < 0 or stop <= start."""
    if start < 0 or stop <= start:
        raise ValueError("need 0 <= start < stop")
    with pq.ParquetFile(_result_path(session, artifact)) as pf:
        groups, first, offset = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset + n > start and offset < stop:
                groups.append(g)
                first = offset if first is None else first
            offset += n
        if not groups:
            return pf.schema_arrow.empty_table().to_pandas()
        table = pf.read_row_groups(groups)
    frame = table.slice(start - first, stop - start).to_pandas()
    frame.index = range(start, start + len(frame))
    return frame


def result_csv(artifact_id: int) -> bytes:
    """The full result of an artifact as a safe CSV (`to_safe_csv`: every row, formula-like text
    escaped), built now from its Parquet file in a session of its own. Meant for
    `st.download_button(data=functools.partial(result_csv, id))`, which calls it only when the
    button is clicked (on another thread): a 1M-row result takes seconds and ~25 MB.
    Raises NotFound if the artifact or its file is gone."""
    with open_session() as session:
        artifact = get_artifact(session=session, artifact_id=artifact_id)
        path = _result_path(session, artifact)
    return to_safe_csv(read_result(path).to_pandas())


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
