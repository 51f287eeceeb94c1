"""Deliver stage of the pipeline: durable outbound items and the dispatcher that sends them with retries."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from core.errors import DeliveryError, PermanentDeliveryError, StorageError

log = logging.getLogger(__name__)


class OutboxKind(StrEnum):
    """What an outbox item is; each kind has one sender."""

    EMAIL = "email"
    SLACK_POST = "slack_post"
    SLACK_DM = "slack_dm"
    SLACK_RESPOND = "slack_respond"
    SLACK_UPDATE = "slack_update"
    SLACK_DIGEST = "slack_digest"  # a digest post, with its chart when it has one (bot/digest.py)
    DIGEST_EMAIL = "digest_email"  # the admin digest by email, chart inline; not counted by the reply loop guard


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    PARKED = "parked"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One reply or post to deliver; ``dedupe_key`` is unique, so enqueueing twice sends once."""

    kind: OutboxKind
    dedupe_key: str
    payload: dict[str, Any]
    ticket_id: int | None = None


@dataclass(frozen=True, slots=True)
class StoredOutboxItem:
    id: int
    kind: OutboxKind
    dedupe_key: str
    payload: dict[str, Any]
    ticket_id: int | None
    status: OutboxStatus
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    last_error: str | None = None
    sent_ref: str | None = None


class Sender(Protocol):
    """Delivers one outbox item of its kind; returns a reference (Message-ID, Slack ts) for the record.

    Raises:
        DeliveryError: a transient failure; retried with backoff (``retry_after`` honoured).
        PermanentDeliveryError: retrying cannot help; the item is parked at once.
    """

    def send(self, item: StoredOutboxItem) -> str | None: ...


class OutboxStore(Protocol):
    """The outbox side of storage, as the dispatcher needs it."""

    def claim_due_outbox(self, *, now: datetime, limit: int, lease: timedelta) -> list[StoredOutboxItem]:
        """Claim pending items due by ``now`` (other workers skip them until the lease expires)."""
        ...

    def mark_outbox_sent(self, item_id: int, *, sent_ref: str | None, now: datetime) -> None: ...

    def mark_outbox_failed(
        self, item_id: int, *, error: str, next_attempt_at: datetime | None, now: datetime, count_attempt: bool = True
    ) -> None:
        """Record a failure; ``next_attempt_at=None`` parks the item."""
        ...


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, capped; parked after ``max_attempts``."""

    max_attempts: int = 8
    base_delay: float = 5.0
    max_delay: float = 3600.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        exp = min(self.max_delay, self.base_delay * 2.0 ** max(0, attempts - 1))
        jittered = exp / 2 + self.rng.uniform(0, exp / 2)
        return max(jittered, retry_after or 0.0)


@dataclass
class OutboxDispatcher:
    """Sends due outbox items through the sender registered for their kind.

    A kind with no sender stays pending (its channel is not configured yet), so enabling the
    channel later delivers what was queued instead of losing it.
    """

    store: OutboxStore
    senders: dict[OutboxKind, Sender]
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    batch_size: int = 50
    lease: timedelta = timedelta(minutes=5)

    # Outcomes (sent, failed) the database could not take when they happened; one dispatcher thread uses this.
    _unrecorded: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def run_once(self, now: datetime) -> int:
        """Deliver one batch of due items; returns how many were attempted.

        Raises StorageError while outcomes from an earlier round still cannot be recorded (the database is
        down): nothing new is claimed until they are.
        """
        while self._unrecorded:
            self._unrecorded[0]()
            self._unrecorded.pop(0)
        items = self.store.claim_due_outbox(now=now, limit=self.batch_size, lease=self.lease)
        for item in items:
            self.deliver(item, now)
        return len(items)

    def _record(self, action: Callable[[], None]) -> None:
        # The database went away between the claim and the outcome: keep the outcome and record it first thing
        # next round. Otherwise the item stays claimed for the whole lease, and a sent one is sent again after it.
        try:
            action()
        except StorageError as exc:
            log.warning("outbox: cannot record a delivery outcome yet (%s); will retry", exc)
            self._unrecorded.append(action)

    def deliver(self, item: StoredOutboxItem, now: datetime) -> None:
        sender = self.senders.get(item.kind)
        if sender is None:
            # Put it back soon without counting an attempt: the channel may be enabled later.
            self._record(
                lambda: self.store.mark_outbox_failed(
                    item.id,
                    error=f"no sender for {item.kind}",
                    next_attempt_at=now + timedelta(minutes=1),
                    now=now,
                    count_attempt=False,
                )
            )
            return
        try:
            ref = sender.send(item)
        except PermanentDeliveryError as exc:
            log.warning("outbox %s (%s) parked: %s", item.id, item.kind, exc)
            error = str(exc)
            self._record(lambda: self.store.mark_outbox_failed(item.id, error=error, next_attempt_at=None, now=now))
        except DeliveryError as exc:
            attempts = item.attempts + 1
            if attempts >= self.policy.max_attempts:
                log.warning("outbox %s (%s) parked after %d attempts: %s", item.id, item.kind, attempts, exc)
                error = str(exc)
                self._record(lambda: self.store.mark_outbox_failed(item.id, error=error, next_attempt_at=None, now=now))
            else:
                delay = self.policy.delay(attempts, exc.retry_after)
                log.info(
                    "outbox %s (%s) attempt %d failed, retry in %.1fs: %s", item.id, item.kind, attempts, delay, exc
                )
                error, retry_at = str(exc), now + timedelta(seconds=delay)
                self._record(
                    lambda: self.store.mark_outbox_failed(item.id, error=error, next_attempt_at=retry_at, now=now)
                )
        else:
            self._record(lambda: self.store.mark_outbox_sent(item.id, sent_ref=ref, now=now))
