"""Summarise stage: digest periods, the figures of a department or admin digest, and their text, Slack and email forms.

A digest covers a *period*: from the end of the scope's last digest (or, for the first one, the previous scheduled
time) to the scheduled time it is for. Counts of open work (open, stale, unassigned urgent) are taken when the
digest is composed. Every figure comes from the store as an SQL aggregate (``DigestStore``); this module only
arranges and renders them. Ticket summaries come from requesters' text, so they are escaped wherever rendered.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from core.ticket import Priority, Status

if TYPE_CHECKING:
    from core.ports import DigestStore

ADMIN_SCOPE = "admin"
DEPARTMENT_PREFIX = "department:"
OPEN_STATUSES = tuple(s for s in Status if s.is_open)
CHART_DAYS = 14
LIST_LIMIT = 5
# "Since the last digest" never reaches back further than this: a digest after a long outage stays readable.
MAX_LOOKBACK = timedelta(days=31)


def department_scope(department: str) -> str:
    """The ``digest_runs.scope`` of a department's digest."""
    return DEPARTMENT_PREFIX + department


# -- periods ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DigestPeriod:
    """Which digest: its scope, the local day it is for (the exactly-once key) and the window it covers."""

    scope: str
    day: date
    starts_at: datetime  # aware UTC, inclusive
    ends_at: datetime  # aware UTC, exclusive: the scheduled time
    timezone: str

    @property
    def department(self) -> str | None:
        return self.scope.removeprefix(DEPARTMENT_PREFIX) if self.scope.startswith(DEPARTMENT_PREFIX) else None

    @property
    def is_admin(self) -> bool:
        return self.scope == ADMIN_SCOPE

    @property
    def key(self) -> str:
        """A stable name for dedupe keys: ``admin:2026-03-30``."""
        return f"{self.scope}:{self.day.isoformat()}"


def period_for(
    scope: str,
    *,
    fire_at: datetime,
    previous_fire_at: datetime,
    last_end: datetime | None,
    timezone: str,
) -> DigestPeriod:
    """The period of the digest scheduled at ``fire_at``: since the last digest of the scope, else since the
    previous scheduled time.

    ``last_end`` is where the scope's last delivered digest ended; after a skipped digest it reaches further back
    than the previous scheduled time, so tickets from the missed day are still reported (up to ``MAX_LOOKBACK``).
    """
    fire_at = fire_at.astimezone(UTC)
    start = previous_fire_at.astimezone(UTC)
    if last_end is not None and fire_at - MAX_LOOKBACK <= last_end < fire_at:
        start = last_end.astimezone(UTC)
    return DigestPeriod(
        scope=scope,
        day=fire_at.astimezone(ZoneInfo(timezone)).date(),
        starts_at=start,
        ends_at=fire_at,
        timezone=timezone,
    )


def local_midnight(day: date, timezone: str) -> datetime:
    """The UTC instant a local day starts (23 or 25 hours before the next on DST change days)."""
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(timezone)).astimezone(UTC)


def chart_days(day: date, days: int = CHART_DAYS) -> list[date]:
    """The ``days`` whole local days before ``day`` (the digest's own day is not over yet)."""
    return [day - timedelta(days=n) for n in range(days, 0, -1)]


def day_boundaries(days: Sequence[date], timezone: str) -> list[datetime]:
    """UTC instants of each day's local midnight plus the end of the last day: ``len(days) + 1`` values."""
    return [local_midnight(d, timezone) for d in days] + [local_midnight(days[-1] + timedelta(days=1), timezone)]


# -- figures ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TicketLine:
    """One ticket listed in a digest; ``summary`` is untrusted text."""

    id: int
    summary: str
    status: str
    priority: str
    created_at: datetime
    updated_at: datetime
    assignee: str | None = None


@dataclass(frozen=True, slots=True)
class OpenCount:
    """Open tickets of one department with one status and priority, with how many of them are stale or
    urgent and unassigned, and the oldest creation and activity times among them."""

    department: str
    status: str
    priority: str
    count: int
    stale: int
    unassigned_urgent: int
    oldest_created_at: datetime | None
    oldest_updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class DepartmentFigures:
    """Everything a department digest reports (the admin digest shows these side by side)."""

    department: str
    new: int = 0
    resolved: int = 0
    open_by_status: Mapping[str, int] = field(default_factory=dict)
    open_by_priority: Mapping[str, int] = field(default_factory=dict)
    stale: int = 0
    unassigned_urgent: int = 0
    oldest_open_at: datetime | None = None
    median_first_action_s: float | None = None
    median_resolution_s: float | None = None
    oldest_open: tuple[TicketLine, ...] = ()
    stale_tickets: tuple[TicketLine, ...] = ()
    unassigned_urgent_tickets: tuple[TicketLine, ...] = ()

    @property
    def open_total(self) -> int:
        return sum(self.open_by_status.values())


