"""REST API edge: bearer-token authentication, scopes and the per-token rate limit, as FastAPI dependencies.

``require_scope("read")`` or ``require_scope("write")`` in a route's dependencies answers 401 without a valid
token, 403 for a read token on a write route, and 429 with ``Retry-After`` over the token's rate limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bot.api.deps import Context
from bot.api.errors import ApiError
from bot.api.ratelimit import retry_after
from storage.tokens import ApiToken

bearer = HTTPBearer(auto_error=False, description="An API token: `ticketbot tokens create --name N`")


def require_scope(scope: Literal["read", "write"]) -> Callable[..., Awaitable[ApiToken]]:
    """A dependency that authenticates the request's bearer token for ``scope`` and charges its rate limit."""

    async def authenticated(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ctx: Context,
    ) -> ApiToken:
        # async, so the usual request (token cached, nothing to write) costs no thread-pool hop; a lookup or a
        # last_used_at write goes to a thread, as a plain ``def`` dependency would.
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(
                401,
                "unauthorized",
                "an API token is required: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        cached, token = ctx.auth.peek(credentials.credentials)
        if not cached:
            token = await run_in_threadpool(ctx.auth.authenticate, credentials.credentials)
        if token is None:
            raise ApiError(
                401,
                "unauthorized",
                "invalid or revoked API token",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if not token.allows(scope):
            raise ApiError(403, "forbidden", f"this token has the {token.scope!r} scope; this route needs {scope!r}")
        wait = ctx.limiter.acquire(token.id)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit exceeded; retry in {wait:.1f} s",
                headers={"Retry-After": retry_after(wait)},
            )
        return token

    return authenticated


ReadToken = Annotated[ApiToken, Depends(require_scope("read"))]
WriteToken = Annotated[ApiToken, Depends(require_scope("write"))]
