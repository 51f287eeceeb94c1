"""/readyz over real HTTP: ready when every part works, 503 naming the part that does not (database down, IMAP
stale, outbox backlog, SMTP listener gone, Slack disconnected); and the running bot serves /readyz and /metrics."""

from __future__ import annotations

import logging
import smtplib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bot.health import Readiness, mount_observability, readiness_probes, readiness_router
from bot.http import HttpServer, create_http_app
from bot.runtime import Runtime
from core.config import Config, HttpConfig, load_config, load_secrets
from core.outbox import OutboxItem, OutboxKind
from intake.smtp import SmtpIntake, SmtpIntakeServer
from storage.db import make_engine
from storage.store import SqlStore
from tests.fakes.mail import request

MAILBOX = {"name": "support", "host": "imap.example.com", "username": "support", "poll_seconds": 60}


def config(**health: Any) -> Config:
    return Config(email={"imap": [MAILBOX]}, health={"outbox_max_pending": 2, **health})


@dataclass
class FakeSlack:
    """The two things readiness reads from bot.slack.SlackChannel."""

    mode: str = "socket"
    connected: bool = True

    def ready(self) -> bool:
        return self.connected


@pytest.fixture
def smtp(sqlite_store: SqlStore) -> Iterator[SmtpIntakeServer]:
    handler = SmtpIntake(store=sqlite_store, support_addresses=["support@example.com"], max_message_bytes=1 << 20)
    with SmtpIntakeServer(handler, host="127.0.0.1", port=0, max_message_bytes=1 << 20) as server:
        yield server


Ready = Callable[..., tuple[int, dict[str, Any]]]


@pytest.fixture
def readyz() -> Iterator[Ready]:
    """GET /readyz on a served app whose probes are built from the arguments (a clock may be shifted)."""
    servers: list[HttpServer] = []

    def get(cfg: Config, store: SqlStore, **parts: Any) -> tuple[int, dict[str, Any]]:
        app = create_http_app(routers=[readiness_router(Readiness(readiness_probes(cfg, store.engine, **parts)))])
        server = HttpServer(HttpConfig(host="127.0.0.1", port=0), app)
        server.start()
        servers.append(server)
        response = httpx.get(f"{server.url}/readyz", timeout=10)
        assert response.headers["cache-control"] == "no-store"
        return response.status_code, response.json()

    yield get
    for server in servers:
        server.stop()


def later(**delta: float) -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) + timedelta(**delta)


def test_ready_when_the_database_and_every_channel_work(store: SqlStore, smtp: SmtpIntakeServer, readyz: Ready) -> None:
    store.save_mailbox_state("support", folder="INBOX", last_success_at=datetime.now(UTC) - timedelta(seconds=30))
    status, body = readyz(config(), store, smtp=[smtp], slack=FakeSlack())
    assert status == 200, body
    assert body["status"] == "ready" and body["failing"] == []
    parts = body["parts"]
    assert set(parts) == {"database", "outbox", "imap:support", "smtp", "slack"}
    assert all(part["ok"] for part in parts.values())
    assert parts["database"]["dialect"] == store.engine.dialect.name
    assert parts["smtp"]["port"] == smtp.port
    assert parts["outbox"]["pending"] == 0
    assert parts["imap:support"]["last_success_seconds"] >= 30
    assert parts["slack"]["detail"] == "Socket Mode connected"


def test_a_database_that_is_down_is_named_and_its_dependants_are_not_blamed(readyz: Ready) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    down = SqlStore(make_engine(f"postgresql://ticketbot@127.0.0.1:{port}/ticketbot"))
    try:
        status, body = readyz(config(), down)
    finally:
        down.engine.dispose()
    assert status == 503
    assert body["failing"] == ["database"]
    assert body["parts"]["database"]["detail"].startswith("unreachable: ")
    assert "Connection refused" in body["parts"]["database"]["detail"]
    assert body["parts"]["outbox"] == {"ok": None, "detail": "not checked: the database is unreachable"}
    assert body["parts"]["imap:support"]["ok"] is None


def test_a_stale_mailbox_is_named_with_its_last_error(store: SqlStore, readyz: Ready) -> None:
    now = datetime.now(UTC)
    store.save_mailbox_state(
        "support", folder="INBOX", last_success_at=now - timedelta(minutes=10), last_error="LOGIN failed"
    )
    status, body = readyz(config(), store)
    assert status == 503
    assert body["failing"] == ["imap:support"]
    detail = body["parts"]["imap:support"]["detail"]
    assert detail.startswith("stale: last successful poll 6") and "(limit 180s)" in detail
    assert detail.endswith("last error: LOGIN failed")


def test_a_mailbox_never_polled_is_ready_only_within_the_first_window(store: SqlStore, readyz: Ready) -> None:
    status, body = readyz(config(), store)
    assert status == 200 and body["parts"]["imap:support"]["detail"] == "waiting for the first poll"
    # The same process three poll intervals later, still without a successful poll.
    probes = readiness_probes(config(), store.engine)
    imap = next(p for p in probes if p.name == "imap:support")
    imap.clock = later(seconds=181)  # type: ignore[attr-defined]
    health = imap.probe()
    assert not health.ok and health.detail.startswith("no successful poll in 18")


