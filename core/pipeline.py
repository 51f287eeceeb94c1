"""Process stage: the one place that knows the order (decode, loop check, thread, classify, route, reply)."""

from __future__ import annotations

import difflib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from core.classify.base import Classification, Classifier
from core.errors import ClassifierUnavailable, InvalidInput, MalformedMessage, NotFound
from core.inbound import InboundStatus, StoredInbound
from core.message import Channel, Message
from core.outbox import OutboxItem
from core.ports import SenderHistory, Store, TicketDraft
from core.reply import ReplySettings, acknowledgements, channel_post, status_notifications
from core.route import Router
from core.ticket import Priority, Status, Ticket

log = logging.getLogger(__name__)

Decoder = Callable[[StoredInbound], Message]
Clock = Callable[[], datetime]

SUBJECT_TAG = re.compile(r"\[#(\d{1,12})\]")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What processing one inbound message did."""

    status: InboundStatus
    ticket: Ticket | None = None
    created: bool = False
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A stored message decoded, and classified when it may open a ticket, before its turn: the part of processing
    that needs no database, so another process can do it (bot.prepare) while this one writes tickets."""

    message: Message | None = None
    malformed: str | None = None  # why it could not be decoded (a MalformedMessage), instead of ``message``
    classification: Classification | None = None


def prepare(decode: Decoder, classifier: Classifier | None, inbound: StoredInbound) -> Prepared:
    """Decode ``inbound`` and, with a ``classifier``, classify it if it may become a new ticket (it may still turn
    out to be a follow-up: then the classification goes unused)."""
    try:
        message = decode(inbound)
    except MalformedMessage as exc:
        return Prepared(malformed=str(exc))
    classification = None
    if classifier is not None and may_open_ticket(message):
        try:
            classification = classifier.classify(message.subject, message.body)
        except ClassifierUnavailable:
            pass  # processing classifies it again, and handles the failure there
    return Prepared(message=message, classification=classification)


def may_open_ticket(message: Message) -> bool:
    """False for what ``Pipeline.handle`` parks or ignores unless it threads: our own mail, robots, outsiders, empty."""
    return not (message.auto_reason or message.park_reason) and bool(message.text.strip())


class PipelineObserver(Protocol):
    """Told about each ticket the pipeline opens (the bot turns it into metrics); must be quick and never raise."""

    def ticket_opened(self, ticket: Ticket, classification: Classification) -> None: ...


