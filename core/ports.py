"""Ports between the core and its adapters: what the pipeline needs from storage, as Protocols."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

from core.classify.base import Classification
from core.digest import DigestPeriod, OpenCount, QueueFigures, RoutingFigures, TicketLine
from core.inbound import InboundRecord, InboundStatus, Received, StoredInbound
from core.message import Channel
from core.outbox import OutboxItem, OutboxStore
from core.route import Route
from core.ticket import Priority, Status, Ticket, TicketEvent

# Called inside the store's transaction once the ticket has its id, so replies can quote it.
ComposeReplies = Callable[[Ticket], Sequence[OutboxItem]]


@dataclass(frozen=True, slots=True)
class SenderHistory:
    """What the loop guards need to know about an address, read in one transaction.

    ``auto_replies``: automatic mails to it since each requested start; ``suppressed_until``: set while it is
    suppressed after a permanent bounce; ``recent``: (subject, start of body) of its newest tickets."""

    auto_replies: list[int]
    suppressed_until: datetime | None
    recent: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class TicketDraft:
    """Everything needed to create a ticket; the store assigns id and timestamps."""

    subject: str
    body: str
    requester: str
    requester_name: str
    channel: Channel
    classification: Classification
    route: Route
    received_at: datetime
    message_refs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TicketFilter:
    department: str | None = None
    status: Status | None = None
    requester: str | None = None
    open_only: bool = False
    limit: int = 50


class InboundStore(Protocol):
    """Durable intake: what channel adapters and the processor need."""

    def receive(self, record: InboundRecord) -> Received:
        """Commit a raw inbound message; ``created=False`` when its dedupe key (or IMAP uid) is already stored."""
        ...

    def receive_many(self, records: Sequence[InboundRecord]) -> list[Received]:
        """``receive`` for a batch, in one transaction: all committed, or none."""
        ...

    def claim_inbound(self, *, now: datetime, limit: int, lease: timedelta) -> list[StoredInbound]:
        """Claim received rows for processing; a claimed row is invisible to others until its lease expires."""
        ...

    def claim_inbound_by_id(self, inbound_id: int, *, now: datetime, lease: timedelta) -> StoredInbound | None:
        """Claim one received row (the CLI processes its own submission at once); None if not claimable."""
        ...

    def get_inbound(self, inbound_id: int) -> StoredInbound | None: ...

    def list_inbound(self, *, status: InboundStatus | None, limit: int) -> list[StoredInbound]: ...

    def finish_inbound(
        self, inbound_id: int, *, status: InboundStatus, reason: str | None = None, ticket_id: int | None = None
    ) -> None:
        """Mark a row processed, ignored or parked (with the reason a person will read)."""
        ...

    def fail_inbound(
        self, inbound_id: int, *, error: str, max_attempts: int, now: datetime, count_attempt: bool = True
    ) -> InboundStatus:
        """Release the row's claim after a failure and count the attempt (unless ``count_attempt`` is False: an
        outage, not the message's fault); parks the row at ``max_attempts``. Returns the new status."""
        ...

    def retry_inbound(self, inbound_id: int) -> StoredInbound:
        """Put a parked or ignored row back to received with zero attempts. Raises NotFound."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """This thread's calls in the block share one write transaction, committed when it ends; each call sees
        the earlier ones' writes. Raises StorageError (on leaving) when the commit fails: then nothing is stored."""
        ...

    def savepoint(self) -> AbstractContextManager[None]:
        """Inside ``transaction``: an error in the block undoes only the block's writes. Outside: nothing."""
        ...


