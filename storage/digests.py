"""Storage adapter for the summarise stage: digest figures as SQL aggregates, and the exactly-once digest claim.

Every figure is an aggregate over an indexed range (``created_at``, ``resolved_at``, ``first_action_at``,
``ticket_events(kind, at)``) or over the open tickets (``tickets(department, status)``), so the cost grows with
the period and the open work, never with the whole table; no ticket row is loaded into Python except the few
listed by name. Medians use ``percentile_cont`` on PostgreSQL and a window-function pick over the period's rows
on SQLite, which has no percentile aggregate.

Exactly once: ``claim_digest`` inserts the ``digest_runs`` row (unique scope + day) and the digest's outbox
items in one transaction. Of several processes firing at once, one inserts the row; the others hit the unique
key and enqueue nothing. A crash before the commit leaves neither, so the next firing (or another replica)
claims it; a crash after it leaves both, and the outbox delivers each item (unique dedupe keys) with retries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, literal, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from core.digest import DigestPeriod, OpenCount, QueueFigures, RoutingFigures, TicketLine
from core.errors import StorageError
from core.inbound import InboundStatus
from core.outbox import OutboxItem, OutboxStatus
from core.ticket import EventKind, Priority
from storage.db import READ_ONLY
from storage.store import SqlStore
from storage.tables import OPEN_TICKETS, DigestRunRow, InboundRow, OutboxRow, TicketEventRow, TicketRow

# Literal, not bound parameters: only then can SQLite (and PostgreSQL's generic plans) use ix_tickets_open.
IS_OPEN = text(OPEN_TICKETS)
ENQUEUED, SKIPPED = "enqueued", "skipped"


class SqlDigestStore:
    """The ``DigestStore`` port on the same engine as ``SqlStore`` (SQLite or PostgreSQL)."""

    def __init__(self, store: SqlStore) -> None:
        self.engine = store.engine
        # The figures only read: on SQLite they begin DEFERRED, so they neither wait for nor block the writers.
        self._reader = store.engine.execution_options(**{READ_ONLY: True})
        self._pg = store.engine.dialect.name == "postgresql"

    @contextmanager
    def _conn(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction; database errors become StorageError at this edge, as in SqlStore."""
        try:
            with (self.engine if write else self._reader).begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {getattr(exc, 'orig', None) or exc}") from exc

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self._pg else sqlite.insert)(table)

    def _seconds(self, later: Any, earlier: Any) -> Any:
        """``later - earlier`` in seconds, as SQL."""
        if self._pg:
            return func.extract("epoch", later - earlier)
        # SQLite keeps UTC datetimes as ISO text; julianday() reads it (fractional days, so times 86,400).
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0

    # -- runs -------------------------------------------------------------------------------------------------------

    def last_digest_end(self, scope: str, *, before: date) -> datetime | None:
        stmt = (
            select(DigestRunRow.ends_at)
            .where(DigestRunRow.scope == scope, DigestRunRow.period < before, DigestRunRow.status == ENQUEUED)
            .order_by(DigestRunRow.period.desc())
            .limit(1)
        )
        with self._conn() as conn:
            value: datetime | None = conn.execute(stmt).scalar_one_or_none()
            return value

    def digest_status(self, scope: str, day: date) -> str | None:
        stmt = select(DigestRunRow.status).where(DigestRunRow.scope == scope, DigestRunRow.period == day)
        with self._conn() as conn:
            value: str | None = conn.execute(stmt).scalar_one_or_none()
            return value

    def claim_digest(
        self, period: DigestPeriod, items: Sequence[OutboxItem], *, now: datetime, retake_skipped: bool = False
    ) -> bool:
        with self._conn(write=True) as conn:
            # ON CONFLICT DO NOTHING: on PostgreSQL a second inserter waits for the first to commit, then does
            # nothing; if the first rolls back (a crash), the second's insert goes ahead. Nobody sees an error.
            claimed = conn.execute(
                self._insert(DigestRunRow)
                .values(
                    scope=period.scope,
                    period=period.day,
                    status=ENQUEUED,
                    created_at=now,
                    finished_at=now,
                    starts_at=period.starts_at,
                    ends_at=period.ends_at,
                )
                .on_conflict_do_nothing()
                .returning(DigestRunRow.id)
            ).scalar_one_or_none()
            if claimed is None and retake_skipped:
                # A person asked for a digest the scheduler skipped: exactly one of several retakes wins the update.
                retaken = conn.execute(
                    update(DigestRunRow)
                    .where(
                        DigestRunRow.scope == period.scope,
                        DigestRunRow.period == period.day,
                        DigestRunRow.status == SKIPPED,
                    )
                    .values(status=ENQUEUED, finished_at=now, starts_at=period.starts_at, ends_at=period.ends_at)
                )
                claimed = retaken.rowcount or None
            if claimed is None:
                return False
            self._enqueue(conn, items, now)
            return True

    def skip_digest(self, period: DigestPeriod, *, now: datetime, reason: str) -> bool:
        with self._conn(write=True) as conn:
            inserted = conn.execute(
                self._insert(DigestRunRow)
                .values(
                    scope=period.scope,
                    period=period.day,
                    status=SKIPPED,
                    created_at=now,
                    finished_at=now,
                    starts_at=period.starts_at,
                    ends_at=period.ends_at,
                )
                .on_conflict_do_nothing()
                .returning(DigestRunRow.id)
            ).scalar_one_or_none()
            return inserted is not None

    def _enqueue(self, conn: Connection, items: Sequence[OutboxItem], now: datetime) -> None:
        # The same row SqlStore.enqueue writes; done here so the claim and the items share one transaction.
        for item in items:
            to = item.payload.get("to")
            conn.execute(
                self._insert(OutboxRow)
                .values(
                    kind=item.kind.value,
                    ticket_id=item.ticket_id,
                    dedupe_key=item.dedupe_key[:300],
                    payload=item.payload,
                    recipient=to.lower() if isinstance(to, str) else None,
                    status=OutboxStatus.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
                .on_conflict_do_nothing()
            )

    # -- figures ----------------------------------------------------------------------------------------------------

    def new_and_resolved(
        self, *, departments: Sequence[str] | None, starts_at: datetime, ends_at: datetime
    ) -> dict[str, tuple[int, int]]:
        t = TicketRow
        new = select(t.department, func.count()).where(t.created_at >= starts_at, t.created_at < ends_at)
        resolved = select(t.department, func.count()).where(t.resolved_at >= starts_at, t.resolved_at < ends_at)
        if departments is not None:
            new = new.where(t.department.in_(departments))
            resolved = resolved.where(t.department.in_(departments))
        out: dict[str, tuple[int, int]] = {}
        with self._conn() as conn:
            for dept, n in conn.execute(new.group_by(t.department)).all():
                out[dept] = (int(n), 0)
            for dept, n in conn.execute(resolved.group_by(t.department)).all():
                out[dept] = (out.get(dept, (0, 0))[0], int(n))
        return out

    def open_counts(self, *, departments: Sequence[str] | None, stale_before: datetime) -> list[OpenCount]:
        t = TicketRow
        stmt = select(
            t.department,
            t.status,
            t.priority,
            func.count(),
            func.sum(case((t.updated_at < stale_before, 1), else_=0)),
            func.sum(case((and_(t.priority == Priority.URGENT.value, t.assignee.is_(None)), 1), else_=0)),
            func.min(t.created_at),
            func.min(t.updated_at),
        ).where(IS_OPEN)
        if departments is not None:
            stmt = stmt.where(t.department.in_(departments))
        stmt = stmt.group_by(t.department, t.status, t.priority)
        with self._conn() as conn:
            return [
                OpenCount(
                    department=r[0],
                    status=r[1],
                    priority=r[2],
                    count=int(r[3]),
                    stale=int(r[4] or 0),
                    unassigned_urgent=int(r[5] or 0),
                    oldest_created_at=r[6],
                    oldest_updated_at=r[7],
                )
                for r in conn.execute(stmt).all()
            ]

    def medians(
        self, *, departments: Sequence[str] | None, starts_at: datetime, ends_at: datetime
    ) -> dict[str, tuple[float | None, float | None]]:
        t = TicketRow
        first = self._median(t.first_action_at, departments, starts_at, ends_at)
        resolution = self._median(t.resolved_at, departments, starts_at, ends_at)
        return {d: (first.get(d), resolution.get(d)) for d in sorted(set(first) | set(resolution))}

    def _median(
        self, column: Any, departments: Sequence[str] | None, starts_at: datetime, ends_at: datetime
    ) -> dict[str, float]:
        """Per department, the median of ``column - created_at`` over rows whose ``column`` is in the window."""
        t = TicketRow
        seconds = self._seconds(column, t.created_at)
        where = [column >= starts_at, column < ends_at]
        if departments is not None:
            where.append(t.department.in_(departments))
        if self._pg:
            stmt: Any = (
                select(t.department, func.percentile_cont(0.5).within_group(seconds))
                .where(*where)
                .group_by(t.department)
            )
        else:
            # Rank the window's rows per department, keep the middle one or two, average them.
            ranked = (
                select(
                    t.department.label("department"),
                    seconds.label("seconds"),
                    func.row_number().over(partition_by=t.department, order_by=seconds).label("rn"),
                    func.count().over(partition_by=t.department).label("n"),
                )
                .where(*where)
                .subquery()
            )
            stmt = (
                select(ranked.c.department, func.avg(ranked.c.seconds))
                .where(ranked.c.rn.in_([(ranked.c.n + 1) // 2, (ranked.c.n + 2) // 2]))
                .group_by(ranked.c.department)
            )
        with self._conn() as conn:
            return {dept: float(value) for dept, value in conn.execute(stmt).all() if value is not None}

    def ticket_lists(
        self, department: str, *, stale_before: datetime, limit: int
    ) -> tuple[list[TicketLine], list[TicketLine], list[TicketLine]]:
        t = TicketRow
        columns = (t.id, t.summary, t.subject, t.status, t.priority, t.created_at, t.updated_at, t.assignee)
        base = select(*columns).where(t.department == department, IS_OPEN)
        oldest = base.order_by(t.created_at, t.id).limit(limit)
        stale = base.where(t.updated_at < stale_before).order_by(t.updated_at, t.id).limit(limit)
        unassigned = base.where(t.priority == Priority.URGENT.value, t.assignee.is_(None))
        urgent = unassigned.order_by(t.created_at, t.id).limit(limit)
        with self._conn() as conn:
            return (
                [_line(r) for r in conn.execute(oldest).all()],
                [_line(r) for r in conn.execute(stale).all()],
                [_line(r) for r in conn.execute(urgent).all()],
            )

    def routing(self, *, starts_at: datetime, ends_at: datetime) -> RoutingFigures:
        t, e = TicketRow, TicketEventRow
        decided = (
            select(t.classifier, func.count(), func.sum(t.confidence))
            .where(t.created_at >= starts_at, t.created_at < ends_at)
            .group_by(t.classifier)
        )

        def by_event(kind: EventKind, key: str) -> Any:
            department = e.data[key].as_string()
            return (
                select(department, func.count())
                .where(e.kind == kind.value, e.at >= starts_at, e.at < ends_at)
                .group_by(department)
            )

        with self._conn() as conn:
            rows = conn.execute(decided).all()
            rerouted = {str(d): int(n) for d, n in conn.execute(by_event(EventKind.REROUTED, "from")).all() if d}
            routed = {str(d): int(n) for d, n in conn.execute(by_event(EventKind.ROUTED, "to")).all() if d}
        total = sum(int(r[1]) for r in rows)
        return RoutingFigures(
            decided_by={str(r[0]): int(r[1]) for r in rows},
            mean_confidence=sum(float(r[2] or 0.0) for r in rows) / total if total else None,
            rerouted_from=rerouted,
            routed_to=routed,
        )

    def queues(self) -> QueueFigures:
        o = OutboxRow
        parked = select(func.count()).where(InboundRow.status == InboundStatus.PARKED.value)
        outbox = select(
            func.count(case((o.status == OutboxStatus.PARKED.value, 1))),
            func.count(case((and_(o.status == OutboxStatus.PENDING.value, o.attempts > 0), 1))),
        ).where(o.status.in_([OutboxStatus.PARKED.value, OutboxStatus.PENDING.value]))
        with self._conn() as conn:
            inbound = int(conn.execute(parked).scalar_one())
            out_parked, retrying = conn.execute(outbox).one()
        return QueueFigures(parked_inbound=inbound, outbox_parked=int(out_parked), outbox_retrying=int(retrying))

    def daily_counts(self, boundaries: Sequence[datetime]) -> dict[str, list[int]]:
        t = TicketRow
        # One pass over the range: a conditional count per day (the days' local midnights come from the core).
        columns = [
            func.count(case((and_(t.created_at >= lo, t.created_at < hi), literal(1))))
            for lo, hi in zip(boundaries, boundaries[1:], strict=False)
        ]
        stmt = (
            select(t.department, *columns)
            .where(t.created_at >= boundaries[0], t.created_at < boundaries[-1])
            .group_by(t.department)
        )
        with self._conn() as conn:
            return {r[0]: [int(n) for n in r[1:]] for r in conn.execute(stmt).all()}


def _line(row: Any) -> TicketLine:
    return TicketLine(
        id=int(row.id),
        summary=row.summary or row.subject or "",
        status=row.status,
        priority=row.priority,
        created_at=row.created_at,
        updated_at=row.updated_at,
        assignee=row.assignee,
    )