@dataclass
class Pipeline:
    """Message -> thread or Ticket -> Classification -> Route -> replies; collaborators come in by constructor."""

    store: Store
    classifier: Classifier
    router: Router
    replies: ReplySettings
    decoders: Mapping[Channel, Decoder] = field(default_factory=dict)
    reopen_window: timedelta = timedelta(days=14)
    max_auto_replies_per_hour: int = 5
    max_auto_replies_per_day: int = 20
    # A recipient whose server answered a permanent failure (5.x.x) gets no automatic mail for this long.
    bounce_suppression: timedelta = timedelta(days=60)
    # More near-identical new tickets than this from one sender in an hour: the rest are parked, unanswered.
    max_similar_per_hour: int = 5
    clock: Clock = utcnow
    observer: PipelineObserver | None = None
    # Per thread: the observer calls held back by ``observations_held`` (None when they are not held).
    _held: threading.local = field(default_factory=threading.local, init=False, repr=False, compare=False)

    @contextmanager
    def observations_held(self) -> Iterator[None]:
        """Until the block ends, this thread's observer calls wait: made when it ends normally, dropped when it
        raises. The worker holds them for a batch transaction, so a batch that fails as a whole and is processed
        again row by row counts each ticket once, when it is stored. Nested blocks hand theirs to the outer one."""
        outer: list[tuple[Ticket, Classification]] | None = getattr(self._held, "calls", None)
        calls: list[tuple[Ticket, Classification]] = []
        self._held.calls = calls
        try:
            yield
        finally:
            self._held.calls = outer
        if outer is not None:
            outer.extend(calls)
            return
        for ticket, classification in calls:
            self._observe(ticket, classification)

    def _observe(self, ticket: Ticket, classification: Classification) -> None:
        if self.observer is None:
            return
        held: list[tuple[Ticket, Classification]] | None = getattr(self._held, "calls", None)
        if held is not None:
            held.append((ticket, classification))
            return
        try:
            self.observer.ticket_opened(ticket, classification)
        except Exception:  # noqa: BLE001 - the ticket is stored; a broken observer must not fail its message
            log.exception("the pipeline observer failed for ticket #%d", ticket.id)

    def process(self, inbound: StoredInbound, prepared: Prepared | None = None) -> Outcome:
        """Turn one stored inbound message into a ticket or a follow-up; parks what needs a person.

        ``prepared``: the message already decoded (and maybe classified) by ``prepare``, with this pipeline's
        decoders and classifier; without it, both happen here.

        Raises:
            TicketbotError: a transient failure (storage); the worker counts the attempt and retries.
        """
        if prepared is None:
            prepared = prepare(self.decode, None, inbound)
        if prepared.message is None:
            reason = f"malformed: {prepared.malformed}"
            self.store.finish_inbound(inbound.id, status=InboundStatus.PARKED, reason=reason)
            return Outcome(InboundStatus.PARKED, reason=reason)
        return self.handle(prepared.message, inbound_id=inbound.id, classification=prepared.classification)

    def decode(self, inbound: StoredInbound) -> Message:
        decoder = self.decoders.get(inbound.channel)
        if decoder is None:
            if inbound.channel in (Channel.CLI, Channel.API):
                return message_from_json(inbound)
            raise MalformedMessage(f"no decoder for channel {inbound.channel}")
        return decoder(inbound)

    def handle(
        self, message: Message, *, inbound_id: int | None = None, classification: Classification | None = None
    ) -> Outcome:
        if message.auto_reason == "own-mail":
            # Our own mail fed back in (a loop): record nothing, answer nothing.
            if inbound_id is not None:
                self.store.finish_inbound(inbound_id, status=InboundStatus.IGNORED, reason="our own mail")
            return Outcome(InboundStatus.IGNORED, reason="our own mail")

        self.note_bounces(message)
        existing = self.thread(message)
        if existing is not None and not self.too_old_to_reopen(existing, message):
            return self.follow_up(message, existing, inbound_id)

        if message.park_reason or message.auto_reason:
            # Outsiders, spam and unthreaded robots (out-of-office, bounces for unknown mail, lists)
            # wait for a person instead of opening tickets that would never be answered.
            reason = message.park_reason or f"automated: {message.auto_reason}"
            if inbound_id is not None:
                self.store.finish_inbound(inbound_id, status=InboundStatus.PARKED, reason=reason)
            return Outcome(InboundStatus.PARKED, reason=reason)

        if not message.text.strip():
            raise_empty = "empty request: no subject and no text"
            if inbound_id is not None:
                self.store.finish_inbound(inbound_id, status=InboundStatus.PARKED, reason=raise_empty)
            return Outcome(InboundStatus.PARKED, reason=raise_empty)

        # The loop guards' reads for an email sender, in one transaction: the repeat brake now, the reply limits
        # when composing.
        history = self.sender_history(message.sender) if message.channel is Channel.EMAIL else None
        repeated = self.repeated_request(message, history)
        if repeated is not None:
            if inbound_id is not None:
                self.store.finish_inbound(inbound_id, status=InboundStatus.PARKED, reason=repeated)
            return Outcome(InboundStatus.PARKED, reason=repeated)

        if classification is None:
            classification = self.classifier.classify(message.subject, message.body)
        if message.requested_priority in {p.value for p in Priority}:
            classification = replace(classification, priority=Priority(message.requested_priority))
        route = self.router.route(classification)
        draft = TicketDraft(
            subject=message.subject.strip() or first_line(message.body),
            body=(message.full_body or message.body) + attachment_note(message),
            requester=message.sender,
            requester_name=message.sender_name,
            channel=message.channel,
            classification=classification,
            route=route,
            received_at=message.received_at,
            message_refs=(message.source_id,) if message.channel is Channel.EMAIL and message.source_id else (),
        )

        # Asked before the transaction: compose runs inside it and must not open another. Only email is mailed
        # back (Slack, CLI and API requests are answered where they came from), so only email pays the query.
        may_mail = history is None or self.may_auto_reply(message.sender, history)

        def compose(ticket: Ticket) -> list[OutboxItem]:
            return only_allowed(acknowledgements(ticket, message, self.replies), may_mail)

        ticket = self.store.open_ticket(inbound_id, draft, compose)
        log.info(
            "ticket #%d from %s → %s (%s, %.0f%%, %s)",
            ticket.id,
            message.channel,
            ticket.department,
            ticket.priority,
            ticket.confidence * 100,
            ticket.classifier,
        )
        self._observe(ticket, classification)
        return Outcome(InboundStatus.PROCESSED, ticket=ticket, created=True)

    def thread(self, message: Message) -> Ticket | None:
        """The existing ticket this message follows up, if any (references first, then a requester's tag)."""
        if message.thread_refs:
            ticket_id = self.store.find_ticket_by_refs(message.thread_refs)
            if ticket_id is not None:
                return self.store.get_ticket(ticket_id)
        tagged = message.subject_ticket_id
        if tagged is None:
            match = SUBJECT_TAG.search(message.subject)
            tagged = int(match.group(1)) if match else None
        if tagged is not None:
            ticket = self.store.get_ticket(tagged)
            # A tag alone proves nothing: only the requester may add to a ticket by tag (anti-hijack).
            if ticket is not None and ticket.requester.lower() == message.sender.lower():
                return ticket
        return None

    def too_old_to_reopen(self, ticket: Ticket, message: Message) -> bool:
        """A person answering a ticket closed longer ago than the reopen window starts a new ticket
        (acknowledged as usual) rather than a comment nobody will read."""
        if ticket.status.is_open or ticket.resolved_at is None or message.auto_reason is not None:
            return False
        return self.clock() - ticket.resolved_at > self.reopen_window

    def follow_up(self, message: Message, ticket: Ticket, inbound_id: int | None) -> Outcome:
        now = self.clock()
        # Robots (out-of-office, bounces) leave a note but never reopen a ticket; a person's reply does
        # (handle() already sent replies older than the reopen window to a new ticket).
        reopen = not ticket.status.is_open and message.auto_reason is None
        text = message.body if message.body.strip() else message.full_body

        def compose(updated: Ticket) -> list[OutboxItem]:
            return channel_post(updated, self.replies, event=f"comment-{message.source_id or now.timestamp()}")

        refs = (message.source_id,) if message.channel is Channel.EMAIL and message.source_id else ()
        updated = self.store.add_comment(
            inbound_id,
            ticket.id,
            actor=message.sender,
            text=text,
            reopen=reopen,
            message_refs=refs,
            compose=compose,
            automated=message.auto_reason is not None,
        )
        log.info("follow-up on #%d from %s%s", ticket.id, message.sender, " (reopened)" if reopen else "")
        return Outcome(InboundStatus.PROCESSED, ticket=updated, created=False)

    def note_bounces(self, message: Message) -> None:
        """A delivery report naming permanent failures: stop mailing those addresses for a while (Zammad's rule),
        so a dead mailbox does not collect an acknowledgement per ticket, each bouncing back to us."""
        bounced = message.reply_context.get("bounced_recipients", "").split()
        if bounced:
            until = self.clock() + self.bounce_suppression
            reason = f"permanent failure reported by {message.sender}"
            self.store.suppress_recipients(bounced, until=until, reason=reason)
            log.info("suppressing automatic mail to %s until %s (permanent bounce)", ", ".join(bounced), until.date())

    def sender_history(self, address: str) -> SenderHistory:
        now = self.clock()
        return self.store.sender_history(
            address,
            now=now,
            reply_windows=[now - timedelta(hours=1), now - timedelta(days=1)],
            recent_since=now - timedelta(hours=1),
            recent_limit=self.max_similar_per_hour * 4,
        )

    def repeated_request(self, message: Message, history: SenderHistory | None) -> str | None:
        """Why a new email ticket is held back as a repeat, or None: a robot (or a loop) behind a person's address
        sending the same request again and again would otherwise open and acknowledge each one."""
        if history is None or self.max_similar_per_hour <= 0:
            return None
        subject, body = similar_key(message.subject), similar_key(message.body[:500])
        if len(subject) + len(body) < 3:
            return None  # nothing to compare
        similar = sum(
            1
            for other_subject, other_body in history.recent
            if near_identical(subject, similar_key(other_subject)) and near_identical(body, similar_key(other_body))
        )
        if similar >= self.max_similar_per_hour:
            log.warning("parking a repeat from %s: %d near-identical tickets in the last hour", message.sender, similar)
            return f"repeated: {similar} near-identical requests from {message.sender} in the last hour"
        return None

    def may_auto_reply(self, recipient: str, history: SenderHistory | None = None) -> bool:
        """False when ``recipient`` already had too many automatic mails, or bounced permanently: loop detection
        is never complete."""
        history = history or self.sender_history(recipient)
        if history.suppressed_until is not None:
            log.info("not mailing %s: it bounced permanently", recipient)
            return False
        hour, day = history.auto_replies
        if hour >= self.max_auto_replies_per_hour or day >= self.max_auto_replies_per_day:
            log.warning("not mailing %s: automatic reply limit reached (%d/h, %d/day)", recipient, hour, day)
            return False
        return True

    # -- changes made by people (CLI, Slack, API) -------------------------------------------------

    def change_status(self, ticket_id: int, status: Status, *, actor: str, note: str | None = None) -> Ticket:
        current = self.store.get_ticket(ticket_id)
        if current is None:
            raise NotFound(f"no ticket #{ticket_id}")
        may_mail = current.channel is not Channel.EMAIL or self.may_auto_reply(current.requester)
        thread = self.store.message_refs(ticket_id) if current.channel is Channel.EMAIL else []

        def compose(ticket: Ticket) -> list[OutboxItem]:
            items = status_notifications(ticket, self.replies, note=note, thread=thread)
            post = channel_post(ticket, self.replies, event=f"status-{status.value}-{self.clock().timestamp()}")
            return only_allowed(items, may_mail) + post

        return self.store.change_status(ticket_id, status, actor=actor, note=note, compose=compose)

    def set_priority(self, ticket_id: int, priority: Priority, *, actor: str, note: str | None = None) -> Ticket:
        """A person's priority correction, recorded as an event (a labelled example) and shown on the card."""

        def compose(ticket: Ticket) -> list[OutboxItem]:
            return channel_post(ticket, self.replies, event=f"priority-{priority.value}-{self.clock().timestamp()}")

        return self.store.set_priority(ticket_id, priority, actor=actor, note=note, compose=compose)

    def reroute(self, ticket_id: int, department: str, *, actor: str, note: str | None = None) -> Ticket:
        canonical = self.router.canonical(department)
        if canonical is None:
            raise InvalidInput(
                f"unknown department {department!r}; choose one of: {', '.join(self.router.departments)}"
            )

        def compose(ticket: Ticket) -> list[OutboxItem]:
            return channel_post(ticket, self.replies, event=f"rerouted-{self.clock().timestamp()}")

        return self.store.reroute(ticket_id, canonical, actor=actor, note=note, compose=compose)