class TicketStore(Protocol):
    """Tickets, their events and the outbox items each change enqueues, committed together."""

    def open_ticket(self, inbound_id: int | None, draft: TicketDraft, compose: ComposeReplies) -> Ticket:
        """Create a ticket with its created/classified/routed events and replies, and finish the inbound row,
        in one transaction."""
        ...

    def add_comment(
        self,
        inbound_id: int | None,
        ticket_id: int,
        *,
        actor: str,
        text: str,
        reopen: bool,
        message_refs: Sequence[str],
        compose: ComposeReplies,
        automated: bool = False,
    ) -> Ticket:
        """Append a follow-up comment (reopening a done ticket if asked) and finish the inbound row."""
        ...

    def get_ticket(self, ticket_id: int) -> Ticket | None: ...

    def list_tickets(self, flt: TicketFilter) -> list[Ticket]: ...

    def ticket_events(self, ticket_id: int) -> list[TicketEvent]: ...

    def find_ticket_by_refs(self, refs: Sequence[str]) -> int | None:
        """The ticket any of these Message-IDs (inbound or sent by us) belongs to, newest ref first."""
        ...

    def message_refs(self, ticket_id: int) -> list[str]:
        """Every Message-ID of a ticket (received and sent), oldest first."""
        ...

    def change_status(
        self, ticket_id: int, status: Status, *, actor: str, note: str | None, compose: ComposeReplies
    ) -> Ticket:
        """Set the status and record an event. Raises NotFound."""
        ...

    def reroute(
        self, ticket_id: int, department: str, *, actor: str, note: str | None, compose: ComposeReplies
    ) -> Ticket:
        """Move a ticket to another department and record a rerouted event (a correction). Raises NotFound."""
        ...

    def set_priority(
        self, ticket_id: int, priority: Priority, *, actor: str, note: str | None, compose: ComposeReplies
    ) -> Ticket: ...

    def assign(self, ticket_id: int, assignee: str | None, *, actor: str, compose: ComposeReplies) -> Ticket: ...

    def auto_reply_counts(self, recipient: str, *, since: Sequence[datetime]) -> list[int]:
        """How many automatic mails went (or are queued) to ``recipient`` since each start time, in one query:
        the loop guard."""
        ...

    def suppress_recipients(self, addresses: Sequence[str], *, until: datetime, reason: str) -> None:
        """No automatic mail to these addresses (they bounced permanently) until ``until``."""
        ...

    def suppressed_until(self, address: str, *, now: datetime) -> datetime | None:
        """Until when automatic mail to ``address`` is suppressed, or None."""
        ...

    def recent_requests(self, requester: str, *, since: datetime, limit: int = 50) -> list[tuple[str, str]]:
        """(subject, start of body) of the newest tickets ``requester`` opened since ``since``."""
        ...

    def sender_history(
        self,
        address: str,
        *,
        now: datetime,
        reply_windows: Sequence[datetime],
        recent_since: datetime,
        recent_limit: int,
    ) -> SenderHistory:
        """``auto_reply_counts``, ``suppressed_until`` and ``recent_requests`` (skipped when ``recent_limit`` is 0)
        in one read: asked for every new email ticket."""
        ...


class Store(InboundStore, TicketStore, OutboxStore, Protocol):
    """The whole storage port, as one object implements it."""


class DigestStore(Protocol):
    """The SQL aggregates and the exactly-once claim behind digests (storage/digests.py implements it)."""

    def last_digest_end(self, scope: str, *, before: date) -> datetime | None:
        """Where the scope's latest delivered digest for a day before ``before`` ended, or None."""
        ...

    def digest_status(self, scope: str, day: date) -> str | None:
        """The recorded status of the scope's digest for ``day`` (enqueued, skipped), or None."""
        ...

    def claim_digest(
        self, period: DigestPeriod, items: Sequence[OutboxItem], *, now: datetime, retake_skipped: bool = False
    ) -> bool:
        """Record the digest as sent and enqueue its deliveries in one transaction; False (nothing enqueued) when
        another process already did, or it was skipped and ``retake_skipped`` is False."""
        ...

    def skip_digest(self, period: DigestPeriod, *, now: datetime, reason: str) -> bool:
        """Record that the digest was skipped (missed its window); False when it is already recorded."""
        ...

    def new_and_resolved(
        self, *, departments: Sequence[str] | None, starts_at: datetime, ends_at: datetime
    ) -> dict[str, tuple[int, int]]:
        """Per department: tickets created, and tickets resolved, in the window."""
        ...

    def open_counts(self, *, departments: Sequence[str] | None, stale_before: datetime) -> list[OpenCount]:
        """Open tickets now, per department, status and priority."""
        ...

    def medians(
        self, *, departments: Sequence[str] | None, starts_at: datetime, ends_at: datetime
    ) -> dict[str, tuple[float | None, float | None]]:
        """Per department: median seconds to first action (first actions in the window) and to resolution
        (resolutions in the window)."""
        ...

    def ticket_lists(
        self, department: str, *, stale_before: datetime, limit: int
    ) -> tuple[list[TicketLine], list[TicketLine], list[TicketLine]]:
        """The department's oldest open, stalest and unassigned urgent tickets, ``limit`` of each."""
        ...

    def routing(self, *, starts_at: datetime, ends_at: datetime) -> RoutingFigures: ...

    def queues(self) -> QueueFigures: ...

    def daily_counts(self, boundaries: Sequence[datetime]) -> dict[str, list[int]]:
        """Tickets created per department between each pair of consecutive ``boundaries``."""
        ...
