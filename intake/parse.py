"""Decode stage for email: raw RFC 5322 bytes become a Message; the only MIME code in ticketbot.

Every header is read raw (``raw_items``) and decoded here (RFC 2047 words, RFC 2231 parameters, raw 8-bit bytes),
and every part's bytes are decoded here with a charset fallback chain: ``email.policy.default``'s own header
parser is slow, quadratic on long values and raises on some hostile input, while intake must never stop on one
bad message. A bad part degrades (mojibake-safe text, a missing filename); only bytes that are not an email at all
raise ``MalformedMessage``.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import html
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from email import message_from_bytes
from email.errors import MessageError
from email.message import Message as MimePart
from email.policy import compat32
from email.policy import default as default_policy
from typing import TYPE_CHECKING

import charset_normalizer
from flufl.bounce import all_failures
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from mailparser_reply import EmailMessage as ReplyText
from mailparser_reply.constants import MAIL_LANGUAGES

from core.errors import MalformedMessage
from core.message import Attachment, Channel, Message
from core.pipeline import SUBJECT_TAG
from core.reply import REPLY_MARKER
from intake.identity import email_identity, normalise_message_id
from intake.loop import BOUNCE, READ_RECEIPT, automated_reason, domain_in, header_fields, parse_addresses, spam_reason

if TYPE_CHECKING:
    from core.config import EmailConfig
    from core.inbound import StoredInbound

log = logging.getLogger(__name__)

# Limits that keep one hostile message from costing more than milliseconds.
_CONTENT_FIELD_CAP = 4096  # bytes of a Content-* header field: the stdlib parses them during parsing, quadratically
_MAX_DEPTH = 30  # MIME nesting we follow
_MAX_PARTS = 10_000  # MIME parts we look at
_TEXT_PART_BYTES = 2_000_000  # bytes of one text part we decode
_HTML_INSCRIPTIS_CHARS = 1_000_000  # above this, or above _HTML_INSCRIPTIS_TAGS tags, strip tags with regexes:
_HTML_INSCRIPTIS_TAGS = 10_000  # inscriptis needs ~20 µs a table cell and ~20 µs a tag (200k tags: 4 s)
_BODY_CHARS = 1_000_000  # of full_body; the raw message stays in the inbound table
_SUBJECT_CHARS = 1_000
_NAME_CHARS = 200
_MAX_REFS = 100  # Message-IDs kept from References
_REPLY_PARSE_CHARS = 32_000  # text the quote parser looks at; new text sits at the top
_REPLY_LINE_CHARS = 160  # longer lines are hidden from the quote parser (see latest_reply)
_DETECT_BYTES = 64 * 1024  # sample given to charset-normalizer
_DETECT_MIN_BYTES = 32  # below this a guess is noise: cp1252 is the likelier truth

# Declared charsets that lie or that Python does not know, mapped to what senders really mean (Zammad, WHATWG):
# candidates are tried in order, strictly; the first that decodes wins.
_CHARSET_CANDIDATES: dict[str, tuple[str, ...]] = {
    "x-user-defined": ("cp1252",),  # Outlook Express: "the user's local charset", in practice Windows Western
    "ks_c_5601-1987": ("cp949",),  # Outlook's name for Korean; euc-kr, Python's alias, lacks the UHC extension
    "ks_c_5601": ("cp949",),
    "ksc5601": ("cp949",),
    "euc-kr": ("cp949",),
    "iso-2022-jp": ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2004", "cp932"),  # half-width kana, NEC extras
    "shift_jis": ("cp932", "shift_jis_2004"),
    "shift-jis": ("cp932", "shift_jis_2004"),
    "sjis": ("cp932",),
    "x-sjis": ("cp932",),
    "windows-31j": ("cp932",),
    "gb2312": ("gb18030",),  # gb18030 is a superset; senders write GBK into "gb2312"
    "gbk": ("gb18030",),
    "x-gbk": ("gb18030",),
    "big5": ("big5hkscs", "cp950"),
    "iso-8859-1": ("cp1252", "latin-1"),  # WHATWG: latin-1 labels mean windows-1252 (smart quotes 0x91-0x94)
    "iso8859-1": ("cp1252", "latin-1"),
    "latin1": ("cp1252", "latin-1"),
    "latin-1": ("cp1252", "latin-1"),
    "iso-8859-9": ("cp1254", "iso-8859-9"),
    "tis-620": ("cp874",),
    "iso-8859-11": ("cp874",),
    "unicode-1-1-utf-7": ("utf-7",),
    "utf8": ("utf-8",),
    "unicode": ("utf-8",),
}
_ASCII_LABELS = frozenset({"us-ascii", "ascii", "ansi_x3.4-1968", "646", "iso646-us", "us", "unknown-8bit", "default"})
# Single-byte labels decode any bytes at all, so valid non-ASCII UTF-8 under one of them is a mislabel, not chance.
_SINGLE_BYTE = re.compile(r"(cp125\d|cp8\d\d|cp437|latin-?\d|iso-?8859-\d+|windows-125\d|koi8-[a-z]+|mac-?roman)$")
# Codecs that would interpret text rather than decode it.
_REFUSED_CODECS = frozenset({"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined"})

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?]*)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BASE64_JUNK = bytes(set(range(256)) - set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"))
_CONTENT_FIELD = re.compile(rb"(?:^|\n)[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-")
_MSGID_TOKEN = re.compile(r"<[^<>\s]+>|[^\s<>(),;\"]+@[^\s<>(),;\"]+")  # bracketed, or bare as some clients send
_COMMENT = re.compile(r"\([^()]*\)")
_ID_LINE = re.compile(r"^(?:original-)?message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_FILENAME_JUNK = re.compile(r"[\x00-\x1f\x7f]+")

# "Re:", Outlook's German "AW:", Nordic "SV:"/"VS:", Dutch "Antw:", Polish "Odp:", Portuguese "RES:", Turkish "YNT:",
# Chinese 回复/回覆/答复; with optional counters ("Re[2]:"). A reply prefix makes a follow-up even without headers.
_REPLY_PREFIX = re.compile(r"^\s*(?:re|aw|sv|vs|antw|odp|res|ynt|回复|回覆|答复)\s*(?:\[\d+\]|\(\d+\))?\s*[:：]", re.I)
# Our marker's leading words: enough to find it even when a client re-wraps the quoted line.
_MARKER_WORDS = " ".join(REPLY_MARKER.strip("- ").split()[:4])
_REPLY_LANGUAGES = tuple(MAIL_LANGUAGES)
_LONG_LINE = re.compile(rf"[^\n]{{{_REPLY_LINE_CHARS},}}")
_SHELVED = re.compile(">?\ue000(\\d+)\ue001")
_BLANK_RUN = re.compile(r"\n(?:[ \t]*\n){2,}")

_BOUNCE_LOCALS = frozenset({"mailer-daemon", "postmaster"})
_REPORT_METADATA = frozenset(
    {
        "message/delivery-status",
        "message/global-delivery-status",
        "message/disposition-notification",
        "message/global-disposition-notification",
        "text/rfc822-headers",
        "message/global-headers",
    }
)
_SIGNATURE_TYPES = frozenset(
    {"application/pgp-signature", "application/pkcs7-signature", "application/x-pkcs7-signature"}
)
_VERBATIM = default_policy.clone(refold_source="none")
# What the stdlib's parser and accessors raise on hostile input (UnicodeError is a ValueError, HeaderParseError a
# MessageError; RecursionError comes from deep nesting).
_STDLIB_ERRORS: tuple[type[Exception], ...] = (
    RecursionError,
    ValueError,
    LookupError,
    TypeError,
    IndexError,
    AttributeError,
    AssertionError,
    MessageError,
)
_EXTENSIONS = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/calendar": ".ics",
    "message/rfc822": ".eml",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "application/pdf": ".pdf",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailSettings:
    """What email decoding needs from the configuration.

    ``allowed_sender_domains`` may hold ``"*"`` (anyone); subdomains of a listed domain are allowed too.
    ``own_domains`` is derived from ``support_addresses``; domains given explicitly are added to it.
    """

    support_addresses: Sequence[str] = ("support@example.com",)
    allowed_sender_domains: Sequence[str] = ("example.com",)
    attachment_store_bytes: int = 5 * 1024 * 1024
    instance_id: str = "ticketbot"
    own_domains: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        addresses = tuple(a.strip().lower() for a in self.support_addresses)
        domains = tuple(d.strip().lower().lstrip("@") for d in self.allowed_sender_domains)
        derived = {a.rsplit("@", 1)[1] for a in addresses if "@" in a}
        object.__setattr__(self, "support_addresses", addresses)
        object.__setattr__(self, "allowed_sender_domains", domains)
        object.__setattr__(self, "own_domains", frozenset(d.lower() for d in self.own_domains) | derived)

    @classmethod
    def from_config(cls, email: EmailConfig, instance_id: str) -> EmailSettings:
        return cls(
            support_addresses=email.support_addresses,
            allowed_sender_domains=email.allowed_sender_domains,
            attachment_store_bytes=email.attachment_store_bytes,
            instance_id=instance_id,
        )

    def sender_allowed(self, address: str) -> bool:
        domain = address.rsplit("@", 1)[-1]
        return "*" in self.allowed_sender_domains or domain_in(domain, self.allowed_sender_domains)


def email_decoder(settings: EmailSettings) -> Callable[[StoredInbound], Message]:
    """The pipeline's decoder for ``Channel.EMAIL`` rows."""

    def decode(inbound: StoredInbound) -> Message:
        return message_from_email(
            inbound.payload, settings=settings, received_at=inbound.received_at, dedupe_key=inbound.dedupe_key
        )

    return decode


