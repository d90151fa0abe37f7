"""`ProductStore`: the product database as the daemon and the review loop use it, on PostgreSQL or SQLite.

What it guarantees:
- `write_results` stores a whole batch in one transaction (all of it or none of it). Each result is keyed by
  (product_id, image_digest, model_version) in `processing_log`; a key already there is a duplicate: its
  attempt count goes up and nothing else changes. A value set by an annotator (source 'human') is never
  overwritten by the model: the attribute upsert carries `WHERE product_attributes.source <> 'human'`, so the
  rule holds inside the database even against concurrent writers.
- Transient trouble (server down or restarting, connection lost, timeouts, deadlocks, SQLite busy) raises
  `DatabaseUnavailable`; the caller retries with backoff and the same `ProductStore` reconnects by itself. The
  engine, its transactions and that error mapping are `ProductStore.database` (`connectors/db/connection.py`), which
  the sibling stores (review, corrections, report) share.
- A result with `review` set also gets its row in `review_outbox`, in the same transaction (the transactional
  outbox of the review loop; `connectors/db/review_store.py` reads and updates it).
- `migrate()` brings the schema to the newest revision; on PostgreSQL two processes may call it at once.

What it must not do: log or raise anything that contains the database password (use `redacted_url`); decide
policy (retries, what to write): that belongs to the daemon. It must not import `daemon/` or `learner/`.

Later writes of the same attribute replace earlier ones (last writer wins), whatever the model version.
`product_view` is the one builder of a `ProductView` from rows (`report_view.py` uses it too).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, RowMapping, func, select, text

from connectors.db.connection import Database, DatabaseUnavailable, as_utc, now
from connectors.db.models import ATTRIBUTES, PROCESSING_LOG, PRODUCTS
from connectors.db.result_writes import decode_value, human_write_time, write_human_value, write_result_batch
from connectors.db.types import ProcessingLogStats, ProductView, StoredAttribute, WriteStats
from connectors.records import Alternative, ProductResult

__all__ = ["MIGRATIONS_DIR", "ProductStore", "product_view", "stored_attribute"]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# alembic keeps the running migration environment in module globals (`alembic.context`), so two threads must
# never migrate at once; processes are serialised by the database (see migrate()).
_MIGRATION_THREAD_LOCK = threading.Lock()


class ProductStore:
    """The product database's products, attributes and processing log, and its schema; the keyword arguments
    configure the shared `Database` (`connectors/db/connection.py`: URL forms, timeouts, pool). Thread-safe: share
    one store per process."""

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
        self.database = Database(
            url,
            connect_timeout_s=connect_timeout_s,
            pool_size=pool_size,
            echo=echo,
            statement_timeout_s=statement_timeout_s,
            sqlite_busy_timeout_s=sqlite_busy_timeout_s,
        )
        self.dialect = self.database.dialect

    @property
    def redacted_url(self) -> str:
        """The URL with the password replaced by ***; the only form of the URL this class ever logs."""
        return self.database.redacted_url

    @property
    def engine(self) -> Engine:
        """The underlying engine, for tests and tooling; the daemon should not need it."""
        return self.database.engine

    def __repr__(self) -> str:
        return f"ProductStore({self.redacted_url!r})"

    def close(self) -> None:
        """Close pooled connections. The store can still be used afterwards (it reconnects)."""
        self.database.close()

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
        with _MIGRATION_THREAD_LOCK, self.database.transaction(write=True) as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        revision = self.current_revision()
        log.info("database %s migrated to revision %s", self.redacted_url, revision)
        return revision or ""

    def current_revision(self) -> str | None:
        """The schema revision in the database (None before the first migration)."""
        from alembic.runtime.migration import MigrationContext

        with self.database.transaction() as conn:
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
        with self.database.transaction(write=True) as conn:
            return write_result_batch(conn, self.database.insert, results, now())

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
        with self.database.transaction(write=True) as conn:
            stamp = human_write_time(conn)
            write_human_value(
                conn, self.database.insert, product_id, attribute, value, annotator, box, image_digest, stamp
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
        with self.database.transaction() as conn:
            return conn.execute(query).first() is not None

    def get_product(self, product_id: str) -> ProductView | None:
        """The product with its current attributes, or None when unknown."""
        p = PRODUCTS
        a = ATTRIBUTES
        with self.database.transaction() as conn:
            product = conn.execute(select(p).where(p.c.product_id == product_id)).mappings().first()
            if product is None:
                return None
            rows = conn.execute(select(a).where(a.c.product_id == product_id).order_by(a.c.attribute)).mappings().all()
        return product_view(product, rows)

    def count_products(self) -> int:
        with self.database.transaction() as conn:
            return int(conn.execute(select(func.count()).select_from(PRODUCTS)).scalar_one())

    def processing_log_stats(self) -> ProcessingLogStats:
        t = PROCESSING_LOG
        query = select(
            func.count(),
            func.coalesce(func.max(t.c.attempts), 0),
            func.count().filter(t.c.attempts > 1),
        ).select_from(t)
        with self.database.transaction() as conn:
            rows, max_attempts, repeated = conn.execute(query).one()
        return ProcessingLogStats(rows=int(rows), max_attempts=int(max_attempts), repeated_keys=int(repeated))

    def ping(self) -> bool:
        """True when the database answers a trivial query; never raises DatabaseUnavailable (for /readyz)."""
        try:
            with self.database.transaction() as conn:
                conn.execute(text("SELECT 1"))
        except DatabaseUnavailable as exc:
            log.debug("ping failed: %s", exc)
            return False
        return True


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


# ---------------------------------------------------------------------- rows to records


def product_view(product: RowMapping, attribute_rows: Sequence[RowMapping]) -> ProductView:
    """A `products` row with its `product_attributes` rows as a `ProductView` (the one builder of it)."""
    return ProductView(
        product_id=product["product_id"],
        title=product["title"],
        category_hint=product["category_hint"],
        first_seen_at=as_utc(product["first_seen_at"]),
        updated_at=as_utc(product["updated_at"]),
        last_event_id=product["last_event_id"],
        attributes={row["attribute"]: stored_attribute(row) for row in attribute_rows},
        description=product["description"],
    )


def stored_attribute(row: RowMapping) -> StoredAttribute:
    """A `product_attributes` row as a `StoredAttribute`."""
    return StoredAttribute(
        attribute=row["attribute"],
        value=decode_value(row["value"], row["value_is_list"]),
        confidence=float(row["confidence"]),
        alternatives=[Alternative(str(a["value"]), float(a["confidence"])) for a in row["alternatives"] or []],
        source=row["source"],
        model_version=row["model_version"],
        box=[float(v) for v in row["box"]] if row["box"] is not None else None,
        mask=dict(row["mask"]) if row["mask"] is not None else None,
        image_digest=row["image_digest"],
        annotator=row["annotator"],
        updated_at=as_utc(row["updated_at"]),
        auto_filled=bool(row["auto_filled"]),
        withheld_by=row["withheld_by"],
        readings=dict(row["readings"]) if row["readings"] is not None else None,
    )
