"""`ProductStore`: the product database as the daemon and the review loop use it, on PostgreSQL or SQLite.

What it guarantees:
- `write_results` stores a whole batch in one transaction (all of it or none of it). Each result is keyed by
  (product_id, image_digest, model_version) in `processing_log`; a key already there is a duplicate: its
  attempt count goes up and nothing else changes. A value set by an annotator (source 'human') is never
  overwritten by the model: the attribute upsert carries `WHERE product_attributes.source <> 'human'`, so the
  rule holds inside the database even against concurrent writers.
- Transient trouble (server down or restarting, connection lost, timeouts, deadlocks, SQLite busy) raises
  `DatabaseUnavailable`; the caller retries with backoff and the same `ProductStore` reconnects by itself
  (pooled connections are checked before use). Mistakes (constraint violations, a missing schema) propagate as
  SQLAlchemy errors: retrying them cannot help.
- A result with `review` set also gets its row in `review_outbox`, in the same transaction (the transactional
  outbox of the review loop; `connectors/db/review_store.py` reads and updates it).
- `migrate()` brings the schema to the newest revision; on PostgreSQL two processes may call it at once.

What it must not do: log or raise anything that contains the database password (use `redacted_url`); decide
policy (retries, what to write): that belongs to the daemon. It must not import `daemon/` or `learner/`.

SQLite (the embedded default) runs in WAL mode with a busy timeout; write transactions start with
BEGIN IMMEDIATE so two writers queue instead of failing half-way. Later writes of the same attribute replace
earlier ones (last writer wins), whatever the model version.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, create_engine, event, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import StaticPool

from connectors.db.models import ProcessingLog, Product, ProductAttribute
from connectors.db.result_writes import ATTRIBUTE_VALUE_COLUMNS, HUMAN, write_result_batch
from connectors.db.result_writes import encode_value as _encode_value
from connectors.db.types import ProcessingLogStats, ProductView, StoredAttribute, WriteStats
from connectors.records import Alternative, ProductResult

__all__ = ["MIGRATIONS_DIR", "DatabaseUnavailable", "ProductStore"]

HUMAN_VALUES_LOCK_NAMESPACE = 0x48554D4E  # "HUMN": the advisory lock that orders writers of human values

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
PRODUCTS = cast(Table, Product.__table__)
ATTRIBUTES = cast(Table, ProductAttribute.__table__)
PROCESSING_LOG = cast(Table, ProcessingLog.__table__)

# SQLite error messages that mean "try again later" (everything else from SQLite is a real error, even though
# the sqlite3 module raises OperationalError for e.g. "no such table" too).
# alembic keeps the running migration environment in module globals (`alembic.context`), so two threads must
# never migrate at once; processes are serialised by the database (see migrate()).
_MIGRATION_THREAD_LOCK = threading.Lock()

_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "database is busy", "disk i/o error")


class DatabaseUnavailable(Exception):
    """The database cannot be reached or is busy right now; retry later with backoff. The message names the
    database by its redacted URL and says what happened; `__cause__` holds the driver's error."""


