"""The SQL store on SQLite and PostgreSQL: dedupe keys, claiming, leases, events, threading refs, outbox."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text

from core.classify.base import Classification
from core.errors import NotFound
from core.inbound import InboundRecord, InboundStatus
from core.message import Channel
from core.outbox import OutboxItem, OutboxKind, OutboxStatus
from core.ports import TicketDraft, TicketFilter
from core.route import Route
from core.ticket import EventKind, Priority, Status, Ticket
from storage.search import include_name
from storage.store import SqlStore
from storage.tables import Base

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def record(key: str, **kw: object) -> InboundRecord:
    return InboundRecord(channel=Channel.EMAIL, dedupe_key=key, payload=b"raw " + key.encode(), received_at=NOW, **kw)  # type: ignore[arg-type]


def draft(subject: str = "VPN down", requester: str = "ana@example.com", refs: tuple[str, ...] = ()) -> TicketDraft:
    return TicketDraft(
        subject=subject,
        body="It fails since this morning.",
        requester=requester,
        requester_name="Ana",
        channel=Channel.EMAIL,
        classification=Classification("IT Support", Priority.HIGH, 0.91, "VPN down", "offline", model="m1"),
        route=Route("IT Support"),
        received_at=NOW,
        message_refs=refs,
    )


def no_replies(_: Ticket) -> list[OutboxItem]:
    return []


def test_migrations_match_the_tables(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": include_name})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_receive_is_idempotent_by_dedupe_key(store: SqlStore) -> None:
    first = store.receive(record("k1"))
    again = store.receive(record("k1"))
    assert first.created and not again.created and again.id == first.id
    assert len(store.list_inbound(status=None, limit=10)) == 1


def test_receive_is_idempotent_by_imap_uid(store: SqlStore) -> None:
    store.receive(record("a", mailbox="support", uidvalidity=7, uid=42))
    again = store.receive(record("b", mailbox="support", uidvalidity=7, uid=42))
    assert not again.created
    other_validity = store.receive(record("c", mailbox="support", uidvalidity=8, uid=42))
    assert other_validity.created


def test_payload_and_times_round_trip(store: SqlStore) -> None:
    received = store.receive(record("k1", message_id="<m@x>"))
    row = store.get_inbound(received.id)
    assert row is not None
    assert row.payload == b"raw k1" and row.message_id == "<m@x>"
    assert row.received_at == NOW and row.received_at.tzinfo is not None


def test_a_claimed_row_is_not_claimed_again_until_its_lease_expires(store: SqlStore) -> None:
    store.receive(record("k1"))
    store.receive(record("k2"))
    first = store.claim_inbound(now=NOW, limit=10, lease=timedelta(minutes=1))
    assert [r.dedupe_key for r in first] == ["k1", "k2"]
    assert store.claim_inbound(now=NOW, limit=10, lease=timedelta(minutes=1)) == []
    later = store.claim_inbound(now=NOW + timedelta(minutes=2), limit=10, lease=timedelta(minutes=1))
    assert len(later) == 2


def test_concurrent_claims_never_share_a_row(store: SqlStore) -> None:
    for i in range(60):
        store.receive(record(f"k{i}"))
    claimed: list[int] = []
    lock = threading.Lock()

    def claim() -> None:
        while rows := store.claim_inbound(now=NOW, limit=5, lease=timedelta(minutes=5)):
            with lock:
                claimed.extend(r.id for r in rows)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 60


def test_failed_processing_parks_after_max_attempts_and_retry_requeues(store: SqlStore) -> None:
    received = store.receive(record("k1"))
    assert store.fail_inbound(received.id, error="boom", max_attempts=3, now=NOW) is InboundStatus.RECEIVED
    assert store.fail_inbound(received.id, error="boom", max_attempts=3, now=NOW) is InboundStatus.RECEIVED
    assert store.fail_inbound(received.id, error="boom 3", max_attempts=3, now=NOW) is InboundStatus.PARKED
    parked = store.list_inbound(status=InboundStatus.PARKED, limit=10)
    assert [(p.id, p.attempts, p.last_error) for p in parked] == [(received.id, 3, "boom 3")]
    again = store.retry_inbound(received.id)
    assert again.status is InboundStatus.RECEIVED and again.attempts == 0
    with pytest.raises(NotFound):
        store.retry_inbound(9999)


def test_open_ticket_records_events_refs_and_finishes_the_inbound_row(store: SqlStore) -> None:
    received = store.receive(record("k1"))
    ticket = store.open_ticket(received.id, draft(refs=("<orig@mail>",)), no_replies)
    assert ticket.id >= 1 and ticket.status is Status.NEW and ticket.department == "IT Support"
    assert ticket.created_at.tzinfo is not None
    events = store.ticket_events(ticket.id)
    assert [e.kind for e in events] == [EventKind.CREATED, EventKind.CLASSIFIED, EventKind.ROUTED]
    assert [e.actor for e in events] == [ticket.requester, f"classifier:{ticket.classifier}", "router"]
    assert events[0].data == {"channel": ticket.channel.value} and events[1].data["department"] == "IT Support"
    assert all(e.at == ticket.created_at for e in events)
    row = store.get_inbound(received.id)
    assert row is not None and row.status is InboundStatus.PROCESSED and row.ticket_id == ticket.id
    assert row.last_error is None
    assert store.find_ticket_by_refs(["<unknown@x>", "<orig@mail>"]) == ticket.id


def test_open_ticket_twice_for_one_inbound_row_makes_one_ticket(store: SqlStore) -> None:
    received = store.receive(record("k1"))
    first = store.open_ticket(received.id, draft(), no_replies)
    second = store.open_ticket(received.id, draft(), no_replies)
    assert first.id == second.id
    assert len(store.list_tickets(TicketFilter())) == 1
    assert len(store.ticket_events(first.id)) == 3  # the second call wrote nothing


def test_outbox_items_are_enqueued_with_the_ticket_and_deduplicated(store: SqlStore) -> None:
    def compose(ticket: Ticket) -> list[OutboxItem]:
        item = OutboxItem(
            OutboxKind.EMAIL,
            f"ack:{ticket.id}",
            {"to": "Ana@Example.com", "message_id": f"<ticket-{ticket.id}.ack@example.com>"},
            ticket.id,
        )
        return [item, item]

    ticket = store.open_ticket(None, draft(), compose)
    pending = store.list_outbox(status=OutboxStatus.PENDING)
    assert len(pending) == 1
    # Our own Message-ID threads replies before the mail is even sent.
    assert store.find_ticket_by_refs([f"<ticket-{ticket.id}.ack@example.com>"]) == ticket.id
    assert store.count_auto_replies("ana@example.com", since=NOW - timedelta(days=365)) == 1


def test_outbox_claim_send_fail_and_park(store: SqlStore) -> None:
    store.enqueue([OutboxItem(OutboxKind.SLACK_POST, "p1", {"channel": "C1"}), OutboxItem(OutboxKind.EMAIL, "e1", {})])
    now = datetime.now(UTC)
    items = store.claim_due_outbox(now=now, limit=10, lease=timedelta(minutes=1))
    assert len(items) == 2
    assert store.claim_due_outbox(now=now, limit=10, lease=timedelta(minutes=1)) == []
    store.mark_outbox_sent(items[0].id, sent_ref="ts1", now=now)
    store.mark_outbox_failed(items[1].id, error="429", next_attempt_at=now + timedelta(seconds=30), now=now)
    assert store.claim_due_outbox(now=now + timedelta(seconds=5), limit=10, lease=timedelta(minutes=1)) == []
    [retry] = store.claim_due_outbox(now=now + timedelta(seconds=31), limit=10, lease=timedelta(minutes=1))
    assert retry.attempts == 1 and retry.last_error == "429"
    store.mark_outbox_failed(retry.id, error="gone", next_attempt_at=None, now=now)
    assert [i.id for i in store.list_outbox(status=OutboxStatus.PARKED)] == [retry.id]
    store.retry_outbox(retry.id)
    assert [i.id for i in store.list_outbox(status=OutboxStatus.PENDING)] == [retry.id]


def test_status_reroute_priority_and_assign_append_events(store: SqlStore) -> None:
    ticket = store.open_ticket(None, draft(), no_replies)
    store.change_status(ticket.id, Status.RESOLVED, actor="agent", note="fixed", compose=no_replies)
    resolved = store.get_ticket(ticket.id)
    assert resolved is not None and resolved.resolved_at is not None
    store.reroute(ticket.id, "Facilities", actor="agent", note="wrong team", compose=no_replies)
    store.set_priority(ticket.id, Priority.LOW, actor="agent", note=None, compose=no_replies)
    store.assign(ticket.id, "U123", actor="agent", compose=no_replies)
    events = store.ticket_events(ticket.id)
    assert [e.kind for e in events][3:] == [
        EventKind.STATUS,
        EventKind.REROUTED,
        EventKind.PRIORITY,
        EventKind.ASSIGNED,
    ]
    assert events[4].data["from"] == "IT Support" and events[4].data["to"] == "Facilities"
    assert store.corrections() == [(ticket.id, "VPN down", "It fails since this morning.", "Facilities")]
    with pytest.raises(NotFound):
        store.change_status(999, Status.CLOSED, actor="x", note=None, compose=no_replies)


def test_comment_reopens_a_resolved_ticket(store: SqlStore) -> None:
    ticket = store.open_ticket(None, draft(), no_replies)
    store.change_status(ticket.id, Status.RESOLVED, actor="agent", note=None, compose=no_replies)
    received = store.receive(record("reply"))
    updated = store.add_comment(
        received.id,
        ticket.id,
        actor="ana@example.com",
        text="still broken",
        reopen=True,
        message_refs=["<reply@mail>"],
        compose=no_replies,
    )
    assert updated.status is Status.NEW and updated.resolved_at is None
    assert store.ticket_events(ticket.id)[-1].kind is EventKind.STATUS
    assert store.find_ticket_by_refs(["<reply@mail>"]) == ticket.id


def test_a_change_waits_for_another_writer_of_the_ticket_instead_of_calling_it_missing(
    store: SqlStore, engine: Engine
) -> None:
    """PostgreSQL: changes lock the ticket row FOR UPDATE and wait their turn (SKIP LOCKED would skip the locked
    row and report the ticket as missing). SQLite: the writers take turns on the database's lock."""
    ticket = store.open_ticket(None, draft(), no_replies)
    results: list[object] = []

    def change() -> None:
        try:
            store.change_status(ticket.id, Status.IN_PROGRESS, actor="agent", note=None, compose=no_replies)
            results.append(
                store.add_comment(
                    None,
                    ticket.id,
                    actor="ana@example.com",
                    text="more",
                    reopen=True,
                    message_refs=[],
                    compose=no_replies,
                )
            )
        except Exception as exc:  # noqa: BLE001 - the assertion below shows it
            results.append(exc)

    with engine.begin() as conn:  # another writer holds the ticket's row (and, on SQLite, the write lock)
        conn.execute(text("UPDATE tickets SET updated_at = updated_at WHERE id = :id"), {"id": ticket.id})
        worker = threading.Thread(target=change)
        worker.start()
        worker.join(0.5)  # it waits for the lock
    worker.join(30)
    assert len(results) == 1 and isinstance(results[0], Ticket), results
    assert results[0].status is Status.IN_PROGRESS
    assert [e.kind for e in store.ticket_events(ticket.id)][-2:] == [EventKind.STATUS, EventKind.COMMENT]


