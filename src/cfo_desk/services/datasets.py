"""Datasets: upload (CSV, or XLSX with one dataset per worksheet), replace, re-read, delete, view.

An upload keeps the original file under the workspace's `uploads/`, ingests it into the
workspace's DuckDB in one transaction, then records a Dataset row per table. When ingest fails,
the error names the file and the problem, and nothing of the upload remains (no table, no row, no
file); a table being replaced survives intact.

Every change holds the workspace's DuckDB writer (`store.writer`) from its first check to its last
write, which excludes other uploads and queries in this process and in other processes sharing
the data folder. When the workspace stays busy past `WRITE_WAIT_S`, the change is refused with
`WorkspaceBusyConflict` before anything is written; reads (preview, profile) likewise.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Literal

import pandas as pd
from sqlmodel import Session, select

from cfo_desk.analytics import ingest
from cfo_desk.analytics.profile import preview, profile_table
from cfo_desk.analytics.ingest import IngestError
from cfo_desk.analytics.store import WorkspaceBusy, quote_ident, stamp_provenance, writer
from cfo_desk.services.errors import Conflict, InvalidInput, NotFound
from cfo_desk.services.workspaces import get_workspace
from cfo_desk.storage.files import duckdb_path, workspace_dir, write_atomic
from cfo_desk.storage.models import Dataset, utcnow

__all__ = [
    "DuplicateUpload",
    "IngestError",
    "WorkspaceBusyConflict",
    "delete_dataset",
    "list_datasets",
    "replace_targets",
    "COLUMN_TYPES",
    "set_column_types",
    "set_date_order",
    "upload_file",
]

MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # matches server.maxUploadSize in .streamlit/config.toml
OnConflict = Literal["ask", "replace", "keep_both"]
WRITE_WAIT_S = 20.0  # how long an upload, re-read or delete waits for a busy workspace
READ_WAIT_S = 10.0  # how long a preview or profile waits


class WorkspaceBusyConflict(Conflict):
    """The workspace's database stayed in use (an upload or a query, maybe in another process)."""

    def __init__(self) -> None:
        super().__init__("The workspace is busy with another upload or a query; try again in a moment.")


class DuplicateUpload(Conflict):
    """A file of this name was uploaded before; the caller must choose replace or keep both."""

    def __init__(self, filename: str, existing: list[Dataset]):
        self.filename = filename
        self.existing = existing
        names = ", ".join(d.table_name for d in existing)
        super().__init__(f"{filename} was uploaded before (as {names}). Replace it, or keep both?")


def _safe_filename(name: str) -> str:
    base = Path(name).name.strip() or "upload"
    return re.sub(r"[^A-Za-z0-9._ -]+", "_", base)[:120]


def list_datasets(*, session: Session, workspace_id: int) -> list[Dataset]:
    """The workspace's datasets, by table name."""
    return list(session.exec(select(Dataset).where(Dataset.workspace_id == workspace_id).order_by(Dataset.table_name)))


def get_dataset(*, session: Session, dataset_id: int) -> Dataset:
    """The dataset with this id; raises NotFound."""
    ds = session.get(Dataset, dataset_id)
    if ds is None:
        raise NotFound("That dataset no longer exists.")
    return ds


def replace_targets(same_file: list[Dataset]) -> list[Dataset]:
    """Which of the datasets from one file name a "replace" overwrites: the newest per worksheet
    (after "keep both" there may be several copies; older ones stay)."""
    newest: dict[str | None, Dataset] = {}
    for d in sorted(same_file, key=lambda d: (d.created_at, d.id)):
        newest[d.sheet_name] = d
    return sorted(newest.values(), key=lambda d: d.table_name)


