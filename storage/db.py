"""Storage adapter: engine construction for SQLite (WAL) and PostgreSQL (psycopg 3), and schema migrations."""

from __future__ import annotations

import logging
import select
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError, SQLAlchemyError

from core.errors import ConfigError, StorageError

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
# Execution option marking a connection whose transactions only read (SQLite begins them DEFERRED).
READ_ONLY = "ticketbot_read_only"


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, *, echo: bool = False, pool_size: int = 5, schema: str | None = None) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and IMMEDIATE transactions.

    ``schema`` (PostgreSQL only) puts every table in that schema via the search path: tests use it
    to give each test a clean schema of its own.
    """
    try:
        parsed = make_url(normalise_url(url))
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError or ValueError for bad URLs
        raise ConfigError(f"database.url: not a database URL: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed.render_as_string(hide_password=False), echo=echo)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"database.url: unsupported database {parsed.get_backend_name()!r} (sqlite or postgresql)")
    # random_page_cost 1.1, PostgreSQL's documented value for SSDs and for data that fits in memory (the default,
    # 4, models spinning disks): at 4 the planner answered "?status=waiting, newest first" by scanning every
    # ticket newest first and filtering (100 ms once recent tickets were mostly new) instead of the status index.
    options = ["-crandom_page_cost=1.1"]
    if schema:
        options.append(f"-csearch_path={schema}")
    connect_args: dict[str, Any] = {"connect_timeout": 5, "options": " ".join(options)}
    engine = create_engine(parsed, echo=echo, pool_size=pool_size, max_overflow=pool_size, connect_args=connect_args)
    _check_on_checkout(engine)
    return engine


# A pooled connection returned less than this long ago, with nothing waiting on its socket, is taken as alive
# without a ping. SQLAlchemy's pool_pre_ping asks the server on every checkout: a roundtrip each time, and a ticket
# created through the API checks out twice (docs/api.md, "Fewer roundtrips per create"). A server that restarts or
# ends the session sends a message and closes the socket, which the pending-input check sees at once; only a
# connection that may have died silently (a firewall forgetting an idle flow, which takes minutes) needs the
# roundtrip.
PING_AFTER_IDLE = 5.0
_CHECKED_IN = "ticketbot_checked_in"


def _check_on_checkout(engine: Engine) -> None:
    """Pre-ping, skipped for connections in constant use: see ``PING_AFTER_IDLE``."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get(_CHECKED_IN)
        # ``info`` is emptied when a connection is replaced: no mark means connected just now, for this checkout.
        if last is None or (time.monotonic() - last < PING_AFTER_IDLE and not has_input(dbapi_connection)):
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                # As pool_pre_ping does: one dead connection means the server went away, so every connection
                # pooled before now is replaced, and the pool checks out a new one for this caller.
                raise InvalidatePoolError(f"connection lost while idle: {exc}") from exc
            raise

    def has_input(dbapi_connection: Any) -> bool:
        """Whether the server sent anything to this idle connection (a termination notice, or end of stream)."""
        poller = select.poll()  # not select.select, which refuses descriptors above 1023
        try:
            poller.register(dbapi_connection.fileno(), select.POLLIN)
        except (OSError, ValueError, dialect.loaded_dbapi.Error):  # closed already: let the ping decide
            return True
        return bool(poller.poll(0))


def _sqlite_engine(url: str, *, echo: bool) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see "begin" below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints, safe with WAL
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    # Writers of this process queue on a lock before BEGIN IMMEDIATE. Left to SQLite's busy handler, a waiting
    # writer polls with sleeps growing to 100 ms, so a one-row write (a Slack request waiting to be acknowledged)
    # could lose to a stream of ticket transactions for half a second. Other processes still meet the busy timeout.
    writer = _WriterLock()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front, so two processes claiming rows serialise instead of
        # failing with "database is locked" when a read transaction tries to upgrade to a write.
        # Read-only work (READ_ONLY option) begins DEFERRED: under WAL it neither waits for nor blocks writers.
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
            return
        conn.info[_HOLDS_WRITER] = writer.acquire()
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _release(conn)
            raise

    def _release(conn: Any) -> None:
        if conn.info.pop(_HOLDS_WRITER, False):
            writer.release()

    event.listen(engine, "commit", _release)
    event.listen(engine, "rollback", _release)

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        # A connection returned to the pool mid-transaction is rolled back by the pool, not by a Connection, so
        # no "rollback" event: release here. (``Connection.info`` is this record's ``info``.)
        if record.info.pop(_HOLDS_WRITER, False):
            writer.release()

    return engine


_HOLDS_WRITER = "ticketbot_holds_writer_lock"


class _WriterLock:
    """The in-process queue for SQLite's single writer, first come first served.

    Release hands the lock straight to the longest waiter, so a thread that writes in a loop cannot take it back
    before the others (a plain ``threading.Lock`` lets it, and starved a poller's lease renewal). ``acquire``
    returns False, and the caller goes on without it (SQLite's busy timeout still applies), when the thread holds
    it already (a write opened inside another write) or after ``timeout`` seconds: a forgotten release can slow
    writers down, never stop them.
    """

    def __init__(self, timeout: float = 30.0) -> None:
        self._mutex = threading.Lock()
        self._owner: int | None = None
        self._waiters: deque[tuple[int, threading.Event]] = deque()
        self._timeout = timeout

    def acquire(self) -> bool:
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                return False
            if self._owner is None and not self._waiters:
                self._owner = me
                return True
            turn = (me, threading.Event())
            self._waiters.append(turn)
        if turn[1].wait(self._timeout):
            return True  # handed over by release()
        with self._mutex:
            if self._owner == me:  # handed over just as the wait ran out
                return True
            self._waiters.remove(turn)
            return False

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                owner, event = self._waiters.popleft()
                self._owner = owner
                event.set()
            else:
                self._owner = None


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (idempotent)."""
    try:
        command.upgrade(alembic_config(engine), revision)
    except SQLAlchemyError as exc:
        raise StorageError(f"migration failed: {exc}") from exc


def is_current(engine: Engine) -> bool:
    """True when the database is at the latest migration."""
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision() == head
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot reach the database: {exc}") from exc


# pg_advisory_lock key that serialises migrations between processes (any constant shared by every replica).
MIGRATION_LOCK = 0x7469636B  # "tick"


def ensure_schema(engine: Engine) -> None:
    """Upgrade when behind: every command can run on a fresh database.

    Replicas started together on a fresh PostgreSQL database would otherwise all run the first migration at
    once and all but one fail on CREATE TABLE: an advisory lock makes them take turns, and each re-checks.
    """
    if is_current(engine):
        return
    if engine.dialect.name != "postgresql":
        log.info("applying database migrations")
        upgrade(engine)
        return
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            try:
                if not is_current(engine):
                    log.info("applying database migrations")
                    upgrade(engine)
            finally:
                # Session-level lock: it outlives a rollback, so it is released explicitly.
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
                conn.commit()
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot migrate the database: {exc}") from exc
