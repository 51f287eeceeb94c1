"""Test fake for Slack: a real local Web API server and a real Socket Mode WebSocket server.

``FakeSlackAPI`` serves ``/api/<method>`` on 127.0.0.1 at a free port; clients are pointed at it with
``base_url=api.api_url`` (the bot's ``slack.api_url``), so no network library is patched. It records every call
(form, query or JSON parameters), keeps the messages posted per channel (``chat.update`` edits them), models channel
membership (``add_channel(..., member=False)`` makes ``chat.postMessage`` answer ``not_in_channel``), and injects
faults per method: ``api.fail("chat.postMessage", status=429, retry_after=1)``. Any other path is a ``response_url``
(``api.response_url("abc")``); those calls are recorded under the method name ``"respond"``.

``FakeSocketModeServer`` is what ``apps.connections.open`` points at: it says hello to each client, pushes the
envelopes a test sends, and records the acks that come back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlparse

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

BOT_TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-1-test-token"
TEAM_ID = "T0TEST"
BOT_USER_ID = "U0BOT"


@dataclass(frozen=True, slots=True)
class Call:
    """One request as the fake saw it."""

    method: str
    params: Mapping[str, Any]
    headers: Mapping[str, str]  # lower-cased names
    at: float  # time.monotonic()


@dataclass
class Fault:
    """A canned failure for the next matching call of a method."""

    status: int = 200
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    where: dict[str, Any] = field(default_factory=dict)
    times: int = 1


@dataclass
class ChannelState:
    id: str
    name: str
    member: bool = True
    archived: bool = False
    private: bool = False


class FakeSlackAPI:
    """The Slack Web API and response URLs on 127.0.0.1 (see the module docstring)."""

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self.ws_url = "ws://127.0.0.1:9/link"  # set to a FakeSocketModeServer's url
        self.channels: dict[str, ChannelState] = {}
        self.usergroups: dict[str, list[str]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.files: dict[str, dict[str, Any]] = {}  # files upload v2: file id -> {filename, length, data, ...}
        self.ts_base = 1_700_000_000  # message ts = this + a counter; a test with a fixed clock can move it
        self._calls: list[Call] = []
        self._faults: dict[str, list[Fault]] = {}
        self._lock = threading.Condition()
        self._ts = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def response_url(self, name: str) -> str:
        return f"{self.url}/respond/{name}"

    def start(self) -> FakeSlackAPI:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-slack", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeSlackAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- setup ----------------------------------------------------------------------------------------------------

    def add_channel(
        self, channel_id: str, name: str, *, member: bool = True, archived: bool = False, private: bool = False
    ) -> None:
        self.channels[channel_id] = ChannelState(channel_id, name, member, archived, private)

    def fail(
        self,
        method: str,
        *,
        status: int = 200,
        error: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
        times: int = 1,
        **where: Any,
    ) -> None:
        """Fail the next ``times`` calls of ``method`` whose parameters match ``where``.

        ``status=429`` answers ``ratelimited`` with Retry-After; ``error=`` answers ``{"ok": false, "error": ...}``;
        ``body=`` answers that raw text or JSON.
        """
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        if status == 429 and error is None and body is None:
            error = "ratelimited"
        fault = Fault(status=status, error=error, headers=headers, body=body, where=where, times=times)
        with self._lock:
            self._faults.setdefault(method, []).append(fault)

    # -- assertions -----------------------------------------------------------------------------------------------

    def calls(self, method: str | None = None, **where: Any) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if (method is None or c.method == method) and _matches(c.params, where)]

    def wait_for(self, method: str, count: int = 1, timeout: float = 10.0, **where: Any) -> list[Call]:
        """The first ``count`` matching calls, waiting up to ``timeout`` seconds for them to arrive."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [c for c in self._calls if c.method == method and _matches(c.params, where)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = sorted({c.method for c in self._calls})
                    raise AssertionError(f"{len(found)}/{count} {method} calls after {timeout}s; methods seen: {seen}")
                self._lock.wait(remaining)

    def posts(self, channel: str) -> list[dict[str, Any]]:
        """Top-level messages in ``channel`` (thread replies excluded), as last updated."""
        with self._lock:
            return [m for m in self.messages.get(channel, []) if not m.get("thread_ts")]

    def replies(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages.get(channel, []) if m.get("thread_ts") == thread_ts]

    # -- the server side ------------------------------------------------------------------------------------------

    def handle(self, method: str, params: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            self._calls.append(Call(method, params, headers, time.monotonic()))
            self._lock.notify_all()
            fault = self._take_fault(method, params)
        if fault is not None:
            if fault.body is not None:
                return fault.status, fault.headers, fault.body
            return fault.status, fault.headers, {"ok": False, "error": fault.error or "fatal_error"}
        if method == "respond":
            return 200, {}, "ok"
        token = headers.get("authorization", "").removeprefix("Bearer ")
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != expected:
            return 200, {}, {"ok": False, "error": "invalid_auth" if token else "not_authed"}
        route = getattr(self, "api_" + method.replace(".", "_"), None)
        if route is None:
            return 200, {}, {"ok": False, "error": "unknown_method"} if self.strict else {"ok": True}
        return 200, {}, route(params)

    def _take_fault(self, method: str, params: Mapping[str, Any]) -> Fault | None:
        for fault in self._faults.get(method, []):
            if _matches(params, fault.where):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults[method].remove(fault)
                return fault
        return None

    def _next_ts(self) -> str:
        return f"{self.ts_base + next(self._ts)}.000100"

    def _reachable(self, channel: str) -> str | None:
        """Why the bot cannot post in ``channel`` (Slack's error code), or None."""
        if channel[:1] in ("U", "W", "D"):
            return None  # a DM: always open to the bot
        state = self.channels.get(channel)
        if state is None:
            return "channel_not_found"
        if state.archived:
            return "is_archived"
        if not state.member:
            return "not_in_channel"
        return None

    def api_auth_test(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "user": "ticketbot",
            "user_id": BOT_USER_ID,
            "bot_id": "B0BOT",
            "team": "Test",
            "team_id": TEAM_ID,
        }

    def api_apps_connections_open(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.ws_url}

    def api_chat_postMessage(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel", ""))
        error = self._reachable(channel)
        if error:
            return {"ok": False, "error": error}
        if channel[:1] in ("U", "W"):
            channel = "D" + channel[1:]
        message = {
            "ts": self._next_ts(),
            "text": params.get("text"),
            "blocks": params.get("blocks"),
            "thread_ts": params.get("thread_ts"),
            "metadata": params.get("metadata"),
        }
        with self._lock:
            self.messages.setdefault(channel, []).append(message)
        return {"ok": True, "channel": channel, "ts": message["ts"], "message": message}

    def api_chat_update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel", "")), str(params.get("ts", ""))
        with self._lock:
            for message in self.messages.get(channel, []):
                if message["ts"] == ts:
                    message.update(text=params.get("text"), blocks=params.get("blocks"), edited=True)
                    return {"ok": True, "channel": channel, "ts": ts}
        return {"ok": False, "error": "message_not_found"}

    def api_chat_postEphemeral(self, params: Mapping[str, Any]) -> dict[str, Any]:
        error = self._reachable(str(params.get("channel", "")))
        return {"ok": False, "error": error} if error else {"ok": True, "message_ts": self._next_ts()}

    def api_chat_getPermalink(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel, ts = params.get("channel"), str(params.get("message_ts", ""))
        return {
            "ok": True,
            "channel": channel,
            "permalink": f"https://example.slack.com/archives/{channel}/p{ts.replace('.', '')}",
        }

    def api_conversations_info(self, params: Mapping[str, Any]) -> dict[str, Any]:
        state = self.channels.get(str(params.get("channel", "")))
        if state is None:
            return {"ok": False, "error": "channel_not_found"}
        return {
            "ok": True,
            "channel": {
                "id": state.id,
                "name": state.name,
                "is_member": state.member,
                "is_archived": state.archived,
                "is_private": state.private,
            },
        }

    def api_conversations_open(self, params: Mapping[str, Any]) -> dict[str, Any]:
        users = str(params.get("users", ""))
        return {"ok": True, "channel": {"id": "D" + users.split(",")[0][1:]}}

    def api_usergroups_users_list(self, params: Mapping[str, Any]) -> dict[str, Any]:
        group = str(params.get("usergroup", ""))
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[group])}

    def api_views_open(self, params: Mapping[str, Any]) -> dict[str, Any]:
        view = params.get("view")
        view = json.loads(view) if isinstance(view, str) else view
        return {"ok": True, "view": {**(view or {}), "id": f"V{next(self._ts):08d}"}}

    def api_conversations_history(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Top-level messages newest first, from ``oldest`` on; metadata only with ``include_all_metadata``."""
        channel = str(params.get("channel", ""))
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        oldest = float(params.get("oldest") or 0)
        with_metadata = str(params.get("include_all_metadata", "")).lower() in ("1", "true")
        with self._lock:
            found = [
                {k: v for k, v in m.items() if with_metadata or k != "metadata"}
                for m in reversed(self.messages.get(channel, []))
                if not m.get("thread_ts") and float(m["ts"]) >= oldest
            ]
        return {"ok": True, "messages": found[: int(params.get("limit") or 100)], "has_more": False}

    # files upload v2: getUploadURLExternal -> POST the bytes to upload_url -> completeUploadExternal shares them.

    def api_files_getUploadURLExternal(self, params: Mapping[str, Any]) -> dict[str, Any]:
        file_id = f"F{next(self._ts):08d}"
        with self._lock:
            self.files[file_id] = {
                "id": file_id,
                "filename": params.get("filename"),
                "length": int(params.get("length") or 0),
                "data": None,
                "shared": False,
            }
        return {"ok": True, "upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def upload(self, file_id: str, data: bytes) -> tuple[int, dict[str, str], Any]:
        """The upload URL's side: keep the bytes (a call recorded as ``files.upload``)."""
        with self._lock:
            self._calls.append(Call("files.upload", {"file_id": file_id, "size": len(data)}, {}, time.monotonic()))
            self._lock.notify_all()
            fault = self._take_fault("files.upload", {"file_id": file_id})
            if fault is not None:
                return fault.status, fault.headers, fault.body if fault.body is not None else "error"
            if file_id not in self.files:
                return 404, {}, "no such upload"
            self.files[file_id]["data"] = data
        return 200, {}, f"OK - {len(data)}"

    def api_files_completeUploadExternal(self, params: Mapping[str, Any]) -> dict[str, Any]:
        files = params.get("files")
        files = json.loads(files) if isinstance(files, str) else files or []
        channel = str(params.get("channel_id") or "")
        with self._lock:
            for f in files:
                state = self.files.get(str(f.get("id")))
                if state is None or state["data"] is None:
                    return {"ok": False, "error": "file_upload_not_found"}
        if channel:
            error = self._reachable(channel)
            if error:
                return {"ok": False, "error": error}
        shared = []
        with self._lock:
            for f in files:
                state = self.files[str(f["id"])]
                state.update(title=f.get("title"), shared=bool(channel))
                shared.append({"id": state["id"], "title": state["title"], "name": state["filename"]})
            if channel:
                message = {
                    "ts": self._next_ts(),
                    "text": params.get("initial_comment") or "",
                    "blocks": params.get("blocks"),
                    "thread_ts": params.get("thread_ts"),
                    "files": shared,
                }
                self.messages.setdefault(channel, []).append(message)
        return {"ok": True, "files": shared}


def _matches(params: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    return all(params.get(k) == v for k, v in where.items())


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        fake: FakeSlackAPI = self.server.fake  # type: ignore[attr-defined]
        parsed = urlparse(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if parsed.path.startswith("/upload/"):
            status, extra_headers, body = fake.upload(parsed.path.removeprefix("/upload/"), raw)
            self._answer(status, extra_headers, body)
            return
        params: dict[str, Any] = dict(parse_qsl(parsed.query))
        content_type = self.headers.get("content-type", "")
        if raw and "json" in content_type:
            params.update(json.loads(raw))
        elif raw:
            params.update(parse_qsl(raw.decode("utf-8")))
        for key in ("blocks", "metadata", "view"):
            if isinstance(params.get(key), str) and params[key][:1] in ("[", "{"):
                params[key] = json.loads(params[key])
        headers = {k.lower(): v for k, v in self.headers.items()}
        if parsed.path.startswith("/api/"):
            method = parsed.path.removeprefix("/api/")
        else:
            method = "respond"
            params["_path"] = parsed.path
        status, extra_headers, body = fake.handle(method, params, headers)
        self._answer(status, extra_headers, body)

    def _answer(self, status: int, extra_headers: Mapping[str, str], body: Any) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("content-length", str(len(data)))
        for key, value in extra_headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


class FakeSocketModeServer:
    """A Socket Mode endpoint: ``hello`` on connect, envelopes pushed by ``send``, acks recorded by envelope id."""

    def __init__(self) -> None:
        self.acks: dict[str, dict[str, Any]] = {}
        self.sent_at: dict[str, float] = {}
        self.acked_at: dict[str, float] = {}
        self._connections: set[ServerConnection] = set()
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._server: Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-socket-mode", daemon=True)
        self._ids = itertools.count(1)
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/link"

    def start(self) -> FakeSocketModeServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(5)
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    async def _serve(self) -> Server:
        return await serve(self._handler, "127.0.0.1", 0)

    async def _handler(self, connection: ServerConnection) -> None:
        with self._cond:
            self._connections.add(connection)
            self._cond.notify_all()
        try:
            await connection.send(json.dumps({"type": "hello", "num_connections": 1, "debug_info": {}}))
            async for frame in connection:
                message = json.loads(frame)
                envelope_id = message.get("envelope_id")
                if envelope_id:
                    with self._cond:
                        self.acks[envelope_id] = message
                        self.acked_at[envelope_id] = time.monotonic()
                        self._cond.notify_all()
        except Exception:  # noqa: BLE001, S110 - a client dropping the connection ends its handler
            pass
        finally:
            with self._cond:
                self._connections.discard(connection)

    def wait_connected(self, timeout: float = 5.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._connections), timeout):
                raise AssertionError("no Socket Mode client connected")

    def send(self, envelope_type: str, payload: Mapping[str, Any], **extra: Any) -> str:
        """Push one envelope to every connected client; returns its envelope id."""
        envelope_id = f"env-{next(self._ids)}"
        envelope = {
            "envelope_id": envelope_id,
            "type": envelope_type,
            "accepts_response_payload": envelope_type != "events_api",
            "payload": dict(payload),
            **extra,
        }
        self.sent_at[envelope_id] = time.monotonic()

        async def broadcast() -> None:
            for connection in list(self._connections):
                await connection.send(json.dumps(envelope))

        asyncio.run_coroutine_threadsafe(broadcast(), self._loop).result(5)
        return envelope_id

    def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: envelope_id in self.acks, timeout):
                raise AssertionError(f"no ack for {envelope_id} within {timeout}s")
            return self.acks[envelope_id]


@pytest.fixture
def slack_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real token or proxy from the developer's environment reaches a test (slack_sdk honours HTTPS_PROXY)."""
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def slack_api(slack_env: None) -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as api:
        yield api


@pytest.fixture
def socket_mode_server(slack_api: FakeSlackAPI) -> Iterator[FakeSocketModeServer]:
    server = FakeSocketModeServer().start()
    slack_api.ws_url = server.url
    try:
        yield server
    finally:
        server.stop()


# -- the bot wired to the fakes: a real store, Pipeline, worker loops, outbox dispatcher and HTTP server ------------

SIGNING_SECRET = "test-signing-secret"
CHANNELS = {
    "IT Support": "C0IT",
    "HR": "C0HR",
    "Facilities": "C0FAC",
    "Finance": "C0FIN",
    "General": "C0GEN",
}
TRIAGE, ADMIN = "C0TRIAGE", "C0ADMIN"
IT_AGENT, HR_GROUP, ADMIN_USER = "U0AGENT", "S0HR", "U0ADMIN"


def signed_headers(
    body: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None, content_type: str | None = None
) -> dict[str, str]:
    """Headers Slack would send with ``body``: the real v0 signature over ``v0:{timestamp}:{body}``."""
    from slack_sdk.signature import SignatureVerifier

    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "content-type": content_type or "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": ts,
        "x-slack-signature": str(SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)),
    }


