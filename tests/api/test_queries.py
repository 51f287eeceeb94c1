"""storage.queries on both engines: stats aggregates with known answers, streaming, cursors."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from core.errors import InvalidInput
from core.ticket import Priority, Status
from storage.queries import Cursor, TicketQuery, iter_tickets, ticket_page, ticket_stats
from storage.store import SqlStore
from storage.tables import TicketEventRow, TicketRow

DAY1 = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)


def add(store: SqlStore, rows: list[dict[str, Any]]) -> list[int]:
    """Tickets inserted as they are stored, with chosen times (the pipeline would stamp them now)."""
    table = TicketRow.metadata.tables["tickets"]
    base = {
        "subject": "s",
        "body": "b",
        "requester": "ana@example.com",
        "requester_name": "",
        "channel": "email",
        "department": "IT Support",
        "priority": "medium",
        "status": "new",
        "confidence": 0.5,
        "summary": "",
        "classifier": "offline",
        "triaged": False,
    }
    ids = []
    with store.engine.begin() as conn:
        for row in rows:
            values = {**base, **row}
            values.setdefault("updated_at", values["created_at"])
            ids.append(conn.execute(table.insert().returning(table.c.id), values).scalar_one())
    return ids


def test_stats_are_exact(store: SqlStore) -> None:
    resolved = [10, 20, 30, 100]  # seconds to resolution: the median is 25
    ids = add(
        store,
        [
            {
                "created_at": DAY1 + timedelta(minutes=i * 40),
                "resolved_at": DAY1 + timedelta(minutes=i * 40, seconds=s),
                "status": "resolved",
                "department": "HR" if i else "Finance",
                "confidence": 0.2 * (i + 1),
                "classifier": "claude" if i % 2 else "offline",
                "channel": "slack" if i == 3 else "email",
                "priority": "urgent" if i == 2 else "medium",
            }
            for i, s in enumerate(resolved)
        ]
        + [{"created_at": DAY1 + timedelta(hours=5)}, {"created_at": DAY1 - timedelta(days=10)}],
    )
    events = TicketEventRow.metadata.tables["ticket_events"]
    with store.engine.begin() as conn:
        for ticket_id in (ids[1], ids[1], ids[4]):  # twice for one ticket: it counts once
            conn.execute(
                events.insert(),
                {"ticket_id": ticket_id, "kind": "rerouted", "actor": "x", "data": {}, "at": DAY1 + timedelta(hours=6)},
            )

    stats = ticket_stats(store, since=DAY1 - timedelta(days=1), until=DAY1 + timedelta(days=2))
    assert stats.total == 5
    assert stats.by_department == {"Finance": 1, "HR": 3, "IT Support": 1}
    assert stats.by_status == {"resolved": 4, "new": 1}
    assert stats.by_priority == {"medium": 4, "urgent": 1}
    assert stats.by_channel == {"email": 4, "slack": 1}
    assert stats.by_classifier == {"offline": 3, "claude": 2}
    assert stats.mean_confidence == pytest.approx((0.2 + 0.4 + 0.6 + 0.8 + 0.5) / 5)
    assert stats.rerouted == 2
    assert stats.median_resolution_seconds == pytest.approx(25, abs=0.01)
    # Day 1 23:00, 23:40 (resolved); the rest after midnight UTC.
    assert stats.per_day == [(date(2026, 3, 1), 2, 2), (date(2026, 3, 2), 3, 2)]

    odd = ticket_stats(store, since=DAY1, until=DAY1 + timedelta(minutes=100))  # 10, 20, 30 s: the median is 20
    assert odd.median_resolution_seconds == pytest.approx(20, abs=0.01)
    empty = ticket_stats(store, since=DAY1 + timedelta(days=5), until=DAY1 + timedelta(days=6))
    assert (empty.total, empty.mean_confidence, empty.median_resolution_seconds, empty.per_day) == (0, None, None, [])


def test_streaming_and_paging_agree_and_ties_are_ordered_by_id(store: SqlStore) -> None:
    same_time = [{"created_at": DAY1} for _ in range(7)]
    ids = add(store, same_time + [{"created_at": DAY1 + timedelta(seconds=1), "priority": "high"}])
    expected = [ids[-1], *reversed(ids[:-1])]
    assert [t.id for t in iter_tickets(store, TicketQuery(), batch_size=3)] == expected
    pages, cursor = [], None
    while True:
        page = ticket_page(store, TicketQuery(), limit=2, cursor=cursor)
        pages += [t.id for t in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == expected
    high = list(iter_tickets(store, TicketQuery(priority=(Priority.HIGH,), status=(Status.NEW,))))
    assert [t.id for t in high] == [ids[-1]]


@pytest.mark.parametrize("bad", ["", "x", "dHx4", Cursor(DAY1, 1).encode()[:-3], "not base64!"])
def test_foreign_cursors_are_invalid_input(bad: str) -> None:
    if not bad:
        assert Cursor.decode(Cursor(DAY1, 1).encode()) == Cursor(DAY1, 1)
        return
    with pytest.raises(InvalidInput, match="cursor"):
        Cursor.decode(bad)
