"""The bot's HTTP server: a real uvicorn on a free port, health, pluggable routers, and where Slack's endpoint lives."""

from __future__ import annotations

import logging
import socket

import httpx
import pytest
from fastapi import APIRouter

from bot.http import HttpServer, create_http_app, http_component
from core.config import Config, HttpConfig
from core.errors import ConfigError
from storage.store import SqlStore
from tests.fakes import slack_api as fake
from tests.fakes.slack_api import FakeSlackAPI, MakeRig, signed_headers

slack_env = fake.slack_env
slack_api = fake.slack_api
make_rig = fake.make_rig


def test_health_on_a_free_port_with_extra_routers(caplog: pytest.LogCaptureFixture) -> None:
    extra = APIRouter(prefix="/api/v1")

    @extra.get("/ping")
    def ping() -> dict[str, bool]:
        return {"pong": True}

    server = HttpServer(HttpConfig(host="127.0.0.1", port=0), create_http_app(routers=[extra]))
    with caplog.at_level(logging.INFO, logger="bot.http"):
        server.start()
    try:
        assert server.port != 0
        assert f"http: listening on http://127.0.0.1:{server.port}" in caplog.text
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{server.url}/api/v1/ping").json() == {"pong": True}
        assert httpx.post(f"{server.url}/slack/events", content=b"x").status_code == 404  # no Slack: no endpoint
    finally:
        server.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=1)


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HttpServer(HttpConfig(host="127.0.0.1", port=port), create_http_app())
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            server.start()


def test_slack_events_are_served_only_in_http_mode(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    socket_rig = make_rig(sqlite_store, mode="socket", start=False)
    in_socket_mode = http_component(socket_rig.config, socket_rig.slack)
    assert in_socket_mode is not None
    assert "/slack/events" not in {getattr(r, "path", "") for r in in_socket_mode.app.routes}

    rig = make_rig(sqlite_store, loops=False)
    assert rig.http is not None
    huge = "x" * (1024 * 1024 + 1)
    assert rig.post(huge, signed_headers(huge)).status_code == 413
    assert httpx.get(f"{rig.http.url}/healthz").status_code == 200


def test_disabled_http_server() -> None:
    assert http_component(Config(http={"enabled": False}), None) is None


def test_http_mode_needs_the_http_server(sqlite_store: SqlStore, make_rig: MakeRig) -> None:
    rig = make_rig(sqlite_store, start=False)
    with pytest.raises(ConfigError, match="http.enabled"):
        http_component(Config(http={"enabled": False}, slack={"mode": "http"}), rig.slack)