class ProductStore:
    """The product database behind a SQLAlchemy engine (psycopg 3 for PostgreSQL, sqlite3 for SQLite).

    `url`: a SQLAlchemy URL; `postgresql://` is taken as `postgresql+psycopg://`. For a SQLite file, missing
    parent directories are created. `connect_timeout_s` bounds connecting and waiting for a pooled connection;
    `pool_size` connections are kept (as many again may be opened under load). `statement_timeout_s` bounds
    each PostgreSQL statement (None: no bound); `sqlite_busy_timeout_s` is how long a SQLite writer waits for
    another one. Thread-safe: share one store per process.
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
        self._url: URL = parsed
        self.dialect = parsed.get_backend_name()
        if self.dialect == "postgresql":
            self._engine = _postgres_engine(parsed, connect_timeout_s, pool_size, echo, statement_timeout_s)
        elif self.dialect == "sqlite":
            self._engine = _sqlite_engine(parsed, pool_size, echo, sqlite_busy_timeout_s)
        else:
            raise ValueError(f"unsupported database {self.redacted_url}: use postgresql+psycopg:// or sqlite://")
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert

    @property
    def redacted_url(self) -> str:
        """The URL with the password replaced by ***; the only form of the URL this class ever logs."""
        return self._url.render_as_string(hide_password=True)

    @property
    def engine(self) -> Engine:
        """The underlying engine, for tests and tooling; the daemon should not need it."""
        return self._engine

    def __repr__(self) -> str:
        return f"ProductStore({self.redacted_url!r})"

    def close(self) -> None:
        """Close pooled connections. The store can still be used afterwards (it reconnects)."""
        self._engine.dispose()

    def __enter__(self) -> ProductStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ schema

    def migrate(self) -> str:
        """Upgrade the schema to the newest revision (alembic `upgrade head`) and return that revision. Safe to
        call from several processes at once on PostgreSQL (a transaction-scoped advisory lock serialises
        them; see migrations/env.py) and on SQLite (BEGIN IMMEDIATE), and from several threads (a process-wide
        lock, as alembic is not thread-safe)."""
        from alembic import command

        config = _alembic_config()
        with _MIGRATION_THREAD_LOCK, self._transaction(write=True) as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        revision = self.current_revision()
        log.info("database %s migrated to revision %s", self.redacted_url, revision)
        return revision or ""

    def current_revision(self) -> str | None:
        """The schema revision in the database (None before the first migration)."""
        from alembic.runtime.migration import MigrationContext

        with self._transaction() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @staticmethod
    def head_revision() -> str:
        """The newest revision shipped with this code."""
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
        assert head is not None
        return head

    # ------------------------------------------------------------------ writes

    def write_results(self, results: Sequence[ProductResult]) -> WriteStats:
        """Store a batch of model results in one transaction (see the module docstring for the rules), a few
        set-based statements for the whole batch (`connectors.db.result_writes`)."""
        if not results:
            return WriteStats()
        with self._transaction(write=True) as conn:
            return write_result_batch(conn, self._insert, results, _now())

    def set_human_value(
        self,
        product_id: str,
        attribute: str,
        value: str | list[str],
        annotator: str,
        box: Sequence[float] | None = None,
        *,
        image_digest: str | None = None,
    ) -> None:
        """Record an annotator's value (confidence 1.0, source 'human'). It replaces any earlier value, model
        or human, and from then on the model never overwrites it. Creates the product row if needed."""
        if not annotator:
            raise ValueError("annotator is required for a human value")
        with self._transaction(write=True) as conn:
            now = self._human_write_time(conn)
            self._write_human_value(conn, product_id, attribute, value, annotator, box, image_digest, now)

    def _human_write_time(self, conn: Connection) -> datetime:
        """Serialise the transactions that write human values and return the time to stamp them with, read only
        once this one is next: stamps then rise in commit order. The learner's watermark is the newest human
        value a run trained on (`updated_at`), and the trigger counts values stamped after it; a value stamped
        before a concurrent one but committed after the learner read would otherwise never count as new (two
        review threads, the webhook's and the poller's, or two review workers, write at once). PostgreSQL: a
        transaction-scoped advisory lock; SQLite: its write transactions (BEGIN IMMEDIATE) already run one at
        a time."""
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:ns, 0)"), {"ns": HUMAN_VALUES_LOCK_NAMESPACE})
        return _now()

    def _write_human_value(
        self,
        conn: Connection,
        product_id: str,
        attribute: str,
        value: str | Sequence[str],
        annotator: str,
        box: Sequence[float] | None,
        image_digest: str | None,
        now: datetime,
        mask: Mapping[str, Any] | None = None,
    ) -> None:
        """`set_human_value` inside the caller's transaction (the review store applies annotations with it)."""
        encoded, is_list = _encode_value(value)
        self._upsert_product(conn, product_id, now, None, None, None, update=False)
        insert = self._insert(ATTRIBUTES).values(
            product_id=product_id,
            attribute=attribute,
            value=encoded,
            value_is_list=is_list,
            auto_filled=True,
            confidence=1.0,
            alternatives=[],
            source=HUMAN,
            model_version=None,
            box=list(box) if box is not None else None,
            mask=dict(mask) if mask is not None else None,
            image_digest=image_digest,
            annotator=annotator,
            updated_at=now,
        )
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["product_id", "attribute"],
                set_={name: insert.excluded[name] for name in ATTRIBUTE_VALUE_COLUMNS},
            )
        )

    def _upsert_product(
        self,
        conn: Connection,
        product_id: str,
        now: datetime,
        title: str | None,
        category_hint: str | None,
        event_id: str | None,
        *,
        update: bool,
    ) -> None:
        table = PRODUCTS
        insert = self._insert(table).values(
            product_id=product_id,
            title=title,
            category_hint=category_hint,
            first_seen_at=now,
            updated_at=now,
            last_event_id=event_id,
        )
        if not update:
            conn.execute(insert.on_conflict_do_nothing(index_elements=["product_id"]))
            return
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["product_id"],
                set_={
                    "title": func.coalesce(insert.excluded.title, table.c.title),
                    "category_hint": func.coalesce(insert.excluded.category_hint, table.c.category_hint),
                    "last_event_id": func.coalesce(insert.excluded.last_event_id, table.c.last_event_id),
                    "updated_at": insert.excluded.updated_at,
                },
            )
        )

    # ------------------------------------------------------------------ reads

    def is_processed(self, product_id: str, image_digest: str, model_version: str) -> bool:
        """True when this (product, image, model version) is already in the processing log."""
        t = PROCESSING_LOG
        query = (
            select(t.c.id)
            .where(t.c.product_id == product_id, t.c.image_digest == image_digest, t.c.model_version == model_version)
            .limit(1)
        )
        with self._transaction() as conn:
            return conn.execute(query).first() is not None

    def get_product(self, product_id: str) -> ProductView | None:
        """The product with its current attributes, or None when unknown."""
        p = PRODUCTS
        a = ATTRIBUTES
        with self._transaction() as conn:
            product = conn.execute(select(p).where(p.c.product_id == product_id)).mappings().first()
            if product is None:
                return None
            rows = conn.execute(select(a).where(a.c.product_id == product_id).order_by(a.c.attribute)).mappings().all()
        attributes = {row["attribute"]: _stored_attribute(row) for row in rows}
        return ProductView(
            product_id=product["product_id"],
            title=product["title"],
            category_hint=product["category_hint"],
            first_seen_at=_utc(product["first_seen_at"]),
            updated_at=_utc(product["updated_at"]),
            last_event_id=product["last_event_id"],
            attributes=attributes,
        )

    def count_products(self) -> int:
        with self._transaction() as conn:
            return int(conn.execute(select(func.count()).select_from(PRODUCTS)).scalar_one())

    def processing_log_stats(self) -> ProcessingLogStats:
        t = PROCESSING_LOG
        query = select(
            func.count(),
            func.coalesce(func.max(t.c.attempts), 0),
            func.count().filter(t.c.attempts > 1),
        ).select_from(t)
        with self._transaction() as conn:
            rows, max_attempts, repeated = conn.execute(query).one()
        return ProcessingLogStats(rows=int(rows), max_attempts=int(max_attempts), repeated_keys=int(repeated))

    def ping(self) -> bool:
        """True when the database answers a trivial query; never raises DatabaseUnavailable (for /readyz)."""
        try:
            with self._transaction() as conn:
                conn.execute(text("SELECT 1"))
        except DatabaseUnavailable as exc:
            log.debug("ping failed: %s", exc)
            return False
        return True

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """A connection inside a transaction, committed on success, rolled back on error; transient driver
        errors become DatabaseUnavailable. `write` starts SQLite transactions with BEGIN IMMEDIATE."""
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(shelfsight_write=True)
                with conn.begin():
                    yield conn
        except (PoolTimeoutError, DBAPIError) as exc:
            if isinstance(exc, PoolTimeoutError) or self._is_transient(exc):
                raise DatabaseUnavailable(
                    f"database {self.redacted_url} is unavailable ({_first_line(exc)}); retry later"
                ) from exc
            raise

    def _is_transient(self, exc: DBAPIError) -> bool:
        if exc.connection_invalidated:
            return True
        if self.dialect == "sqlite":
            message = str(exc.orig).lower()
            return isinstance(exc, OperationalError) and any(m in message for m in _SQLITE_TRANSIENT)
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


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


# ---------------------------------------------------------------------- conversions


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _stored_attribute(row: Any) -> StoredAttribute:
    value: str | list[str] = json.loads(row["value"]) if row["value_is_list"] else row["value"]
    return StoredAttribute(
        attribute=row["attribute"],
        value=value,
        confidence=float(row["confidence"]),
        alternatives=[Alternative(str(a["value"]), float(a["confidence"])) for a in row["alternatives"] or []],
        source=row["source"],
        model_version=row["model_version"],
        box=[float(v) for v in row["box"]] if row["box"] is not None else None,
        mask=dict(row["mask"]) if row["mask"] is not None else None,
        image_digest=row["image_digest"],
        annotator=row["annotator"],
        updated_at=_utc(row["updated_at"]),
        auto_filled=bool(row["auto_filled"]),
    )


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__
