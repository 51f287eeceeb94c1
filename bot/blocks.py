"""Slack side of the reply stage: Block Kit cards, modals and texts, with every untrusted string escaped for mrkdwn.

Text from email or Slack is data: it goes through ``escape`` (``&``, ``<``, ``>``) before it reaches a mrkdwn field,
and mrkdwn objects carrying it are ``verbatim`` so Slack does not auto-link ``@here`` or ``#channel`` in it either.
The only markup we emit ourselves is built from validated ids (``<@U123>``, ``<#C123>``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from core.ticket import Priority, Status, Ticket

Block = dict[str, Any]

CARD_ACTIONS = "ticket_actions"
CLAIM = "ticket_claim"
SET_STATUS = "ticket_status"
REROUTE = "ticket_reroute"
MODAL = "ticket_modal"
SHORTCUT = "create_ticket_from_message"

STATUS_LABELS = {
    Status.NEW: "New",
    Status.IN_PROGRESS: "In progress",
    Status.WAITING: "Waiting",
    Status.RESOLVED: "Resolved",
    Status.CLOSED: "Closed",
}
PRIORITY_EMOJI = {Priority.LOW: "⚪", Priority.MEDIUM: "🔵", Priority.HIGH: "🟠", Priority.URGENT: "🔴"}

_USER_ID = re.compile(r"[UW][A-Z0-9]{2,20}")
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{2,20}")
# Slack's own markup in text it sends us: <@U123|name>, <#C123|name>, <!here>, <https://x|label>, <mailto:...>.
_SLACK_MARKUP = re.compile(r"<([@#!]?)([^<>|]*)(?:\|([^<>]*))?>")


def escape(text: str) -> str:
    """Escape ``&``, ``<`` and ``>`` so untrusted text cannot mention, broadcast or fake a link in mrkdwn."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain_from_slack(text: str) -> str:
    """Slack's encoded message text as plain text: markup becomes readable words, entities become characters.

    Slack sends user input with ``&``, ``<`` and ``>`` escaped and real mentions/links as ``<...>`` markup;
    we store plain text (``escape`` makes it safe again wherever it is shown).
    """

    def readable(match: re.Match[str]) -> str:
        sigil, target, label = match.group(1), match.group(2), match.group(3)
        if sigil == "@":
            return f"@{label or target}"
        if sigil == "#":
            return f"#{label or target}"
        if sigil == "!":
            if label:
                return label
            return "@" + (target.split("^")[1] if target.startswith("subteam^") else target)
        return f"{label} ({target})" if label and label != target else target

    converted = _SLACK_MARKUP.sub(readable, text)
    return converted.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (before escaping, so an entity is never cut in half)."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def user_ref(value: str | None, name: str = "") -> str:
    """A person as mrkdwn: a mention for a Slack user id, otherwise the escaped name or address."""
    if value and _USER_ID.fullmatch(value):
        return f"<@{value}>"
    if not value:
        return "—"
    return escape(f"{name} <{value}>" if name and name != value else value)


def channel_ref(channel_id: str) -> str:
    return f"<#{channel_id}>" if _CHANNEL_ID.fullmatch(channel_id) else escape(channel_id)


def mrkdwn(text: str) -> Block:
    """A mrkdwn text object that Slack will not auto-link (``verbatim``): for text containing user data."""
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def plain(text: str, limit: int = 75) -> Block:
    return {"type": "plain_text", "text": clip(text, limit) or " ", "emoji": True}


def status_label(status: Status) -> str:
    return STATUS_LABELS[status]


# -- the department channel card ----------------------------------------------------------------------------------


def card_text(ticket: Ticket) -> str:
    """The top-level ``text`` fallback (notifications, screen readers, clients without blocks)."""
    return escape(
        f"Ticket #{ticket.id} · {ticket.department} · {ticket.priority.value} · "
        f"{status_label(ticket.status)}: {clip(ticket.summary or ticket.subject, 150)}"
    )


