"""Deliver stage for Slack: the outbox senders for department cards, thread notes, requester replies and DMs.

Every Slack post goes through here from the outbox dispatcher, which retries what fails. Slack's answers become the
core's delivery errors at this edge (``slack_error``): a 429 is a DeliveryError carrying Retry-After; a channel the
bot cannot post to falls back to ``slack.triage_channel`` and alerts the admins; an error an operator can fix (a
revoked token, a missing scope) stays retryable so nothing is lost; anything else is permanent and parks the item.

Cards are rendered from the ticket as it is when the item is sent, so a delayed post still shows the current state.
Each post records ``"<channel>:<ts>"`` as its ``sent_ref``; follow-ups thread under the card and refresh it in place.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import SlackResponse
from slack_sdk.webhook import WebhookClient

from bot.blocks import (
    ack_blocks,
    ack_text,
    card_text,
    channel_ref,
    comment_note,
    escape,
    status_dm_text,
    status_note,
    ticket_card,
    user_ref,
)
from core.config import Config
from core.errors import DeliveryError, PermanentDeliveryError, TicketbotError
from core.outbox import OutboxItem, OutboxKind, OutboxStatus, Sender, StoredOutboxItem
from core.ticket import EventKind, Status, Ticket, TicketEvent

log = logging.getLogger(__name__)

# The bot cannot post there: fall back to the triage channel and tell the admins.
UNREACHABLE = frozenset({"not_in_channel", "channel_not_found", "is_archived"})
# An operator can fix these (token, scopes, workspace settings) or Slack is having trouble: keep retrying.
RETRYABLE = frozenset(
    {
        "ratelimited",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "not_allowed_token_type",
        "team_access_not_granted",
        "org_login_required",
        "ekm_access_denied",
        "access_denied",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
    }
)
CARD_METADATA_TYPE = "ticketbot_ticket"
DIGEST_METADATA_TYPE = "ticketbot_digest"  # digest posts carry their outbox dedupe key under it
ALERT_INTERVAL = 600.0  # seconds between two admin alerts about the same broken channel


class ChannelUnreachable(PermanentDeliveryError):
    """Raised when Slack says the bot cannot post in a channel (not a member, no such channel, archived)."""

    def __init__(self, channel: str, error: str) -> None:
        super().__init__(f"cannot post in {channel}: {error}")
        self.channel = channel
        self.error = error


class SlackStore(Protocol):
    """What delivery reads and writes in storage (SqlStore implements it)."""

    def get_ticket(self, ticket_id: int) -> Ticket | None: ...

    def ticket_events(self, ticket_id: int) -> list[TicketEvent]: ...

    def slack_posts(self, ticket_id: int) -> list[StoredOutboxItem]: ...

    def enqueue(self, items: Sequence[OutboxItem]) -> None: ...


def header(headers: Mapping[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return str(value[0] if isinstance(value, list | tuple) else value)
    return None


def retry_after(headers: Mapping[str, Any]) -> float | None:
    value = header(headers, "retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def slack_error(exc: SlackApiError, what: str, channel: str | None = None) -> DeliveryError:
    """Slack's answer to a failed call as the core's delivery error (see the module docstring)."""
    status = exc.response.status_code
    data = exc.response.data if isinstance(exc.response.data, dict) else {}
    error = str(data.get("error") or f"HTTP {status}")
    if status == 429 or error == "ratelimited":
        return DeliveryError(f"{what}: rate limited", retry_after=retry_after(exc.response.headers) or 1.0)
    if status >= 500:
        return DeliveryError(f"{what}: Slack answered HTTP {status} ({error})")
    if error in UNREACHABLE and channel is not None:
        return ChannelUnreachable(channel, error)
    if error in RETRYABLE:
        return DeliveryError(f"{what}: {error} (fix the Slack app or token; retrying)")
    return PermanentDeliveryError(f"{what}: {error}")


def call(what: str, fn: Callable[..., SlackResponse], **kwargs: Any) -> SlackResponse:
    """Call one Web API method, translating every failure into a DeliveryError (transient) or a permanent one."""
    try:
        return fn(**kwargs)
    except SlackApiError as exc:
        channel = kwargs.get("channel")
        raise slack_error(exc, what, str(channel) if channel else None) from exc
    except (SlackClientError, OSError, ValueError) as exc:  # connection refused, timeout, unreadable answer
        raise DeliveryError(f"{what}: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class CardRef:
    """Where a ticket's card was posted."""

    channel: str
    ts: str


