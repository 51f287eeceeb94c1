"""/metrics over real HTTP: tickets made through the Pipeline, Claude failing into the fallback, queue figures from
SQL, a database that is down; scraped and parsed with Prometheus's own text parser."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from bot.health import mount_observability
from bot.http import HttpServer, create_http_app
from bot.metrics import DatabaseCollector, FigureReader, Metrics
from bot.runtime import build_pipeline
from core.classify.claude import ClaudeClassifier
from core.classify.fallback import FallbackClassifier
from core.config import DEFAULT_DEPARTMENTS, Config, HttpConfig
from core.inbound import InboundRecord, InboundStatus
from core.message import Channel
from core.outbox import OutboxItem, OutboxKind
from core.pipeline import Pipeline
from storage.db import make_engine
from storage.store import SqlStore
from storage.tables import DigestRunRow
from tests.fakes import anthropic_api as fake_api
from tests.fakes.anthropic_api import FakeAnthropicAPI, server_error, tool_call
from tests.fakes.classifier import ScriptedClassifier

anthropic_api = fake_api.anthropic_api

CONFIG = Config(health={"metrics_cache_seconds": 0})  # every scrape reads the database afresh


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``GET url/metrics`` as (name, labels) -> value, parsed by Prometheus's parser."""
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def names(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> set[str]:
    return {name for name, _ in samples}


def submit(store: SqlStore, pipeline: Pipeline, channel: Channel, sender: str, text: str) -> None:
    """A request through the same path as `ticketbot submit`: stored, claimed, processed by the pipeline."""
    payload = json.dumps({"sender": sender, "subject": text, "body": text}).encode()
    now = datetime.now(UTC)
    received = store.receive(InboundRecord(channel, f"{channel}:{uuid.uuid4()}", payload, now))
    row = store.claim_inbound_by_id(received.id, now=now, lease=timedelta(minutes=5))
    assert row is not None
    assert pipeline.process(row).created


@dataclass
class Served:
    url: str
    pipeline: Pipeline
    metrics: Metrics


@pytest.fixture
def served(store: SqlStore, anthropic_api: FakeAnthropicAPI) -> Iterator[Served]:
    """The bot's HTTP app with /metrics, on a free port; Claude (the fake) first, the scripted offline model after."""
    claude = ClaudeClassifier(
        departments=DEFAULT_DEPARTMENTS,
        api_key="sk-ant-test-key",
        base_url=anthropic_api.url,
        timeout=2.0,
        max_retries=0,
        circuit_failures=1,  # one failure opens the circuit
        circuit_reset_seconds=3600,
    )
    classifier = FallbackClassifier(
        primary=claude, fallback=ScriptedClassifier(name="offline", department="General", confidence=0.9), deadline=5
    )
    pipeline = build_pipeline(CONFIG, store, classifier)
    app = create_http_app()
    _, metrics = mount_observability(app, config=CONFIG, engine=store.engine, pipeline=pipeline)
    server = HttpServer(HttpConfig(host="127.0.0.1", port=0), app)
    server.start()
    try:
        yield Served(server.url, pipeline, metrics)
    finally:
        server.stop()
        classifier.close()
        claude.close()


def test_tickets_latency_fallbacks_and_the_circuit_after_tickets_go_through_the_pipeline(
    store: SqlStore, served: Served, anthropic_api: FakeAnthropicAPI
) -> None:
    assert served.pipeline.observer is served.metrics  # mount_observability wired the pipeline
    anthropic_api.script(tool_call("Finance"), tool_call("Finance"), tool_call("Finance"), server_error())
    submit(store, served.pipeline, Channel.CLI, "ana@example.com", "Invoice 42 was paid twice")
    submit(store, served.pipeline, Channel.CLI, "bob@example.com", "Expense claim for the train")
    submit(store, served.pipeline, Channel.API, "cy@example.com", "Purchase order for chairs")
    submit(store, served.pipeline, Channel.CLI, "dee@example.com", "Something odd")  # Claude fails: the fallback
    submit(store, served.pipeline, Channel.CLI, "eve@example.com", "Another one")  # circuit open: no call at all

    samples = scrape(served.url)
    created = "ticketbot_tickets_created_total"
    assert value(samples, created, channel="cli", department="Finance") == 2
    assert value(samples, created, channel="api", department="Finance") == 1
    assert value(samples, created, channel="cli", department="General") == 2
    count = "ticketbot_classification_seconds_count"
    assert value(samples, count, classifier="claude") == 3
    assert value(samples, count, classifier="offline") == 2
    assert value(samples, "ticketbot_classification_seconds_bucket", classifier="claude", le="+Inf") == 3
    assert (value(samples, "ticketbot_classification_seconds_sum", classifier="claude") or 0) > 0
    assert value(samples, "ticketbot_classification_fallbacks_total", classifier="offline") == 2
    assert value(samples, "ticketbot_claude_circuit_state", ticketbot_claude_circuit_state="open") == 1
    assert value(samples, "ticketbot_claude_circuit_state", ticketbot_claude_circuit_state="closed") == 0
    assert value(samples, "ticketbot_claude_requests_total") == 4
    assert value(samples, "ticketbot_claude_failures_total") == 1
    assert (value(samples, "ticketbot_claude_tokens_total", direction="in") or 0) > 0
    # The database figures agree with the store.
    assert value(samples, "ticketbot_database_up") == 1
    assert value(samples, "ticketbot_open_tickets", channel="cli", department="Finance", status="new") == 2
    assert value(samples, "ticketbot_open_tickets", channel="api", department="Finance", status="new") == 1
    assert value(samples, "ticketbot_inbound_messages", status="received") == 0


def test_queue_figures_inbound_parked_outbox_failing_imap_lag_and_digests(store: SqlStore, served: Served) -> None:
    now = datetime.now(UTC)
    parked = store.receive(InboundRecord(Channel.EMAIL, "parked-1", b"x", now - timedelta(minutes=3)))
    store.finish_inbound(parked.id, status=InboundStatus.PARKED, reason="automated: out-of-office")
    store.receive(InboundRecord(Channel.EMAIL, "waiting-1", b"y", now - timedelta(minutes=10)))
    store.enqueue(
        [
            OutboxItem(OutboxKind.EMAIL, "mail-1", {"to": "ana@example.com"}),
            OutboxItem(OutboxKind.EMAIL, "mail-2", {"to": "bob@example.com"}),
            OutboxItem(OutboxKind.SLACK_POST, "post-1", {"channel": "C1"}),
        ]
    )
    items = {item.dedupe_key: item for item in store.list_outbox()}
    retry_at = now + timedelta(minutes=1)
    store.mark_outbox_failed(items["mail-1"].id, error="relay refused", next_attempt_at=retry_at, now=now)
    store.mark_outbox_failed(items["post-1"].id, error="channel_not_found", next_attempt_at=None, now=now)
    polled = now - timedelta(seconds=120)
    store.save_mailbox_state("support", folder="INBOX", last_success_at=polled, last_poll_at=polled)
    store.save_mailbox_state("sales", folder="INBOX", last_poll_at=now, last_error="login failed")
    with store.engine.begin() as conn:
        conn.execute(
            insert(DigestRunRow),
            [
                {"scope": scope, "period": date(2026, 11, day), "status": status, "created_at": now - timedelta(ago)}
                for scope, day, status, ago in [
                    ("admin", 20, "enqueued", 2),
                    ("admin", 21, "enqueued", 1),
                    ("HR", 21, "skipped", 0),
                ]
            ],
        )

    samples = scrape(served.url)
    assert value(samples, "ticketbot_inbound_messages", status="parked") == 1
    assert value(samples, "ticketbot_inbound_messages", status="received") == 1
    assert (value(samples, "ticketbot_inbound_oldest_waiting_seconds") or 0) >= 600
    assert value(samples, "ticketbot_outbox_items", kind="email", status="pending") == 2
    assert value(samples, "ticketbot_outbox_items", kind="slack_post", status="parked") == 1
    assert value(samples, "ticketbot_outbox_retrying", kind="email") == 1
    assert value(samples, "ticketbot_outbox_oldest_pending_seconds", kind="email") is not None
    assert (value(samples, "ticketbot_imap_poll_lag_seconds", mailbox="support") or 0) >= 120
    assert value(samples, "ticketbot_imap_last_success_timestamp_seconds", mailbox="support") == pytest.approx(
        polled.timestamp(), abs=1e-3
    )
    assert value(samples, "ticketbot_imap_failing", mailbox="support") == 0
    assert value(samples, "ticketbot_imap_failing", mailbox="sales") == 1
    assert value(samples, "ticketbot_imap_poll_lag_seconds", mailbox="sales") is None  # never succeeded
    assert value(samples, "ticketbot_digest_runs", status="enqueued") == 2
    assert value(samples, "ticketbot_digest_runs", status="skipped") == 1
    assert value(samples, "ticketbot_digest_last_run_timestamp_seconds", scope="admin") == pytest.approx(
        (now - timedelta(days=1)).timestamp(), abs=1e-3
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once it is closed


def test_a_database_that_is_down_still_gives_a_scrape_saying_so() -> None:
    engine = make_engine(f"postgresql://ticketbot@127.0.0.1:{closed_port()}/ticketbot")
    app = create_http_app()
    mount_observability(app, config=CONFIG, engine=engine)
    server = HttpServer(HttpConfig(host="127.0.0.1", port=0), app)
    server.start()
    try:
        samples = scrape(server.url)
    finally:
        server.stop()
        engine.dispose()
    assert value(samples, "ticketbot_database_up") == 0
    assert "ticketbot_open_tickets" not in names(samples)
    assert "ticketbot_tickets_created_total" not in names(samples)  # no samples until a ticket is opened


def test_database_figures_are_cached_between_scrapes(sqlite_store: SqlStore) -> None:
    clock = [100.0]
    collector = DatabaseCollector(FigureReader(sqlite_store.engine), cache_seconds=5, monotonic=lambda: clock[0])
    first, _ = collector.figures()
    sqlite_store.receive(InboundRecord(Channel.EMAIL, "later", b"z", datetime.now(UTC)))
    clock[0] += 4.9
    cached, _ = collector.figures()
    assert cached is first  # within the cache window: no query
    clock[0] += 0.1
    fresh, _ = collector.figures()
    assert fresh is not first and fresh is not None and fresh.inbound["received"] == 1


def test_each_app_has_its_own_registry(sqlite_store: SqlStore) -> None:
    one, two = Metrics(sqlite_store.engine), Metrics(sqlite_store.engine)  # same names, no "Duplicated timeseries"
    assert one.registry is not two.registry
    assert REGISTRY.get_sample_value("ticketbot_tickets_created_total") is None  # the global registry is untouched
    assert b"ticketbot_database_up 1.0" in one.exposition()
