"""Alembic's environment for the run store: migrates the connection RunStore hands over, or a URL (offline: prints SQL)."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from gaudi_nb import paths
from gaudi_nb.store import Base

config = context.config


def _migrate(connection: Connection) -> None:
    # SQLite alters most columns only by copying the table: batch mode does that for later revisions
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite")
    # RunStore's connection is already in a transaction (it holds the migration lock): Alembic then joins it and the caller commits
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    url = config.get_main_option("sqlalchemy.url") or paths.store_url()
    if context.is_offline_mode():
        # SQL for a DBA to review and apply by hand
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, dialect_opts={"paramstyle": "named"})
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as own:
        _migrate(own)
    engine.dispose()


run()
