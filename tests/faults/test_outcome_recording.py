"""The outbox fix the PostgreSQL test led to, in isolation: an outcome the database could not take is recorded on the
next round, so a sent item is neither left claimed for the whole lease nor sent a second time after it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.errors import StorageError
from core.outbox import OutboxDispatcher, OutboxKind, OutboxStatus, StoredOutboxItem

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


class FlakyStore:
    """Claims one item once; refuses writes while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.claimable = [
            StoredOutboxItem(
                id=1, kind=OutboxKind.EMAIL, dedupe_key="k", payload={}, ticket_id=1, status=OutboxStatus.PENDING,
                attempts=0, next_attempt_at=NOW, created_at=NOW,
            )
        ]  # fmt: skip
        self.sent: list[int] = []
        self.claims = 0

    def claim_due_outbox(self, *, now: datetime, limit: int, lease: timedelta) -> list[StoredOutboxItem]:
        if self.down:
            raise StorageError("database error: connection refused")
        self.claims += 1
        items, self.claimable = self.claimable, []
        return items

    def mark_outbox_sent(self, item_id: int, *, sent_ref: str | None, now: datetime) -> None:
        if self.down:
            raise StorageError("database error: connection refused")
        self.sent.append(item_id)

    def mark_outbox_failed(
        self, item_id: int, *, error: str, next_attempt_at: datetime | None, now: datetime, count_attempt: bool = True
    ) -> None:
        raise AssertionError("nothing failed")


class CountingSender:
    def __init__(self, store: FlakyStore) -> None:
        self.store = store
        self.sends = 0

    def send(self, item: StoredOutboxItem) -> str:
        self.sends += 1
        self.store.down = True  # the database goes away while the mail is on its way
        return "<ref@x>"


def test_a_sent_item_is_recorded_once_the_database_is_back_and_never_sent_twice() -> None:
    store = FlakyStore()
    sender = CountingSender(store)
    dispatcher = OutboxDispatcher(store=store, senders={OutboxKind.EMAIL: sender})
    assert dispatcher.run_once(NOW) == 1  # sent; recording it failed, and that did not escape
    with pytest.raises(StorageError):
        dispatcher.run_once(NOW)  # still down: nothing new is claimed
    store.down = False
    dispatcher.run_once(NOW)
    assert store.sent == [1] and sender.sends == 1 and store.claims == 2
