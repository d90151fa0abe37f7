"""The one way into the product database: `Database` owns the SQLAlchemy engine and hands out transactions
(`transaction(write=...)`); `DatabaseUnavailable` is what every transient failure becomes; `now()` and `as_utc()` are
the clock and the time-zone rule every store module stamps and reads times with.

`ProductStore`, `ReviewStore`, `RetrainingStore`, the review outbox, the report reader and the locks all reach the
database through a `Database` (`ProductStore.database`), so they share one engine, one pool and one error mapping.

What it guarantees:
- Transient trouble (server down or restarting, connection lost, timeouts, deadlocks, SQLite busy) raises
  `DatabaseUnavailable`; the caller retries with backoff and the same `Database` reconnects by itself (pooled
  connections are checked before use). Mistakes (constraint violations, a missing schema) propagate as SQLAlchemy
  errors: retrying them cannot help.
- SQLite (the embedded default) runs in WAL mode with a busy timeout; write transactions start with BEGIN
  IMMEDIATE so two writers queue instead of failing half-way.

What it must not do: know any table (queries live in the store modules), retry, decide policy, log or raise anything
that contains the database password (use `redacted_url`), or import `daemon/` or `learner/`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import StaticPool

__all__ = ["Database", "DatabaseUnavailable", "InsertFactory", "as_utc", "now"]

log = logging.getLogger(__name__)

InsertFactory = Callable[[Table], Any]  # postgresql.insert or sqlite.insert (both have on_conflict_*)

# SQLite error messages that mean "try again later" (everything else from SQLite is a real error, even though
# the sqlite3 module raises OperationalError for e.g. "no such table" too).
SQLITE_TRANSIENT = ("database is locked", "database table is locked", "database is busy", "disk i/o error")


class DatabaseUnavailable(Exception):
    """The database cannot be reached or is busy right now; retry later with backoff. The message names the
    database by its redacted URL and says what happened; `__cause__` holds the driver's error."""


def now() -> datetime:
    """The current time, timezone-aware UTC: what every store module stamps rows with."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A time read from the database as timezone-aware UTC (SQLite gives back naive UTC times)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Database:
    """A product database behind a SQLAlchemy engine (psycopg 3 for PostgreSQL, sqlite3 for SQLite).

    `url`: a SQLAlchemy URL; `postgresql://` is taken as `postgresql+psycopg://`. For a SQLite file, missing
    parent directories are created. `connect_timeout_s` bounds connecting and waiting for a pooled connection;
    `pool_size` connections are kept (as many again may be opened under load). `statement_timeout_s` bounds
    each PostgreSQL statement (None: no bound); `sqlite_busy_timeout_s` is how long a SQLite writer waits for
    another one. Thread-safe: share one per process.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 5.0,
        pool_size: int = 5,
        echo: bool = False,
        statement_timeout_s: float | None = 60.0,
        sqlite_busy_timeout_s: float = 30.0,
    ) -> None:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.url: URL = parsed
        self.dialect = parsed.get_backend_name()
        if self.dialect == "postgresql":
            self.engine: Engine = _postgres_engine(parsed, connect_timeout_s, pool_size, echo, statement_timeout_s)
        elif self.dialect == "sqlite":
            self.engine = _sqlite_engine(parsed, pool_size, echo, sqlite_busy_timeout_s)
        else:
            raise ValueError(f"unsupported database {self.redacted_url}: use postgresql+psycopg:// or sqlite://")
        # INSERT with the dialect's ON CONFLICT clauses (the upserts of every store module)
        self.insert: InsertFactory = postgresql.insert if self.dialect == "postgresql" else sqlite.insert

    @property
    def redacted_url(self) -> str:
        """The URL with the password replaced by ***; the only form of the URL this package ever logs."""
        return self.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Database({self.redacted_url!r})"

    def close(self) -> None:
        """Close pooled connections. The database can still be used afterwards (it reconnects)."""
        self.engine.dispose()

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """A connection inside a transaction, committed on success, rolled back on error; transient driver
        errors become `DatabaseUnavailable`. `write` starts SQLite transactions with BEGIN IMMEDIATE."""
        try:
            with self.engine.connect() as conn:
                if write:
                    conn.execution_options(shelfsight_write=True)
                with conn.begin():
                    yield conn
        except (PoolTimeoutError, DBAPIError) as exc:
            if isinstance(exc, PoolTimeoutError) or self.is_transient(exc):
                raise self.unavailable(exc) from exc
            raise

    def unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        """The `DatabaseUnavailable` for a transient driver error `exc` (raise it `from exc`)."""
        return DatabaseUnavailable(f"database {self.redacted_url} is unavailable ({_first_line(exc)}); retry later")

    def is_transient(self, exc: DBAPIError) -> bool:
        """True when retrying later can help (see the module docstring)."""
        if exc.connection_invalidated:
            return True
        if self.dialect == "sqlite":
            message = str(exc.orig).lower()
            return isinstance(exc, OperationalError) and any(m in message for m in SQLITE_TRANSIENT)
        # psycopg: connection failures, admin shutdown, "the database system is starting up/shutting down",
        # deadlocks and serialization failures, statement timeouts, out of disk/memory: all OperationalError.
        return isinstance(exc, OperationalError | InterfaceError)


# ---------------------------------------------------------------------- engines


def _postgres_engine(
    url: URL, connect_timeout_s: float, pool_size: int, echo: bool, statement_timeout_s: float | None
) -> Engine:
    from psycopg.types.array import ListBinaryDumper

    connect_args: dict[str, Any] = {
        "connect_timeout": max(1, math.ceil(connect_timeout_s)),
        "application_name": "shelfsight",
        # notice a server that vanished without closing the connection (network partition, VM pause)
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    if statement_timeout_s is not None:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
    engine = create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=connect_timeout_s,
        pool_pre_ping=True,  # a connection broken by a server restart is replaced, not handed out
        pool_recycle=1800,
        connect_args=connect_args,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Python lists go as binary arrays: the text format quotes and escapes every element in Python (a regex
        # search per element), which was the larger part of the writer's CPU (result_writes sends a batch as one
        # array per column); measured on 4,000 results of 7 attributes: 0.21 -> 0.12 ms of CPU per result
        dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)

    return engine


def _sqlite_engine(url: URL, pool_size: int, echo: bool, busy_timeout_s: float) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"echo": echo, "connect_args": {"timeout": busy_timeout_s, "check_same_thread": False}}
    if in_memory:
        kwargs["poolclass"] = StaticPool  # one shared connection, or every checkout sees an empty database
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (it would not BEGIN before DDL, and cannot
        # BEGIN IMMEDIATE); SQLAlchemy's "begin" event below emits BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")  # durable across application crashes in WAL mode
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("shelfsight_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__
