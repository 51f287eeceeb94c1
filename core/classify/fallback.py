"""Classification step of the pipeline: a primary classifier bounded by a deadline, with a fallback."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace

from core.classify.base import Classification, Classifier
from core.errors import ClassifierUnavailable

log = logging.getLogger(__name__)


@dataclass
class FallbackClassifier:
    """Asks ``primary`` and, if it is unavailable or slower than ``deadline``, answers with ``fallback``.

    The primary runs on a worker thread so a hung network call cannot hold a ticket past the deadline;
    the fallback (the offline model) is local and fast, so it runs inline.
    """

    primary: Classifier
    fallback: Classifier
    deadline: float = 20.0
    workers: int = 8
    name: str = field(init=False)
    _pool: ThreadPoolExecutor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = f"{self.primary.name}+{self.fallback.name}"
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="classify")

    def classify(self, subject: str, body: str) -> Classification:
        started = time.monotonic()
        future: Future[Classification] = self._pool.submit(self.primary.classify, subject, body)
        try:
            return future.result(timeout=self.deadline)
        except ClassifierUnavailable as exc:
            reason = str(exc) or type(exc).__name__
        except FutureTimeout:
            future.cancel()
            reason = f"no answer within {self.deadline:.1f}s"
        log.info("%s unavailable (%s); using %s", self.primary.name, reason, self.fallback.name)
        result = self.fallback.classify(subject, body)
        return replace(result, fallback_reason=reason, latency_ms=(time.monotonic() - started) * 1000)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
