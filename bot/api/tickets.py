"""REST API: ticket routes; creation goes through the same Pipeline as email and Slack, changes through its methods."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Response, status

from bot.api.auth import ReadToken, WriteToken
from bot.api.deps import ApiContext, Context
from bot.api.errors import ApiError
from bot.api.schemas import (
    NO_NUL,
    ClassifyResult,
    EventOut,
    TicketCreate,
    TicketDetail,
    TicketList,
    TicketOut,
    TicketPatch,
    Verdict,
)
from core.classify.fallback import FallbackClassifier
from core.errors import ClassifierUnavailable, InvalidInput, NotFound
from core.inbound import InboundRecord, InboundStatus, digest_key
from core.message import Channel
from core.reply import channel_post
from core.ticket import Priority, Status, Ticket
from storage.claims import receive_claimed
from storage.queries import TicketQuery, ticket_page
from storage.tokens import ApiToken

log = logging.getLogger(__name__)
router = APIRouter(tags=["tickets"])

LEASE = timedelta(seconds=60)  # a request that dies mid-way leaves its row to the bot's workers after this
WAIT_FOR_WORKER = 10.0  # seconds to wait when a background worker claimed our row first


def actor(token: ApiToken) -> str:
    """Who made a change, as events record it: the token's name."""
    return f"api:{token.name}"


def get_or_404(ctx: ApiContext, ticket_id: int) -> Ticket:
    ticket = ctx.store.get_ticket(ticket_id)
    if ticket is None:
        raise NotFound(f"no ticket #{ticket_id}")
    return ticket


TicketId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The ticket number (#123 is 123)")]


@router.post(
    "/tickets",
    status_code=status.HTTP_201_CREATED,
    response_model=TicketOut,
    responses={200: {"model": TicketOut, "description": "A retry with the same Idempotency-Key: the same ticket"}},
)
def create_ticket(
    body: TicketCreate,
    token: WriteToken,
    ctx: Context,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=200,
            pattern=r"^[\x21-\x7e]+$",
            description="Makes a retried POST harmless: the same key (per token) returns the same ticket.",
        ),
    ] = None,
) -> Response:
    """Create a ticket through the pipeline (classified, routed, acknowledged), stored before it is answered."""
    payload = json.dumps(
        {"sender": body.requester, "sender_name": body.requester_name, "subject": body.subject, "body": body.body},
        ensure_ascii=False,
        sort_keys=True,
    ).encode()
    if idempotency_key:
        dedupe_key = f"api:{token.id}:{digest_key(idempotency_key)}"
    else:
        dedupe_key = f"api:{token.id}:{digest_key(payload, str(time.time_ns()))}"
    now = datetime.now(UTC)
    record = InboundRecord(channel=Channel.API, dedupe_key=dedupe_key, payload=payload, received_at=now)
    # Stored (leased to this request) before anything else happens: committed before it is answered.
    row = receive_claimed(ctx.store, record, now=now, lease=LEASE)
    if row is None:  # a retry: answer with the first request's ticket
        received = ctx.store.receive(record)
        stored = ctx.store.get_inbound(received.id)
        if stored is not None and stored.payload != payload:
            raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used for a different request")
        return _ticket_response(wait_for_ticket(ctx, received.id), status.HTTP_200_OK)
    outcome = ctx.pipeline.process(row)
    if outcome.ticket is None:
        raise ApiError(422, "not_ticketed", f"request not ticketed: {outcome.reason}")
    return _ticket_response(outcome.ticket, status.HTTP_201_CREATED)


def _ticket_response(ticket: Ticket, status_code: int) -> Response:
    # The busiest route answers with TicketOut's JSON directly: returned as a model, FastAPI would dump it and
    # validate it against response_model again (about 8% of a create's CPU). The OpenAPI document is unchanged.
    return Response(TicketOut.of(ticket).model_dump_json(), status_code=status_code, media_type="application/json")


