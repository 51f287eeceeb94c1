"""Deliver stage for email: turns an EMAIL outbox item into a message and hands it to a relay or a directory."""

from __future__ import annotations

import base64
import logging
import os
import re
import smtplib
import ssl
import tempfile
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from core.config import RelayConfig
from core.errors import ConfigError, DeliveryError, PermanentDeliveryError
from core.outbox import OutboxKind, StoredOutboxItem
from intake.identity import LOOP_HEADER, normalise_message_id

log = logging.getLogger(__name__)

# CRLF, 78-column folding. refold_source="none" leaves the Message-ID headers we store with set_raw as
# written: the default folder would RFC 2047-encode a long Message-ID (Outlook's run to ~90 characters),
# and an encoded In-Reply-To no longer threads.
POLICY = policy.SMTP.clone(refold_source="none")

MAX_SUBJECT = 250
MAX_REFERENCES = 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._@-]+")
# RFC 5321/5322 dot-atom addresses, with UTF-8 allowed (RFC 6531); a quoted local part is not supported.
_UTF8 = "\u0080-\ud7ff\ue000-\U0010ffff"  # any non-ASCII character except lone surrogates
_ATEXT = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{_UTF8}-]+"
_LABEL = rf"[A-Za-z0-9{_UTF8}](?:[A-Za-z0-9{_UTF8}-]*[A-Za-z0-9{_UTF8}])?"
_ADDR_SPEC = re.compile(rf"(?P<local>{_ATEXT}(?:\.{_ATEXT})*)@(?P<domain>{_LABEL}(?:\.{_LABEL})+)")


def build_reply(item: StoredOutboxItem, *, instance_id: str, now: datetime | None = None) -> EmailMessage:
    """The message for an EMAIL outbox item, with the headers every automatic mail of ours carries.

    Subject, addresses and Message-IDs can come from inbound mail, so none of them may add a header:
    line breaks are removed and Message-IDs are rebuilt from their ``<id>`` part.

    Raises:
        PermanentDeliveryError: the item is not an email, or its To/From is not one valid address.
    """
    if item.kind is OutboxKind.DIGEST_EMAIL:
        return build_digest_email(item, instance_id=instance_id, now=now)
    if item.kind is not OutboxKind.EMAIL:
        raise PermanentDeliveryError(f"outbox item {item.id} is {item.kind}, not an email")
    payload = item.payload
    to = _address(payload.get("to"), role="To", item=item)
    sender = _address(payload.get("from"), role="From", item=item)
    sender_name = _one_line(str(payload.get("from_name") or ""))

    msg = EmailMessage(policy=POLICY)
    msg["From"] = Address(display_name=sender_name, username=sender.username, domain=sender.domain)
    msg["To"] = to
    msg["Reply-To"] = sender
    msg["Subject"] = _one_line(str(payload.get("subject") or ""))[:MAX_SUBJECT] or "Your request"
    msg["Date"] = now or datetime.now(UTC)
    msg.set_raw("Message-ID", reply_message_id(item))
    in_reply_to = normalise_message_id(_str_or_none(payload.get("in_reply_to")))
    references = _references(payload.get("references"), in_reply_to)
    if in_reply_to:
        msg.set_raw("In-Reply-To", in_reply_to)
    if references:
        # One id per line: folding between ids is always legal, and a long id stays whole.
        msg.set_raw("References", "\r\n ".join(references))
    # RFC 3834 and the Microsoft/legacy equivalents: auto-responders must not answer us, and our own
    # loop header lets the intake recognise this mail if it ever comes back.
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["Precedence"] = "auto_reply"
    msg[LOOP_HEADER] = _one_line(instance_id) or "ticketbot"
    text = str(payload.get("text") or "").replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    ascii_only = text.isascii() and all(len(line) <= 998 for line in text.splitlines())
    msg.set_content(text, subtype="plain", charset="utf-8", cte="7bit" if ascii_only else "quoted-printable")
    return msg