def is_card(item: StoredOutboxItem) -> bool:
    event = str(item.payload.get("event") or "")
    return event == "created" or event.startswith("rerouted-")


def card_refs(posts: Sequence[StoredOutboxItem]) -> list[CardRef]:
    """The ticket's sent cards, oldest first."""
    refs = []
    for item in posts:
        if is_card(item) and item.status is OutboxStatus.SENT and item.sent_ref and ":" in item.sent_ref:
            channel, ts = item.sent_ref.split(":", 1)
            refs.append(CardRef(channel, ts))
    return refs


def refresh_item(ticket: Ticket) -> OutboxItem:
    """An outbox item that redraws every card of ``ticket``; one per ticket state, so repeats collapse."""
    return OutboxItem(
        kind=OutboxKind.SLACK_UPDATE,
        dedupe_key=f"slack_update:{ticket.id}:{ticket.updated_at.isoformat()}",
        ticket_id=ticket.id,
        payload={"ticket_id": ticket.id},
    )


@dataclass
class _KindSender:
    """Adapts one SlackDelivery method to the outbox's Sender protocol; only delivery errors leave it."""

    deliver: Callable[[StoredOutboxItem], str | None]

    def send(self, item: StoredOutboxItem) -> str | None:
        try:
            return self.deliver(item)
        except DeliveryError:
            raise
        except TicketbotError as exc:  # the database, while reading the ticket: try again later
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            # A malformed item must not wedge the dispatcher's batch: park it, visibly.
            log.exception("outbox %s (%s) is malformed", item.id, item.kind)
            raise PermanentDeliveryError(f"malformed {item.kind} item: {type(exc).__name__}: {exc}") from exc