def command_body(
    api: FakeSlackAPI,
    text: str,
    *,
    trigger_id: str,
    user: str = "U0ANA",
    user_name: str = "ana",
    channel: str = "C0ASK",
) -> dict[str, str]:
    """A ``/ticket`` request as Slack sends it (text encoded the way Slack encodes user input)."""
    return {
        "token": "legacy-verification-token",
        "team_id": TEAM_ID,
        "team_domain": "test",
        "channel_id": channel,
        "channel_name": "ask-anything",
        "user_id": user,
        "user_name": user_name,
        "command": "/ticket",
        "text": text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"),
        "api_app_id": "A0APP",
        "is_enterprise_install": "false",
        "response_url": api.response_url(trigger_id),
        "trigger_id": trigger_id,
    }


def action_payload(
    api: FakeSlackAPI,
    action_id: str,
    value: str,
    *,
    user: str,
    channel: str = "C0IT",
    message_ts: str = "1700000001.000100",
    trigger_id: str = "act-1",
) -> dict[str, Any]:
    """A ``block_actions`` payload for a click on a card's button or select."""
    if action_id == "ticket_claim":
        action: dict[str, Any] = {"type": "button", "value": value}
    else:
        action = {
            "type": "static_select",
            "selected_option": {"text": {"type": "plain_text", "text": value}, "value": value},
        }
    return {
        "type": "block_actions",
        "team": {"id": TEAM_ID, "domain": "test"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM_ID},
        "api_app_id": "A0APP",
        "token": "legacy-verification-token",
        "trigger_id": trigger_id,
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
        "channel": {"id": channel, "name": "dept"},
        "message": {"type": "message", "ts": message_ts, "text": "card"},
        "response_url": api.response_url(f"action-{trigger_id}"),
        "actions": [
            {"action_id": action_id, "block_id": f"ticket_actions:{value.split(':')[0]}", "action_ts": "1.2", **action}
        ],
    }


