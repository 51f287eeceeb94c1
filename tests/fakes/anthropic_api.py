"""Test fake for the classify step: a real local HTTP server speaking the Anthropic Messages API wire format.

The SDK is pointed at it with ``base_url=api.url``; no network library is patched. Replies are scripted per
request (``api.script(rate_limited(0.1), tool_call("Finance"))``) and fall back to ``api.default``. Every request
is recorded with its headers and JSON body, and the server tracks how many were in flight at once.

A test module opts in to the fixture by binding it at module level (``anthropic_api = fake_api.anthropic_api``);
the bench uses the class directly (``with FakeAnthropicAPI(latency=0.8) as api: ...``).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

DEFAULT_MODEL_ID = "claude-haiku-4-5-20251001"
HAIKU_MIN_CACHEABLE_TOKENS = 4096  # Haiku 4.5: shorter prefixes are processed normally and never cached


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer: an HTTP status, a JSON body (or raw bytes), extra headers and a delay before answering.

    A JSON body whose ``model`` is None gets the requested model filled in, as the real API echoes it.
    """

    status: int = 200
    body: Mapping[str, Any] | bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names
    body: Any  # parsed JSON, or the raw text when it was not JSON
    received_at: float  # time.monotonic()

    @property
    def system_text(self) -> str:
        system = self.body.get("system", "")
        return system if isinstance(system, str) else "".join(block["text"] for block in system)

    @property
    def user_text(self) -> str:
        content = self.body["messages"][-1]["content"]
        return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)


def message(
    content: list[dict[str, Any]], *, stop_reason: str = "tool_use", model: str | None = None
) -> dict[str, Any]:
    """A Messages API response body; usage is filled in by the server from the request size."""
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": None,
    }


def tool_call(
    department: str = "IT Support",
    priority: str = "medium",
    confidence: float = 0.9,
    summary: str = "Laptop will not start",
    *,
    name: str = "route_ticket",
    model: str | None = None,
    **extra: Any,
) -> Reply:
    """A good forced tool call (or a bad one: any department, priority or confidence is sent as given)."""
    answer = {"department": department, "priority": priority, "confidence": confidence, "summary": summary, **extra}
    return tool_input(answer, name=name, model=model)


def tool_input(answer: Any, *, name: str = "route_ticket", model: str | None = None) -> Reply:
    """A tool_use block carrying exactly ``answer`` as its input (for missing fields and wrong types)."""
    block = {"type": "tool_use", "id": "toolu_fake", "name": name, "input": answer}
    return Reply(body=message([block], model=model))


def no_tool_use(text: str = "I think this is for IT.") -> Reply:
    """The model answered in prose and never called the tool."""
    return Reply(body=message([{"type": "text", "text": text}], stop_reason="end_turn"))


def _error(status: int, kind: str, text: str, headers: Mapping[str, str] | None = None) -> Reply:
    body = {"type": "error", "error": {"type": kind, "message": text}, "request_id": "req_fake"}
    return Reply(status=status, body=body, headers=dict(headers or {}))


def rate_limited(retry_after: float = 0.1) -> Reply:
    return _error(
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit",
        {"retry-after": f"{retry_after:g}"},
    )


def overloaded() -> Reply:
    return _error(529, "overloaded_error", "Overloaded")


def server_error() -> Reply:
    return _error(500, "api_error", "Internal server error")


def bad_request(text: str = "messages: field required") -> Reply:
    return _error(400, "invalid_request_error", text)


def hang(seconds: float = 30.0) -> Reply:
    """No answer for ``seconds`` (the server gives up early when stopped), then a good one."""
    good = tool_call()
    return Reply(body=good.body, delay=seconds)


def malformed_json() -> Reply:
    return Reply(body=b'{"id": "msg_fake", "type": "message", "content": [{"type": "tool_use", "inp')


class FakeAnthropicAPI:
    """``POST /v1/messages`` on 127.0.0.1 at a free port, answering scripted replies after ``latency`` seconds.

    Prompt caching is imitated: when the system prompt carries ``cache_control`` and tools + system are at least
    ``cache_min_tokens`` (about four characters a token), the first request writes the cache and later ones read it.
    """

    def __init__(
        self, *, latency: float = 0.0, default: Reply | None = None, cache_min_tokens: int = 0, output_tokens: int = 40
    ) -> None:
        self.latency = latency
        self.default = default or tool_call()
        self.cache_min_tokens = cache_min_tokens
        self.output_tokens = output_tokens
        self._script: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._cached_prefixes: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.api = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeAnthropicAPI:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers that are hanging on purpose
        if self._thread is not None:  # shutdown() waits for serve_forever, so only when it runs
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> FakeAnthropicAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, one each; after them every request gets ``default``."""
        with self._lock:
            self._script.extend(replies)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self._requests.clear()
            self.max_in_flight = 0

    # -- called on handler threads

    def _begin(self, recorded: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(recorded)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self._script.popleft() if self._script else self.default

    def _end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _wait(self, seconds: float) -> bool:
        """Sleep; False when the server is stopping meanwhile."""
        return not self._stopping.wait(seconds) if seconds > 0 else True

    def _usage(self, request: Any) -> dict[str, int]:
        if not isinstance(request, dict):
            return {"input_tokens": 0, "output_tokens": 0}
        total = len(json.dumps(request)) // 4
        prefix = json.dumps([request.get("tools"), request.get("system")])
        prefix_tokens = len(prefix) // 4
        system = request.get("system")
        marked = isinstance(system, list) and any("cache_control" in block for block in system)
        created = read = 0
        if marked and prefix_tokens >= self.cache_min_tokens:
            with self._lock:
                if prefix in self._cached_prefixes:
                    read = prefix_tokens
                else:
                    self._cached_prefixes.add(prefix)
                    created = prefix_tokens
        return {
            "input_tokens": total - created - read,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
        }

    def _render(self, reply: Reply, request: Any) -> bytes:
        if isinstance(reply.body, bytes):
            return reply.body
        body = dict(reply.body)
        if body.get("type") == "message":
            body["id"] = f"msg_fake{next(self._ids):06d}"
            if body.get("model") is None:
                body["model"] = request.get("model") if isinstance(request, dict) else DEFAULT_MODEL_ID
            if body.get("usage") is None:
                body["usage"] = self._usage(request)
        return json.dumps(body).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: FakeAnthropicAPI

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out closes its socket while a handler still sleeps; writing then fails. Expected.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    disable_nagle_algorithm = True  # headers and body go out as two writes; Nagle would hold the second 40 ms
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        api = self.server.api
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        recorded = RecordedRequest(
            method="POST",
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            received_at=time.monotonic(),
        )
        if self.path.rstrip("/") != "/v1/messages":
            self._send(404, json.dumps({"type": "error", "error": {"type": "not_found_error"}}).encode(), {})
            return
        reply = api._begin(recorded)
        try:
            if not api._wait(api.latency + reply.delay):
                self.close_connection = True
                return
            self._send(reply.status, api._render(reply, body), reply.headers)
        finally:
            api._end()

    def _send(self, status: int, payload: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status, "Overloaded" if status == 529 else None)  # 529 is not in http.HTTPStatus
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.send_header("request-id", "req_fake")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def anthropic_api() -> Iterator[FakeAnthropicAPI]:
    """A started fake Messages API; ``anthropic_api.url`` is the SDK's ``base_url``."""
    with FakeAnthropicAPI() as api:
        yield api
