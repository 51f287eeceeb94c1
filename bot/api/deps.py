"""REST API plumbing: what a route needs (store, pipeline, config, tokens, rate limiter), kept on ``app.state``.

A route asks for it with a parameter ``ctx: Context`` (or ``ctx: Annotated[ApiContext, Depends(get_context)]``)
and uses ``ctx.store``, ``ctx.pipeline`` and ``ctx.config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from bot.api.ratelimit import RateLimiter
from bot.api.tokencache import TokenCache
from core.config import Config
from core.pipeline import Pipeline
from storage.store import SqlStore
from storage.tokens import TokenStore


@dataclass
class ApiContext:
    """The services behind the API, built once by the composition root and shared by every request.

    ``limiter`` and ``auth`` live in this process: each replica rate-limits on its own (see docs/api.md).
    """

    config: Config
    store: SqlStore
    pipeline: Pipeline
    tokens: TokenStore
    limiter: RateLimiter = field(init=False)
    auth: TokenCache = field(init=False)

    def __post_init__(self) -> None:
        api = self.config.api
        self.limiter = RateLimiter(rate=api.rate_limit_per_second, burst=api.rate_limit_burst)
        self.auth = TokenCache(self.tokens, ttl=api.token_cache_seconds)

    @classmethod
    def build(cls, config: Config, store: SqlStore, pipeline: Pipeline) -> ApiContext:
        return cls(config=config, store=store, pipeline=pipeline, tokens=TokenStore(store.engine))


async def get_context(request: Request) -> ApiContext:
    """FastAPI dependency: the ``ApiContext`` of the API app serving this request.

    ``async`` because it only reads an attribute: FastAPI runs a plain ``def`` dependency in its thread pool, and
    that hop cost more than the rest of the dependency on every request.
    """
    context: ApiContext = request.app.state.api
    return context


Context = Annotated[ApiContext, Depends(get_context)]
