"""Reply stage of the pipeline: composes what a new ticket or a change sends (acknowledgements, channel posts)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from core.message import Channel, Message
from core.outbox import OutboxItem, OutboxKind
from core.ticket import Status, Ticket

REPLY_MARKER = "-- Reply above this line to add information to your ticket --"


@dataclass(frozen=True, slots=True)
class ReplySettings:
    """What reply composition needs from the configuration."""

    support_address: str = "support@example.com"
    from_name: str = "Support"
    department_channels: Mapping[str, str] = field(default_factory=dict)
    enabled: frozenset[OutboxKind] = frozenset(OutboxKind)

    @property
    def domain(self) -> str:
        return self.support_address.rsplit("@", 1)[-1]


def subject_tag(ticket_id: int) -> str:
    return f"[#{ticket_id}]"


def tagged_subject(ticket: Ticket, subject: str | None = None) -> str:
    base = (subject if subject is not None else ticket.subject).strip() or "Your request"
    tag = subject_tag(ticket.id)
    return base if tag in base else f"{tag} {base}"


def our_message_id(ticket_id: int, kind: str, domain: str) -> str:
    """A Message-ID for mail we send; it names the ticket so a reply threads even from a bare client."""
    return f"<ticket-{ticket_id}.{kind}.{secrets.token_hex(6)}@{domain}>"


def describe_route(ticket: Ticket) -> str:
    dept = ticket.department
    return f"{dept} (triage: we will pass it to the right team)" if ticket.triaged else dept


def ack_text(ticket: Ticket) -> str:
    return "\n".join(
        [
            REPLY_MARKER,
            "",
            "Hello,",
            "",
            f"We have received your request and opened ticket #{ticket.id}.",
            "",
            f"  Ticket:     #{ticket.id}",
            f"  Department: {describe_route(ticket)}",
            f"  Priority:   {ticket.priority.value}",
            f"  Summary:    {ticket.summary}",
            "",
            "To add information, reply to this email and keep the [#"
            f"{ticket.id}] tag in the subject. Please do not open a new request for the same issue.",
            "",
            "-- ",
            "This is an automatic message from the support desk.",
        ]
    )


def status_text(ticket: Ticket, note: str | None) -> str:
    lines = [REPLY_MARKER, "", "Hello,", ""]
    if ticket.status is Status.RESOLVED:
        lines.append(f"Ticket #{ticket.id} ({ticket.summary}) has been resolved.")
        lines.append("If the problem is not solved, reply to this email and the ticket will be reopened.")
    else:
        lines.append(f"Ticket #{ticket.id} ({ticket.summary}) is now {ticket.status.value.replace('_', ' ')}.")
    if note:
        lines += ["", "Note from the team:", note]
    lines += ["", "-- ", "This is an automatic message from the support desk."]
    return "\n".join(lines)


def email_item(
    ticket: Ticket,
    *,
    settings: ReplySettings,
    kind: str,
    to: str,
    text: str,
    in_reply_to: str | None,
    references: Sequence[str],
    subject: str | None = None,
) -> OutboxItem:
    message_id = our_message_id(ticket.id, kind, settings.domain)
    refs = [r for r in references if r]
    if in_reply_to and in_reply_to not in refs:
        refs.append(in_reply_to)
    return OutboxItem(
        kind=OutboxKind.EMAIL,
        dedupe_key=f"email:{kind}:{ticket.id}:{to.lower()}",
        ticket_id=ticket.id,
        payload={
            "to": to,
            "from": settings.support_address,
            "from_name": settings.from_name,
            "subject": tagged_subject(ticket, subject),
            "text": text,
            "message_id": message_id,
            "in_reply_to": in_reply_to,
            "references": refs[-20:],
            "reason": kind,
        },
    )


def channel_post(ticket: Ticket, settings: ReplySettings, *, event: str = "created") -> list[OutboxItem]:
    """The department channel's card for a ticket (rendered by the Slack sender from current state); empty when
    the department has no channel or Slack is not configured."""
    channel_id = settings.department_channels.get(ticket.department)
    if channel_id is None or OutboxKind.SLACK_POST not in settings.enabled:
        return []
    return [
        OutboxItem(
            kind=OutboxKind.SLACK_POST,
            dedupe_key=f"slack_post:{ticket.id}:{ticket.department}:{event}",
            ticket_id=ticket.id,
            payload={"channel": channel_id, "ticket_id": ticket.id, "event": event},
        )
    ]


def acknowledgements(ticket: Ticket, message: Message, settings: ReplySettings) -> list[OutboxItem]:
    """What a new ticket sends: the requester's acknowledgement and the department post."""
    items: list[OutboxItem] = []
    if message.auto_reason is None:
        if message.channel is Channel.EMAIL and OutboxKind.EMAIL in settings.enabled:
            items.append(
                email_item(
                    ticket,
                    settings=settings,
                    kind="ack",
                    to=message.sender,
                    text=ack_text(ticket),
                    in_reply_to=message.source_id or None,
                    references=message.reply_context.get("references", "").split(),
                    subject=message.subject,
                )
            )
        elif message.channel is Channel.SLACK and OutboxKind.SLACK_RESPOND in settings.enabled:
            items.append(
                OutboxItem(
                    kind=OutboxKind.SLACK_RESPOND,
                    dedupe_key=f"slack_respond:ack:{ticket.id}",
                    ticket_id=ticket.id,
                    payload={"ticket_id": ticket.id, "event": "ack", **dict(message.reply_context)},
                )
            )
    return items + channel_post(ticket, settings)


def status_notifications(
    ticket: Ticket, settings: ReplySettings, *, note: str | None, thread: Sequence[str] = ()
) -> list[OutboxItem]:
    """What a status change sends to the requester: mail for email tickets, a DM for Slack tickets."""
    if ticket.status not in (Status.RESOLVED, Status.CLOSED, Status.WAITING, Status.IN_PROGRESS):
        return []
    key = f"status-{ticket.status.value}-{ticket.updated_at.timestamp():.0f}"
    if ticket.channel is Channel.EMAIL and OutboxKind.EMAIL in settings.enabled:
        if ticket.status is not Status.RESOLVED:
            return []  # mail only on resolution; other changes would be noise in an inbox
        return [
            email_item(
                ticket,
                settings=settings,
                kind=key,
                to=ticket.requester,
                text=status_text(ticket, note),
                # Thread under the request and our earlier mail, so the requester's client keeps one thread.
                in_reply_to=thread[-1] if thread else None,
                references=list(thread[:-1]),
            )
        ]
    if ticket.channel is Channel.SLACK and OutboxKind.SLACK_DM in settings.enabled:
        return [
            OutboxItem(
                kind=OutboxKind.SLACK_DM,
                dedupe_key=f"slack_dm:{key}:{ticket.id}",
                ticket_id=ticket.id,
                payload={"user": ticket.requester, "ticket_id": ticket.id, "event": "status", "note": note or ""},
            )
        ]
    return []
