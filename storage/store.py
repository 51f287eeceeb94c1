"""Storage adapter: SqlStore implements the core's storage ports; rows never leave this module."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.errors import NotFound, StorageError
from core.inbound import InboundRecord, InboundStatus, Received, StoredInbound
from core.message import Channel
from core.outbox import OutboxItem, OutboxKind, OutboxStatus, StoredOutboxItem
from core.ports import ComposeReplies, SenderHistory, TicketDraft, TicketFilter
from core.ticket import EventKind, Priority, Status, Ticket, TicketEvent
from storage.db import READ_ONLY
from storage.tables import (
    InboundRow,
    LeaseRow,
    MailboxStateRow,
    MessageRefRow,
    OutboxRow,
    SuppressedRecipientRow,
    TicketEventRow,
    TicketRow,
)

log = logging.getLogger(__name__)
# What every new ticket's history starts with, in this order.
OPENING_EVENTS = (EventKind.CREATED, EventKind.CLASSIFIED, EventKind.ROUTED)


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _storage_errors() -> Iterator[None]:
    """Database errors become StorageError at this edge (the core knows no SQLAlchemy)."""
    try:
        yield
    except (OperationalError, IntegrityError) as exc:
        raise StorageError(f"database error: {exc.orig or exc}") from exc
    except SQLAlchemyError as exc:
        raise StorageError(f"database error: {exc}") from exc


class SqlStore:
    """The whole storage port on SQLite or PostgreSQL; each public method is one transaction (or, inside
    ``transaction``, a part of this thread's shared one)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reader = engine.execution_options(**{READ_ONLY: True})
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self._reader, expire_on_commit=False)
        self._pg = engine.dialect.name == "postgresql"
        self._local = threading.local()  # .conn: this thread's shared transaction (``transaction``), if any
        self._prepare_statements()

    def _prepare_statements(self) -> None:
        """Statements of the per-message hot path, built once: building them per call (``.values(**kw)``) cost
        more than executing them. Parameters are bound at execute time, so SQLAlchemy's compiled cache hits."""
        tables = InboundRow.metadata.tables
        inbound, tickets, outbox = tables["inbound_messages"], tables["tickets"], tables["outbox"]
        self._q_receive = self._insert(inbound).on_conflict_do_nothing().returning(inbound.c.id)
        self._q_finish = update(inbound).where(inbound.c.id == bindparam("inbound_id"))
        self._q_ticket = select(tickets).where(tickets.c.id == bindparam("ticket_id"))
        # Waits for another writer of the same ticket (no SKIP LOCKED: a locked ticket is not a missing one).
        self._q_ticket_for_update = self._q_ticket.with_for_update()
        self._q_ticket_of_inbound = select(tickets).where(tickets.c.inbound_id == bindparam("inbound_id"))
        # One ticket per request: a second worker (or a crash and retry) opening a ticket for a row that has one
        # inserts nothing, and gets the existing ticket (tickets.inbound_id is unique).
        self._q_new_ticket = (
            self._insert(tickets).on_conflict_do_nothing(index_elements=[tickets.c.inbound_id]).returning(tickets.c.id)
        )
        self._q_open_ticket = self._open_ticket_statement() if self._pg else None
        self._q_touch_ticket = update(tickets).where(tickets.c.id == bindparam("ticket_id"))
        refs = tables["message_refs"]
        self._q_find_refs = select(refs.c.message_id, refs.c.ticket_id).where(
            refs.c.message_id.in_(bindparam("refs", expanding=True))
        )
        self._q_event = insert(tables["ticket_events"])
        self._q_ref = self._insert(tables["message_refs"]).on_conflict_do_nothing()
        self._q_auto_reply_counts: dict[int, Any] = {}
        suppressed = tables["suppressed_recipients"]
        self._q_suppressed = select(suppressed.c.until).where(
            suppressed.c.address == bindparam("address"), suppressed.c.until > bindparam("now")
        )
        self._q_recent = (
            select(tickets.c.subject, func.substr(tickets.c.body, 1, 500))
            .where(tickets.c.requester == bindparam("requester"), tickets.c.created_at >= bindparam("since"))
            .order_by(tickets.c.created_at.desc())
            .limit(bindparam("limit"))
        )
        self._q_outbox = self._insert(outbox).on_conflict_do_nothing().returning(outbox.c.id)

    def _open_ticket_statement(self) -> Any:
        """PostgreSQL: ``open_ticket``'s ticket, its three events and its request marked processed, in one statement.

        Two roundtrips fewer for every ticket: one created through the API makes four instead of six. When the
        request has its ticket already, the insert yields no row and nothing else is written.
        """
        tables = InboundRow.metadata.tables
        tickets, events, inbound = tables["tickets"], tables["ticket_events"], tables["inbound_messages"]
        # Every parameter is prefixed: an UPDATE also sets each column named like a parameter it is given, and the
        # ticket's "channel" and "status" are columns of inbound_messages too.
        columns = {
            c.key: bindparam(f"ticket_{c.key}", type_=c.type) for c in tickets.c if c.key not in ("id", "external_key")
        }
        ticket = (
            postgresql.insert(tickets)
            .values(columns)
            .on_conflict_do_nothing(index_elements=[tickets.c.inbound_id])
            .returning(tickets.c.id)
            .cte("new_ticket")
        )
        rows = union_all(
            *(
                select(
                    literal_column(str(n)).label("n"),
                    bindparam(f"event_kind_{n}", type_=events.c.kind.type).label("kind"),
                    bindparam(f"event_actor_{n}", type_=events.c.actor.type).label("actor"),
                    bindparam(f"event_data_{n}", type_=events.c.data.type).label("data"),
                )
                for n in range(len(OPENING_EVENTS))
            )
        ).subquery("event_rows")
        # Ordered, so the events' ids (the order a ticket's history is read in) follow OPENING_EVENTS.
        added = insert(events).from_select(
            ["ticket_id", "kind", "actor", "data", "at"],
            select(
                ticket.c.id,
                rows.c.kind,
                rows.c.actor,
                rows.c.data,
                bindparam("ticket_created_at", type_=events.c.at.type),
            )
            .select_from(ticket.join(rows, true()))
            .order_by(rows.c.n),
        )
        finished = (
            update(inbound)
            .where(inbound.c.id == bindparam("ticket_inbound_id"), select(ticket.c.id).exists())
            .values(
                status=InboundStatus.PROCESSED.value,
                last_error=null(),
                ticket_id=select(ticket.c.id).scalar_subquery(),
                locked_until=null(),
                updated_at=bindparam("ticket_created_at"),
            )
        )
        return select(ticket.c.id).add_cte(added.cte("added_events")).add_cte(finished.cte("finished_inbound"))

    # -- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Until the block ends, this thread's calls share one write transaction, committed at the end (or, on an
        error, none of it). A worker's batch then pays one BEGIN and one COMMIT instead of about four per message,
        and SQLite writes each changed page once. Each call sees what the earlier ones wrote. Inside one, nested
        use joins it.

        Raises:
            StorageError: the commit failed; nothing done in the block is stored.
        """
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        with self._conn() as conn:
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside ``transaction``: a SAVEPOINT, so an error in the block undoes the block's writes and keeps the rest
        of the transaction (one message failing in a batch). Outside one, nothing: each call is its own transaction.
        """
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            yield
            return
        # One fixed name, in plain SQL: ``begin_nested`` names each savepoint anew, and SQLAlchemy compiled every
        # SAVEPOINT and RELEASE as a new statement (a tenth of a batch's CPU). Both databases resolve a reused
        # name to the innermost savepoint, so nesting still works.
        with _storage_errors():
            conn.exec_driver_sql("SAVEPOINT ticketbot_message")
        try:
            yield
        except BaseException:
            with _storage_errors():
                conn.exec_driver_sql("ROLLBACK TO SAVEPOINT ticketbot_message")
                conn.exec_driver_sql("RELEASE SAVEPOINT ticketbot_message")
            raise
        with _storage_errors():
            conn.exec_driver_sql("RELEASE SAVEPOINT ticketbot_message")

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[Session]:
        """A session in a transaction; database errors become StorageError at this edge.

        ``write=False`` is for transactions that only read: on SQLite they skip the write lock. Inside
        ``transaction``, a savepoint of the shared transaction (the session's commit releases it)."""
        shared: Connection | None = getattr(self._local, "conn", None)
        if shared is not None:
            with (
                _storage_errors(),
                Session(bind=shared, join_transaction_mode="create_savepoint", expire_on_commit=False) as session,
                session.begin(),
            ):
                yield session
            return
        session = (self._sessions if write else self._read_sessions)()
        try:
            with _storage_errors(), session.begin():
                yield session
        finally:
            session.close()

    @contextmanager
    def _conn(self, *, write: bool = True) -> Iterator[Connection]:
        """A Core connection in a transaction, for the hot path (no ORM unit of work); errors as in ``_tx``. Inside
        ``transaction``, its connection, as it is (what the caller writes commits or rolls back with the rest)."""
        shared: Connection | None = getattr(self._local, "conn", None)
        if shared is not None:
            with _storage_errors():
                yield shared
            return
        with _storage_errors(), (self.engine if write else self._reader).begin() as conn:
            yield conn

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self._pg else sqlite.insert)(table)

    def _lock(self, stmt: Any) -> Any:
        # PostgreSQL: concurrent workers skip each other's rows. SQLite: BEGIN IMMEDIATE already serialises.
        return stmt.with_for_update(skip_locked=True) if self._pg else stmt

    def ping(self) -> None:
        with self._tx(write=False) as s:
            s.execute(select(1))

    # -- inbound ----------------------------------------------------------------------------------

    def receive(self, record: InboundRecord) -> Received:
        return self.receive_many([record])[0]

    def receive_many(self, records: Sequence[InboundRecord]) -> list[Received]:
        """Commit several raw messages in one transaction (an IMAP batch): all of them, or none."""
        now = _now()
        results: list[Received] = []
        with self._conn() as conn:
            for record in records:
                results.append(self._receive(conn, record, now))
        return results

    def _receive(self, conn: Connection, record: InboundRecord, now: datetime) -> Received:
        values = {
            "channel": record.channel.value,
            "dedupe_key": record.dedupe_key,
            "message_id": record.message_id[:998] if record.message_id else None,
            "mailbox": record.mailbox,
            "uidvalidity": record.uidvalidity,
            "uid": record.uid,
            "trigger_id": record.trigger_id,
            "event_id": record.event_id,
            "payload": record.payload,
            "size": len(record.payload),
            "received_at": record.received_at,
            "status": record.status.value,
            "attempts": 0,
            "last_error": record.last_error,
            "updated_at": now,
        }
        row_id = conn.execute(self._q_receive, values).scalar_one_or_none()
        if row_id is not None:
            return Received(row_id, created=True)
        match = [InboundRow.dedupe_key == record.dedupe_key]
        if record.mailbox is not None and record.uid is not None:
            match.append(
                and_(
                    InboundRow.mailbox == record.mailbox,
                    InboundRow.uidvalidity == record.uidvalidity,
                    InboundRow.uid == record.uid,
                )
            )
        existing = conn.execute(select(InboundRow.id, InboundRow.ticket_id).where(or_(*match)).limit(1)).one()
        return Received(existing.id, created=False, ticket_id=existing.ticket_id)

    def claim_inbound(self, *, now: datetime, limit: int, lease: timedelta) -> list[StoredInbound]:
        inbound = InboundRow.metadata.tables["inbound_messages"]
        with self._conn() as conn:
            rows = conn.execute(
                self._lock(
                    select(inbound)
                    .where(
                        inbound.c.status == InboundStatus.RECEIVED.value,
                        or_(inbound.c.locked_until.is_(None), inbound.c.locked_until < now),
                    )
                    .order_by(inbound.c.id)
                    .limit(limit)
                )
            ).all()
            if rows:
                conn.execute(
                    update(inbound).where(inbound.c.id.in_([r.id for r in rows])).values(locked_until=now + lease)
                )
            return [self._inbound(r) for r in rows]

    def claim_inbound_by_id(self, inbound_id: int, *, now: datetime, lease: timedelta) -> StoredInbound | None:
        with self._tx() as s:
            row = s.execute(
                self._lock(
                    select(InboundRow).where(
                        InboundRow.id == inbound_id,
                        InboundRow.status == InboundStatus.RECEIVED.value,
                        or_(InboundRow.locked_until.is_(None), InboundRow.locked_until < now),
                    )
                )
            ).scalar_one_or_none()
            if row is None:
                return None
            row.locked_until = now + lease
            return self._inbound(row)

    def get_inbound(self, inbound_id: int) -> StoredInbound | None:
        with self._tx(write=False) as s:
            row = s.get(InboundRow, inbound_id)
            return self._inbound(row) if row else None

    def list_inbound(self, *, status: InboundStatus | None, limit: int) -> list[StoredInbound]:
        with self._tx(write=False) as s:
            stmt = select(InboundRow).order_by(InboundRow.id.desc()).limit(limit)
            if status is not None:
                stmt = stmt.where(InboundRow.status == status.value)
            return [self._inbound(r) for r in s.execute(stmt).scalars()]

    def finish_inbound(
        self, inbound_id: int, *, status: InboundStatus, reason: str | None = None, ticket_id: int | None = None
    ) -> None:
        # Core, as open_ticket: inside a batch an ORM session would add a savepoint of its own per parked message.
        with self._conn() as conn:
            self._finish(conn, inbound_id, status=status, reason=reason, ticket_id=ticket_id)

    def _finish(
        self,
        s: Session | Connection,
        inbound_id: int,
        *,
        status: InboundStatus,
        reason: str | None,
        ticket_id: int | None,
    ) -> None:
        s.execute(
            self._q_finish,
            {
                "inbound_id": inbound_id,
                "status": status.value,
                "last_error": reason,
                "ticket_id": ticket_id,
                "locked_until": None,
                "updated_at": _now(),
            },
        )

    def fail_inbound(
        self, inbound_id: int, *, error: str, max_attempts: int, now: datetime, count_attempt: bool = True
    ) -> InboundStatus:
        with self._tx() as s:
            row = s.get(InboundRow, inbound_id)
            if row is None:
                raise NotFound(f"no inbound message {inbound_id}")
            if row.status != InboundStatus.RECEIVED.value:
                return InboundStatus(row.status)  # another worker finished it meanwhile: nothing failed
            if count_attempt:
                row.attempts += 1
            row.last_error = error[:4000]
            row.locked_until = None
            row.updated_at = now
            if row.attempts >= max_attempts:
                row.status = InboundStatus.PARKED.value
            return InboundStatus(row.status)

    def retry_inbound(self, inbound_id: int) -> StoredInbound:
        with self._tx() as s:
            row = s.get(InboundRow, inbound_id)
            if row is None:
                raise NotFound(f"no inbound message {inbound_id}")
            if row.status == InboundStatus.PROCESSED.value:
                raise NotFound(f"inbound message {inbound_id} was already processed (ticket #{row.ticket_id})")
            row.status = InboundStatus.RECEIVED.value
            row.attempts = 0
            row.locked_until = None
            row.updated_at = _now()
            return self._inbound(row)

    def inbound_counts(self) -> dict[str, int]:
        with self._tx(write=False) as s:
            return {
                status: count
                for status, count in s.execute(
                    select(InboundRow.status, func.count()).group_by(InboundRow.status)
                ).all()
            }

    @staticmethod
    def _inbound(row: Any) -> StoredInbound:
        """A StoredInbound from an ORM row or a Core row of inbound_messages (same attribute names)."""
        return StoredInbound(
            id=row.id,
            channel=Channel(row.channel),
            dedupe_key=row.dedupe_key,
            payload=row.payload,
            received_at=row.received_at,
            status=InboundStatus(row.status),
            attempts=row.attempts,
            message_id=row.message_id,
            last_error=row.last_error,
            ticket_id=row.ticket_id,
            mailbox=row.mailbox,
            uid=row.uid,
        )

    # -- tickets ----------------------------------------------------------------------------------

    def open_ticket(self, inbound_id: int | None, draft: TicketDraft, compose: ComposeReplies) -> Ticket:
        now = _now()
        c = draft.classification
        with self._conn() as conn:
            values: dict[str, Any] = {
                "inbound_id": inbound_id,
                "subject": draft.subject[:2000],
                "body": draft.body,
                "requester": draft.requester[:320],
                "requester_name": draft.requester_name[:200],
                "channel": draft.channel.value,
                "department": draft.route.department,
                "priority": c.priority.value,
                "status": Status.NEW.value,
                "assignee": None,
                "confidence": float(c.confidence),
                "summary": c.summary,
                "classifier": c.classifier,
                "classifier_model": c.model,
                "classify_ms": c.latency_ms,
                "tokens_in": c.tokens_in,
                "tokens_out": c.tokens_out,
                "triaged": draft.route.triaged,
                "fallback_reason": c.fallback_reason,
                "created_at": now,
                "updated_at": now,
                "first_action_at": None,
                "resolved_at": None,
            }
            classified = {
                "department": c.department,
                "priority": c.priority.value,
                "confidence": round(c.confidence, 4),
                "model": c.model,
                "latency_ms": c.latency_ms,
                "tokens_in": c.tokens_in,
                "tokens_out": c.tokens_out,
                "fallback_reason": c.fallback_reason,
            }
            routed = {"to": draft.route.department, "triaged": draft.route.triaged, "reason": draft.route.reason}
            created = {"channel": draft.channel.value}
            # The events' data, in OPENING_EVENTS order.
            opening: list[tuple[str, dict[str, Any]]] = [
                (draft.requester, created),
                (f"classifier:{c.classifier}", classified),
                ("router", routed),
            ]
            if self._q_open_ticket is not None:  # PostgreSQL: ticket, events and request done in one statement
                params = {f"ticket_{key}": value for key, value in values.items()}
                for n, (kind, (actor, data)) in enumerate(zip(OPENING_EVENTS, opening, strict=True)):
                    params |= {f"event_kind_{n}": kind.value, f"event_actor_{n}": actor[:320], f"event_data_{n}": data}
                ticket_id = conn.execute(self._q_open_ticket, params).scalar_one_or_none()
            else:
                ticket_id = conn.execute(self._q_new_ticket, values).scalar_one_or_none()
            if ticket_id is None:  # this request has its ticket already (see _q_new_ticket)
                return self._ticket(conn.execute(self._q_ticket_of_inbound, {"inbound_id": inbound_id}).one())
            if self._q_open_ticket is None:
                conn.execute(  # one executemany for the three events
                    self._q_event,
                    [
                        self._event_values(ticket_id, kind, actor, now, data)
                        for kind, (actor, data) in zip(OPENING_EVENTS, opening, strict=True)
                    ],
                )
                if inbound_id is not None:
                    self._finish(conn, inbound_id, status=InboundStatus.PROCESSED, reason=None, ticket_id=ticket_id)
            ticket = self._ticket_from_values(ticket_id, values)
            refs = self._queue(conn, compose(ticket), now)
            self._add_refs(conn, [*self._refs(draft.message_refs, ticket_id, "in", now), *refs])
            return ticket

    def add_comment(
        self,
        inbound_id: int | None,
        ticket_id: int,
        *,
        actor: str,
        text: str,
        reopen: bool,
        message_refs: Sequence[str],
        compose: ComposeReplies,
        automated: bool = False,
    ) -> Ticket:
        now = _now()
        # Core, not the ORM: a follow-up is on the inbound hot path (an ORM session cost more than its statements).
        with self._conn() as conn:
            row = conn.execute(self._q_ticket_for_update, {"ticket_id": ticket_id}).one_or_none()
            if row is None:
                raise NotFound(f"no ticket #{ticket_id}")
            ticket = self._ticket(row)
            comment = {"text": text, "automated": automated}
            events = [self._event_values(ticket_id, EventKind.COMMENT, actor, now, comment)]
            changes: dict[str, Any] = {"updated_at": now}
            if reopen and not ticket.status.is_open:
                why = {"from": ticket.status.value, "to": Status.NEW.value, "why": "reply"}
                events.append(self._event_values(ticket_id, EventKind.STATUS, actor, now, why))
                changes.update(status=Status.NEW.value, resolved_at=None)
            conn.execute(self._q_event, events)
            conn.execute(self._q_touch_ticket, {"ticket_id": ticket_id, **changes})  # SETs the columns given
            ticket = replace(ticket, updated_at=now)
            if "status" in changes:
                ticket = replace(ticket, status=Status.NEW, resolved_at=None)
            refs = self._queue(conn, compose(ticket), now)
            self._add_refs(conn, [*self._refs(message_refs, ticket_id, "in", now), *refs])
            if inbound_id is not None:
                self._finish(conn, inbound_id, status=InboundStatus.PROCESSED, reason=None, ticket_id=ticket_id)
            return ticket

    def get_ticket(self, ticket_id: int) -> Ticket | None:
        with self._conn(write=False) as conn:
            row = conn.execute(self._q_ticket, {"ticket_id": ticket_id}).one_or_none()
            return self._ticket(row) if row else None

    def list_tickets(self, flt: TicketFilter) -> list[Ticket]:
        stmt = select(TicketRow).order_by(TicketRow.id.desc()).limit(flt.limit)
        if flt.department:
            stmt = stmt.where(TicketRow.department == flt.department)
        if flt.status:
            stmt = stmt.where(TicketRow.status == flt.status.value)
        if flt.requester:
            stmt = stmt.where(TicketRow.requester == flt.requester)
        if flt.open_only:
            stmt = stmt.where(TicketRow.status.in_([s.value for s in Status if s.is_open]))
        with self._tx(write=False) as s:
            return [self._ticket(r) for r in s.execute(stmt).scalars()]

    def ticket_events(self, ticket_id: int) -> list[TicketEvent]:
        with self._tx(write=False) as s:
            rows = s.execute(
                select(TicketEventRow).where(TicketEventRow.ticket_id == ticket_id).order_by(TicketEventRow.id)
            ).scalars()
            return [
                TicketEvent(ticket_id=r.ticket_id, kind=EventKind(r.kind), actor=r.actor, at=r.at, data=r.data, id=r.id)
                for r in rows
            ]

    def find_ticket_by_refs(self, refs: Sequence[str]) -> int | None:
        wanted = [r[:998] for r in refs if r]
        if not wanted:
            return None
        with self._conn(write=False) as conn:
            found: dict[str, int] = {ref: ticket for ref, ticket in conn.execute(self._q_find_refs, {"refs": wanted})}
        for ref in wanted:  # refs come newest first: the most recent match wins
            if ref in found:
                return found[ref]
        return None

    def message_refs(self, ticket_id: int) -> list[str]:
        """Every Message-ID of a ticket, oldest first: what our next mail about it threads under."""
        with self._tx(write=False) as s:
            return list(
                s.execute(
                    select(MessageRefRow.message_id)
                    .where(MessageRefRow.ticket_id == ticket_id)
                    .order_by(MessageRefRow.created_at, MessageRefRow.message_id)
                ).scalars()
            )

    def change_status(
        self, ticket_id: int, status: Status, *, actor: str, note: str | None, compose: ComposeReplies
    ) -> Ticket:
        now = _now()
        with self._tx() as s:
            row = self._get_row(s, ticket_id)
            old = row.status
            if old == status.value:
                return self._ticket(row)
            row.status = status.value
            row.updated_at = now
            if row.first_action_at is None:
                row.first_action_at = now
            if status in (Status.RESOLVED, Status.CLOSED):
                row.resolved_at = row.resolved_at or now
            else:
                row.resolved_at = None
            self._event(s, ticket_id, EventKind.STATUS, actor, now, {"from": old, "to": status.value, "note": note})
            ticket = self._ticket(row)
            self._enqueue(s, compose(ticket), now)
            return ticket

    def reroute(
        self, ticket_id: int, department: str, *, actor: str, note: str | None, compose: ComposeReplies
    ) -> Ticket:
        now = _now()
        with self._tx() as s:
            row = self._get_row(s, ticket_id)
            old = row.department
            if old == department:
                return self._ticket(row)
            row.department = department
            row.triaged = False
            row.updated_at = now
            if row.first_action_at is None:
                row.first_action_at = now
            self._event(
                s,
                ticket_id,
                EventKind.REROUTED,
                actor,
                now,
                {"from": old, "to": department, "note": note, "classifier": row.classifier},
            )
            ticket = self._ticket(row)
            self._enqueue(s, compose(ticket), now)
            return ticket

    def set_priority(
        self, ticket_id: int, priority: Priority, *, actor: str, note: str | None, compose: ComposeReplies
    ) -> Ticket:
        now = _now()
        with self._tx() as s:
            row = self._get_row(s, ticket_id)
            old = row.priority
            if old == priority.value:
                return self._ticket(row)
            row.priority = priority.value
            row.updated_at = now
            self._event(s, ticket_id, EventKind.PRIORITY, actor, now, {"from": old, "to": priority.value, "note": note})
            ticket = self._ticket(row)
            self._enqueue(s, compose(ticket), now)
            return ticket

    def assign(self, ticket_id: int, assignee: str | None, *, actor: str, compose: ComposeReplies) -> Ticket:
        now = _now()
        with self._tx() as s:
            row = self._get_row(s, ticket_id)
            old = row.assignee
            row.assignee = assignee
            row.updated_at = now
            if row.first_action_at is None:
                row.first_action_at = now
            self._event(s, ticket_id, EventKind.ASSIGNED, actor, now, {"from": old, "to": assignee})
            ticket = self._ticket(row)
            self._enqueue(s, compose(ticket), now)
            return ticket

    def corrections(self, limit: int | None = None) -> list[tuple[int, str, str, str]]:
        """(ticket id, subject, body, corrected department) for every ticket a person rerouted, latest wins."""
        with self._tx(write=False) as s:
            latest = (
                select(TicketEventRow.ticket_id, func.max(TicketEventRow.id).label("event_id"))
                .where(TicketEventRow.kind == EventKind.REROUTED.value, ~TicketEventRow.actor.startswith("classifier:"))
                .group_by(TicketEventRow.ticket_id)
                .subquery()
            )
            stmt = (
                select(TicketRow.id, TicketRow.subject, TicketRow.body, TicketRow.department)
                .join(latest, latest.c.ticket_id == TicketRow.id)
                .order_by(TicketRow.id)
            )
            if limit:
                stmt = stmt.limit(limit)
            return [(r.id, r.subject, r.body, r.department) for r in s.execute(stmt).all()]

    def labelled_history(self, *, limit: int = 200_000) -> list[tuple[str, str, str]]:
        """(subject, body, department) of tickets whose department a person confirmed: rerouted ones (the
        corrections) and resolved or closed ones that stayed where the classifier put them.

        An imported ticket that arrived resolved with a department the classifier chose (``import --classify``)
        confirms nothing: nobody worked it here, and learning from it would teach the model its own guesses. It
        counts once its status was changed here. Imported tickets whose department came from the file
        (classifier ``import``) are a person's labels."""
        rerouted = select(TicketEventRow.ticket_id).where(
            TicketEventRow.kind == EventKind.REROUTED.value, ~TicketEventRow.actor.startswith("classifier:")
        )
        status_changed = select(TicketEventRow.ticket_id).where(TicketEventRow.kind == EventKind.STATUS.value)
        worked_here = or_(
            TicketRow.external_key.is_(None), TicketRow.classifier == "import", TicketRow.id.in_(status_changed)
        )
        stmt = (
            select(TicketRow.subject, TicketRow.body, TicketRow.department)
            .where(
                or_(
                    TicketRow.id.in_(rerouted),
                    and_(TicketRow.status.in_([Status.RESOLVED.value, Status.CLOSED.value]), worked_here),
                ),
                TicketRow.triaged.is_(False),
            )
            .order_by(TicketRow.id.desc())
            .limit(limit)
        )
        with self._tx(write=False) as s:
            return [(r.subject, r.body, r.department) for r in s.execute(stmt).all()]

    def classifier_stats(self, *, since: datetime | None = None) -> list[dict[str, Any]]:
        """Per classifier: tickets, fallbacks, mean confidence and latency, token totals (one SQL aggregate)."""
        stmt = select(
            TicketRow.classifier,
            func.count().label("tickets"),
            func.count(TicketRow.fallback_reason).label("fallbacks"),
            func.avg(TicketRow.confidence).label("mean_confidence"),
            func.avg(TicketRow.classify_ms).label("mean_latency_ms"),
            func.max(TicketRow.classify_ms).label("max_latency_ms"),
            func.coalesce(func.sum(TicketRow.tokens_in), 0).label("tokens_in"),
            func.coalesce(func.sum(TicketRow.tokens_out), 0).label("tokens_out"),
            func.sum(case((TicketRow.triaged.is_(True), 1), else_=0)).label("triaged"),
        ).group_by(TicketRow.classifier)
        if since is not None:
            stmt = stmt.where(TicketRow.created_at >= since)
        with self._tx(write=False) as s:
            return [
                {
                    "classifier": r.classifier,
                    "tickets": int(r.tickets),
                    "fallbacks": int(r.fallbacks),
                    "mean_confidence": float(r.mean_confidence or 0.0),
                    "mean_latency_ms": float(r.mean_latency_ms or 0.0),
                    "max_latency_ms": float(r.max_latency_ms or 0.0),
                    "tokens_in": int(r.tokens_in),
                    "tokens_out": int(r.tokens_out),
                    "triaged": int(r.triaged or 0),
                }
                for r in s.execute(stmt.order_by(TicketRow.classifier)).all()
            ]

    def auto_reply_counts(self, recipient: str, *, since: Sequence[datetime]) -> list[int]:
        """How many automatic mails went (or are queued) to ``recipient`` since each of ``since``, in one query."""
        if not since:
            return []
        with self._conn(write=False) as conn:
            return self._auto_reply_counts(conn, recipient.lower(), since, now=_now())[0]

    def _auto_reply_counts(
        self, conn: Connection, recipient: str, since: Sequence[datetime], *, now: datetime
    ) -> tuple[list[int], datetime | None]:
        """How many automatic mails went to ``recipient`` since each of ``since``, and until when it is suppressed
        (a permanent bounce), in one statement: the loop guards ask for every new email ticket."""
        stmt = self._q_auto_reply_counts.get(len(since))
        if stmt is None:  # one statement per number of windows, built once
            tables = OutboxRow.metadata.tables
            outbox, suppressed = tables["outbox"], tables["suppressed_recipients"]
            until = select(suppressed.c.until).where(
                suppressed.c.address == bindparam("recipient"), suppressed.c.until > bindparam("now")
            )
            columns = [func.count(case((outbox.c.created_at >= bindparam(f"since_{i}"), 1))) for i in range(len(since))]
            stmt = select(*columns, until.scalar_subquery()).where(
                outbox.c.recipient == bindparam("recipient"),
                outbox.c.kind == OutboxKind.EMAIL.value,
                outbox.c.created_at >= bindparam("earliest"),
            )
            self._q_auto_reply_counts[len(since)] = stmt
        params: dict[str, Any] = {f"since_{i}": start for i, start in enumerate(since)}
        # With no windows nothing is counted, but the row, and with it the suppression, still comes back.
        params.update(recipient=recipient, now=now, earliest=min(since) if since else now)
        *counts, suppressed_until = conn.execute(stmt, params).one()
        return [int(n) for n in counts], suppressed_until

    def suppress_recipients(self, addresses: Sequence[str], *, until: datetime, reason: str) -> None:
        """Mark addresses that permanently bounced: no automatic mail to them until ``until`` (extended, never
        shortened, when they bounce again)."""
        wanted = sorted({a.strip().lower()[:320] for a in addresses if "@" in a})
        if not wanted:
            return
        table = SuppressedRecipientRow.metadata.tables["suppressed_recipients"]
        now = _now()
        stmt = self._insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.address],
            set_={
                "until": func.max(table.c.until, stmt.excluded.until)
                if not self._pg
                else func.greatest(table.c.until, stmt.excluded.until),
                "reason": stmt.excluded.reason,
            },
        )
        with self._conn() as conn:
            conn.execute(
                stmt, [{"address": a, "until": until, "reason": reason[:2000], "created_at": now} for a in wanted]
            )

    def suppressed_until(self, address: str, *, now: datetime) -> datetime | None:
        """Until when automatic mail to ``address`` is suppressed (a permanent bounce), or None."""
        with self._conn(write=False) as conn:
            until: datetime | None = conn.execute(
                self._q_suppressed, {"address": address.strip().lower(), "now": now}
            ).scalar_one_or_none()
            return until

    def recent_requests(self, requester: str, *, since: datetime, limit: int = 50) -> list[tuple[str, str]]:
        """(subject, start of body) of the newest tickets ``requester`` opened since ``since`` (the repeat brake)."""
        with self._conn(write=False) as conn:
            rows = conn.execute(self._q_recent, {"requester": requester[:320], "since": since, "limit": limit})
            return [(subject, body) for subject, body in rows]

    def sender_history(
        self,
        address: str,
        *,
        now: datetime,
        reply_windows: Sequence[datetime],
        recent_since: datetime,
        recent_limit: int,
    ) -> SenderHistory:
        """The loop guards' three reads in one read-only transaction (one per new email ticket)."""
        lowered = address.strip().lower()  # outbox recipients and suppressions are stored lower-case
        with self._conn(write=False) as conn:
            counts, until = self._auto_reply_counts(conn, lowered, reply_windows, now=now)
            recent: list[tuple[str, str]] = []
            if recent_limit > 0:
                rows = conn.execute(
                    self._q_recent, {"requester": address[:320], "since": recent_since, "limit": recent_limit}
                )
                recent = [(subject, body) for subject, body in rows]
        return SenderHistory(auto_replies=counts, suppressed_until=until, recent=recent)

    def count_auto_replies(self, recipient: str, *, since: datetime) -> int:
        """How many automatic mails went (or are queued) to ``recipient`` since ``since``."""
        return self.auto_reply_counts(recipient, since=[since])[0]

    def _get_row(self, s: Session, ticket_id: int) -> TicketRow:
        # FOR UPDATE without SKIP LOCKED (``_lock``): two people changing one ticket take turns; skipping would
        # tell the second that the ticket does not exist.
        row: TicketRow | None = s.execute(
            select(TicketRow).where(TicketRow.id == ticket_id).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no ticket #{ticket_id}")
        return row

    def _event(
        self,
        s: Session | Connection,
        ticket_id: int,
        kind: EventKind,
        actor: str,
        at: datetime,
        data: dict[str, Any],
    ) -> None:
        s.execute(self._q_event, self._event_values(ticket_id, kind, actor, at, data))

    @staticmethod
    def _event_values(
        ticket_id: int, kind: EventKind, actor: str, at: datetime, data: dict[str, Any]
    ) -> dict[str, Any]:
        return {"ticket_id": ticket_id, "kind": kind.value, "actor": actor[:320], "data": data, "at": at}

    @staticmethod
    def _refs(refs: Sequence[str], ticket_id: int, direction: str, now: datetime) -> list[dict[str, Any]]:
        return [
            {"message_id": ref[:998], "ticket_id": ticket_id, "direction": direction, "created_at": now} for ref in refs
        ]

    def _add_refs(self, s: Session | Connection, rows: list[dict[str, Any]]) -> None:
        if rows:  # one statement for a message's refs, ours and theirs
            s.execute(self._q_ref, rows if len(rows) > 1 else rows[0])

    @staticmethod
    def _ticket_from_values(ticket_id: int, values: dict[str, Any]) -> Ticket:
        return Ticket(
            id=ticket_id,
            subject=values["subject"],
            body=values["body"],
            requester=values["requester"],
            requester_name=values["requester_name"],
            channel=Channel(values["channel"]),
            department=values["department"],
            priority=Priority(values["priority"]),
            status=Status(values["status"]),
            confidence=values["confidence"],
            summary=values["summary"],
            classifier=values["classifier"],
            created_at=values["created_at"],
            updated_at=values["updated_at"],
            assignee=values["assignee"],
            resolved_at=values["resolved_at"],
            triaged=values["triaged"],
            classifier_model=values["classifier_model"],
            classify_ms=values["classify_ms"],
            tokens_in=values["tokens_in"],
            tokens_out=values["tokens_out"],
        )

    @staticmethod
    def _ticket(row: Any) -> Ticket:
        """A Ticket from an ORM row or a Core row of the tickets table (same attribute names)."""
        return Ticket(
            id=row.id,
            subject=row.subject,
            body=row.body,
            requester=row.requester,
            requester_name=row.requester_name,
            channel=Channel(row.channel),
            department=row.department,
            priority=Priority(row.priority),
            status=Status(row.status),
            confidence=row.confidence,
            summary=row.summary,
            classifier=row.classifier,
            created_at=row.created_at,
            updated_at=row.updated_at,
            assignee=row.assignee,
            resolved_at=row.resolved_at,
            triaged=row.triaged,
            classifier_model=row.classifier_model,
            classify_ms=row.classify_ms,
            tokens_in=row.tokens_in,
            tokens_out=row.tokens_out,
        )

    # -- outbox -----------------------------------------------------------------------------------

    def enqueue(self, items: Sequence[OutboxItem]) -> None:
        with self._tx() as s:
            self._enqueue(s, items, _now())

    def _enqueue(self, s: Session | Connection, items: Sequence[OutboxItem], now: datetime) -> None:
        self._add_refs(s, self._queue(s, items, now))

    def _queue(self, s: Session | Connection, items: Sequence[OutboxItem], now: datetime) -> list[dict[str, Any]]:
        """Insert ``items`` (a dedupe key already queued is skipped); returns the message_refs rows of our own
        Message-IDs, for the caller to write with its other refs in one statement."""
        refs: list[dict[str, Any]] = []
        for item in items:
            to = item.payload.get("to")
            inserted = s.execute(
                self._q_outbox,
                {
                    "kind": item.kind.value,
                    "ticket_id": item.ticket_id,
                    "dedupe_key": item.dedupe_key[:300],
                    "payload": item.payload,
                    "recipient": to.lower() if isinstance(to, str) else None,
                    "status": OutboxStatus.PENDING.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                },
            ).scalar_one_or_none()
            message_id = item.payload.get("message_id")
            if inserted is not None and item.ticket_id is not None and isinstance(message_id, str):
                # Record our own Message-ID now, so a reply threads even if it beats our "sent" mark.
                refs.extend(self._refs([message_id], item.ticket_id, "out", now))
        return refs

    def claim_due_outbox(self, *, now: datetime, limit: int, lease: timedelta) -> list[StoredOutboxItem]:
        with self._tx() as s:
            rows = (
                s.execute(
                    self._lock(
                        select(OutboxRow)
                        .where(
                            OutboxRow.status == OutboxStatus.PENDING.value,
                            OutboxRow.next_attempt_at <= now,
                            or_(OutboxRow.locked_until.is_(None), OutboxRow.locked_until < now),
                        )
                        .order_by(OutboxRow.next_attempt_at, OutboxRow.id)
                        .limit(limit)
                    )
                )
                .scalars()
                .all()
            )
            for row in rows:
                row.locked_until = now + lease
            return [self._outbox(r) for r in rows]

    def mark_outbox_sent(self, item_id: int, *, sent_ref: str | None, now: datetime) -> None:
        with self._tx() as s:
            s.execute(
                update(OutboxRow)
                .where(OutboxRow.id == item_id)
                .values(
                    status=OutboxStatus.SENT.value,
                    sent_ref=sent_ref,
                    sent_at=now,
                    attempts=OutboxRow.attempts + 1,
                    locked_until=None,
                    last_error=None,
                )
            )

    def mark_outbox_failed(
        self, item_id: int, *, error: str, next_attempt_at: datetime | None, now: datetime, count_attempt: bool = True
    ) -> None:
        values: dict[str, Any] = {"last_error": error[:4000], "locked_until": None}
        if count_attempt:
            values["attempts"] = OutboxRow.attempts + 1
        if next_attempt_at is None:
            values["status"] = OutboxStatus.PARKED.value
        else:
            values["next_attempt_at"] = next_attempt_at
        with self._tx() as s:
            s.execute(update(OutboxRow).where(OutboxRow.id == item_id).values(**values))

    def list_outbox(self, *, status: OutboxStatus | None = None, limit: int = 100) -> list[StoredOutboxItem]:
        with self._tx(write=False) as s:
            stmt = select(OutboxRow).order_by(OutboxRow.id.desc()).limit(limit)
            if status is not None:
                stmt = stmt.where(OutboxRow.status == status.value)
            return [self._outbox(r) for r in s.execute(stmt).scalars()]

    def outbox_counts(self) -> dict[str, int]:
        with self._tx(write=False) as s:
            return {
                status: count
                for status, count in s.execute(select(OutboxRow.status, func.count()).group_by(OutboxRow.status)).all()
            }

    def retry_outbox(self, item_id: int) -> None:
        with self._tx() as s:
            row = s.get(OutboxRow, item_id)
            if row is None:
                raise NotFound(f"no outbox item {item_id}")
            row.status = OutboxStatus.PENDING.value
            row.attempts = 0
            row.next_attempt_at = _now()
            row.locked_until = None

    @staticmethod
    def _outbox(row: OutboxRow) -> StoredOutboxItem:
        return StoredOutboxItem(
            id=row.id,
            kind=OutboxKind(row.kind),
            dedupe_key=row.dedupe_key,
            payload=row.payload,
            ticket_id=row.ticket_id,
            status=OutboxStatus(row.status),
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            created_at=row.created_at,
            last_error=row.last_error,
            sent_ref=row.sent_ref,
        )

    # -- leases and mailbox state -----------------------------------------------------------------

    def acquire_lease(self, name: str, owner: str, *, ttl: timedelta, now: datetime | None = None) -> bool:
        """Take or renew the lease ``name``; False while another owner holds an unexpired one."""
        now = now or _now()
        with self._tx() as s:
            s.execute(
                self._insert(LeaseRow).values(name=name, owner=owner, expires_at=now + ttl).on_conflict_do_nothing()
            )
            result = s.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name, or_(LeaseRow.owner == owner, LeaseRow.expires_at < now))
                .values(owner=owner, expires_at=now + ttl)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def release_lease(self, name: str, owner: str) -> None:
        with self._tx() as s:
            s.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name, LeaseRow.owner == owner)
                .values(expires_at=datetime(1970, 1, 1, tzinfo=UTC))
            )

    def mailbox_state(self, mailbox: str) -> dict[str, Any] | None:
        with self._tx(write=False) as s:
            row = s.get(MailboxStateRow, mailbox)
            if row is None:
                return None
            return {
                "mailbox": row.mailbox,
                "folder": row.folder,
                "uidvalidity": row.uidvalidity,
                "last_uid": row.last_uid,
                "last_poll_at": row.last_poll_at,
                "last_success_at": row.last_success_at,
                "last_error": row.last_error,
            }

    def save_mailbox_state(self, mailbox: str, **values: Any) -> None:
        with self._tx() as s:
            row = s.get(MailboxStateRow, mailbox)
            if row is None:
                row = MailboxStateRow(mailbox=mailbox, folder=values.get("folder", "INBOX"), last_uid=0)
                s.add(row)
            for key, value in values.items():
                setattr(row, key, value)

    # -- slack (issue 4) --------------------------------------------------------------------------

    def slack_posts(self, ticket_id: int) -> list[StoredOutboxItem]:
        """Every department-channel post (kind slack_post) of a ticket, oldest first, whatever its status.

        The Slack sender finds the ticket's cards here (``sent_ref`` is ``"<channel>:<ts>"``) to thread
        follow-ups under them and to update them in place.
        """
        with self._tx(write=False) as s:
            rows = s.execute(
                select(OutboxRow)
                .where(OutboxRow.ticket_id == ticket_id, OutboxRow.kind == OutboxKind.SLACK_POST.value)
                .order_by(OutboxRow.id)
            ).scalars()
            return [self._outbox(r) for r in rows]
