"""Email end to end: real SMTP intake, real Dovecot and poller, real pipeline, store and reply senders.

Each test assembles the runtime's parts the way ``bot.runtime`` does (``build_pipeline``, ``email_decoders``,
``email_sender``, ``SmtpIntakeComponent``) and drives the worker and the outbox with ``run_once`` so every step is
deterministic; one test starts the real ``Runtime`` instead. Replies are counted where they land: ``.eml`` files
in ``<data_dir>/outbox`` or envelopes at the recording relay.
"""

from __future__ import annotations

import json
import random
import smtplib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bot.cli import main
from bot.runtime import SmtpIntakeComponent, build_pipeline, email_decoders, email_sender
from core.config import Config, ImapMailboxConfig, load_config
from core.inbound import InboundStatus, StoredInbound
from core.outbox import OutboxDispatcher, OutboxKind, OutboxStatus, RetryPolicy
from core.pipeline import Pipeline
from core.ports import TicketFilter
from core.ticket import EventKind, Status, Ticket, TicketEvent
from core.worker import InboundWorker
from intake.identity import LOOP_HEADER
from intake.imap import ImapPoller, MailboxClient, connect_mailbox
from storage.store import SqlStore
from tests.fakes import smtp as fakes
from tests.fakes.classifier import ScriptedClassifier
from tests.fakes.dovecot import (
    Dovecot,
    MailUser,
    dovecot_server,  # noqa: F401 - the `dovecot` fixture
    fresh_mailbox,  # noqa: F401 - the `mailbox` fixture
)
from tests.fakes.mail import SUPPORT, bounce, header, list_mail, out_of_office, reply, request, text_of
from tests.fakes.smtp import RelayServer, transact

recording_relay = fakes.recording_relay

INSTANCE = "ticketbot-e2e"
PASSWORD_ENV = "E2E_IMAP_PASSWORD"
ANA = "ana@example.com"
BOB = "bob@example.com"


# -- the assembly -------------------------------------------------------------------------------------------------


def write_config(directory: Path, *, relay: RelayServer | None = None) -> Path:
    """A config.yaml like the shipped one, pointed at ``directory`` and a free intake port."""
    data: dict[str, Any] = {
        "data_dir": str(directory),
        "instance_id": INSTANCE,
        "classifier": {"mode": "offline"},
        "http": {"enabled": False},
        "digests": {"enabled": False},
        "email": {
            "support_addresses": [SUPPORT],
            "allowed_sender_domains": ["example.com"],
            "from_name": "IT Help Desk",
            "smtp_intake": {"host": "127.0.0.1", "port": 0},
            "relay": relay.config().model_dump() if relay else None,
        },
        "worker": {"poll_seconds": 0.05},
        "outbox": {"poll_seconds": 0.05},
    }
    path = directory / "config.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


