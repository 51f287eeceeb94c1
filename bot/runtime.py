"""Composition root: builds store, classifier and Pipeline from Config and runs every part of `ticketbot run`."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler

from bot.prepare import ProcessPreparer, auto_processes
from core.classify.base import Classifier
from core.classify.fallback import FallbackClassifier
from core.config import Config, ImapMailboxConfig, Secrets
from core.errors import ConfigError
from core.message import Channel
from core.outbox import OutboxDispatcher, OutboxKind, RetryPolicy, Sender
from core.pipeline import Decoder, Pipeline
from core.reply import ReplySettings
from core.route import Router
from core.worker import InboundWorker
from storage.db import ensure_schema, make_engine
from storage.store import SqlStore

log = logging.getLogger("ticketbot")


def utcnow() -> datetime:
    return datetime.now(UTC)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        force=True,  # the CLI configured WARNING for one-shot commands; `run` logs what it starts
    )
    # Per-connection chatter from aiosmtpd and per-step notes from alembic drown the lines people need.
    for noisy in ("mail.log", "alembic", "apscheduler.scheduler", "apscheduler.executors"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def open_store(config: Config) -> SqlStore:
    """The store for ``config``, migrated to the latest schema (every command works on a fresh database)."""
    engine = make_engine(config.database_url, echo=config.database.echo, pool_size=config.database.pool_size)
    ensure_schema(engine)
    return SqlStore(engine)


def offline_classifier(config: Config) -> Classifier:
    """The offline model: the trained file if there is one, else the model built from the departments' words."""
    from core.classify.offline import OfflineClassifier

    return OfflineClassifier.load(
        config.model_path if config.model_path.exists() else None,
        config.department_names,
        descriptions={d.name: d.description for d in config.departments},
        keywords={d.name: d.keywords for d in config.departments},
    )


def build_classifier(config: Config, secrets: Secrets) -> Classifier:
    """The classifier ``classifier.mode`` asks for: Claude (with the offline model as fallback) or offline alone."""
    offline = offline_classifier(config)
    mode = config.classifier.mode
    has_key = secrets.anthropic_api_key is not None
    if mode == "claude" and not has_key:
        raise ConfigError("classifier.mode: 'claude' needs ANTHROPIC_API_KEY in the environment")
    if mode == "offline" or not has_key:
        return offline
    from core.classify.claude import ClaudeClassifier

    claude = ClaudeClassifier.from_config(config, secrets)
    return FallbackClassifier(
        primary=claude,
        fallback=offline,
        deadline=config.classifier.deadline_seconds,
        # One thread per request Claude may have in flight, so the deadline never waits for a free thread.
        workers=max(8, config.classifier.claude.concurrency),
    )


def worker_threads(config: Config, classifier: Classifier) -> int:
    """How many inbound worker threads to run.

    With Claude, ``worker.threads`` of them, so one slow classification (Claude near its deadline) does not hold
    up the queue. The offline model alone is CPU-bound under the GIL: past two threads they only contend
    (bench/email_intake.py: 4 threads drained IMAP about a third slower than 1 or 2).
    """
    if isinstance(classifier, FallbackClassifier):
        return config.worker.threads
    return min(config.worker.threads, 2)


def inbound_worker(
    config: Config, store: SqlStore, pipeline: Pipeline, classifier: Classifier, preparer: ProcessPreparer | None
) -> InboundWorker:
    """The inbound worker the threads share. With the offline model alone it claims 20 rows at a time (claims,
    and the batches handed to the worker processes, cost per batch: bench/email_intake.py, 5 -> 20 took the IMAP
    drain from 319 to 354 msg/s) and writes each batch in one transaction. With Claude it claims 5, so a batch
    ends well inside its lease even when each ticket waits out the deadline, and each message is its own
    transaction: a batch's would hold the database's write lock while Claude answers."""
    offline = not isinstance(classifier, FallbackClassifier)
    return InboundWorker(
        store=store,
        pipeline=pipeline,
        max_attempts=config.worker.max_attempts,
        preparer=preparer,
        batch_size=20 if offline else 5,
        shared_transaction=offline,
    )


def inbound_preparer(config: Config, classifier: Classifier) -> ProcessPreparer | None:
    """The worker processes that decode (and, when the offline model is the classifier, classify) email; None when
    ``worker.processes`` comes to 0. Claude is asked from the threads: its calls wait on the network, not a core."""
    processes = auto_processes(config)
    if processes == 0 or not (config.email.smtp_intake.enabled or config.email.imap):
        return None
    return ProcessPreparer(config, classify=not isinstance(classifier, FallbackClassifier), processes=processes)


def reply_settings(config: Config, enabled: set[OutboxKind]) -> ReplySettings:
    return ReplySettings(
        support_address=config.email.support_addresses[0] if config.email.support_addresses else "support@localhost",
        from_name=config.email.from_name,
        # A department without a channel of its own is posted to the triage channel, so no ticket goes unseen.
        department_channels={
            d.name: channel for d in config.departments if (channel := d.slack_channel or config.slack.triage_channel)
        },
        enabled=frozenset(enabled),
    )