def message_from_email(
    raw: bytes, *, settings: EmailSettings, received_at: datetime, dedupe_key: str | None = None
) -> Message:
    """Decode one raw email into a Message: sender, subject, body, attachments, threading and loop verdicts.

    Raises:
        MalformedMessage: the bytes are not an email at all (empty, or no header field).
    """
    if not raw.strip():
        raise MalformedMessage("empty message")
    msg, structure_error = _parse(raw)
    fields = header_fields(msg)
    if not fields:
        raise MalformedMessage("not an email: no header fields")

    walk = _Walk(store_bytes=settings.attachment_store_bytes)
    if structure_error is None:
        _walk(msg, walk, depth=0, body=True)
    hint = walk.first_charset

    sender, sender_name = _first_address(fields, "from", hint)
    if not sender:
        sender = _first_address(fields, "sender", hint)[0] or _first_address(fields, "return-path", hint)[0]
    subject = _clip(_squash(_header_text(_first(fields, "subject"), hint)), _SUBJECT_CHARS)

    message_id = normalise_message_id(_first(fields, "message-id"))
    in_reply_to = _message_ids(fields.get("in-reply-to", ()))
    references = _message_ids(fields.get("references", ()))[-_MAX_REFS:]

    auto_reason = automated_reason(msg, settings)
    bounced: frozenset[str] = frozenset()
    original_ids: list[str] = []
    if auto_reason in (BOUNCE, READ_RECEIPT) or sender.split("@", 1)[0] in _BOUNCE_LOCALS:
        # A bounce or receipt threads into the ticket of the mail it reports on (Zammad's BounceFollowUpCheck),
        # where it becomes a note instead of a parked message nobody can place.
        original_ids = walk.original_ids or _ids_in_text(walk.texts)
        if auto_reason != READ_RECEIPT:
            bounced = _permanent_failures(msg)
    thread_refs = _unique([*in_reply_to, *reversed(references), *original_ids])

    texts = [text for text in walk.texts if text.strip()] or [t for t in walk.inline_texts if t.strip()]
    full_body = _clip("\n\n".join(texts).strip(), _BODY_CHARS)
    follow_up = bool(in_reply_to or references or _REPLY_PREFIX.match(subject))
    # The first message keeps everything (a forward is the request); a follow-up keeps only what is new.
    body = latest_reply(full_body) if follow_up else full_body

    tag = SUBJECT_TAG.search(subject)
    reply_context = {"references": " ".join([*references, message_id] if message_id else references)}
    if bounced:
        reply_context["bounced_recipients"] = " ".join(sorted(bounced))

    return Message(
        channel=Channel.EMAIL,
        source_id=message_id or dedupe_key or email_identity(raw)[0],
        sender=sender,
        sender_name=sender_name,
        subject=subject,
        body=body,
        full_body=full_body,
        received_at=received_at,
        thread_refs=tuple(thread_refs),
        subject_ticket_id=int(tag.group(1)) if tag else None,
        auto_reason=auto_reason,
        park_reason=_park_reason(msg, sender, settings, structure_error),
        recipients=tuple(_unique(_addresses(fields, ("to", "cc", "delivered-to", "x-original-to"), hint))),
        attachments=tuple(walk.attachments),
        reply_context=reply_context,
    )


