"""Storage adapter: Alembic environment; the engine comes from storage.db, never from an ini file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from storage.search import include_name
from storage.tables import Base

engine: Engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