def upload_file(
    *,
    session: Session,
    workspace_id: int,
    filename: str,
    data: bytes,
    on_conflict: OnConflict = "ask",
    date_order: str | None = None,
    include_hidden_sheets: bool = False,
    progress: ingest.Progress | None = None,
) -> list[Dataset]:
    """Keep and ingest one uploaded file; returns its datasets (one per CSV, one per worksheet).

    on_conflict: when datasets from a file of the same name exist, "ask" raises DuplicateUpload,
    "replace" re-uses the table names of the newest of them per worksheet (and drops their tables
    the new file no longer has; older copies kept with "keep both" stay),
    "keep_both" ingests beside them under new names. Worksheets a workbook hides are skipped (and
    named in the notes) unless ``include_hidden_sheets``. ``progress(fraction, text)`` hears how a
    long read goes (see `ingest.ingest_file`). Raises InvalidInput for empty or oversized
    files and ingest.IngestError (file name + problem) for files that can't be read.
    """
    ws = get_workspace(session=session, workspace_id=workspace_id)
    original = Path(filename).name or "upload"
    if not data:
        raise InvalidInput(f"{original}: the file is empty.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidInput(f"{original}: the file is larger than {MAX_UPLOAD_BYTES // 2**20} MB.")
    # One upload at a time per workspace: the same-name check, the table names, the ingest and the
    # rows all happen while this upload holds the workspace's writer (which excludes every other
    # connection to the file, in this process and in others), so two sessions can never both skip
    # the "replace or keep both?" question, nor pick the same table name and overwrite each
    # other's table. Ingest, stamps and drops re-enter the same writer.
    with _holding_writer(duckdb_path(ws.key)):
        session.expire_all()  # read what other sessions committed
        existing = list(session.exec(select(Dataset).where(Dataset.workspace_id == ws.id, Dataset.source_filename == original)))
        if existing and on_conflict == "ask":
            raise DuplicateUpload(original, existing)
        replacing = replace_targets(existing) if on_conflict == "replace" else []
        return _upload_locked(session, ws, original, data, replacing, date_order, include_hidden_sheets, progress)


@contextmanager
def _holding_writer(db_path: Path) -> Iterator[None]:
    """Hold the workspace's writer for the block; WorkspaceBusyConflict when it stays busy.

    Only the wait is translated: a WorkspaceBusy from inside the block (which re-enters the held
    writer and so never waits) would be a bug and propagates as is."""
    with ExitStack() as stack:
        try:
            stack.enter_context(writer(db_path, timeout_s=WRITE_WAIT_S))
        except WorkspaceBusy:
            raise WorkspaceBusyConflict() from None
        yield


def _upload_locked(
    session: Session,
    ws,
    original: str,
    data: bytes,
    replacing: list[Dataset],
    date_order: str | None,
    include_hidden: bool,
    progress: ingest.Progress | None = None,
) -> list[Dataset]:
    sha = hashlib.sha256(data).hexdigest()
    rel = f"uploads/{sha[:12]}-{_safe_filename(original)}"
    folder = workspace_dir(ws.key)
    kept = folder / rel
    was_there = kept.exists()
    write_atomic(kept, data)
    try:
        labels = ingest.sheet_labels(kept, original, include_hidden=include_hidden)
        old_by_label = {d.sheet_name: d for d in replacing}
        taken = {d.table_name for d in list_datasets(session=session, workspace_id=ws.id)} - {d.table_name for d in replacing}
        table_names: dict[str | None, str] = {}
        for label in labels:
            if label in old_by_label:
                name = old_by_label[label].table_name
            else:
                stem = Path(original).stem + (f"_{label}" if label is not None and len(labels) > 1 else "")
                name = ingest.safe_table_name(stem, taken)
            taken.add(name)
            table_names[label] = name
        # A replacement keeps the column types chosen for the file it replaces (next month's export).
        overrides = {label: old_by_label[label].column_overrides for label in table_names if label in old_by_label}
        tables = ingest.ingest_file(
            duckdb_path(ws.key),
            kept,
            original_name=original,
            table_names=table_names,
            date_order=date_order,
            overrides=overrides,
            progress=progress,
        )
        date_ranges = stamp_provenance(duckdb_path(ws.key), {t.table_name: sha for t in tables})
    except BaseException:
        if not was_there:
            kept.unlink(missing_ok=True)
        session.rollback()
        raise

    old_files = {d.file_path for d in replacing}
    dropped = [d for d in replacing if d.sheet_name not in table_names]
    out: list[Dataset] = []
    for t in tables:
        ds = old_by_label.get(t.sheet_name) or Dataset(workspace_id=ws.id, table_name=t.table_name, source_filename=original, column_overrides={})
        ds.table_name = t.table_name
        ds.sheet_name = t.sheet_name
        ds.file_path = rel
        ds.sha256 = sha
        ds.size_bytes = len(data)
        ds.row_count = t.row_count
        ds.columns = [{"name": c.name, "type": c.type} for c in t.columns]
        ds.notes = list(t.notes)
        ds.date_ranges = date_ranges.get(t.table_name, {})
        ds.date_order = t.date_order
        ds.ambiguous_date_columns = list(t.ambiguous_date_columns)
        ds.created_at = utcnow()
        session.add(ds)
        out.append(ds)
    for d in dropped:
        session.delete(d)
    session.commit()
    if dropped:
        _drop_tables(duckdb_path(ws.key), [d.table_name for d in dropped])
    for old in old_files - {rel}:
        _forget_file(session, folder, old)
    for ds in out:
        session.refresh(ds)
    return out


def set_date_order(*, session: Session, dataset_id: int, date_order: str) -> Dataset:
    """Re-read a dataset from its kept file with day/month order "DMY" or "MDY"; returns it updated."""
    if date_order not in ("DMY", "MDY"):
        raise InvalidInput("Date order must be DMY (day first) or MDY (month first).")
    ds = get_dataset(session=session, dataset_id=dataset_id)
    return _reingest(session, ds, date_order=date_order, overrides=ds.column_overrides)


COLUMN_TYPES: dict[str, str] = dict(ingest.OVERRIDE_TYPES)  # type key -> what the analyst reads ("whole numbers", ...)


def set_column_types(*, session: Session, dataset_id: int, overrides: dict[str, dict | None]) -> Dataset:
    """Set or clear column types chosen by the analyst, and re-read the dataset from its kept file.

    ``overrides`` maps a column name to a spec ``{"type": "text" | "integer" | "decimal" | "double"
    | "date" | "timestamp" | "boolean", "date_order": "DMY" | "MDY" | None, "decimal": "us" | "eu" |
    None}`` (see `ingest.check_override`), or to None to go back to the automatic type; columns not
    named keep what they had. The dataset's notes then say which columns were set and what did not
    fit (kept as text in ``<column>_raw``); the agent reads those notes with the table list.
    Raises InvalidInput for an unknown column or a bad spec, NotFound when the kept file is gone,
    WorkspaceBusyConflict when the workspace stays busy, IngestError when the file can't be read.
    """
    ds = get_dataset(session=session, dataset_id=dataset_id)
    known = {c["name"] for c in ds.columns} | set(ds.column_overrides)
    merged = dict(ds.column_overrides)
    for name, spec in overrides.items():
        if name not in known:
            raise InvalidInput(f"{ds.table_name} has no column named {name!r}.")
        if spec is None:
            merged.pop(name, None)
            continue
        try:
            merged[name] = ingest.check_override(spec)
        except ValueError as e:
            raise InvalidInput(f"Column {name!r}: {e}.") from None
    return _reingest(session, ds, date_order=ds.date_order, overrides=merged)


def _reingest(session: Session, ds: Dataset, *, date_order: str | None, overrides: dict[str, dict]) -> Dataset:
    """Read ``ds`` again from its kept file (same table name) and store what came out."""
    ws = get_workspace(session=session, workspace_id=ds.workspace_id)
    path = workspace_dir(ws.key) / ds.file_path
    if not path.exists():
        raise NotFound(f"The original of {ds.source_filename} is missing from the workspace folder.")
    with _holding_writer(duckdb_path(ws.key)):
        (t,) = ingest.ingest_file(
            duckdb_path(ws.key),
            path,
            original_name=ds.source_filename,
            table_names={ds.sheet_name: ds.table_name},
            date_order=date_order,
            overrides={ds.sheet_name: overrides},
        )
        ds.date_ranges = stamp_provenance(duckdb_path(ws.key), {t.table_name: ds.sha256}).get(t.table_name, {})
        ds.row_count = t.row_count
        ds.columns = [{"name": c.name, "type": c.type} for c in t.columns]
        ds.notes = list(t.notes)
        ds.date_order = t.date_order or date_order
        ds.ambiguous_date_columns = list(t.ambiguous_date_columns)
        ds.column_overrides = dict(overrides)
        session.add(ds)
        session.commit()
    session.refresh(ds)
    return ds


def delete_dataset(*, session: Session, dataset_id: int) -> None:
    """Delete a dataset: its row, its DuckDB table, and its kept file when no other dataset uses it.

    Past answers keep their results (artifacts hold their own Parquet files).
    """
    ds = get_dataset(session=session, dataset_id=dataset_id)
    ws = get_workspace(session=session, workspace_id=ds.workspace_id)
    with _holding_writer(duckdb_path(ws.key)):  # taken first: a busy workspace leaves the dataset as it was
        session.delete(ds)
        session.commit()
        _drop_tables(duckdb_path(ws.key), [ds.table_name])
        _forget_file(session, workspace_dir(ws.key), ds.file_path)


def _drop_tables(db_path: Path, tables: list[str]) -> None:
    with writer(db_path) as con:
        for t in tables:
            con.execute(f"DROP TABLE IF EXISTS {quote_ident(t)}")


def _forget_file(session: Session, folder: Path, rel: str) -> None:
    """Remove a kept upload once no dataset refers to it."""
    if session.exec(select(Dataset).where(Dataset.file_path == rel)).first() is None:
        (folder / rel).unlink(missing_ok=True)


def dataset_preview(*, session: Session, dataset_id: int, rows: int = 50) -> pd.DataFrame:
    """The first `rows` rows of the dataset's table."""
    ds = get_dataset(session=session, dataset_id=dataset_id)
    ws = get_workspace(session=session, workspace_id=ds.workspace_id)
    try:
        return preview(duckdb_path(ws.key), ds.table_name, rows, timeout_s=READ_WAIT_S)
    except WorkspaceBusy:
        raise WorkspaceBusyConflict() from None


def dataset_profile(*, session: Session, dataset_id: int) -> pd.DataFrame:
    """Per column: type, rows, nulls, null %, distinct, min, max (see analytics.profile)."""
    ds = get_dataset(session=session, dataset_id=dataset_id)
    ws = get_workspace(session=session, workspace_id=ds.workspace_id)
    try:
        return profile_table(duckdb_path(ws.key), ds.table_name, timeout_s=READ_WAIT_S)
    except WorkspaceBusy:
        raise WorkspaceBusyConflict() from None