@dataclass(frozen=True, slots=True)
class RoutingFigures:
    """Routing quality over the period: who decided, how sure, and how often people corrected the routing."""

    decided_by: Mapping[str, int] = field(default_factory=dict)  # classifier -> tickets created in the period
    mean_confidence: float | None = None
    rerouted_from: Mapping[str, int] = field(default_factory=dict)  # department -> reroutes away in the period
    routed_to: Mapping[str, int] = field(default_factory=dict)  # department -> tickets routed in the period

    def share(self, classifier: str) -> float:
        total = sum(self.decided_by.values())
        return self.decided_by.get(classifier, 0) / total if total else 0.0

    def reroute_rate(self, department: str) -> float | None:
        routed = self.routed_to.get(department, 0)
        return self.rerouted_from.get(department, 0) / routed if routed else None


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """Delivery health now: what needs a person."""

    parked_inbound: int = 0
    outbox_parked: int = 0
    outbox_retrying: int = 0


@dataclass(frozen=True, slots=True)
class DailyCounts:
    """Tickets created per local day per department (the admin chart)."""

    days: tuple[date, ...]
    counts: Mapping[str, tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class Digest:
    """One composed digest: a department's (one entry in ``departments``) or the admin one (all, plus extras)."""

    period: DigestPeriod
    generated_at: datetime
    stale_days: int
    departments: tuple[DepartmentFigures, ...]
    routing: RoutingFigures | None = None
    queues: QueueFigures | None = None
    daily: DailyCounts | None = None

    @property
    def title(self) -> str:
        what = "Admin digest" if self.period.is_admin else f"{self.period.department} digest"
        return f"{what} for {self.period.day:%a %d %b %Y}"

    @property
    def quiet(self) -> bool:
        """Nothing happened and nothing is open: a "quiet day"."""
        return all(d.new == 0 and d.resolved == 0 and d.open_total == 0 for d in self.departments)


def compose_digest(
    store: DigestStore,
    period: DigestPeriod,
    *,
    departments: Sequence[str],
    now: datetime,
    stale_days: int,
    list_limit: int = LIST_LIMIT,
) -> Digest:
    """Collect a digest's figures: a handful of aggregate queries, whatever the size of the tables."""
    only = [period.department] if period.department is not None else None
    names = list(only or departments)
    stale_before = now - timedelta(days=stale_days)
    flows = store.new_and_resolved(departments=only, starts_at=period.starts_at, ends_at=period.ends_at)
    opens = store.open_counts(departments=only, stale_before=stale_before)
    medians = store.medians(departments=only, starts_at=period.starts_at, ends_at=period.ends_at)
    if only is None:
        # Tickets of a department no longer configured are still reported, after the configured ones.
        seen = set(flows) | {o.department for o in opens} | set(medians)
        names += sorted(seen - set(names))
    figures = []
    for name in names:
        mine = [o for o in opens if o.department == name]
        by_status: dict[str, int] = {}
        by_priority: dict[str, int] = {}
        for o in mine:
            by_status[o.status] = by_status.get(o.status, 0) + o.count
            by_priority[o.priority] = by_priority.get(o.priority, 0) + o.count
        lists: tuple[list[TicketLine], list[TicketLine], list[TicketLine]] = ([], [], [])
        if only is not None and list_limit > 0:
            lists = store.ticket_lists(name, stale_before=stale_before, limit=list_limit)
        first, resolution = medians.get(name, (None, None))
        new, resolved = flows.get(name, (0, 0))
        figures.append(
            DepartmentFigures(
                department=name,
                new=new,
                resolved=resolved,
                open_by_status=_ordered(by_status, [s.value for s in OPEN_STATUSES]),
                open_by_priority=_ordered(by_priority, [p.value for p in reversed(Priority)]),
                stale=sum(o.stale for o in mine),
                unassigned_urgent=sum(o.unassigned_urgent for o in mine),
                oldest_open_at=min((o.oldest_created_at for o in mine if o.oldest_created_at), default=None),
                median_first_action_s=first,
                median_resolution_s=resolution,
                oldest_open=tuple(lists[0]),
                stale_tickets=tuple(lists[1]),
                unassigned_urgent_tickets=tuple(lists[2]),
            )
        )
    if only is not None:
        return Digest(period=period, generated_at=now, stale_days=stale_days, departments=tuple(figures))
    days = chart_days(period.day)
    per_day = store.daily_counts(day_boundaries(days, period.timezone))
    return Digest(
        period=period,
        generated_at=now,
        stale_days=stale_days,
        departments=tuple(figures),
        routing=store.routing(starts_at=period.starts_at, ends_at=period.ends_at),
        queues=store.queues(),
        daily=DailyCounts(
            days=tuple(days),
            counts={name: tuple(per_day.get(name, [0] * len(days))) for name in names},
        ),
    )


def _ordered(counts: Mapping[str, int], order: Sequence[str]) -> dict[str, int]:
    known = {k: counts[k] for k in order if k in counts}
    return known | {k: v for k, v in sorted(counts.items()) if k not in known}


# -- JSON (outbox payloads, `ticketbot digest --json`) ---------------------------------------------------------------


def digest_to_json(digest: Digest) -> dict[str, Any]:
    """A JSON-safe dict of the digest; ``digest_from_json`` reads it back."""

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    def line(t: TicketLine) -> dict[str, Any]:
        return {
            "id": t.id,
            "summary": t.summary,
            "status": t.status,
            "priority": t.priority,
            "created_at": when(t.created_at),
            "updated_at": when(t.updated_at),
            "assignee": t.assignee,
        }

    p = digest.period
    data: dict[str, Any] = {
        "period": {
            "scope": p.scope,
            "day": p.day.isoformat(),
            "starts_at": when(p.starts_at),
            "ends_at": when(p.ends_at),
            "timezone": p.timezone,
        },
        "generated_at": when(digest.generated_at),
        "stale_days": digest.stale_days,
        "departments": [
            {
                "department": d.department,
                "new": d.new,
                "resolved": d.resolved,
                "open_total": d.open_total,
                "open_by_status": dict(d.open_by_status),
                "open_by_priority": dict(d.open_by_priority),
                "stale": d.stale,
                "unassigned_urgent": d.unassigned_urgent,
                "oldest_open_at": when(d.oldest_open_at),
                "median_first_action_s": d.median_first_action_s,
                "median_resolution_s": d.median_resolution_s,
                "oldest_open": [line(t) for t in d.oldest_open],
                "stale_tickets": [line(t) for t in d.stale_tickets],
                "unassigned_urgent_tickets": [line(t) for t in d.unassigned_urgent_tickets],
            }
            for d in digest.departments
        ],
    }
    if digest.routing is not None:
        r = digest.routing
        data["routing"] = {
            "decided_by": dict(r.decided_by),
            "mean_confidence": r.mean_confidence,
            "rerouted_from": dict(r.rerouted_from),
            "routed_to": dict(r.routed_to),
        }
    if digest.queues is not None:
        q = digest.queues
        data["queues"] = {
            "parked_inbound": q.parked_inbound,
            "outbox_parked": q.outbox_parked,
            "outbox_retrying": q.outbox_retrying,
        }
    if digest.daily is not None:
        data["daily"] = {
            "days": [d.isoformat() for d in digest.daily.days],
            "counts": {k: list(v) for k, v in digest.daily.counts.items()},
        }
    return data


def digest_from_json(data: Mapping[str, Any]) -> Digest:
    """The digest ``digest_to_json`` wrote (an outbox payload is rendered at send time from it)."""

    def when(value: Any) -> datetime | None:
        return datetime.fromisoformat(value) if isinstance(value, str) else None

    def line(t: Mapping[str, Any]) -> TicketLine:
        return TicketLine(
            id=int(t["id"]),
            summary=str(t["summary"]),
            status=str(t["status"]),
            priority=str(t["priority"]),
            created_at=datetime.fromisoformat(t["created_at"]),
            updated_at=datetime.fromisoformat(t["updated_at"]),
            assignee=t.get("assignee"),
        )

    p = data["period"]
    period = DigestPeriod(
        scope=str(p["scope"]),
        day=date.fromisoformat(p["day"]),
        starts_at=datetime.fromisoformat(p["starts_at"]),
        ends_at=datetime.fromisoformat(p["ends_at"]),
        timezone=str(p["timezone"]),
    )
    departments = tuple(
        DepartmentFigures(
            department=str(d["department"]),
            new=int(d["new"]),
            resolved=int(d["resolved"]),
            open_by_status={str(k): int(v) for k, v in d["open_by_status"].items()},
            open_by_priority={str(k): int(v) for k, v in d["open_by_priority"].items()},
            stale=int(d["stale"]),
            unassigned_urgent=int(d["unassigned_urgent"]),
            oldest_open_at=when(d.get("oldest_open_at")),
            median_first_action_s=d.get("median_first_action_s"),
            median_resolution_s=d.get("median_resolution_s"),
            oldest_open=tuple(line(t) for t in d.get("oldest_open", [])),
            stale_tickets=tuple(line(t) for t in d.get("stale_tickets", [])),
            unassigned_urgent_tickets=tuple(line(t) for t in d.get("unassigned_urgent_tickets", [])),
        )
        for d in data["departments"]
    )
    routing = queues = daily = None
    if "routing" in data:
        r = data["routing"]
        routing = RoutingFigures(
            decided_by={str(k): int(v) for k, v in r["decided_by"].items()},
            mean_confidence=r.get("mean_confidence"),
            rerouted_from={str(k): int(v) for k, v in r["rerouted_from"].items()},
            routed_to={str(k): int(v) for k, v in r["routed_to"].items()},
        )
    if "queues" in data:
        queues = QueueFigures(**{k: int(v) for k, v in data["queues"].items()})
    if "daily" in data:
        daily = DailyCounts(
            days=tuple(date.fromisoformat(d) for d in data["daily"]["days"]),
            counts={str(k): tuple(int(n) for n in v) for k, v in data["daily"]["counts"].items()},
        )
    generated = when(data["generated_at"])
    assert generated is not None
    return Digest(
        period=period,
        generated_at=generated,
        stale_days=int(data["stale_days"]),
        departments=departments,
        routing=routing,
        queues=queues,
        daily=daily,
    )


# -- rendering ---------------------------------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """``3d 4h``, ``2h 05m``, ``12m``; an em dash when there is nothing to measure."""
    if seconds is None:
        return "—"
    minutes = int(round(seconds / 60))
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {mins:02d}m"
    return f"{mins}m"


def _age(digest: Digest, at: datetime | None) -> str:
    return duration((digest.generated_at - at).total_seconds()) if at is not None else "—"


def _window(digest: Digest) -> str:
    tz = ZoneInfo(digest.period.timezone)
    start = digest.period.starts_at.astimezone(tz)
    end = digest.period.ends_at.astimezone(tz)
    return f"{start:%a %d %b %H:%M} – {end:%a %d %b %H:%M} ({digest.period.timezone})"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()) or "none"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


