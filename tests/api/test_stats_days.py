"""Long GET /stats periods read closed days' figures from stats_days: always equal to the exact aggregates (the
median within 0.5%), whatever changes the tickets of those days afterwards, on both engines."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select, text, update

from bot.api.meta import stats_warmer
from core.message import Channel
from core.ticket import Priority, Status
from storage import stats_days
from storage.imports import ImportedTicket, SqlImportStore
from storage.queries import TicketStats, _exact_stats, ticket_stats
from storage.store import SqlStore
from storage.tables import StatsDayRow, TicketEventRow, TicketRow

tickets = TicketRow.metadata.tables["tickets"]
events = TicketEventRow.metadata.tables["ticket_events"]
days_table = StatsDayRow.metadata.tables["stats_days"]
NOW = datetime.now(UTC)  # the trigger reads the database's clock: the days here are relative to the real today
SINCE, UNTIL = NOW - timedelta(days=60, hours=5), NOW + timedelta(hours=1)


def seed(store: SqlStore, n: int = 400, seed: int = 7) -> list[int]:
    """``n`` tickets over the last 60 days, a third resolved, some rerouted (with their events)."""
    rng = random.Random(seed)
    ids = []
    with store.engine.begin() as conn:
        for _ in range(n):
            created = NOW - timedelta(seconds=rng.randrange(60 * 86400))
            resolved = created + timedelta(seconds=rng.randrange(30, 5 * 86400)) if rng.random() < 0.35 else None
            values: dict[str, Any] = {
                "subject": "s",
                "body": "b",
                "requester": f"r{rng.randrange(20)}@example.com",
                "requester_name": "",
                "channel": rng.choice(["email", "slack", "api"]),
                "department": rng.choice(["IT Support", "HR", "Finance"]),
                "priority": rng.choice(["low", "medium", "urgent"]),
                "status": "resolved" if resolved else rng.choice(["new", "in_progress"]),
                "confidence": rng.random(),
                "summary": "",
                "classifier": rng.choice(["offline", "claude"]),
                "triaged": False,
                "created_at": created,
                "updated_at": resolved or created,
                "resolved_at": resolved,
            }
            ticket_id = conn.execute(tickets.insert().returning(tickets.c.id), values).scalar_one()
            ids.append(ticket_id)
            if rng.random() < 0.1:
                at = created + timedelta(minutes=5)
                conn.execute(
                    events.insert(), {"ticket_id": ticket_id, "kind": "rerouted", "actor": "x", "data": {}, "at": at}
                )
    return ids


def assert_same(cached: TicketStats, exact: TicketStats) -> None:
    assert cached.total == exact.total
    assert cached.by_department == exact.by_department
    assert cached.by_status == exact.by_status
    assert cached.by_priority == exact.by_priority
    assert cached.by_channel == exact.by_channel
    assert cached.by_classifier == exact.by_classifier
    assert cached.mean_confidence == pytest.approx(exact.mean_confidence)
    assert cached.rerouted == exact.rerouted
    assert cached.per_day == exact.per_day
    assert exact.median_resolution_seconds is not None
    assert cached.median_resolution_seconds == pytest.approx(exact.median_resolution_seconds, rel=0.005)


def stats(store: SqlStore) -> tuple[TicketStats, TicketStats]:
    return ticket_stats(store, since=SINCE, until=UNTIL), _exact_stats(store.engine, since=SINCE, until=UNTIL)


def cached_days(store: SqlStore) -> int:
    with store.engine.connect() as conn:
        stmt = select(days_table.c.day).where(days_table.c.cached_version == days_table.c.version)
        return len(conn.execute(stmt).all())


def test_a_long_period_reads_closed_days_from_the_cache_and_matches_the_exact_figures(store: SqlStore) -> None:
    seed(store)
    first, exact = stats(store)
    assert_same(first, exact)
    assert cached_days(store) == len(stats_days.closed_days(SINCE, UNTIL, now=NOW)) > 55
    again, _ = stats(store)  # from the cache this time
    assert again == first
    with store.engine.begin() as conn:  # a payload this code cannot read (an older format, say) is computed again
        conn.execute(update(days_table).values(payload='{"groups": []}'))
    assert ticket_stats(store, since=SINCE, until=UNTIL) == first


def test_every_kind_of_change_to_an_old_ticket_invalidates_its_day(store: SqlStore) -> None:
    ids = seed(store)
    assert_same(*stats(store))
    old = ids[:60]
    with store.engine.begin() as conn:
        for i, ticket_id in enumerate(old):  # as the store's writes do, one column or several at a time
            change: dict[str, Any] = [
                {"department": "Facilities"},
                {"status": "resolved", "resolved_at": NOW - timedelta(hours=1)},
                {"priority": "high"},
                {"status": "reopened", "resolved_at": None},
                {"confidence": 0.01},
                {"classifier": "manual"},
            ][i % 6]
            conn.execute(update(tickets).where(tickets.c.id == ticket_id).values(**change))
            if "department" in change:
                conn.execute(
                    events.insert(),
                    {"ticket_id": ticket_id, "kind": "rerouted", "actor": "y", "data": {}, "at": NOW},
                )
    assert_same(*stats(store))


def test_an_import_into_old_days_invalidates_them(store: SqlStore) -> None:
    seed(store)
    assert_same(*stats(store))
    rows = [
        ImportedTicket(
            key=f"import-{i}",
            subject="old",
            body="from the old system",
            requester="old@example.com",
            channel=Channel.EMAIL,
            department="HR",
            priority=Priority.LOW,
            status=Status.RESOLVED,
            confidence=1.0,
            summary="",
            classifier="import",
            created_at=NOW - timedelta(days=10 + i, hours=3),
            updated_at=NOW - timedelta(days=9 + i),
            resolved_at=NOW - timedelta(days=9 + i),
        )
        for i in range(20)
    ]
    assert len(SqlImportStore(store.engine).insert(rows, actor="test")) == 20
    after, exact = stats(store)
    assert_same(after, exact)
    assert after.by_classifier["import"] == 20


def test_figures_computed_before_a_change_are_not_kept(store: SqlStore) -> None:
    """A reader that noted a day's version, then lost the race to a write, must not store what it computed."""
    ids = seed(store, n=50)
    day = (NOW - timedelta(days=20)).date()
    with store.engine.begin() as conn:
        conn.execute(update(tickets).where(tickets.c.id == ids[0]).values(created_at=stats_days.day_start(day)))
    pg = store.engine.dialect.name == "postgresql"
    with store.engine.connect() as conn:
        _, versions = stats_days.read_days(conn, [day])
        computed = stats_days.figures_by_day(conn, stats_days.runs([day]), pg=pg)
    with store.engine.begin() as conn:  # the write lands between computing and storing
        conn.execute(update(tickets).where(tickets.c.id == ids[0]).values(status="closed"))
    with store.engine.begin() as conn:
        stats_days.store_days(conn, computed, versions, pg=pg)
    with store.engine.connect() as conn:
        cached, _ = stats_days.read_days(conn, [day])
    assert cached == {}
    assert_same(*stats(store))


