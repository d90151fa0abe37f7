"""Pytest fixtures: a real PostgreSQL 18 server (deploy/dev/postgres_server.py) and database URLs.

- `postgres_server` (session): one server in a temporary directory, started on first use, stopped and deleted
  at the end. Tests may stop and start it (outage tests); the address and password stay the same.
- `postgres_url` (function): a fresh, empty database on that server for each test (CREATE DATABASE with a
  unique name), dropped afterwards, so tests never see each other's rows.
- `sqlite_url` (function): a SQLite file in the test's tmp_path.

These fixtures create databases only; they never run migrations (tests decide that). The server runs with
fsync off (`durable=False`), which is fine for throwaway data and never for real data.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from postgres_server import PostgresServer  # deploy/dev is on sys.path (tests/conftest.py)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # A directory of its own under /tmp (not pytest's 0700 tree), so that when the tests run as root only this
    # directory, not pytest's, needs o+x for the unprivileged server user.
    base = Path(tempfile.mkdtemp(prefix="shelfsight-pg-"))
    server = PostgresServer(base, durable=False)
    atexit.register(server.stop)  # in case the session dies before the fixture's teardown
    server.start()
    try:
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL (postgresql+psycopg) of a new empty database; dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    postgres_server.start()  # a no-op unless an earlier test left it stopped
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.url_for(name)
    finally:
        postgres_server.start()
        with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shelfsight.db'}"