def test_list_tickets_filters(store: SqlStore) -> None:
    a = store.open_ticket(None, draft(requester="a@example.com"), no_replies)
    store.open_ticket(None, draft(requester="b@example.com"), no_replies)
    store.change_status(a.id, Status.CLOSED, actor="x", note=None, compose=no_replies)
    assert [t.requester for t in store.list_tickets(TicketFilter(open_only=True))] == ["b@example.com"]
    assert [t.id for t in store.list_tickets(TicketFilter(status=Status.CLOSED))] == [a.id]
    assert store.list_tickets(TicketFilter(department="HR")) == []
    assert len(store.list_tickets(TicketFilter(limit=1))) == 1


def test_a_lease_has_one_holder_until_it_expires(store: SqlStore) -> None:
    ttl = timedelta(seconds=30)
    assert store.acquire_lease("imap:support", "a", ttl=ttl, now=NOW)
    assert not store.acquire_lease("imap:support", "b", ttl=ttl, now=NOW + timedelta(seconds=10))
    assert store.acquire_lease("imap:support", "a", ttl=ttl, now=NOW + timedelta(seconds=20))  # renewal
    assert store.acquire_lease("imap:support", "b", ttl=ttl, now=NOW + timedelta(seconds=51))  # a died
    store.release_lease("imap:support", "b")
    assert store.acquire_lease("imap:support", "a", ttl=ttl, now=NOW + timedelta(seconds=52))