class SlackDelivery:
    """Sends SLACK_POST, SLACK_UPDATE, SLACK_RESPOND and SLACK_DM outbox items with one WebClient."""

    def __init__(self, *, client: WebClient, store: SlackStore, config: Config) -> None:
        self.client = client
        self.store = store
        self.config = config
        self._alerted: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        hosts = {"hooks.slack.com"}
        api_host = urlparse(config.slack.api_url).hostname
        if api_host:
            hosts.add(api_host)  # a proxy or the test fake serves response URLs too
        self._response_hosts = frozenset(hosts)

    def senders(self) -> dict[OutboxKind, Sender]:
        return {
            OutboxKind.SLACK_POST: _KindSender(self.post),
            OutboxKind.SLACK_UPDATE: _KindSender(self.update),
            OutboxKind.SLACK_RESPOND: _KindSender(self.respond),
            OutboxKind.SLACK_DM: _KindSender(self.dm),
            OutboxKind.SLACK_DIGEST: _KindSender(self.digest),
        }

    # -- department channels ----------------------------------------------------------------------------------

    def post(self, item: StoredOutboxItem) -> str | None:
        """A card (events "created", "rerouted-…"), an admin alert ("alert"), or a note in the card's thread."""
        payload = item.payload
        event = str(payload.get("event") or "created")
        channel = str(payload["channel"])
        if event == "alert":
            response = call("admin alert", self.client.chat_postMessage, channel=channel, **self._plain(payload))
            return f"{response['channel']}:{response['ts']}"
        ticket = self._ticket(payload)
        if is_card(item):
            ref = self._post_card(ticket, channel)
            if event != "created":
                self._refresh_later(ticket)  # the older cards now show the new department
            return ref
        posts = self.store.slack_posts(ticket.id)
        cards = card_refs(posts)
        target = next((c for c in reversed(cards) if c.channel == channel), cards[-1] if cards else None)
        if target is None and any(is_card(p) and p.status is OutboxStatus.PENDING and p.id != item.id for p in posts):
            # Keep the thread in order: the note waits for its card (which may be waiting out a 429).
            raise DeliveryError(f"ticket #{ticket.id}: its card is not posted yet", retry_after=5.0)
        text = self._note(ticket, event, item)
        if target is None:
            ref = self._post_with_fallback(ticket, channel, text=text, blocks=None)
        else:
            ref = self._post_with_fallback(ticket, target.channel, text=text, blocks=None, thread_ts=target.ts)
        self._refresh_later(ticket)
        return ref

    def update(self, item: StoredOutboxItem) -> str | None:
        """Redraw every card of the ticket from its current state (chat.update); a vanished card is skipped."""
        ticket = self._ticket(item.payload)
        cards = card_refs(self.store.slack_posts(ticket.id))
        updated = 0
        for card in cards:
            try:
                call(
                    "chat.update",
                    self.client.chat_update,
                    channel=card.channel,
                    ts=card.ts,
                    text=card_text(ticket),
                    blocks=ticket_card(ticket, self.config.department_names, note=self._moved_note(ticket, card)),
                )
            except PermanentDeliveryError as exc:
                log.info("ticket #%d: card %s:%s not updated: %s", ticket.id, card.channel, card.ts, exc)
            else:
                updated += 1
        return f"updated {updated} card(s)"

    def _post_card(self, ticket: Ticket, channel: str) -> str:
        text = card_text(ticket)
        blocks = ticket_card(ticket, self.config.department_names)
        try:
            return self._chat_post(channel, text=text, blocks=blocks, ticket=ticket)
        except ChannelUnreachable as exc:
            fallback = self._fallback(ticket, exc)
            note = (
                f"Posted here because {channel_ref(channel)} ({escape(ticket.department)}) is unreachable: "
                f"`{exc.error}`."
            )
            blocks = ticket_card(ticket, self.config.department_names, note=note)
            return self._chat_post(fallback, text=text, blocks=blocks, ticket=ticket)

    def _post_with_fallback(
        self,
        ticket: Ticket,
        channel: str,
        *,
        text: str,
        blocks: list[dict[str, Any]] | None,
        thread_ts: str | None = None,
    ) -> str:
        try:
            return self._chat_post(channel, text=text, blocks=blocks, ticket=ticket, thread_ts=thread_ts)
        except ChannelUnreachable as exc:
            fallback = self._fallback(ticket, exc)
            return self._chat_post(fallback, text=f"Ticket #{ticket.id}: {text}", blocks=blocks, ticket=ticket)

    def _chat_post(
        self,
        channel: str,
        *,
        text: str,
        blocks: list[dict[str, Any]] | None,
        ticket: Ticket,
        thread_ts: str | None = None,
    ) -> str:
        kwargs: dict[str, Any] = {
            "channel": channel,
            "text": text,
            "link_names": False,
            "unfurl_links": False,
            "unfurl_media": False,
            "metadata": {"event_type": CARD_METADATA_TYPE, "event_payload": {"ticket_id": ticket.id}},
        }
        if blocks is not None:
            kwargs["blocks"] = blocks
        if thread_ts is not None:
            kwargs["thread_ts"] = thread_ts
        response = call("chat.postMessage", self.client.chat_postMessage, **kwargs)
        return f"{response.get('channel') or channel}:{response['ts']}"

    def _fallback(self, ticket: Ticket, exc: ChannelUnreachable) -> str:
        """The triage channel to post in instead of ``exc.channel``, after alerting the admins (throttled).

        Raises:
            PermanentDeliveryError: there is no triage channel, or it is the unreachable one.
        """
        triage = self.config.slack.triage_channel
        if not triage or triage == exc.channel:
            raise PermanentDeliveryError(f"{exc}; no other triage channel (slack.triage_channel) to fall back to")
        log.warning(
            "ticket #%d: cannot post in %s (%s, %s): posting in triage channel %s",
            ticket.id,
            exc.channel,
            ticket.department,
            exc.error,
            triage,
        )
        self._alert_admins(ticket, exc, triage)
        return triage

    def _alert_admins(self, ticket: Ticket, exc: ChannelUnreachable, triage: str) -> None:
        key = (exc.channel, exc.error)
        now = time.monotonic()
        with self._lock:
            last = self._alerted.get(key)
            if last is not None and now - last < ALERT_INTERVAL:
                return
            self._alerted[key] = now
        text = (
            f":rotating_light: Ticket #{ticket.id} for *{escape(ticket.department)}* could not be posted in "
            f"{channel_ref(exc.channel)}: `{exc.error}`. It is in {channel_ref(triage)} instead. "
            "Invite the bot to the channel (`/invite @ticketbot`) or fix `departments[].slack_channel`."
        )
        targets = [self.config.slack.admin_channel] if self.config.slack.admin_channel else self.config.slack.admins
        items = [
            OutboxItem(
                kind=OutboxKind.SLACK_POST,
                dedupe_key=f"slack_alert:{ticket.id}:{exc.channel}:{exc.error}:{target}",
                ticket_id=ticket.id,
                payload={"channel": target, "ticket_id": ticket.id, "event": "alert", "text": text},
            )
            for target in targets
        ]
        if not items:
            log.warning("no slack.admin_channel or slack.admins to alert about %s (%s)", exc.channel, exc.error)
            return
        self._enqueue(items)

    def _moved_note(self, ticket: Ticket, card: CardRef) -> str | None:
        dept = self.config.department(ticket.department)
        home = dept.slack_channel if dept else None
        if card.channel == home:
            return None
        where = f" in {channel_ref(home)}" if home else ""
        return f"Now handled by *{escape(ticket.department)}*{where}."

    def _note(self, ticket: Ticket, event: str, item: StoredOutboxItem) -> str:
        """The thread note for a comment or status change, from the ticket event the change recorded."""
        if event.startswith("comment-"):
            comment = self._event_for(ticket.id, EventKind.COMMENT, item)
            if comment is not None:
                return comment_note(
                    comment.actor,
                    ticket.requester_name if comment.actor == ticket.requester else "",
                    str(comment.data.get("text") or ""),
                    automated=bool(comment.data.get("automated")),
                )
        elif event.startswith("status-"):
            change = self._event_for(ticket.id, EventKind.STATUS, item)
            if change is not None and change.data.get("to") in Status._value2member_map_:
                return status_note(
                    change.actor, change.data.get("from"), Status(change.data["to"]), change.data.get("note")
                )
        return f"Ticket #{ticket.id} was updated."

    def _event_for(self, ticket_id: int, kind: EventKind, item: StoredOutboxItem) -> TicketEvent | None:
        # The store enqueues a change's items in the transaction that records its event, with the same time.
        events = [e for e in self.store.ticket_events(ticket_id) if e.kind is kind and e.at <= item.created_at]
        exact = [e for e in events if e.at == item.created_at]
        found = exact or events
        return found[-1] if found else None

    def _refresh_later(self, ticket: Ticket) -> None:
        current = self.store.get_ticket(ticket.id) or ticket
        self._enqueue([refresh_item(current)])

    def _enqueue(self, items: list[OutboxItem]) -> None:
        # After a successful post: failing here must not make the dispatcher send the post again.
        try:
            self.store.enqueue(items)
        except Exception:  # noqa: BLE001 - a lost refresh or alert is cosmetic; a duplicate post is not
            log.exception("could not enqueue %d follow-up Slack item(s)", len(items))

    # -- the requester --------------------------------------------------------------------------------------------

    def respond(self, item: StoredOutboxItem) -> str | None:
        """The requester's "Ticket #12 opened → IT Support (high)", in the conversation they asked in.

        Through ``response_url`` (ephemeral) while it is valid; then chat.postEphemeral in the channel; then a DM.
        """
        payload = item.payload
        ticket = self._ticket(payload)
        text, blocks = ack_text(ticket), ack_blocks(ticket)
        url = str(payload.get("response_url") or "")
        if url:
            if self._trusted(url):
                status, body = self._post_response_url(url, text, blocks)
                if 200 <= status < 300:
                    return "response_url"
                log.info("ticket #%d: response_url answered %d %s; falling back", ticket.id, status, body[:80])
            else:
                log.warning("ticket #%d: ignoring response_url on an unexpected host: %s", ticket.id, url[:80])
        user = str(payload.get("user") or ticket.requester)
        channel = str(payload.get("channel_id") or "")
        if channel and not channel.startswith("D"):
            try:
                call(
                    "chat.postEphemeral",
                    self.client.chat_postEphemeral,
                    channel=channel,
                    user=user,
                    text=text,
                    blocks=blocks,
                )
                return f"ephemeral:{channel}"
            except PermanentDeliveryError as exc:
                log.info("ticket #%d: ephemeral reply in %s failed (%s); sending a DM", ticket.id, channel, exc)
        return self._dm(user, text, blocks)

    def dm(self, item: StoredOutboxItem) -> str | None:
        """The requester's notice of a status change or resolution."""
        payload = item.payload
        ticket = self._ticket(payload)
        user = str(payload.get("user") or ticket.requester)
        return self._dm(user, status_dm_text(ticket, str(payload.get("note") or "")), None)

    def _dm(self, user: str, text: str, blocks: list[dict[str, Any]] | None) -> str:
        if not user_ref(user).startswith("<@"):
            raise PermanentDeliveryError(f"{user!r} is not a Slack user id")
        extra: dict[str, Any] = {"blocks": blocks} if blocks is not None else {}
        try:
            response = call("chat.postMessage", self.client.chat_postMessage, channel=user, text=text, **extra)
        except ChannelUnreachable:
            opened = call("conversations.open", self.client.conversations_open, users=user)
            im = str(opened["channel"]["id"])
            response = call("chat.postMessage", self.client.chat_postMessage, channel=im, text=text, **extra)
        return f"{response.get('channel') or user}:{response['ts']}"

    def _post_response_url(self, url: str, text: str, blocks: list[dict[str, Any]]) -> tuple[int, str]:
        webhook = WebhookClient(url, timeout=10, proxy=self.client.proxy, ssl=self.client.ssl)
        try:
            response = webhook.send(text=text, blocks=blocks, response_type="ephemeral", replace_original=False)
        except (SlackClientError, OSError, ValueError) as exc:
            raise DeliveryError(f"response_url: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 429:
            raise DeliveryError("response_url: rate limited", retry_after=retry_after(response.headers) or 1.0)
        if response.status_code >= 500:
            raise DeliveryError(f"response_url: HTTP {response.status_code}")
        return response.status_code, str(response.body or "")

    def _trusted(self, url: str) -> bool:
        parsed = urlparse(url)
        return parsed.scheme in ("https", "http") and parsed.hostname in self._response_hosts

    # -- digests (issue 6) -----------------------------------------------------------------------------------------

    def digest(self, item: StoredOutboxItem) -> str | None:
        """A digest post: blocks rendered from the stored digest; the admin one carries its chart as a file.

        With a chart the post is one files upload v2 (get an upload URL, send the PNG, complete the upload with
        the digest's blocks), so the chart and the digest arrive as one message. A retry starts over: an upload
        that was never completed is never shared, so a failure at any step cannot show the chart twice.
        Before posting, the channel's recent history is searched for this digest (by its metadata, or its
        chart's file name): a process that died after Slack accepted the post but before the outbox recorded
        it does not post it again.
        """
        from core.digest import digest_from_json, slack_blocks, slack_text

        payload = item.payload
        channel = str(payload["channel"])
        digest = digest_from_json(payload["digest"])
        chart = payload.get("chart_png")
        filename = f"ticketbot-{digest.period.key.replace(':', '-')}.png" if chart else None
        earlier = self._posted_before(item, channel, filename)
        if earlier is not None:
            log.info("digest %s: already in %s (an earlier attempt posted it)", item.dedupe_key, channel)
            return earlier
        blocks = slack_blocks(digest)
        if chart and filename:
            response = call(
                "files upload v2",
                self.client.files_upload_v2,
                channel=channel,
                file=base64.b64decode(str(chart)),
                filename=filename,
                title="Tickets per day per department, last 14 days",
                blocks=json.dumps(blocks),
            )
            files = response.get("files") or [{}]
            return f"{channel}:file:{files[0].get('id', '')}"
        response = call(
            "chat.postMessage",
            self.client.chat_postMessage,
            channel=channel,
            text=slack_text(digest),
            blocks=blocks,
            link_names=False,
            unfurl_links=False,
            unfurl_media=False,
            metadata={"event_type": DIGEST_METADATA_TYPE, "event_payload": {"key": item.dedupe_key}},
        )
        return f"{response.get('channel') or channel}:{response['ts']}"

    def _posted_before(self, item: StoredOutboxItem, channel: str, filename: str | None) -> str | None:
        """``"<channel>:<ts>"`` of this digest's post if it is already in the channel, else None.

        Reads the history since the item was queued (``channels:history``; ``groups:history`` for a private
        channel). When Slack will not show it, the post goes ahead: a rare duplicate beats a lost digest.
        """
        oldest = f"{item.created_at.timestamp() - 60:.6f}"
        try:
            response = self.client.conversations_history(
                channel=channel, oldest=oldest, limit=200, include_all_metadata=True
            )
        except SlackApiError as exc:
            if exc.response.status_code == 429:
                raise slack_error(exc, "conversations.history", channel) from exc
            log.info(
                "digest %s: cannot check %s for an earlier post (%s); posting",
                item.dedupe_key,
                channel,
                exc.response.get("error") if isinstance(exc.response.data, dict) else exc.response.status_code,
            )
            return None
        except (SlackClientError, OSError, ValueError) as exc:
            raise DeliveryError(f"conversations.history: {type(exc).__name__}: {exc}") from exc
        for message in response.get("messages") or []:
            metadata = message.get("metadata") or {}
            key = (metadata.get("event_payload") or {}).get("key")
            named = filename is not None and any(f.get("name") == filename for f in message.get("files") or [])
            if (metadata.get("event_type") == DIGEST_METADATA_TYPE and key == item.dedupe_key) or named:
                return f"{channel}:{message['ts']}"
        return None

    # -- shared ---------------------------------------------------------------------------------------------------

    def _ticket(self, payload: Mapping[str, Any]) -> Ticket:
        ticket_id = payload.get("ticket_id")
        ticket = self.store.get_ticket(int(ticket_id)) if isinstance(ticket_id, int | str) else None
        if ticket is None:
            raise PermanentDeliveryError(f"no ticket {ticket_id!r} to post about")
        return ticket

    @staticmethod
    def _plain(payload: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": str(payload.get("text") or ""), "link_names": False, "unfurl_links": False}

    # -- startup --------------------------------------------------------------------------------------------------

    def check_channels(self) -> list[str]:
        """Ask Slack about every configured channel (conversations.info); log and return what is wrong."""
        wanted: list[tuple[str, str]] = [
            (f"departments[{d.name}].slack_channel", d.slack_channel)
            for d in self.config.departments
            if d.slack_channel
        ]
        if self.config.slack.triage_channel:
            wanted.append(("slack.triage_channel", self.config.slack.triage_channel))
        if self.config.slack.admin_channel:
            wanted.append(("slack.admin_channel", self.config.slack.admin_channel))
        problems = []
        for key, channel in wanted:
            try:
                info = self.client.conversations_info(channel=channel)["channel"]
            except SlackApiError as exc:
                error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
                hint = {
                    "channel_not_found": "no such channel, or a private channel the bot was not invited to",
                    "missing_scope": "the app lacks channels:read / groups:read",
                }.get(str(error), "")
                reason = f"{error or exc.response.status_code}" + (f" ({hint})" if hint else "")
                problems.append(f"{key}: {channel}: {reason}")
                continue
            except (SlackClientError, OSError, ValueError) as exc:
                problems.append(f"{key}: {channel}: cannot reach Slack ({type(exc).__name__}: {exc})")
                continue
            name = f"#{info.get('name')}" if info.get("name") else channel
            if info.get("is_archived"):
                problems.append(f"{key}: {channel} ({name}) is archived")
            elif not info.get("is_member"):
                problems.append(
                    f"{key}: {channel} ({name}): the bot is not a member; invite it with /invite "
                    "(public channels also work with the chat:write.public scope)"
                )
        for problem in problems:
            log.warning("slack: %s", problem)
        if wanted and not problems:
            log.info("slack: all %d configured channels are reachable", len(wanted))
        return problems
