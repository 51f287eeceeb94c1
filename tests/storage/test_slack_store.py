"""The store's Slack queries (issue 4) on SQLite and PostgreSQL: a ticket's department-channel posts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.classify.base import Classification
from core.message import Channel
from core.outbox import OutboxItem, OutboxKind, OutboxStatus
from core.ports import TicketDraft
from core.route import Route
from core.ticket import Priority
from storage.store import SqlStore

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def open_ticket(store: SqlStore, subject: str) -> int:
    draft = TicketDraft(
        subject=subject,
        body="details",
        requester="U0ANA",
        requester_name="ana",
        channel=Channel.SLACK,
        classification=Classification("IT Support", Priority.MEDIUM, 0.9, subject, "offline"),
        route=Route("IT Support"),
        received_at=NOW,
    )
    return store.open_ticket(None, draft, lambda t: []).id


def post(ticket_id: int, event: str, kind: OutboxKind = OutboxKind.SLACK_POST) -> OutboxItem:
    return OutboxItem(
        kind=kind,
        dedupe_key=f"{kind}:{ticket_id}:{event}",
        ticket_id=ticket_id,
        payload={"channel": "C0IT", "ticket_id": ticket_id, "event": event},
    )


def test_slack_posts_lists_a_tickets_channel_posts_oldest_first_with_their_refs(store: SqlStore) -> None:
    first, other = open_ticket(store, "VPN down"), open_ticket(store, "Printer jam")
    store.enqueue([post(first, "created"), post(other, "created"), post(first, "status-x", OutboxKind.SLACK_DM)])
    store.enqueue([post(first, "comment-1")])
    [card] = [i for i in store.list_outbox() if i.ticket_id == first and i.payload["event"] == "created"]
    store.mark_outbox_sent(card.id, sent_ref="C0IT:1700000001.000100", now=NOW + timedelta(seconds=1))

    posts = store.slack_posts(first)

    assert [p.payload["event"] for p in posts] == ["created", "comment-1"]
    assert [p.status for p in posts] == [OutboxStatus.SENT, OutboxStatus.PENDING]
    assert posts[0].sent_ref == "C0IT:1700000001.000100"
    assert store.slack_posts(other)[0].payload["ticket_id"] == other
    assert store.slack_posts(999) == []
