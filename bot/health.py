"""Readiness at the bot's edge: ``/readyz`` asks the database and every enabled channel whether it works.

Each part of the process is a ``Probe``; the runtime builds one per part it started (``mount_observability``)
and the route answers 200 when every part is ready, 503 naming the failing parts otherwise. Parts that read the
database are not asked when the database itself is down, so the answer names the cause, not its echoes.
``/healthz`` (liveness) lives in ``bot.http``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from bot.metrics import FigureReader, Metrics, age_seconds, database_error, metrics_router
from core.config import Config, HealthConfig, ImapMailboxConfig

if TYPE_CHECKING:
    from core.classify.base import Classifier
    from core.pipeline import Pipeline

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PartHealth:
    """One part's answer: ready or not, a line for people, and figures for scripts."""

    ok: bool
    detail: str
    data: Mapping[str, Any] = field(default_factory=dict)


class Probe(Protocol):
    """A part of the running process that can say whether it works now."""

    name: str
    needs_database: bool  # not asked while the database is down (its answer would only repeat that)

    def probe(self) -> PartHealth: ...


class Listener(Protocol):
    """A started TCP listener (the SMTP intake server): where to knock."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class SlackState(Protocol):
    """The Slack channel as readiness sees it (``bot.slack.SlackChannel``)."""

    @property
    def mode(self) -> str: ...

    def ready(self) -> bool: ...


def in_thread(work: Callable[[], PartHealth], timeout: float, what: str) -> PartHealth:
    """Run ``work`` on a daemon thread and give up after ``timeout``: a black-holed host cannot hang the probe.

    A daemon thread rather than a pool: a stuck one ends with its own connect timeout and never delays exit.
    """
    result: list[PartHealth] = []
    thread = threading.Thread(target=lambda: result.append(work()), name=f"probe-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if result:
        return result[0]
    return PartHealth(False, f"no answer within {timeout:g}s")


@dataclass
class DatabaseProbe:
    """``SELECT 1`` within ``timeout`` seconds."""

    engine: Engine
    timeout: float = 2.0
    name: str = "database"
    needs_database: bool = False

    def probe(self) -> PartHealth:
        return in_thread(self._select_one, self.timeout, self.name)

    def _select_one(self) -> PartHealth:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            return PartHealth(False, f"unreachable: {database_error(exc)}", {"dialect": self.engine.dialect.name})
        except Exception as exc:  # noqa: BLE001 - a probe reports every failure instead of raising
            return PartHealth(False, f"unreachable: {type(exc).__name__}: {exc}", {"dialect": self.engine.dialect.name})
        return PartHealth(True, "reachable", {"dialect": self.engine.dialect.name})


@dataclass
class OutboxProbe:
    """The undelivered backlog: too many pending items, or one pending too long, means delivery is stuck.

    Only kinds this process can deliver count: an item of a kind with no sender (Slack switched off) waits on
    purpose until the channel is enabled again, and must not make every replica unready meanwhile.
    """

    reader: FigureReader
    max_pending: int
    max_age_seconds: float
    kinds: Collection[str] | None = None
    clock: Clock = utcnow
    name: str = "outbox"
    needs_database: bool = True

    def probe(self) -> PartHealth:
        try:
            pending, oldest = self.reader.pending_outbox(self.kinds)
        except SQLAlchemyError as exc:
            return PartHealth(False, f"cannot read the outbox: {database_error(exc)}")
        age = age_seconds(self.clock(), oldest)
        data = {"pending": pending, "oldest_pending_seconds": None if age is None else round(age, 1)}
        if self.max_pending and pending > self.max_pending:
            return PartHealth(False, f"{pending} items pending (limit {self.max_pending})", data)
        if self.max_age_seconds and age is not None and age > self.max_age_seconds:
            return PartHealth(False, f"oldest pending item is {age:.0f}s old (limit {self.max_age_seconds:g}s)", data)
        return PartHealth(True, f"{pending} pending", data)


@dataclass
class ImapProbe:
    """A mailbox is fresh when it was polled successfully within ``stale_polls`` poll intervals.

    The freshness is the shared ``mailbox_state`` row, written by whichever replica holds the mailbox's lease, so
    every replica sees the same answer. Until the first successful poll, a newly started process gets the same
    window as grace.
    """

    reader: FigureReader
    mailbox: ImapMailboxConfig
    stale_polls: float
    started_at: datetime = field(default_factory=utcnow)
    clock: Clock = utcnow
    needs_database: bool = True
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"imap:{self.mailbox.name}"

    def probe(self) -> PartHealth:
        try:
            state = self.reader.mailbox(self.mailbox.name)
        except SQLAlchemyError as exc:
            return PartHealth(False, f"cannot read the mailbox state: {database_error(exc)}")
        now = self.clock()
        window = self.stale_polls * self.mailbox.poll_seconds
        last = state.last_success_at if state else None
        data: dict[str, Any] = {
            "last_success_at": last.isoformat() if last else None,
            "stale_after_seconds": window,
            "last_error": state.last_error if state else None,
        }
        if last is None:
            waited = age_seconds(now, self.started_at) or 0.0
            if waited <= window:
                return PartHealth(True, "waiting for the first poll", data)
            return PartHealth(False, f"no successful poll in {waited:.0f}s", data)
        age = age_seconds(now, last) or 0.0
        data["last_success_seconds"] = round(age, 1)
        if age > window:
            why = f"; last error: {state.last_error}" if state and state.last_error else ""
            return PartHealth(False, f"stale: last successful poll {age:.0f}s ago (limit {window:g}s){why}", data)
        return PartHealth(True, f"polled {age:.0f}s ago", data)


@dataclass
class SmtpProbe:
    """The SMTP/LMTP listener accepts a connection and greets with 220 within ``timeout``.

    Reading the greeting, not just connecting, proves the server's event loop is alive: the kernel completes
    a TCP handshake into the backlog even when nothing serves it.
    """

    listener: Listener
    timeout: float = 2.0
    name: str = "smtp"
    needs_database: bool = False

    def probe(self) -> PartHealth:
        host, port = self.listener.host, self.listener.port
        # A wildcard bind is not a destination: knock on loopback, as the intake's own start-up check does.
        target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        data = {"host": host, "port": port}
        try:
            with socket.create_connection((target, port), timeout=self.timeout) as sock:
                sock.settimeout(self.timeout)
                greeting = sock.recv(512)
                try:
                    sock.sendall(b"QUIT\r\n")
                except OSError:
                    pass  # the greeting already answered the question
        except OSError as exc:
            return PartHealth(False, f"not accepting on {target}:{port}: {exc.strerror or exc}", data)
        if not greeting.startswith(b"220"):
            first = greeting.decode("ascii", "replace").strip()[:80] or "(nothing)"
            return PartHealth(False, f"unexpected greeting on {target}:{port}: {first}", data)
        return PartHealth(True, f"accepting on {host}:{port}", data)


@dataclass
class SlackProbe:
    """Socket Mode: a live session to Slack; HTTP mode: nothing to hold (Slack calls ``/slack/events``)."""

    channel: SlackState
    name: str = "slack"
    needs_database: bool = False

    def probe(self) -> PartHealth:
        data = {"mode": self.channel.mode}
        if self.channel.mode != "socket":
            return PartHealth(True, "HTTP mode: Slack calls /slack/events", data)
        if self.channel.ready():
            return PartHealth(True, "Socket Mode connected", data)
        return PartHealth(False, "Socket Mode not connected", data)


@dataclass
class Readiness:
    """Asks every probe, the database first; ready when none fails."""

    probes: Sequence[Probe]
    _failing: list[str] = field(default_factory=list, init=False, repr=False)  # last check: log changes only

    def check(self) -> tuple[bool, dict[str, Any]]:
        parts: dict[str, dict[str, Any]] = {}
        failing: list[str] = []
        database_down = False
        for probe in sorted(self.probes, key=lambda p: p.needs_database):
            if probe.needs_database and database_down:
                parts[probe.name] = {"ok": None, "detail": "not checked: the database is unreachable"}
                continue
            try:
                health = probe.probe()
            except Exception as exc:  # noqa: BLE001 - one broken probe must not hide the others' answers
                log.exception("readiness: probe %s failed", probe.name)
                health = PartHealth(False, f"probe failed: {type(exc).__name__}: {exc}")
            parts[probe.name] = {"ok": health.ok, "detail": health.detail, **health.data}
            if not health.ok:
                failing.append(probe.name)
                database_down = database_down or isinstance(probe, DatabaseProbe)
        ready = not failing
        if failing != self._failing:
            if failing:
                log.warning("readiness: not ready (%s)", ", ".join(f"{n}: {parts[n]['detail']}" for n in failing))
            else:
                log.info("readiness: ready again")
            self._failing = failing
        return ready, {"status": "ready" if ready else "not ready", "failing": failing, "parts": parts}


def readiness_router(readiness: Readiness) -> APIRouter:
    router = APIRouter()

    @router.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        """Readiness: 200 when the database and every enabled channel work, else 503 naming the failing parts."""
        ready, body = readiness.check()
        return JSONResponse(body, status_code=200 if ready else 503, headers={"Cache-Control": "no-store"})

    return router


def readiness_probes(
    config: Config,
    engine: Engine,
    *,
    smtp: Sequence[Listener] = (),
    slack: SlackState | None = None,
    outbox_kinds: Collection[str] | None = None,
    reader: FigureReader | None = None,
    clock: Clock = utcnow,
) -> list[Probe]:
    """One probe per part the runtime started: database, outbox, each IMAP mailbox, SMTP listeners, Slack."""
    health: HealthConfig = config.health
    reader = reader or FigureReader(engine, statement_timeout=health.database_timeout_seconds, clock=clock)
    started_at = clock()
    probes: list[Probe] = [
        DatabaseProbe(engine, timeout=health.database_timeout_seconds),
        OutboxProbe(
            reader,
            max_pending=health.outbox_max_pending,
            max_age_seconds=health.outbox_max_age_seconds,
            kinds=outbox_kinds,
            clock=clock,
        ),
    ]
    probes += [
        ImapProbe(reader, mailbox, health.imap_stale_polls, started_at=started_at, clock=clock)
        for mailbox in config.email.imap
    ]
    probes += [
        SmtpProbe(listener, timeout=health.database_timeout_seconds, name="smtp" if n == 0 else f"smtp-{n + 1}")
        for n, listener in enumerate(smtp)
    ]
    if slack is not None:
        probes.append(SlackProbe(slack))
    return probes


def mount_observability(
    app: FastAPI,
    *,
    config: Config,
    engine: Engine,
    pipeline: Pipeline | None = None,
    classifier: Classifier | None = None,
    smtp: Sequence[Listener] = (),
    slack: SlackState | None = None,
    outbox_kinds: Collection[str] | None = None,
) -> tuple[Readiness, Metrics]:
    """Add ``/readyz`` and ``/metrics`` to ``app`` and make ``pipeline`` report each ticket it opens."""
    readiness = Readiness(readiness_probes(config, engine, smtp=smtp, slack=slack, outbox_kinds=outbox_kinds))
    metrics = Metrics(
        engine,
        classifier=classifier if classifier is not None else (pipeline.classifier if pipeline else None),
        cache_seconds=config.health.metrics_cache_seconds,
    )
    if pipeline is not None:
        pipeline.observer = metrics
    app.include_router(readiness_router(readiness))
    app.include_router(metrics_router(metrics))
    return readiness, metrics