def test_an_outbox_backlog_is_named(store: SqlStore, readyz: Ready) -> None:
    store.enqueue([OutboxItem(OutboxKind.EMAIL, f"mail-{n}", {"to": f"u{n}@example.com"}) for n in range(3)])
    status, body = readyz(config(), store, outbox_kinds={"email"})
    assert status == 503 and body["failing"] == ["outbox"]
    assert body["parts"]["outbox"]["detail"] == "3 items pending (limit 2)"


def test_an_old_pending_item_is_named_but_kinds_nobody_delivers_are_not_counted(store: SqlStore, readyz: Ready) -> None:
    store.enqueue([OutboxItem(OutboxKind.SLACK_POST, f"post-{n}", {"channel": "C1"}) for n in range(5)])
    store.enqueue([OutboxItem(OutboxKind.EMAIL, "mail-1", {"to": "ana@example.com"})])
    # Slack is switched off: its posts wait on purpose and do not make the bot unready.
    status, body = readyz(config(imap_stale_polls=100), store, outbox_kinds={"email"})
    assert status == 200, body
    assert body["parts"]["outbox"]["pending"] == 1
    # Twenty minutes later the reply is still undelivered: delivery is stuck.
    status, body = readyz(config(imap_stale_polls=100), store, outbox_kinds={"email"}, clock=later(minutes=20))
    assert status == 503 and body["failing"] == ["outbox"]
    assert body["parts"]["outbox"]["detail"].startswith("oldest pending item is 12")
    assert body["parts"]["outbox"]["detail"].endswith("(limit 900s)")


def test_a_stopped_smtp_listener_and_a_lost_slack_session_are_named(
    sqlite_store: SqlStore, smtp: SmtpIntakeServer, readyz: Ready
) -> None:
    port = smtp.port
    smtp.stop()

    @dataclass
    class Stopped:
        host: str = "127.0.0.1"
        port: int = 0

    status, body = readyz(Config(), sqlite_store, smtp=[Stopped(port=port)], slack=FakeSlack(connected=False))
    assert status == 503
    assert body["failing"] == ["smtp", "slack"]
    assert body["parts"]["smtp"]["detail"] == f"not accepting on 127.0.0.1:{port}: Connection refused"
    assert body["parts"]["slack"]["detail"] == "Socket Mode not connected"
    status, body = readyz(Config(), sqlite_store, slack=FakeSlack(mode="http", connected=False))
    assert status == 200 and body["parts"]["slack"]["detail"] == "HTTP mode: Slack calls /slack/events"


def test_the_running_bot_serves_readyz_and_metrics(bot_env: dict[str, str]) -> None:
    """`ticketbot run`'s own composition: /readyz names its parts, and a mail sent to it shows up in /metrics."""
    runtime = Runtime.build(load_config(), load_secrets())
    runtime.start()
    try:
        http = next(c for c in runtime.components if isinstance(c, HttpServer))
        smtp = next(c for c in runtime.components if c.name.startswith("smtp-intake"))
        response = httpx.get(f"{http.url}/readyz", timeout=10)
        assert response.status_code == 200, response.text
        assert set(response.json()["parts"]) == {"database", "outbox", "smtp"}
        port = int(smtp.name.rsplit(":", 1)[1])
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("ana@example.com", ["support@example.com"], request())
        deadline = time.monotonic() + 30
        created: float | None = None
        while created is None and time.monotonic() < deadline:  # waiting for the worker, not timing it
            text = httpx.get(f"{http.url}/metrics", timeout=10).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "ticketbot_tickets_created_total" and sample.labels["channel"] == "email":
                        created = sample.value
            time.sleep(0.05)
        assert created == 1
    finally:
        runtime.stop()


def test_mount_observability_adds_both_routes(sqlite_store: SqlStore) -> None:
    app = create_http_app()
    mount_observability(app, config=Config(), engine=sqlite_store.engine)
    with TestClient(app) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        assert client.get("/metrics").status_code == 200


def test_a_lasting_failure_is_logged_once_and_the_recovery_too(
    sqlite_store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    sqlite_store.enqueue([OutboxItem(OutboxKind.EMAIL, f"mail-{n}", {"to": f"u{n}@example.com"}) for n in range(3)])
    readiness = Readiness(readiness_probes(config(), sqlite_store.engine, outbox_kinds={"email"}))
    with caplog.at_level(logging.INFO, logger="bot.health"):
        for _ in range(3):  # a load balancer probing every few seconds
            assert readiness.check()[0] is False
        readiness.probes = [p for p in readiness.probes if p.name != "outbox"]
        assert readiness.check()[0] is True
    assert [r.getMessage() for r in caplog.records] == [
        "readiness: not ready (outbox: 3 items pending (limit 2))",
        "readiness: ready again",
    ]
