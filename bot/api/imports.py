"""REST API: POST /import takes a file of tickets (multipart or raw body), spools it to disk, then imports it.

The upload is written to a temporary file as it arrives (memory stays flat) and imported from there by the same
engine as `ticketbot import`; the answer is the import report. Limits: ``MAX_UPLOAD_BYTES`` per request, and the
request lasts as long as the import (2,500 to 5,000 rows a second here): split larger files or use the CLI.
"""

from __future__ import annotations

import tempfile
from typing import IO, Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from bot.api.auth import WriteToken
from bot.api.deps import ApiContext, Context
from bot.api.errors import ApiError
from bot.api.schemas import ErrorBody
from bot.io.importer import Importer, ImportOptions, ImportReport, import_classifier, parse_mapping, router_for
from bot.io.readers import DEFAULT_MAX_ROW_BYTES, Format, format_from_name
from core.classify.base import Classifier
from core.message import Channel
from storage.imports import SqlImportStore

router = APIRouter(tags=["import"])

MAX_UPLOAD_BYTES = 1024 * 1024 * 1024  # 1 GiB: about 3 million typical rows, a few minutes of importing
SPOOL_BYTES = 1024 * 1024  # uploads up to this size stay in memory; larger ones go to a temporary file
MEDIA_TYPES = {
    "text/csv": Format.CSV,
    "application/csv": Format.CSV,
    "text/tab-separated-values": Format.CSV,
    "application/json": Format.JSON,
    "application/x-ndjson": Format.JSONL,
    "application/jsonl": Format.JSONL,
    "application/json-lines": Format.JSONL,
    "application/xml": Format.XML,
    "text/xml": Format.XML,
}
_FILE_SCHEMA = {"type": "string", "format": "binary"}
REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": "The file: as the multipart part `file`, or as the raw body (then give `format` or a media type).",
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": _FILE_SCHEMA}, "required": ["file"]}
        },
        **{media: {"schema": _FILE_SCHEMA} for media in (*MEDIA_TYPES, "application/octet-stream")},
    },
}


class ImportRowError(BaseModel):
    row: int
    line: int | None
    reason: str


class ImportResult(BaseModel):
    """The import report; ``exit_code`` is what `ticketbot import` would exit with (0 all good, 1 some bad)."""

    format: str
    source: str
    dry_run: bool
    rows: int
    imported: int
    duplicates: int
    bad: int
    classified: int
    triaged: int
    errors: list[ImportRowError]
    errors_omitted: int
    fatal: str | None
    ignored_fields: list[str]
    exit_code: int


@router.post(
    "/import",
    response_model=ImportResult,
    openapi_extra={"requestBody": REQUEST_BODY},
    responses={413: {"model": ErrorBody, "description": "Over the upload limit (MAX_UPLOAD_BYTES)"}},
)
async def import_tickets(
    request: Request,
    token: WriteToken,
    ctx: Context,
    format: Annotated[Format | None, Query(description="Default: from the file name or the media type")] = None,
    mapping: Annotated[
        list[str] | None, Query(alias="map", max_length=20, description="FIELD=COLUMN; repeatable")
    ] = None,
    classify: Annotated[bool, Query(description="Route rows without a department with the offline model")] = False,
    dry_run: bool = False,
    namespace: Annotated[str, Query(max_length=100, pattern=r"^[\x21-\x7e]*$")] = "",
    encoding: Annotated[str, Query(max_length=40, pattern=r"^[A-Za-z0-9_.:-]+$")] = "utf-8",
    filename: Annotated[str | None, Query(max_length=255, description="Names the source in events")] = None,
) -> ImportResult:
    """Import tickets from a CSV, JSON, JSON Lines or XML file: historical data, so nobody is mailed or posted
    to. Bad rows are reported by number with the reason, good rows imported, rows imported before skipped."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise _too_large()
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    options_mapping = parse_mapping(mapping or [])
    if media == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=10)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(422, "invalid", "a multipart upload needs a part named 'file'")
            if upload.size is not None and upload.size > MAX_UPLOAD_BYTES:
                raise _too_large()
            name = filename or upload.filename or "upload"
            part_type = (upload.content_type or "").split(";")[0].strip().lower()
            chosen = format or format_from_name(name) or MEDIA_TYPES.get(part_type)
            return await _run(
                ctx,
                request,
                upload.file,
                chosen,
                name,
                options_mapping,
                classify,
                dry_run,
                namespace,
                encoding,
                token.name,
            )
        finally:
            await form.close()
    name = filename or "upload"
    chosen = format or MEDIA_TYPES.get(media) or format_from_name(name)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                raise _too_large()
            await run_in_threadpool(spool.write, chunk)  # may be a disk write: never on the event loop
        spool.seek(0)
        return await _run(
            ctx, request, spool, chosen, name, options_mapping, classify, dry_run, namespace, encoding, token.name
        )


def _too_large() -> ApiError:
    return ApiError(413, "too_large", f"uploads are limited to {MAX_UPLOAD_BYTES:,} bytes; split the file")


async def _run(
    ctx: ApiContext,
    request: Request,
    stream: IO[bytes],
    fmt: Format | None,
    name: str,
    mapping: dict[str, str],
    classify: bool,
    dry_run: bool,
    namespace: str,
    encoding: str,
    token_name: str,
) -> ImportResult:
    if fmt is None:
        raise ApiError(422, "invalid", "cannot tell the file's format: give ?format=csv|json|jsonl|xml")
    classifier = await _classifier(ctx, request) if classify else None
    importer = Importer(store=SqlImportStore(ctx.store.engine), router=router_for(ctx.config), classifier=classifier)
    options = ImportOptions(
        format=fmt,
        source=name[:255],
        mapping=mapping,
        classify=classify,
        dry_run=dry_run,
        channel=Channel.API,
        actor=f"api:{token_name}",
        namespace=namespace,
        encoding=encoding,
        max_row_bytes=DEFAULT_MAX_ROW_BYTES,
    )
    report: ImportReport = await run_in_threadpool(importer.run, stream, options)  # type: ignore[arg-type]
    if report.exit_code == 2:
        raise ApiError(422, "unusable_input", report.fatal or "the file cannot be read")
    return ImportResult.model_validate(report.as_dict())


async def _classifier(ctx: ApiContext, request: Request) -> Classifier:
    """The offline model for --classify, loaded once per API app (about half a second)."""
    state = request.app.state
    classifier: Classifier | None = getattr(state, "import_classifier", None)
    if classifier is None:
        classifier = await run_in_threadpool(import_classifier, ctx.config)
        state.import_classifier = classifier
    return classifier
