"""Receive stage for SMTP/LMTP: each accepted DATA is committed raw to the inbound store before we answer 250."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from core.errors import ConfigError, StorageError
from core.inbound import InboundRecord, Received
from core.message import Channel
from core.ports import InboundStore
from intake.identity import email_identity

log = logging.getLogger(__name__)

# Replies are enhanced status codes (RFC 3463) so the sending MTA and its postmaster know what happened.
ACCEPTED = "250 2.0.0 Queued as {id}"
RCPT_OK = "250 2.1.5 OK"
RCPT_UNKNOWN = "550 5.1.1 Mailbox unavailable: not a support address"
TOO_BIG = "552 5.3.4 Message exceeds the maximum size"
TRY_LATER = "451 4.3.0 Temporary storage failure, please try again later"
SERVER_ERROR = "451 4.3.0 Temporary server error, please try again later"

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


class SmtpIntake:
    """aiosmtpd handler: accepts mail for the support addresses and commits each message raw, once.

    Nothing is parsed or sent here: parsing, classification and the acknowledgement happen later in
    the pipeline, so a slow classifier or a strange MIME structure never makes the sending MTA wait
    or bounce. Only a storage failure is refused, with a 451 so the sender retries.
    """

    def __init__(
        self,
        *,
        store: InboundStore,
        support_addresses: Sequence[str],
        max_message_bytes: int,
        on_received: Callable[[], None] | None = None,
    ) -> None:
        """
        Args:
            store: where the raw message is committed before the 250.
            support_addresses: the only recipients accepted; ``local+tag@domain`` of each is accepted too.
            max_message_bytes: messages larger than this are refused with 552.
            on_received: called on the event loop after a new message is committed, to wake the
                processor; it must not block.
        """
        self._store = store
        self._addresses = frozenset(a.strip().lower() for a in support_addresses)
        self._max_bytes = max_message_bytes
        self._on_received = on_received

    def accepts(self, address: str) -> bool:
        """True for a support address or a plus-address of one (``support+anything@``), ignoring case."""
        address = address.strip().lower()
        if address in self._addresses:
            return True
        local, at, domain = address.rpartition("@")
        base, plus, _tag = local.partition("+")
        return bool(at and plus and base) and f"{base}@{domain}" in self._addresses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.accepts(address):
            log.info("SMTP %s: refused recipient (not a support address)", _peer(session))
            return RCPT_UNKNOWN
        # Returning a status replaces aiosmtpd's default handling, which would have recorded the recipient.
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        lmtp = isinstance(server, LMTP)
        if len(raw) > self._max_bytes:
            # aiosmtpd's data_size_limit normally answers first; this guards a server built without it.
            return _per_recipient(TOO_BIG, envelope, lmtp)
        trace = _trace_headers(server, session, envelope, lmtp)
        try:
            received = await asyncio.to_thread(self._commit, raw, trace)
        except StorageError as exc:
            log.error("SMTP %s: could not store message, answering 451: %s", _peer(session), exc)
            return _per_recipient(TRY_LATER, envelope, lmtp)
        except Exception:  # noqa: BLE001 - process edge: any store failure must become a retry, not a bounce
            log.exception("SMTP %s: unexpected error storing message, answering 451", _peer(session))
            return _per_recipient(TRY_LATER, envelope, lmtp)
        log.info(
            "SMTP %s: inbound %d %s (%d bytes)",
            _peer(session),
            received.id,
            "stored" if received.created else "already stored (redelivery)",
            len(raw),
        )
        if received.created and self._on_received is not None:
            try:
                self._on_received()
            except Exception:  # noqa: BLE001 - the message is committed; a failed wake-up must not fail it
                log.exception("on_received callback failed; the processor will find the message on its next poll")
        # A redelivery gets the same answer as the first delivery: storing it again was a no-op.
        return _per_recipient(ACCEPTED.format(id=received.id), envelope, lmtp)

    async def handle_exception(self, error: Exception) -> str:
        # Without this hook aiosmtpd answers "500 Error: (Type) text": a bounce that leaks internals.
        log.error("SMTP session error, answering 451", exc_info=error)
        return SERVER_ERROR

    def _commit(self, raw: bytes, trace: bytes) -> Received:
        # Identity is computed on the bytes as received; the trace we prepend is ignored by it anyway.
        dedupe_key, message_id = email_identity(raw)
        record = InboundRecord(
            channel=Channel.EMAIL,
            dedupe_key=dedupe_key,
            payload=trace + raw,
            received_at=datetime.now(UTC),
            message_id=message_id,
        )
        return self._store.receive(record)


class SmtpIntakeServer:
    """Runs an :class:`SmtpIntake` on its own thread and event loop (SMTP, or LMTP behind an MTA)."""

    def __init__(
        self,
        handler: SmtpIntake,
        *,
        host: str,
        port: int,
        lmtp: bool = False,
        max_message_bytes: int,
        hostname: str | None = None,
        ready_timeout: float = 5.0,
    ) -> None:
        """
        Args:
            host: the address to bind; keep it internal (or sit behind the corporate MTA with ``lmtp=True``).
            port: the port to bind; 0 picks a free one, readable from :attr:`port` after :meth:`start`.
            lmtp: speak LMTP (RFC 2033) instead of SMTP.
            max_message_bytes: advertised as SIZE and enforced while reading DATA (552).
            hostname: the name in the greeting and in our Received header; defaults to the host name
                (not ``getfqdn()``, which can stall on DNS for every connection).
            ready_timeout: how long :meth:`start` waits for the listener.
        """
        self._handler = handler
        self._host = host
        self._port = port
        self._lmtp = lmtp
        self._max_bytes = max_message_bytes
        self._hostname = hostname or socket.gethostname()
        self._ready_timeout = ready_timeout
        self._controller: _IntakeController | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        return self._controller.port if self._controller is not None else self._port

    @property
    def protocol(self) -> str:
        return "LMTP" if self._lmtp else "SMTP"

    def start(self) -> None:
        """Bind and serve; raises ConfigError when the address cannot be bound."""
        if self._controller is not None:
            raise RuntimeError("SMTP intake already running")
        controller = _IntakeController(
            self._handler,
            lmtp=self._lmtp,
            hostname=self._host,
            port=self._port,
            ready_timeout=self._ready_timeout,
            server_hostname=self._hostname,
            data_size_limit=self._max_bytes,
            decode_data=False,  # keep the exact bytes: parsing happens later, on stored data
            enable_SMTPUTF8=True,  # 8BITMIME is advertised whenever decode_data is False
        )
        try:
            controller.start()
        except (OSError, TimeoutError, RuntimeError) as exc:
            controller.stop(no_assert=True)
            if not controller.loop.is_closed():
                controller.loop.close()
            raise ConfigError(f"smtp_intake: cannot listen on {self._host}:{self._port}: {exc}") from exc
        self._controller = controller
        log.info("%s intake listening on %s:%d", self.protocol, self._host, controller.port)

    def stop(self) -> None:
        """Stop listening; connections in progress are cut, and their senders retry (nothing was answered 250)."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
            log.info("%s intake on %s:%d stopped", self.protocol, self._host, controller.port)

    def __enter__(self) -> SmtpIntakeServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _IntakeController(Controller):
    """aiosmtpd's threaded Controller, made to serve LMTP and to bind port 0."""

    def __init__(self, handler: SmtpIntake, *, lmtp: bool, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._lmtp = lmtp

    def factory(self) -> SMTP:
        return (LMTP if self._lmtp else SMTP)(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # The Controller proves readiness by connecting to (hostname, port); with port 0 that would dial
        # port 0, and a wildcard bind address is not a destination. Dial the bound port on loopback instead.
        server = self.server
        assert isinstance(server, asyncio.Server)  # set by the Controller before it calls us
        sockname = server.sockets[0].getsockname()
        self.port = int(sockname[1])
        probe = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.hostname, self.hostname)
        with socket.create_connection((probe, self.port), timeout=1.0) as sock:
            sock.recv(1024)


def _per_recipient(status: str, envelope: Envelope, lmtp: bool) -> str:
    # LMTP (RFC 2033 section 4.2) answers DATA once per accepted recipient; SMTP answers once.
    if not lmtp:
        return status
    return "\r\n".join([status] * max(1, len(envelope.rcpt_tos)))


def _trace_headers(server: SMTP, session: Session, envelope: Envelope, lmtp: bool) -> bytes:
    """Return-Path, X-Original-To and Received for the stored copy.

    RFC 5321 section 4.4 asks the delivering server to add Return-Path and a Received line; they also
    carry the envelope (a null sender marks a bounce; the plus-address used) to the parser. Identity
    ignores these headers, so a copy fetched over IMAP still deduplicates against this one.
    """
    sender = envelope.mail_from or ""
    reverse_path = "<>" if sender in ("", "<>") else f"<{_safe(sender)}>"
    if lmtp:
        protocol = "LMTP"
    elif envelope.smtp_utf8:
        protocol = "UTF8SMTP"
    else:
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
    peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer or "unknown")
    helo = _safe(session.host_name or "unknown")
    recipients = ", ".join(_safe(r) for r in envelope.rcpt_tos)
    for_clause = f"\r\n\tfor <{_safe(envelope.rcpt_tos[0])}>" if len(envelope.rcpt_tos) == 1 else ""
    lines = [
        f"Return-Path: {reverse_path}",
        f"X-Original-To: {recipients}",
        f"Received: from {helo} ([{_safe(peer)}])\r\n\tby {_safe(server.hostname)} (ticketbot) with {protocol}"
        f"{for_clause}; {format_datetime(datetime.now(UTC))}",
    ]
    # surrogateescape gives back the exact bytes aiosmtpd decoded from an 8-bit command argument.
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _safe(value: str) -> str:
    # Envelope values come from the client: never let one end the header line we put it in.
    return _UNSAFE.sub(" ", value).strip()[:320]


def _peer(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
