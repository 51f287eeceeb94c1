"""REST API edge: the request and response bodies (pydantic), translated to and from core types here only."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from core.classify.base import Classification
from core.message import Channel
from core.route import Route
from core.ticket import Priority, Status, Ticket, TicketEvent

# Query parameters: PostgreSQL text cannot hold NUL, so a NUL is a 422 here rather than a database error.
NO_NUL = r"^[^\x00]*$"


def clean_text(value: str) -> str:
    """Text the database can store: no NUL characters, no lone surrogates (they have no UTF-8 form)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(clean_text)]


class Body(BaseModel):
    """Request bodies: unknown fields are errors (a typo is reported, not ignored)."""

    model_config = ConfigDict(extra="forbid")


class TicketCreate(Body):
    """A new request, handled like an email or a Slack /ticket: classified, routed, acknowledged."""

    requester: Text = Field(min_length=3, max_length=320, description="Email address or Slack user id")
    requester_name: Text = Field(default="", max_length=200)
    subject: Text = Field(default="", max_length=2000)
    body: Text = Field(default="", max_length=200_000)

    @field_validator("requester")
    @classmethod
    def _requester(cls, value: str) -> str:
        value = value.strip()
        if not value or any(c.isspace() for c in value):
            raise ValueError("must be an email address or a Slack user id, without spaces")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> TicketCreate:
        if not self.subject.strip() and not self.body.strip():
            raise ValueError("a request needs a subject or a body")
        return self


class TicketPatch(Body):
    """Changes made by a person; each one given is recorded as an event. ``department`` reroutes the ticket."""

    status: Status | None = None
    priority: Priority | None = None
    department: Text | None = Field(default=None, min_length=1, max_length=64)
    assignee: Text | None = Field(default=None, max_length=200, description="null unassigns")
    note: Text | None = Field(default=None, max_length=2000, description="Why; recorded with the events")

    @model_validator(mode="after")
    def _something(self) -> TicketPatch:
        if not (self.model_fields_set - {"note"}):
            raise ValueError("nothing to change: give status, priority, department or assignee")
        for name in ("status", "priority", "department"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class TicketOut(BaseModel):
    id: int
    ref: str = Field(description="How people see the id: #123")
    subject: str
    body: str
    requester: str
    requester_name: str
    channel: Channel
    department: str
    priority: Priority
    status: Status
    assignee: str | None
    confidence: float
    summary: str
    classifier: str
    triaged: bool
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None

    @classmethod
    def of(cls, t: Ticket) -> TicketOut:
        return cls(
            id=t.id,
            ref=t.ref,
            subject=t.subject,
            body=t.body,
            requester=t.requester,
            requester_name=t.requester_name,
            channel=t.channel,
            department=t.department,
            priority=t.priority,
            status=t.status,
            assignee=t.assignee,
            confidence=t.confidence,
            summary=t.summary,
            classifier=t.classifier,
            triaged=t.triaged,
            created_at=t.created_at,
            updated_at=t.updated_at,
            resolved_at=t.resolved_at,
        )


class EventOut(BaseModel):
    id: int | None
    kind: str
    actor: str
    at: datetime
    data: dict[str, Any]

    @classmethod
    def of(cls, e: TicketEvent) -> EventOut:
        return cls(id=e.id, kind=e.kind.value, actor=e.actor, at=e.at, data=e.data)


class TicketDetail(TicketOut):
    events: list[EventOut]


class TicketList(BaseModel):
    items: list[TicketOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page")
    limit: int


class RouteOut(BaseModel):
    department: str
    triaged: bool
    reason: str

    @classmethod
    def of(cls, r: Route) -> RouteOut:
        return cls(department=r.department, triaged=r.triaged, reason=r.reason)


class Verdict(BaseModel):
    """One classifier's answer and where the router would send it."""

    role: Literal["primary", "offline", "effective"]
    classifier: str
    available: bool
    error: str | None = None
    department: str | None = None
    priority: Priority | None = None
    confidence: float | None = None
    summary: str | None = None
    model: str | None = None
    latency_ms: float | None = None
    route: RouteOut | None = None

    @classmethod
    def of(cls, role: Literal["primary", "offline", "effective"], c: Classification, r: Route) -> Verdict:
        return cls(
            role=role,
            classifier=c.classifier,
            available=True,
            department=c.department,
            priority=c.priority,
            confidence=round(c.confidence, 4),
            summary=c.summary,
            model=c.model,
            latency_ms=c.latency_ms,
            route=RouteOut.of(r),
        )


class ClassifyResult(BaseModel):
    ticket: TicketOut
    verdicts: list[Verdict] = Field(description="What each classifier says, primary first")
    effective: Verdict = Field(description="What the pipeline would decide now (primary, else the offline model)")
    applied: bool
    changes: list[str] = Field(description="What apply=true changed (department, priority); empty otherwise")


class FieldError(BaseModel):
    field: str = Field(description="The parameter or body field, dotted for nested ones")
    in_: str = Field(alias="in", description="body, query, path or header")
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, for programs: invalid, unauthorized, forbidden, not_found, rate_limited, …")
    message: str = Field(description="For people")
    fields: list[FieldError] | None = None


class ErrorBody(BaseModel):
    """Every error the API answers has this body."""

    error: ErrorDetail


class DepartmentOut(BaseModel):
    name: str
    description: str
    triage: bool
    has_slack_channel: bool
    open_tickets: int


class Count(BaseModel):
    key: str
    count: int


class DayStats(BaseModel):
    day: date
    created: int
    resolved: int


class Stats(BaseModel):
    since: datetime
    until: datetime
    total: int
    by_department: dict[str, int]
    by_status: dict[str, int]
    by_priority: dict[str, int]
    by_channel: dict[str, int]
    by_classifier: dict[str, int]
    mean_confidence: float | None
    reroute_rate: float | None = Field(description="Share of the period's tickets a person rerouted")
    median_resolution_seconds: float | None
    per_day: list[DayStats]
