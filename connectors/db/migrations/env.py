"""Alembic environment for the product database (PostgreSQL via psycopg 3, or SQLite).

Called two ways: by `ProductStore.migrate()`, which passes an open connection in `config.attributes
["connection"]` (already inside a transaction), and by the `alembic` command line with
`connectors/db/alembic.ini`, where the URL comes from `-x url=...` or SHELFSIGHT_DATABASE_URL.

On PostgreSQL the migration transaction first takes a transaction-scoped advisory lock, so two processes
migrating at once run one after the other and the second finds the schema at head. This file must not
configure logging when called from the service (it would replace the service's logging setup).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text

from connectors.db.models import Base

MIGRATION_LOCK_KEY = 0x5348454C46  # "SHELF": pg_advisory_xact_lock key shared by every ShelfSight migrator

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("SHELFSIGHT_DATABASE_URL")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set SHELFSIGHT_DATABASE_URL")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things in place
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    shared = config.attributes.get("connection")
    if shared is not None:
        _run(shared)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
