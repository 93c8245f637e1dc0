"""SQLModel tables: workspaces, datasets, threads, messages (a tree), artifacts.

Portable across SQLite and PostgreSQL: JSON columns, enums stored as checked VARCHARs (no native
PostgreSQL enum types to migrate), timestamps stored as naive UTC and read back timezone-aware.
The schema is owned by the Alembic migrations in `storage/migrations/`; a change here needs a
new revision there.

The conversation model. Messages belong to a workspace and form a tree through `parent_id`; a
thread is a named pointer (`head_message_id`) to a leaf, and its conversation is the path from the
root to that head. Forking creates a new thread whose head is an existing message, so it copies
nothing; a later turn in either thread adds children below its own head and so never shows in the
other. Messages are removed only when no thread's path reaches them any more.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from typing import Any

from sqlalchemy import JSON, Boolean, Column, DateTime, Enum, ForeignKey, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator):
    """A timestamp kept as naive UTC in the database (same text/column on SQLite and PostgreSQL, so
    SQL comparisons such as a lease's `expires_at < :now` agree) and returned timezone-aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _enum(enum_cls: type[StrEnum], name: str) -> Enum:
    """A portable enum column: VARCHAR(16) with a named CHECK constraint, values stored as text."""
    return Enum(
        enum_cls, name=name, native_enum=False, create_constraint=True, length=16, values_callable=lambda e: [m.value for m in e]
    )


def _json(nullable: bool = False) -> Column:
    """A JSON column; in a nullable one, Python None is SQL NULL (not the JSON text 'null')."""
    return Column(JSON(none_as_null=True), nullable=nullable)


def _ts(nullable: bool = False) -> Column:
    return Column(UtcDateTime(), nullable=nullable)


class Role(StrEnum):
    """Who wrote a message."""

    user = "user"
    assistant = "assistant"


class MessageStatus(StrEnum):
    """State of a message: an answer can be final, a clarifying question, or a turn that ended
    without one (failed, stopped by the analyst, interrupted by a crash or restart)."""

    ok = "ok"
    clarification = "clarification"
    failed = "failed"
    stopped = "stopped"
    interrupted = "interrupted"

    @property
    def answered(self) -> bool:
        """True for replies whose run history is replayed to the model (ok, clarification)."""
        return self in (MessageStatus.ok, MessageStatus.clarification)


class RunStatus(StrEnum):
    """Where a run (one agent turn executed by a worker) stands."""

    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    stopped = "stopped"
    interrupted = "interrupted"


class Workspace(SQLModel, table=True):
    """A named set of datasets and threads; its files live under `<home>/<key>/`."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=120)
    key: str = Field(unique=True, max_length=40, description="Folder name under the data home; never changes.")
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Dataset(SQLModel, table=True):
    """One ingested table: a CSV file or one worksheet of a workbook."""

    __table_args__ = (UniqueConstraint("workspace_id", "table_name"),)

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(sa_column=Column(Integer, ForeignKey("workspace.id", ondelete="CASCADE"), index=True, nullable=False))
    table_name: str = Field(max_length=80, description="SQL-safe DuckDB table name.")
    source_filename: str = Field(max_length=255, description="The uploaded file's name.")
    sheet_name: str | None = Field(default=None, max_length=255)
    file_path: str = Field(description="The kept original, relative to the workspace folder.")
    sha256: str = Field(max_length=64)
    size_bytes: int
    row_count: int
    columns: list[dict[str, str]] = Field(default_factory=list, sa_column=_json(), description='[{"name", "type"}] of the table.')
    notes: list[str] = Field(default_factory=list, sa_column=_json(), description="What ingest noticed and did.")
    date_order: str | None = Field(default=None, max_length=3, description="DMY or MDY when assumed.")
    ambiguous_date_columns: list[str] = Field(
        default_factory=list, sa_column=_json(), description="Columns whose day/month order was assumed."
    )
    column_overrides: dict[str, dict] = Field(
        default_factory=dict,
        sa_column=_json(),
        description='{column: {"type", "date_order", "decimal"}} chosen on the Data page (ingest.check_override).',
    )
    date_ranges: dict[str, list] = Field(
        default_factory=dict,
        sa_column=_json(),
        description='{column: ["YYYY-MM-DD" first, "YYYY-MM-DD" last]} per DATE/TIMESTAMP column, read at ingest (the agent is told where the data ends).',
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Thread(SQLModel, table=True):
    """A conversation: the path from the root message to `head_message_id`."""

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(sa_column=Column(Integer, ForeignKey("workspace.id", ondelete="CASCADE"), index=True, nullable=False))
    title: str = Field(max_length=200)
    head_message_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("message.id", ondelete="SET NULL", use_alter=True), nullable=True)
    )
    # Lineage, kept as plain values so deleting the source never changes the fork.
    forked_from_thread_id: int | None = Field(default=None)
    forked_from_thread_title: str | None = Field(default=None, max_length=200)
    forked_from_message_id: int | None = Field(default=None)
    archived_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True), description="Set while the thread is archived.")
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Message(SQLModel, table=True):
    """A node of the workspace's conversation tree.

    For an assistant message, `model_messages` holds the run's full pydantic-ai history
    (`result.new_messages()` as JSON: the user prompt, tool calls and returns, the output), so any
    path can be replayed to the model exactly; `output` holds the structured output.
    """

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(sa_column=Column(Integer, ForeignKey("workspace.id", ondelete="CASCADE"), index=True, nullable=False))
    parent_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("message.id", ondelete="CASCADE"), index=True, nullable=True)
    )
    # The thread whose turn wrote it (a plain value like the fork lineage: deleting the thread
    # leaves it). In-thread branches are the siblings written in the same thread; None for
    # messages older than revision 0006 that no run names.
    thread_id: int | None = Field(default=None, index=True)
    role: Role = Field(sa_column=Column(_enum(Role, "message_role"), nullable=False))
    status: MessageStatus = Field(default=MessageStatus.ok, sa_column=Column(_enum(MessageStatus, "message_status"), nullable=False))
    content: str = Field(sa_column=Column(Text, nullable=False), description="Markdown shown to the user.")
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    output: dict[str, Any] | None = Field(default=None, sa_column=_json(nullable=True), description="The structured output.")
    model_messages: list[dict[str, Any]] | None = Field(
        default=None, sa_column=_json(nullable=True), description="The run's pydantic-ai messages (ModelMessagesTypeAdapter JSON)."
    )
    model_name: str | None = Field(default=None, max_length=200)
    duration_s: float | None = Field(default=None, description="Run wall time, seconds.")
    input_tokens: int | None = None
    output_tokens: int | None = None
    glossary_version: int | None = Field(
        default=None, description="The workspace glossary version the turn's instructions carried (0: empty glossary)."
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class GlossaryEntry(SQLModel, table=True):
    """One change to a workspace's glossary: a term defined, redefined or removed.

    The glossary is versioned as a log: every change is a new row with the workspace's next
    `version` (1, 2, ...); rows are never updated. The glossary at version V holds, per term, the
    newest row with `version <= V`, unless that row removes the term (`definition` is None). A
    turn records the version its instructions carried (`Message.glossary_version`), so what the
    model was told stays readable after later edits. `term_key` is the term folded to lower case
    with single spaces: "Active customer" and "active  customer" are one term.
    """

    __tablename__ = "glossary_entry"
    __table_args__ = (UniqueConstraint("workspace_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(sa_column=Column(Integer, ForeignKey("workspace.id", ondelete="CASCADE"), index=True, nullable=False))
    version: int = Field(description="The workspace glossary version this change created (1, 2, ...).")
    term: str = Field(max_length=120, description="The term as the analyst wrote it, e.g. 'Active customer'.")
    term_key: str = Field(max_length=120, index=True)
    definition: str | None = Field(default=None, sa_column=Column(Text, nullable=True), description="None: the term was removed.")
    source: str = Field(default="settings", max_length=40, description="Where it was set: settings, clarification (message id in source_message_id).")
    source_message_id: int | None = Field(default=None)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Artifact(SQLModel, table=True):
    """Something a run produced, with its provenance. `kind`:

    - "query_result": one query's full result; `file_path` is its Parquet file, `sql` its query.
    - "chart": a chart spec (`spec`, deliverables/charts.py) drawn from one result; `file_path`
      is that result's Parquet file (re-drawing reads it, never re-runs SQL), `sql` its query.
    - "workbook": an Excel workbook (`spec`, deliverables/workbook.py); `file_path` is the .xlsx.

    Charts and workbooks are handled c1, c2 ... and w1, w2 ... along the conversation's path.
    """

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(sa_column=Column(Integer, ForeignKey("workspace.id", ondelete="CASCADE"), index=True, nullable=False))
    message_id: int = Field(sa_column=Column(Integer, ForeignKey("message.id", ondelete="CASCADE"), index=True, nullable=False))
    kind: str = Field(default="query_result", max_length=40, index=True)
    handle: str = Field(max_length=40, description="The run's name for it, e.g. q1.")
    title: str = Field(max_length=500, description="The purpose the agent gave.")
    sql: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    file_path: str = Field(description="Relative to the workspace folder.")
    row_count: int = Field(default=0)
    truncated: bool = Field(default=False, description="True when rows beyond the result row limit were not kept.")
    columns: list[dict[str, str]] = Field(default_factory=list, sa_column=_json(), description='[{"name", "type"}] of the result.')
    datasets_read: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=_json(), description='[{"table", "dataset_id", "sha256", "source"}] the query read.'
    )
    duration_s: float | None = Field(default=None, description="Query time, seconds.")
    spec: dict[str, Any] | None = Field(default=None, sa_column=_json(nullable=True), description="A chart's or workbook's spec (JSON).")
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Run(SQLModel, table=True):
    """One agent turn as a job: queued by the page, claimed and executed by a worker (any process).

    A run either asks a new question (`prompt` set; the user message is created when the run
    starts, under the thread's head at that moment, so queued questions keep their order) or
    answers an existing question (`user_message_id` set: Retry, or a question forked open).
    `progress` is rewritten as the run goes (one step more each time): [{"kind", "tool", "purpose", "sql", "row_count",
    "error", "at_s"}] with `at_s` in seconds since the run started. `owner` names the worker
    (host:pid:token) holding the thread's lease while running; `run_dir` is the run's result folder
    relative to the workspace folder (removed when the run does not end with an answer).
    """

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(sa_column=Column(Integer, ForeignKey("workspace.id", ondelete="CASCADE"), index=True, nullable=False))
    thread_id: int = Field(sa_column=Column(Integer, ForeignKey("thread.id", ondelete="CASCADE"), index=True, nullable=False))
    prompt: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    user_message_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("message.id", ondelete="SET NULL"), index=True, nullable=True)
    )
    reply_message_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("message.id", ondelete="SET NULL"), index=True, nullable=True)
    )
    status: RunStatus = Field(default=RunStatus.queued, sa_column=Column(_enum(RunStatus, "run_status"), index=True, nullable=False))
    owner: str | None = Field(default=None, max_length=120)
    stop_requested: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, default=False))
    run_dir: str | None = Field(default=None, max_length=200)
    progress: list[dict[str, Any]] = Field(default_factory=list, sa_column=_json())
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    started_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    finished_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class ThreadLease(SQLModel, table=True):
    """The right to run in a thread: at most one row per thread (its primary key), so at most one
    run per thread across every process sharing the store.

    Taken by inserting the row (a second insert fails), kept alive by the owner's heartbeat
    (`expires_at` pushed forward), dropped with the run's final commit. A lease whose `expires_at`
    passed belongs to a dead worker: the recovery sweep deletes it (compare-and-set on the row)
    and marks its run interrupted in the same transaction.
    """

    __tablename__ = "thread_lease"

    thread_id: int = Field(sa_column=Column(Integer, ForeignKey("thread.id", ondelete="CASCADE"), primary_key=True))
    run_id: int = Field(sa_column=Column(Integer, ForeignKey("run.id", ondelete="CASCADE"), nullable=False))
    owner: str = Field(sa_column=Column(String(120), nullable=False))
    expires_at: datetime = Field(sa_column=_ts())
    heartbeat_at: datetime = Field(sa_column=_ts())
