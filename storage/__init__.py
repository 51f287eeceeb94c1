"""Storage adapter: SQLAlchemy tables and the SqlStore implementing the core's storage ports."""
