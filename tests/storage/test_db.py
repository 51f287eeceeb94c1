"""storage.db on PostgreSQL: what every session of the engine is set up with."""

from __future__ import annotations

from sqlalchemy import Engine, text


def test_postgresql_sessions_cost_random_reads_as_ssds_do_and_keep_their_schema(pg_engine: Engine) -> None:
    """random_page_cost 1.1 (storage/db.py says why: the default 4 made the planner scan every ticket newest first
    for a status filter), passed beside the tests' search_path rather than instead of it."""
    with pg_engine.connect() as conn:
        assert conn.execute(text("SHOW random_page_cost")).scalar() == "1.1"
        schema = conn.execute(text("SELECT current_schema()")).scalar()
    assert schema is not None and schema.startswith("t_")