@dataclass
class Desk:
    """The email side of one ticketbot, wired as ``Runtime.build`` wires it, stepped by hand."""

    config: Config
    config_path: Path
    store: SqlStore
    pipeline: Pipeline
    worker: InboundWorker
    dispatcher: OutboxDispatcher
    intake: SmtpIntakeComponent
    relay: RelayServer | None = None
    pollers: list[ImapPoller] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.intake.server.port

    def send(self, raw: bytes, *, sender: str = ANA, recipients: Sequence[str] = (SUPPORT,)) -> int:
        """Deliver ``raw`` to the intake over SMTP; returns the DATA reply code."""
        answer = transact(self.port, raw, sender=sender, recipients=recipients)
        return answer.code

    def drain(self, now: datetime | None = None) -> None:
        """Process every stored message, then deliver every due reply (as the worker and outbox loops would)."""
        while self.worker.run_once(now or datetime.now(UTC)):
            pass
        # The clock is read again: replies are due from the moment their transaction committed.
        while self.dispatcher.run_once(now or datetime.now(UTC)):
            pass

    def replies(self) -> list[bytes]:
        """Every automatic mail sent so far, oldest first: .eml files, or what the relay accepted."""
        if self.relay is not None:
            return [d.content for d in self.relay.relay.deliveries]
        outbox = self.config.outbox_dir
        return [p.read_bytes() for p in sorted(outbox.glob("*.eml"))] if outbox.exists() else []

    def tickets(self) -> list[Ticket]:
        return sorted(self.store.list_tickets(TicketFilter(limit=1000)), key=lambda t: t.id)

    def inbound(self) -> list[StoredInbound]:
        return sorted(self.store.list_inbound(status=None, limit=1000), key=lambda r: r.id)

    def events(self, ticket_id: int, kind: EventKind) -> list[TicketEvent]:
        return [e for e in self.store.ticket_events(ticket_id) if e.kind is kind]

    def poller(
        self,
        server: Dovecot,
        user: MailUser,
        *,
        clock: Callable[[], datetime] | None = None,
        wrap: Callable[[MailboxClient], MailboxClient] | None = None,
        **overrides: Any,
    ) -> ImapPoller:
        """The real ImapPoller on ``user``'s INBOX (the password comes from a private environ, not os.environ)."""
        values: dict[str, Any] = {
            "name": f"support-{user.username}",
            "host": server.host,
            "port": server.port,
            "security": "none",
            "username": user.username,
            "password_env": PASSWORD_ENV,
            "idle": False,
            "poll_seconds": 1,
            "import_backlog": True,
        }
        values.update(overrides)
        config = ImapMailboxConfig.model_validate(values)

        def connect(cfg: ImapMailboxConfig) -> MailboxClient:
            client = connect_mailbox(cfg, environ={PASSWORD_ENV: user.password}, timeout=10)
            return wrap(client) if wrap else client

        extra: dict[str, Any] = {"clock": clock} if clock else {}
        poller = ImapPoller(config=config, store=self.store, owner="e2e", client_factory=connect, **extra)
        self.pollers.append(poller)
        return poller

    def cli(self, *args: str) -> Result:
        """``ticketbot ARGS`` as a user would run it against this desk's config and data directory."""
        env = {"TICKETBOT_CONFIG": str(self.config_path), "TICKETBOT_DATA_DIR": str(self.config.data_dir)}
        return CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)


def make_desk(store: SqlStore, directory: Path, *, relay: RelayServer | None = None) -> Desk:
    path = write_config(directory, relay=relay)
    config = load_config(path)
    pipeline = build_pipeline(
        config, store, ScriptedClassifier(), decoders=email_decoders(config), enabled={OutboxKind.EMAIL}
    )
    dispatcher = OutboxDispatcher(
        store=store,
        senders={OutboxKind.EMAIL: email_sender(config)},
        policy=RetryPolicy(
            max_attempts=config.outbox.max_attempts,
            base_delay=config.outbox.base_delay_seconds,
            max_delay=config.outbox.max_delay_seconds,
            rng=random.Random(3),
        ),
        batch_size=config.outbox.batch_size,
    )
    return Desk(
        config=config,
        config_path=path,
        store=store,
        pipeline=pipeline,
        worker=InboundWorker(store=store, pipeline=pipeline, max_attempts=config.worker.max_attempts),
        dispatcher=dispatcher,
        intake=SmtpIntakeComponent(config, store),
        relay=relay,
    )


def running(desk: Desk) -> Iterator[Desk]:
    desk.intake.start()
    try:
        yield desk
    finally:
        desk.intake.stop()
        for poller in desk.pollers:
            poller.close()


@pytest.fixture
def desk(sqlite_store: SqlStore, tmp_path: Path) -> Iterator[Desk]:
    """A desk on SQLite whose replies become .eml files (no relay configured: the embedded default)."""
    yield from running(make_desk(sqlite_store, tmp_path))


@pytest.fixture
def any_desk(store: SqlStore, tmp_path: Path) -> Iterator[Desk]:
    """The same desk on SQLite and on PostgreSQL."""
    yield from running(make_desk(store, tmp_path))


@pytest.fixture
def relay_desk(sqlite_store: SqlStore, tmp_path: Path, recording_relay: RelayServer) -> Iterator[Desk]:
    """A desk whose replies go through the (recording) company relay."""
    yield from running(make_desk(sqlite_store, tmp_path, relay=recording_relay))