def test_mailbox_state_round_trip(store: SqlStore) -> None:
    assert store.mailbox_state("support") is None
    store.save_mailbox_state("support", folder="INBOX", uidvalidity=5, last_uid=10, last_poll_at=NOW)
    store.save_mailbox_state("support", last_uid=12)
    state = store.mailbox_state("support")
    assert state is not None and state["uidvalidity"] == 5 and state["last_uid"] == 12 and state["last_poll_at"] == NOW


def test_classifier_stats_are_sql_aggregates(store: SqlStore) -> None:
    from dataclasses import replace

    store.open_ticket(None, draft(), no_replies)
    fallback = replace(draft().classification, classifier="offline", fallback_reason="circuit open", latency_ms=3.0)
    store.open_ticket(None, replace(draft(), classification=fallback), no_replies)
    claude = replace(draft().classification, classifier="claude", tokens_in=900, tokens_out=40, latency_ms=800.0)
    store.open_ticket(None, replace(draft(), classification=claude), no_replies)
    stats = {row["classifier"]: row for row in store.classifier_stats()}
    assert stats["offline"]["tickets"] == 2 and stats["offline"]["fallbacks"] == 1
    assert stats["claude"]["tokens_in"] == 900 and stats["claude"]["mean_latency_ms"] == 800.0
    assert store.classifier_stats(since=datetime.now(UTC) + timedelta(days=1)) == []
    assert store.outbox_counts() == {}