class SlackRig:
    """ticketbot's Slack side against the fakes, built like the runtime builds it (see ``start``)."""

    def __init__(
        self,
        api: FakeSlackAPI,
        store: Any,
        *,
        mode: str = "http",
        classifier: Any = None,
        workers: int = 2,
        poll: float = 0.05,
        outbox_poll: float | None = None,
        slack: Mapping[str, Any] | None = None,
        departments: list[dict[str, Any]] | None = None,
    ) -> None:
        from pydantic import SecretStr

        from bot.http import http_component
        from bot.runtime import Loop
        from bot.slack import SlackChannel, slack_components, slack_outbox_kinds
        from core.config import Config, Secrets
        from core.outbox import OutboxDispatcher, RetryPolicy
        from core.pipeline import Pipeline
        from core.reply import ReplySettings
        from core.route import Router
        from core.worker import InboundWorker
        from tests.fakes.classifier import ScriptedClassifier

        self.api = api
        self.store = store
        for name, channel in CHANNELS.items():
            api.add_channel(channel, name.lower().replace(" ", "-"))
        api.add_channel(TRIAGE, "triage")
        api.add_channel(ADMIN, "ticketbot-admins")
        api.usergroups[HR_GROUP] = ["U0HRAGENT"]
        self.config = Config(
            departments=departments
            or [
                {"name": "IT Support", "slack_channel": CHANNELS["IT Support"], "agents": [IT_AGENT]},
                {"name": "HR", "slack_channel": CHANNELS["HR"], "agent_usergroup": HR_GROUP},
                {"name": "Facilities", "slack_channel": CHANNELS["Facilities"]},
                {"name": "Finance", "slack_channel": CHANNELS["Finance"]},
                {"name": "General", "slack_channel": CHANNELS["General"]},
            ],
            slack={
                "mode": mode,
                "api_url": api.api_url,
                "triage_channel": TRIAGE,
                "admin_channel": ADMIN,
                "admins": [ADMIN_USER],
                **(slack or {}),
            },
            http={"host": "127.0.0.1", "port": 0},
        )
        self.secrets = Secrets(
            slack_bot_token=SecretStr(BOT_TOKEN),
            slack_app_token=SecretStr(APP_TOKEN),
            slack_signing_secret=SecretStr(SIGNING_SECRET),
            anthropic_api_key=None,
        )
        self.classifier = classifier or ScriptedClassifier()
        self.pipeline = Pipeline(
            store=store,
            classifier=self.classifier,
            router=Router(self.config.department_names, self.config.routing.triage_department, 0.35),
            replies=ReplySettings(
                department_channels={d.name: d.slack_channel for d in self.config.departments if d.slack_channel},
                enabled=frozenset(slack_outbox_kinds(self.secrets)),
            ),
        )
        senders, parts, decoders = slack_components(self.config, self.secrets, store, self.pipeline, None)
        self.pipeline.decoders = decoders
        self.slack: SlackChannel = parts[0]
        self.dispatcher = OutboxDispatcher(
            store=store, senders=senders, policy=RetryPolicy(base_delay=0.05, max_delay=1.0)
        )
        worker = InboundWorker(store=store, pipeline=self.pipeline)
        self.workers = [Loop(f"test-worker-{n}", worker.run_once, poll) for n in range(workers)]
        self.outbox = Loop("test-outbox", self.dispatcher.run_once, poll if outbox_poll is None else outbox_poll)

        def wake_workers() -> None:
            for loop in self.workers:
                loop.wake()

        self.slack.set_wake(wake_workers)
        self.http = http_component(self.config, self.slack) if mode == "http" else None
        self._started: list[Any] = []

    def start(self, *, loops: bool = True) -> SlackRig:
        parts: list[Any] = [*self.workers, self.outbox] if loops else []
        parts.append(self.slack)
        if self.http is not None:
            parts.append(self.http)
        for part in parts:
            part.start()
            self._started.append(part)
        return self

    def stop(self) -> None:
        for part in reversed(self._started):
            part.stop()
        self._started.clear()

    # -- Slack's requests ---------------------------------------------------------------------------------------

    @property
    def events_url(self) -> str:
        assert self.http is not None, "HTTP mode only"
        return f"{self.http.url}/slack/events"

    def post(self, body: str, headers: Mapping[str, str]) -> Any:
        import httpx

        return httpx.post(self.events_url, content=body.encode(), headers=dict(headers), timeout=10)

    def command(
        self, text: str, *, trigger_id: str = "trig-1", extra_headers: Mapping[str, str] | None = None, **kw: Any
    ) -> Any:
        from urllib.parse import urlencode

        body = urlencode(command_body(self.api, text, trigger_id=trigger_id, **kw))
        return self.post(body, {**signed_headers(body), **(extra_headers or {})})

    def interact(self, payload: Mapping[str, Any]) -> Any:
        from urllib.parse import urlencode

        body = urlencode({"payload": json.dumps(payload)})
        return self.post(body, signed_headers(body))

    # -- waiting on the asynchronous parts ----------------------------------------------------------------------

    def wait_until(self, check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.02)

    def wait_outbox_idle(self, timeout: float = 10.0) -> None:
        from core.outbox import OutboxStatus

        self.wait_until(lambda: not self.store.list_outbox(status=OutboxStatus.PENDING), timeout, "an empty outbox")

    def tickets(self) -> list[Any]:
        from core.ports import TicketFilter

        return list(reversed(self.store.list_tickets(TicketFilter(limit=1000))))


MakeRig = Callable[..., SlackRig]


@pytest.fixture
def make_rig(slack_api: FakeSlackAPI) -> Iterator[MakeRig]:
    """``make_rig(store, mode="http", classifier=..., ...)``: a started rig, stopped after the test."""
    rigs: list[SlackRig] = []

    def make(store: Any, *, start: bool = True, loops: bool = True, **kw: Any) -> SlackRig:
        rig = SlackRig(slack_api, store, **kw)
        rigs.append(rig)
        return rig.start(loops=loops) if start else rig

    try:
        yield make
    finally:
        for rig in reversed(rigs):
            rig.stop()
