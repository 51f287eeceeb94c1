"""Process stage helper: decodes and classifies claimed email in worker processes, off the thread that writes tickets.

Parsing MIME and running the offline model are most of a message's CPU and touch no database. Under one GIL the
inbound workers took turns at them; in a process pool they run on the other cores while the worker thread
writes the previous message's ticket. Anything the pool cannot do (a crashed process, a timeout, an error)
comes back as None and is done in-process as before, where its failures are counted (core.worker).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from core.classify.base import Classifier
from core.config import Config
from core.inbound import StoredInbound
from core.message import Channel
from core.pipeline import Decoder, Prepared, prepare

log = logging.getLogger(__name__)

# A message takes milliseconds; this only keeps a wedged process from holding a worker thread for ever.
RESULT_TIMEOUT = 120.0


def auto_processes(config: Config) -> int:
    """``worker.processes``, or when unset one process if this one may use more than one core (none otherwise:
    on a single core the pool would only add copying)."""
    if config.worker.processes is not None:
        return config.worker.processes
    return 1 if usable_cores() > 1 else 0


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> float:
    """The cores this process may use: its CPU set, capped by a cgroup v2 CPU quota (a container's ``cpus:``
    limit changes the quota, not the CPU set)."""
    try:
        cores: float = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, int(quota) / int(period))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to read
    return cores


class ProcessPreparer:
    """``core.worker.Preparer`` over a pool of ``processes`` spawned processes, each with the decoders and (when
    ``classify``: the offline model is the runtime's classifier) the classifier that ``ticketbot run`` builds."""

    name = "inbound-preparer"

    def __init__(self, config: Config, *, classify: bool, processes: int, timeout: float = RESULT_TIMEOUT) -> None:
        self.config = config
        self.classify = classify
        self.processes = processes
        self.timeout = timeout
        self._pool: ProcessPoolExecutor | None = None
        self._warming: list[Future[None]] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = self._new_pool()
                # Start the processes now (they load the model) rather than at the first message.
                self._warming = [self._pool.submit(_ready) for _ in range(self.processes)]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every process has started and loaded what it needs (benchmarks time a warm pool)."""
        for future in self._warming:
            future.result(timeout=timeout)

    def stop(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def prepare(self, rows: Sequence[StoredInbound]) -> Iterator[Prepared | None]:
        # Other channels decode in microseconds (JSON) or need the Slack adapter's decoders: done in-process.
        email = [row for row in rows if row.channel is Channel.EMAIL]
        pool = self._pool
        future: Future[list[Prepared]] | None = None
        if pool is not None and email:
            try:
                # One task for the batch: each task costs this process about as much as decoding a message would.
                future = pool.submit(_prepare_in_worker, email)
            except (BrokenProcessPool, RuntimeError):  # broken, or shut down by stop()
                self._replace(pool)
        return self._collect(rows, email, future)  # submitted now; waited for as the caller iterates

    def _collect(
        self, rows: Sequence[StoredInbound], email: list[StoredInbound], future: Future[list[Prepared]] | None
    ) -> Iterator[Prepared | None]:
        done = iter(self._result(email, future) if future is not None else [None] * len(email))
        for row in rows:
            yield next(done) if row.channel is Channel.EMAIL else None

    def _result(self, rows: Sequence[StoredInbound], future: Future[list[Prepared]]) -> Sequence[Prepared | None]:
        first = rows[0].id
        try:
            return future.result(timeout=self.timeout)
        except BrokenProcessPool:
            log.warning("inbound %d+: a preparing process died; starting a new pool, preparing here", first)
            self._replace(None)
        except FutureTimeout:
            log.warning("inbound %d+: not prepared within %.0fs; preparing here", first, self.timeout)
        except Exception as exc:  # noqa: BLE001 - done again in-process, where the failure is counted and logged
            log.info("inbound %d+: preparing failed in a worker process (%s); preparing here", first, exc)
        return [None] * len(rows)

    def _replace(self, broken: ProcessPoolExecutor | None) -> None:
        """A new pool in place of a broken one (``None``: whichever is current, if it is broken)."""
        with self._lock:
            current = self._pool
            if current is None or (broken is not None and current is not broken):
                return  # stopped, or replaced already by another thread
            old, self._pool = current, self._new_pool()
        old.shutdown(wait=False, cancel_futures=True)

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: this process runs threads (pollers, HTTP, the scheduler) that a fork would copy mid-step.
        return ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self.config, self.classify),
        )


# -- in the worker processes ------------------------------------------------------------------------------

_decode: Decoder | None = None
_classifier: Classifier | None = None


def _start_worker(config: Config, classify: bool) -> None:
    global _decode, _classifier
    # Ctrl-C reaches the whole process group; the parent decides when the pool stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent killed outright (SIGKILL, the OOM killer) never tells the pool to stop, and the task queue's pipe
    # stays open (this process holds its write end too): without this watch the process would wait for ever.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), name="parent-watch", daemon=True).start()
    from bot.runtime import configure_logging, email_decoders, offline_classifier

    configure_logging(config.log_level)
    _decode = email_decoders(config)[Channel.EMAIL]
    _classifier = offline_classifier(config) if classify else None


def _exit_with(parent_sentinel: int) -> None:
    multiprocessing.connection.wait([parent_sentinel])
    os._exit(0)


def _ready() -> None:
    pass


def _prepare_in_worker(rows: Sequence[StoredInbound]) -> list[Prepared]:
    if _decode is None:
        raise RuntimeError("the pool's initializer did not run")
    return [prepare(_decode, _classifier, row) for row in rows]
