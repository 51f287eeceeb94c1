"""Storage adapter for synchronous intake (the REST API): store a request already claimed by its receiver.

``SqlStore.receive`` then ``claim_inbound_by_id`` is two transactions; a request that is processed while its
client waits needs only one: the row is inserted with its lease taken, so the bot's inbound workers (which
claim only unleased rows) leave it alone unless the receiver dies and the lease runs out.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from core.errors import StorageError
from core.inbound import InboundRecord, InboundStatus, StoredInbound
from storage.store import SqlStore
from storage.tables import InboundRow

inbound = InboundRow.metadata.tables["inbound_messages"]
# Built once per dialect, values bound at execute time: building ``insert().values(...)`` per request cost more
# than executing it, and a statement without inline values hits SQLAlchemy's compiled cache.
_INSERT_CLAIMED = {
    name: dialect.insert(inbound).on_conflict_do_nothing().returning(inbound.c.id)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def receive_claimed(store: SqlStore, record: InboundRecord, *, now: datetime, lease: timedelta) -> StoredInbound | None:
    """Commit ``record`` leased to the caller until ``now + lease``; None when its dedupe key is already stored
    (a retry: the caller looks the first one up with ``SqlStore.receive``)."""
    values = {
        "channel": record.channel.value,
        "dedupe_key": record.dedupe_key,
        "message_id": record.message_id,
        "payload": record.payload,
        "size": len(record.payload),
        "received_at": record.received_at,
        "status": InboundStatus.RECEIVED.value,
        "attempts": 0,
        "locked_until": now + lease,
        "updated_at": now,
    }
    engine = store.engine
    statement = _INSERT_CLAIMED[engine.dialect.name]
    try:
        if engine.dialect.name == "postgresql":
            # One statement is atomic by itself: in autocommit it needs no BEGIN and COMMIT, two of the roundtrips
            # of a ticket created through the API. (SQLite keeps its transaction: BEGIN IMMEDIATE queues writers.)
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                row_id = conn.execute(statement, values).scalar_one_or_none()
        else:
            with engine.begin() as conn:
                row_id = conn.execute(statement, values).scalar_one_or_none()
    except SQLAlchemyError as exc:
        raise StorageError(f"database error: {exc}") from exc
    if row_id is None:
        return None
    return StoredInbound(
        id=row_id,
        channel=record.channel,
        dedupe_key=record.dedupe_key,
        payload=record.payload,
        received_at=record.received_at,
        status=InboundStatus.RECEIVED,
        attempts=0,
        message_id=record.message_id,
    )
