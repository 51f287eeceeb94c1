"""Storage adapter for bulk import: validated rows become tickets with an "imported" event, idempotent by key."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Json
from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.exc import SQLAlchemyError

from core.errors import StorageError
from core.message import Channel
from core.ticket import EventKind, Priority, Status
from storage import search, stats_days
from storage.tables import TicketEventRow, TicketRow

TICKETS: Table = TicketRow.__table__  # type: ignore[assignment]
EVENTS: Table = TicketEventRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class ImportedTicket:
    """One validated import row, ready to insert; ``key`` is its dedupe key (unique in ``tickets.external_key``)."""

    key: str
    subject: str
    body: str
    requester: str
    channel: Channel
    department: str
    priority: Priority
    status: Status
    confidence: float
    summary: str
    classifier: str
    created_at: datetime
    updated_at: datetime
    requester_name: str = ""
    assignee: str | None = None
    resolved_at: datetime | None = None
    triaged: bool = False
    classifier_model: str | None = None
    # The data of the ticket's "imported" event: source, format, row number, what was classified.
    event: dict[str, Any] = field(default_factory=dict)
    # SQLite: the row's values as the insert binds them, its event's data last (a JSON array), worked out by
    # ``SqlImportStore.encode`` on the reading thread, so the writing thread only waits on SQLite.
    bound: str | None = None


class SqlImportStore:
    """Bulk insert for imports on SQLite or PostgreSQL; each ``insert`` call is one transaction.

    The ORM (and even SQLAlchemy Core's executemany) costs more per row than the database does, so the
    batch goes through the driver: PostgreSQL COPYs it into a temporary table and moves it with one
    INSERT ... SELECT ... ON CONFLICT DO NOTHING; SQLite runs a prepared executemany under the write lock.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pg = engine.dialect.name == "postgresql"
        # PostgreSQL writes two batches at once on two connections (the server's CPU is the limit: trigram
        # and other indexes); SQLite has one writer at a time anyway.
        self.writers = 2 if self._pg else 1
        # SQLite stores times as naive UTC text and booleans as integers: let the column types convert, so the
        # rows read back exactly as the ORM would have written them.
        dialect = engine.dialect
        self._ticket_procs = [TICKETS.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in COLUMNS]
        self._event_procs = [EVENTS.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in EVENT_COLUMNS]
        self._search_index: bool | None = None  # SQLite: whether migration 0008 made the search index
        self._json: bool | None = None  # SQLite: whether its JSON functions are there (built in since 3.38)

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[Connection]:
        try:
            with self.engine.begin() if write else self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {getattr(exc, 'orig', None) or exc}") from exc
        except (sqlite3.Error, psycopg.Error) as exc:  # the bulk paths talk to the driver directly
            raise StorageError(f"database error: {exc}") from exc

    def encode(self, ticket: ImportedTicket) -> ImportedTicket:
        """``ticket`` with its values converted as the insert will bind them (SQLite; PostgreSQL's COPY converts
        as it writes). The importer calls this on the thread that reads the file: the conversion is Python, and on
        the writing thread it held the GIL while SQLite could have been inserting."""
        return ticket if self._pg else replace(ticket, bound=self._bound(ticket))

    def _bound(self, ticket: ImportedTicket) -> str:
        """The JSON array ``encode`` stores in ``bound``."""
        values = zip(self._ticket_procs, _ticket_values(ticket), strict=True)
        row = [v if p is None or v is None else p(v) for p, v in values]
        data_proc = self._event_procs[3]
        # The event's data as the text the JSON column stores, so the events insert copies it byte for byte.
        row.append(data_proc(ticket.event) if data_proc else json.dumps(ticket.event))
        return json.dumps(row, ensure_ascii=False, separators=(",", ":"))

    def insert(self, tickets: Sequence[ImportedTicket], *, actor: str) -> dict[str, int]:
        """Insert a batch and its events in one transaction; returns key -> new ticket id for the rows inserted.

        A key already stored (a re-import, or another import racing this one) is skipped by the unique
        constraint (ON CONFLICT DO NOTHING), so its row is simply missing from the answer. ``tickets`` must
        not repeat a key.
        """
        if not tickets:
            return {}
        now = datetime.now(UTC)
        with self._connect(write=True) as conn:
            driver = conn.connection.driver_connection
            if self._pg:
                inserted = self._insert_pg(driver, tickets, actor[:320], now)
            else:
                inserted = self._insert_sqlite(driver, tickets, actor[:320], now)
            # Tickets added to closed days change those days' statistics: invalidate them in this transaction.
            today = now.date()
            days = {d for t in tickets if t.key in inserted and (d := t.created_at.astimezone(UTC).date()) < today}
            stats_days.bump_days(conn, days, pg=self._pg)
            return inserted

    def _insert_pg(self, driver: Any, tickets: Sequence[ImportedTicket], actor: str, now: datetime) -> dict[str, int]:
        columns = ", ".join(COLUMNS)
        with driver.cursor() as cur:
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS import_staging ON COMMIT DELETE ROWS AS "
                f"SELECT 0 AS ord, {columns}, NULL::json AS event FROM tickets WITH NO DATA"
            )
            with cur.copy(f"COPY import_staging (ord, {columns}, event) FROM STDIN") as copy:
                for ord_, ticket in enumerate(tickets):
                    copy.write_row((ord_, *_ticket_values(ticket), Json(ticket.event)))
            # One statement moves the batch and writes each new ticket's event; ids follow the file's order.
            cur.execute(
                f"WITH ins AS (INSERT INTO tickets ({columns}) SELECT {columns} FROM import_staging ORDER BY ord "
                f"ON CONFLICT (external_key) DO NOTHING RETURNING id, external_key), "
                f"ev AS (INSERT INTO ticket_events (ticket_id, kind, actor, data, at) "
                f"SELECT ins.id, %s, %s, s.event, %s FROM ins JOIN import_staging s USING (external_key)) "
                f"SELECT id, external_key FROM ins",
                (EventKind.IMPORTED.value, actor, now),
            )
            return {key: ticket_id for ticket_id, key in cur.fetchall()}

    def _insert_sqlite(
        self, driver: Any, tickets: Sequence[ImportedTicket], actor: str, now: datetime
    ) -> dict[str, int]:
        bound = [t.bound if t.bound is not None else self._bound(t) for t in tickets]
        cur = driver.cursor()
        try:
            # Each batch dirties index pages all over the file (a hash key, requesters): checkpointing the WAL
            # every 4 MB (SQLite's default) rewrites them after nearly every batch. Checkpoints every 64 MB halve
            # the import's time; reset below, as the connection goes back to the pool.
            cur.execute("PRAGMA wal_autocheckpoint = 16384")
            # BEGIN IMMEDIATE (storage.db) holds the write lock, so every id above the current maximum is ours.
            before = cur.execute("SELECT coalesce(max(id), 0) FROM tickets").fetchone()[0]
            if self._json is None:
                self._json = _has_json(cur)
            at_proc = self._event_procs[4]
            at = at_proc(now) if at_proc else now
            kind = EventKind.IMPORTED.value
            if self._json:
                # The whole batch as one JSON array, and every statement below one step: SQLite does every row's
                # work (the ticket and its ~18 index entries, its event) in one call without the GIL, so it
                # overlaps the reading thread. A statement run or read row by row (executemany, fetchall) takes
                # the GIL back after each row, and the two threads ran in turn: 1,000 handovers a batch.
                rows = "[" + ",".join(bound) + "]"
                cur.execute(INSERT_JSON, (rows,))
                found = cur.execute(INSERTED_JSON, (before,)).fetchone()[0]
                inserted: dict[str, int] = json.loads(found) if found else {}
                if inserted:
                    cur.execute(EVENTS_JSON, (kind, actor, at, rows, before))
            else:
                # Rare (SQLite before 3.38 without the JSON extension): decoding the JSON back costs little
                # next to binding row by row.
                decoded = {t.key: json.loads(row) for t, row in zip(tickets, bound, strict=True)}
                cur.executemany(INSERT_ROWS, [row[: len(COLUMNS)] for row in decoded.values()])
                inserted = dict(
                    (key, ticket_id)
                    for ticket_id, key in cur.execute("SELECT id, external_key FROM tickets WHERE id > ?", (before,))
                )
                cur.executemany(
                    "INSERT INTO ticket_events (ticket_id, kind, actor, data, at) VALUES (?, ?, ?, ?, ?)",
                    [
                        (inserted[key], kind, actor, row[len(COLUMNS)], at)
                        for key, row in decoded.items()
                        if key in inserted
                    ],
                )
            if self._search_index is None:
                self._search_index = cur.execute(search.EXISTS).fetchone() is not None
            if self._search_index and inserted:
                # The batch's free-text index entries, in one statement (the insert trigger skips imports).
                cur.execute(search.INDEX_NEWER_THAN, (before,))
        finally:
            cur.execute("PRAGMA wal_autocheckpoint = 1000")
            cur.close()
        return inserted

    def existing_keys(self, keys: Sequence[str]) -> set[str]:
        """The keys among ``keys`` that are already stored (a dry run's duplicates)."""
        if not keys:
            return set()
        with self._connect(write=False) as conn:
            return set(conn.execute(select(TICKETS.c.external_key).where(TICKETS.c.external_key.in_(keys))).scalars())

    def ticket_texts(self, ticket_ids: Sequence[int]) -> Mapping[int, tuple[str, str, str]]:
        """(requester, subject, body) of the tickets that exist among ``ticket_ids``: how an exported ticket
        imported back into the same database is recognised."""
        if not ticket_ids:
            return {}
        stmt = select(TICKETS.c.id, TICKETS.c.requester, TICKETS.c.subject, TICKETS.c.body).where(
            TICKETS.c.id.in_(ticket_ids)
        )
        with self._connect(write=False) as conn:
            return {row.id: (row.requester, row.subject, row.body) for row in conn.execute(stmt)}