ADMIN_COLUMNS = ("Department", "New", "Resolved", "Open", "Stale", "Urgent*", "Oldest", "1st action", "Resolve")


def admin_rows(digest: Digest) -> list[tuple[str, ...]]:
    """The side-by-side table of the admin digest, one row per department, as display strings."""
    return [
        (
            d.department,
            str(d.new),
            str(d.resolved),
            str(d.open_total),
            str(d.stale),
            str(d.unassigned_urgent),
            _age(digest, d.oldest_open_at),
            duration(d.median_first_action_s),
            duration(d.median_resolution_s),
        )
        for d in digest.departments
    ]


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]


QUIET = "Quiet day: no new, resolved or open tickets."


def _admin_notes(digest: Digest, esc: Callable[[str], str], bold: Callable[[str], str]) -> list[str]:
    """What follows the admin table: its legend, routing quality and delivery health, as paragraphs."""
    out = [
        f"Urgent* = open urgent tickets nobody is assigned to; stale = no activity for {digest.stale_days} days; "
        "1st action / Resolve = medians over the period."
    ]
    r = digest.routing
    if r is not None:
        out += ["", bold("Routing")]
        decided = ", ".join(f"{esc(k)} {v} ({r.share(k) * 100:.0f}%)" for k, v in sorted(r.decided_by.items()))
        out.append(f"Decided by: {decided or 'no tickets'}")
        out.append(f"Mean confidence: {_pct(r.mean_confidence)}")
        rates = [
            f"{esc(d.department)} {_pct(r.reroute_rate(d.department))} "
            f"({r.rerouted_from.get(d.department, 0)}/{r.routed_to.get(d.department, 0)})"
            for d in digest.departments
        ]
        out.append("Rerouted by people (away/routed): " + ", ".join(rates))
    q = digest.queues
    if q is not None:
        out += ["", bold("Delivery")]
        out.append(f"Parked inbound messages: {q.parked_inbound}")
        out.append(f"Outbox: {q.outbox_parked} parked, {q.outbox_retrying} retrying")
    return out


