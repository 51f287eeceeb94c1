"""Digest periods, assembly and rendering: pure core, with an in-memory store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from core.digest import (
    ADMIN_SCOPE,
    DepartmentFigures,
    Digest,
    DigestPeriod,
    OpenCount,
    QueueFigures,
    RoutingFigures,
    TicketLine,
    chart_days,
    compose_digest,
    day_boundaries,
    department_scope,
    digest_from_json,
    digest_to_json,
    duration,
    local_midnight,
    period_for,
    render_html,
    render_text,
    slack_blocks,
)

TZ = "Europe/London"
NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
HOSTILE = "<!channel> & <@U123|boss> <https://evil.example|click>"


class MemoryDigestStore:
    """Canned aggregates, recording what was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Any]] = []
        t = NOW - timedelta(days=5)
        self.open = [
            OpenCount("IT Support", "new", "urgent", 2, 0, 2, t, t),
            OpenCount("IT Support", "waiting", "low", 3, 3, 0, t - timedelta(days=2), t),
            OpenCount("Legacy", "new", "medium", 1, 1, 0, t, t),
        ]

    def new_and_resolved(self, *, departments: Sequence[str] | None, **kw: Any) -> dict[str, tuple[int, int]]:
        self.asked.append(("flows", departments))
        return {"IT Support": (4, 1), "HR": (0, 2)}

    def open_counts(self, *, departments: Sequence[str] | None, stale_before: datetime) -> list[OpenCount]:
        self.asked.append(("open", stale_before))
        return [o for o in self.open if departments is None or o.department in departments]

    def medians(self, *, departments: Sequence[str] | None, **kw: Any) -> dict[str, tuple[float | None, float | None]]:
        return {"IT Support": (3600.0, None)}

    def ticket_lists(self, department: str, *, stale_before: datetime, limit: int) -> Any:
        self.asked.append(("lists", (department, limit)))
        line = TicketLine(7, HOSTILE, "waiting", "low", NOW - timedelta(days=9), NOW - timedelta(days=4))
        return [line], [line], []

    def routing(self, **kw: Any) -> RoutingFigures:
        return RoutingFigures({"claude": 3, "offline": 1}, 0.8, {"HR": 1}, {"HR": 4, "IT Support": 0})

    def queues(self) -> QueueFigures:
        return QueueFigures(2, 1, 0)

    def daily_counts(self, boundaries: Sequence[datetime]) -> dict[str, list[int]]:
        self.asked.append(("daily", list(boundaries)))
        return {"IT Support": [1] * (len(boundaries) - 1)}


def period(scope: str = ADMIN_SCOPE) -> DigestPeriod:
    return DigestPeriod(scope, date(2026, 11, 17), NOW - timedelta(days=1), NOW, TZ)


def test_the_period_runs_from_the_last_digest_else_from_the_previous_scheduled_time() -> None:
    fire, previous = NOW, NOW - timedelta(days=1)
    first = period_for(ADMIN_SCOPE, fire_at=fire, previous_fire_at=previous, last_end=None, timezone=TZ)
    assert (first.starts_at, first.ends_at, first.day) == (previous, fire, date(2026, 11, 17))
    # After a skipped digest the last delivered one ended two days ago: nothing in between goes unreported.
    after_skip = period_for(
        ADMIN_SCOPE, fire_at=fire, previous_fire_at=previous, last_end=fire - timedelta(days=2), timezone=TZ
    )
    assert after_skip.starts_at == fire - timedelta(days=2)
    ancient = period_for(
        ADMIN_SCOPE, fire_at=fire, previous_fire_at=previous, last_end=fire - timedelta(days=90), timezone=TZ
    )
    assert ancient.starts_at == previous
    assert period(department_scope("HR")).department == "HR" and period().department is None


def test_local_days_on_the_dst_change_days_are_23_and_25_hours_long() -> None:
    spring, autumn = date(2026, 3, 29), date(2026, 10, 25)  # last Sundays of March and October
    assert local_midnight(spring + timedelta(days=1), TZ) - local_midnight(spring, TZ) == timedelta(hours=23)
    assert local_midnight(autumn + timedelta(days=1), TZ) - local_midnight(autumn, TZ) == timedelta(hours=25)
    assert local_midnight(date(2026, 7, 1), TZ) == datetime(2026, 6, 30, 23, 0, tzinfo=UTC)  # BST
    days = chart_days(date(2026, 3, 31))
    assert len(days) == 14 and days[0] == date(2026, 3, 17) and days[-1] == date(2026, 3, 30)
    bounds = day_boundaries(days, TZ)
    assert len(bounds) == 15 and bounds[-1] == datetime(2026, 3, 30, 23, 0, tzinfo=UTC)