def test_receive_many_commits_a_batch_and_reports_duplicates(store: SqlStore) -> None:
    store.receive(record("old"))
    results = store.receive_many([record("a"), record("old"), record("b", mailbox="m", uidvalidity=1, uid=5)])
    assert [r.created for r in results] == [True, False, True]
    assert store.receive_many([]) == []
    assert store.auto_reply_counts("nobody@example.com", since=[NOW, NOW - timedelta(days=1)]) == [0, 0]


def test_a_suppression_is_extended_by_a_later_bounce_and_never_shortened(store: SqlStore) -> None:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    store.suppress_recipients(["Gone@Example.com", "not-an-address"], until=now + timedelta(days=60), reason="5.1.1")
    store.suppress_recipients(["gone@example.com"], until=now + timedelta(days=10), reason="5.1.1 again")
    assert store.suppressed_until("gone@example.com", now=now) == now + timedelta(days=60)
    store.suppress_recipients(["gone@example.com"], until=now + timedelta(days=90), reason="5.1.1 later")
    assert store.suppressed_until("GONE@example.com", now=now) == now + timedelta(days=90)
    assert store.suppressed_until("gone@example.com", now=now + timedelta(days=91)) is None
    assert store.suppressed_until("not-an-address", now=now) is None


def test_recent_requests_are_the_requesters_newest_since_a_time(store: SqlStore) -> None:
    for subject in ["First", "Second", "Third"]:
        store.open_ticket(None, draft(subject=subject), lambda _t: [])
    store.open_ticket(None, draft(subject="Other person's", requester="bob@example.com"), lambda _t: [])
    since = datetime.now(UTC) - timedelta(minutes=5)
    recent = store.recent_requests("ana@example.com", since=since, limit=2)
    assert [subject for subject, _body in recent] == ["Third", "Second"]
    assert store.recent_requests("ana@example.com", since=datetime.now(UTC) + timedelta(minutes=1)) == []


def test_a_reroute_by_a_classifier_is_not_a_correction_to_learn_from(store: SqlStore) -> None:
    ticket = store.open_ticket(None, draft(), no_replies)
    store.reroute(ticket.id, "Finance", actor="classifier:claude-haiku", note="re-classified", compose=no_replies)
    assert store.corrections() == []
    assert store.labelled_history() == []