def ticket_card(ticket: Ticket, departments: Sequence[str], *, note: str | None = None) -> list[Block]:
    """The Block Kit card for ``ticket`` in its current state, with Claim / status / Reroute controls.

    ``note`` is our own mrkdwn (already escaped where it quotes user text), shown as a warning line.
    """
    summary = clip(ticket.summary or ticket.subject, 300)
    classifier = ticket.classifier + (f" ({ticket.classifier_model})" if ticket.classifier_model else "")
    route = escape(ticket.department) + (" _(triage: low confidence)_" if ticket.triaged else "")
    fields = [
        mrkdwn(f"*Requester*\n{user_ref(ticket.requester, ticket.requester_name)}"),
        mrkdwn(f"*Department*\n{route}"),
        mrkdwn(f"*Priority*\n{PRIORITY_EMOJI[ticket.priority]} {ticket.priority.value}"),
        mrkdwn(f"*Status*\n{status_label(ticket.status)}"),
        mrkdwn(f"*Assignee*\n{user_ref(ticket.assignee) if ticket.assignee else '_unassigned_'}"),
        mrkdwn(f"*Confidence*\n{ticket.confidence:.0%} · {escape(classifier)}"),
    ]
    subject = clip(ticket.subject, 200)
    heading = f"*{escape(subject)}*\n{escape(summary)}" if subject and subject != summary else f"*{escape(summary)}*"
    blocks: list[Block] = [
        {"type": "header", "text": plain(f"{PRIORITY_EMOJI[ticket.priority]} Ticket #{ticket.id}", 150)},
        {"type": "section", "text": mrkdwn(heading)},
        {"type": "section", "fields": fields},
    ]
    body = clip(ticket.body, 600)
    if body and body != summary:
        blocks.append({"type": "section", "text": mrkdwn(quote(escape(body)))})
    if note:
        blocks.append({"type": "context", "elements": [mrkdwn(f":warning: {note}")]})
    blocks.append(
        {
            "type": "context",
            "elements": [
                mrkdwn(
                    f"Ticket #{ticket.id} · via {ticket.channel.value} · opened "
                    f"<!date^{int(ticket.created_at.timestamp())}^{{date_short_pretty}} {{time}}|"
                    f"{ticket.created_at:%Y-%m-%d %H:%M} UTC> · updates in the thread"
                )
            ],
        }
    )
    blocks.append(card_actions(ticket, departments))
    return blocks


def card_actions(ticket: Ticket, departments: Sequence[str]) -> Block:
    status_options = [option(STATUS_LABELS[s], f"{ticket.id}:{s.value}") for s in Status if s is not ticket.status]
    reroute_options = [option(d, f"{ticket.id}:{d}") for d in departments if d != ticket.department][:100]
    elements: list[Block] = [
        {
            "type": "button",
            "action_id": CLAIM,
            "text": plain("Claim"),
            "value": str(ticket.id),
            **({"style": "primary"} if ticket.assignee is None else {}),
        },
        {
            "type": "static_select",
            "action_id": SET_STATUS,
            "placeholder": plain("Set status"),
            "options": status_options,
        },
    ]
    if reroute_options:
        elements.append(
            {
                "type": "static_select",
                "action_id": REROUTE,
                "placeholder": plain("Reroute"),
                "options": reroute_options,
            }
        )
    return {"type": "actions", "block_id": f"{CARD_ACTIONS}:{ticket.id}", "elements": elements}


def option(label: str, value: str) -> Block:
    return {"text": plain(label), "value": value[:150]}


def quote(text: str) -> str:
    return "\n".join(f">{line}" for line in text.splitlines()) or ">"


# -- notes in the card's thread, alerts, replies to the requester -------------------------------------------------


def comment_note(author: str, author_name: str, text: str, *, automated: bool) -> str:
    who = user_ref(author, author_name)
    kind = "Automatic reply" if automated else "Follow-up"
    return f":speech_balloon: *{kind}* from {who}:\n{quote(escape(clip(text, 2500)))}"


def status_note(actor: str, old: str | None, new: Status, note: str | None) -> str:
    before = f"{status_label(Status(old))} → " if old is not None and old in Status._value2member_map_ else ""
    text = f":arrows_counterclockwise: Status {before}*{status_label(new)}* by {user_ref(actor)}"
    if note:
        text += "\n" + quote(escape(clip(note, 1500)))
    return text


def ack_text(ticket: Ticket) -> str:
    """The requester's confirmation, e.g. ``Ticket #12 opened → IT Support (high)``."""
    return f"Ticket #{ticket.id} opened → {ticket.department} ({ticket.priority.value})"


def ack_blocks(ticket: Ticket) -> list[Block]:
    triage = " It will be passed to the right team." if ticket.triaged else ""
    return [
        {
            "type": "section",
            "text": mrkdwn(
                f":white_check_mark: Ticket *#{ticket.id}* opened → *{escape(ticket.department)}* "
                f"({ticket.priority.value}).{triage}\n>{escape(clip(ticket.summary or ticket.subject, 200))}"
            ),
        },
        {
            "type": "context",
            "elements": [mrkdwn(f"Check on it any time with `/ticket status {ticket.id}`; I will message you here.")],
        },
    ]


