"""Storage adapter: the SQLAlchemy 2.0 tables behind every stage (inbound, tickets, events, outbox, state)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every engine: SQLite keeps no zone, so store naive UTC and re-attach it."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# The open statuses as literal SQL: a query uses a partial index only when its WHERE repeats the index's own.
OPEN_TICKETS = "status IN ('new', 'in_progress', 'waiting')"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class InboundRow(Base):
    """A raw inbound message, committed before its transport is acknowledged."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("mailbox", "uidvalidity", "uid", name="uq_inbound_messages_imap_uid"),
        Index("ix_inbound_messages_status_locked", "status", "locked_until"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(16))
    dedupe_key: Mapped[str] = mapped_column(String(128), unique=True)
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    mailbox: Mapped[str | None] = mapped_column(String(200))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uid: Mapped[int | None] = mapped_column(BigInteger)
    trigger_id: Mapped[str | None] = mapped_column(String(200))
    event_id: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default="received")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    ticket_id: Mapped[int | None] = mapped_column(Integer, index=True)
    locked_until: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class TicketRow(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        # Also GET /api/v1/tickets?department=…&status=… in list order (migration 0004 added created_at).
        Index("ix_tickets_department_status_created_at", "department", "status", "created_at"),
        Index("ix_tickets_requester_status", "requester", "status"),
        # Digests: a department's tickets created in a period (storage/digests.py).
        Index("ix_tickets_department_created_at", "department", "created_at"),
        # Digests: the open work, read from this small partial index alone (open tickets only, every column
        # the digest counts), so its cost follows the open tickets, never the history.
        Index(
            "ix_tickets_open",
            "department",
            "status",
            "priority",
            "created_at",
            "updated_at",
            "assignee",
            sqlite_where=text(OPEN_TICKETS),
            postgresql_where=text(OPEN_TICKETS),
        ),
        # GET /api/v1/tickets lists newest first (created_at, id): each filter has an index in that order.
        # Status with id too (migration 0009): the newest tickets are mostly open, and without the whole list order
        # PostgreSQL scanned every recent ticket newest first to find a few waiting or resolved ones.
        Index("ix_tickets_status_created_at_id", "status", "created_at", "id"),
        Index("ix_tickets_priority_created_at", "priority", "created_at"),
        Index("ix_tickets_channel_created_at", "channel", "created_at"),
        Index("ix_tickets_requester_created_at", "requester", "created_at"),
        # GET /api/v1/stats reads only these columns of a created_at range: an index-only scan, no table reads.
        Index(
            "ix_tickets_stats",
            "created_at",
            "department",
            "status",
            "priority",
            "channel",
            "classifier",
            "confidence",
            "resolved_at",
        ),
        # Free-text search (?q=): trigram GIN indexes on PostgreSQL serve ILIKE '%text%'. SQLite has no such
        # index; there the same names are empty partial indexes (WHERE 0) that cost nothing, so the schema
        # compares equal on both engines. See docs/api.md.
        Index(
            "ix_tickets_subject_trgm",
            "subject",
            postgresql_using="gin",
            postgresql_ops={"subject": "gin_trgm_ops"},
            sqlite_where=text("0"),
        ),
        Index(
            "ix_tickets_body_trgm",
            "body",
            postgresql_using="gin",
            postgresql_ops={"body": "gin_trgm_ops"},
            sqlite_where=text("0"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inbound_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    requester: Mapped[str] = mapped_column(String(320))
    requester_name: Mapped[str] = mapped_column(String(200), default="")
    channel: Mapped[str] = mapped_column(String(16))
    department: Mapped[str] = mapped_column(String(64))
    priority: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    assignee: Mapped[str | None] = mapped_column(String(200))
    confidence: Mapped[float] = mapped_column(Float)
    summary: Mapped[str] = mapped_column(Text)
    classifier: Mapped[str] = mapped_column(String(32))
    classifier_model: Mapped[str | None] = mapped_column(String(100))
    classify_ms: Mapped[float | None] = mapped_column(Float)
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    triaged: Mapped[bool] = mapped_column(Boolean, default=False)
    # Why the primary classifier did not decide (None when it did, or when the offline model is the only one).
    fallback_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime] = mapped_column(index=True)
    first_action_at: Mapped[datetime | None] = mapped_column(index=True)  # digests: median time to first action
    resolved_at: Mapped[datetime | None] = mapped_column(index=True)
    # Imports only (storage/imports.py): the row's dedupe key, so re-importing a file creates nothing twice.
    external_key: Mapped[str | None] = mapped_column(String(200), unique=True)


class TicketEventRow(Base):
    __tablename__ = "ticket_events"
    __table_args__ = (Index("ix_ticket_events_kind_at", "kind", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(320))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime]


class MessageRefRow(Base):
    """Every Message-ID we know (received or sent), mapped to its ticket: the threading index."""

    __tablename__ = "message_refs"

    message_id: Mapped[str] = mapped_column(String(998), primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    direction: Mapped[str] = mapped_column(String(8))  # in | out
    created_at: Mapped[datetime]


class OutboxRow(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_status_next", "status", "next_attempt_at"),
        Index("ix_outbox_recipient_created", "recipient", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    ticket_id: Mapped[int | None] = mapped_column(Integer, index=True)
    dedupe_key: Mapped[str] = mapped_column(String(300), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    recipient: Mapped[str | None] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    locked_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_ref: Mapped[str | None] = mapped_column(String(998))
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


class MailboxStateRow(Base):
    __tablename__ = "mailbox_state"

    mailbox: Mapped[str] = mapped_column(String(200), primary_key=True)
    folder: Mapped[str] = mapped_column(String(200))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    last_poll_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class LeaseRow(Base):
    """A named lease (one IMAP poller per mailbox): whoever holds an unexpired row owns the work."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


class DigestRunRow(Base):
    __tablename__ = "digest_runs"
    __table_args__ = (UniqueConstraint("scope", "period", name="uq_digest_runs_scope_period"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(100))
    period: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # The window the digest covered: the next digest of the scope starts where this one ended.
    starts_at: Mapped[datetime | None]
    ends_at: Mapped[datetime | None]


class ApiTokenRow(Base):
    """An API token (issue 7): only the sha256 of the secret is kept; revoked tokens stay for the record."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(8))  # read | write
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole secret
    prefix: Mapped[str] = mapped_column(String(16))  # the secret's first characters, to recognise it in a list
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class SuppressedRecipientRow(Base):
    """An address that permanently bounced our mail: no automatic mail goes to it until ``until``."""

    __tablename__ = "suppressed_recipients"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    until: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class StatsDayRow(Base):
    """Figures of one closed UTC day of tickets for long ``GET /stats`` periods (storage/stats_days.py).

    ``version`` is bumped by a trigger on every stats-relevant change to a ticket of that day (and by imports);
    ``payload`` is valid only while ``cached_version`` equals it.
    """

    __tablename__ = "stats_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cached_version: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[str | None] = mapped_column(Text)