def wait_for_ticket(ctx: ApiContext, inbound_id: int) -> Ticket:
    """The ticket a stored request became, waiting briefly while another request or a worker processes it."""
    deadline = time.monotonic() + WAIT_FOR_WORKER
    while True:
        stored = ctx.store.get_inbound(inbound_id)
        if stored is None:
            raise NotFound(f"inbound message {inbound_id} vanished")
        if stored.ticket_id is not None:
            return get_or_404(ctx, stored.ticket_id)
        if stored.status is not InboundStatus.RECEIVED:
            raise ApiError(422, "not_ticketed", f"request not ticketed: {stored.last_error}")
        if time.monotonic() > deadline:
            raise ApiError(
                409, "in_progress", "this request is still being processed; retry", headers={"Retry-After": "1"}
            )
        time.sleep(0.05)


@router.get("/tickets", response_model=TicketList)
def list_tickets(
    token: ReadToken,
    ctx: Context,
    department: Annotated[list[str] | None, Query(description="Repeat for any of several")] = None,
    status_: Annotated[list[Status] | None, Query(alias="status")] = None,
    priority: Annotated[list[Priority] | None, Query()] = None,
    channel: Annotated[list[Channel] | None, Query()] = None,
    requester: Annotated[str | None, Query(max_length=320, pattern=NO_NUL)] = None,
    q: Annotated[
        str | None, Query(min_length=1, max_length=200, pattern=NO_NUL, description="Text in the subject or body")
    ] = None,
    open_only: Annotated[bool, Query(alias="open")] = False,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    updated_from: datetime | None = None,
    updated_to: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> TicketList:
    """Tickets, newest first, filtered (every filter given must match) and paged by cursor."""
    departments = tuple(canonical_department(ctx, d) for d in department or ())
    limit = min(limit, ctx.config.api.max_page_size)
    query = TicketQuery(
        department=departments,
        status=tuple(status_ or ()),
        priority=tuple(priority or ()),
        channel=tuple(channel or ()),
        requester=requester,
        q=q,
        open_only=open_only,
        created_from=aware("created_from", created_from),
        created_to=aware("created_to", created_to),
        updated_from=aware("updated_from", updated_from),
        updated_to=aware("updated_to", updated_to),
    )
    try:
        page = ticket_page(ctx.store, query, limit=limit, cursor=cursor)
    except InvalidInput as exc:
        raise field_error("cursor", str(exc)) from exc
    return TicketList(items=[TicketOut.of(t) for t in page.items], next_cursor=page.next_cursor, limit=limit)


def aware(name: str, value: datetime | None) -> datetime | None:
    """Times without a zone are ambiguous: refuse them rather than guess."""
    if value is not None and value.tzinfo is None:
        raise field_error(name, "give a timezone, e.g. 2026-01-31T00:00:00Z")
    return value


def field_error(name: str, message: str) -> ApiError:
    return ApiError(422, "invalid", f"{name}: {message}", fields=[{"field": name, "in": "query", "message": message}])


def canonical_department(ctx: ApiContext, name: str, *, where: Literal["query", "body"] = "query") -> str:
    found = ctx.config.department(name)
    if found is None:
        message = f"unknown department {name!r}; choose one of: {', '.join(ctx.config.department_names)}"
        raise ApiError(422, "invalid", message, fields=[{"field": "department", "in": where, "message": message}])
    return found.name


@router.get("/tickets/{ticket_id}", response_model=TicketDetail)
def get_ticket(ticket_id: TicketId, token: ReadToken, ctx: Context) -> TicketDetail:
    """One ticket with every event (created, classified, routed, changes, comments), oldest first."""
    ticket = get_or_404(ctx, ticket_id)
    events = ctx.store.ticket_events(ticket_id)
    return TicketDetail(**TicketOut.of(ticket).model_dump(), events=[EventOut.of(e) for e in events])


@router.patch("/tickets/{ticket_id}", response_model=TicketDetail)
def patch_ticket(ticket_id: TicketId, body: TicketPatch, token: WriteToken, ctx: Context) -> TicketDetail:
    """Change status, priority, assignee or department (a reroute); each change is recorded as an event.

    Everything is validated before anything changes, so a bad field changes nothing.
    """
    current = get_or_404(ctx, ticket_id)
    department = canonical_department(ctx, body.department, where="body") if body.department else None
    who = actor(token)
    pipeline = ctx.pipeline
    # Order: routing first, status last (a status change notifies the requester with the final state).
    if department is not None and department != current.department:
        pipeline.reroute(ticket_id, department, actor=who, note=body.note)
    if body.priority is not None and body.priority is not current.priority:
        pipeline.set_priority(ticket_id, body.priority, actor=who, note=body.note)
    if "assignee" in body.model_fields_set:
        assignee = (body.assignee or "").strip() or None
        if assignee != current.assignee:
            stamp = datetime.now(UTC).timestamp()
            ctx.store.assign(
                ticket_id,
                assignee,
                actor=who,
                compose=lambda t: channel_post(t, pipeline.replies, event=f"assigned-{stamp}"),
            )
    if body.status is not None and body.status is not current.status:
        pipeline.change_status(ticket_id, body.status, actor=who, note=body.note)
    return get_ticket(ticket_id, token, ctx)


@router.post("/tickets/{ticket_id}/classify", response_model=ClassifyResult)
def classify_ticket(
    ticket_id: TicketId,
    token: ReadToken,
    ctx: Context,
    apply: Annotated[bool, Query(description="Reroute and re-prioritise to the new verdict (needs write)")] = False,
) -> ClassifyResult:
    """What each classifier says about the ticket now; nothing changes unless ``apply=true``."""
    if apply and not token.allows("write"):
        raise ApiError(403, "forbidden", "apply=true changes the ticket: it needs a write token")
    ticket = get_or_404(ctx, ticket_id)
    pipeline = ctx.pipeline
    router_ = pipeline.router
    classifier = pipeline.classifier
    verdicts: list[Verdict] = []
    effective_c = classifier.classify(ticket.subject, ticket.body)
    effective = Verdict.of("effective", effective_c, router_.route(effective_c))
    if isinstance(classifier, FallbackClassifier):
        if effective_c.fallback_reason is None:
            verdicts.append(Verdict.of("primary", effective_c, router_.route(effective_c)))
        else:
            verdicts.append(
                Verdict(
                    role="primary",
                    classifier=classifier.primary.name,
                    available=False,
                    error=effective_c.fallback_reason,
                )
            )
        try:
            offline = classifier.fallback.classify(ticket.subject, ticket.body)
            verdicts.append(Verdict.of("offline", offline, router_.route(offline)))
        except ClassifierUnavailable as exc:
            verdicts.append(
                Verdict(role="offline", classifier=classifier.fallback.name, available=False, error=str(exc))
            )
    else:
        verdicts.append(Verdict.of("offline", effective_c, router_.route(effective_c)))
    changes: list[str] = []
    if apply:
        note = f"re-classified by {effective_c.classifier} ({effective_c.confidence:.0%}) for {actor(token)}"
        # The classifier's verdict, not a person's correction: the actor says so, and training from history
        # (SqlStore.corrections) skips reroutes by a classifier.
        by = f"classifier:{effective_c.classifier}"
        route = router_.route(effective_c)
        if route.department != ticket.department:
            pipeline.reroute(ticket_id, route.department, actor=by, note=note)
            changes.append(f"department: {ticket.department} -> {route.department}")
        if effective_c.priority is not ticket.priority:
            pipeline.set_priority(ticket_id, effective_c.priority, actor=by, note=note)
            changes.append(f"priority: {ticket.priority.value} -> {effective_c.priority.value}")
        ticket = get_or_404(ctx, ticket_id)
    return ClassifyResult(
        ticket=TicketOut.of(ticket), verdicts=verdicts, effective=effective, applied=apply, changes=changes
    )
