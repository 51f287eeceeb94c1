"""Process stage driver: claims stored inbound messages and runs each through the Pipeline, isolating failures."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from core.errors import StorageError
from core.inbound import InboundStatus, StoredInbound
from core.pipeline import Outcome, Pipeline
from core.ports import InboundStore

log = logging.getLogger(__name__)


@dataclass
class InboundWorker:
    """Runs received inbound rows through the pipeline; a row that keeps failing is parked, never retried forever."""

    store: InboundStore
    pipeline: Pipeline
    max_attempts: int = 3
    # Small batches with a long lease: a batch must finish (each ticket may wait up to the classifier
    # deadline) well before its lease lets another worker claim the same rows after a crash.
    batch_size: int = 5
    lease: timedelta = timedelta(minutes=5)
    # Failures that could not be recorded because the database was away: recorded first thing next round, so
    # their rows are released at once rather than when the lease runs out.
    _unrecorded: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def run_once(self, now: datetime) -> int:
        """Claim a batch and process it. Raises StorageError while earlier failures still cannot be recorded."""
        while self._unrecorded:
            self._unrecorded[0]()
            self._unrecorded.pop(0)
        rows = self.store.claim_inbound(now=now, limit=self.batch_size, lease=self.lease)
        for row in rows:
            self.process(row, now)
        return len(rows)

    def process(self, row: StoredInbound, now: datetime) -> Outcome | None:
        try:
            return self.pipeline.process(row)
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
