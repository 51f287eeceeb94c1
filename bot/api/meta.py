"""REST API: departments and statistics (read-only views over the configuration and SQL aggregates)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from fastapi import APIRouter

from bot.api.auth import ReadToken
from bot.api.deps import Context
from bot.api.errors import ApiError
from bot.api.schemas import DayStats, DepartmentOut, Stats
from core.errors import StorageError
from storage.queries import open_ticket_counts, ticket_stats
from storage.store import SqlStore

log = logging.getLogger(__name__)
router = APIRouter()
MAX_STATS_DAYS = 366


def stats_warmer(store: SqlStore) -> Callable[[BaseScheduler], None]:
    """Scheduler jobs that fill the per-day statistics cache (storage/stats_days.py) for the longest period the
    API serves: once at start and every night after the day closes, so no request pays for computing a year.
    Any replica may run them; the cache makes a second run cheap."""

    def warm() -> None:
        now = datetime.now(UTC)
        started = time.monotonic()
        try:
            ticket_stats(store, since=now - timedelta(days=MAX_STATS_DAYS), until=now, now=now)
        except StorageError as exc:
            log.warning("stats: could not fill the day cache (%s); the next long request will", exc)
            return
        log.info("stats: day cache ready for %d days in %.1f s", MAX_STATS_DAYS, time.monotonic() - started)

    def register(scheduler: BaseScheduler) -> None:
        scheduler.add_job(warm, id="stats-days-start", name="statistics day cache", replace_existing=True)
        scheduler.add_job(
            warm,
            trigger=CronTrigger(hour=0, minute=20, timezone=UTC),
            id="stats-days-nightly",
            name="statistics day cache (00:20 UTC)",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=3600,
            replace_existing=True,
        )

    return register


@router.get("/departments", response_model=list[DepartmentOut], tags=["departments"])
def departments(token: ReadToken, ctx: Context) -> list[DepartmentOut]:
    """The configured departments, in configuration order, with their open tickets."""
    counts = open_ticket_counts(ctx.store)
    triage = ctx.config.routing.triage_department.lower()
    return [
        DepartmentOut(
            name=d.name,
            description=d.description,
            triage=d.name.lower() == triage,
            has_slack_channel=d.slack_channel is not None,
            open_tickets=counts.get(d.name, 0),
        )
        for d in ctx.config.departments
    ]


@router.get("/stats", response_model=Stats, tags=["stats"])
def stats(token: ReadToken, ctx: Context, since: datetime | None = None, until: datetime | None = None) -> Stats:
    """Figures for the tickets created in [since, until) (default: the last 30 days), per day in UTC."""
    until = until or datetime.now(UTC)
    since = since or until - timedelta(days=30)
    for name, value in (("since", since), ("until", until)):
        if value.tzinfo is None:
            raise ApiError(
                422,
                "invalid",
                f"{name}: give a timezone, e.g. 2026-01-31T00:00:00Z",
                fields=[{"field": name, "in": "query", "message": "needs a timezone"}],
            )
    if since >= until or until - since > timedelta(days=MAX_STATS_DAYS):
        message = f"since must be before until, at most {MAX_STATS_DAYS} days apart"
        raise ApiError(422, "invalid", message, fields=[{"field": "since", "in": "query", "message": message}])
    figures = ticket_stats(ctx.store, since=since, until=until)
    return Stats(
        since=since,
        until=until,
        total=figures.total,
        by_department=figures.by_department,
        by_status=figures.by_status,
        by_priority=figures.by_priority,
        by_channel=figures.by_channel,
        by_classifier=figures.by_classifier,
        mean_confidence=round(figures.mean_confidence, 4) if figures.mean_confidence is not None else None,
        reroute_rate=round(figures.rerouted / figures.total, 4) if figures.total else None,
        median_resolution_seconds=figures.median_resolution_seconds,
        per_day=[DayStats(day=d, created=c, resolved=r) for d, c, r in figures.per_day],
    )
