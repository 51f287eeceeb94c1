"""Digest figures as SQL aggregates, checked against hand-computed values on SQLite and PostgreSQL; the claim."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from core.digest import (
    ADMIN_SCOPE,
    DigestPeriod,
    compose_digest,
    day_boundaries,
    department_scope,
)
from core.outbox import OutboxItem, OutboxKind
from storage.digests import SqlDigestStore
from storage.store import SqlStore
from storage.tables import DigestRunRow, InboundRow, OutboxRow, TicketEventRow, TicketRow

IT, HR, GEN = "IT Support", "HR", "General"
TZ = "Europe/London"


def at(text: str) -> datetime:
    """'11-16 10:00' in 2026, UTC."""
    return datetime.strptime(f"2026-{text}", "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def add_ticket(engine: Engine, department: str, created: str, **fields: Any) -> int:
    created_at = at(created)
    values: dict[str, Any] = {
        "subject": fields.pop("subject", "subject"),
        "body": "body",
        "requester": "ana@example.com",
        "channel": "email",
        "department": department,
        "priority": fields.pop("priority", "medium"),
        "status": fields.pop("status", "new"),
        "confidence": fields.pop("confidence", 0.8),
        "summary": fields.pop("summary", f"{department} request"),
        "classifier": fields.pop("classifier", "offline"),
        "created_at": created_at,
        "updated_at": at(fields.pop("updated")) if "updated" in fields else created_at,
    }
    for key in ("first_action_at", "resolved_at"):
        if key in fields:
            values[key] = at(fields.pop(key))
    values.update(fields)
    routed_to = values.pop("routed_to", department)
    with engine.begin() as conn:
        ticket_id = int(conn.execute(insert(TicketRow).values(**values).returning(TicketRow.id)).scalar_one())
        conn.execute(
            insert(TicketEventRow).values(
                ticket_id=ticket_id, kind="routed", actor="router", data={"to": routed_to}, at=created_at
            )
        )
    return ticket_id


def add_event(engine: Engine, ticket_id: int, kind: str, when: str, data: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(TicketEventRow).values(ticket_id=ticket_id, kind=kind, actor="U9", data=data, at=at(when)))


@pytest.fixture
def scenario(engine: Engine) -> Engine:
    """The tickets whose figures are worked out by hand in the tests below (window 11-16 09:00 to 11-17 09:00)."""
    add_ticket(engine, IT, "11-16 10:00", priority="urgent", classifier="claude", confidence=0.9, summary="VPN down")
    add_ticket(
        engine,
        IT,
        "11-16 12:00",
        status="resolved",
        first_action_at="11-16 13:00",
        resolved_at="11-16 16:00",
        classifier="offline",
        confidence=0.5,
        updated="11-16 16:00",
    )
    add_ticket(
        engine,
        IT,
        "11-10 09:00",
        status="in_progress",
        priority="high",
        first_action_at="11-16 11:00",
        updated="11-13 09:00",
        assignee="U1",
        summary="Printer <!channel> & jam",
    )
    add_ticket(engine, IT, "11-01 08:00", status="waiting", first_action_at="11-02 08:00", updated="11-16 20:00")
    add_ticket(
        engine,
        IT,
        "11-15 09:00",
        status="closed",
        first_action_at="11-16 09:30",
        resolved_at="11-17 08:00",
        updated="11-17 08:00",
    )
    hr = add_ticket(engine, HR, "11-16 09:00", priority="low", classifier="claude", confidence=0.7, routed_to=GEN)
    add_event(engine, hr, "rerouted", "11-16 09:30", {"from": GEN, "to": HR})
    add_ticket(engine, HR, "11-17 09:00", priority="urgent", assignee="U2")
    add_ticket(engine, IT, "11-05 09:00", status="resolved", resolved_at="11-17 09:00", updated="11-17 09:00")
    with engine.begin() as conn:
        conn.execute(
            insert(InboundRow).values(
                channel="email",
                dedupe_key="k1",
                payload=b"x",
                received_at=at("11-16 10:00"),
                status="parked",
                updated_at=at("11-16 10:00"),
            )
        )
        for n, (status, attempts) in enumerate([("parked", 8), ("pending", 2), ("pending", 0), ("sent", 1)]):
            conn.execute(
                insert(OutboxRow).values(
                    kind="email",
                    dedupe_key=f"o{n}",
                    payload={},
                    status=status,
                    attempts=attempts,
                    next_attempt_at=at("11-16 10:00"),
                    created_at=at("11-16 10:00"),
                )
            )
    return engine


WINDOW = DigestPeriod(ADMIN_SCOPE, date(2026, 11, 17), at("11-16 09:00"), at("11-17 09:00"), TZ)
NOW = at("11-17 09:00")


def test_department_figures_match_hand_computed_values(scenario: Engine) -> None:
    store = SqlDigestStore(SqlStore(scenario))
    period = DigestPeriod(department_scope(IT), WINDOW.day, WINDOW.starts_at, WINDOW.ends_at, TZ)
    digest = compose_digest(store, period, departments=[IT, HR, GEN], now=NOW, stale_days=3)
    (it,) = digest.departments
    assert (it.department, it.new, it.resolved, it.open_total) == (IT, 2, 2, 3)
    assert dict(it.open_by_status) == {"new": 1, "in_progress": 1, "waiting": 1}
    assert dict(it.open_by_priority) == {"urgent": 1, "high": 1, "medium": 1}
    assert (it.stale, it.unassigned_urgent) == (1, 1)
    assert it.oldest_open_at == at("11-01 08:00")
    # First actions in the window: 1h, 1d 0h30m, 6d 2h: the middle one. Resolutions: 4h and 1d 23h: their mean.
    assert it.median_first_action_s == pytest.approx(88_200, abs=1)
    assert it.median_resolution_s == pytest.approx((14_400 + 169_200) / 2, abs=1)
    assert [t.summary for t in it.oldest_open] == ["IT Support request", "Printer <!channel> & jam", "VPN down"]
    assert [t.summary for t in it.stale_tickets] == ["Printer <!channel> & jam"]
    assert [t.summary for t in it.unassigned_urgent_tickets] == ["VPN down"]
    assert digest.routing is None and digest.daily is None


def test_admin_figures_match_hand_computed_values(scenario: Engine) -> None:
    store = SqlDigestStore(SqlStore(scenario))
    digest = compose_digest(store, WINDOW, departments=[IT, HR, GEN], now=NOW, stale_days=3)
    by_name = {d.department: d for d in digest.departments}
    assert list(by_name) == [IT, HR, GEN]
    hr = by_name[HR]
    assert (hr.new, hr.resolved, hr.open_total, hr.stale, hr.unassigned_urgent) == (1, 0, 2, 0, 0)
    assert hr.median_first_action_s is None and hr.median_resolution_s is None
    assert by_name[IT].median_first_action_s == pytest.approx(88_200, abs=1)
    assert by_name[IT].oldest_open == ()  # the admin digest lists no tickets, only counts
    assert by_name[GEN].open_total == 0
    routing = digest.routing
    assert routing is not None
    assert dict(routing.decided_by) == {"claude": 2, "offline": 1}
    assert routing.mean_confidence == pytest.approx(0.7)
    assert dict(routing.routed_to) == {IT: 2, GEN: 1}
    assert dict(routing.rerouted_from) == {GEN: 1}
    assert routing.reroute_rate(GEN) == 1.0 and routing.reroute_rate(IT) == 0.0 and routing.reroute_rate(HR) is None
    assert digest.queues is not None
    assert (digest.queues.parked_inbound, digest.queues.outbox_parked, digest.queues.outbox_retrying) == (1, 1, 1)
    daily = digest.daily
    assert daily is not None
    assert daily.days[0] == date(2026, 11, 3) and daily.days[-1] == date(2026, 11, 16) and len(daily.days) == 14
    it_days = dict(zip(daily.days, daily.counts[IT], strict=True))
    assert {d: n for d, n in it_days.items() if n} == {
        date(2026, 11, 5): 1,
        date(2026, 11, 10): 1,
        date(2026, 11, 15): 1,
        date(2026, 11, 16): 2,
    }
    assert sum(daily.counts[HR]) == 1 and sum(daily.counts[GEN]) == 0


def test_a_quiet_day_has_zeroes_everywhere(engine: Engine) -> None:
    store = SqlDigestStore(SqlStore(engine))
    digest = compose_digest(store, WINDOW, departments=[IT, HR], now=NOW, stale_days=3)
    assert digest.quiet
    assert [(d.new, d.resolved, d.open_total, d.median_first_action_s) for d in digest.departments] == [
        (0, 0, 0, None),
        (0, 0, 0, None),
    ]
    assert digest.routing is not None and digest.routing.mean_confidence is None
    assert digest.daily is not None and all(sum(c) == 0 for c in digest.daily.counts.values())


def test_daily_counts_follow_local_days_across_both_dst_changes(engine: Engine) -> None:
    # 2026-03-29 and 2026-10-25 are the last Sundays of March and October: 23- and 25-hour days in London.
    for when in (
        "03-28 23:30",
        "03-29 00:30",
        "03-29 22:59",
        "03-29 23:30",
        "10-24 22:59",
        "10-24 23:30",
        "10-25 23:30",
        "10-26 00:30",
    ):
        add_ticket(engine, IT, when)
    store = SqlDigestStore(SqlStore(engine))
    march = [date(2026, 3, 28), date(2026, 3, 29), date(2026, 3, 30)]
    october = [date(2026, 10, 24), date(2026, 10, 25), date(2026, 10, 26)]
    # 23:30 UTC on 29 March is 00:30 BST on the 30th; 23:30 UTC on 24 October is 00:30 BST on the 25th,
    # and 23:30 UTC on the 25th is 23:30 GMT, still the 25th.
    assert store.daily_counts(day_boundaries(march, TZ)) == {IT: [1, 2, 1]}
    assert store.daily_counts(day_boundaries(october, TZ)) == {IT: [1, 2, 1]}


def test_claim_is_exactly_once_and_enqueues_with_the_run(engine: Engine) -> None:
    store = SqlDigestStore(SqlStore(engine))
    items = [OutboxItem(OutboxKind.SLACK_DIGEST, "digest:admin:2026-11-17:slack:C0ADMIN", {"channel": "C0ADMIN"})]
    assert store.claim_digest(WINDOW, items, now=NOW) is True
    assert store.claim_digest(WINDOW, items, now=NOW) is False
    assert store.digest_status(ADMIN_SCOPE, WINDOW.day) == "enqueued"
    assert store.last_digest_end(ADMIN_SCOPE, before=date(2026, 11, 18)) == WINDOW.ends_at
    assert store.last_digest_end(ADMIN_SCOPE, before=WINDOW.day) is None
    with engine.connect() as conn:
        assert conn.execute(select(OutboxRow.dedupe_key)).scalars().all() == [items[0].dedupe_key]


def test_a_skipped_digest_is_recorded_once_and_can_be_retaken_by_hand(engine: Engine) -> None:
    store = SqlDigestStore(SqlStore(engine))
    assert store.skip_digest(WINDOW, now=NOW, reason="late") is True
    assert store.skip_digest(WINDOW, now=NOW, reason="late") is False
    assert store.claim_digest(WINDOW, [], now=NOW) is False  # the scheduler does not send a skipped digest
    assert store.last_digest_end(ADMIN_SCOPE, before=date(2026, 11, 18)) is None  # skipped ones do not count
    assert store.claim_digest(WINDOW, [], now=NOW, retake_skipped=True) is True
    assert store.claim_digest(WINDOW, [], now=NOW, retake_skipped=True) is False
    assert store.digest_status(ADMIN_SCOPE, WINDOW.day) == "enqueued"


def test_concurrent_claims_enqueue_once(engine: Engine) -> None:
    stores = [SqlDigestStore(SqlStore(engine)) for _ in range(3)]
    key = "digest:admin:2026-11-17:email:a@example.com"
    items = [OutboxItem(OutboxKind.DIGEST_EMAIL, key, {"to": "a@example.com"})]
    results: list[bool] = []
    barrier = threading.Barrier(3)

    def claim(store: SqlDigestStore) -> None:
        barrier.wait()
        results.append(store.claim_digest(WINDOW, items, now=NOW))

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, True]
    with engine.connect() as conn:
        assert len(conn.execute(select(DigestRunRow.id)).all()) == 1
        assert len(conn.execute(select(OutboxRow.id)).all()) == 1


def test_the_work_does_not_grow_with_the_table(scenario: Engine) -> None:
    """The same statements whether the table holds 8 tickets or 308, each an aggregate or a LIMITed list."""
    from sqlalchemy import event

    def run() -> list[str]:
        seen: list[str] = []

        def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith(("SELECT", "WITH")):
                seen.append(" ".join(statement.split()).lower())

        event.listen(scenario, "after_cursor_execute", after)
        try:
            compose_digest(SqlDigestStore(SqlStore(scenario)), WINDOW, departments=[IT, HR, GEN], now=NOW, stale_days=3)
        finally:
            event.remove(scenario, "after_cursor_execute", after)
        return seen

    before = run()
    for n in range(300):  # old, resolved history outside the window
        add_ticket(scenario, IT, f"10-{1 + n % 28:02d} 10:00", status="closed", resolved_at="10-29 10:00")
    after = run()
    assert before == after
    assert all("group by" in s or "limit" in s or "count(" in s for s in after), after
    assert not any("tickets.body" in s for s in after)


def test_the_open_ticket_index_predicate_matches_the_open_statuses() -> None:
    from core.ticket import Status
    from storage.tables import OPEN_TICKETS

    assert OPEN_TICKETS == "status IN (" + ", ".join(f"'{s.value}'" for s in Status if s.is_open) + ")"
