"""REST API edge: a per-token token bucket, in process (each replica limits on its own)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Token buckets keyed by API token id: ``burst`` requests at once, refilled at ``rate`` per second.

    One lock for all buckets: a check is a few arithmetic operations, far cheaper than the request it guards.
    """

    def __init__(self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # key -> (tokens left, when last refilled)
        self._lock = threading.Lock()

    def acquire(self, key: int) -> float:
        """Take one request from ``key``'s bucket: 0.0 when allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0  # rate limiting disabled
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1 (RFC 9110 allows no fractions)."""
    return str(max(1, math.ceil(seconds)))
