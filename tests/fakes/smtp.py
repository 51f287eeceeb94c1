"""Test fakes for the email edges: a recording aiosmtpd relay that catches our replies, and SMTP client helpers.

A test module opts in to a fixture by binding it at module level (``recording_relay = fakes.recording_relay``):
``pytest_plugins`` would warn once another test module has imported this one for its helpers.
"""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from core.config import RelayConfig

Stage = Literal["MAIL", "RCPT", "DATA"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message the relay accepted, as it arrived."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes

    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


class RecordingRelay:
    """aiosmtpd handler standing in for the company relay: records what it accepts, refuses on request.

    ``refuse("451 4.3.0 busy", stage="DATA", times=2)`` answers the next two DATA commands with that
    status (``times=None``: until :meth:`heal`). Hooks run on the server thread, so state is locked.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._refusals: dict[Stage, tuple[str, int | None]] = {}
        self.attempts = 0  # DATA commands seen, accepted or refused

    def refuse(self, status: str, *, stage: Stage = "DATA", times: int | None = 1) -> None:
        with self._lock:
            self._refusals[stage] = (status, times)

    def heal(self) -> None:
        with self._lock:
            self._refusals.clear()

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def _refusal(self, stage: Stage) -> str | None:
        with self._lock:
            if stage == "DATA":
                self.attempts += 1
            status, times = self._refusals.get(stage, ("", 0))
            if not status:
                return None
            if times is not None:
                if times <= 1:
                    del self._refusals[stage]
                else:
                    self._refusals[stage] = (status, times - 1)
            return status

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        refusal = self._refusal("MAIL")
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self._refusal("RCPT")
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        refusal = self._refusal("DATA")
        if refusal:
            return refusal
        delivery = Delivery(envelope.mail_from or "", tuple(envelope.rcpt_tos), envelope.original_content or b"")
        with self._lock:
            self._deliveries.append(delivery)
        return "250 2.0.0 Ok: queued"


class LoopbackController(Controller):
    """aiosmtpd's Controller on 127.0.0.1 at a free port (it cannot probe port 0 by itself)."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=0, server_hostname="relay.test", **kwargs)

    def _trigger_server(self) -> None:
        server = self.server
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])
        with socket.create_connection((self.hostname, self.port), timeout=1.0) as sock:
            if self.ssl_context is None:
                sock.recv(1024)
                return
            probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            probe.check_hostname = False
            probe.verify_mode = ssl.CERT_NONE  # only wakes our own server up; nothing is sent
            with probe.wrap_socket(sock) as tls:
                tls.recv(1024)


@dataclass(frozen=True, slots=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this certificate, with hostname checks on."""
        return ssl.create_default_context(cafile=str(self.cert))


def make_certificate(directory: Path) -> Certificate:
    """Generate one with the openssl command (no Python crypto package is needed)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return Certificate(cert, key)


class PasswordCheck:
    """aiosmtpd authenticator accepting one login/password pair (PLAIN and LOGIN)."""

    def __init__(self, login: str, password: str) -> None:
        self._expected = (login.encode(), password.encode())

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == self._expected
        return AuthResult(success=ok, handled=False)


@dataclass
class RelayServer:
    """A running recording relay."""

    relay: RecordingRelay
    host: str
    port: int
    certificate: Certificate | None = None

    def config(self, **overrides: Any) -> RelayConfig:
        """A RelayConfig pointing at this relay: plain SMTP, short timeout."""
        values: dict[str, Any] = {"host": self.host, "port": self.port, "security": "none", "timeout_seconds": 5.0}
        values.update(overrides)
        return RelayConfig(**values)


@pytest.fixture
def recording_relay() -> Iterator[RelayServer]:
    relay = RecordingRelay()
    controller = LoopbackController(relay)
    controller.start()
    try:
        yield RelayServer(relay, controller.hostname, controller.port)
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


RELAY_LOGIN = ("ticketbot", "relay-secret")


@pytest.fixture
def starttls_relay(certificate: Certificate) -> Iterator[RelayServer]:
    """A recording relay like the company's submission port: STARTTLS required, then AUTH as RELAY_LOGIN."""
    relay = RecordingRelay()
    controller = LoopbackController(
        relay,
        tls_context=certificate.server_context(),
        require_starttls=True,
        auth_required=True,
        authenticator=PasswordCheck(*RELAY_LOGIN),
    )
    controller.start()
    try:
        yield RelayServer(relay, controller.hostname, controller.port, certificate)
    finally:
        controller.stop()


@pytest.fixture
def ssl_relay(certificate: Certificate) -> Iterator[RelayServer]:
    """A recording relay speaking implicit TLS (port 465 style)."""
    relay = RecordingRelay()
    controller = LoopbackController(relay, ssl_context=certificate.server_context())
    controller.start()
    try:
        yield RelayServer(relay, controller.hostname, controller.port, certificate)
    finally:
        controller.stop()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections but never says a word: an SMTP client times out."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Answer:
    """The server's replies to one SMTP transaction."""

    mail: tuple[int, bytes]
    rcpts: tuple[tuple[int, bytes], ...]
    data: tuple[int, bytes] | None

    @property
    def code(self) -> int:
        """The answer that decided the transaction: MAIL's if refused, else DATA's (or the last RCPT's)."""
        if self.mail[0] >= 400:
            return self.mail[0]
        if self.data is not None:
            return self.data[0]
        return self.rcpts[-1][0]


def transact(
    port: int,
    raw: bytes,
    *,
    sender: str = "ana@example.com",
    recipients: Sequence[str] = ("support@example.com",),
    host: str = "127.0.0.1",
    mail_options: Sequence[str] = (),
    client: smtplib.SMTP | None = None,
) -> Answer:
    """One SMTP transaction through smtplib's low-level commands, so every reply can be asserted.

    With ``client`` the transaction reuses that connection; otherwise a new one is opened and closed.
    """
    if client is None:
        with smtplib.SMTP(host, port, timeout=10) as fresh:
            return transact(port, raw, sender=sender, recipients=recipients, mail_options=mail_options, client=fresh)
    client.ehlo_or_helo_if_needed()
    mail = client.mail(sender, list(mail_options))
    if mail[0] >= 400:
        client.rset()
        return Answer(mail, (), None)
    rcpts = tuple(client.rcpt(r) for r in recipients)
    if not any(code < 400 for code, _ in rcpts):
        client.rset()
        return Answer(mail, rcpts, None)
    return Answer(mail, rcpts, client.data(raw))
