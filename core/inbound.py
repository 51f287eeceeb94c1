"""Receive stage of the pipeline: the raw, durable form of every inbound request before it is processed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from core.message import Channel


class InboundStatus(StrEnum):
    """received: waiting to be processed; processed: became a ticket or a follow-up;
    ignored: deliberately dropped (our own mail fed back); parked: needs a person (reason in last_error)."""

    RECEIVED = "received"
    PROCESSED = "processed"
    IGNORED = "ignored"
    PARKED = "parked"


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """What a channel adapter stores before acknowledging its transport.

    ``dedupe_key`` is unique across all channels: a redelivered message maps to the same key,
    so storing it again is a no-op. IMAP rows also carry (mailbox, uidvalidity, uid).
    """

    channel: Channel
    dedupe_key: str
    payload: bytes
    received_at: datetime
    message_id: str | None = None
    mailbox: str | None = None
    uidvalidity: int | None = None
    uid: int | None = None
    trigger_id: str | None = None
    event_id: str | None = None
    status: InboundStatus = InboundStatus.RECEIVED
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class StoredInbound:
    """An inbound row as the processor sees it."""

    id: int
    channel: Channel
    dedupe_key: str
    payload: bytes
    received_at: datetime
    status: InboundStatus
    attempts: int
    message_id: str | None = None
    last_error: str | None = None
    ticket_id: int | None = None
    mailbox: str | None = None
    uid: int | None = None


@dataclass(frozen=True, slots=True)
class Received:
    """The answer to storing an inbound record: its row id and whether it was new (False on redelivery)."""

    id: int
    created: bool
    ticket_id: int | None = None


def digest_key(*parts: str | bytes) -> str:
    """A stable dedupe key from the given parts (SHA-256, hex)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode("utf-8", "surrogateescape"))
        h.update(b"\x00")
    return h.hexdigest()
