"""Process stage driver: claims stored inbound messages and runs each through the Pipeline, isolating failures."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import repeat
from typing import Protocol

from core.errors import StorageError
from core.inbound import InboundStatus, StoredInbound
from core.pipeline import Outcome, Pipeline, Prepared
from core.ports import InboundStore

log = logging.getLogger(__name__)

# Batches one round may take in turn (see run_once): the round's ``now`` dates the leases it takes, and with the
# offline model ten batches take well under a second.
AHEAD_ROUNDS = 10


class Preparer(Protocol):
    """Decodes and classifies claimed rows ahead of their turn, elsewhere (bot.prepare: in other processes)."""

    def prepare(self, rows: Sequence[StoredInbound]) -> Iterator[Prepared | None]:
        """Start preparing ``rows`` at once; the iterator gives each row's ``Prepared``, in order, as it becomes
        ready, or None for a row to prepare in this process. Never raises for a row: a failure there is retried
        in-process, where it is counted as usual."""
        ...


@dataclass
class InboundWorker:
    """Runs received inbound rows through the pipeline; a row that keeps failing is parked, never retried forever."""

    store: InboundStore
    pipeline: Pipeline
    max_attempts: int = 3
    # Small batches with a long lease: a batch must finish (each ticket may wait up to the classifier
    # deadline) well before its lease lets another worker claim the same rows after a crash. With the offline
    # model (milliseconds a message) the runtime claims more at a time (bot.runtime.inbound_worker).
    batch_size: int = 5
    lease: timedelta = timedelta(minutes=5)
    # Decoding and classifying are most of a message's CPU and need no database: with a preparer they run in
    # other processes, the next rows' while this thread writes the current one's ticket (docs/imap.md).
    preparer: Preparer | None = None
    # Write a claimed batch in one transaction, with a savepoint per message (a failing message's writes are
    # undone, the others' kept): per message the transactions' own cost was about a quarter of the CPU. Only with
    # a classifier that answers in milliseconds: the batch holds the database's write lock while it runs.
    shared_transaction: bool = False
    # Failures that could not be recorded because the database was away: recorded first thing next round, so
    # their rows are released at once rather than when the lease runs out.
    _unrecorded: list[tuple[int, Callable[[], None]]] = field(default_factory=list, repr=False)  # (row id, record)

    def run_once(self, now: datetime) -> int:
        """Claim a batch and process it. With a preparer and shared transactions (a fast classifier), up to
        ``AHEAD_ROUNDS`` batches, each claimed and handed to the preparer before the previous one is written, so the
        worker processes prepare one batch while this thread writes the other. Raises StorageError while earlier
        failures still cannot be recorded."""
        while self._unrecorded:
            self._unrecorded[0][1]()
            self._unrecorded.pop(0)
        rows = self._claim(now)
        ready = self._prepare(rows)
        done = 0
        while rows:
            following: list[StoredInbound] = []
            if self.preparer is not None and self.shared_transaction and done < AHEAD_ROUNDS * self.batch_size:
                try:
                    following = self._claim(now)
                except StorageError:
                    self._write(rows, ready, now)  # claimed already: finish it before giving up the round
                    raise
            upcoming = self._prepare(following)
            self._write(rows, ready, now)
            done += len(rows)
            rows, ready = following, upcoming
        return done

    def _claim(self, now: datetime) -> list[StoredInbound]:
        return self.store.claim_inbound(now=now, limit=self.batch_size, lease=self.lease)

    def _prepare(self, rows: list[StoredInbound]) -> Iterator[Prepared | None]:
        return self.preparer.prepare(rows) if self.preparer is not None and rows else repeat(None)

    def _write(self, rows: list[StoredInbound], ready: Iterator[Prepared | None], now: datetime) -> None:
        if not self.shared_transaction:
            for row, prepared in zip(rows, ready, strict=False):  # repeat() never ends
                self.process(row, now, prepared)
            return
        # Everything prepared first: waiting for the worker processes must not hold the write lock.
        batch = list(zip(rows, ready, strict=False))
        try:
            # Observer calls (metrics) wait for the commit: a batch that fails is done again below.
            with self.pipeline.observations_held(), self.store.transaction():
                for row, prepared in batch:
                    self.process(row, now, prepared)
        except StorageError as exc:
            # The batch's transaction failed as a whole (its commit, a lost connection): none of it is stored, so
            # each row goes again in transactions of its own, where a failure is the row's alone. (A ticket it
            # opened before the failure was logged twice; the observer, held until the commit, counts it once.)
            log.warning("a batch of %d inbound rows was rolled back (%s); processing them one by one", len(batch), exc)
            # Failures the batch could not record went with it too: the rows are tried again now. (The other
            # thread's entries stay: the list is shared.)
            ids = {row.id for row, _ in batch}
            self._unrecorded[:] = [entry for entry in self._unrecorded if entry[0] not in ids]
            for row, prepared in batch:
                self.process(row, now, prepared)

    def process(self, row: StoredInbound, now: datetime, prepared: Prepared | None = None) -> Outcome | None:
        try:
            # Inside a shared transaction: this row's writes, and its observer calls, undone if it fails.
            with self.pipeline.observations_held(), self.store.savepoint():
                return self.pipeline.process(row, prepared)
        except Exception as exc:  # noqa: BLE001 - poison-message isolation: one bad row must not stop the others
            # A storage failure is the database's, not the message's: the attempt does not count towards parking.
            outage = isinstance(exc, StorageError)
            if outage:
                log.warning("inbound %d (%s) not processed: %s", row.id, row.channel, exc)
            else:
                log.exception("inbound %d (%s) failed on attempt %d", row.id, row.channel, row.attempts + 1)
            error = f"{type(exc).__name__}: {exc}"

            def record() -> None:
                status = self.store.fail_inbound(
                    row.id, error=error, max_attempts=self.max_attempts, now=now, count_attempt=not outage
                )
                if status is InboundStatus.PARKED:
                    log.warning("inbound %d parked after %d attempts", row.id, self.max_attempts)

            try:
                record()
            except StorageError:
                self._unrecorded.append((row.id, record))
            return None
