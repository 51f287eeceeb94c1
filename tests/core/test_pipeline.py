"""The Pipeline end to end on the real SQLite store: tickets, redelivery, threading, loops, triage, changes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from core.classify.base import Classification
from core.classify.fallback import FallbackClassifier
from core.errors import InvalidInput, MalformedMessage, NotFound, StorageError
from core.inbound import InboundRecord, InboundStatus, StoredInbound
from core.message import Channel, Message
from core.outbox import OutboxKind, OutboxStatus
from core.pipeline import Pipeline, Prepared, prepare
from core.ports import ComposeReplies, TicketDraft, TicketFilter
from core.reply import ReplySettings
from core.route import Router
from core.ticket import EventKind, Priority, Status, Ticket
from core.worker import InboundWorker
from storage.store import SqlStore
from tests.fakes.classifier import ScriptedClassifier

DEPARTMENTS = ["IT Support", "HR", "Facilities", "Finance", "General"]
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def make_pipeline(
    store: SqlStore, classifier: ScriptedClassifier | FallbackClassifier | None = None, **kw: object
) -> Pipeline:
    return Pipeline(
        store=store,
        classifier=classifier or ScriptedClassifier(),
        router=Router(DEPARTMENTS, "General", 0.35),
        replies=ReplySettings(
            support_address="support@example.com",
            department_channels={"IT Support": "C0IT"},
            enabled=frozenset(OutboxKind),
        ),
        **kw,  # type: ignore[arg-type]
    )


def email(
    source_id: str,
    *,
    sender: str = "ana@example.com",
    subject: str = "VPN broken",
    body: str = "It fails.",
    refs: tuple[str, ...] = (),
    auto: str | None = None,
    park: str | None = None,
) -> Message:
    return Message(
        channel=Channel.EMAIL,
        source_id=source_id,
        sender=sender,
        subject=subject,
        body=body,
        received_at=NOW,
        thread_refs=refs,
        auto_reason=auto,
        park_reason=park,
    )


def stored(store: SqlStore, key: str, message: Message) -> StoredInbound:
    """Store a message the way a channel adapter would, and claim it the way the worker does."""
    payload = json.dumps({"sender": message.sender, "subject": message.subject, "body": message.body}).encode()
    received = store.receive(InboundRecord(Channel.CLI, key, payload, NOW))
    row = store.claim_inbound_by_id(received.id, now=datetime.now(UTC), lease=timedelta(minutes=1))
    assert row is not None
    return row


def decoder_for(messages: dict[str, Message]) -> Callable[[StoredInbound], Message]:
    return lambda row: messages[row.dedupe_key]


def test_a_new_email_becomes_a_ticket_with_an_ack_and_a_department_post(sqlite_store: SqlStore) -> None:
    pipeline = make_pipeline(sqlite_store, ScriptedClassifier(priority=Priority.HIGH))
    outcome = pipeline.handle(email("<m1@mail>"))
    ticket = outcome.ticket
    assert outcome.created and ticket is not None
    assert (ticket.department, ticket.priority, ticket.classifier) == ("IT Support", Priority.HIGH, "scripted")
    items = sorted(sqlite_store.list_outbox(), key=lambda i: i.kind)
    assert [i.kind for i in items] == [OutboxKind.EMAIL, OutboxKind.SLACK_POST]
    ack = items[0].payload
    assert ack["to"] == "ana@example.com"
    assert ack["subject"] == f"[#{ticket.id}] VPN broken"
    assert f"#{ticket.id}" in ack["text"] and "IT Support" in ack["text"] and "high" in ack["text"]
    assert ack["in_reply_to"] == "<m1@mail>"
    assert items[1].payload == {"channel": "C0IT", "ticket_id": ticket.id, "event": "created"}


def test_low_confidence_goes_to_triage_and_says_so(sqlite_store: SqlStore) -> None:
    outcome = make_pipeline(sqlite_store, ScriptedClassifier(confidence=0.2)).handle(email("<m1@mail>"))
    assert outcome.ticket is not None
    assert outcome.ticket.department == "General" and outcome.ticket.triaged
    routed = [e for e in sqlite_store.ticket_events(outcome.ticket.id) if e.kind is EventKind.ROUTED][0]
    assert "below" in routed.data["reason"] and "IT Support" in routed.data["reason"]
    [ack] = sqlite_store.list_outbox()
    assert "triage" in ack.payload["text"]


def test_an_unknown_department_from_a_classifier_goes_to_triage(sqlite_store: SqlStore) -> None:
    outcome = make_pipeline(sqlite_store, ScriptedClassifier(department="Legal")).handle(email("<m1@mail>"))
    assert outcome.ticket is not None and outcome.ticket.department == "General" and outcome.ticket.triaged


def test_a_reply_threads_by_references_including_our_own_message_id(sqlite_store: SqlStore) -> None:
    pipeline = make_pipeline(sqlite_store)
    first = pipeline.handle(email("<m1@mail>")).ticket
    assert first is not None
    [ack] = [i for i in sqlite_store.list_outbox() if i.kind is OutboxKind.EMAIL]
    reply = email("<m2@mail>", subject="Re: VPN broken", body="Still failing", refs=(ack.payload["message_id"],))
    outcome = pipeline.handle(reply)
    assert not outcome.created and outcome.ticket is not None and outcome.ticket.id == first.id
    assert sqlite_store.ticket_events(first.id)[-1].kind is EventKind.COMMENT
    # No second acknowledgement for a follow-up.
    assert len([i for i in sqlite_store.list_outbox() if i.kind is OutboxKind.EMAIL]) == 1


def test_a_subject_tag_threads_only_for_the_requester(sqlite_store: SqlStore) -> None:
    pipeline = make_pipeline(sqlite_store)
    first = pipeline.handle(email("<m1@mail>")).ticket
    assert first is not None
    mine = pipeline.handle(email("<m2@mail>", subject=f"Re: [#{first.id}] VPN broken"))
    assert not mine.created
    hijack = pipeline.handle(email("<m3@mail>", sender="eve@example.com", subject=f"[#{first.id}] add me"))
    assert hijack.created and hijack.ticket is not None and hijack.ticket.id != first.id


def test_a_reply_reopens_a_resolved_ticket_but_an_auto_reply_does_not(sqlite_store: SqlStore) -> None:
    pipeline = make_pipeline(sqlite_store)
    first = pipeline.handle(email("<m1@mail>")).ticket
    assert first is not None
    pipeline.change_status(first.id, Status.RESOLVED, actor="agent")
    ooo = pipeline.handle(email("<m2@mail>", refs=("<m1@mail>",), auto="auto-submitted: auto-replied"))
    assert ooo.ticket is not None and ooo.ticket.status is Status.RESOLVED
    human = pipeline.handle(email("<m3@mail>", refs=("<m1@mail>",)))
    assert human.ticket is not None and human.ticket.status is Status.NEW


def test_automated_and_outsider_mail_is_parked_without_any_reply(sqlite_store: SqlStore) -> None:
    pipeline = make_pipeline(sqlite_store)
    messages = {
        "ooo": email("<a@x>", auto="auto-submitted: auto-replied"),
        "outsider": email("<b@x>", sender="spam@elsewhere.test", park="sender not allowed: elsewhere.test"),
    }
    pipeline.decoders = {Channel.CLI: decoder_for(messages)}
    for key in messages:
        outcome = pipeline.process(stored(sqlite_store, key, messages[key]))
        assert outcome.status is InboundStatus.PARKED and outcome.ticket is None
    parked = sqlite_store.list_inbound(status=InboundStatus.PARKED, limit=10)
    assert {p.last_error for p in parked} == {
        "automated: auto-submitted: auto-replied",
        "sender not allowed: elsewhere.test",
    }
    assert sqlite_store.list_outbox() == []


def test_our_own_mail_fed_back_is_ignored(sqlite_store: SqlStore) -> None:
    pipeline = make_pipeline(sqlite_store)
    messages = {"own": email("<ticket-1.ack.abc@example.com>", auto="own-mail")}
    pipeline.decoders = {Channel.CLI: decoder_for(messages)}
    outcome = pipeline.process(stored(sqlite_store, "own", messages["own"]))
    assert outcome.status is InboundStatus.IGNORED
    assert sqlite_store.list_outbox() == [] and sqlite_store.list_inbound(status=InboundStatus.IGNORED, limit=5)


def test_redelivery_makes_no_second_ticket(sqlite_store: SqlStore) -> None:
    pipeline = make_pipeline(sqlite_store)
    message = email("<m1@mail>")
    row = stored(sqlite_store, "k", message)
    pipeline.decoders = {Channel.CLI: decoder_for({"k": message})}
    first = pipeline.process(row)
    # The same transport message again: the store answers "already have it", nothing is claimable.
    again = sqlite_store.receive(InboundRecord(Channel.CLI, "k", b"{}", NOW))
    assert not again.created and again.ticket_id == first.ticket.id  # type: ignore[union-attr]
    assert sqlite_store.claim_inbound(now=datetime.now(UTC), limit=10, lease=timedelta(minutes=1)) == []


def test_the_auto_reply_limit_stops_mail_to_a_noisy_recipient(sqlite_store: SqlStore) -> None:
    pipeline = make_pipeline(sqlite_store, max_auto_replies_per_hour=2)
    for i in range(4):
        pipeline.handle(email(f"<m{i}@mail>", subject=f"problem {i}"))
    assert len([i for i in sqlite_store.list_outbox() if i.kind is OutboxKind.EMAIL]) == 2


def test_an_empty_request_is_parked_with_a_reason(sqlite_store: SqlStore) -> None:
    outcome = make_pipeline(sqlite_store).handle(email("<m@x>", subject=" ", body="\n"))
    assert outcome.status is InboundStatus.PARKED and outcome.reason and "empty" in outcome.reason


def test_a_slow_or_failing_primary_falls_back_within_the_deadline(sqlite_store: SqlStore) -> None:
    offline = ScriptedClassifier(name="offline", department="Finance")
    for primary in (ScriptedClassifier(name="claude", delay=2.0), ScriptedClassifier(name="claude", fail=True)):
        classifier = FallbackClassifier(primary=primary, fallback=offline, deadline=0.2)
        ticket = make_pipeline(sqlite_store, classifier).handle(email(f"<{primary.delay}@x>")).ticket
        classifier.close()
        assert ticket is not None and ticket.classifier == "offline" and ticket.department == "Finance"
        classified = [e for e in sqlite_store.ticket_events(ticket.id) if e.kind is EventKind.CLASSIFIED][0]
        assert classified.data["fallback_reason"]


def test_people_change_status_and_reroute_with_events_and_notifications(sqlite_store: SqlStore) -> None:
    pipeline = make_pipeline(sqlite_store)
    ticket = pipeline.handle(email("<m1@mail>")).ticket
    assert ticket is not None
    pipeline.reroute(ticket.id, "facilities", actor="U1", note="it's the badge reader")
    resolved = pipeline.change_status(ticket.id, Status.RESOLVED, actor="U1", note="replaced the reader")
    assert resolved.department == "Facilities" and resolved.status is Status.RESOLVED
    mails = [i for i in sqlite_store.list_outbox() if i.kind is OutboxKind.EMAIL]
    assert any("resolved" in m.payload["text"] and "replaced the reader" in m.payload["text"] for m in mails)
    with pytest.raises(InvalidInput, match="unknown department"):
        pipeline.reroute(ticket.id, "Legal", actor="U1")
    with pytest.raises(NotFound):
        pipeline.change_status(4242, Status.CLOSED, actor="U1")


def test_the_worker_parks_a_poison_message_after_three_attempts_and_goes_on(sqlite_store: SqlStore) -> None:
    good = email("<good@x>")

    def decode(row: StoredInbound) -> Message:
        if row.dedupe_key == "poison":
            raise RuntimeError("parser bug")
        return good

    pipeline = make_pipeline(sqlite_store, decoders={Channel.EMAIL: decode})
    sqlite_store.receive(InboundRecord(Channel.EMAIL, "poison", b"x", NOW))
    sqlite_store.receive(InboundRecord(Channel.EMAIL, "good", b"y", NOW))
    worker = InboundWorker(store=sqlite_store, pipeline=pipeline, max_attempts=3, lease=timedelta(seconds=0))
    for _ in range(3):
        worker.run_once(datetime.now(UTC))
    statuses = {r.dedupe_key: (r.status, r.attempts) for r in sqlite_store.list_inbound(status=None, limit=10)}
    assert statuses == {"poison": (InboundStatus.PARKED, 3), "good": (InboundStatus.PROCESSED, 0)}
    assert len(sqlite_store.list_outbox(status=OutboxStatus.PENDING)) == 2


def test_a_reply_long_after_resolution_opens_a_new_ticket(sqlite_store: SqlStore) -> None:
    pipeline = make_pipeline(sqlite_store)
    first = pipeline.handle(email("<m1@mail>")).ticket
    assert first is not None
    pipeline.change_status(first.id, Status.RESOLVED, actor="agent")
    resolved_mail = [i for i in sqlite_store.list_outbox() if "resolved" in i.payload.get("text", "")][0]
    # The resolution mail threads under the request and our acknowledgement.
    assert resolved_mail.payload["in_reply_to"] and "<m1@mail>" in resolved_mail.payload["references"]
    later = datetime.now(UTC) + timedelta(days=15)
    pipeline.clock = lambda: later
    outcome = pipeline.handle(email("<m2@mail>", refs=("<m1@mail>",), body="It broke again"))
    assert outcome.created and outcome.ticket is not None and outcome.ticket.id != first.id


def test_a_requested_urgency_sets_the_priority(sqlite_store: SqlStore) -> None:
    from dataclasses import replace

    pipeline = make_pipeline(sqlite_store, ScriptedClassifier(priority=Priority.LOW))
    ticket = pipeline.handle(replace(email("<m1@mail>"), requested_priority="urgent")).ticket
    assert ticket is not None and ticket.priority is Priority.URGENT
    ignored = pipeline.handle(replace(email("<m2@mail>"), requested_priority="whenever")).ticket
    assert ignored is not None and ignored.priority is Priority.LOW


def test_near_identical_ignores_prefixes_tags_numbers_and_case_but_not_a_different_request() -> None:
    from core.pipeline import near_identical, similar_key

    assert similar_key("RE: Fwd: [#12] ALERT: disk 97% full on build-03") == "alert disk full on build"
    assert near_identical(similar_key("Printer jammed again"), similar_key("printer jammed agian"))
    assert not near_identical(similar_key("Printer jammed"), similar_key("Payslip missing"))


class OutageStore(SqlStore):
    """The real store, but while ``down`` recording a failure fails as it would with the database away."""

    down = False

    def fail_inbound(  # type: ignore[override]
        self, inbound_id: int, *, error: str, max_attempts: int, now: datetime, count_attempt: bool = True
    ) -> InboundStatus:
        if self.down:
            raise StorageError("database error: connection refused")
        return super().fail_inbound(
            inbound_id, error=error, max_attempts=max_attempts, now=now, count_attempt=count_attempt
        )


def test_after_a_database_outage_the_worker_releases_its_claims_at_once_without_counting_attempts(
    sqlite_store: SqlStore,
) -> None:
    store = OutageStore(sqlite_store.engine)
    message = email("<m1@x>")

    def decode(_row: StoredInbound) -> Message:
        if store.down:
            raise StorageError("database error: connection refused")
        return message

    pipeline = make_pipeline(store, decoders={Channel.EMAIL: decode})
    store.receive(InboundRecord(Channel.EMAIL, "m1", b"x", NOW))
    worker = InboundWorker(store=store, pipeline=pipeline, max_attempts=3)  # a 5-minute claim lease
    store.down = True
    for _ in range(5):
        try:
            worker.run_once(datetime.now(UTC))
        except StorageError:
            pass  # the Loop logs it and tries again
    store.down = False
    assert worker.run_once(datetime.now(UTC)) == 1  # released and claimed again now, not in five minutes

    [row] = store.list_inbound(status=None, limit=10)
    assert (row.status, row.attempts) == (InboundStatus.PROCESSED, 0)  # an outage is not the message's fault


def test_a_tickets_text_lists_the_requests_attachments_and_counts_the_rest(sqlite_store: SqlStore) -> None:
    from dataclasses import replace

    from core.message import Attachment

    files = tuple(Attachment(f"receipt-{n}.png", "image/png", 2048 * n) for n in range(1, 26))
    outcome = make_pipeline(sqlite_store).handle(replace(email("<att@x>"), attachments=files))
    assert outcome.ticket is not None
    body = outcome.ticket.body
    assert body.startswith("It fails.\n\nAttachments (25):\n- receipt-1.png (image/png, 2.0 KB)\n")
    assert "receipt-20.png" in body and "receipt-21.png" not in body
    assert body.endswith("- … and 5 more")


@dataclass
class InlinePreparer:
    """``core.worker.Preparer`` in this process (bot.prepare does the same in worker processes): prepares with
    its own classifier, and hands back None for the rows listed in ``skip``, as the pool does after a failure."""

    decode: Callable[[StoredInbound], Message]
    classifier: ScriptedClassifier
    skip: set[str] = field(default_factory=set)
    batches: list[int] = field(default_factory=list)

    def prepare(self, rows: Sequence[StoredInbound]) -> Iterator[Prepared | None]:
        self.batches.append(len(rows))
        for row in rows:
            yield None if row.dedupe_key in self.skip else prepare(self.decode, self.classifier, row)


def test_the_worker_uses_prepared_messages_and_prepares_the_rest_itself(sqlite_store: SqlStore) -> None:
    messages = {
        "prepared": email("<p@x>", subject="Prepared elsewhere"),
        "skipped": email("<s@x>", subject="Prepared here", sender="bo@example.com"),
        "robot": email("<r@x>", subject="Out of office", auto="auto-submitted"),
    }

    def decode(row: StoredInbound) -> Message:
        if row.dedupe_key == "broken":
            raise MalformedMessage("no headers at all")
        return messages[row.dedupe_key]

    in_process = ScriptedClassifier(name="in-process")
    pipeline = make_pipeline(sqlite_store, in_process, decoders={Channel.EMAIL: decode})
    preparer = InlinePreparer(decode, ScriptedClassifier(name="preparer", department="HR"), skip={"skipped"})
    for key in ["prepared", "skipped", "robot", "broken"]:
        sqlite_store.receive(InboundRecord(Channel.EMAIL, key, b"raw", NOW))
    worker = InboundWorker(store=sqlite_store, pipeline=pipeline, preparer=preparer, batch_size=10)
    assert worker.run_once(datetime.now(UTC)) == 4
    assert preparer.batches == [4]
    by_subject = {t.subject: t for t in sqlite_store.list_tickets(TicketFilter(limit=10))}
    assert (by_subject["Prepared elsewhere"].classifier, by_subject["Prepared elsewhere"].department) == (
        "preparer",
        "HR",
    )
    assert by_subject["Prepared here"].classifier == "in-process"
    assert in_process.calls == [("Prepared here", "It fails.")]  # the prepared one was not classified again
    assert preparer.classifier.calls == [("Prepared elsewhere", "It fails.")]  # the robot was never classified
    statuses = {r.dedupe_key: (r.status, r.last_error) for r in sqlite_store.list_inbound(status=None, limit=10)}
    assert statuses["robot"][0] is InboundStatus.PARKED
    assert statuses["broken"] == (InboundStatus.PARKED, "malformed: no headers at all")


class FailingAfterWriteStore(SqlStore):
    """Raises after writing the ticket with a given subject: a failure inside that message's transaction."""

    fail_subject = "Request 2"

    def open_ticket(self, inbound_id: int | None, draft: TicketDraft, compose: ComposeReplies) -> Ticket:
        ticket = super().open_ticket(inbound_id, draft, compose)
        if ticket.subject == self.fail_subject:
            raise RuntimeError("store bug")
        return ticket