def open_ticket(desk: Desk, raw: bytes, *, sender: str = ANA) -> tuple[Ticket, bytes]:
    """Send a new request by SMTP and process it; returns its ticket and the acknowledgement we sent."""
    before = len(desk.replies())
    assert desk.send(raw, sender=sender) == 250
    desk.drain()
    ticket = desk.tickets()[-1]
    replies = desk.replies()
    assert len(replies) == before + 1, "expected exactly one acknowledgement"
    return ticket, replies[-1]


def statuses(desk: Desk) -> list[tuple[InboundStatus, str | None]]:
    return [(r.status, r.last_error) for r in desk.inbound()]


# -- round trip ---------------------------------------------------------------------------------------------------


def test_a_request_by_smtp_becomes_one_ticket_and_one_acknowledgement(any_desk: Desk) -> None:
    desk = any_desk
    raw = request("Printer on the second floor is jammed", sender=ANA, name="Ana Lima")
    request_id = header(raw, "Message-ID")

    with smtplib.SMTP("127.0.0.1", desk.port, timeout=10) as client:
        refused = client.sendmail(ANA, [SUPPORT], raw)
    assert refused == {}
    desk.drain()

    [ticket] = desk.tickets()
    assert (ticket.requester, ticket.subject, ticket.requester_name) == (
        ANA,
        "Printer on the second floor is jammed",
        "Ana Lima",
    )
    assert [r.status for r in desk.inbound()] == [InboundStatus.PROCESSED]
    [ack] = desk.replies()
    assert header(ack, "To") == ANA
    assert header(ack, "Subject") == f"[#{ticket.id}] Printer on the second floor is jammed"
    assert header(ack, "Auto-Submitted") == "auto-replied"
    assert header(ack, "X-Auto-Response-Suppress") == "All"
    assert header(ack, LOOP_HEADER) == INSTANCE
    assert header(ack, "In-Reply-To") == request_id
    assert request_id in header(ack, "References").split()
    body = text_of(ack)
    for fact in (
        f"#{ticket.id}",
        f"Department: {ticket.department}",
        f"Priority:   {ticket.priority.value}",
        f"Summary:    {ticket.summary}",
        "reply to this email",
    ):
        assert fact in body, fact
    assert ticket.department == "IT Support" and ticket.priority.value == "medium"  # the scripted classifier's answer
    [item] = desk.store.list_outbox()
    assert item.status is OutboxStatus.SENT and item.sent_ref == header(ack, "Message-ID")


def test_ticketbot_mail_send_test_shows_the_round_trip(desk: Desk) -> None:
    result = desk.cli("mail", "send-test", "--port", str(desk.port))
    assert result.exit_code == 0, result.output
    assert f"via 127.0.0.1:{desk.port}" in result.output
    desk.drain()

    [ticket] = desk.tickets()
    assert ticket.subject == "My laptop cannot connect to the VPN"
    assert ticket.requester == "newcomer@example.com"
    [ack] = desk.replies()
    assert header(ack, "To") == "newcomer@example.com"
    assert header(ack, "Subject") == f"[#{ticket.id}] My laptop cannot connect to the VPN"
    listed = json.loads(desk.cli("tickets", "list", "--json").output)
    assert [t["id"] for t in listed] == [ticket.id]


# -- threading ----------------------------------------------------------------------------------------------------


def test_a_reply_to_the_acknowledgement_is_a_comment_without_a_second_acknowledgement(desk: Desk) -> None:
    ticket, ack = open_ticket(desk, request("VPN drops every ten minutes"))

    answer = reply(ack, "It also happens on the office Wi-Fi, not only at home.", sender=ANA)
    assert header(answer, "In-Reply-To") == header(ack, "Message-ID")
    assert desk.send(answer) == 250
    desk.drain()

    assert [t.id for t in desk.tickets()] == [ticket.id]
    [comment] = desk.events(ticket.id, EventKind.COMMENT)
    assert comment.actor == ANA
    # Only what is new: our quoted acknowledgement and the attribution line are stripped.
    assert comment.data["text"] == "It also happens on the office Wi-Fi, not only at home."
    assert comment.data["automated"] is False
    assert len(desk.replies()) == 1  # no second acknowledgement


