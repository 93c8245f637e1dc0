"""Deliverables: charts and workbooks are artifacts with a spec.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

- artifact.spec: JSON, null (query results have none).
- index on artifact.kind (the Artifacts page filters by it).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("artifact") as batch:
        batch.add_column(sa.Column("spec", sa.JSON(), nullable=True))
        batch.create_index("ix_artifact_kind", ["kind"])


def downgrade() -> None:
    with op.batch_alter_table("artifact") as batch:
        batch.drop_index("ix_artifact_kind")
        batch.drop_column("spec")
