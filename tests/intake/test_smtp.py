"""SMTP/LMTP intake against a real aiosmtpd server and the real SqlStore, driven by smtplib."""

from __future__ import annotations

import shutil
import smtplib
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import make_msgid
from pathlib import Path

import pytest
from sqlalchemy import event

from core.errors import ConfigError, StorageError
from core.inbound import InboundRecord, InboundStatus, Received, StoredInbound
from core.message import Channel
from intake.identity import email_identity
from intake.smtp import SmtpIntake, SmtpIntakeServer
from storage.db import make_engine, upgrade
from storage.store import SqlStore
from tests.fakes.smtp import transact

SUPPORT = "support@example.com"
MAX_BYTES = 64 * 1024


def mail(subject: str = "Printer on fire", *, message_id: str | None = None, body: str = "It smokes.\r\n") -> bytes:
    lines = [
        "From: Ana <ana@example.com>",
        f"To: {SUPPORT}",
        f"Subject: {subject}",
        "Date: Mon, 02 Nov 2026 09:30:00 +0000",
        f"Message-ID: {message_id or make_msgid(domain='example.com')}",
        "",
        body,
    ]
    return "\r\n".join(lines).encode()


class Wakeups:
    """Counts on_received calls and how many rows were visible at each call (the commit came first)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.rows_seen: list[int] = []

    def __call__(self) -> None:
        rows = len(self._store.list_inbound(status=None, limit=1000))
        with self._lock:
            self.rows_seen.append(rows)


IntakeFactory = Callable[..., SmtpIntakeServer]


@pytest.fixture
def start_intake() -> Iterator[IntakeFactory]:
    """Starts SmtpIntakeServers on 127.0.0.1 at free ports and stops them after the test."""
    servers: list[SmtpIntakeServer] = []

    def start(
        store: object, *, lmtp: bool = False, max_bytes: int = MAX_BYTES, on_received: Callable[[], None] | None = None
    ) -> SmtpIntakeServer:
        handler = SmtpIntake(
            store=store,  # type: ignore[arg-type]
            support_addresses=[SUPPORT, "IT-Help@Example.com"],
            max_message_bytes=max_bytes,
            on_received=on_received,
        )
        server = SmtpIntakeServer(
            handler, host="127.0.0.1", port=0, lmtp=lmtp, max_message_bytes=max_bytes, hostname="intake.test"
        )
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def rows(store: SqlStore) -> list[StoredInbound]:
    return store.list_inbound(status=None, limit=10_000)


def test_accepted_message_is_committed_raw_with_the_envelope_in_front(
    store: SqlStore, start_intake: IntakeFactory
) -> None:
    wakeups = Wakeups(store)
    server = start_intake(store, on_received=wakeups)
    raw = mail(message_id="<m1@example.com>")

    answer = transact(server.port, raw)

    [row] = rows(store)
    assert answer.code == 250
    assert answer.data == (250, f"2.0.0 Queued as {row.id}".encode())
    assert row.channel is Channel.EMAIL and row.status is InboundStatus.RECEIVED
    assert row.message_id == "<m1@example.com>"
    assert row.dedupe_key == email_identity(raw)[0]
    # The message itself is stored byte for byte; the trace in front does not change its identity.
    assert row.payload.endswith(raw)
    assert email_identity(row.payload) == email_identity(raw)
    head = row.payload[: -len(raw)].decode()
    assert head.startswith("Return-Path: <ana@example.com>\r\nX-Original-To: support@example.com\r\nReceived: from ")
    assert "by intake.test (ticketbot) with ESMTP\r\n\tfor <support@example.com>;" in head
    assert wakeups.rows_seen == [1]  # called once, after the row was committed


def test_redelivery_answers_250_again_and_stores_nothing_new(store: SqlStore, start_intake: IntakeFactory) -> None:
    wakeups = Wakeups(store)
    server = start_intake(store, on_received=wakeups)
    raw = mail(message_id="<again@example.com>")

    first = transact(server.port, raw)
    second = transact(server.port, raw)  # the sending MTA retries after losing our first 250

    [row] = rows(store)
    assert first.data == second.data == (250, f"2.0.0 Queued as {row.id}".encode())
    assert wakeups.rows_seen == [1]  # nothing new to process the second time


def test_only_support_addresses_are_accepted(store: SqlStore, start_intake: IntakeFactory) -> None:
    server = start_intake(store)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo()
        client.mail("ana@example.com")
        answers = {
            address: client.rcpt(address)[0]
            for address in [
                "support@example.com",
                "SUPPORT@Example.COM",
                "support+t123@example.com",
                "it-help+printers@example.com",
                "other@example.com",
                "other+support@example.com",
                "support@example.com.evil.test",
                "support@evil.test",
            ]
        }
        client.rset()
    assert answers == {
        "support@example.com": 250,
        "SUPPORT@Example.COM": 250,
        "support+t123@example.com": 250,
        "it-help+printers@example.com": 250,
        "other@example.com": 550,
        "other+support@example.com": 550,
        "support@example.com.evil.test": 550,
        "support@evil.test": 550,
    }


def test_unknown_recipient_is_refused_with_550_5_1_1(store: SqlStore, start_intake: IntakeFactory) -> None:
    server = start_intake(store)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.sendmail("ana@example.com", ["nobody@example.com"], mail())
    code, text = refused.value.recipients["nobody@example.com"]
    assert (code, text[:5]) == (550, b"5.1.1")
    assert rows(store) == []


def test_mixed_recipients_store_one_copy_for_the_accepted_ones(store: SqlStore, start_intake: IntakeFactory) -> None:
    server = start_intake(store)
    answer = transact(
        server.port, mail(), recipients=["nobody@example.com", "support+vpn@example.com", "it-help@example.com"]
    )
    assert [code for code, _ in answer.rcpts] == [550, 250, 250]
    assert answer.code == 250
    [row] = rows(store)
    assert b"X-Original-To: support+vpn@example.com, it-help@example.com\r\n" in row.payload


def test_plus_addressed_mail_is_stored(store: SqlStore, start_intake: IntakeFactory) -> None:
    server = start_intake(store)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        refused = client.sendmail("ana@example.com", ["support+t42@example.com"], mail())
    assert refused == {}
    [row] = rows(store)
    assert b"X-Original-To: support+t42@example.com\r\n" in row.payload


def test_oversized_message_is_refused_with_552(store: SqlStore, start_intake: IntakeFactory) -> None:
    server = start_intake(store, max_bytes=2048)
    big = mail(body="\r\n".join(["x" * 70] * 60) + "\r\n")

    # A client that declares SIZE (smtplib does when SIZE is advertised) is refused at MAIL FROM ...
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            assert client.ehlo()[0] == 250 and client.has_extn("size")
            assert client.esmtp_features["size"] == "2048"
            client.sendmail("ana@example.com", [SUPPORT], big)
    assert refused.value.smtp_code == 552
    # ... and one that does not is refused after DATA, without the server keeping what it read.
    answer = transact(server.port, big)
    assert answer.data is not None and answer.data[0] == 552
    assert rows(store) == []
    # The limit is on the message only: a message just under it goes through.
    assert transact(server.port, mail()).code == 250


def test_malformed_mime_is_accepted_and_stored_as_is(store: SqlStore, start_intake: IntakeFactory) -> None:
    server = start_intake(store)
    garbage = [
        b"\x00\xff\xfe not a header\r\n\x80\x81 binary junk \xc3\x28\r\n",
        b'Content-Type: multipart/mixed; boundary="never"\r\nMessage-ID: <<<broken\r\n\r\n--wrong\r\n=?x?q?\r\n',
        b'Subject: =?utf-8?b?!!!not base64?=\r\nFrom: "unterminated <@@>\r\nContent-Transfer-Encoding: base64\r\n'
        b"\r\n%%%% not base64 %%%%\r\n",
        b"\r\n\r\nno headers at all\r\n",
    ]
    for raw in garbage:
        assert transact(server.port, raw).code == 250
    stored = sorted(rows(store), key=lambda r: r.id)
    assert len(stored) == len(garbage)
    for raw, row in zip(garbage, stored, strict=True):
        assert row.payload.endswith(raw)


def test_null_reverse_path_and_8bit_utf8_envelope_are_kept(store: SqlStore, start_intake: IntakeFactory) -> None:
    server = start_intake(store)
    bounce = b"From: MAILER-DAEMON@example.com\r\nSubject: Undelivered Mail\r\n\r\nsorry\r\n"
    utf8 = "From: Jos\u00e9 <jos\u00e9@example.com>\r\nSubject: Caf\u00e9 \u2615\r\n\r\nCaf\u00e9 au lait.\r\n".encode()

    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("8bitmime") and client.has_extn("smtputf8")
        assert transact(server.port, bounce, sender="<>", client=client).code == 250
        answer = transact(
            server.port, utf8, sender="jos\u00e9@example.com", mail_options=["SMTPUTF8", "BODY=8BITMIME"], client=client
        )
        assert answer.code == 250

    by_payload = {row.payload.split(b"\r\n", 1)[0]: row for row in rows(store)}
    assert by_payload[b"Return-Path: <>"].payload.endswith(bounce)
    utf8_row = by_payload["Return-Path: <jos\u00e9@example.com>".encode()]
    assert utf8_row.payload.endswith(utf8)
    assert b" with UTF8SMTP" in utf8_row.payload


def test_envelope_cannot_inject_headers_into_the_stored_copy(store: SqlStore, start_intake: IntakeFactory) -> None:
    server = start_intake(store)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        # A bare CR inside the HELO name would end our Received line if copied verbatim.
        sock.sendall(b"EHLO evil\rX-Injected: yes\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        for command in [b"MAIL FROM:<ana@example.com>", b"RCPT TO:<support@example.com>", b"DATA"]:
            sock.sendall(command + b"\r\n")
            assert reader.readline()[:1] in (b"2", b"3")
        sock.sendall(mail() + b"\r\n.\r\n")
        assert reader.readline().startswith(b"250 ")
        sock.sendall(b"QUIT\r\n")
        reader.readline()
        reader.close()
    [row] = rows(store)
    header_lines = row.payload.split(b"\r\n\r\n", 1)[0].replace(b"\r", b"\n").split(b"\n")
    assert not any(line.lower().startswith(b"x-injected") for line in header_lines)


def test_storage_failure_answers_451_and_the_retry_lands(tmp_path: Path, start_intake: IntakeFactory) -> None:
    db_dir = tmp_path / "db"
    engine = make_engine(f"sqlite:///{db_dir / 'ticketbot.db'}")
    upgrade(engine)
    store = SqlStore(engine)
    server = start_intake(store)
    engine.dispose()
    shutil.rmtree(db_dir)  # the database is gone: every connection attempt fails
    raw = mail(message_id="<retry@example.com>")

    answer = transact(server.port, raw)
    assert answer.data is not None
    assert answer.data[0] == 451 and answer.data[1].startswith(b"4.3.0 ")

    db_dir.mkdir()
    upgrade(engine)  # the database is back
    assert transact(server.port, raw).code == 250  # the sending MTA's retry
    assert [row.message_id for row in rows(store)] == ["<retry@example.com>"]
    engine.dispose()


class BrokenStore:
    """An InboundStore whose receive fails like a buggy or unreachable database driver."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def receive(self, record: InboundRecord) -> Received:
        self.calls += 1
        raise self.error


