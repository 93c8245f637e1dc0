"""Figures you can trust: the workspace glossary, the glossary version of each turn, the date range
of each dataset's date columns.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

- glossary_entry: a log of glossary changes (one row per change, versioned per workspace).
- message.glossary_version: INTEGER, null for turns before this revision.
- dataset.date_ranges: JSON, not null, '{}' for existing datasets (filled on the next re-ingest;
  the agent is told the range is unknown until then).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "glossary_entry",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("workspace_id", sa.Integer(), sa.ForeignKey("workspace.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("term", sa.String(length=120), nullable=False),
        sa.Column("term_key", sa.String(length=120), nullable=False),
        sa.Column("definition", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("source_message_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),  # naive UTC, as the models' UtcDateTime
        sa.UniqueConstraint("workspace_id", "version"),
    )
    op.create_index("ix_glossary_entry_workspace_id", "glossary_entry", ["workspace_id"])
    op.create_index("ix_glossary_entry_term_key", "glossary_entry", ["term_key"])
    with op.batch_alter_table("message") as batch:
        batch.add_column(sa.Column("glossary_version", sa.Integer(), nullable=True))
    with op.batch_alter_table("dataset") as batch:
        batch.add_column(sa.Column("date_ranges", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    with op.batch_alter_table("dataset") as batch:
        batch.alter_column("date_ranges", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("dataset") as batch:
        batch.drop_column("date_ranges")
    with op.batch_alter_table("message") as batch:
        batch.drop_column("glossary_version")
    op.drop_index("ix_glossary_entry_term_key", table_name="glossary_entry")
    op.drop_index("ix_glossary_entry_workspace_id", table_name="glossary_entry")
    op.drop_table("glossary_entry")