COLUMNS = (
    "external_key",
    "subject",
    "body",
    "requester",
    "requester_name",
    "channel",
    "department",
    "priority",
    "status",
    "assignee",
    "confidence",
    "summary",
    "classifier",
    "classifier_model",
    "triaged",
    "created_at",
    "updated_at",
    "resolved_at",
)
EVENT_COLUMNS = ("ticket_id", "kind", "actor", "data", "at")
INSERT_ROWS = (
    f"INSERT INTO tickets ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (external_key) DO NOTHING"
)
# The same insert from one JSON array of rows: json_extract gives back what executemany would have bound (text,
# integer, real, NULL; true and false as 1 and 0), and json_each walks the array in order, so ids follow the file.
# ("WHERE true" is SQLite's documented way to keep ON CONFLICT from parsing as a join's ON.)
INSERT_JSON = (
    f"INSERT INTO tickets ({', '.join(COLUMNS)}) "
    "SELECT " + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(COLUMNS))) + " "
    "FROM json_each(?) WHERE true ORDER BY key ON CONFLICT (external_key) DO NOTHING"
)


# The batch's new tickets as one JSON object, key -> id: one row to read, not one per ticket.
INSERTED_JSON = "SELECT json_group_object(external_key, id) FROM tickets WHERE id > ?"
# Each new ticket's "imported" event, its data from the same JSON array (the last element of each row). The
# CROSS JOIN keeps the array as the outer loop, so each row finds its ticket through the external_key index;
# "t.id > ?" leaves out the rows that were already stored (ON CONFLICT skipped them).
EVENTS_JSON = (
    "INSERT INTO ticket_events (ticket_id, kind, actor, data, at) "
    f"SELECT t.id, ?, ?, json_extract(e.value, '$[{len(COLUMNS)}]'), ? "
    "FROM json_each(?) AS e CROSS JOIN tickets AS t "
    "WHERE t.external_key = json_extract(e.value, '$[0]') AND t.id > ? ORDER BY e.key"
)


def _has_json(cur: Any) -> bool:
    try:
        cur.execute("SELECT json_extract('[1]', '$[0]')").fetchone()
    except sqlite3.OperationalError:
        return False  # an SQLite built without JSON: row by row, as before
    return True


def _ticket_values(t: ImportedTicket) -> tuple[Any, ...]:
    """A ticket's values in ``COLUMNS`` order (the other columns stay NULL or take their defaults)."""
    return (
        t.key,
        t.subject,
        t.body,
        t.requester,
        t.requester_name,
        t.channel.value,
        t.department,
        t.priority.value,
        t.status.value,
        t.assignee,
        t.confidence,
        t.summary,
        t.classifier,
        t.classifier_model,
        t.triaged,
        t.created_at,
        t.updated_at,
        t.resolved_at,
    )
