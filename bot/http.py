"""The bot's HTTP server: a FastAPI app served by uvicorn on its own thread (Slack HTTP mode, health, later the API).

``create_http_app`` builds the app from routers, so later stages add theirs (``/api/v1``, ``/readyz``,
``/metrics``); ``HttpServer`` is the runtime component that serves it. Slack's requests reach Bolt at
``POST /slack/events``; Bolt's synchronous dispatch (signature check, ack) runs on a worker thread, never on the
event loop.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import uvicorn
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.telemetry import TelemetryConfig
from slack_bolt import App, BoltRequest
from starlette.concurrency import run_in_threadpool

from core.config import Config, HttpConfig
from core.errors import ConfigError

if TYPE_CHECKING:
    from bot.api.deps import ApiContext
    from bot.slack import SlackChannel
    from core.pipeline import Pipeline
    from storage.store import SqlStore

log = logging.getLogger(__name__)

SLACK_EVENTS_PATH = "/slack/events"
MAX_SLACK_BODY = 1024 * 1024  # Slack's payloads are a few kilobytes; refuse anything absurd before reading it
# FastAPI's built-in OpenTelemetry hooks, off: the bot exports Prometheus metrics (/metrics), not OpenTelemetry,
# and with the hooks on every request asked OpenTelemetry for its providers, which reads the environment each
# time (about 8% of the server's CPU per POST /api/v1/tickets, docs/api.md).
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def health_router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process is up and serving HTTP."""
        return {"status": "ok"}

    return router


def slack_router(app: App) -> APIRouter:
    """``POST /slack/events``: commands, interactivity and events, verified and acknowledged by Bolt."""
    router = APIRouter()

    @router.post(SLACK_EVENTS_PATH, include_in_schema=False)
    async def slack_events(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_SLACK_BODY:
            return Response(status_code=413)
        body = await request.body()
        if len(body) > MAX_SLACK_BODY:
            return Response(status_code=413)
        headers: dict[str, str | Sequence[str]] = {}
        for key, value in request.headers.items():
            previous = headers.get(key.lower())
            headers[key.lower()] = [*previous, value] if isinstance(previous, list) else [value]
        bolt_request = BoltRequest(
            body=body.decode("utf-8", errors="replace"), query=request.url.query, headers=headers
        )
        bolt_response = await run_in_threadpool(app.dispatch, bolt_request)
        return Response(
            status_code=bolt_response.status,
            content=bolt_response.body,
            headers=bolt_response.first_headers_without_set_cookie(),
        )

    return router


def create_http_app(
    *, slack: SlackChannel | None = None, routers: Sequence[APIRouter] = (), api: ApiContext | None = None
) -> FastAPI:
    """The bot's FastAPI app: ``/healthz``, ``/slack/events`` when Slack runs in HTTP mode, ``routers``, and the
    REST API at ``/api/v1`` (its own sub-app with its OpenAPI document) when ``api`` is given."""
    app = FastAPI(title="ticketbot", docs_url=None, redoc_url=None, openapi_url=None, telemetry=NO_TELEMETRY)
    app.include_router(health_router())
    if slack is not None and slack.mode == "http":
        app.include_router(slack_router(slack.app))
    for router in routers:
        app.include_router(router)
    if api is not None:
        from bot.api.app import PREFIX, create_api_app

        app.mount(PREFIX, create_api_app(api))
    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound here rather than by uvicorn (which would sys.exit() its thread on a taken port).

    It is created with proto=IPPROTO_TCP as getaddrinfo gives it: asyncio sets TCP_NODELAY only on sockets that
    say so, and without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """Serves a FastAPI app with uvicorn on a thread of its own; port 0 picks a free port (see ``port``)."""

    def __init__(self, config: HttpConfig, app: FastAPI) -> None:
        self.config = config
        self.app = app
        self.name = f"http on {config.host}:{config.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self.port = config.port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def start(self) -> None:
        """Listen, or raise ConfigError (port in use, bad host) at once."""
        host, port = self.config.host, self.config.port
        try:
            listener = listen(host, port)
        except OSError as exc:
            raise ConfigError(f"http: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                loop="asyncio",
                ws="none",
                lifespan="on",
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=3,
            )
        )
        thread = threading.Thread(target=self._serve, args=(server, listener), name="http-server", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(timeout=2)
                listener.close()
                raise ConfigError(f"http: the server on {host}:{port} did not start (see the log above)")
            time.sleep(0.01)
        self._server, self._thread, self._listener = server, thread, listener
        self.port = int(listener.getsockname()[1])
        self.name = f"http on {self.url}"
        log.info("http: listening on %s", self.url)

    @staticmethod
    def _serve(server: uvicorn.Server, listener: socket.socket) -> None:
        try:
            server.run(sockets=[listener])
        except SystemExit:  # uvicorn's way of failing at startup; start() reports it
            log.error("http: the server stopped during startup")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        self._server = self._thread = self._listener = None


def http_component(
    config: Config, slack: SlackChannel | None, *, store: SqlStore | None = None, pipeline: Pipeline | None = None
) -> HttpServer | None:
    """The HTTP server for ``config.http`` (None when ``http.enabled`` is false), with Slack's endpoint in HTTP mode
    and the REST API when ``api.enabled`` and a store and pipeline are given.

    Raises:
        ConfigError: Slack runs in HTTP mode but the HTTP server is disabled.
    """
    if not config.http.enabled:
        if slack is not None and slack.mode == "http":
            raise ConfigError("slack.mode: 'http' needs the HTTP server (http.enabled: true)")
        return None
    api = None
    if config.api.enabled and store is not None and pipeline is not None:
        from bot.api.deps import ApiContext

        api = ApiContext.build(config, store, pipeline)
    return HttpServer(config.http, create_http_app(slack=slack, api=api))
