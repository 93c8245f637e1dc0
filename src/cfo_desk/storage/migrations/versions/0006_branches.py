"""Branches inside a thread: each message names the thread that wrote it; threads can be archived.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22

- message.thread_id: INTEGER, null, indexed; filled for existing messages from the runs that wrote
  them (a question from its run's user_message_id, an answer from its reply_message_id).
- thread.archived_at: timestamp, null (naive UTC, as every timestamp here).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("message") as batch:
        batch.add_column(sa.Column("thread_id", sa.Integer(), nullable=True))
        batch.create_index("ix_message_thread_id", ["thread_id"])
    with op.batch_alter_table("thread") as batch:
        batch.add_column(sa.Column("archived_at", sa.DateTime(), nullable=True))
    op.execute(
        "UPDATE message SET thread_id = (SELECT min(run.thread_id) FROM run "
        "WHERE run.reply_message_id = message.id OR run.user_message_id = message.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("thread") as batch:
        batch.drop_column("archived_at")
    with op.batch_alter_table("message") as batch:
        batch.drop_index("ix_message_thread_id")
        batch.drop_column("thread_id")
