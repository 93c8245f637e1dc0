"""Runs and thread leases; JSON columns; role/status checked; timestamps as naive UTC.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21

- JSON kept as text becomes real JSON columns under the models' names (values are kept):
  dataset.columns_json/notes_json/ambiguous_date_columns_json -> columns/notes/
  ambiguous_date_columns, message.output_json/model_messages_json -> output/model_messages,
  artifact.columns_json/datasets_json -> columns/datasets_read.
- message.role/status stay VARCHAR(16) and get the CHECK constraints of the models' non-native
  enums (`message_role`, `message_status`).
- Timestamps: the models' UtcDateTime keeps naive UTC in a plain DateTime column. SQLite already
  stores exactly that (DATETIME text without offset), PostgreSQL had TIMESTAMP WITH TIME ZONE:
  converted to TIMESTAMP (WITHOUT TIME ZONE) holding the same instant's UTC wall time.
- New tables `run` and `thread_lease`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> [(old text column, new JSON column, nullable)]
JSON_COLUMNS = {
    "dataset": [
        ("columns_json", "columns", False),
        ("notes_json", "notes", False),
        ("ambiguous_date_columns_json", "ambiguous_date_columns", False),
    ],
    "message": [("output_json", "output", True), ("model_messages_json", "model_messages", True)],
    "artifact": [("columns_json", "columns", False), ("datasets_json", "datasets_read", False)],
}

TIMESTAMPS = {
    "workspace": ["created_at"],
    "dataset": ["created_at"],
    "thread": ["created_at", "updated_at"],
    "message": ["created_at"],
    "artifact": ["created_at"],
}

MESSAGE_CHECKS = {
    "message_role": "role IN ('user', 'assistant')",
    "message_status": "status IN ('ok', 'clarification', 'failed', 'stopped', 'interrupted')",
}
RUN_STATUS_CHECK = "status IN ('queued', 'running', 'done', 'failed', 'stopped', 'interrupted')"


def _is_postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def _timestamp_columns_with_time_zone() -> dict[str, list[str]]:
    """PostgreSQL: the TIMESTAMPTZ columns among TIMESTAMPS (all of them on a first-release store;
    offline SQL generation assumes that)."""
    if context.is_offline_mode():
        return TIMESTAMPS
    insp = sa.inspect(op.get_bind())
    out: dict[str, list[str]] = {}
    for table, names in TIMESTAMPS.items():
        cols = {c["name"]: c["type"] for c in insp.get_columns(table)}
        tz = [n for n in names if getattr(cols[n], "timezone", False)]
        if tz:
            out[table] = tz
    return out


def upgrade() -> None:
    postgresql = _is_postgresql()
    if postgresql:
        # Same instant, stored as its UTC wall time (what UtcDateTime writes and expects).
        for table, names in _timestamp_columns_with_time_zone().items():
            for name in names:
                op.alter_column(
                    table,
                    name,
                    type_=sa.DateTime(),
                    existing_type=sa.DateTime(timezone=True),
                    existing_nullable=False,
                    postgresql_using=f"{name} AT TIME ZONE 'UTC'",
                )

    # SQLite: one table copy per table (batch mode); the values are copied as they are (valid JSON
    # text). PostgreSQL: ALTER ... TYPE JSON USING col::json, then RENAME.
    for table, columns in JSON_COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for old, new, nullable in columns:
                batch.alter_column(
                    old,
                    new_column_name=new,
                    type_=sa.JSON(),
                    existing_type=sa.Text(),
                    existing_nullable=nullable,
                    postgresql_using=f"{old}::json",
                )
            if table == "message":
                for name, condition in MESSAGE_CHECKS.items():
                    batch.create_check_constraint(name, condition)

    op.create_table(
        "run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("thread_id", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("user_message_id", sa.Integer(), nullable=True),
        sa.Column("reply_message_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=120), nullable=True),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("run_dir", sa.String(length=200), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["thread_id"], ["thread.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_message_id"], ["message.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["reply_message_id"], ["message.id"], ondelete="SET NULL"),
        sa.CheckConstraint(RUN_STATUS_CHECK, name="run_status"),
    )
    op.create_index("ix_run_workspace_id", "run", ["workspace_id"], unique=False)
    op.create_index("ix_run_thread_id", "run", ["thread_id"], unique=False)
    op.create_index("ix_run_reply_message_id", "run", ["reply_message_id"], unique=False)
    op.create_index("ix_run_user_message_id", "run", ["user_message_id"], unique=False)
    op.create_index("ix_run_status", "run", ["status"], unique=False)

    op.create_table(
        "thread_lease",
        sa.Column("thread_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=120), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("thread_id"),
        sa.ForeignKeyConstraint(["thread_id"], ["thread.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="CASCADE"),
    )


def downgrade() -> None:
    """Back to 0001 keeping the data (runs and leases are dropped; a message status the first
    release did not know, stopped or interrupted, is kept as text)."""
    op.drop_table("thread_lease")
    op.drop_table("run")  # its indexes go with it

    for table, columns in JSON_COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            if table == "message":
                for name in MESSAGE_CHECKS:
                    batch.drop_constraint(name, type_="check")
            for old, new, nullable in columns:
                batch.alter_column(
                    new,
                    new_column_name=old,
                    type_=sa.Text(),
                    existing_type=sa.JSON(),
                    existing_nullable=nullable,
                    postgresql_using=f"{new}::text",
                )

    if _is_postgresql():
        for table, names in TIMESTAMPS.items():
            for name in names:
                op.alter_column(
                    table,
                    name,
                    type_=sa.DateTime(timezone=True),
                    existing_type=sa.DateTime(),
                    existing_nullable=False,
                    postgresql_using=f"{name} AT TIME ZONE 'UTC'",
                )