def test_a_subject_tag_counts_only_for_the_requester(desk: Desk) -> None:
    ticket, _ack = open_ticket(desk, request("Monitor flickers"))

    # Another employee quoting the tag (no threading headers) gets a ticket of their own: no hijacking.
    assert desk.send(request(f"[#{ticket.id}] my monitor flickers too", sender=BOB), sender=BOB) == 250
    # The requester's own tagged mail from a fresh client (no In-Reply-To) is a follow-up.
    assert desk.send(request(f"[#{ticket.id}] one more thing", "It started after the update.")) == 250
    desk.drain()

    first, second = desk.tickets()
    assert first.id == ticket.id and second.requester == BOB
    assert [e.actor for e in desk.events(ticket.id, EventKind.COMMENT)] == [ANA]
    assert desk.events(second.id, EventKind.COMMENT) == []
    acks = desk.replies()
    assert [header(a, "To") for a in acks] == [ANA, BOB]
    assert header(acks[1], "Subject").startswith(f"[#{second.id}] ")


def test_resolution_is_mailed_once_and_a_reply_to_it_reopens_the_ticket(desk: Desk) -> None:
    ticket, ack = open_ticket(desk, request("Heating broken on floor 3"))

    resolved = desk.pipeline.change_status(
        ticket.id, Status.RESOLVED, actor="agent@example.com", note="The valve was replaced this morning."
    )
    desk.drain()
    desk.drain()  # nothing more is due: exactly one resolution mail

    assert resolved.status is Status.RESOLVED
    ack_again, resolution = desk.replies()
    assert ack_again == ack
    assert header(resolution, "To") == ANA
    assert header(resolution, "Subject") == f"[#{ticket.id}] Heating broken on floor 3"
    assert header(resolution, "Auto-Submitted") == "auto-replied"
    assert header(resolution, LOOP_HEADER) == INSTANCE
    body = text_of(resolution)
    assert f"Ticket #{ticket.id}" in body and "has been resolved" in body
    assert "The valve was replaced this morning." in body

    # An out-of-office answering the resolution leaves a note; a robot never reopens a ticket.
    assert desk.send(out_of_office(sender=ANA, in_reply_to=header(resolution, "Message-ID"))) == 250
    desk.drain()
    still = desk.store.get_ticket(ticket.id)
    assert still is not None and still.status is Status.RESOLVED
    assert [e.data["automated"] for e in desk.events(ticket.id, EventKind.COMMENT)] == [True]

    # "Still cold": the answer to the resolution mail threads by its Message-ID and reopens the ticket.
    assert desk.send(reply(resolution, "It is still cold in the meeting rooms.", sender=ANA)) == 250
    desk.drain()

    reopened = desk.store.get_ticket(ticket.id)
    assert reopened is not None and reopened.status is Status.NEW
    assert [e.data["why"] for e in desk.events(ticket.id, EventKind.STATUS) if e.data.get("why")] == ["reply"]
    assert len(desk.tickets()) == 1
    assert len(desk.replies()) == 2  # reopening sends nothing


def test_the_resolution_mail_threads_under_the_request(desk: Desk) -> None:
    raw = request("Heating broken on floor 4")
    ticket, ack = open_ticket(desk, raw)
    desk.pipeline.change_status(ticket.id, Status.RESOLVED, actor="agent@example.com")
    desk.drain()
    resolution = desk.replies()[-1]
    assert header(resolution, "In-Reply-To") in (header(raw, "Message-ID"), header(ack, "Message-ID"))
    assert header(raw, "Message-ID") in header(resolution, "References").split()


# -- crash safety -------------------------------------------------------------------------------------------------


def test_a_redelivered_smtp_message_makes_one_ticket_and_one_acknowledgement(any_desk: Desk) -> None:
    desk = any_desk
    raw = request("Need a licence for Jira")
    # The sending MTA lost our 250 (timeout) and delivers the same bytes again, once right away, once later.
    assert desk.send(raw) == 250
    assert desk.send(raw) == 250
    desk.drain()
    assert desk.send(raw) == 250
    desk.drain()

    assert len(desk.inbound()) == 1
    assert len(desk.tickets()) == 1
    assert len(desk.replies()) == 1


