"""Slack channel: the Bolt app (`/ticket`, its modal, the message shortcut, card buttons) and how it is wired in.

A request that files a ticket is committed before it is acknowledged, on a work pool of our own, and the ack
waits for that commit for at most ``STORE_BEFORE_ACK_SECONDS`` (a commit takes milliseconds; a stalled database
must not push the ack past Slack's 3 s). Nothing else waits: the classifier, lookups and Web API calls run after
the ack. The stored InboundRecord (deduplicated by ``trigger_id`` or view id) wakes the inbound workers; the
Pipeline classifies and routes it; the outbox delivers the requester's answer and the department card (see
``bot.slack_delivery``). Card buttons change the ticket through the Pipeline, only for the department's agents and
the admins.
Socket Mode (default) or HTTP mode (``bot.http`` serves ``/slack/events``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.authorization import AuthorizeResult
from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError

from bot.blocks import (
    CLAIM,
    HELP_TEXT,
    MODAL,
    REROUTE,
    SET_STATUS,
    SHORTCUT,
    modal_errors,
    modal_values,
    ticket_list_text,
    ticket_modal,
    ticket_summary_blocks,
)
from bot.slack_delivery import SlackDelivery, refresh_item
from bot.slack_intake import decode_slack, parse_command, record_from_command, record_from_shortcut, record_from_view
from core.config import Config, Secrets
from core.errors import ConfigError, InvalidInput, NotFound, TicketbotError
from core.inbound import InboundRecord, Received
from core.message import Channel
from core.outbox import OutboxKind, Sender
from core.pipeline import Decoder, Pipeline
from core.ports import TicketFilter
from core.ticket import Status, Ticket
from storage.store import SqlStore

log = logging.getLogger(__name__)

COMMAND = "/ticket"
SLACK_OUTBOX_KINDS = frozenset(
    {OutboxKind.SLACK_POST, OutboxKind.SLACK_UPDATE, OutboxKind.SLACK_RESPOND, OutboxKind.SLACK_DM}
)
LISTENER_THREADS = 16  # Bolt's pool: runs only the ack functions (Bolt's default is 5)
WORK_THREADS = 8  # our pool: the store write before an ack, and what follows an ack (lookups, answers to clicks)
# Persist before acknowledging, but never past Slack's 3 s: a commit takes milliseconds; if the database has not
# answered by then, the ack goes out anyway and the commit's outcome reaches the user when it comes.
STORE_BEFORE_ACK_SECONDS = 1.5
NOT_SAVED = ":warning: Sorry, I could not save your request just now. Please try again in a minute."
USERGROUP_TTL = 300.0


class AgentDirectory:
    """Who may act on a department's tickets: its ``agents``, members of its ``agent_usergroup``, and admins.

    User group members come from usergroups.users.list, cached for ``ttl`` seconds; when Slack cannot answer,
    the last known members are used (none if never known): a refusal is safer than a wrong permission.
    """

    def __init__(
        self,
        *,
        config: Config,
        client: WebClient,
        ttl: float = USERGROUP_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.client = client
        self.ttl = ttl
        self.clock = clock
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def may_act(self, user: str, department: str) -> bool:
        if user in self.config.slack.admins:
            return True
        dept = self.config.department(department)
        if dept is None:
            return False
        return user in dept.agents or (dept.agent_usergroup is not None and user in self.members(dept.agent_usergroup))

    def is_agent(self, user: str) -> bool:
        """An admin or an agent of any department (they may look up any ticket)."""
        return any(self.may_act(user, d.name) for d in self.config.departments) or user in self.config.slack.admins

    def members(self, group: str) -> frozenset[str]:
        now = self.clock()
        with self._lock:
            cached = self._groups.get(group)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        try:
            users = frozenset(str(u) for u in self.client.usergroups_users_list(usergroup=group)["users"])
        except (SlackClientError, OSError, ValueError, KeyError) as exc:
            log.warning("slack: cannot list user group %s (%s); using the last known members", group, exc)
            return cached[1] if cached is not None else frozenset()
        with self._lock:
            self._groups[group] = (now, users)
        return users


class _QuietBoltLogs(logging.Filter):
    """Drops Bolt's startup notes that our token is "unused": we authorize with it ourselves (see SlackChannel)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "will be unused" not in message and "will be ignored" not in message