def status_dm_text(ticket: Ticket, note: str) -> str:
    summary = escape(clip(ticket.summary or ticket.subject, 150))
    if ticket.status is Status.RESOLVED:
        text = (
            f":white_check_mark: Your ticket *#{ticket.id}* ({summary}) has been *resolved*. "
            f"If it is not fixed, open a new request with `/ticket` and mention #{ticket.id}."
        )
    elif ticket.status is Status.CLOSED:
        text = f"Your ticket *#{ticket.id}* ({summary}) has been *closed*."
    else:
        text = f"Your ticket *#{ticket.id}* ({summary}) is now *{status_label(ticket.status).lower()}*."
    if note:
        text += "\nNote from the team:\n" + quote(escape(clip(note, 1500)))
    return text


def ticket_summary_blocks(ticket: Ticket) -> list[Block]:
    """``/ticket status 12``: one ticket as the requester (or an agent) sees it."""
    return [
        {
            "type": "section",
            "text": mrkdwn(
                f"*Ticket #{ticket.id}*: {escape(clip(ticket.subject or ticket.summary, 150))}\n"
                f"Status: *{status_label(ticket.status)}* · Department: {escape(ticket.department)} · "
                f"Priority: {ticket.priority.value} · Assignee: "
                f"{user_ref(ticket.assignee) if ticket.assignee else '_unassigned_'}"
            ),
        }
    ]


def ticket_list_text(tickets: Sequence[Ticket]) -> str:
    """``/ticket mine``: the requester's open tickets, one line each."""
    if not tickets:
        return "You have no open tickets."
    lines = [f"*Your open tickets* ({len(tickets)}):"]
    for t in tickets:
        lines.append(
            f"• *#{t.id}* {escape(clip(t.subject or t.summary, 80))} — {status_label(t.status)}, "
            f"{escape(t.department)}, {t.priority.value}"
        )
    return "\n".join(lines)


HELP_TEXT = "\n".join(
    [
        "*Support tickets*",
        "• `/ticket <what you need>` opens a ticket; I reply here with its number and the team handling it.",
        "• `/ticket` on its own opens a form (title, description, urgency).",
        "• `/ticket status 123` shows one of your tickets.",
        "• `/ticket mine` lists your open tickets.",
        "• On any message: *More actions → Create ticket from message*.",
    ]
)


# -- the /ticket modal --------------------------------------------------------------------------------------------

URGENCIES = ("low", "medium", "high", "urgent")


def ticket_modal(private_metadata: dict[str, str]) -> Block:
    """The form ``/ticket`` opens without text; ``private_metadata`` carries where to answer."""
    return {
        "type": "modal",
        "callback_id": MODAL,
        "title": plain("New support ticket", 24),
        "submit": plain("Open ticket", 24),
        "close": plain("Cancel", 24),
        "private_metadata": json.dumps(private_metadata)[:3000],
        "blocks": [
            {
                "type": "input",
                "block_id": "title",
                "label": plain("Title"),
                "element": {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "max_length": 150,
                    "placeholder": plain("e.g. Laptop will not start"),
                },
            },
            {
                "type": "input",
                "block_id": "description",
                "label": plain("Description"),
                "element": {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "multiline": True,
                    "max_length": 3000,
                    "placeholder": plain("What happened, since when, what you tried"),
                },
            },
            {
                "type": "input",
                "block_id": "urgency",
                "label": plain("Urgency"),
                "element": {
                    "type": "static_select",
                    "action_id": "value",
                    "initial_option": option("Medium", "medium"),
                    "options": [option(u.capitalize(), u) for u in URGENCIES],
                },
            },
        ],
    }


def modal_values(view: dict[str, Any]) -> dict[str, str]:
    """The submitted form as {"title", "description", "urgency"} (missing fields are empty strings)."""
    values = view.get("state", {}).get("values", {})

    def field(block_id: str) -> str:
        element = values.get(block_id, {}).get("value", {})
        if element.get("type") == "static_select":
            selected = element.get("selected_option") or {}
            return str(selected.get("value") or "")
        return str(element.get("value") or "")

    return {"title": field("title"), "description": field("description"), "urgency": field("urgency")}


def modal_errors(values: dict[str, str]) -> dict[str, str]:
    """Validation errors keyed by block_id, as ``response_action: errors`` shows them under each field."""
    errors: dict[str, str] = {}
    title = values["title"].strip()
    if len(title) < 3:
        errors["title"] = "Please give your request a short title (at least 3 characters)."
    elif len(title) > 150:
        errors["title"] = "Please keep the title under 150 characters."
    if not values["description"].strip():
        errors["description"] = "Please describe the problem, so the right team can pick it up."
    elif len(values["description"]) > 3000:
        errors["description"] = "Please keep the description under 3000 characters."
    if values["urgency"] not in URGENCIES:
        errors["urgency"] = "Please choose an urgency."
    return errors
