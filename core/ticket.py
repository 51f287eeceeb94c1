"""Ticket side of the pipeline: tickets, their statuses and priorities, and the event log of every change."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from core.message import Channel


class Status(StrEnum):
    """Where a ticket is in its life; resolved and closed count as done."""

    NEW = "new"
    IN_PROGRESS = "in_progress"
    WAITING = "waiting"
    RESOLVED = "resolved"
    CLOSED = "closed"

    @property
    def is_open(self) -> bool:
        return self not in (Status.RESOLVED, Status.CLOSED)


class Priority(StrEnum):
    """How soon a ticket needs attention."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    URGENT = "urgent"


class EventKind(StrEnum):
    """What a ticket event records."""

    CREATED = "created"
    CLASSIFIED = "classified"
    ROUTED = "routed"
    REROUTED = "rerouted"
    STATUS = "status"
    PRIORITY = "priority"
    ASSIGNED = "assigned"
    COMMENT = "comment"
    REPLY_SENT = "reply_sent"
    IMPORTED = "imported"  # bulk import (bot/io): historical data, nobody was notified


@dataclass(frozen=True, slots=True)
class Ticket:
    """A stored ticket; ``id`` is shown to people as ``#123``."""

    id: int
    subject: str
    body: str
    requester: str
    channel: Channel
    department: str
    priority: Priority
    status: Status
    confidence: float
    summary: str
    classifier: str
    created_at: datetime
    updated_at: datetime
    requester_name: str = ""
    assignee: str | None = None
    resolved_at: datetime | None = None
    triaged: bool = False
    classifier_model: str | None = None
    classify_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None

    @property
    def ref(self) -> str:
        return f"#{self.id}"


@dataclass(frozen=True, slots=True)
class TicketEvent:
    """One recorded change or comment: who did what, when, from what to what, and why."""

    ticket_id: int
    kind: EventKind
    actor: str
    at: datetime
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
