"""Storage adapter: per-day ticket figures kept for long ``GET /stats`` periods, so a year costs a read of 365 rows.

A closed UTC day (two days old or more: no transaction that writes its tickets can still be in flight) gets one
``stats_days`` row: its five breakdowns with counts, confidence sums and resolved counts, the tickets rerouted,
and a histogram of resolution times in 1% buckets. Migration 0007's trigger bumps the row's ``version`` whenever a
stats column of one of that day's tickets changes; imports bump the days of each batch. A reader notes the
versions, computes the days it lacks and stores each ``WHERE version`` is still the one it noted, so a write
that lands meanwhile leaves the day uncached rather than wrong. Shorter periods never come here (queries.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, and_, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from core.ticket import EventKind
from storage.tables import StatsDayRow, TicketEventRow

tickets = StatsDayRow.metadata.tables["tickets"]
events = TicketEventRow.metadata.tables["ticket_events"]
stats_days = StatsDayRow.metadata.tables["stats_days"]

# Resolution times go into buckets 1% wide: a median read from them is within 0.5% of the exact one. Bucket 0
# holds everything under a second (and negative times: clocks); the last, everything past about 9 years.
_LOG_STEP = math.log(1.01)
BUCKETS = 2000
COLUMNS = ("department", "status", "priority", "channel", "classifier")


@dataclass
class Figures:
    """Additive figures of some tickets: merging two sets of tickets adds their figures.

    Only what GET /stats shows is kept: each column's breakdown (not their cross product, which a year of days
    would make too big to read quickly) and a dense histogram of resolution times.
    """

    count: int = 0
    confidence: float = 0.0
    resolved: int = 0
    rerouted: int = 0
    by: dict[str, dict[str, int]] = field(default_factory=lambda: {c: {} for c in COLUMNS})
    histogram: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(BUCKETS, dtype=np.int64))

    def add(self, other: Figures) -> None:
        self.count += other.count
        self.confidence += other.confidence
        self.resolved += other.resolved
        self.rerouted += other.rerouted
        for column, counts in other.by.items():
            mine = self.by[column]
            for value, n in counts.items():
                mine[value] = mine.get(value, 0) + n
        self.histogram += other.histogram

    def add_group(self, key: Sequence[str], count: int, confidence: float, resolved: int) -> None:
        self.count += count
        self.confidence += confidence
        self.resolved += resolved
        for column, value in zip(COLUMNS, key, strict=True):
            counts = self.by[column]
            counts[value] = counts.get(value, 0) + count

    def to_json(self) -> str:
        nonzero = np.flatnonzero(self.histogram)
        first, last = (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.size else (0, 0)
        return json.dumps(
            {
                "count": self.count,
                "confidence": self.confidence,
                "resolved": self.resolved,
                "rerouted": self.rerouted,
                "by": self.by,
                "histogram": [first, self.histogram[first:last].tolist()],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Figures:
        data = json.loads(text)
        histogram = np.zeros(BUCKETS, dtype=np.int64)
        first, counts = data["histogram"]
        histogram[first : first + len(counts)] = counts
        return cls(
            int(data["count"]),
            float(data["confidence"]),
            int(data["resolved"]),
            int(data["rerouted"]),
            {c: {str(k): int(v) for k, v in data["by"].get(c, {}).items()} for c in COLUMNS},
            histogram,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Figures):
            return NotImplemented
        mine = (self.count, self.confidence, self.resolved, self.rerouted, self.by)
        theirs = (other.count, other.confidence, other.resolved, other.rerouted, other.by)
        return mine == theirs and bool(np.array_equal(self.histogram, other.histogram))

    def median_resolution_seconds(self) -> float | None:
        """The median read from the histogram: the middle one or two tickets' bucket centres."""
        n = int(self.histogram.sum())
        if not n:
            return None
        cumulative = np.cumsum(self.histogram)
        # 0-based ranks of the middle one or two tickets, and the buckets holding them.
        ranks = np.array([(n - 1) // 2, n // 2])
        buckets = np.searchsorted(cumulative, ranks, side="right")
        return float(np.mean([_centre(int(b)) for b in buckets]))


def bucket_of(seconds: float) -> int:
    """The 1% bucket of a resolution time (see ``BUCKETS``)."""
    if seconds < 1:
        return 0
    return min(BUCKETS - 1, 1 + math.floor(math.log(seconds) / _LOG_STEP))


def _centre(bucket: int) -> float:
    return 0.0 if bucket == 0 else math.exp((bucket - 0.5) * _LOG_STEP)


def closed_days(since: datetime, until: datetime, *, now: datetime) -> list[date]:
    """The whole UTC days inside [since, until) that are at least two days old at ``now``."""
    first = since.astimezone(UTC).date()
    if datetime.combine(first, time(), UTC) < since:
        first += timedelta(days=1)
    end = min(until.astimezone(UTC).date(), now.astimezone(UTC).date() - timedelta(days=1))  # exclusive
    return [first + timedelta(days=i) for i in range((end - first).days)]


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def day_column(pg: bool) -> ColumnElement[Any]:
    if pg:
        return func.date(func.timezone("UTC", tickets.c.created_at))
    return func.substr(tickets.c.created_at, 1, 10)  # stored as naive UTC text: 'YYYY-MM-DD HH:MM:SS.ffffff'


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def figures_by_day(
    conn: Connection, intervals: Sequence[tuple[datetime, datetime]], *, pg: bool
) -> dict[date, Figures]:
    """Figures of the tickets created in any of ``intervals``, per UTC day (SQL aggregates; resolution times are
    bucketed here, as SQLite may lack ``ln``)."""
    if not intervals:
        return {}
    where = or_(*(and_(tickets.c.created_at >= a, tickets.c.created_at < b) for a, b in intervals))
    day = day_column(pg)
    keys = [tickets.c.department, tickets.c.status, tickets.c.priority, tickets.c.channel, tickets.c.classifier]
    out: dict[date, Figures] = {}
    grouped = (
        select(day, *keys, func.count(), func.sum(tickets.c.confidence), func.count(tickets.c.resolved_at))
        .where(where)
        .group_by(day, *keys)
    )
    for row in conn.execute(grouped):
        figures = out.setdefault(_as_date(row[0]), Figures())
        figures.add_group(row[1:6], int(row[6]), float(row[7] or 0.0), int(row[8]))
    rerouted = (
        select(day, func.count(func.distinct(tickets.c.id)))
        .select_from(tickets.join(events, events.c.ticket_id == tickets.c.id))
        .where(
            events.c.kind == EventKind.REROUTED.value,
            events.c.at >= min(a for a, _ in intervals),  # after creation: bounds the (kind, at) index range
            where,
        )
        .group_by(day)
    )
    for d, n in conn.execute(rerouted):
        out.setdefault(_as_date(d), Figures()).rerouted = int(n)
    if pg:
        seconds: ColumnElement[Any] = func.extract("epoch", tickets.c.resolved_at - tickets.c.created_at)
    else:
        seconds = (func.julianday(tickets.c.resolved_at) - func.julianday(tickets.c.created_at)) * 86400.0
    resolved = select(day, seconds).where(where, tickets.c.resolved_at.is_not(None))
    for d, s in conn.execute(resolved):
        out.setdefault(_as_date(d), Figures()).histogram[bucket_of(float(s))] += 1
    return out


def read_days(conn: Connection, days: Sequence[date]) -> tuple[dict[date, Figures], dict[date, int]]:
    """(valid cached figures, every noted version) for ``days``; a day without a row has version 0."""
    if not days:
        return {}, {}
    rows = conn.execute(
        select(stats_days.c.day, stats_days.c.version, stats_days.c.cached_version, stats_days.c.payload).where(
            stats_days.c.day >= days[0], stats_days.c.day <= days[-1]
        )
    ).all()
    cached: dict[date, Figures] = {}
    versions: dict[date, int] = {}
    for day, version, cached_version, payload in rows:
        day = _as_date(day)
        versions[day] = int(version)
        if payload is not None and cached_version == version:
            try:
                cached[day] = Figures.from_json(payload)
            except (ValueError, KeyError, TypeError, IndexError):  # a payload this code cannot read: compute again
                continue
    return cached, versions


def store_days(conn: Connection, figures: dict[date, Figures], versions: dict[date, int], *, pg: bool) -> None:
    """Keep computed figures, each only if its day's version is still the one noted before computing."""
    if not figures:
        return
    insert = (postgresql.insert if pg else sqlite.insert)(stats_days)
    stmt = insert.on_conflict_do_update(
        index_elements=[stats_days.c.day],
        set_={"cached_version": insert.excluded.cached_version, "payload": insert.excluded.payload},
        where=stats_days.c.version == insert.excluded.cached_version,
    )
    conn.execute(
        stmt,
        [
            {"day": day, "version": 0, "cached_version": versions.get(day, 0), "payload": f.to_json()}
            for day, f in figures.items()
        ],
    )


def bump_days(conn: Connection, days: Iterable[date], *, pg: bool) -> None:
    """Invalidate the figures of ``days`` (imports: tickets added to closed days), in the caller's transaction."""
    rows = [{"day": d, "version": 1} for d in sorted(set(days))]
    if not rows:
        return
    insert = (postgresql.insert if pg else sqlite.insert)(stats_days)
    conn.execute(
        insert.on_conflict_do_update(index_elements=[stats_days.c.day], set_={"version": stats_days.c.version + 1}),
        rows,
    )


def uncovered(since: datetime, until: datetime, days: Sequence[date]) -> list[tuple[datetime, datetime]]:
    """The parts of [since, until) outside the whole ``days`` (sorted, consecutive or not)."""
    out: list[tuple[datetime, datetime]] = []
    cursor = since
    for day in days:
        start, end = day_start(day), day_start(day) + timedelta(days=1)
        if cursor < start:
            out.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < until:
        out.append((cursor, until))
    return out


def runs(days: Sequence[date]) -> list[tuple[datetime, datetime]]:
    """Consecutive days merged into [start, end) intervals (fewer OR terms in the query)."""
    out: list[tuple[datetime, datetime]] = []
    for day in days:
        start = day_start(day)
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], start + timedelta(days=1))
        else:
            out.append((start, start + timedelta(days=1)))
    return out


def engine_is_pg(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"
