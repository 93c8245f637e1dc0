"""Baseline: the schema the first release created with `SQLModel.metadata.create_all`.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Exactly what the first release's models produced (the types SQLModel derived from the fields):
JSON kept as text in `*_json` columns, role/status as unchecked VARCHAR(16), `str` fields without
`max_length` as VARCHAR, and `datetime` fields as SQLModel's UTCDateTime, i.e.
`DateTime(timezone=True)`: TIMESTAMP WITH TIME ZONE on PostgreSQL, DATETIME on SQLite. A store
made by the first release (no `alembic_version` table) is stamped with this revision on start.
Frozen: never edit it, add a revision.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workspace",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index("ix_workspace_name", "workspace", ["name"], unique=True)

    op.create_table(
        "dataset",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("table_name", sa.String(length=80), nullable=False),
        sa.Column("source_filename", sa.String(length=255), nullable=False),
        sa.Column("sheet_name", sa.String(length=255), nullable=True),
        sa.Column("file_path", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("columns_json", sa.Text(), nullable=False),
        sa.Column("notes_json", sa.Text(), nullable=False),
        sa.Column("date_order", sa.String(length=3), nullable=True),
        sa.Column("ambiguous_date_columns_json", sa.Text(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace_id", "table_name"),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_dataset_workspace_id", "dataset", ["workspace_id"], unique=False)

    op.create_table(
        "message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("output_json", sa.Text(), nullable=True),
        sa.Column("model_messages_json", sa.Text(), nullable=True),
        sa.Column("model_name", sa.String(length=200), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["parent_id"], ["message.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_message_parent_id", "message", ["parent_id"], unique=False)
    op.create_index("ix_message_workspace_id", "message", ["workspace_id"], unique=False)

    # The first release declared head_message_id's FK with use_alter (thread and message refer to
    # each other); created after `message`, it can simply be part of CREATE TABLE. PostgreSQL
    # names it thread_head_message_id_fkey either way.
    op.create_table(
        "thread",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("head_message_id", sa.Integer(), nullable=True),
        sa.Column("forked_from_thread_id", sa.Integer(), nullable=True),
        sa.Column("forked_from_thread_title", sa.String(length=200), nullable=True),
        sa.Column("forked_from_message_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["head_message_id"], ["message.id"], ondelete="SET NULL"),
    )
    op.create_index("ix_thread_workspace_id", "thread", ["workspace_id"], unique=False)

    op.create_table(
        "artifact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("handle", sa.String(length=40), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("sql", sa.Text(), nullable=True),
        sa.Column("file_path", sa.String(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("columns_json", sa.Text(), nullable=False),
        sa.Column("datasets_json", sa.Text(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_artifact_message_id", "artifact", ["message_id"], unique=False)
    op.create_index("ix_artifact_workspace_id", "artifact", ["workspace_id"], unique=False)


def downgrade() -> None:
    op.drop_table("artifact")
    op.drop_table("thread")
    op.drop_table("message")
    op.drop_table("dataset")
    op.drop_table("workspace")
