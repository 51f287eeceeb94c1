"""Receive stage for email: the dedupe identity of a raw message, computed before anything else touches it."""

from __future__ import annotations

import re
from email.parser import BytesHeaderParser
from email.policy import compat32

from core.inbound import digest_key

# Trace headers differ between two deliveries of the same message (IMAP copy vs SMTP relay).
_TRACE = re.compile(
    rb"^(received|return-path|delivered-to|x-original-to|x-envelope-to|dkim-signature|arc-[a-z-]+|"
    rb"authentication-results|x-ms-exchange-[a-z-]+):",
    re.IGNORECASE,
)


def normalise_message_id(value: str | None) -> str | None:
    """``<abc@host>`` from any folded, spaced or bracket-less form; None when there is nothing usable."""
    if not value:
        return None
    text = " ".join(value.split())
    match = re.search(r"<([^<>\s]+)>", text)
    core = match.group(1) if match else text.strip().strip("<>").split()[0] if text.strip("<> ") else ""
    return f"<{core}>" if core else None


def email_identity(raw: bytes) -> tuple[str, str | None]:
    """(dedupe_key, message_id) for a raw message.

    The key combines the Message-ID with the sender and Date, so a robot that reuses one Message-ID
    for different mails is not swallowed, while the same mail arriving twice (IMAP and SMTP, a
    retry, a re-poll) collides. Without a Message-ID the key hashes the message minus trace headers:
    never a random id, which would defeat dedupe.
    """
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw, headersonly=True)
    message_id = normalise_message_id(_header(headers, "Message-ID"))
    if message_id:
        sender = (_header(headers, "From") or "").strip().lower()
        date = " ".join((_header(headers, "Date") or "").split())
        return "mid:" + digest_key(message_id, sender, date), message_id
    return "raw:" + digest_key(_without_trace(raw)), None


def _header(headers: object, name: str) -> str | None:
    value = headers.get(name)  # type: ignore[attr-defined]
    if value is None:
        return None
    return str(value)


def _without_trace(raw: bytes) -> bytes:
    head, sep, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = bool(_TRACE.match(line))
        if not skipping:
            kept.append(line)
    return b"\n".join(kept) + sep + body


# Our loop header: every automatic mail we send carries it with our instance id, and mail that comes
# back carrying it is our own (RT's X-RT-Loop-Prevention, in spirit).
LOOP_HEADER = "X-Ticketbot-Loop"