def test_todays_tickets_do_not_touch_the_cache_and_short_periods_stay_exact(store: SqlStore) -> None:
    ids = seed(store, n=50)
    with store.engine.begin() as conn:
        conn.execute(update(tickets).where(tickets.c.id == ids[0]).values(created_at=NOW))
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM stats_days"))  # whatever moving it out of its old day did
        conn.execute(update(tickets).where(tickets.c.id == ids[0]).values(status="closed", priority="urgent"))
    with store.engine.connect() as conn:
        assert conn.execute(select(days_table)).all() == []  # a change to today's ticket costs the trigger nothing
    month = ticket_stats(store, since=NOW - timedelta(days=30), until=UNTIL)
    assert month == _exact_stats(store.engine, since=NOW - timedelta(days=30), until=UNTIL)


def test_the_scheduler_fills_the_day_cache_at_start_and_every_night(store: SqlStore) -> None:
    seed(store, n=100)
    scheduler = BackgroundScheduler(timezone="UTC")
    stats_warmer(store)(scheduler)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"stats-days-start", "stats-days-nightly"}
    assert "hour='0', minute='20'" in str(jobs["stats-days-nightly"].trigger)
    jobs["stats-days-start"].func()
    assert cached_days(store) >= 60  # every closed day of the API's longest period that has tickets, and more


def test_the_histogram_median_is_the_middle_of_the_buckets() -> None:
    figures = stats_days.Figures()
    for seconds in [10, 20, 30, 100]:
        figures.histogram[stats_days.bucket_of(seconds)] += 1
    assert figures.median_resolution_seconds() == pytest.approx(25, rel=0.005)
    assert stats_days.Figures().median_resolution_seconds() is None
    assert stats_days.Figures.from_json(figures.to_json()) == figures