def _department_body(digest: Digest, esc: Callable[[str], str], bold: Callable[[str], str]) -> list[str]:
    """A department digest after its title, as paragraphs separated by empty lines."""
    d = digest.departments[0]
    out = [
        f"New: {d.new}    Resolved: {d.resolved}    Open: {d.open_total}",
        f"Open by status: {_counts(d.open_by_status)}",
        f"Open by priority: {_counts(d.open_by_priority)}",
        f"Median time to first action: {duration(d.median_first_action_s)}; "
        f"to resolution: {duration(d.median_resolution_s)}",
    ]

    def opened(t: TicketLine) -> str:
        return f"open {_age(digest, t.created_at)}"

    def idle(t: TicketLine) -> str:
        return f"idle {_age(digest, t.updated_at)}"

    sections: tuple[tuple[str, tuple[TicketLine, ...], int, Callable[[TicketLine], str]], ...] = (
        ("Oldest open", d.oldest_open, d.open_total, opened),
        (f"No activity for {digest.stale_days}+ days", d.stale_tickets, d.stale, idle),
        ("Urgent and unassigned", d.unassigned_urgent_tickets, d.unassigned_urgent, opened),
    )
    for heading, tickets, total, note in sections:
        out += ["", bold(f"{heading} ({total})")]
        if not tickets:
            out.append("none")
        for t in tickets:
            status = t.status.replace("_", " ")
            out.append(f"#{t.id} {esc(_clip(t.summary, 120))} ({t.priority}, {status}, {note(t)})")
        if total > len(tickets):
            out.append(f"… and {total - len(tickets)} more")
    return out


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def render_text(digest: Digest) -> str:
    """Plain text: the terminal (``ticketbot digest --dry-run``) and the email's text part."""
    same = str
    out = [digest.title, f"Period: {_window(digest)}"]
    if digest.quiet:
        out.append(QUIET)
    out.append("")
    if digest.period.is_admin:
        out += _table([ADMIN_COLUMNS, *admin_rows(digest)])
        out += _admin_notes(digest, same, same)
    else:
        out += _department_body(digest, same, same)
    return "\n".join(out) + "\n"


