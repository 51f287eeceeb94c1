"""REST API edge: token lookups cached for a few seconds, and ``last_used_at`` written at most once a minute."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from storage.tokens import ApiToken, TokenStore, digest

TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is for people ("is this token still used?"), not an audit log


class TokenCache:
    """Authenticates secrets through ``TokenStore``; a revoked token stops working within ``ttl`` seconds.

    Without the cache every request would read the token row (and write last_used_at): the cost of a whole
    filtered list query again.
    """

    def __init__(self, tokens: TokenStore, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.tokens = tokens
        self.ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[ApiToken | None, float]] = {}  # digest -> (token or None, expires)
        self._touched: dict[int, datetime] = {}
        self._lock = threading.Lock()

    def authenticate(self, secret: str) -> ApiToken | None:
        key = digest(secret)
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            token = hit[0]
        else:
            token = self.tokens.authenticate(secret)
            with self._lock:
                if len(self._cache) > 10_000:  # bounded: unknown secrets are cached too (as None)
                    self._cache.clear()
                self._cache[key] = (token, now + self.ttl)
        if token is not None:
            self._touch(token)
        return token

    def peek(self, secret: str) -> tuple[bool, ApiToken | None]:
        """``(True, token or None)`` when ``authenticate`` would answer from the cache without touching the database
        (no lookup due, no ``last_used_at`` write due); else ``(False, None)``. It never blocks on I/O, so the
        API can call it on the event loop and hand only the rest to a thread."""
        now = self._clock()
        with self._lock:
            hit = self._cache.get(digest(secret))
            if hit is None or hit[1] <= now:
                return False, None
            token = hit[0]
            if token is not None:
                last = self._touched.get(token.id) or token.last_used_at
                if last is None or datetime.now(UTC) - last >= TOUCH_EVERY:
                    return False, None
        return True, token

    def forget(self) -> None:
        """Drop every cached lookup (after a revoke in this process)."""
        with self._lock:
            self._cache.clear()

    def _touch(self, token: ApiToken) -> None:
        now = datetime.now(UTC)
        with self._lock:
            last = self._touched.get(token.id) or token.last_used_at
            if last is not None and now - last < TOUCH_EVERY:
                return
            self._touched[token.id] = now
        self.tokens.touch(token.id, now=now)
