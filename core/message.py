"""Inbound side of the pipeline: what a channel hands to the core once transport details are gone."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Channel(StrEnum):
    """Where a request came from; also selects how its raw payload is decoded."""

    EMAIL = "email"
    SLACK = "slack"
    CLI = "cli"
    API = "api"


@dataclass(frozen=True, slots=True)
class Attachment:
    """An attachment's metadata; bytes are kept only up to the configured limit."""

    filename: str
    content_type: str
    size: int
    content: bytes | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One inbound request, stripped of transport details.

    ``source_id`` is the channel's own identity of the message (Message-ID, Slack trigger_id);
    ``thread_refs`` are identifiers this message answers (In-Reply-To then References, newest first).
    ``auto_reason`` is set when the message is machine-generated (auto-reply, bounce, list mail):
    such a message may thread or open a ticket but never gets an automatic answer.
    """

    channel: Channel
    source_id: str
    sender: str
    subject: str
    body: str
    received_at: datetime
    sender_name: str = ""
    full_body: str = ""
    thread_refs: tuple[str, ...] = ()
    subject_ticket_id: int | None = None
    auto_reason: str | None = None
    park_reason: str | None = None
    recipients: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    # The urgency a requester chose in a form (low/medium/high/urgent); it beats the classifier's guess.
    requested_priority: str | None = None
    reply_context: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """Subject and body as one text, the classifier's input."""
        return f"{self.subject}\n\n{self.body}".strip()
