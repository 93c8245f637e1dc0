"""Dataset column overrides: the types an analyst chose on the Data page.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21

- dataset.column_overrides: JSON, not null, '{}' for every existing dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dataset") as batch:
        batch.add_column(sa.Column("column_overrides", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    with op.batch_alter_table("dataset") as batch:
        batch.alter_column("column_overrides", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("dataset") as batch:
        batch.drop_column("column_overrides")