def build_pipeline(
    config: Config,
    store: SqlStore,
    classifier: Classifier,
    *,
    decoders: dict[Channel, Decoder] | None = None,
    enabled: set[OutboxKind] | None = None,
) -> Pipeline:
    return Pipeline(
        store=store,
        classifier=classifier,
        router=Router(
            departments=config.department_names,
            triage_department=config.routing.triage_department,
            confidence_threshold=config.routing.confidence_threshold,
        ),
        replies=reply_settings(config, enabled if enabled is not None else {OutboxKind.EMAIL}),
        decoders=decoders if decoders is not None else {},
        reopen_window=timedelta(days=config.email.reopen_window_days),
        max_auto_replies_per_hour=config.email.max_auto_replies_per_hour,
        max_auto_replies_per_day=config.email.max_auto_replies_per_day,
        bounce_suppression=timedelta(days=config.email.bounce_suppression_days),
        max_similar_per_hour=config.email.max_similar_tickets_per_hour,
    )


class Component(Protocol):
    """A part of the running process: started in order, stopped in reverse."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Loop:
    """Runs ``step(now)`` on its own thread every ``interval`` seconds, sooner when woken; never dies on an error."""

    name: str
    step: Callable[[datetime], int]
    interval: float
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=4)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step(utcnow())
            except Exception:  # noqa: BLE001 - a loop thread must survive a failed round (database restarting)
                log.exception("%s: round failed; retrying", self.name)
                busy = 0
                self._stop.wait(min(self.interval * 5, 10))
            if busy:
                continue  # more may be waiting: go again at once
            self._wake.wait(self.interval)
            self._wake.clear()


class SchedulerComponent:
    """APScheduler's BackgroundScheduler; each ``jobs`` callable adds its jobs (digests, training) before start."""

    name = "scheduler"

    def __init__(self, timezone: str, jobs: Sequence[Callable[[BackgroundScheduler], None]] = ()) -> None:
        self.scheduler = BackgroundScheduler(timezone=timezone)
        self.jobs = list(jobs)

    def start(self) -> None:
        for register in self.jobs:
            register(self.scheduler)
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)


@dataclass
class Runtime:
    """Everything `ticketbot run` runs in one process."""

    config: Config
    secrets: Secrets
    store: SqlStore
    pipeline: Pipeline
    components: list[Component] = field(default_factory=list)
    senders: dict[OutboxKind, Sender] = field(default_factory=dict)
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    _stopped: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def build(cls, config: Config, secrets: Secrets) -> Runtime:
        store = open_store(config)
        classifier = build_classifier(config, secrets)
        senders: dict[OutboxKind, Sender] = {}
        decoders: dict[Channel, Decoder] = {}
        channels: list[Component] = []
        _add_email(config, store, senders, decoders, channels)
        from bot.http import http_component
        from bot.slack import slack_components, slack_outbox_kinds

        # Slack's senders need the pipeline, and the pipeline must know Slack will deliver: declare the kinds first.
        pipeline = build_pipeline(
            config, store, classifier, decoders=decoders, enabled=set(senders) | slack_outbox_kinds(secrets)
        )
        slack_senders, slack_parts, slack_decoders = slack_components(config, secrets, store, pipeline, None)
        senders.update(slack_senders)
        decoders.update(slack_decoders)
        channels.extend(slack_parts)
        http = http_component(config, slack_parts[0] if slack_parts else None, store=store, pipeline=pipeline)
        if http is not None:
            from bot.health import mount_observability

            mount_observability(  # /readyz and /metrics; the pipeline reports each ticket it opens to the metrics
                http.app,
                config=config,
                engine=store.engine,
                pipeline=pipeline,
                smtp=[c.server for c in channels if isinstance(c, SmtpIntakeComponent)],
                slack=slack_parts[0] if slack_parts else None,
                outbox_kinds=set(senders),
            )
            channels.append(http)  # last: stops first, so Slack can finish storing what it acknowledged
        runtime = cls(config=config, secrets=secrets, store=store, pipeline=pipeline, senders=senders)
        preparer = inbound_preparer(config, classifier)
        worker = inbound_worker(config, store, pipeline, classifier, preparer)
        workers = [
            Loop(f"inbound-worker-{n}", worker.run_once, config.worker.poll_seconds)
            for n in range(1, worker_threads(config, classifier) + 1)
        ]
        dispatcher = OutboxDispatcher(
            store=store,
            senders=senders,
            policy=RetryPolicy(
                max_attempts=config.outbox.max_attempts,
                base_delay=config.outbox.base_delay_seconds,
                max_delay=config.outbox.max_delay_seconds,
            ),
            batch_size=config.outbox.batch_size,
        )
        outbox_loop = Loop("outbox-dispatcher", dispatcher.run_once, config.outbox.poll_seconds)

        def wake_workers() -> None:
            for loop in workers:
                loop.wake()

        for channel in channels:
            set_wake = getattr(channel, "set_wake", None)
            if callable(set_wake):
                set_wake(wake_workers)
        from bot.digest import DigestService
        from storage.digests import SqlDigestStore

        digests = DigestService(config, SqlDigestStore(store), slack=OutboxKind.SLACK_DIGEST in senders)
        jobs: list[Callable[[BackgroundScheduler], None]] = [digests.register]
        if http is not None and config.api.enabled:
            from bot.api.meta import stats_warmer

            jobs.append(stats_warmer(store))
        scheduler = SchedulerComponent(config.digests.timezone, jobs)
        # The preparer starts before the threads that use it and stops after them.
        runtime.components = [*([preparer] if preparer else []), *workers, outbox_loop, scheduler, *channels]
        return runtime

    def start(self) -> None:
        log.info("database: %s", self.store.engine.url.render_as_string(hide_password=True))
        log.info("classifier: %s", self.pipeline.classifier.name)
        for component in self.components:
            component.start()
            log.info("started %s", component.name)
        if not any(k.startswith("slack") for k in self.senders):
            log.info("Slack: no SLACK_BOT_TOKEN set; running without Slack")

    def stop(self) -> None:
        for component in reversed(self.components):
            try:
                component.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                log.exception("stopping %s failed", component.name)
            else:
                log.info("stopped %s", component.name)
        self.store.engine.dispose()

    def run_forever(self) -> None:
        """Start, wait for SIGINT/SIGTERM, stop; returns within a few seconds of the signal."""

        def _signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            self._stopped.set()

        signal.signal(signal.SIGINT, _signal)
        signal.signal(signal.SIGTERM, _signal)
        self.start()
        log.info("ticketbot is running (Ctrl-C to stop)")
        while not self._stopped.wait(0.5):
            pass
        started = time.monotonic()
        self.stop()
        log.info("shut down in %.1fs", time.monotonic() - started)


