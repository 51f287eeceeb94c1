"""Observability at the bot's edge: ``/metrics`` in Prometheus format, from pipeline events and SQL aggregates.

Two kinds of figures. Per-event ones (tickets opened, classification latency, fallbacks) are counted in this
process as the pipeline reports them through ``core.pipeline.PipelineObserver``; they start at zero with the
process and each replica counts its own, the usual Prometheus way (``sum(rate(...))`` over replicas). Queue and
state figures (open tickets, inbound and outbox queues, IMAP freshness, digest runs) are SQL aggregates read at
scrape time by a custom collector and cached for ``health.metrics_cache_seconds``; they describe the shared
database, so every replica reports the same values (``max`` over replicas, not ``sum``).

Each ``Metrics`` has its own ``CollectorRegistry`` (never the global default), so tests and several apps in one
process do not collide.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, StateSetMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import BindParameter, Connection, Engine, bindparam, case, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from core.classify.base import Classification, Classifier
from core.inbound import InboundStatus
from core.outbox import OutboxStatus
from core.ticket import Status, Ticket
from storage.db import READ_ONLY
from storage.tables import DigestRunRow, InboundRow, MailboxStateRow, OutboxRow, TicketRow

if TYPE_CHECKING:
    from core.classify.claude import ClaudeClassifier

log = logging.getLogger(__name__)

# Offline answers take about a millisecond, Claude's about a second, and the fallback deadline is 20 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 20.0, 30.0)
OPEN_STATUSES = tuple(s.value for s in Status if s.is_open)
# Only the queues a person acts on: counting every processed message or sent reply would scan whole tables.
WAITING_INBOUND = (InboundStatus.RECEIVED.value, InboundStatus.PARKED.value)
WAITING_OUTBOX = (OutboxStatus.PENDING.value, OutboxStatus.PARKED.value)


def constants(name: str, values: Sequence[str]) -> BindParameter[Any]:
    """An IN list rendered as literals: with bound parameters SQLite's planner cannot see that the status index
    selects few rows and scans the whole table instead (0.55 s against 0.08 s over 1,000,000 tickets)."""
    return bindparam(name, list(values), expanding=True, literal_execute=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


def database_error(exc: BaseException) -> str:
    """One line about a database failure; driver messages name host and port, never the password."""
    orig = getattr(exc, "orig", None)
    lines = str(orig or exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


@dataclass(frozen=True, slots=True)
class MailboxFigures:
    mailbox: str
    last_success_at: datetime | None
    last_poll_at: datetime | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Figures:
    """One read of the database-backed figures; ``at`` is when it was read."""

    at: datetime
    open_tickets: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (channel, department, status)
    inbound: dict[str, int] = field(default_factory=dict)  # status -> count (received, parked)
    oldest_received_at: datetime | None = None
    outbox: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, status) -> count (pending, parked)
    outbox_retrying: dict[str, int] = field(default_factory=dict)  # kind -> pending items with a failed attempt
    oldest_pending_at: dict[str, datetime] = field(default_factory=dict)  # kind -> created_at of the oldest
    mailboxes: list[MailboxFigures] = field(default_factory=list)
    digest_runs: dict[str, int] = field(default_factory=dict)  # status -> count
    digest_last_run_at: dict[str, datetime] = field(default_factory=dict)  # scope -> newest run


class FigureReader:
    """Reads the queue and state figures with SQL aggregates, in one short read transaction.

    Every query touches only indexed, small sets (open tickets, waiting inbound rows, undelivered outbox items,
    one row per mailbox and per digest), so a scrape stays cheap however many tickets the database holds.
    """

    def __init__(self, engine: Engine, *, statement_timeout: float = 5.0, clock: Callable[[], datetime] = utcnow):
        # Only reads: on SQLite its transactions begin DEFERRED and never take the writers' lock.
        self.engine = engine.execution_options(**{READ_ONLY: True})
        self._pg = engine.dialect.name == "postgresql"
        self._timeout_ms = int(statement_timeout * 1000)
        self._clock = clock

    def read(self) -> Figures:
        """Raises SQLAlchemyError when the database cannot answer."""
        with self.engine.connect() as conn:
            self._bound(conn)
            figures = Figures(
                at=self._clock(),
                open_tickets={
                    (r.channel, r.department, r.status): int(r.n)
                    for r in conn.execute(
                        select(TicketRow.channel, TicketRow.department, TicketRow.status, func.count().label("n"))
                        .where(TicketRow.status.in_(constants("open", OPEN_STATUSES)))
                        .group_by(TicketRow.channel, TicketRow.department, TicketRow.status)
                    )
                },
                inbound={
                    r.status: int(r.n)
                    for r in conn.execute(
                        select(InboundRow.status, func.count().label("n"))
                        .where(InboundRow.status.in_(constants("waiting", WAITING_INBOUND)))
                        .group_by(InboundRow.status)
                    )
                },
                oldest_received_at=conn.execute(
                    select(func.min(InboundRow.received_at)).where(InboundRow.status == InboundStatus.RECEIVED.value)
                ).scalar_one_or_none(),
                mailboxes=[
                    MailboxFigures(r.mailbox, r.last_success_at, r.last_poll_at, r.last_error)
                    for r in conn.execute(
                        select(
                            MailboxStateRow.mailbox,
                            MailboxStateRow.last_success_at,
                            MailboxStateRow.last_poll_at,
                            MailboxStateRow.last_error,
                        ).order_by(MailboxStateRow.mailbox)
                    )
                ],
                digest_runs={
                    r.status: int(r.n)
                    for r in conn.execute(
                        select(DigestRunRow.status, func.count().label("n")).group_by(DigestRunRow.status)
                    )
                },
                digest_last_run_at={
                    r.scope: r.at
                    for r in conn.execute(
                        select(DigestRunRow.scope, func.max(DigestRunRow.created_at).label("at")).group_by(
                            DigestRunRow.scope
                        )
                    )
                    if r.at is not None
                },
            )
            for r in conn.execute(
                select(
                    OutboxRow.kind,
                    OutboxRow.status,
                    func.count().label("n"),
                    func.sum(case((OutboxRow.attempts > 0, 1), else_=0)).label("retrying"),
                    func.min(OutboxRow.created_at).label("oldest"),
                )
                .where(OutboxRow.status.in_(constants("undelivered", WAITING_OUTBOX)))
                .group_by(OutboxRow.kind, OutboxRow.status)
            ):
                figures.outbox[(r.kind, r.status)] = int(r.n)
                if r.status == OutboxStatus.PENDING.value:
                    figures.outbox_retrying[r.kind] = int(r.retrying or 0)
                    if r.oldest is not None:
                        figures.oldest_pending_at[r.kind] = as_utc(r.oldest)
            return figures

    def pending_outbox(self, kinds: Iterable[str] | None = None) -> tuple[int, datetime | None]:
        """Undelivered items (of ``kinds``, all when None) and the creation time of the oldest, for readiness."""
        stmt = select(func.count(), func.min(OutboxRow.created_at)).where(
            OutboxRow.status == OutboxStatus.PENDING.value
        )
        if kinds is not None:
            stmt = stmt.where(OutboxRow.kind.in_(list(kinds)))
        with self.engine.connect() as conn:
            self._bound(conn)
            count, oldest = conn.execute(stmt).one()
        return int(count), as_utc(oldest) if oldest is not None else None

    def mailbox(self, name: str) -> MailboxFigures | None:
        with self.engine.connect() as conn:
            self._bound(conn)
            row = conn.execute(
                select(
                    MailboxStateRow.mailbox,
                    MailboxStateRow.last_success_at,
                    MailboxStateRow.last_poll_at,
                    MailboxStateRow.last_error,
                ).where(MailboxStateRow.mailbox == name)
            ).one_or_none()
        return MailboxFigures(row.mailbox, row.last_success_at, row.last_poll_at, row.last_error) if row else None

    def _bound(self, conn: Connection) -> None:
        # A scrape or a probe must never hang on a slow aggregate: PostgreSQL cancels it after the timeout.
        if self._pg:
            conn.execute(text(f"SET LOCAL statement_timeout = {self._timeout_ms}"))


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def age_seconds(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max(0.0, (now - as_utc(then)).total_seconds())


class DatabaseCollector(Collector):
    """Turns cached ``Figures`` into metric families at scrape time; a failed read reports ``database_up 0``."""

    def __init__(self, reader: FigureReader, *, cache_seconds: float, monotonic: Callable[[], float] = time.monotonic):
        self.reader = reader
        self.cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()  # concurrent scrapes share one read instead of each querying
        self._cached: tuple[float, Figures | None, float] | None = None  # (read at, figures, read seconds)

    def figures(self) -> tuple[Figures | None, float]:
        """The cached figures (None when the database did not answer) and how long the read took."""
        with self._lock:
            now = self._monotonic()
            if self._cached is None or now - self._cached[0] >= self.cache_seconds:
                started = time.perf_counter()
                try:
                    figures: Figures | None = self.reader.read()
                except SQLAlchemyError as exc:
                    log.warning("metrics: cannot read database figures: %s", database_error(exc))
                    figures = None
                self._cached = (now, figures, time.perf_counter() - started)
            return self._cached[1], self._cached[2]

    def collect(self) -> Iterator[Any]:
        figures, seconds = self.figures()
        yield GaugeMetricFamily(
            "ticketbot_database_up",
            "1 when the database answered the last figures query, else 0.",
            value=int(figures is not None),
        )
        yield GaugeMetricFamily(
            "ticketbot_database_figures_seconds", "How long the last read of the database figures took.", value=seconds
        )
        if figures is None:
            return
        now = figures.at
        yield _gauge(
            "ticketbot_open_tickets",
            "Tickets not yet resolved or closed, by channel, department and status.",
            ["channel", "department", "status"],
            figures.open_tickets.items(),
        )
        yield _gauge(
            "ticketbot_inbound_messages",
            "Stored inbound messages waiting to be processed (received) or for a person (parked).",
            ["status"],
            (((s,), figures.inbound.get(s, 0)) for s in WAITING_INBOUND),
        )
        oldest_inbound = age_seconds(now, figures.oldest_received_at)
        yield GaugeMetricFamily(
            "ticketbot_inbound_oldest_waiting_seconds",
            "Age of the oldest inbound message not yet processed (0 when none waits).",
            value=oldest_inbound or 0.0,
        )
        yield _gauge(
            "ticketbot_outbox_items",
            "Replies and posts not delivered: pending (being tried) or parked (given up, needs a person).",
            ["kind", "status"],
            figures.outbox.items(),
        )
        yield _gauge(
            "ticketbot_outbox_retrying",
            "Pending replies and posts whose delivery failed at least once (retrying with backoff).",
            ["kind"],
            (((k,), n) for k, n in figures.outbox_retrying.items()),
        )
        yield _gauge(
            "ticketbot_outbox_oldest_pending_seconds",
            "Age of the oldest pending reply or post, by kind.",
            ["kind"],
            (((k,), age_seconds(now, at) or 0.0) for k, at in figures.oldest_pending_at.items()),
        )
        mailboxes = [m for m in figures.mailboxes if m.last_success_at is not None]
        yield _gauge(
            "ticketbot_imap_poll_lag_seconds",
            "Seconds since the mailbox was last polled successfully (by whichever replica holds its lease).",
            ["mailbox"],
            (((m.mailbox,), age_seconds(now, m.last_success_at) or 0.0) for m in mailboxes),
        )
        yield _gauge(
            "ticketbot_imap_last_success_timestamp_seconds",
            "Unix time of the mailbox's last successful poll.",
            ["mailbox"],
            (((m.mailbox,), as_utc(m.last_success_at).timestamp()) for m in mailboxes if m.last_success_at),
        )
        yield _gauge(
            "ticketbot_imap_failing",
            "1 when the mailbox's last poll failed (its error is in mailbox_state.last_error).",
            ["mailbox"],
            (((m.mailbox,), int(m.last_error is not None)) for m in figures.mailboxes),
        )
        yield _gauge(
            "ticketbot_digest_runs",
            "Digest runs recorded (one per scope and period, whichever replica delivered it), by status.",
            ["status"],
            (((s,), n) for s, n in figures.digest_runs.items()),
        )
        yield _gauge(
            "ticketbot_digest_last_run_timestamp_seconds",
            "Unix time of the newest digest run per scope (a department, or admin).",
            ["scope"],
            (((s,), as_utc(at).timestamp()) for s, at in figures.digest_last_run_at.items()),
        )


def _gauge(
    name: str, documentation: str, labels: list[str], samples: Iterable[tuple[Sequence[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in sorted(samples):
        family.add_metric(list(values), value)
    return family


def claude_of(classifier: Classifier | None) -> ClaudeClassifier | None:
    """The Claude classifier inside ``classifier`` (alone or as a FallbackClassifier's primary), if any."""
    # Claude's module (and anthropic) is only imported when Claude is configured: if it is not loaded, there is none.
    module = sys.modules.get("core.classify.claude")
    if module is None or classifier is None:
        return None
    candidate = getattr(classifier, "primary", classifier)
    return candidate if isinstance(candidate, module.ClaudeClassifier) else None


class ClaudeCollector(Collector):
    """Claude's circuit breaker, requests and tokens, read from the live classifier at scrape time."""

    STATES = ("closed", "open", "half_open")

    def __init__(self, claude: ClaudeClassifier) -> None:
        self.claude = claude

    def collect(self) -> Iterator[Any]:
        stats = self.claude.stats()
        yield StateSetMetricFamily(
            "ticketbot_claude_circuit_state",
            "Claude circuit breaker: closed (calling), open (not calling, offline model answers), half_open (probing).",
            value={state: stats.circuit_state == state for state in self.STATES},
        )
        yield CounterMetricFamily(
            "ticketbot_claude_requests", "Classification calls that reached for the Claude API.", value=stats.requests
        )
        yield CounterMetricFamily(
            "ticketbot_claude_failures",
            "Claude calls that ended unavailable (what the circuit counts).",
            value=stats.failures,
        )
        tokens = CounterMetricFamily(
            "ticketbot_claude_tokens", "Claude tokens used, by direction.", labels=["direction"]
        )
        tokens.add_metric(["in"], stats.tokens_in)
        tokens.add_metric(["out"], stats.tokens_out)
        yield tokens


class Metrics:
    """The process's metrics: a ``PipelineObserver`` for per-event figures plus the scrape-time collectors."""

    def __init__(self, engine: Engine, *, classifier: Classifier | None = None, cache_seconds: float = 5.0) -> None:
        self.registry = CollectorRegistry()
        self.tickets_created = Counter(
            "ticketbot_tickets_created",
            "Tickets this process opened, by channel and department (after routing).",
            ["channel", "department"],
            registry=self.registry,
        )
        self.classification_seconds = Histogram(
            "ticketbot_classification_seconds",
            "Time to classify a new ticket (fallbacks included), by the classifier that answered.",
            ["classifier"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "ticketbot_classification_fallbacks",
            "Tickets the fallback classifier answered because the primary (Claude) failed or was too slow.",
            ["classifier"],
            registry=self.registry,
        )
        self.database = DatabaseCollector(FigureReader(engine), cache_seconds=cache_seconds)
        self.registry.register(self.database)
        claude = claude_of(classifier)
        if claude is not None:
            self.registry.register(ClaudeCollector(claude))

    def ticket_opened(self, ticket: Ticket, classification: Classification) -> None:
        self.tickets_created.labels(ticket.channel.value, ticket.department).inc()
        if classification.latency_ms is not None:
            self.classification_seconds.labels(classification.classifier).observe(classification.latency_ms / 1000)
        if classification.fallback_reason is not None:
            self.fallbacks.labels(classification.classifier).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


def metrics_router(metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    def scrape() -> Response:
        """Prometheus scrape endpoint (the text exposition format)."""
        return Response(content=metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return router
