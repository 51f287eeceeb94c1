"""sqlite ticket search: a trigram index for free-text search on SQLite (PostgreSQL has pg_trgm since 0004)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 15:00:00
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

# Contentless (content=''): the index keeps trigram -> ticket ids only, the text stays in tickets. detail=none
# and columnsize=0: no positions, no lengths. That makes it small (~100 MiB per million short tickets) and
# cheap to keep (~20 us a ticket), at the price of answering "has every trigram of the text" rather than "has
# the text": storage/search.py uses it for candidates and checks each one with the LIKE the scan would use.
CREATE_TABLE = (
    "CREATE VIRTUAL TABLE ticket_search USING fts5("
    "subject, body, content='', tokenize='trigram', detail=none, columnsize=0)"
)
# A contentless table forgets a row only when told its old text, which the triggers have. Tickets' subject and
# body are written once today; the update and delete triggers keep the index right if that ever changes.
# Imports (the only tickets with an external_key) index each batch with one statement of their own
# (storage/imports.py): FTS5 flushes its pending terms at every statement boundary, and a trigger firing per
# row made that a flush, and a tiny segment to merge later, per imported row (4x the cost of the batch insert).
TRIGGERS = (
    """CREATE TRIGGER ticket_search_insert AFTER INSERT ON tickets WHEN NEW.external_key IS NULL BEGIN
    INSERT INTO ticket_search (rowid, subject, body) VALUES (NEW.id, NEW.subject, NEW.body);
END""",
    """CREATE TRIGGER ticket_search_update AFTER UPDATE OF subject, body ON tickets BEGIN
    INSERT INTO ticket_search (ticket_search, rowid, subject, body) VALUES ('delete', OLD.id, OLD.subject, OLD.body);
    INSERT INTO ticket_search (rowid, subject, body) VALUES (NEW.id, NEW.subject, NEW.body);
END""",
    """CREATE TRIGGER ticket_search_delete AFTER DELETE ON tickets BEGIN
    INSERT INTO ticket_search (ticket_search, rowid, subject, body) VALUES ('delete', OLD.id, OLD.subject, OLD.body);
END""",
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    try:
        with bind.begin_nested():
            bind.execute(sa.text(CREATE_TABLE))
    except sa.exc.OperationalError as exc:  # an SQLite built without FTS5 (or older than 3.34: no trigram)
        log.warning("SQLite FTS5 trigram search is not available (%s); free-text search will scan", exc.orig)
        return
    for trigger in TRIGGERS:
        bind.execute(sa.text(trigger))
    # Existing tickets, in one statement: about 20 s per million short tickets.
    bind.execute(sa.text("INSERT INTO ticket_search (rowid, subject, body) SELECT id, subject, body FROM tickets"))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name in ("ticket_search_insert", "ticket_search_update", "ticket_search_delete"):
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.execute("DROP TABLE IF EXISTS ticket_search")
