"""Summarise stage, scheduled: APScheduler jobs compose each digest once and hand its deliveries to the outbox.

Each digest kind (department, admin) has a cron schedule in the digest timezone. A firing looks at the latest
scheduled time at or before now: within ``misfire_grace_seconds`` of it, every digest of that kind not yet
recorded for its day is composed and claimed (``DigestStore.claim_digest``: the ``digest_runs`` row and the outbox
items commit together, so of several replicas exactly one enqueues); later than that, it is recorded as skipped
and logged. The same check runs once at start-up, because APScheduler's in-memory job store forgets a firing
missed while the process was down: a bot back within the window still sends the 09:00 digest.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger

from core.config import Config
from core.digest import (
    ADMIN_SCOPE,
    Digest,
    DigestPeriod,
    compose_digest,
    department_scope,
    digest_to_json,
    local_midnight,
    period_for,
)
from core.errors import ConfigError, InvalidInput
from core.outbox import OutboxItem, OutboxKind
from core.ports import DigestStore

log = logging.getLogger(__name__)

Kind = Literal["department", "admin"]
KINDS: tuple[Kind, ...] = ("department", "admin")
# matplotlib keeps shared caches (fonts, text layout): draw one chart at a time, whichever thread asks.
_CHART_LOCK = threading.Lock()


def utcnow() -> datetime:
    return datetime.now(UTC)


DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def cron_days(field: str) -> str:
    """A crontab day-of-week field with numbers as cron means them (0 or 7 = Sunday), spelled as names.

    APScheduler 3's ``from_crontab`` reads numbers with Monday as 0, so ``1-5`` would fire Tuesday to Saturday;
    names mean the same to both.
    """
    days: set[int] = set()
    named: list[str] = []
    for token in field.lower().split(","):
        base, _, step_text = token.partition("/")
        if base != "*" and not base.replace("-", "").isdigit():
            named.append(token)  # names (mon-fri) already mean what they say
            continue
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            first, last = (int(n) for n in base.split("-", 1))
        else:
            first = last = int(base)
        if not (0 <= first <= 7 and 0 <= last <= 7) or first > last:
            raise ValueError(f"day of week {token!r} is not a cron range of 0-7")
        days.update(n % 7 for n in range(first, last + 1, int(step_text or 1)))
    if len(days) == 7 and not named:
        return "*"
    return ",".join([DAY_NAMES[n] for n in (1, 2, 3, 4, 5, 6, 0) if n in days] + named)


class DigestSchedule:
    """One cron expression in one timezone, asked about past firings (APScheduler only looks forward)."""

    def __init__(self, cron: str, timezone: str) -> None:
        try:
            fields = cron.split()
            if len(fields) != 5:
                raise ValueError("needs five fields: minute hour day month day-of-week")
            fields[4] = cron_days(fields[4])
            self.trigger = CronTrigger.from_crontab(" ".join(fields), timezone=ZoneInfo(timezone))
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"digests: bad cron expression {cron!r}: {exc}") from exc
        self.cron = cron
        self.timezone = timezone

    def _fires(self, start: datetime, end: datetime) -> list[datetime]:
        """Fire times in [start, end), oldest first (bounded: a digest schedule fires a few times a day)."""
        out: list[datetime] = []
        t = self.trigger.get_next_fire_time(None, start)
        while t is not None and t < end and len(out) < 10_000:
            out.append(t)
            t = self.trigger.get_next_fire_time(t, t + timedelta(seconds=1))
        return out

    def previous(self, before: datetime) -> datetime | None:
        """The latest fire time strictly before ``before``, as aware UTC."""
        for lookback in (timedelta(days=1), timedelta(days=8), timedelta(days=32), timedelta(days=367)):
            fires = self._fires(before - lookback, before)
            if fires:
                return fires[-1].astimezone(UTC)
        return None

    def latest(self, now: datetime) -> datetime | None:
        """The latest fire time at or before ``now``."""
        return self.previous(now + timedelta(microseconds=1))

    def fire_on(self, day: date) -> datetime | None:
        """The first fire time on the local ``day``, or None when the schedule skips that day."""
        start = local_midnight(day, self.timezone)
        fires = self._fires(start, local_midnight(day + timedelta(days=1), self.timezone))
        return fires[0].astimezone(UTC) if fires else None


def chart_png(digest: Digest) -> bytes:
    """Tickets per day per department (stacked bars, last 14 days) as a small PNG (matplotlib, Agg backend)."""
    assert digest.daily is not None
    with _CHART_LOCK:
        return _draw(digest.daily.days, digest.daily.counts)


def _draw(days: Sequence[date], series: Mapping[str, Sequence[int]]) -> bytes:
    # Imported here: only the admin digest draws, so the bot and the CLI start without loading matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Figure + Agg canvas rather than pyplot: no global state, so jobs on scheduler threads cannot collide.
    fig = Figure(figsize=(7.0, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = list(range(len(days)))
    bottom = [0] * len(days)
    for name, counts in series.items():
        ax.bar(x, counts, bottom=bottom, label=name, width=0.8)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_xticks(x, [f"{d:%d %b}" for d in days], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("tickets")
    ax.set_title("Tickets per day per department, last 14 days", fontsize=9)
    if series:
        ax.legend(fontsize=7, loc="upper left", ncols=min(5, len(series)), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


@dataclass
class DigestService:
    """Composes, claims and schedules the digests of one configuration."""

    config: Config
    store: DigestStore
    slack: bool = False  # a Slack sender exists: enqueue Slack posts
    clock: Callable[[], datetime] = utcnow
    schedules: dict[Kind, DigestSchedule] = field(init=False)

    def __post_init__(self) -> None:
        d = self.config.digests
        self.schedules = {
            "department": DigestSchedule(d.department_cron, d.timezone),
            "admin": DigestSchedule(d.admin_cron, d.timezone),
        }

    @property
    def grace(self) -> timedelta:
        return timedelta(seconds=self.config.digests.misfire_grace_seconds)

    def scopes(self, kind: Kind) -> list[str]:
        if kind == "admin":
            return [ADMIN_SCOPE]
        return [department_scope(name) for name in self.config.department_names]

    @staticmethod
    def kind_of(scope: str) -> Kind:
        return "admin" if scope == ADMIN_SCOPE else "department"

    def scope_for(self, name: str) -> str:
        """``admin`` or a configured department's scope, for the CLI's ``--scope``.

        Raises:
            InvalidInput: no such department.
        """
        if name.strip().lower() == ADMIN_SCOPE:
            return ADMIN_SCOPE
        for department in self.config.department_names:
            if department.lower() == name.strip().lower():
                return department_scope(department)
        names = ", ".join(self.config.department_names)
        raise InvalidInput(f"--scope: no department {name!r}; choose admin or one of: {names}")

    # -- periods ----------------------------------------------------------------------------------------------------

    def period_at(self, scope: str, fire_at: datetime, *, day: date | None = None) -> DigestPeriod:
        """The period of the digest the schedule fired at ``fire_at`` (for the local ``day``, by default
        the day of ``fire_at``)."""
        schedule = self.schedules[self.kind_of(scope)]
        previous = schedule.previous(fire_at) or fire_at - timedelta(days=1)
        day = day or fire_at.astimezone(ZoneInfo(schedule.timezone)).date()
        period = period_for(
            scope,
            fire_at=fire_at,
            previous_fire_at=previous,
            last_end=self.store.last_digest_end(scope, before=day),
            timezone=schedule.timezone,
        )
        return replace(period, day=day)

    def period_on(self, scope: str, day: date, *, now: datetime) -> DigestPeriod:
        """The period of the scope's digest for a local ``day`` (the CLI's ``--date``), ending no later than now.

        A day the schedule skips (a weekend for department digests) ends at the next local midnight.
        """
        schedule = self.schedules[self.kind_of(scope)]
        fire_at = schedule.fire_on(day) or local_midnight(day + timedelta(days=1), schedule.timezone)
        period = self.period_at(scope, fire_at, day=day)
        if period.ends_at > now:
            period = replace(period, starts_at=min(period.starts_at, now), ends_at=now)
        return period

    # -- composing and claiming -------------------------------------------------------------------------------------

    def compose(self, period: DigestPeriod, *, now: datetime | None = None) -> Digest:
        return compose_digest(
            self.store,
            period,
            departments=self.config.department_names,
            now=now or self.clock(),
            stale_days=self.config.digests.stale_days,
        )

    def items(self, digest: Digest) -> list[OutboxItem]:
        """The digest's deliveries, one outbox item per destination, each with a dedupe key of its own."""
        period = digest.period
        data = digest_to_json(digest)
        items: list[OutboxItem] = []
        chart = base64.b64encode(chart_png(digest)).decode("ascii") if digest.daily is not None else None
        if period.is_admin:
            channel = self.config.slack.admin_channel
            if self.slack and channel:
                payload: dict[str, Any] = {"digest": data, "channel": channel, "chart_png": chart}
                items.append(OutboxItem(OutboxKind.SLACK_DIGEST, f"digest:{period.key}:slack:{channel}", payload))
            sender = self.config.email.support_addresses[0] if self.config.email.support_addresses else None
            for address in self.config.digests.admin_emails if sender else []:
                payload = {
                    "digest": data,
                    "to": address,
                    "from": sender,
                    "from_name": self.config.email.from_name,
                    "chart_png": chart,
                }
                key = f"digest:{period.key}:email:{address.lower()}"
                items.append(OutboxItem(OutboxKind.DIGEST_EMAIL, key, payload))
            return items
        department = next((d for d in self.config.departments if d.name == period.department), None)
        if self.slack and department is not None and department.slack_channel:
            channel = department.slack_channel
            payload = {"digest": data, "channel": channel}
            items.append(OutboxItem(OutboxKind.SLACK_DIGEST, f"digest:{period.key}:slack:{channel}", payload))
        return items

    def deliver(self, period: DigestPeriod, *, now: datetime | None = None, retake_skipped: bool = False) -> bool:
        """Compose the digest and claim it; True when this call enqueued it (False: another process did)."""
        now = now or self.clock()
        digest = self.compose(period, now=now)
        claimed = self.store.claim_digest(period, self.items(digest), now=now, retake_skipped=retake_skipped)
        if claimed:
            log.info("digest %s: enqueued (%s)", period.key, "quiet day" if digest.quiet else "composed")
        return claimed

    def run_due(self, kind: Kind, now: datetime | None = None, *, startup: bool = False) -> dict[str, str]:
        """Deliver the kind's digests for its latest scheduled time, if within the misfire window.

        Returns each scope's outcome: ``sent``, ``done`` (already recorded, by us or another replica),
        ``skipped`` (missed by more than the window; recorded and logged) or ``lost`` (claimed elsewhere meanwhile).
        """
        now = now or self.clock()
        fire_at = self.schedules[kind].latest(now)
        if fire_at is None:
            return {}
        late = now - fire_at
        outcomes: dict[str, str] = {}
        for scope in self.scopes(kind):
            period = self.period_at(scope, fire_at)
            # Cheap early exit for replicas that lose the race by more than a moment (the claim decides anyway).
            if self.store.digest_status(scope, period.day) is not None:
                outcomes[scope] = "done"
            elif late > self.grace:
                reason = f"missed by {late.total_seconds():.0f}s (window {self.grace.total_seconds():.0f}s)"
                if self.store.skip_digest(period, now=now, reason=reason):
                    # A firing the scheduler itself ran late is a warning; one missed while the bot was stopped
                    # (found at start-up) is expected after any long stop, and a fresh install always has one.
                    level = logging.INFO if startup else logging.WARNING
                    log.log(level, "digest %s (due %s) skipped: %s", period.key, fire_at.isoformat(), reason)
                outcomes[scope] = "skipped"
            else:
                outcomes[scope] = "sent" if self.deliver(period, now=now) else "lost"
        return outcomes

    def catch_up(self) -> None:
        """At start-up: a digest missed while the process was down goes out now if still within its window."""
        for kind in KINDS:
            self._run_logged(kind, startup=True)

    def _run_logged(self, kind: Kind, *, startup: bool = False) -> None:
        try:
            self.run_due(kind, startup=startup)
        except Exception:  # noqa: BLE001 - a job must not kill the scheduler thread; the next firing retries
            log.exception("%s digests failed; the next firing tries again", kind)

    def register(self, scheduler: BaseScheduler) -> None:
        """Add the cron jobs (coalesced, with the misfire window) and the one-off start-up catch-up."""
        if not self.config.digests.enabled:
            log.info("digests: disabled")
            return
        grace = max(1, self.config.digests.misfire_grace_seconds)
        for kind in KINDS:
            scheduler.add_job(
                self._run_logged,
                trigger=self.schedules[kind].trigger,
                args=[kind],
                id=f"digest-{kind}",
                name=f"{kind} digests ({self.schedules[kind].cron}, {self.schedules[kind].timezone})",
                coalesce=True,
                misfire_grace_time=grace,
                max_instances=1,
                replace_existing=True,
            )
        scheduler.add_job(self.catch_up, id="digest-catch-up", name="missed digests", replace_existing=True)