class SlackChannel:
    """The Slack side of ticketbot as one runtime component.

    ``start()`` checks the token and every configured channel (in the background, logging what is wrong) and, in
    Socket Mode, connects to Slack; in HTTP mode ``bot.http`` routes ``/slack/events`` to ``self.app``.
    """

    name = "slack"

    def __init__(
        self,
        *,
        config: Config,
        secrets: Secrets,
        store: SqlStore,
        pipeline: Pipeline,
        wake: Callable[[], None] | None = None,
    ) -> None:
        if secrets.slack_bot_token is None:
            raise ConfigError("Slack needs SLACK_BOT_TOKEN in the environment")
        self.mode = config.slack.mode
        signing_secret = secrets.slack_signing_secret.get_secret_value() if secrets.slack_signing_secret else ""
        if self.mode == "http" and not signing_secret:
            raise ConfigError("slack.mode: 'http' needs SLACK_SIGNING_SECRET in the environment")
        if self.mode == "socket" and secrets.slack_app_token is None:
            raise ConfigError("slack.mode: 'socket' needs SLACK_APP_TOKEN (an xapp- token) in the environment")
        self.config = config
        self.store = store
        self.pipeline = pipeline
        self._wake = wake or (lambda: None)
        self._bot_token = secrets.slack_bot_token.get_secret_value()
        self._app_token = secrets.slack_app_token.get_secret_value() if secrets.slack_app_token else ""
        self._bot_user_id: str | None = None
        self._bot_id: str | None = None
        self.client = self.web_client()
        self.delivery = SlackDelivery(client=self.web_client(), store=store, config=config)
        self.directory = AgentDirectory(config=config, client=self.client)
        self._executor = ThreadPoolExecutor(max_workers=LISTENER_THREADS, thread_name_prefix="slack-listener")
        self._work = ThreadPoolExecutor(max_workers=WORK_THREADS, thread_name_prefix="slack-work")
        bolt_log = logging.getLogger("bot.slack.bolt")
        if not any(isinstance(f, _QuietBoltLogs) for f in bolt_log.filters):
            bolt_log.addFilter(_QuietBoltLogs())
        # authorize= instead of token=: Bolt would otherwise call auth.test on the first request, before its ack.
        self.app = App(
            client=self.client,
            signing_secret=signing_secret,
            authorize=self._authorizer(),
            request_verification_enabled=True,  # always: a request without a valid v0 signature gets 401
            process_before_response=False,
            listener_executor=self._executor,
            logger=bolt_log,
            name="ticketbot",
        )
        self._register()
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socket: SocketModeHandler | None = None
        self.store_wait = STORE_BEFORE_ACK_SECONDS

    def web_client(self) -> WebClient:
        """A Web API client for ``slack.api_url`` (Slack's, a proxy, or the test fake)."""
        base_url = self.config.slack.api_url.rstrip("/") + "/"  # slack_sdk appends method names as they are
        return WebClient(token=self._bot_token, base_url=base_url, timeout=10)

    def set_wake(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def senders(self) -> dict[OutboxKind, Sender]:
        return self.delivery.senders()

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._spawn("slack-startup-check", self._startup_checks)
        if self.mode == "socket":
            self._socket = SocketModeHandler(self.app, app_token=self._app_token, web_client=self.client)
            self._spawn("slack-socket-connect", self._connect_socket)
        self.name = f"slack ({'Socket Mode' if self.mode == 'socket' else 'HTTP mode, /slack/events'})"

    def stop(self) -> None:
        self._stopping.set()
        if self._socket is not None:
            self._socket.close()  # type: ignore[no-untyped-call]
            self._socket = None
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads.clear()
        self.connected.clear()
        # Requests already acknowledged finish storing before we return (each is one short transaction).
        self._executor.shutdown(wait=True)
        self._work.shutdown(wait=True)

    def ready(self) -> bool:
        """For a readiness probe: in Socket Mode, whether a live session exists (HTTP mode needs none)."""
        if self.mode != "socket":
            return True
        socket = self._socket
        return socket is not None and socket.client.is_connected()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _startup_checks(self) -> None:
        try:
            identity = self.client.auth_test()
        except (SlackClientError, OSError, ValueError) as exc:
            log.error("slack: auth.test failed (%s); check SLACK_BOT_TOKEN and slack.api_url", exc)
        else:
            self._bot_user_id = identity.get("user_id")
            self._bot_id = identity.get("bot_id")
            log.info(
                "slack: signed in as @%s in %s (%s)",
                identity.get("user"),
                identity.get("team"),
                identity.get("team_id"),
            )
        if not self._stopping.is_set():
            self.delivery.check_channels()

    def _connect_socket(self) -> None:
        delay = 1.0
        while not self._stopping.is_set() and self._socket is not None:
            socket = self._socket
            try:
                socket.client.wss_uri = None  # a fresh URL from apps.connections.open on every attempt
                socket.connect()  # type: ignore[no-untyped-call]
            except (SlackClientError, OSError, ValueError, ConnectionError) as exc:
                log.error("slack: Socket Mode connection failed (%s); retrying in %.0fs", exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 60.0)
                continue
            log.info("slack: Socket Mode connected")
            self.connected.set()
            return

    def _authorizer(self) -> Callable[..., AuthorizeResult]:
        """Bolt's ``authorize``: our one bot token, no network call (a plain function: Bolt injects by name)."""

        def authorize(enterprise_id: str | None, team_id: str | None, user_id: str | None) -> AuthorizeResult:
            return AuthorizeResult(
                enterprise_id=enterprise_id,
                team_id=team_id,
                bot_token=self._bot_token,
                bot_user_id=self._bot_user_id,
                bot_id=self._bot_id,
                user_id=user_id,
            )

        return authorize

    # -- listeners ----------------------------------------------------------------------------------------------

    def _register(self) -> None:
        # Plain listeners that ack and hand the rest to the work pool. Not Bolt's lazy listeners: those share the
        # listener pool with the ack functions, so a stalled database could keep later acks waiting.
        self.app.command(COMMAND)(self._command_ack)
        self.app.view(MODAL)(self._modal_ack)
        self.app.shortcut(SHORTCUT)(self._shortcut_ack)
        for action_id in (CLAIM, SET_STATUS, REROUTE):
            self.app.action(action_id)(self._action_ack)

    def _later(self, work: Callable[..., None], *args: Any) -> None:
        """Run ``work(*args)`` after the ack, on the work pool: database and Web API calls never hold up an ack."""
        try:
            self._work.submit(self._guarded, work, *args)
        except RuntimeError:  # the pool is shut down: we are stopping
            log.warning("slack: stopping; %s dropped", work.__name__)

    @staticmethod
    def _guarded(work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        except Exception:  # noqa: BLE001 - a pool would swallow it silently; log it instead
            log.exception("slack: %s failed", work.__name__)

    def _command_ack(self, ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        """Within Slack's 3 s: a new request is committed, then acknowledged; lookups are answered after the ack."""
        command = parse_command(str(body.get("text") or ""))

        def tell(text: str) -> None:
            respond(text=text, response_type="ephemeral", replace_original=False)

        if command.kind == "help":
            ack(text=HELP_TEXT)
        elif command.kind == "modal":
            ack()
            self._open_modal(client, body, respond)  # the trigger_id expires 3 s after the command
        elif command.kind == "create":
            self._store_then_ack(
                lambda: record_from_command(body),
                lambda saved: ack(text=":inbox_tray: Got it, filing your request…" if saved else NOT_SAVED),
                tell,
            )
        else:
            ack()
            self._later(self._command_work, body, respond)

    def _command_work(self, body: dict[str, Any], respond: Respond) -> None:
        """``/ticket status N`` and ``/ticket mine``, after the ack."""
        command = parse_command(str(body.get("text") or ""))
        user = str(body.get("user_id") or "")

        def tell(text: str) -> None:
            respond(text=text, response_type="ephemeral", replace_original=False)

        try:
            if command.kind == "status" and command.ticket_id is not None:
                ticket = self.store.get_ticket(command.ticket_id)
                if ticket is None or not (ticket.requester == user or self.directory.is_agent(user)):
                    tell(f"I can't find ticket #{command.ticket_id} among yours. Try `/ticket mine`.")
                    return
                blocks = ticket_summary_blocks(ticket)
                respond(text=f"Ticket #{ticket.id}", blocks=blocks, response_type="ephemeral", replace_original=False)
            elif command.kind == "mine":
                tickets = self.store.list_tickets(TicketFilter(requester=user, open_only=True, limit=20))
                tell(ticket_list_text(tickets))
        except TicketbotError:
            log.exception("slack: /ticket %s for %s failed", command.kind, user)
            tell("Sorry, I can't look that up right now. Please try again in a minute.")

    def _open_modal(self, client: WebClient, body: dict[str, Any], respond: Respond) -> None:
        context = {"channel_id": str(body.get("channel_id") or ""), "response_url": str(body.get("response_url") or "")}
        try:
            client.views_open(trigger_id=body["trigger_id"], view=ticket_modal(context))
        except (SlackClientError, OSError) as exc:
            log.warning("slack: views.open failed: %s", exc)
            respond(
                text="I couldn't open the form. Describe your request inline instead: `/ticket <what you need>`.",
                response_type="ephemeral",
            )

    def _modal_ack(self, ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        errors = modal_errors(modal_values(body["view"]))
        if errors:
            ack(response_action="errors", errors=errors)  # shown under each field; the form stays open
            return
        record = record_from_view(body)
        user = str((body.get("user") or {}).get("id") or "")

        def answer(saved: bool) -> None:
            if saved:
                ack()
            else:  # the form stays open with what was typed, so submitting again is one click
                ack(response_action="errors", errors={"description": NOT_SAVED})

        self._store_then_ack(lambda: record, answer, lambda text: self._tell(client, user, record, text))

    def _shortcut_ack(self, ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        def tell(text: str) -> None:
            respond(text=text, response_type="ephemeral", replace_original=False)

        def answer(saved: bool) -> None:
            ack()
            if not saved:
                self._later(tell, NOT_SAVED)

        self._store_then_ack(lambda: record_from_shortcut(body, self._permalink(client, body)), answer, tell)

    def _permalink(self, client: WebClient, body: dict[str, Any]) -> str | None:
        """The shortcut's message link (chat.getPermalink), or None: the ticket is filed without it."""
        channel = str((body.get("channel") or {}).get("id") or "")
        ts = str(body.get("message_ts") or (body.get("message") or {}).get("ts") or "")
        permalink = None
        if channel and ts:
            try:
                permalink = str(client.chat_getPermalink(channel=channel, message_ts=ts)["permalink"])
            except (SlackClientError, OSError, KeyError) as exc:
                log.info("slack: no permalink for %s/%s: %s", channel, ts, exc)
        return permalink

    def _store_then_ack(
        self,
        make_record: Callable[[], InboundRecord],
        answer: Callable[[bool], object],
        tell: Callable[[str], None],
    ) -> None:
        """Persist before acknowledging: commit the request on the work pool, then ``answer(saved)`` (which acks).

        The user hears back from the outbox once the ticket is routed. If the commit has not finished within
        ``store_wait``, the ack goes out anyway (Slack shows an error for an unanswered request and never
        redelivers a slash command) and the commit's outcome is handled when it comes: ``tell`` the user if it
        failed.
        """

        def store() -> tuple[InboundRecord, Received]:
            record = make_record()
            return record, self.store.receive(record)

        try:
            future = self._work.submit(store)
        except RuntimeError:  # the pool is shut down: we are stopping
            log.warning("slack: stopping; request not stored")
            answer(False)
            return
        try:
            saved = self._settle(future, tell=None, timeout=self.store_wait)
        except FutureTimeout:
            log.warning("slack: the database took over %.1f s; acknowledged before the commit", self.store_wait)
            answer(True)
            future.add_done_callback(lambda done: self._settle(done, tell=tell, timeout=0))
            return
        answer(saved)

    def _settle(
        self, future: Future[tuple[InboundRecord, Received]], *, tell: Callable[[str], None] | None, timeout: float
    ) -> bool:
        """The commit's outcome: log it and wake the workers, or (when the ack has gone out already) tell the user."""
        try:
            record, received = future.result(timeout=timeout)
        except FutureTimeout:
            raise
        except Exception:  # noqa: BLE001 - any failure to store is answered the same way, and logged
            log.exception("slack: could not store a request")
            if tell is not None:
                tell(NOT_SAVED)
            return False
        self._stored(record, received)
        return True

    def _stored(self, record: InboundRecord, received: Received) -> None:
        if received.created:
            log.info("slack: %s stored as inbound %d", record.dedupe_key, received.id)
            self._wake()
        else:
            log.info("slack: %s was already stored (inbound %d); retry ignored", record.dedupe_key, received.id)

    def _tell(self, client: WebClient, user: str, record: InboundRecord, text: str) -> None:
        """Tell a modal's submitter something before any ticket exists: a DM (a modal has no response_url)."""
        try:
            client.chat_postMessage(channel=user, text=text)
        except (SlackClientError, OSError) as exc:
            log.warning("slack: could not tell %s about %s: %s", user, record.dedupe_key, exc)

    def _action_ack(self, ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()
        self._later(self._action_work, body, action, respond)

    def _action_work(self, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        """Claim / status / reroute on a card: allowed to the department's agents and admins, recorded as events."""
        user = str((body.get("user") or {}).get("id") or "")
        action_id = str(action.get("action_id") or "")
        raw = str(action.get("value") or (action.get("selected_option") or {}).get("value") or "")
        id_text, _, argument = raw.partition(":")

        def tell(text: str) -> None:
            respond(text=text, response_type="ephemeral", replace_original=False)

        if not id_text.isdigit():
            log.warning("slack: %s from %s with a bad value %r", action_id, user, raw)
            return
        try:
            ticket = self.store.get_ticket(int(id_text))
            if ticket is None:
                tell(f"Ticket #{id_text} no longer exists.")
                return
            if not self.directory.may_act(user, ticket.department):
                log.info(
                    "slack: refused %s on ticket #%d to %s (not a %s agent)",
                    action_id,
                    ticket.id,
                    user,
                    ticket.department,
                )
                tell(f":no_entry: Only {ticket.department} agents and admins can change ticket #{ticket.id}.")
                return
            updated = self._apply(action_id, ticket, user, argument, tell)
            if updated is not None:
                self.store.enqueue([refresh_item(updated)])
        except (InvalidInput, NotFound) as exc:
            tell(str(exc))
        except TicketbotError:
            log.exception("slack: %s on ticket #%s by %s failed", action_id, id_text, user)
            tell(":warning: Sorry, that change could not be saved. Please try again.")

    def _apply(
        self, action_id: str, ticket: Ticket, user: str, argument: str, tell: Callable[[str], None]
    ) -> Ticket | None:
        if action_id == CLAIM:
            if ticket.assignee == user:
                tell(f"Ticket #{ticket.id} is already yours.")
                return None
            return self.store.assign(ticket.id, user, actor=user, compose=lambda t: [refresh_item(t)])
        if action_id == SET_STATUS:
            try:
                status = Status(argument)
            except ValueError as exc:
                raise InvalidInput(f"unknown status {argument!r}") from exc
            return self.pipeline.change_status(ticket.id, status, actor=user)
        if action_id == REROUTE:
            return self.pipeline.reroute(ticket.id, argument, actor=user)
        return None


def slack_outbox_kinds(secrets: Secrets) -> set[OutboxKind]:
    """The outbox kinds the Pipeline should enqueue: Slack's four when a bot token is set, else none."""
    return set(SLACK_OUTBOX_KINDS) if secrets.slack_bot_token is not None else set()


def create_slack_app(
    *,
    config: Config,
    secrets: Secrets,
    store: SqlStore,
    pipeline: Pipeline,
    wake: Callable[[], None] | None = None,
) -> SlackChannel:
    """The Slack channel for ``config.slack.mode``; no network call happens until ``start()``.

    Raises:
        ConfigError: a token the mode needs is missing from the environment.
    """
    return SlackChannel(config=config, secrets=secrets, store=store, pipeline=pipeline, wake=wake)


def slack_components(
    config: Config,
    secrets: Secrets,
    store: SqlStore,
    pipeline: Pipeline,
    wake: Callable[[], None] | None = None,
) -> tuple[dict[OutboxKind, Sender], list[SlackChannel], dict[Channel, Decoder]]:
    """Everything the runtime needs for Slack: outbox senders, the component to start, the inbound decoder.

    Without SLACK_BOT_TOKEN: no senders and no component (the bot runs without Slack), but still the decoder,
    so Slack requests stored earlier are processed.
    """
    decoders: dict[Channel, Decoder] = {Channel.SLACK: decode_slack}
    if secrets.slack_bot_token is None:
        return {}, [], decoders
    channel = create_slack_app(config=config, secrets=secrets, store=store, pipeline=pipeline, wake=wake)
    return channel.senders(), [channel], decoders
