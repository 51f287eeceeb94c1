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


class Preparer(Protocol):
    """Decodes and classifies claimed rows ahead of their turn, elsewhere (bot.prepare: in other processes)."""

    def prepare(self, rows: Sequence[StoredInbound]) -> Iterator[Prepared | None]:
        """Each row's ``Prepared``, in order, as it becomes ready; None for a row to prepare in this process.
        Never raises for a row: a failure there is retried in-process, where it is counted as usual."""
        ...


@dataclass
class InboundWorker:
    """Runs received inbound rows through the pipeline; a row that keeps failing is parked, never retried forever."""

    store: InboundStore
    pipeline: Pipeline
    max_attempts: int = 3
    # Small batches with a long lease: a batch must finish (each ticket may wait up to the classifier
    # deadline) well before its lease lets another worker claim the same rows after a crash. With the offline
    # model (milliseconds a message) the runtime claims more at a time (bot.runtime.worker_batch).
    batch_size: int = 5
    lease: timedelta = timedelta(minutes=5)
    # Decoding and classifying are most of a message's CPU and need no database: with a preparer they run in
    # other processes, the next rows' while this thread writes the current one's ticket (docs/imap.md).
    preparer: Preparer | None = None
    # Failures that could not be recorded because the database was away: recorded first thing next round, so
    # their rows are released at once rather than when the lease runs out.
    _unrecorded: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def run_once(self, now: datetime) -> int:
        """Claim a batch and process it. Raises StorageError while earlier failures still cannot be recorded."""
        while self._unrecorded:
            self._unrecorded[0]()
            self._unrecorded.pop(0)
        rows = self.store.claim_inbound(now=now, limit=self.batch_size, lease=self.lease)
        if not rows:
            return 0
        ready = self.preparer.prepare(rows) if self.preparer is not None else repeat(None)
        for row, prepared in zip(rows, ready, strict=False):  # repeat() never ends
            self.process(row, now, prepared)
        return len(rows)

    def process(self, row: StoredInbound, now: datetime, prepared: Prepared | None = None) -> Outcome | None:
        try:
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
                self._unrecorded.append(record)
            return None
