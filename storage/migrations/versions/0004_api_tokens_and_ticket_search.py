"""api tokens and ticket search

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 06:40:00
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

# GET /api/v1/tickets filters, each ordered like the list (newest created_at first).
FILTER_INDEXES = {
    "ix_tickets_status_created_at": ["status", "created_at"],
    "ix_tickets_priority_created_at": ["priority", "created_at"],
    "ix_tickets_channel_created_at": ["channel", "created_at"],
    "ix_tickets_requester_created_at": ["requester", "created_at"],
    # Replaces ix_tickets_department_status (its prefix): also serves department + status in list order.
    "ix_tickets_department_status_created_at": ["department", "status", "created_at"],
    # GET /api/v1/stats: every column it reads, so a period is an index-only scan.
    "ix_tickets_stats": [
        "created_at",
        "department",
        "status",
        "priority",
        "channel",
        "classifier",
        "confidence",
        "resolved_at",
    ],
}
SEARCH_INDEXES = {"ix_tickets_subject_trgm": "subject", "ix_tickets_body_trgm": "body"}


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("digest", name=op.f("uq_api_tokens_digest")),
    )
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index("ix_tickets_department_status")
        for name, columns in FILTER_INDEXES.items():
            batch_op.create_index(name, columns, unique=False)
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        opclass = trigram_opclass(bind)
        for name, column in SEARCH_INDEXES.items():
            if opclass is None:
                continue
            op.execute(f"CREATE INDEX {name} ON tickets USING gin ({column} {opclass})")
    else:
        # SQLite: ?q= is a LIKE scan; these empty partial indexes only keep the schema equal to the tables.
        for name, column in SEARCH_INDEXES.items():
            op.execute(f"CREATE INDEX {name} ON tickets ({column}) WHERE 0")


def trigram_opclass(bind: sa.Connection) -> str | None:
    """``<schema>.gin_trgm_ops``, creating the pg_trgm extension in ``public`` when it is missing.

    Qualified because the extension may live outside the search path (the tests give each run a schema of its
    own). None when the extension cannot be created (not installed, or no permission): search still works,
    without an index, and the log says so.
    """
    find = sa.text(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
    )
    schema = bind.execute(find).scalar_one_or_none()
    if schema is None:
        try:
            with bind.begin_nested():
                bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public"))
        except sa.exc.DBAPIError as exc:  # another migration created it meanwhile, or we may not
            log.warning("pg_trgm is not available (%s); free-text search will scan", str(exc).splitlines()[0])
        schema = bind.execute(find).scalar_one_or_none()
    return f'"{schema}".gin_trgm_ops' if schema else None


def downgrade() -> None:
    for name in SEARCH_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        for name in FILTER_INDEXES:
            batch_op.drop_index(name)
        batch_op.create_index("ix_tickets_department_status", ["department", "status"], unique=False)
    op.drop_table("api_tokens")