def test_a_department_digest_asks_for_its_department_and_lists_its_tickets() -> None:
    store = MemoryDigestStore()
    digest = compose_digest(
        store, period(department_scope("IT Support")), departments=["IT Support", "HR"], now=NOW, stale_days=3
    )
    (it,) = digest.departments
    assert (it.new, it.resolved, it.open_total, it.stale, it.unassigned_urgent) == (4, 1, 5, 3, 2)
    assert dict(it.open_by_status) == {"new": 2, "waiting": 3}
    assert list(it.open_by_priority) == ["urgent", "low"]  # most pressing first
    assert it.oldest_open_at == NOW - timedelta(days=7)
    assert it.median_first_action_s == 3600.0 and it.median_resolution_s is None
    assert [t.id for t in it.oldest_open] == [7]
    assert ("flows", ["IT Support"]) in store.asked and ("lists", ("IT Support", 5)) in store.asked
    assert ("open", NOW - timedelta(days=3)) in store.asked
    assert digest.routing is None and digest.daily is None and not digest.quiet


def test_the_admin_digest_has_every_department_side_by_side_plus_routing_queues_and_chart() -> None:
    store = MemoryDigestStore()
    digest = compose_digest(store, period(), departments=["IT Support", "HR", "Finance"], now=NOW, stale_days=3)
    # Configured departments first, then one no longer configured that still has open tickets.
    assert [d.department for d in digest.departments] == ["IT Support", "HR", "Finance", "Legacy"]
    assert all(not d.oldest_open for d in digest.departments)
    assert digest.routing is not None and digest.routing.share("claude") == 0.75
    assert digest.routing.reroute_rate("HR") == 0.25 and digest.routing.reroute_rate("IT Support") is None
    assert digest.daily is not None and len(digest.daily.days) == 14
    assert digest.daily.counts["IT Support"] == (1,) * 14 and digest.daily.counts["HR"] == (0,) * 14
    text = render_text(digest)
    assert "IT Support    4         1     5      3        2" in text
    assert "Decided by: claude 3 (75%), offline 1 (25%)" in text
    assert "HR 25% (1/4)" in text
    assert "Parked inbound messages: 2" in text and "Outbox: 1 parked, 0 retrying" in text


def test_a_quiet_day_says_so_everywhere() -> None:
    digest = Digest(period(department_scope("HR")), NOW, 3, (DepartmentFigures("HR"),))
    assert digest.quiet
    assert "Quiet day" in render_text(digest)
    assert any("Quiet day" in json.dumps(b) for b in slack_blocks(digest))
    assert "Quiet day" in render_html(digest)


def test_untrusted_text_is_escaped_in_slack_and_html() -> None:
    digest = compose_digest(
        MemoryDigestStore(), period(department_scope("IT Support")), departments=["IT Support"], now=NOW, stale_days=3
    )
    blocks = slack_blocks(digest)
    dumped = json.dumps(blocks)
    assert "<!channel>" not in dumped and "<@U123" not in dumped and "<https://" not in dumped
    assert "&lt;!channel&gt; &amp; &lt;@U123|boss&gt;" in dumped
    for block in blocks:
        if block["type"] == "section":
            assert block["text"]["verbatim"] is True and len(block["text"]["text"]) < 3000
    assert len(blocks) <= 50
    page = render_html(digest)
    assert "<!channel>" not in page and "&lt;!channel&gt; &amp; &lt;@U123|boss&gt;" in page
    assert HOSTILE in render_text(digest)  # the terminal shows the text as it is


def test_the_admin_html_shows_the_table_and_the_inline_chart() -> None:
    digest = compose_digest(MemoryDigestStore(), period(), departments=["IT Support"], now=NOW, stale_days=3)
    page = render_html(digest, chart_cid="chart-1@example.com")
    assert '<img src="cid:chart-1@example.com"' in page and "<th>Department</th>" in page
    assert "<td>IT Support</td><td>4</td>" in page
    blocks = slack_blocks(digest)
    assert blocks[0]["type"] == "header" and "```" in blocks[2 if digest.quiet else 2]["text"]["text"]


def test_json_round_trip() -> None:
    for scope in (ADMIN_SCOPE, department_scope("IT Support")):
        digest = compose_digest(
            MemoryDigestStore(), period(scope), departments=["IT Support", "HR"], now=NOW, stale_days=3
        )
        data = json.loads(json.dumps(digest_to_json(digest)))
        assert digest_from_json(data) == digest


def test_durations_read_like_people_write_them() -> None:
    assert duration(None) == "—"
    assert duration(59) == "1m"
    assert duration(3600 + 5 * 60) == "1h 05m"
    assert duration(88_200) == "1d 0h"
    assert duration(6 * 86400 + 7200) == "6d 2h"
