"""Receive stage for Slack: `/ticket`, the modal and the message shortcut become durable InboundRecords, and back.

The listener stores a small JSON payload (who, what, where to answer) keyed by ``trigger_id`` (or the view id for
a modal), so a retried request never makes a second ticket; ``decode_slack`` turns the stored row into a Message
for the Pipeline.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.blocks import modal_values, plain_from_slack
from core.errors import MalformedMessage
from core.inbound import InboundRecord, StoredInbound
from core.message import Channel, Message

PAYLOAD_VERSION = 1
SUBJECT_LIMIT = 60


@dataclass(frozen=True, slots=True)
class Command:
    """What ``/ticket <text>`` asks for: create (the text is the request), modal, help, status <id> or mine."""

    kind: str
    text: str = ""
    ticket_id: int | None = None


def parse_command(text: str) -> Command:
    words = text.strip()
    if not words:
        return Command("modal")
    lowered = words.lower()
    if lowered in ("help", "?", "-h", "--help"):
        return Command("help")
    if lowered in ("mine", "list", "my"):
        return Command("mine")
    status = re.fullmatch(r"status\s+#?(\d{1,12})", lowered)
    if status:
        return Command("status", ticket_id=int(status.group(1)))
    if lowered == "status":
        return Command("help")
    return Command("create", text=words)


def _user(body: dict[str, Any]) -> tuple[str, str]:
    """(user id, display name) from a slash command body or an interactive payload."""
    if "user_id" in body:
        return str(body["user_id"]), str(body.get("user_name") or "")
    user = body.get("user") or {}
    return str(user.get("id") or ""), str(user.get("name") or user.get("username") or "")


def _record(dedupe_key: str, trigger_id: str | None, payload: dict[str, Any]) -> InboundRecord:
    return InboundRecord(
        channel=Channel.SLACK,
        dedupe_key=dedupe_key,
        trigger_id=trigger_id,
        payload=json.dumps({"v": PAYLOAD_VERSION, **payload}, ensure_ascii=False).encode("utf-8"),
        received_at=datetime.now(UTC),
    )


def record_from_command(body: dict[str, Any]) -> InboundRecord:
    """``/ticket <text>``: keyed by ``trigger_id``, so Slack's retries (same trigger_id) store nothing new."""
    trigger_id = str(body["trigger_id"])
    user_id, user_name = _user(body)
    return _record(
        f"slack:trigger:{trigger_id}",
        trigger_id,
        {
            "kind": "command",
            "user_id": user_id,
            "user_name": user_name,
            "text": plain_from_slack(str(body.get("text") or "")),
            "channel_id": str(body.get("channel_id") or ""),
            "response_url": str(body.get("response_url") or ""),
            "team_id": str(body.get("team_id") or ""),
        },
    )


def record_from_view(body: dict[str, Any]) -> InboundRecord:
    """A submitted ``/ticket`` form: keyed by the view id (one ticket per modal, however often Slack sends it)."""
    view = body["view"]
    values = modal_values(view)
    try:
        context = json.loads(view.get("private_metadata") or "{}")
    except json.JSONDecodeError:
        context = {}
    user_id, user_name = _user(body)
    return _record(
        f"slack:view:{view['id']}",
        str(body.get("trigger_id") or "") or None,
        {
            "kind": "modal",
            "user_id": user_id,
            "user_name": user_name,
            "title": values["title"].strip(),
            "text": values["description"].strip(),
            "urgency": values["urgency"],
            "channel_id": str(context.get("channel_id") or ""),
            "response_url": str(context.get("response_url") or ""),
            "team_id": str((body.get("team") or {}).get("id") or ""),
        },
    )


def record_from_shortcut(body: dict[str, Any], permalink: str | None) -> InboundRecord:
    """ "Create ticket from message": the person who ran it is the requester; the message and its link are the text."""
    trigger_id = str(body["trigger_id"])
    user_id, user_name = _user(body)
    message = body.get("message") or {}
    return _record(
        f"slack:trigger:{trigger_id}",
        trigger_id,
        {
            "kind": "shortcut",
            "user_id": user_id,
            "user_name": user_name,
            "text": plain_from_slack(str(message.get("text") or "")),
            "author": str(message.get("user") or message.get("bot_id") or ""),
            "permalink": permalink or "",
            "channel_id": str((body.get("channel") or {}).get("id") or ""),
            "response_url": str(body.get("response_url") or ""),
            "team_id": str((body.get("team") or {}).get("id") or ""),
        },
    )


def first_line(text: str, limit: int = SUBJECT_LIMIT) -> str:
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
    return ""


def decode_slack(inbound: StoredInbound) -> Message:
    """The Pipeline's decoder for Channel.SLACK rows stored by the listeners above.

    Raises:
        MalformedMessage: the payload is not ours (not JSON, no user); the row is parked.
    """
    try:
        data: Any = json.loads(inbound.payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"Slack payload is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("user_id"), str) or not data["user_id"]:
        raise MalformedMessage("Slack payload has no user_id")
    text = str(data.get("text") or "")
    kind = data.get("kind")
    body = text
    if kind == "modal":
        subject = first_line(str(data.get("title") or "")) or first_line(text)
        if data.get("urgency"):
            body = f"{text}\n\nUrgency (as given by the requester): {data['urgency']}"
    else:
        subject = first_line(text)
    if kind == "shortcut":
        source = []
        if data.get("author"):
            source.append(f"by @{data['author']}")
        if data.get("permalink"):
            source.append(str(data["permalink"]))
        if source:
            body = f"{text}\n\n(From a Slack message {' '.join(source)})".strip()
    return Message(
        channel=Channel.SLACK,
        source_id=inbound.dedupe_key,
        sender=data["user_id"],
        sender_name=str(data.get("user_name") or ""),
        subject=subject,
        body=body,
        received_at=inbound.received_at,
        requested_priority=str(data["urgency"]) if kind == "modal" and data.get("urgency") else None,
        reply_context={
            "response_url": str(data.get("response_url") or ""),
            "channel_id": str(data.get("channel_id") or ""),
            "user": data["user_id"],
        },
    )
