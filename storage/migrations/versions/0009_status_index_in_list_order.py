"""status index in list order: (status, created_at, id) replaces (status, created_at)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 01:10:00

``GET /api/v1/tickets?status=…`` lists newest first by (created_at, id). Without ``id`` the index gave the order
only up to created_at, and PostgreSQL's planner preferred to scan ``ix_tickets_stats`` newest first and filter:
fine while the statuses are spread evenly over time, but in a helpdesk the newest tickets are mostly open, so
asking for waiting or resolved ones read past every recent open ticket (222 ms with 143,000 of them, against
0.1 ms with this index; docs/api.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_tickets_status_created_at_id", "tickets", ["status", "created_at", "id"], unique=False)
    op.drop_index("ix_tickets_status_created_at", table_name="tickets")


def downgrade() -> None:
    op.create_index("ix_tickets_status_created_at", "tickets", ["status", "created_at"], unique=False)
    op.drop_index("ix_tickets_status_created_at_id", table_name="tickets")
