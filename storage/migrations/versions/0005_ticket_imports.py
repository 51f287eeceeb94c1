"""ticket imports

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 06:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # An imported ticket keeps its row's dedupe key (external id or content hash); unique, so a re-import
    # inserts nothing twice. NULL for tickets the pipeline created (NULLs never collide on either engine).
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("external_key", sa.String(length=200), nullable=True))
        batch_op.create_unique_constraint("uq_tickets_external_key", ["external_key"])


def downgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_constraint("uq_tickets_external_key", type_="unique")
        batch_op.drop_column("external_key")
