"""Shared fixtures: a fresh store on SQLite and on PostgreSQL (a private schema per test), and config files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from storage.db import make_engine, upgrade
from storage.store import SqlStore

PG_URL = os.environ.get("TICKETBOT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("TICKETBOT_REQUIRE_POSTGRES") == "1"

_pg_reason: str | None = None


def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used (None when it can); checked once per session."""
    global _pg_reason
    if _pg_reason is None:
        probe = make_engine(PG_URL)
        try:
            with probe.connect() as conn:
                conn.execute(text("select 1"))
            _pg_reason = ""
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable", reported verbatim
            _pg_reason = f"PostgreSQL at {PG_URL} is unreachable: {exc}".splitlines()[0]
        finally:
            probe.dispose()
    return _pg_reason or None


def require_postgres() -> None:
    reason = postgres_unavailable()
    if reason:
        if REQUIRE_PG:
            pytest.fail(f"TICKETBOT_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ticketbot.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    """A migrated private schema in the test PostgreSQL, dropped afterwards: parallel runs never collide."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(PG_URL, schema=schema)
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each storage test runs once per engine."""
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture
def store(engine: Engine) -> SqlStore:
    return SqlStore(engine)


@pytest.fixture
def sqlite_store(sqlite_engine: Engine) -> SqlStore:
    return SqlStore(sqlite_engine)
