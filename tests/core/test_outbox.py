"""The outbox dispatcher on the real SQLite store: delivered once, retried with backoff, parked when hopeless."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from core.errors import DeliveryError, PermanentDeliveryError
from core.outbox import OutboxDispatcher, OutboxItem, OutboxKind, OutboxStatus, RetryPolicy, StoredOutboxItem
from storage.store import SqlStore


@dataclass
class ScriptedSender:
    """Fails with the scripted errors first, then succeeds."""

    failures: list[DeliveryError] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)

    def send(self, item: StoredOutboxItem) -> str | None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(item.id)
        return f"ref-{item.id}"


def dispatcher(store: SqlStore, sender: ScriptedSender, max_attempts: int = 3) -> OutboxDispatcher:
    policy = RetryPolicy(max_attempts=max_attempts, base_delay=10, max_delay=100, rng=random.Random(1))
    return OutboxDispatcher(store=store, senders={OutboxKind.EMAIL: sender}, policy=policy)


def test_an_item_is_sent_once(sqlite_store: SqlStore) -> None:
    sender = ScriptedSender()
    sqlite_store.enqueue([OutboxItem(OutboxKind.EMAIL, "a", {"to": "x@example.com"})])
    d = dispatcher(sqlite_store, sender)
    now = datetime.now(UTC)
    assert d.run_once(now) == 1 and d.run_once(now) == 0
    [item] = sqlite_store.list_outbox()
    assert item.status is OutboxStatus.SENT and item.sent_ref == f"ref-{item.id}" and sender.sent == [item.id]


def test_a_transient_failure_is_retried_after_a_backoff_honouring_retry_after(sqlite_store: SqlStore) -> None:
    sender = ScriptedSender(failures=[DeliveryError("429", retry_after=40)])
    sqlite_store.enqueue([OutboxItem(OutboxKind.EMAIL, "a", {})])
    d = dispatcher(sqlite_store, sender)
    now = datetime.now(UTC)
    d.run_once(now)
    [item] = sqlite_store.list_outbox()
    assert item.status is OutboxStatus.PENDING and item.attempts == 1
    assert item.next_attempt_at >= now + timedelta(seconds=40)
    assert d.run_once(now + timedelta(seconds=39)) == 0
    assert d.run_once(now + timedelta(seconds=101)) == 1
    assert sqlite_store.list_outbox()[0].status is OutboxStatus.SENT


def test_parked_after_max_attempts_or_at_once_when_permanent(sqlite_store: SqlStore) -> None:
    sender = ScriptedSender(failures=[DeliveryError("down")] * 3 + [PermanentDeliveryError("no such user")])
    sqlite_store.enqueue([OutboxItem(OutboxKind.EMAIL, "a", {})])
    d = dispatcher(sqlite_store, sender)
    now = datetime.now(UTC)
    for hour in range(3):
        d.run_once(now + timedelta(hours=hour))
    [item] = sqlite_store.list_outbox()
    assert item.status is OutboxStatus.PARKED and item.attempts == 3 and item.last_error == "down"
    sqlite_store.enqueue([OutboxItem(OutboxKind.EMAIL, "b", {})])
    d.run_once(now + timedelta(hours=4))
    parked = sqlite_store.list_outbox(status=OutboxStatus.PARKED)
    assert len(parked) == 2 and parked[0].last_error == "no such user" and parked[0].attempts == 1


def test_an_item_without_a_sender_waits_without_spending_attempts(sqlite_store: SqlStore) -> None:
    sqlite_store.enqueue([OutboxItem(OutboxKind.SLACK_POST, "p", {"channel": "C1"})])
    d = dispatcher(sqlite_store, ScriptedSender())
    d.run_once(datetime.now(UTC))
    [item] = sqlite_store.list_outbox()
    assert item.status is OutboxStatus.PENDING and item.attempts == 0 and "no sender" in (item.last_error or "")


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(base_delay=5, max_delay=60, rng=random.Random(7))
    delays = [policy.delay(n) for n in range(1, 10)]
    assert all(2.5 <= d <= 60 for d in delays)
    assert delays[-1] >= 30  # capped near max_delay, jittered down at most by half
    assert policy.delay(1, retry_after=120) == 120