def only_allowed(items: list[OutboxItem], may_mail: bool) -> list[OutboxItem]:
    """Drop the mail items when the recipient is over the automatic-reply limit; posts are unaffected."""
    return items if may_mail else [i for i in items if "to" not in i.payload]


_REPLY_PREFIX = re.compile(r"^\s*((re|fwd?|aw|wg|sv|tr)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_NOISE = re.compile(r"\[#\d+\]|\d+|[^\w]+")


def similar_key(text: str) -> str:
    """Text reduced to what repeats: no reply prefixes, ticket tags, numbers, punctuation or case."""
    return " ".join(_NOISE.sub(" ", _REPLY_PREFIX.sub("", text)).lower().split())


def near_identical(a: str, b: str) -> bool:
    """Equal, or differing by a few characters (a typo, a timestamp), per difflib's ratio."""
    if a == b:
        return True
    matcher = difflib.SequenceMatcher(None, a, b)
    return matcher.real_quick_ratio() >= 0.9 and matcher.quick_ratio() >= 0.9 and matcher.ratio() >= 0.9


MAX_LISTED_ATTACHMENTS = 20


def attachment_note(message: Message) -> str:
    """A list of the request's attachments for the ticket text, so an agent knows they exist (the files stay in
    the stored raw message); at most ``MAX_LISTED_ATTACHMENTS`` named, the rest counted."""
    if not message.attachments:
        return ""
    listed = [
        f"- {a.filename} ({a.content_type}, {_size(a.size)})" for a in message.attachments[:MAX_LISTED_ATTACHMENTS]
    ]
    more = len(message.attachments) - len(listed)
    if more:
        listed.append(f"- … and {more} more")
    return f"\n\nAttachments ({len(message.attachments)}):\n" + "\n".join(listed)


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / 1024 / 1024:.1f} MB"


def first_line(text: str, limit: int = 120) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:limit]
    return "(no subject)"


def message_from_json(inbound: StoredInbound) -> Message:
    """Decode a CLI or API submission: a JSON object with sender, subject, body (and optional sender_name)."""
    try:
        data: Any = json.loads(inbound.payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"not a JSON object: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("sender"), str):
        raise MalformedMessage("a submission needs at least a 'sender' string")
    return Message(
        channel=inbound.channel,
        source_id=inbound.dedupe_key,
        sender=data["sender"],
        sender_name=str(data.get("sender_name") or ""),
        subject=str(data.get("subject") or ""),
        body=str(data.get("body") or ""),
        received_at=inbound.received_at,
    )
