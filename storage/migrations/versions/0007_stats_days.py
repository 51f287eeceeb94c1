"""stats days: per-day ticket figures for long statistics periods, invalidated by a trigger

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The columns GET /stats reads. A change to one of them in a ticket of a closed day (before today, UTC) bumps
# that day's version, which invalidates its cached figures; today's tickets are never cached, so the hot path
# (new tickets, their first changes) only evaluates the condition.
COLUMNS = "department, status, priority, channel, classifier, confidence, resolved_at"

SQLITE_TRIGGER = f"""
CREATE TRIGGER tickets_stats_days AFTER UPDATE OF {COLUMNS} ON tickets
WHEN OLD.created_at < date('now')
BEGIN
    INSERT INTO stats_days (day, version) VALUES (substr(OLD.created_at, 1, 10), 1)
    ON CONFLICT (day) DO UPDATE SET version = version + 1;
END
"""

PG_FUNCTION = """
CREATE FUNCTION tickets_stats_days() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d date := (OLD.created_at AT TIME ZONE 'UTC')::date;
BEGIN
    IF d < (now() AT TIME ZONE 'UTC')::date THEN
        INSERT INTO stats_days (day, version) VALUES (d, 1)
        ON CONFLICT (day) DO UPDATE SET version = stats_days.version + 1;
    END IF;
    RETURN NULL;
END
$$
"""

PG_TRIGGER = f"""
CREATE TRIGGER tickets_stats_days AFTER UPDATE OF {COLUMNS} ON tickets
FOR EACH ROW EXECUTE FUNCTION tickets_stats_days()
"""


def upgrade() -> None:
    op.create_table(
        "stats_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cached_version", sa.Integer(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_stats_days")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
    else:
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS tickets_stats_days" + (" ON tickets" if _pg() else ""))
    if _pg():
        op.execute("DROP FUNCTION IF EXISTS tickets_stats_days()")
    op.drop_table("stats_days")


def _pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"