@pytest.mark.parametrize("error", [StorageError("database is locked"), RuntimeError("driver bug")])
def test_any_store_failure_answers_451_never_5xx(error: Exception, start_intake: IntakeFactory) -> None:
    broken = BrokenStore(error)
    server = start_intake(broken)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        first = transact(server.port, mail(), client=client)
        # The session stays usable: the next transaction on the same connection is answered too.
        second = transact(server.port, mail(), client=client)
    assert first.data is not None and first.data[0] == 451
    assert second.data is not None and second.data[0] == 451
    assert broken.calls == 2


def test_concurrent_clients_store_every_message_exactly_once(store: SqlStore, start_intake: IntakeFactory) -> None:
    wakeups = Wakeups(store)
    server = start_intake(store, on_received=wakeups)
    shared = mail("Everyone sends this one", message_id="<shared@example.com>")

    def client_run(n: int) -> list[int]:
        codes = []
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            codes.append(transact(server.port, shared, client=client).code)
            for i in range(25):
                raw = mail(f"client {n} message {i}", message_id=f"<c{n}.m{i}@example.com>")
                codes.append(transact(server.port, raw, client=client).code)
        return codes

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(client_run, range(8)))

    assert all(code == 250 for codes in results for code in codes)
    stored = rows(store)
    assert len(stored) == 8 * 25 + 1
    assert len({row.message_id for row in stored}) == len(stored)
    assert len(wakeups.rows_seen) == len(stored)  # one wake-up per new row, none for the 7 redeliveries