def build_digest_email(item: StoredOutboxItem, *, instance_id: str, now: datetime | None = None) -> EmailMessage:
    """The admin digest as mail: text and HTML alternatives, the chart inline (``cid:``) in the HTML part.

    Not a reply, so RFC 3834's ``auto-generated`` (rather than ``auto-replied``) and no threading headers.

    Raises:
        PermanentDeliveryError: the To/From is not one valid address, or the stored digest is unreadable.
    """
    from core.digest import digest_from_json, email_subject, render_html, render_text

    payload = item.payload
    to = _address(payload.get("to"), role="To", item=item)
    sender = _address(payload.get("from"), role="From", item=item)
    try:
        digest = digest_from_json(payload["digest"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentDeliveryError(f"outbox item {item.id}: unreadable digest: {exc}") from exc
    msg = EmailMessage(policy=POLICY)
    msg["From"] = Address(
        display_name=_one_line(str(payload.get("from_name") or "")), username=sender.username, domain=sender.domain
    )
    msg["To"] = to
    msg["Subject"] = _one_line(email_subject(digest))[:MAX_SUBJECT]
    msg["Date"] = now or datetime.now(UTC)
    msg.set_raw("Message-ID", reply_message_id(item))
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["Precedence"] = "bulk"
    msg[LOOP_HEADER] = _one_line(instance_id) or "ticketbot"
    msg.set_content(render_text(digest), subtype="plain", charset="utf-8", cte="quoted-printable")
    chart = payload.get("chart_png")
    # The chart's Content-ID is derived from the item, so a retried send carries the same one.
    cid = f"chart-{item.id}@{sender.domain}" if chart else None
    msg.add_alternative(render_html(digest, chart_cid=cid), subtype="html", charset="utf-8", cte="quoted-printable")
    html_part = msg.get_body(preferencelist=("html",))
    if chart and cid and isinstance(html_part, EmailMessage):
        html_part.add_related(
            base64.b64decode(str(chart)), maintype="image", subtype="png", cid=f"<{cid}>", filename="chart.png"
        )
    return msg


def reply_message_id(item: StoredOutboxItem) -> str:
    """The item's Message-ID: the one composed with it, or one derived from its id (stable across retries)."""
    message_id = normalise_message_id(_str_or_none(item.payload.get("message_id")))
    if message_id is None:
        domain = str(item.payload.get("from") or "ticketbot.invalid").rpartition("@")[2] or "ticketbot.invalid"
        message_id = f"<outbox-{item.id}@{_UNSAFE_NAME.sub('', domain) or 'ticketbot.invalid'}>"
    return message_id


def render(msg: EmailMessage) -> bytes:
    """The message as it goes on the wire (CRLF line ends).

    An internationalised address cannot be an encoded word (RFC 2047 section 5), so such a message is
    written with UTF-8 headers (RFC 6532), as smtplib does when it sends it with SMTPUTF8.
    """
    addresses = "".join(str(msg.get(name, "")) for name in ("From", "To", "Reply-To"))
    return msg.as_bytes(policy=POLICY if addresses.isascii() else POLICY.clone(utf8=True))


class SmtpReplySender:
    """Sends EMAIL outbox items through the configured relay, one connection per message.

    Errors are translated here: a 5xx answer about this message (recipient, sender, content) is
    permanent; a 4xx, a refused or dropped connection, a timeout, TLS or login trouble is transient,
    since an operator can fix the relay or its credentials and the outbox will retry.
    """

    def __init__(
        self,
        *,
        relay: RelayConfig,
        password: str | None,
        instance_id: str,
        envelope_sender: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        """
        Args:
            relay: host, port, security (starttls, ssl, none), username, timeout.
            password: the relay password (from the environment); required when ``relay.username`` is set.
            instance_id: written to our loop header.
            envelope_sender: the MAIL FROM address. None uses the From address. RFC 3834 recommends the
                null reverse path for automatic replies (pass ``"<>"``), so bounces about them cannot
                loop; many relays (Microsoft 365, Gmail) refuse it, hence the default. A separate bounce
                mailbox that the bot ignores is the other good choice.
            ssl_context: for a relay with a private CA; defaults to the system trust store.
            local_hostname: the EHLO name; defaults to the local FQDN.
        """
        if relay.username and not password:
            raise ConfigError(f"email.relay: username is set but {relay.password_env} is empty")
        self._relay = relay
        self._password = password
        self._instance_id = instance_id
        self._envelope_sender = envelope_sender
        self._ssl_context = ssl_context
        self._local_hostname = local_hostname

    def send(self, item: StoredOutboxItem) -> str:
        msg = build_reply(item, instance_id=self._instance_id)
        message_id = reply_message_id(item)
        to = str(msg["To"])
        from_addr = _envelope_sender(self._envelope_sender, msg)
        where = f"relay {self._relay.host}:{self._relay.port}"
        try:
            client = self._connect()
        except smtplib.SMTPResponseException as exc:
            # A refusal at the greeting, EHLO, STARTTLS or AUTH is about the relay, not this message.
            raise DeliveryError(f"{where} refused the session: {_describe(exc)}") from exc
        except smtplib.SMTPException as exc:
            # No STARTTLS offered, no AUTH offered, a dropped greeting: the relay's setup, not this message.
            raise DeliveryError(f"{where} session failed: {exc or type(exc).__name__}") from exc
        except OSError as exc:
            raise DeliveryError(f"{where} unreachable: {exc or type(exc).__name__}") from exc
        try:
            client.send_message(msg, from_addr=from_addr, to_addrs=[to])
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _text in exc.recipients.values()]
            detail = "; ".join(f"{code} {_text_of(text)}" for code, text in exc.recipients.values())
            if codes and all(code >= 500 for code in codes):
                raise PermanentDeliveryError(f"{where} refused recipient {to}: {detail}") from exc
            raise DeliveryError(f"{where} deferred recipient {to}: {detail}") from exc
        except smtplib.SMTPResponseException as exc:
            # MAIL FROM or DATA answered: SMTPSenderRefused and SMTPDataError carry the relay's code.
            if exc.smtp_code >= 500:
                raise PermanentDeliveryError(f"{where} rejected the message to {to}: {_describe(exc)}") from exc
            raise DeliveryError(f"{where} deferred the message to {to}: {_describe(exc)}") from exc
        except smtplib.SMTPNotSupportedError as exc:
            # An internationalised address needs SMTPUTF8, which this relay lacks; retrying cannot help.
            raise PermanentDeliveryError(f"{where} cannot deliver to {to}: {exc}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{where} failed while sending to {to}: {exc or type(exc).__name__}") from exc
        finally:
            _quit(client)
        log.info("sent outbox %d (%s) to %s via %s as %s", item.id, item.payload.get("reason"), to, where, message_id)
        return message_id

    def _connect(self) -> smtplib.SMTP:
        relay = self._relay
        client: smtplib.SMTP
        if relay.security == "ssl":
            client = smtplib.SMTP_SSL(
                relay.host,
                relay.port,
                local_hostname=self._local_hostname,
                timeout=relay.timeout_seconds,
                context=self._tls_context(),
            )
        else:
            client = smtplib.SMTP(
                relay.host, relay.port, local_hostname=self._local_hostname, timeout=relay.timeout_seconds
            )
        try:
            client.ehlo()
            if relay.security == "starttls":
                client.starttls(context=self._tls_context())
                client.ehlo()
            if relay.username:
                client.login(relay.username, self._password or "")
        except BaseException:
            _quit(client)
            raise
        return client

    def _tls_context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()


class FileReplySender:
    """Writes each EMAIL outbox item as an .eml file: the default when no relay is configured.

    The name is ``<created UTC>-<ticket id>-<message id>.eml``, all taken from the stored item, so
    sending the same item again replaces the same file instead of adding a second one.
    """

    def __init__(self, *, directory: Path, instance_id: str) -> None:
        self._directory = directory
        self._instance_id = instance_id

    def path_for(self, item: StoredOutboxItem) -> Path:
        created = item.created_at if item.created_at.tzinfo else item.created_at.replace(tzinfo=UTC)
        stamp = created.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        ticket = str(item.ticket_id) if item.ticket_id is not None else "none"
        safe_id = _UNSAFE_NAME.sub("_", reply_message_id(item).strip("<>"))[:120]
        return self._directory / f"{stamp}-{ticket}-{safe_id}.eml"

    def send(self, item: StoredOutboxItem) -> str:
        data = render(build_reply(item, instance_id=self._instance_id))
        path = self.path_for(item)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(path, data)
        except OSError as exc:
            raise DeliveryError(f"cannot write {path}: {exc}") from exc
        log.info("wrote outbox %d (%s) to %s", item.id, item.payload.get("reason"), path)
        return reply_message_id(item)


def _write_atomically(path: Path, data: bytes) -> None:
    # A reader (or a crash) never sees half a file: write a hidden temp file, fsync, then rename over.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _address(value: Any, *, role: str, item: StoredOutboxItem) -> Address:
    """One plain address (no display name, no list); anything else is permanent for this item."""
    text = value.strip() if isinstance(value, str) else ""
    # Checked by pattern rather than by email's parser, which on some garbage raises AttributeError.
    match = _ADDR_SPEC.fullmatch(text)
    if match is None or len(text) > 254 or len(match["local"]) > 64:
        raise PermanentDeliveryError(f"outbox item {item.id}: invalid {role} address {value!r}")
    return Address(username=match["local"], domain=match["domain"])


def _references(value: Any, in_reply_to: str | None) -> list[str]:
    refs: list[str] = []
    for raw in value if isinstance(value, list) else []:
        ref = normalise_message_id(_str_or_none(raw))
        if ref and ref not in refs and len(ref) <= 900:
            refs.append(ref)
    if in_reply_to and in_reply_to not in refs:
        refs.append(in_reply_to)  # RFC 5322 3.6.4: References ends with the parent's Message-ID
    if len(refs) > MAX_REFERENCES:
        # Keep the thread root and the most recent ids, as mail clients do when they trim.
        refs = refs[:1] + refs[-(MAX_REFERENCES - 1) :]
    return refs


def _envelope_sender(choice: str | None, msg: EmailMessage) -> str:
    if choice is None:
        return str(msg["From"].addresses[0].addr_spec)
    return "<>" if choice.strip() in ("", "<>") else choice.strip()


def _one_line(value: str) -> str:
    return " ".join(_CONTROL.sub(" ", value).split())


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _text_of(text: bytes | str) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def _describe(exc: smtplib.SMTPResponseException) -> str:
    return f"{exc.smtp_code} {_text_of(exc.smtp_error)}"


def _quit(client: smtplib.SMTP) -> None:
    # QUIT is a courtesy: a relay that already hung up must not turn a sent message into a failure.
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()