class CountingObserver:
    """Records the subject of every ticket it is told about; raises for one subject (a broken observer)."""

    def __init__(self, raise_for: str | None = None) -> None:
        self.seen: list[str] = []
        self.raise_for = raise_for

    def ticket_opened(self, ticket: Ticket, classification: Classification) -> None:
        self.seen.append(ticket.subject)
        if ticket.subject == self.raise_for:
            raise RuntimeError("observer bug")


def queue(store: SqlStore, messages: dict[str, Message]) -> None:
    for key in messages:
        store.receive(InboundRecord(Channel.EMAIL, key, b"raw", NOW))


def batch_worker(store: SqlStore, count: int, observer: CountingObserver) -> InboundWorker:
    """``count`` stored requests ("Request n" from un@example.com) and a worker that writes them in one shared
    transaction, its pipeline telling ``observer`` about each ticket."""
    messages = {f"m{n}": email(f"<m{n}@x>", subject=f"Request {n}", sender=f"u{n}@example.com") for n in range(count)}
    pipeline = make_pipeline(store, decoders={Channel.EMAIL: decoder_for(messages)})
    pipeline.observer = observer
    queue(store, messages)
    return InboundWorker(store=store, pipeline=pipeline, batch_size=10, shared_transaction=True)


def test_a_shared_batch_transaction_undoes_only_the_failing_message(engine: Engine) -> None:
    store = FailingAfterWriteStore(engine)
    observer = CountingObserver()
    worker = batch_worker(store, 4, observer)
    assert worker.run_once(datetime.now(UTC)) == 4
    subjects = sorted(t.subject for t in store.list_tickets(TicketFilter(limit=10)))
    assert subjects == ["Request 0", "Request 1", "Request 3"]  # Request 2's ticket was rolled back with it
    rows = {r.dedupe_key: r for r in store.list_inbound(status=None, limit=10)}
    assert (rows["m2"].status, rows["m2"].attempts) == (InboundStatus.RECEIVED, 1)
    assert "store bug" in (rows["m2"].last_error or "")
    assert all(rows[k].status is InboundStatus.PROCESSED for k in ("m0", "m1", "m3"))
    acks = [i for i in store.list_outbox() if i.kind is OutboxKind.EMAIL]
    assert sorted(i.payload["to"] for i in acks) == ["u0@example.com", "u1@example.com", "u3@example.com"]
    assert sorted(observer.seen) == ["Request 0", "Request 1", "Request 3"]  # the undone ticket was never counted