def test_lmtp_round_trip(store: SqlStore, start_intake: IntakeFactory) -> None:
    server = start_intake(store, lmtp=True)
    raw = mail(message_id="<lmtp@example.com>")
    with smtplib.LMTP("127.0.0.1", server.port, timeout=10) as client:
        assert client.ehlo()[0] == 250  # smtplib sends LHLO
        assert client.sendmail("ana@example.com", [SUPPORT], raw) == {}
    [row] = rows(store)
    assert row.message_id == "<lmtp@example.com>"
    assert b" with LMTP\r\n" in row.payload


def test_lmtp_answers_data_once_per_recipient(store: SqlStore, start_intake: IntakeFactory) -> None:
    # RFC 2033 4.2: after DATA an LMTP server sends one reply per accepted RCPT. smtplib reads only one,
    # so this speaks the protocol directly.
    server = start_intake(store, lmtp=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"LHLO mta.test\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        replies = []
        for command in [
            b"MAIL FROM:<ana@example.com>",
            b"RCPT TO:<support@example.com>",
            b"RCPT TO:<nobody@example.com>",
            b"RCPT TO:<it-help@example.com>",
            b"DATA",
        ]:
            sock.sendall(command + b"\r\n")
            replies.append(reader.readline()[:3])
        sock.sendall(mail() + b"\r\n.\r\n")
        data_replies = [reader.readline(), reader.readline()]
        sock.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"221")
        reader.close()
    assert replies == [b"250", b"250", b"550", b"250", b"354"]
    [row] = rows(store)
    assert data_replies == [f"250 2.0.0 Queued as {row.id}\r\n".encode()] * 2