@pytest.mark.imap
def test_the_same_message_by_imap_and_by_smtp_is_one_ticket(desk: Desk, dovecot: Dovecot, mailbox: MailUser) -> None:
    poller = desk.poller(dovecot, mailbox)
    first = request("Parking badge not working", sender=BOB)  # IMAP first, then SMTP
    second = request("Invoice 4711 not paid")  # SMTP first, then IMAP
    dovecot.append(mailbox, "INBOX", first)
    assert poller.poll_once().stored == 1
    assert desk.send(first, sender=BOB) == 250
    assert desk.send(second) == 250
    dovecot.append(mailbox, "INBOX", second)
    result = poller.poll_once()
    desk.drain()

    assert (result.stored, result.duplicates, result.moved) == (0, 1, 1)
    assert len(desk.inbound()) == 2
    assert [t.subject for t in desk.tickets()] == ["Parking badge not working", "Invoice 4711 not paid"]
    assert sorted(header(a, "To") for a in desk.replies()) == [ANA, BOB]
    assert dovecot.messages(mailbox) == []  # both acknowledged on the server


class CrashBeforeMove:
    """A MailboxClient whose process "dies" after the commit and before the MOVE reaches the server."""

    def __init__(self, inner: MailboxClient) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def move(self, uids: Sequence[int], folder: str) -> None:
        self.inner.close()
        raise SystemExit("simulated crash between commit and MOVE")


@pytest.mark.imap
def test_a_poller_stopped_between_commit_and_move_duplicates_nothing_after_restart(
    desk: Desk, dovecot: Dovecot, mailbox: MailUser
) -> None:
    raw = request("Leak in the kitchen")
    dovecot.append(mailbox, "INBOX", raw)
    crashing = desk.poller(dovecot, mailbox, wrap=CrashBeforeMove)
    with pytest.raises(SystemExit):
        crashing.poll_once()
    assert len(dovecot.messages(mailbox)) == 1  # still in INBOX: the move never happened
    desk.drain()  # the committed row is processed meanwhile
    assert len(desk.tickets()) == 1

    # The restarted process (a new owner, its predecessor's lease expired) fetches the message again.
    later = datetime.now(UTC) + timedelta(minutes=2)
    restarted = desk.poller(dovecot, mailbox, clock=lambda: later)
    result = restarted.poll_once()
    desk.drain()

    assert (result.fetched, result.stored, result.duplicates, result.moved) == (1, 0, 1, 1)
    assert dovecot.messages(mailbox) == []
    assert [m.raw for m in dovecot.messages(mailbox, "Ticketbot/Processed")] == [raw]
    assert len(desk.inbound()) == 1
    assert len(desk.tickets()) == 1
    assert len(desk.replies()) == 1


@pytest.mark.imap
def test_a_uidvalidity_change_creates_no_duplicate_tickets_or_acknowledgements(
    desk: Desk, dovecot: Dovecot, mailbox: MailUser
) -> None:
    poller = desk.poller(dovecot, mailbox, after_fetch="flag")  # keep-in-place: the old mail stays in the folder
    for subject in ("Chair broken", "Payslip question"):
        dovecot.append(mailbox, "INBOX", request(subject))
    assert poller.poll_once().stored == 2
    desk.drain()
    assert len(desk.replies()) == 2

    dovecot.change_uidvalidity(mailbox)  # a restored mailbox: every UID we knew is meaningless now
    dovecot.append(mailbox, "INBOX", request("Meeting room 7 display frozen", sender=BOB))
    result = poller.poll_once()
    desk.drain()

    assert (result.fetched, result.stored, result.duplicates) == (3, 1, 2)
    assert [t.subject for t in desk.tickets()] == ["Chair broken", "Payslip question", "Meeting room 7 display frozen"]
    assert [header(a, "To") for a in desk.replies()] == [ANA, ANA, BOB]


# -- loops --------------------------------------------------------------------------------------------------------