def latest_reply(text: str) -> str:
    """What a follow-up adds: ``text`` cut at our reply marker, without quoted history and signature.

    Falls back to ``text`` when stripping would leave nothing (a reply that is all quote, or a parser miss).
    """
    marker = text.find(_MARKER_WORDS)
    cut = text[: text.rfind("\n", 0, marker) + 1] if marker >= 0 else text
    # The parser's patterns backtrack polynomially on long lines ("On " + 4 kB: 0.7 s, 100 kB: 4 minutes) and
    # quadratically on runs of blank lines. No attribution line is that long, so long lines are shelved behind
    # placeholders and put back afterwards; blank runs shrink to one empty line.
    window = _BLANK_RUN.sub("\n\n", cut[:_REPLY_PARSE_CHARS].replace("\r\n", "\n").replace("\r", "\n"))
    shelf: list[str] = []

    def shelve(match: re.Match[str]) -> str:
        line = match.group(0).strip()
        shelf.append(line)
        return f"{'>' if line.startswith('>') else ''}\ue000{len(shelf) - 1}\ue001"  # a quote stays a quote

    def unshelve(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return shelf[index] if index < len(shelf) else match.group(0)

    shelved = _LONG_LINE.sub(shelve, window)
    # keep_hyphen_lists: a "- item" line is a list, not the start of a signature.
    parsed = ReplyText(text=shelved, languages=list(_REPLY_LANGUAGES), keep_hyphen_lists=True).read()
    if not parsed.replies or parsed.replies[0].headers:
        return text  # nothing above the first quote header: all quote, or a parser miss
    reply = parsed.replies[0]
    kept = reply.content.strip()  # the parser strips every line; fine for what it removes, not for what it keeps
    signature = (reply.signatures or "").strip()
    if signature and _plausible_signature(signature) and kept.endswith(signature):
        kept = kept[: -len(signature)]
    kept = _SHELVED.sub(unshelve, _strip_trailing_quote(kept)).strip()
    if not kept:
        return text
    if kept == "\n".join(line.strip() for line in window.split("\n")).strip():
        return cut.strip()  # nothing quoted or signed: the text as written (indentation, and any part past the window)
    return kept


# -- parsing -------------------------------------------------------------------------------------------------------


def _parse(raw: bytes) -> tuple[MimePart, str | None]:
    """The parsed message, and why its MIME structure could not be read (None when it could).

    Raises:
        MalformedMessage: not even the header block parses.
    """
    tamed = _tame_content_fields(raw)
    # compat32, not policy.default: we read and decode every header ourselves, and policy.default parses each
    # part's Content-Type about five times with a parser quadratic in field length (1.6 vs 0.63 ms a message
    # on our samples; 5,000 parts 1.5 s; a 200 kB Content-Type 10 s). The structure it builds is the same.
    try:
        return message_from_bytes(tamed, policy=compat32), None
    except RecursionError:
        problem = "nested too deeply"
    except _STDLIB_ERRORS as exc:
        problem = f"{type(exc).__name__}: {exc}"
    try:
        # Keep the headers (sender, subject, threading); a person looks at the rest.
        return message_from_bytes(_head(tamed), policy=compat32), f"malformed MIME: {problem}"
    except _STDLIB_ERRORS as exc:
        raise MalformedMessage(f"unparseable: {type(exc).__name__}: {exc}") from exc


def _tame_content_fields(raw: bytes) -> bytes:
    """``raw`` with every Content-* header field cut to _CONTENT_FIELD_CAP bytes.

    The stdlib parses Content-Type (and Content-Transfer-Encoding) of every part while it parses, with a parser
    that is quadratic in the field's length: a 200 kB Content-Type costs 10 s, 600 kB a minute.
    """
    pieces: list[bytes] = []
    pos = 0
    for match in _CONTENT_FIELD.finditer(raw):
        start = match.end() - len(b"content-")
        if start < pos:
            continue
        end = start
        while True:  # the field ends at a line break not followed by folding whitespace
            end = raw.find(b"\n", end)
            if end < 0 or raw[end + 1 : end + 2] not in (b" ", b"\t"):
                break
            end += 1
        end = len(raw) if end < 0 else end
        if end - start > _CONTENT_FIELD_CAP:
            pieces.append(raw[pos : start + _CONTENT_FIELD_CAP])
            pos = end
    if not pieces:
        return raw
    pieces.append(raw[pos:])
    return b"".join(pieces)


def _head(raw: bytes) -> bytes:
    for separator in (b"\r\n\r\n", b"\n\n"):
        index = raw.find(separator)
        if index >= 0:
            return raw[: index + len(separator)]
    return raw


@dataclass(slots=True)
class _Walk:
    """What walking the MIME tree collects."""

    store_bytes: int
    texts: list[str] = field(default_factory=list)
    inline_texts: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    original_ids: list[str] = field(default_factory=list)  # Message-IDs of returned or attached originals
    first_charset: str | None = None
    parts: int = 0


@dataclass(frozen=True, slots=True)
class _PartInfo:
    content_type: str
    charset: str | None
    disposition: str | None
    filename: str | None

    @property
    def is_attachment(self) -> bool:
        return self.disposition == "attachment" or self.filename is not None


def _walk(part: MimePart, out: _Walk, *, depth: int, body: bool, in_report: bool = False) -> None:
    """Collect body text (when ``body``), attachments and original Message-IDs from ``part`` and below."""
    out.parts += 1
    if out.parts > _MAX_PARTS or depth > _MAX_DEPTH:
        return
    info = _part_info(part)
    ctype = info.content_type

    if ctype in _REPORT_METADATA:
        out.original_ids += _report_ids(part)
        return
    if part.is_multipart():
        # get_payload() only on containers: on a leaf it re-parses headers and decodes 8-bit text lossily.
        payload = part.get_payload()
        children = [child for child in payload if isinstance(child, MimePart)] if isinstance(payload, list) else []
        if ctype.startswith("message/"):
            _walk_message(children, info, out, depth=depth, body=body, in_report=in_report)
        elif ctype == "multipart/alternative":
            chosen = _choose_alternative(children, out) if body else None
            for child in children:
                _walk(child, out, depth=depth + 1, body=child is chosen)
        elif ctype == "multipart/report":
            for index, child in enumerate(children):
                # The first part explains the report to people; the rest is the machine part and the original.
                _walk(child, out, depth=depth + 1, body=body and index == 0, in_report=index > 0)
        else:
            for child in children:
                _walk(child, out, depth=depth + 1, body=body)
        return
    if ctype.startswith("multipart/"):
        if body:
            # A multipart whose boundary never appears: its raw text beats an empty request.
            out.texts.append(_part_text(part, replace(info, content_type="text/plain"), out))
        return
    if ctype in _SIGNATURE_TYPES:
        return
    if ctype in ("text/plain", "text/html"):
        if not info.is_attachment:
            if body:
                out.texts.append(_part_text(part, info, out))
            return  # else: the alternative we did not choose
        if body and info.disposition != "attachment":
            # A named inline text part: shown inline by mail clients; the body when there is no other text.
            out.inline_texts.append(_part_text(part, info, out))
    out.attachments.append(_attachment(part, info, out))


def _walk_message(
    children: list[MimePart],
    info: _PartInfo,
    out: _Walk,
    *,
    depth: int,
    body: bool,
    in_report: bool,
) -> None:
    """message/rfc822: a returned original (in a report), an attached mail, or a mail forwarded inline."""
    if not children:
        return
    inner = children[0]
    inner_fields = header_fields(inner)
    inner_id = normalise_message_id(_first(inner_fields, "message-id"))
    if inner_id:
        out.original_ids.append(inner_id)
    if in_report or info.is_attachment or not body:
        out.attachments.append(_message_attachment(inner, inner_fields, info, out))
        return
    # Forwarded inline: its text is part of the request, introduced the way mail clients show a forward.
    forwarded = _Walk(store_bytes=out.store_bytes, parts=out.parts)
    _walk(inner, forwarded, depth=depth + 1, body=True)
    out.parts = forwarded.parts
    lines = ["---------- Forwarded message ----------"]
    for name in ("From", "Date", "Subject", "To"):
        value = _squash(_header_text(_first(inner_fields, name.lower()), out.first_charset))
        if value:
            lines.append(f"{name}: {value}")
    out.texts.append("\n".join(lines) + "\n\n" + "\n\n".join(t for t in forwarded.texts if t.strip()))
    out.attachments += forwarded.attachments
    out.original_ids += forwarded.original_ids


def _choose_alternative(children: list[MimePart], out: _Walk) -> MimePart | None:
    """text/plain if it has text (some senders put "view this mail in HTML" there), else the HTML branch."""
    plain: MimePart | None = None
    rich: MimePart | None = None
    for child in children:
        info = _part_info(child)
        if info.is_attachment:
            continue
        if info.content_type == "text/plain" and plain is None:
            plain = child
        elif rich is None and (info.content_type == "text/html" or info.content_type.startswith("multipart/")):
            rich = child
    if plain is not None and (rich is None or _part_text(plain, _part_info(plain), out).strip()):
        return plain
    return rich or plain or (children[-1] if children else None)


def _part_info(part: MimePart) -> _PartInfo:
    """Content headers of one part, parsed the compat32 way: fast and lenient, RFC 2231 included."""
    helper = MimePart()  # a compat32 message holding only this part's content headers
    for name, value in part.raw_items():
        key = name.lower()
        if key in ("content-type", "content-disposition") and key not in helper:
            helper[key] = _fix_8bit(_FOLD.sub("", str(value)), None)
    if "content-type" in helper:
        ctype = helper.get_content_type()
    else:
        ctype = part.get_default_type()  # text/plain, or message/rfc822 inside multipart/digest
    charset = _param(helper, "charset", "content-type")
    filename = _param(helper, "filename", "content-disposition") or _param(helper, "name", "content-type")
    return _PartInfo(
        content_type=ctype,
        charset=charset.strip().lower() if charset else None,
        disposition=helper.get_content_disposition(),
        filename=_clean_filename(filename) if filename else None,
    )


def _param(helper: MimePart, name: str, header: str) -> str | None:
    """A parameter value, RFC 2231 (charset'lang'%XX, continuations) and RFC 2047 (Outlook's filenames) decoded."""
    try:
        value = helper.get_param(name, header=header)
    except (ValueError, IndexError, TypeError):  # compat32's parameter splitter on garbage
        return None
    if value is None:
        return None
    if isinstance(value, tuple):
        charset, _language, text = value
        # compat32 un-%-escapes RFC 2231 values as latin-1; get the bytes back and decode them properly.
        data = text.encode("latin-1", "replace")
        return _decode_text(data, charset or None, detect=False)
    text = value.strip('"')
    return _decode_words(text) if "=?" in text else text


def _part_text(part: MimePart, info: _PartInfo, out: _Walk) -> str:
    data = _payload_bytes(part)[:_TEXT_PART_BYTES]
    if out.first_charset is None and info.charset:
        out.first_charset = info.charset
    text = _decode_text(data, info.charset, detect=True)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return _html_text(text) if info.content_type == "text/html" else text


def _payload_bytes(part: MimePart) -> bytes:
    """The part's bytes after Content-Transfer-Encoding (lenient base64, quoted-printable, uuencode)."""
    try:
        # decode=True is the only lossless accessor: without it the stdlib decodes 8-bit bytes itself, lossily.
        data = part.get_payload(decode=True)
    except _STDLIB_ERRORS:
        return b""
    return data if isinstance(data, bytes) else b""


def _base64(data: bytes) -> bytes:
    """Lenient base64 (RFC 2047 B words): junk characters dropped, padding repaired."""
    clean = data.translate(None, _BASE64_JUNK)
    if len(clean) % 4 == 1:
        clean = clean[:-1]  # a lone trailing sextet carries no whole byte
    try:
        return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
    except binascii.Error:
        return b""


def _attachment(part: MimePart, info: _PartInfo, out: _Walk) -> Attachment:
    data = _payload_bytes(part)
    name = info.filename or f"attachment-{len(out.attachments) + 1}{_EXTENSIONS.get(info.content_type, '')}"
    content = data if len(data) <= out.store_bytes else None
    return Attachment(filename=name, content_type=info.content_type, size=len(data), content=content)


def _message_attachment(inner: MimePart, inner_fields: dict[str, list[str]], info: _PartInfo, out: _Walk) -> Attachment:
    subject = _squash(_header_text(_first(inner_fields, "subject"), out.first_charset))
    name = info.filename or _clean_filename(f"{subject[:100] or 'message'}.eml") or "message.eml"
    try:
        # Headers exactly as received (refold_source="none"): re-folding is slow and has had bugs on odd input.
        data = inner.as_bytes(policy=_VERBATIM)
    except _STDLIB_ERRORS:
        data = b""
    content = data if len(data) <= out.store_bytes else None
    return Attachment(filename=name, content_type=info.content_type, size=len(data), content=content)


def _report_ids(part: MimePart) -> list[str]:
    """Message-IDs named by a report's machine part (rfc822-headers, or Original-Message-ID of an MDN)."""
    if part.is_multipart():
        found: list[str] = []
        for block in part.get_payload():
            if isinstance(block, MimePart):
                block_fields = header_fields(block)
                for name in ("message-id", "original-message-id"):
                    found += _message_ids(block_fields.get(name, ()))
        return found
    return _ids_in_text([_decode_text(_payload_bytes(part)[:_DETECT_BYTES], None)])


def _ids_in_text(texts: Iterable[str]) -> list[str]:
    """Message-ID header lines inside text: what non-MIME bounces (qmail, old Exchange) quote of the original."""
    found: list[str] = []
    for text in texts:
        for match in _ID_LINE.finditer(text[:_DETECT_BYTES]):
            found += _message_ids([_FOLD.sub("", match.group(1))])
    return found


def _permanent_failures(msg: MimePart) -> frozenset[str]:
    """Recipients a bounce reports as permanently failing (flufl.bounce, Mailman's detectors)."""
    try:
        _temporary, permanent = all_failures(msg)
    except Exception:  # noqa: BLE001 - seventeen heuristic detectors on hostile input; a miss only loses a hint
        log.warning("bounce detection failed", exc_info=True)
        return frozenset()
    return frozenset(address.decode("ascii", "replace").lower() for address in permanent)


def _park_reason(msg: MimePart, sender: str, settings: EmailSettings, structure_error: str | None) -> str | None:
    spam = spam_reason(msg, settings)
    if spam is not None:
        return f"spam: {spam}"
    if not sender:
        return "no sender address"
    if not settings.sender_allowed(sender):
        return f"sender not allowed: {sender.rsplit('@', 1)[-1]}"
    return structure_error


# -- text -----------------------------------------------------------------------------------------------------------


def _decode_text(data: bytes, declared: str | None, *, detect: bool = True) -> str:
    """Bytes to text under any charset declaration, true, false, unknown or missing; never raises.

    Order: the declared charset's candidates (strict), ASCII, UTF-8 (strict), then charset-normalizer's guess
    (when ``detect`` and there are enough bytes to guess from) or UTF-8 with replacement characters; without
    detection, or for a handful of bytes, cp1252.
    """
    label = (declared or "").strip().strip("\"'").lower()
    if label in _ASCII_LABELS:
        label = ""
    candidates = _CHARSET_CANDIDATES.get(label) or ((label,) if label else ())
    if candidates and _SINGLE_BYTE.match(candidates[0]) and not data.isascii():
        try:
            return data.decode("utf-8")  # UTF-8 sent as latin-1: valid multi-byte UTF-8 is no accident
        except UnicodeDecodeError:
            pass
    for candidate in candidates:
        codec = _codec(candidate)
        if codec is None:
            continue
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
    if data.isascii():
        return data.decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if not detect or len(data) < _DETECT_MIN_BYTES:
        return data.decode("cp1252", "replace")  # legacy 8-bit is most often Windows Western
    guess = charset_normalizer.from_bytes(data[:_DETECT_BYTES]).best()
    codec = _codec(guess.encoding) if guess is not None else None
    return data.decode(codec or "utf-8", "replace")


@functools.lru_cache(maxsize=256)
def _codec(name: str) -> str | None:
    """Python's codec for a charset label, or None when unknown or not a plain text decoder."""
    try:
        codec = codecs.lookup(name).name
    except (LookupError, ValueError):
        return None
    return None if codec in _REFUSED_CODECS else codec


def _html_text(markup: str) -> str:
    """Readable text from HTML: inscriptis (tables, lists) within a size budget, regexes beyond it."""
    markup = markup[: 2 * _HTML_INSCRIPTIS_CHARS]
    if len(markup) <= _HTML_INSCRIPTIS_CHARS and markup.count("<") <= _HTML_INSCRIPTIS_TAGS:
        try:
            text: str = get_text(markup, ParserConfig(display_links=False))
            return text.strip()
        except Exception:  # noqa: BLE001 - lxml and inscriptis on hostile markup; the regex path always works
            log.debug("inscriptis failed; stripping tags instead", exc_info=True)
    return _strip_tags(markup)


_SKIPPED_ELEMENT = re.compile(r"<(script|style|head|title)\b", re.IGNORECASE)
_BLOCK_TAG = re.compile(r"<\s*/?\s*(?:br|p|div|tr|li|h[1-6]|table|blockquote|hr|pre|ul|ol)\b[^<>]*>", re.IGNORECASE)
_CELL_TAG = re.compile(r"<\s*/?\s*t[dh]\b[^<>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^<>]*>")


def _strip_tags(markup: str) -> str:
    """Linear-time HTML to text for markup too large for inscriptis: drops scripts, styles and comments."""
    kept: list[str] = []
    pos = 0
    while True:  # find() loops rather than lazy regexes: an unclosed <script or <!-- must not go quadratic
        comment = markup.find("<!--", pos)
        element = _SKIPPED_ELEMENT.search(markup, pos)
        if comment < 0 and element is None:
            break
        if element is None or 0 <= comment < element.start():
            kept.append(markup[pos:comment])
            end = markup.find("-->", comment + 4)
            pos = len(markup) if end < 0 else end + 3
        else:
            kept.append(markup[pos : element.start()])
            closing = re.compile(rf"</\s*{element.group(1)}\s*>", re.IGNORECASE).search(markup, element.end())
            pos = len(markup) if closing is None else closing.end()
    kept.append(markup[pos:])
    text = "".join(kept)
    text = _BLOCK_TAG.sub("\n", text)
    text = _CELL_TAG.sub("  ", text)
    text = html.unescape(_ANY_TAG.sub("", text))
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _strip_trailing_quote(text: str) -> str:
    """``text`` without the block of '>'-quoted lines (and blank lines) that ends it."""
    lines = text.split("\n")
    end = len(lines)
    while end > 0 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith(">")):
        end -= 1
    return "\n".join(lines[:end]) if end < len(lines) else text