def test_server_binds_a_free_port_and_releases_it(sqlite_store: SqlStore, start_intake: IntakeFactory) -> None:
    server = start_intake(sqlite_store)
    assert server.port > 0
    assert transact(server.port, mail()).code == 250
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_a_taken_port_is_a_config_error(sqlite_store: SqlStore) -> None:
    handler = SmtpIntake(store=sqlite_store, support_addresses=[SUPPORT], max_message_bytes=MAX_BYTES)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = SmtpIntakeServer(handler, host="127.0.0.1", port=port, max_message_bytes=MAX_BYTES, ready_timeout=0.5)
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            server.start()


def test_a_full_disk_answers_451_and_the_retry_lands_once_there_is_room(
    tmp_path: Path, start_intake: IntakeFactory
) -> None:
    # SQLite's max_page_count makes the database "full" exactly as a full disk does (SQLITE_FULL), without
    # filling this machine's disk.
    limit: dict[str, int | None] = {"pages": None}
    engine = make_engine(f"sqlite:///{tmp_path / 'ticketbot.db'}")
    upgrade(engine)

    @event.listens_for(engine, "connect")
    def _cap(dbapi_connection: object, _record: object) -> None:
        if limit["pages"] is not None:
            dbapi_connection.execute(f"PRAGMA max_page_count = {limit['pages']}")  # type: ignore[attr-defined]

    with engine.connect() as conn:
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())
    limit["pages"] = pages + 2
    engine.dispose()  # new connections get the cap
    store = SqlStore(engine)
    server = start_intake(store, max_bytes=1024 * 1024)
    raw = mail(message_id="<full@example.com>", body="A long report.\r\n" * 40_000)  # about 640 KB

    answer = transact(server.port, raw)
    assert answer.data is not None and answer.data[0] == 451  # try later: the sender keeps the mail
    assert rows(store) == []

    limit["pages"] = None  # room again
    engine.dispose()
    assert transact(server.port, raw).code == 250
    assert [row.message_id for row in rows(store)] == ["<full@example.com>"]
    engine.dispose()
