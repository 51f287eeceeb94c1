"""digest queries

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 06:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As storage.tables.OPEN_TICKETS when this migration was written (a migration never changes with the code).
OPEN_TICKETS = "status IN ('new', 'in_progress', 'waiting')"


def upgrade() -> None:
    # Digests count a department's tickets per period and take medians over first actions (storage/digests.py).
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.create_index("ix_tickets_department_created_at", ["department", "created_at"], unique=False)
        batch_op.create_index("ix_tickets_first_action_at", ["first_action_at"], unique=False)
        batch_op.create_index(
            "ix_tickets_open",
            ["department", "status", "priority", "created_at", "updated_at", "assignee"],
            unique=False,
            sqlite_where=sa.text(OPEN_TICKETS),
            postgresql_where=sa.text(OPEN_TICKETS),
        )
    # Each run records its window, so the next digest covers "since the last digest" even after a skipped one.
    with op.batch_alter_table("digest_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("starts_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("digest_runs", schema=None) as batch_op:
        batch_op.drop_column("ends_at")
        batch_op.drop_column("starts_at")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index("ix_tickets_open")
        batch_op.drop_index("ix_tickets_first_action_at")
        batch_op.drop_index("ix_tickets_department_created_at")
