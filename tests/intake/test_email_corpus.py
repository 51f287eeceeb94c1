"""CPython's own email test corpus through the email decode stage: every file decodes or is rejected, nothing else."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email.policy import compat32
from pathlib import Path

import pytest

from core.errors import MalformedMessage
from core.message import Channel, Message
from intake.parse import EmailSettings, message_from_email

CORPUS = Path(email.__file__).parent.parent / "test" / "test_email" / "data"
RECEIVED = datetime(2025, 6, 3, 12, 0, tzinfo=UTC)
SETTINGS = EmailSettings(allowed_sender_domains=["*"], attachment_store_bytes=1024)

if CORPUS.is_dir():
    FILES = [pytest.param(path, id=path.name) for path in sorted(CORPUS.iterdir()) if path.is_file()]
else:
    reason = f"CPython's email test corpus is not installed at {CORPUS} (a Python built without its test package)"
    FILES = [pytest.param(None, id="no-corpus", marks=pytest.mark.skip(reason=reason))]


@pytest.mark.parametrize("path", FILES)
def test_corpus_file_decodes_or_is_rejected_with_a_reason(path: Path) -> None:
    raw = path.read_bytes()
    # The stdlib's own verdict on "is there a header at all": only then may we refuse the bytes.
    has_headers = bool(email.message_from_bytes(raw, policy=compat32).keys())
    try:
        message = message_from_email(raw, settings=SETTINGS, received_at=RECEIVED)
    except MalformedMessage as exc:
        assert str(exc), "MalformedMessage must say why"
        assert not has_headers, f"{path.name} has header fields, so it must decode: {exc}"
        return
    assert has_headers
    assert isinstance(message, Message)
    assert message.channel is Channel.EMAIL
    assert message.source_id
    assert message.received_at == RECEIVED
    assert len(message.subject) <= 1_010
    for text in (message.subject, message.body, message.full_body, message.sender, message.sender_name):
        text.encode("utf-8")  # storable: no lone surrogates
        assert "\x00" not in text
    assert message.sender == "" or "@" in message.sender
    assert (message.park_reason == "no sender address") == (message.sender == "")


def test_corpus_mail_mostly_decodes() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"CPython's email test corpus is not installed at {CORPUS}")
    mails = sorted(CORPUS.glob("msg_*.txt"))
    decoded = []
    for path in mails:
        try:
            decoded.append(message_from_email(path.read_bytes(), settings=SETTINGS, received_at=RECEIVED))
        except MalformedMessage:
            continue
    assert len(mails) >= 40
    assert len(decoded) >= len(mails) - 2  # msg_19.txt is a digest fragment without any header
    assert sum(1 for message in decoded if message.body.strip()) >= len(decoded) * 3 // 4
