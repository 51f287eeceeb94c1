"""Storage adapter for reading tickets in bulk: the filter behind GET /api/v1/tickets and ``ticketbot export``.

``TicketQuery`` holds composable filters (all given ones must match); ``ticket_page`` returns one page in a
stable order (newest first: created_at, then id, both descending) with an opaque cursor for the next page
(keyset pagination: page N costs what page 1 costs, and a ticket created meanwhile never shifts a page);
``iter_tickets`` streams every matching ticket in the same order, in batches, for exports. ``ticket_stats`` is
GET /api/v1/stats: SQL aggregates only.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, and_, func, literal, or_, select, true
from sqlalchemy.exc import SQLAlchemyError

from core.errors import InvalidInput, StorageError
from core.message import Channel
from core.ticket import EventKind, Priority, Status, Ticket
from storage import search, stats_days
from storage.db import READ_ONLY
from storage.store import SqlStore
from storage.tables import TicketEventRow, TicketRow

tickets = TicketRow.metadata.tables["tickets"]


@dataclass(frozen=True, slots=True)
class TicketQuery:
    """Filters over tickets; each given one narrows the result (AND), a tuple matches any of its values (OR).

    ``q`` is a case-insensitive substring of the subject or the body. Ranges are half-open: ``created_from``
    <= created_at < ``created_to`` (the same for ``updated_*``). Departments are matched as stored: callers
    canonicalise names first (``Config.department``).
    """

    department: tuple[str, ...] = ()
    status: tuple[Status, ...] = ()
    priority: tuple[Priority, ...] = ()
    channel: tuple[Channel, ...] = ()
    requester: str | None = None
    q: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    updated_from: datetime | None = None
    updated_to: datetime | None = None
    open_only: bool = False


@dataclass(frozen=True, slots=True)
class TicketPage:
    """One page of tickets, newest first; ``next_cursor`` is None on the last page."""

    items: list[Ticket]
    next_cursor: str | None


def like_pattern(text: str) -> str:
    """``%text%`` with LIKE's wildcards escaped (``\\`` is the escape character), so ``50%`` means 50%."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def conditions(query: TicketQuery, *, sqlite: bool = False) -> list[ColumnElement[bool]]:
    """The WHERE clauses for ``query``; each one is served by an index (see migration 0004 and docs/api.md)."""
    where: list[ColumnElement[bool]] = []
    # SQLite keeps no statistics unless ANALYZE runs, and then walks an equality index (all of a department) in
    # preference to the few rows an updated_at window holds. ``column || ''`` (same value, no index) steers it to
    # the updated_at index; PostgreSQL's planner has statistics and needs no help.
    steer = sqlite and (query.updated_from is not None or query.updated_to is not None) and not query.requester

    def indexed(column: ColumnElement[Any]) -> ColumnElement[Any]:
        return column.concat("") if steer else column

    if query.department:
        where.append(indexed(tickets.c.department).in_(query.department))
    if query.status:
        where.append(indexed(tickets.c.status).in_([s.value for s in query.status]))
    if query.open_only:
        where.append(indexed(tickets.c.status).in_([s.value for s in Status if s.is_open]))
    if query.priority:
        where.append(indexed(tickets.c.priority).in_([p.value for p in query.priority]))
    if query.channel:
        where.append(indexed(tickets.c.channel).in_([c.value for c in query.channel]))
    if query.requester:
        where.append(tickets.c.requester == query.requester.strip())
    if query.q and query.q.strip():
        pattern = like_pattern(query.q.strip())

        # PostgreSQL: ILIKE, which its trigram indexes serve. SQLite: plain LIKE, which already ignores case for
        # ASCII letters as its lower() only folds those, so the answers are ILIKE's lower(x) LIKE lower(y) without
        # copying every subject and body (a scan of 1M tickets: 700 -> 270 ms).
        def contains(column: ColumnElement[str]) -> ColumnElement[bool]:
            return column.like(pattern, escape="\\") if sqlite else column.ilike(pattern, escape="\\")

        where.append(or_(contains(tickets.c.subject), contains(tickets.c.body)))
    if query.created_from is not None:
        where.append(tickets.c.created_at >= query.created_from)
    if query.created_to is not None:
        where.append(tickets.c.created_at < query.created_to)
    if query.updated_from is not None:
        where.append(tickets.c.updated_at >= query.updated_from)
    if query.updated_to is not None:
        where.append(tickets.c.updated_at < query.updated_to)
    return where


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last ticket's (created_at, id)."""

    created_at: datetime
    id: int

    def encode(self) -> str:
        raw = f"{self.created_at.astimezone(UTC).isoformat()}|{self.id}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> Cursor:
        """Raises InvalidInput for anything ``encode`` did not make."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            at, _, ident = raw.partition("|")
            created_at = datetime.fromisoformat(at)
            if created_at.tzinfo is not None and ident.isdigit() and len(ident) < 19:
                return cls(created_at, int(ident))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            pass
        raise InvalidInput("cursor: not a cursor returned by this API")

    @classmethod
    def after(cls, ticket: Ticket) -> Cursor:
        return cls(ticket.created_at, ticket.id)


def select_tickets(
    query: TicketQuery,
    *,
    after: Cursor | None = None,
    limit: int | None = None,
    sqlite: bool = False,
    among: Sequence[int] | None = None,
) -> Select[Any]:
    """SELECT of the matching tickets, newest first, continuing after ``after`` (keyset pagination).

    ``among``: only these ticket ids (the search index's candidates for ``q``; the LIKE still decides).
    """
    where = conditions(query, sqlite=sqlite)
    if among is not None:
        where.append(tickets.c.id.in_(among))
    if after is not None:
        # (created_at, id) < (c, i), written so that both engines see a range on created_at they can seek to.
        where.append(tickets.c.created_at <= after.created_at)
        where.append(or_(tickets.c.created_at < after.created_at, tickets.c.id < after.id))
    order = (tickets.c.created_at.desc(), tickets.c.id.desc())
    if among is not None and limit is not None:
        # The candidates are sorted with their ids only, then the page's rows are read: sorting 2,000 whole rows
        # (bodies included) took twice as long (9.5 against 5.4 ms).
        page = select(tickets.c.id).where(and_(true(), *where)).order_by(*order).limit(limit).subquery()
        return select(tickets).join(page, tickets.c.id == page.c.id).order_by(*order)
    stmt = select(tickets).where(and_(true(), *where)).order_by(*order)
    return stmt.limit(limit) if limit is not None else stmt


def _engine(store: SqlStore | Engine) -> Engine:
    return store.engine if isinstance(store, SqlStore) else store


def _reader(engine: Engine) -> Engine:
    # Read-only transactions: on SQLite they begin DEFERRED and never wait for the write lock.
    return engine.execution_options(**{READ_ONLY: True})


def ticket_page(
    store: SqlStore | Engine, query: TicketQuery, *, limit: int = 50, cursor: str | None = None
) -> TicketPage:
    """One page of matching tickets, newest first. Raises InvalidInput (bad cursor), StorageError."""
    after = Cursor.decode(cursor) if cursor else None
    engine = _engine(store)
    sqlite = engine.dialect.name == "sqlite"
    needle = query.q.strip() if query.q else ""
    try:
        with _reader(engine).connect() as conn:
            # SQLite: the trigram index names the few tickets that can hold a rare text, so finding it (or that
            # no ticket has it) reads those instead of scanning every ticket; a common text is found sooner by
            # the scan, which stops after a page (PostgreSQL's pg_trgm indexes serve ILIKE directly).
            among = search.candidates(conn, needle) if sqlite and needle else None
            stmt = select_tickets(query, after=after, limit=limit + 1, sqlite=sqlite, among=among)
            # One row more than asked tells whether another page exists without a COUNT.
            rows = conn.execute(stmt).all()
    except SQLAlchemyError as exc:
        raise StorageError(f"database error: {exc}") from exc
    items = [SqlStore._ticket(r) for r in rows[:limit]]
    next_cursor = Cursor.after(items[-1]).encode() if len(rows) > limit and items else None
    return TicketPage(items=items, next_cursor=next_cursor)


def iter_tickets(store: SqlStore | Engine, query: TicketQuery, *, batch_size: int = 1000) -> Iterator[Ticket]:
    """Every matching ticket, newest first, fetched ``batch_size`` at a time (memory stays flat).

    Each batch is its own short read transaction (keyset on id), so a long export never holds a snapshot or a
    lock for its whole duration; tickets created after the export started sort before it and are not included.
    """
    cursor: str | None = None
    while True:
        page = ticket_page(store, query, limit=batch_size, cursor=cursor)
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


# Longer GET /stats periods read closed days' figures from stats_days instead of every ticket.
LONG_PERIOD = timedelta(days=31)


@dataclass(frozen=True, slots=True)
class TicketStats:
    """Aggregates over the tickets created in [since, until)."""

    total: int
    by_department: dict[str, int]
    by_status: dict[str, int]
    by_priority: dict[str, int]
    by_channel: dict[str, int]
    by_classifier: dict[str, int]
    mean_confidence: float | None
    rerouted: int
    median_resolution_seconds: float | None
    per_day: list[tuple[date, int, int]]  # (day in UTC, created, of which resolved)


def ticket_stats(
    store: SqlStore | Engine, *, since: datetime, until: datetime, now: datetime | None = None
) -> TicketStats:
    """Counts, mean confidence, reroutes, median time to resolution and per-day figures, as SQL aggregates.

    Periods up to ``LONG_PERIOD`` are read from the tickets, exactly. Longer ones read the figures kept per closed
    day (storage/stats_days.py) and the rest of the period live; their median comes from 1% buckets (within 0.5%).
    """
    engine = _engine(store)
    if until - since <= LONG_PERIOD:
        return _exact_stats(engine, since=since, until=until)
    return _stats_by_day(engine, since=since, until=until, now=now or datetime.now(UTC))


def _exact_stats(engine: Engine, *, since: datetime, until: datetime) -> TicketStats:
    """Every ticket column read is in ``ix_tickets_stats``, so a pass over the period can read that index only. The
    five breakdowns come from one GROUP BY over the five columns at once (a few hundred groups, summed per column
    here) rather than five passes; the days from a second.
    """
    pg = engine.dialect.name == "postgresql"
    period = and_(tickets.c.created_at >= since, tickets.c.created_at < until)
    resolved = and_(period, tickets.c.resolved_at.is_not(None))
    keys = [tickets.c.department, tickets.c.status, tickets.c.priority, tickets.c.channel, tickets.c.classifier]
    figures = [func.count(), func.sum(tickets.c.confidence), func.count(tickets.c.resolved_at)]
    events = TicketEventRow.metadata.tables["ticket_events"]
    rerouted = select(func.count(func.distinct(events.c.ticket_id))).where(
        events.c.kind == EventKind.REROUTED.value,
        events.c.at >= since,  # a ticket is rerouted after it is created: bounds the (kind, at) index range
        events.c.ticket_id.in_(select(tickets.c.id).where(period)),
    )
    if pg:
        day = func.date(func.timezone("UTC", tickets.c.created_at))
        seconds: ColumnElement[Any] = func.extract("epoch", tickets.c.resolved_at - tickets.c.created_at)
        median: Select[Any] = select(func.percentile_cont(0.5).within_group(seconds)).where(resolved)
    else:
        day = func.substr(tickets.c.created_at, 1, 10)  # stored as naive UTC text: 'YYYY-MM-DD HH:MM:SS.ffffff'
        seconds = (func.julianday(tickets.c.resolved_at) - func.julianday(tickets.c.created_at)) * 86400.0
        median = _sqlite_median(seconds, resolved)
    # Two passes (PostgreSQL's GROUPING SETS would make it one, but planned it slower here than two hash aggregates).
    by_keys: Select[Any] = select(*keys, literal(None).label("day"), *figures).where(period).group_by(*keys)
    no_keys: list[Any] = [literal(None) for _ in keys]
    by_day: Select[Any] = select(*no_keys, day, *figures).where(period).group_by(day)
    grouped = [by_keys, by_day]
    try:
        with _reader(engine).connect() as conn:
            rows = [row for stmt in grouped for row in conn.execute(stmt).all()]
            n_rerouted = int(conn.execute(rerouted).scalar_one() or 0)
            median_value = conn.execute(median).scalar_one_or_none()
    except SQLAlchemyError as exc:
        raise StorageError(f"database error: {exc}") from exc
    # Each row is one group of one grouping: the day, or some of the five columns (never NULL in the table).
    sums: list[dict[str, int]] = [{} for _ in keys]
    days: dict[date, tuple[int, int]] = {}
    total, confidence = 0, 0.0
    for row in rows:
        count, confidence_sum, resolved_count = int(row[6]), float(row[7] or 0.0), int(row[8])
        if row[5] is not None:
            days[_as_date(row[5])] = (count, resolved_count)
            continue
        for i in range(len(keys)):
            if row[i] is not None:
                sums[i][row[i]] = sums[i].get(row[i], 0) + count
        if row[0] is not None:  # every ticket is in exactly one department group: count the totals there
            total += count
            confidence += confidence_sum
    return TicketStats(
        total=total,
        by_department=sums[0],
        by_status=sums[1],
        by_priority=sums[2],
        by_channel=sums[3],
        by_classifier=sums[4],
        mean_confidence=confidence / total if total else None,
        rerouted=n_rerouted,
        median_resolution_seconds=float(median_value) if median_value is not None else None,
        per_day=[(d, c, r) for d, (c, r) in sorted(days.items())],
    )


def _stats_by_day(engine: Engine, *, since: datetime, until: datetime, now: datetime) -> TicketStats:
    pg = engine.dialect.name == "postgresql"
    days = stats_days.closed_days(since, until, now=now)
    try:
        with _reader(engine).connect() as conn:  # the versions are noted before anything is computed
            cached, versions = stats_days.read_days(conn, days)
        missing = [d for d in days if d not in cached]
        if missing:
            with _reader(engine).connect() as conn:
                computed = stats_days.figures_by_day(conn, stats_days.runs(missing), pg=pg)
            computed = {d: computed.get(d, stats_days.Figures()) for d in missing}
            with engine.begin() as conn:
                stats_days.store_days(conn, computed, versions, pg=pg)
            cached.update(computed)
        with _reader(engine).connect() as conn:
            live = stats_days.figures_by_day(conn, stats_days.uncovered(since, until, days), pg=pg)
    except SQLAlchemyError as exc:
        raise StorageError(f"database error: {exc}") from exc
    total = stats_days.Figures()
    per_day: list[tuple[date, int, int]] = []
    for day, figures in sorted([*cached.items(), *live.items()], key=lambda item: item[0]):
        total.add(figures)
        if figures.count:
            per_day.append((day, figures.count, figures.resolved))
    by = total.by
    return TicketStats(
        total=total.count,
        by_department=by["department"],
        by_status=by["status"],
        by_priority=by["priority"],
        by_channel=by["channel"],
        by_classifier=by["classifier"],
        mean_confidence=total.confidence / total.count if total.count else None,
        rerouted=total.rerouted,
        median_resolution_seconds=total.median_resolution_seconds(),
        per_day=per_day,
    )


def _sqlite_median(value: ColumnElement[Any], where: ColumnElement[bool]) -> Select[Any]:
    """SQLite has no percentile function: the mean of the middle one or two values, by ORDER BY, LIMIT and OFFSET
    (twice as fast there as numbering the rows with window functions)."""
    n = select(func.count()).where(where).scalar_subquery()
    middle = select(value.label("v")).where(where).order_by(value).limit(2 - n % 2).offset((n - 1) // 2).subquery()
    return select(func.avg(middle.c.v))


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def open_ticket_counts(store: SqlStore | Engine) -> dict[str, int]:
    """Open tickets per department (served by the (department, status) index)."""
    stmt = (
        select(tickets.c.department, func.count())
        .where(tickets.c.status.in_([s.value for s in Status if s.is_open]))
        .group_by(tickets.c.department)
    )
    try:
        with _reader(_engine(store)).connect() as conn:
            return {department: int(n) for department, n in conn.execute(stmt).all()}
    except SQLAlchemyError as exc:
        raise StorageError(f"database error: {exc}") from exc