def test_robots_and_our_own_mail_get_zero_automatic_answers(desk: Desk) -> None:
    ticket, ack = open_ticket(desk, request("Outlook crashes when opening attachments"))

    robots = [
        ("ooo-threaded", out_of_office(sender=ANA, in_reply_to=header(ack, "Message-ID")), ANA),
        ("ooo-exchange", out_of_office(sender=BOB, exchange=True), BOB),
        ("dsn", bounce(ack), ""),  # the relay bounces our acknowledgement; null reverse path
        ("list", list_mail(), "all-staff-bounces@example.com"),
        ("own-ack", ack, SUPPORT),  # our acknowledgement fed back in (a forwarding rule, an alias loop)
    ]
    for _name, raw, envelope_sender in robots:
        assert desk.send(raw, sender=envelope_sender) == 250
    desk.drain()

    assert len(desk.replies()) == 1  # only the original acknowledgement, nothing for any robot
    assert len(desk.tickets()) == 1
    rows = desk.inbound()[1:]
    by_name = dict(zip([name for name, _raw, _sender in robots], rows, strict=True))
    # Out-of-office and the bounce thread into the ticket as notes and do not reopen or answer it.
    assert by_name["ooo-threaded"].ticket_id == ticket.id
    assert by_name["dsn"].ticket_id == ticket.id
    notes = desk.events(ticket.id, EventKind.COMMENT)
    assert [n.data["automated"] for n in notes] == [True, True]
    assert [n.actor for n in notes] == [ANA, "mailer-daemon@mx.example.com"]
    # The unthreaded robots wait for a person; our own mail is dropped.
    assert by_name["ooo-exchange"].status is InboundStatus.PARKED
    assert "auto-response-suppress" in (by_name["ooo-exchange"].last_error or "")
    assert by_name["list"].status is InboundStatus.PARKED
    assert "list" in (by_name["list"].last_error or "")
    assert by_name["own-ack"].status is InboundStatus.IGNORED
    assert desk.store.get_ticket(ticket.id).status is Status.NEW  # type: ignore[union-attr]


TOPICS = [
    "Printer jammed",
    "VPN drops",
    "Payslip missing",
    "Desk lamp broken",
    "Expense claim",
    "New starter kit",
    "Parking permit",
    "Monitor flickers",
]


def test_one_sender_gets_at_most_the_hourly_limit_of_automatic_mails(desk: Desk) -> None:
    limit = desk.config.email.max_auto_replies_per_hour
    for topic in TOPICS[: limit + 2]:
        assert desk.send(request(topic, f"About the {topic.lower()}, please help.")) == 250
    desk.drain()

    assert len(desk.tickets()) == limit + 2  # every request is a ticket ...
    assert len(desk.replies()) == limit  # ... but the loop brake stops the mail


