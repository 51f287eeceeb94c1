"""Outbound email: the reply we build, the .eml writer, and the relay sender against a recording aiosmtpd relay."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from core.classify.base import Classification
from core.config import RelayConfig
from core.errors import ConfigError, DeliveryError, PermanentDeliveryError
from core.message import Channel
from core.outbox import OutboxDispatcher, OutboxKind, OutboxStatus, RetryPolicy, StoredOutboxItem
from core.ports import TicketDraft
from core.reply import ReplySettings, email_item
from core.route import Route
from core.ticket import Priority, Status, Ticket
from intake.identity import LOOP_HEADER
from intake.reply import FileReplySender, SmtpReplySender, build_reply, render
from storage.store import SqlStore
from tests.fakes import smtp as fakes
from tests.fakes.smtp import RELAY_LOGIN, RelayServer

# The relay fakes' fixtures, used by name below.
recording_relay = fakes.recording_relay
starttls_relay = fakes.starttls_relay
ssl_relay = fakes.ssl_relay
certificate = fakes.certificate
closed_port = fakes.closed_port
silent_port = fakes.silent_port

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
SETTINGS = ReplySettings(support_address="support@example.com", from_name="IT Help Desk")
INBOUND_ID = "<DM6PR11MB4593A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6@DM6PR11MB4593.namprd11.prod.outlook.com>"
INSTANCE = "ticketbot-test"


def ticket(ticket_id: int = 42, subject: str = "Printer on fire") -> Ticket:
    return Ticket(
        id=ticket_id,
        subject=subject,
        body="It smokes.",
        requester="ana@example.com",
        channel=Channel.EMAIL,
        department="Facilities",
        priority=Priority.URGENT,
        status=Status.NEW,
        confidence=0.9,
        summary="Printer on fire",
        classifier="offline",
        created_at=NOW,
        updated_at=NOW,
    )


def stored(item_id: int = 7, **payload: Any) -> StoredOutboxItem:
    """A stored EMAIL item as the dispatcher hands it over, with the payload core.reply.email_item composes."""
    item = email_item(
        ticket(),
        settings=SETTINGS,
        kind="ack",
        to="ana@example.com",
        text="We have received your request.\nTicket: #42\n",
        in_reply_to=INBOUND_ID,
        references=["<root@example.com>"],
        subject="Printer on fire",
    )
    return StoredOutboxItem(
        id=item_id,
        kind=item.kind,
        dedupe_key=item.dedupe_key,
        payload={**item.payload, **payload},
        ticket_id=item.ticket_id,
        status=OutboxStatus.PENDING,
        attempts=0,
        next_attempt_at=NOW,
        created_at=NOW,
    )


def parse(data: bytes) -> EmailMessage:
    msg = message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def body(msg: EmailMessage) -> str:
    # On the wire lines end in CRLF; a 7bit part keeps them when parsed back.
    return str(msg.get_content()).replace("\r\n", "\n")


def header_names(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return [line.split(":", 1)[0].lower() for line in head.split("\r\n") if line and line[0] not in " \t"]


# -- build_reply ---------------------------------------------------------------------------------


def test_reply_carries_threading_and_anti_loop_headers() -> None:
    item = stored()
    msg = parse(render(build_reply(item, instance_id=INSTANCE, now=NOW)))

    assert msg["From"] == "IT Help Desk <support@example.com>"
    assert msg["To"] == "ana@example.com"
    assert msg["Reply-To"] == "support@example.com"
    assert msg["Subject"] == "[#42] Printer on fire"
    assert msg["Date"].datetime == NOW
    assert msg["Message-ID"] == item.payload["message_id"]
    assert msg["In-Reply-To"] == INBOUND_ID
    assert msg["References"].split() == ["<root@example.com>", INBOUND_ID]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Precedence"] == "auto_reply"
    assert msg[LOOP_HEADER] == INSTANCE
    assert msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
    assert body(msg) == "We have received your request.\nTicket: #42\n"


def test_long_message_ids_are_written_literally_not_encoded() -> None:
    # The stock folder RFC 2047-encodes an id longer than a line; the sender's client could not thread.
    data = render(build_reply(stored(), instance_id=INSTANCE))
    assert f"\r\nIn-Reply-To: {INBOUND_ID}\r\n".encode() in data
    assert f"\r\n {INBOUND_ID}\r\n".encode() in data  # References, folded between ids
    assert b"=?" not in data.split(b"\r\n\r\n", 1)[0]


def test_non_ascii_subject_and_body_round_trip() -> None:
    item = stored(subject="[#42] Caf\u00e9 machine \u2615 broken", text="D\u00e9sol\u00e9 \u2014 we are on it.\n")
    data = render(build_reply(item, instance_id=INSTANCE))
    assert data.isascii()  # encoded words and quoted-printable: safe for any relay
    msg = parse(data)
    assert msg["Subject"] == "[#42] Caf\u00e9 machine \u2615 broken"
    assert body(msg) == "D\u00e9sol\u00e9 \u2014 we are on it.\n"


def test_untrusted_values_cannot_add_headers() -> None:
    item = stored(
        subject="Hello\r\nBcc: victim@evil.test\nX-Evil: 1",
        from_name="Help\r\nBcc: victim@evil.test",
        in_reply_to="<a@example.com>\r\nBcc: victim@evil.test",
        references=["<b@example.com>\nX-Evil: 2", "not an id at all\r\n"],
    )
    data = render(build_reply(item, instance_id="bot\r\nX-Evil: 3"))
    names = header_names(data)
    assert "bcc" not in names and "x-evil" not in names
    msg = parse(data)
    assert msg["Subject"] == "Hello Bcc: victim@evil.test X-Evil: 1"
    assert msg["In-Reply-To"] == "<a@example.com>"
    assert msg["References"].split() == ["<b@example.com>", "<not>", "<a@example.com>"]
    assert msg["From"].addresses[0].addr_spec == "support@example.com"


@pytest.mark.parametrize(
    "to",
    [
        "",
        "not an address",
        "ana@example.com, eve@evil.test",
        "ana@example.com\r\nBcc: eve@evil.test",
        "Ana <ana@example.com>",
        "@example.com",
        "ana@",
        "ana@localhost",
        "?Ej@[@example.com",
        "ana..b@example.com",
        "ana@-example.com",
        None,
        42,
    ],
)
def test_an_invalid_recipient_is_permanent(to: object) -> None:
    with pytest.raises(PermanentDeliveryError, match="invalid To address"):
        build_reply(stored(to=to), instance_id=INSTANCE)


def test_only_email_items_are_built() -> None:
    with pytest.raises(PermanentDeliveryError, match="not an email"):
        build_reply(replace(stored(), kind=OutboxKind.SLACK_DM), instance_id=INSTANCE)


def test_a_missing_message_id_is_derived_from_the_item() -> None:
    item = stored(item_id=9, message_id=None)
    assert build_reply(item, instance_id=INSTANCE)["Message-ID"] == "<outbox-9@example.com>"


# -- FileReplySender -----------------------------------------------------------------------------


def test_file_sender_writes_a_readable_eml(tmp_path: Path) -> None:
    item = stored()
    sender = FileReplySender(directory=tmp_path / "outbox", instance_id=INSTANCE)

    ref = sender.send(item)

    [path] = (tmp_path / "outbox").iterdir()
    assert ref == item.payload["message_id"]
    assert path.name.startswith("20261102T093000Z-42-ticket-42.ack.") and path.suffix == ".eml"
    msg = parse(path.read_bytes())
    assert msg["To"] == "ana@example.com" and msg["Message-ID"] == ref
    assert msg[LOOP_HEADER] == INSTANCE
    assert "Ticket: #42" in body(msg)


def test_file_sender_is_idempotent(tmp_path: Path) -> None:
    item = stored()
    sender = FileReplySender(directory=tmp_path, instance_id=INSTANCE)
    first = sender.send(item)
    again = sender.send(replace(item, attempts=1))  # a crash after writing, before "sent" was recorded
    assert first == again
    assert [p.name for p in tmp_path.iterdir()] == [sender.path_for(item).name]  # no second file, no temp left


def test_file_sender_failure_is_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "outbox"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(DeliveryError) as failed:
        FileReplySender(directory=blocker, instance_id=INSTANCE).send(stored())
    assert not isinstance(failed.value, PermanentDeliveryError)


# -- SmtpReplySender -----------------------------------------------------------------------------


def test_relay_sender_delivers_with_our_headers(recording_relay: RelayServer) -> None:
    item = stored()
    sender = SmtpReplySender(relay=recording_relay.config(), password=None, instance_id=INSTANCE)

    ref = sender.send(item)

    [delivery] = recording_relay.relay.deliveries
    assert ref == item.payload["message_id"]
    assert delivery.mail_from == "support@example.com"  # the default envelope sender: the From address
    assert delivery.rcpt_tos == ("ana@example.com",)
    msg = delivery.message()
    assert msg["Message-ID"] == ref and msg["In-Reply-To"] == INBOUND_ID
    assert msg["Auto-Submitted"] == "auto-replied" and msg[LOOP_HEADER] == INSTANCE
    assert msg["Subject"] == "[#42] Printer on fire"


def test_relay_sender_speaks_starttls_and_logs_in(starttls_relay: RelayServer) -> None:
    assert starttls_relay.certificate is not None
    login, password = RELAY_LOGIN
    sender = SmtpReplySender(
        relay=starttls_relay.config(security="starttls", username=login),
        password=password,
        instance_id=INSTANCE,
        ssl_context=starttls_relay.certificate.client_context(),
    )
    item = stored()
    assert sender.send(item) == item.payload["message_id"]
    [delivery] = starttls_relay.relay.deliveries
    assert delivery.message()["Message-ID"] == item.payload["message_id"]


def test_a_wrong_relay_password_is_transient(starttls_relay: RelayServer) -> None:
    # Every queued reply would fail the same way; parking them all would lose them while someone fixes it.
    assert starttls_relay.certificate is not None
    sender = SmtpReplySender(
        relay=starttls_relay.config(security="starttls", username=RELAY_LOGIN[0]),
        password="wrong",
        instance_id=INSTANCE,
        ssl_context=starttls_relay.certificate.client_context(),
    )
    with pytest.raises(DeliveryError) as failed:
        sender.send(stored())
    assert not isinstance(failed.value, PermanentDeliveryError)
    assert "535" in str(failed.value) and "wrong" not in str(failed.value)
    assert starttls_relay.relay.deliveries == []


def test_relay_sender_speaks_implicit_tls(ssl_relay: RelayServer) -> None:
    assert ssl_relay.certificate is not None
    sender = SmtpReplySender(
        relay=ssl_relay.config(security="ssl"),
        password=None,
        instance_id=INSTANCE,
        ssl_context=ssl_relay.certificate.client_context(),
    )
    sender.send(stored())
    assert len(ssl_relay.relay.deliveries) == 1


def test_an_untrusted_relay_certificate_is_transient(ssl_relay: RelayServer) -> None:
    # The default context checks the system trust store, which does not know our self-signed relay.
    sender = SmtpReplySender(relay=ssl_relay.config(security="ssl"), password=None, instance_id=INSTANCE)
    with pytest.raises(DeliveryError) as failed:
        sender.send(stored())
    assert not isinstance(failed.value, PermanentDeliveryError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value)


def test_relay_sender_can_use_the_null_reverse_path(recording_relay: RelayServer) -> None:
    sender = SmtpReplySender(relay=recording_relay.config(), password=None, instance_id=INSTANCE, envelope_sender="<>")
    sender.send(stored())
    [delivery] = recording_relay.relay.deliveries
    assert delivery.mail_from == "<>"


def test_an_internationalised_recipient_goes_out_with_smtputf8(recording_relay: RelayServer, tmp_path: Path) -> None:
    item = stored(to="jos\u00e9@example.com")
    SmtpReplySender(relay=recording_relay.config(), password=None, instance_id=INSTANCE).send(item)
    FileReplySender(directory=tmp_path, instance_id=INSTANCE).send(item)

    [delivery] = recording_relay.relay.deliveries
    assert delivery.rcpt_tos == ("jos\u00e9@example.com",)
    # An address cannot be an encoded word: the header is raw UTF-8 (RFC 6532), on the wire and on disk.
    assert "\r\nTo: jos\u00e9@example.com\r\n".encode() in delivery.content
    [path] = tmp_path.iterdir()
    assert parse(path.read_bytes())["To"] == "jos\u00e9@example.com"


@pytest.mark.parametrize(
    ("stage", "status", "permanent"),
    [
        ("DATA", "451 4.3.0 Try again later", False),
        ("DATA", "554 5.7.1 Message rejected as spam", True),
        ("RCPT", "550 5.1.1 No such user", True),
        ("RCPT", "450 4.2.1 Mailbox busy", False),
        ("MAIL", "553 5.7.1 Sender not allowed", True),
        ("MAIL", "421 4.7.0 Too many connections", False),
    ],
)
def test_relay_answers_map_to_transient_or_permanent(
    recording_relay: RelayServer, stage: Any, status: str, permanent: bool
) -> None:
    recording_relay.relay.refuse(status, stage=stage)
    sender = SmtpReplySender(relay=recording_relay.config(), password=None, instance_id=INSTANCE)
    with pytest.raises(DeliveryError) as failed:
        sender.send(stored())
    assert isinstance(failed.value, PermanentDeliveryError) is permanent
    assert status.split()[0] in str(failed.value)
    assert recording_relay.relay.deliveries == []


def test_relay_down_is_transient(closed_port: int) -> None:
    relay = RelayConfig(host="127.0.0.1", port=closed_port, security="none", timeout_seconds=2)
    with pytest.raises(DeliveryError) as failed:
        SmtpReplySender(relay=relay, password=None, instance_id=INSTANCE).send(stored())
    assert not isinstance(failed.value, PermanentDeliveryError)
    assert "unreachable" in str(failed.value)


def test_relay_that_never_answers_times_out_as_transient(silent_port: int) -> None:
    relay = RelayConfig(host="127.0.0.1", port=silent_port, security="none", timeout_seconds=0.3)
    with pytest.raises(DeliveryError) as failed:
        SmtpReplySender(relay=relay, password=None, instance_id=INSTANCE).send(stored())
    assert not isinstance(failed.value, PermanentDeliveryError)


def test_relay_without_starttls_is_transient(recording_relay: RelayServer) -> None:
    # A misconfigured relay (no STARTTLS offered) is an operator's fix, not a reason to drop replies.
    sender = SmtpReplySender(relay=recording_relay.config(security="starttls"), password=None, instance_id=INSTANCE)
    with pytest.raises(DeliveryError) as failed:
        sender.send(stored())
    assert not isinstance(failed.value, PermanentDeliveryError)


def test_a_relay_username_needs_a_password() -> None:
    relay = RelayConfig(host="relay.example.com", username="bot")
    with pytest.raises(ConfigError, match="TICKETBOT_SMTP_PASSWORD"):
        SmtpReplySender(relay=relay, password=None, instance_id=INSTANCE)


# -- through the outbox dispatcher ---------------------------------------------------------------


def open_ticket_with_ack(store: SqlStore) -> Ticket:
    """A ticket opened the way the pipeline does it: the acknowledgement is enqueued in the same transaction."""
    draft = TicketDraft(
        subject="Printer on fire",
        body="It smokes.",
        requester="ana@example.com",
        requester_name="Ana",
        channel=Channel.EMAIL,
        classification=Classification("Facilities", Priority.URGENT, 0.9, "Printer on fire", "offline"),
        route=Route("Facilities"),
        received_at=NOW,
        message_refs=(INBOUND_ID,),
    )

    def compose(t: Ticket) -> list[Any]:
        return [
            email_item(
                t,
                settings=SETTINGS,
                kind="ack",
                to=t.requester,
                text=f"Ticket #{t.id}\n",
                in_reply_to=INBOUND_ID,
                references=[],
                subject=t.subject,
            )
        ]

    return store.open_ticket(None, draft, compose)


def test_dispatcher_sends_the_ack_and_marks_it_sent(store: SqlStore, recording_relay: RelayServer) -> None:
    t = open_ticket_with_ack(store)
    sender = SmtpReplySender(relay=recording_relay.config(), password=None, instance_id=INSTANCE)
    dispatcher = OutboxDispatcher(store=store, senders={OutboxKind.EMAIL: sender})
    now = datetime.now(UTC)

    assert dispatcher.run_once(now) == 1
    assert dispatcher.run_once(now) == 0

    [item] = store.list_outbox()
    [delivery] = recording_relay.relay.deliveries
    assert item.status is OutboxStatus.SENT and item.attempts == 1
    assert item.sent_ref == delivery.message()["Message-ID"] == item.payload["message_id"]
    assert delivery.message()["Subject"] == f"[#{t.id}] Printer on fire"
    # A reply to our ack threads back to the ticket through the id we sent.
    assert store.find_ticket_by_refs([str(item.sent_ref)]) == t.id


def test_dispatcher_retries_a_deferring_relay_then_parks(store: SqlStore, recording_relay: RelayServer) -> None:
    open_ticket_with_ack(store)
    recording_relay.relay.refuse("451 4.3.0 Try again later", times=None)
    sender = SmtpReplySender(relay=recording_relay.config(), password=None, instance_id=INSTANCE)
    policy = RetryPolicy(max_attempts=3, base_delay=60, rng=random.Random(1))
    dispatcher = OutboxDispatcher(store=store, senders={OutboxKind.EMAIL: sender}, policy=policy)
    now = datetime.now(UTC)

    assert dispatcher.run_once(now) == 1
    [item] = store.list_outbox()
    assert item.status is OutboxStatus.PENDING and item.attempts == 1 and "451" in (item.last_error or "")
    first_delay = item.next_attempt_at - now
    assert timedelta(seconds=30) <= first_delay <= timedelta(seconds=60)  # base 60 s, full jitter down to half
    assert dispatcher.run_once(now + timedelta(seconds=1)) == 0  # not due yet: backoff holds

    now = item.next_attempt_at + timedelta(seconds=1)
    assert dispatcher.run_once(now) == 1
    [item] = store.list_outbox()
    assert item.status is OutboxStatus.PENDING and item.attempts == 2
    assert item.next_attempt_at - now >= timedelta(seconds=60)  # the delay grew

    now = item.next_attempt_at + timedelta(seconds=1)
    assert dispatcher.run_once(now) == 1
    [item] = store.list_outbox()
    assert item.status is OutboxStatus.PARKED and item.attempts == 3
    assert recording_relay.relay.attempts == 3 and recording_relay.relay.deliveries == []

    # Once the relay recovers, an operator's retry delivers it.
    recording_relay.relay.heal()
    store.retry_outbox(item.id)
    assert dispatcher.run_once(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert store.list_outbox()[0].status is OutboxStatus.SENT
    assert len(recording_relay.relay.deliveries) == 1


def test_dispatcher_parks_a_refused_recipient_at_once(store: SqlStore, recording_relay: RelayServer) -> None:
    open_ticket_with_ack(store)
    recording_relay.relay.refuse("550 5.1.1 No such user", stage="RCPT", times=None)
    sender = SmtpReplySender(relay=recording_relay.config(), password=None, instance_id=INSTANCE)
    dispatcher = OutboxDispatcher(store=store, senders={OutboxKind.EMAIL: sender})

    assert dispatcher.run_once(datetime.now(UTC)) == 1

    [item] = store.list_outbox()
    assert item.status is OutboxStatus.PARKED and item.attempts == 1
    assert "550" in (item.last_error or "")


def test_dispatcher_with_the_file_sender(store: SqlStore, tmp_path: Path) -> None:
    t = open_ticket_with_ack(store)
    sender = FileReplySender(directory=tmp_path, instance_id=INSTANCE)
    dispatcher = OutboxDispatcher(store=store, senders={OutboxKind.EMAIL: sender})

    assert dispatcher.run_once(datetime.now(UTC)) == 1

    [item] = store.list_outbox()
    [path] = tmp_path.glob("*.eml")
    assert item.status is OutboxStatus.SENT
    assert path == sender.path_for(item) and f"-{t.id}-ticket-{t.id}.ack." in path.name
    assert parse(path.read_bytes())["Message-ID"] == item.sent_ref