def email_decoders(config: Config) -> dict[Channel, Decoder]:
    """How stored email is decoded into a Message (the only MIME code lives in intake.parse)."""
    from intake.parse import EmailSettings, email_decoder

    return {Channel.EMAIL: email_decoder(EmailSettings.from_config(config.email, config.instance_id))}


class SmtpIntakeComponent:
    """The SMTP (or LMTP) listener as a runtime component; it wakes the inbound workers on each new message."""

    name = "smtp-intake"

    def __init__(self, config: Config, store: SqlStore) -> None:
        from intake.smtp import SmtpIntake, SmtpIntakeServer

        intake = config.email.smtp_intake
        self._wake: Callable[[], None] = lambda: None
        self.handler = SmtpIntake(
            store=store,
            support_addresses=config.email.support_addresses,
            max_message_bytes=intake.max_message_bytes,
            on_received=lambda: self._wake(),
        )
        self.server = SmtpIntakeServer(
            self.handler,
            host=intake.host,
            port=intake.port,
            lmtp=intake.lmtp,
            max_message_bytes=intake.max_message_bytes,
        )

    def set_wake(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def start(self) -> None:
        self.server.start()
        self.name = f"smtp-intake on {self.server.host}:{self.server.port}"

    def stop(self) -> None:
        self.server.stop()


class ImapPollerComponent:
    """One IMAP mailbox's poller on its own thread; a failing mailbox never stops another."""

    def __init__(self, mailbox: ImapMailboxConfig, store: SqlStore, owner: str) -> None:
        from intake.imap import ImapPoller

        self.name = f"imap-poller {mailbox.name} ({mailbox.username}@{mailbox.host}:{mailbox.port}/{mailbox.folder})"
        self._wake: Callable[[], None] = lambda: None
        self.poller = ImapPoller(config=mailbox, store=store, owner=owner, on_received=lambda: self._wake())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.poller.run, args=(self._stop,), name=f"imap-{mailbox.name}")

    def set_wake(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=4)


def email_sender(config: Config) -> Sender:
    """Replies go to the configured relay, or become .eml files under <data_dir>/outbox when there is none."""
    from intake.reply import FileReplySender, SmtpReplySender

    relay = config.email.relay
    if relay is None:
        return FileReplySender(directory=config.outbox_dir, instance_id=config.instance_id)
    return SmtpReplySender(relay=relay, password=os.environ.get(relay.password_env), instance_id=config.instance_id)


def _add_email(
    config: Config,
    store: SqlStore,
    senders: dict[OutboxKind, Sender],
    decoders: dict[Channel, Decoder],
    channels: list[Component],
) -> None:
    """Email channel: parsing, SMTP intake, IMAP pollers and reply delivery (relay, or files under var/outbox)."""
    decoders.update(email_decoders(config))
    senders[OutboxKind.EMAIL] = email_sender(config)
    senders[OutboxKind.DIGEST_EMAIL] = senders[OutboxKind.EMAIL]  # the same relay or folder; built by kind
    if config.email.relay is None:
        log.info("email: no relay configured; replies are written to %s", config.outbox_dir)
    if config.email.smtp_intake.enabled:
        channels.append(SmtpIntakeComponent(config, store))
    owner = f"{config.instance_id}:{socket.gethostname()}:{os.getpid()}"
    for mailbox in config.email.imap:
        channels.append(ImapPollerComponent(mailbox, store, owner))