def test_an_outsider_is_parked_without_a_reply_and_listed_by_the_cli(desk: Desk) -> None:
    raw = request("Business opportunity", "Dear sir, please find our offer attached.", sender="mallory@gmail.com")
    assert desk.send(raw, sender="mallory@gmail.com") == 250
    desk.drain()

    assert desk.tickets() == []
    assert desk.replies() == []
    result = desk.cli("inbound", "list", "--status", "parked", "--json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["status"] == "parked" and row["channel"] == "email"
    assert row["reason"] == "sender not allowed: gmail.com"
    assert row["message_id"] == header(raw, "Message-ID")


# -- delivery through the relay -----------------------------------------------------------------------------------


def test_a_relay_refusing_for_a_while_gets_the_reply_later_exactly_once(relay_desk: Desk) -> None:
    desk = relay_desk
    assert desk.relay is not None
    desk.relay.relay.refuse("451 4.3.0 Try again later", times=2)
    assert desk.send(request("Corporate card declined")) == 250
    desk.worker.run_once(datetime.now(UTC))
    start = datetime.now(UTC)  # after the commit: the acknowledgement is due
    desk.drain(start)

    [item] = desk.store.list_outbox()
    assert item.status is OutboxStatus.PENDING and item.attempts == 1 and "451" in (item.last_error or "")
    first_delay = item.next_attempt_at.replace(tzinfo=UTC) - start
    assert timedelta(seconds=2.5) <= first_delay <= timedelta(seconds=5)  # base 5 s, jittered
    desk.drain(start + timedelta(seconds=1))
    assert desk.relay.relay.attempts == 1  # not due yet: the backoff is honoured

    at = start + first_delay + timedelta(seconds=1)
    desk.drain(at)
    [item] = desk.store.list_outbox()
    assert item.attempts == 2
    second_delay = item.next_attempt_at.replace(tzinfo=UTC) - at
    assert timedelta(seconds=5) <= second_delay <= timedelta(seconds=10)  # doubled
    desk.drain(at + second_delay + timedelta(seconds=1))
    desk.drain(at + timedelta(hours=1))

    [delivery] = desk.relay.relay.deliveries
    assert delivery.rcpt_tos == (ANA,)
    assert desk.relay.relay.attempts == 3
    [item] = desk.store.list_outbox()
    assert item.status is OutboxStatus.SENT and item.attempts == 3


def test_a_relay_rejecting_the_recipient_parks_the_reply_visibly(relay_desk: Desk) -> None:
    desk = relay_desk
    assert desk.relay is not None
    desk.relay.relay.refuse("550 5.1.1 No such user", stage="RCPT", times=None)
    assert desk.send(request("Sick note")) == 250
    desk.drain()
    desk.drain(datetime.now(UTC) + timedelta(hours=2))

    assert desk.relay.relay.deliveries == []
    result = desk.cli("outbox", "list", "--status", "parked", "--json")
    assert result.exit_code == 0, result.output
    [item] = json.loads(result.output)
    assert item["status"] == "parked" and item["attempts"] == 1 and item["kind"] == "email"
    assert "550 5.1.1" in item["last_error"]


# -- the real runtime ---------------------------------------------------------------------------------------------


def test_the_real_runtime_answers_a_mail_within_seconds(tmp_path: Path) -> None:
    pytest.importorskip("core.classify.offline", reason="the offline classifier is not there yet")
    from bot.runtime import Runtime
    from core.config import Secrets

    config = load_config(write_config(tmp_path))
    runtime = Runtime.build(config, Secrets(anthropic_api_key=None))
    runtime.start()
    try:
        intake = next(c for c in runtime.components if isinstance(c, SmtpIntakeComponent))
        assert transact(intake.server.port, request("The heating on floor 2 is broken")).code == 250
        deadline = time.monotonic() + 20
        while not list(config.outbox_dir.glob("*.eml")):
            assert time.monotonic() < deadline, "no acknowledgement within 20 s"
            time.sleep(0.05)
    finally:
        runtime.stop()
    [ack] = [p.read_bytes() for p in config.outbox_dir.glob("*.eml")]
    [ticket] = runtime.store.list_tickets(TicketFilter())
    assert header(ack, "Subject") == f"[#{ticket.id}] The heating on floor 2 is broken"
    assert (ticket.classifier, ticket.department) == ("offline", "Facilities")  # the real offline model decided
    assert "Department: Facilities" in text_of(ack)


def test_a_permanent_bounce_stops_automatic_mail_to_that_address_for_the_suppression_window(desk: Desk) -> None:
    _ticket, ack = open_ticket(desk, request("Outlook crashes when opening attachments"))
    assert desk.send(bounce(ack, status="5.1.1"), sender="") == 250  # ANA's mailbox is gone
    desk.drain()

    until = desk.store.suppressed_until(ANA, now=datetime.now(UTC))
    assert until is not None
    assert until - datetime.now(UTC) > timedelta(days=desk.config.email.bounce_suppression_days - 1)
    assert desk.send(request("Keyboard missing keys")) == 250
    desk.drain()
    assert len(desk.tickets()) == 2  # the request is still a ticket ...
    assert len(desk.replies()) == 1  # ... but nothing more is mailed to a dead address


def test_near_identical_requests_past_the_hourly_brake_are_parked_unanswered(desk: Desk) -> None:
    limit = desk.config.email.max_similar_tickets_per_hour
    for k in range(limit + 2):  # a monitoring script mailing the same alert, a counter in each
        assert desk.send(request(f"ALERT: disk full on build-{k:02d}", f"Disk usage 9{k}% at 03:1{k}.")) == 250
    desk.drain()

    assert len(desk.tickets()) == limit
    parked = desk.store.list_inbound(status=InboundStatus.PARKED, limit=10)
    assert len(parked) == 2
    assert all((p.last_error or "").startswith("repeated:") for p in parked)
    assert len(desk.replies()) == min(limit, desk.config.email.max_auto_replies_per_hour)
