"""REST API edge: one JSON error body for every failure, ``{"error": {"code", "message", "fields"?}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import InvalidInput, NotFound, StorageError

log = logging.getLogger(__name__)

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(StarletteHTTPException):
    """An expected failure with its status, a stable ``code`` for programs and a message for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        fields: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code
        self.fields = fields


def error_body(code: str, message: str, fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure the API can meet to the one error body; core errors translate at this edge."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = exc.code if isinstance(exc, ApiError) else CODES.get(exc.status_code, "error")
        fields = exc.fields if isinstance(exc, ApiError) else None
        return JSONResponse(error_body(code, str(exc.detail), fields), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {
                "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body",
                "in": str(err.get("loc", ("body",))[0]),
                "message": str(err.get("msg", "invalid")),
            }
            for err in exc.errors()
        ]
        names = ", ".join(f["field"] for f in fields)
        return JSONResponse(error_body("invalid", f"invalid request: {names}", fields), status_code=422)

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(error_body("not_found", str(exc)), status_code=404)

    @app.exception_handler(InvalidInput)
    async def invalid(_request: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse(error_body("invalid", str(exc)), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # A bug: logged with its traceback by the server; the client gets the same body shape, without details.
        log.error("API request failed", exc_info=exc)
        return JSONResponse(error_body("internal", "internal error; see the server log"), status_code=500)

    @app.exception_handler(StorageError)
    async def storage(_request: Request, exc: StorageError) -> JSONResponse:
        # The database is down or busy: a retry may succeed; nothing was half-written (one transaction per change).
        return JSONResponse(
            error_body("unavailable", "the database is unavailable; retry later"),
            status_code=503,
            headers={"Retry-After": "5"},
        )