def _plausible_signature(signature: str) -> bool:
    """Whether mail-parser-reply's signature guess is a sign-off rather than text that starts like one.

    Its patterns match at any line start ("Thanks, that fixed it. But now ..." matches "Thanks,"), so a guess is
    accepted only when it is short and made of short lines, like "Best regards,\\nJane\\nIT | +44 ...".
    """
    lines = [line.strip() for line in signature.splitlines() if line.strip()]
    if not lines:
        return False
    first = lines[0].lstrip("> ")
    if first in ("--", "__"):
        return len(lines) <= 20
    return (
        len(lines) <= 8
        and len(first) <= 40
        and not first.endswith((".", "?", ":"))
        and all(len(line) <= 80 for line in lines)
    )


# -- headers --------------------------------------------------------------------------------------------------------


def _first(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values else None


def _header_text(raw: str | None, hint: str | None) -> str:
    """A header's text: raw 8-bit bytes and RFC 2047 encoded words decoded."""
    if not raw:
        return ""
    return _decode_words(_fix_8bit(raw, hint))


def _fix_8bit(value: str, hint: str | None) -> str:
    """Raw 8-bit header bytes (kept by the parser as surrogate escapes) decoded: UTF-8, else the body's charset."""
    if value.isascii():
        return value
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return _decode_text(data, hint, detect=False)


def _decode_words(text: str) -> str:
    """RFC 2047 encoded words decoded; adjacent words of one charset are joined before decoding, because senders
    split multi-byte characters across them, and the whitespace between adjacent words is dropped (§ 6.2)."""
    if "=?" not in text:
        return text
    out: list[str] = []
    pending = bytearray()
    pending_charset: str | None = None
    pos = 0
    for match in _ENCODED_WORD.finditer(text):
        gap = text[pos : match.start()]
        charset = match.group(1).split("*", 1)[0].lower()  # RFC 2231 § 5: charset*language
        adjacent = pending_charset is not None and not gap.strip()
        if pending_charset is not None and (not adjacent or charset != pending_charset):
            out.append(_decode_text(bytes(pending), pending_charset, detect=False))
            pending.clear()
        if not adjacent:
            out.append(gap)
        encoded = match.group(3).encode("ascii", "replace")
        pending += _base64(encoded) if match.group(2) in "Bb" else binascii.a2b_qp(encoded, header=True)
        pending_charset = charset
        pos = match.end()
    if pending_charset is not None:
        out.append(_decode_text(bytes(pending), pending_charset, detect=False))
    out.append(text[pos:])
    return "".join(out)


def _first_address(fields: dict[str, list[str]], name: str, hint: str | None) -> tuple[str, str]:
    """(lower-cased address, decoded display name) of the first address in header ``name``, or ("", "")."""
    value = _first(fields, name)
    if not value:
        return "", ""
    for display, address in parse_addresses([_fix_8bit(value, hint)]):
        address = address.strip().strip("<>").lower()
        if _valid_address(address):
            return address, _clip(_squash(_decode_words(display)), _NAME_CHARS)
    return "", ""


def _addresses(fields: dict[str, list[str]], names: Iterable[str], hint: str | None) -> list[str]:
    values = [_fix_8bit(value, hint) for name in names for value in fields.get(name, ())]
    return [a for a in (address.strip().lower() for _, address in parse_addresses(values)) if _valid_address(a)]


def _valid_address(address: str) -> bool:
    local, _, domain = address.rpartition("@")
    return bool(local) and bool(domain) and not any(c.isspace() for c in address)


def _message_ids(values: Iterable[str]) -> list[str]:
    """Every Message-ID in header values, in order: several may share one In-Reply-To, and some lack brackets."""
    found: list[str] = []
    for value in values:
        for token in _MSGID_TOKEN.findall(_COMMENT.sub(" ", value)):
            normalised = normalise_message_id(token)
            if normalised is not None:
                found.append(normalised)
    return found


def _clean_filename(name: str) -> str | None:
    """A filename safe to show and store: no directories, no control characters, at most 255 characters."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _squash(_FILENAME_JUNK.sub(" ", name)).strip(". ")
    return name[:255] or None


def _squash(text: str) -> str:
    """Control characters removed and whitespace runs collapsed (headers, names)."""
    return " ".join(_CONTROL.sub("", text).split())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + " […]"


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
