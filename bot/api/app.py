"""REST API: the ``/api/v1`` FastAPI sub-application (routes, OpenAPI, docs, error bodies), mounted by bot.http."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from bot.api.deps import ApiContext
from bot.api.errors import install_error_handlers
from bot.api.schemas import ErrorBody
from bot.http import NO_TELEMETRY

PREFIX = "/api/v1"

DESCRIPTION = """
ticketbot's REST API. Authenticate with `Authorization: Bearer <token>`; create a token with
`ticketbot tokens create --name NAME [--scope read|write]`. Errors share one body:
`{"error": {"code": "...", "message": "...", "fields": [...]}}`. Lists are paged by `cursor`.
"""


# Documented on every route, so clients (and the schema fuzzer) know the error body.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No token, or an invalid or revoked one"},
    403: {"model": ErrorBody, "description": "A read token on a write route"},
    404: {"model": ErrorBody, "description": "Unknown id"},
    422: {"model": ErrorBody, "description": "Invalid input; `fields` names each bad field"},
    429: {"model": ErrorBody, "description": "Over the token's rate limit; see Retry-After"},
    503: {"model": ErrorBody, "description": "The database is unavailable; retry later"},
}


def api_routers() -> list[APIRouter]:
    """Every router of the API; another feature adds its router here with one line."""
    from bot.api import imports, meta, tickets

    return [
        tickets.router,
        meta.router,
        imports.router,
    ]


def create_api_app(context: ApiContext) -> FastAPI:
    """The API as an app of its own, so its OpenAPI document, docs and error handlers cover only the API."""
    app = FastAPI(
        title="ticketbot API",
        version="1",
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        telemetry=NO_TELEMETRY,
    )
    app.state.api = context
    install_error_handlers(app)
    for router in api_routers():
        app.include_router(router, responses=ERRORS)
    return app