def mrkdwn_escape(text: str) -> str:
    """Slack mrkdwn escaping of ``&``, ``<``, ``>`` (as bot/blocks.py does), so text cannot mention or link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(digest: Digest) -> str:
    """The notification text of the Slack post (shown where blocks are not)."""
    return mrkdwn_escape(digest.title)


def slack_blocks(digest: Digest) -> list[dict[str, Any]]:
    """Block Kit for the digest post: every mrkdwn object ``verbatim``, every untrusted string escaped."""

    def section(text: str) -> dict[str, Any]:
        return {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900], "verbatim": True}}

    def bold(text: str) -> str:
        return f"*{text}*"

    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": digest.title[:150]}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"Period: {_window(digest)}", "verbatim": True}]},
    ]
    if digest.quiet:
        blocks.append(section(QUIET))
    if digest.period.is_admin:
        table = _table([ADMIN_COLUMNS, *admin_rows(digest)])
        blocks.append(section("```\n" + "\n".join(mrkdwn_escape(line) for line in table) + "\n```"))
        body = _admin_notes(digest, mrkdwn_escape, bold)
    else:
        body = _department_body(digest, mrkdwn_escape, bold)
    # One section per paragraph keeps each under Slack's 3,000-character limit.
    paragraph: list[str] = []
    for line in [*body, ""]:
        if line:
            paragraph.append(line)
        elif paragraph:
            blocks.append(section("\n".join(paragraph)))
            paragraph = []
    return blocks[:50]


def email_subject(digest: Digest) -> str:
    return digest.title


def render_html(digest: Digest, *, chart_cid: str | None = None) -> str:
    """The email's HTML part, every string escaped; ``chart_cid`` names the inline chart (``cid:``)."""
    e = html.escape

    def bold(text: str) -> str:
        return f"<b>{text}</b>"

    parts = [
        '<!DOCTYPE html><html><body style="font-family: sans-serif">',
        f"<h2>{e(digest.title)}</h2>",
        f"<p>Period: {e(_window(digest))}</p>",
    ]
    if digest.quiet:
        parts.append(f"<p>{QUIET}</p>")
    if digest.period.is_admin:
        head = "".join(f"<th>{e(c)}</th>" for c in ADMIN_COLUMNS)
        rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in admin_rows(digest))
        parts.append(f'<table border="1" cellpadding="4" cellspacing="0"><tr>{head}</tr>{rows}</table>')
        if chart_cid:
            parts.append(f'<p><img src="cid:{e(chart_cid)}" alt="Tickets per day per department, last 14 days"></p>')
        body = _admin_notes(digest, e, bold)
    else:
        body = _department_body(digest, e, bold)
    parts.append("<p>" + "<br>\n".join(line for line in body) + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
