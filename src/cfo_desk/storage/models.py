"""SQLModel tables: workspaces, datasets, threads, messages (a tree), artifacts.

Portable across SQLite and PostgreSQL: plain types, JSON as text columns, timestamps in UTC.

The conversation model. Messages belong to a workspace and form a tree through `parent_id`; a
thread is a named pointer (`head_message_id`) to a leaf, and its conversation is the path from the
root to that head. Forking creates a new thread whose head is an existing message, so it copies
nothing; a later turn in either thread adds children below its own head and so never shows in the
other. Messages are removed only when no thread's path reaches them any more.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Column, ForeignKey, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


class Role(StrEnum):
    """Who wrote a message."""

    user = "user"
    assistant = "assistant"


class MessageStatus(StrEnum):
    """State of a message: answers can be final, a clarifying question, or a failed run."""

    ok = "ok"
    clarification = "clarification"
    failed = "failed"


class Workspace(SQLModel, table=True):
    """A named set of datasets and threads; its files live under `<home>/<key>/`."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=120)
    key: str = Field(unique=True, max_length=40, description="Folder name under the data home; never changes.")
    created_at: datetime = Field(default_factory=utcnow)


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
    columns_json: str = Field(sa_column=Column(Text, nullable=False), description='[{"name", "type"}]')
    notes_json: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    date_order: str | None = Field(default=None, max_length=3, description="DMY or MDY when assumed.")
    ambiguous_date_columns_json: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    created_at: datetime = Field(default_factory=utcnow)


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
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Message(SQLModel, table=True):
    """A node of the workspace's conversation tree.

    For an assistant message, `model_messages_json` holds the run's full pydantic-ai history
    (`result.new_messages_json()`: the user prompt, tool calls and returns, the output), so any path
    can be replayed to the model exactly; `output_json` holds the structured output.
    """

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(sa_column=Column(Integer, ForeignKey("workspace.id", ondelete="CASCADE"), index=True, nullable=False))
    parent_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("message.id", ondelete="CASCADE"), index=True, nullable=True)
    )
    role: str = Field(max_length=16, description="A Role value.")
    status: str = Field(default=MessageStatus.ok.value, max_length=16, description="A MessageStatus value.")
    content: str = Field(sa_column=Column(Text, nullable=False), description="Markdown shown to the user.")
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    output_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    model_messages_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    model_name: str | None = Field(default=None, max_length=200)
    duration_s: float | None = Field(default=None, description="Run wall time, seconds.")
    input_tokens: int | None = None
    output_tokens: int | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Artifact(SQLModel, table=True):
    """A file produced by a run, e.g. one query's full result as Parquet, with its provenance."""

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(sa_column=Column(Integer, ForeignKey("workspace.id", ondelete="CASCADE"), index=True, nullable=False))
    message_id: int = Field(sa_column=Column(Integer, ForeignKey("message.id", ondelete="CASCADE"), index=True, nullable=False))
    kind: str = Field(default="query_result", max_length=40)
    handle: str = Field(max_length=40, description="The run's name for it, e.g. q1.")
    title: str = Field(max_length=500, description="The purpose the agent gave.")
    sql: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    file_path: str = Field(description="Relative to the workspace folder.")
    row_count: int = Field(default=0)
    truncated: bool = Field(default=False, description="True when rows beyond the result row limit were not kept.")
    columns_json: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    datasets_json: str = Field(
        default="[]", sa_column=Column(Text, nullable=False, default="[]"), description='[{"table", "dataset_id", "sha256", "source"}]'
    )
    duration_s: float | None = Field(default=None, description="Query time, seconds.")
    created_at: datetime = Field(default_factory=utcnow)
