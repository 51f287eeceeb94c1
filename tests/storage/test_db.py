"""storage.db on PostgreSQL: what every session of the engine is set up with, and how pooled ones are checked."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, text

from storage import db
from tests.conftest import PG_URL


def test_postgresql_sessions_cost_random_reads_as_ssds_do_and_keep_their_schema(pg_engine: Engine) -> None:
    """random_page_cost 1.1 (storage/db.py says why: the default 4 made the planner scan every ticket newest first
    for a status filter), passed beside the tests' search_path rather than instead of it."""
    with pg_engine.connect() as conn:
        assert conn.execute(text("SHOW random_page_cost")).scalar() == "1.1"
        schema = conn.execute(text("SELECT current_schema()")).scalar()
    assert schema is not None and schema.startswith("t_")


@pytest.mark.parametrize("ping_after_idle", [db.PING_AFTER_IDLE, 0.0], ids=["checked-in-just-now", "always-pinged"])
def test_a_pooled_connection_whose_session_the_server_ended_is_replaced_at_checkout(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch, ping_after_idle: float
) -> None:
    """A server restart or an administrator ending sessions must cost no request: a connection returned a moment
    ago is not pinged (storage/db.py says why), but the server's goodbye waiting on its socket is seen, and one
    idle longer is pinged. Either way the caller gets a live connection."""
    monkeypatch.setattr(db, "PING_AFTER_IDLE", ping_after_idle)
    with pg_engine.connect() as conn:
        before = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    admin = db.make_engine(PG_URL)
    try:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": before}).scalar_one()
            alive = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
            deadline = time.monotonic() + 10
            while conn.execute(alive, {"pid": before}).scalar():
                assert time.monotonic() < deadline, "the backend did not end"
                time.sleep(0.01)
    finally:
        admin.dispose()
    with pg_engine.connect() as conn:
        after = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert after != before