def test_a_broken_observer_neither_undoes_nor_repeats_a_ticket(store: SqlStore) -> None:
    """The observer must not raise; when it does anyway, the ticket it was told about stays stored and is
    processed once."""
    observer = CountingObserver(raise_for="Request 1")
    worker = batch_worker(store, 3, observer)
    assert worker.run_once(datetime.now(UTC)) == 3
    assert sorted(t.subject for t in store.list_tickets(TicketFilter(limit=10))) == [f"Request {n}" for n in range(3)]
    assert all(r.status is InboundStatus.PROCESSED for r in store.list_inbound(status=None, limit=10))
    assert sorted(observer.seen) == [f"Request {n}" for n in range(3)]


class CommitFailingStore(SqlStore):
    """The real store, except that its first shared transaction fails at the commit (the database went away)."""

    failed = False

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self.failed:
            with super().transaction():
                yield
            return
        self.failed = True
        try:
            with super().transaction():
                yield
                raise _Abort  # rolls the whole transaction back
        except _Abort:
            raise StorageError("database error: disk I/O error") from None


class _Abort(Exception):
    pass


def test_a_batch_whose_commit_fails_is_processed_again_row_by_row_and_nothing_twice(engine: Engine) -> None:
    store = CommitFailingStore(engine)
    observer = CountingObserver()
    worker = batch_worker(store, 3, observer)
    assert worker.run_once(datetime.now(UTC)) == 3
    assert store.failed
    assert sorted(observer.seen) == [f"Request {n}" for n in range(3)]  # counted once each, when stored
    assert sorted(t.subject for t in store.list_tickets(TicketFilter(limit=10))) == [f"Request {n}" for n in range(3)]
    assert all(r.status is InboundStatus.PROCESSED for r in store.list_inbound(status=None, limit=10))
    acks = [i for i in store.list_outbox() if i.kind is OutboxKind.EMAIL]
    assert sorted(i.payload["to"] for i in acks) == [f"u{n}@example.com" for n in range(3)]  # one each


def test_a_shared_transaction_sees_its_own_writes_so_a_reply_in_the_same_batch_threads(store: SqlStore) -> None:
    first = email("<first@x>", subject="Laptop broken")
    reply = email("<reply@x>", subject="Re: Laptop broken", body="Also the charger.", refs=("<first@x>",))
    pipeline = make_pipeline(store, decoders={Channel.EMAIL: decoder_for({"first": first, "reply": reply})})
    queue(store, {"first": first, "reply": reply})
    worker = InboundWorker(store=store, pipeline=pipeline, batch_size=10, shared_transaction=True)
    assert worker.run_once(datetime.now(UTC)) == 2
    [ticket] = store.list_tickets(TicketFilter(limit=10))
    assert [e.kind for e in store.ticket_events(ticket.id)].count(EventKind.COMMENT) == 1
