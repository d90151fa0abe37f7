"""Writing product attributes: a batch of model results as a few set-based statements (`ProductStore.write_results`
calls `write_result_batch`), and one annotator's value (`write_human_value`, for `ProductStore.set_human_value` and
the review store's annotations). The product upsert, the attribute columns and the value encoding are defined here
once.

One statement per table for the whole batch, not one per result: the processing-log upsert (RETURNING each key's
attempt count: 1 means new, more means a duplicate), the product upsert, the attribute upsert (RETURNING the rows it
changed; the others were kept because an annotator set them) and the review-outbox insert. SQLAlchemy sends each as
multi-row `INSERT ... VALUES` pages ("insertmanyvalues"), so a batch costs a handful of round trips to the server
whatever its size. The effects are those of writing the results one by one in (product, digest, model version)
order: a key repeated inside the batch is a duplicate after its first occurrence (its attempt count still goes up),
a product's title, description, category hint and last event are its last non-empty ones, an attribute written
twice keeps the later value.

On PostgreSQL each statement takes its rows as one array per column (`INSERT ... SELECT unnest(...), ...`): the SQL
text is short and the same for every batch, so the driver converts it once and the server plans it as a prepared
statement. A multi-row VALUES statement (what SQLite gets) is new text for each batch, thousands of placeholders
long, that the driver re-parses every time (measured, batches of 32 results on the loaded 2-core machine: 0.66 ms
of the writer's CPU per result before, 0.48 after; the rest is mostly psycopg dumping the arrays).

Human values: `human_write_time` serialises the transactions that write them and gives the time to stamp them with;
`write_human_value` sets one (confidence 1.0, source 'human'), after which the model never overwrites it (the
batch's attribute upsert carries `WHERE source <> 'human'`).

Runs inside the caller's transaction; rows are sent in key order, so concurrent writers take row locks in the same
order. Must not open connections, retry or log: the stores (through `connectors/db/connection.py`) do that.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func, select, text
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import JSON, Text

from connectors.db.connection import InsertFactory
from connectors.db.connection import now as current_time
from connectors.db.models import ATTRIBUTES, PROCESSING_LOG, PRODUCTS, REVIEW_OUTBOX
from connectors.db.types import WriteStats
from connectors.records import AttributeValue, ProductResult, payload_from_json, payload_to_json

__all__ = [
    "ATTRIBUTE_VALUE_COLUMNS",
    "HUMAN",
    "MODEL",
    "decode_value",
    "encode_value",
    "human_write_time",
    "upsert_products",
    "write_human_value",
    "write_result_batch",
]

HUMAN = "human"
MODEL = "model"
HUMAN_VALUES_LOCK_NAMESPACE = 0x48554D4E  # "HUMN": the advisory lock that orders writers of human values
# product_attributes columns an upsert replaces (everything but the key)
ATTRIBUTE_VALUE_COLUMNS = (
    "value",
    "value_is_list",
    "auto_filled",
    "withheld_by",
    "readings",
    "confidence",
    "alternatives",
    "source",
    "model_version",
    "box",
    "mask",
    "image_digest",
    "annotator",
    "updated_at",
)

Key = tuple[str, str, str]


def _rows_insert(conn: Connection, insert: InsertFactory, table: Table, rows: list[dict[str, Any]]) -> tuple[Any, Any]:
    """An INSERT of `rows` (dicts with the same keys) and the parameters to execute it with: on PostgreSQL one
    statement with a column array each (see the module docstring), elsewhere a multi-row insert."""
    if conn.dialect.name != "postgresql":
        return insert(table), rows
    columns = list(rows[0])
    return insert(table).from_select(columns, select(*(_column_array(table, c, rows) for c in columns))), None


def _column_array(table: Table, column: str, rows: list[dict[str, Any]]) -> Any:
    """One column's values as a set-returning expression over a single parameter: `unnest` of a PostgreSQL array,
    or for JSON columns `jsonb_array_elements` of one JSON document holding every row's value (None becomes JSON
    null, as the JSON type stores it). An array parameter would take lists as dimensions, and an array of JSON
    texts costs the driver a regex escape per quote character (measured: the alternatives column alone was about
    a third of the writer's CPU); one document is one `json.dumps` and no escaping."""
    kind = table.c[column].type
    if isinstance(kind, JSON):
        document = bindparam(f"col_{column}", json.dumps([r[column] for r in rows]), type_=Text())
        return func.jsonb_array_elements(sql_cast(document, JSONB()))
    return func.unnest(bindparam(f"col_{column}", [r[column] for r in rows], type_=ARRAY(kind)))


def result_key(result: ProductResult) -> Key:
    return (result.product_id, result.image_digest, result.model_version)


def write_result_batch(
    conn: Connection, insert: InsertFactory, results: Sequence[ProductResult], now: datetime
) -> WriteStats:
    """Store `results` in `conn`'s transaction; see the module docstring."""
    ordered = sorted(results, key=result_key)
    fresh = _log_results(conn, insert, ordered, now)
    if fresh:
        _upsert_products(conn, insert, fresh, now)
    kept = _upsert_attributes(conn, insert, fresh, now) if fresh else 0
    reviews = [r for r in fresh if r.review is not None]
    if reviews:
        _insert_review_outbox(conn, insert, reviews, now)
    return WriteStats(written=len(fresh), duplicates=len(ordered) - len(fresh), human_values_kept=kept)


def _log_results(conn: Connection, insert: InsertFactory, ordered: list[ProductResult], now: datetime) -> list[Any]:
    """Upsert the batch's keys into the processing log; the results seen for the first time, in key order."""
    t = PROCESSING_LOG
    first: dict[Key, ProductResult] = {}
    repeats: list[Key] = []
    for r in ordered:
        key = result_key(r)
        if key in first:
            repeats.append(key)  # one statement cannot upsert a row twice: counted below
        else:
            first[key] = r
    rows = [
        {
            "product_id": r.product_id,
            "image_digest": r.image_digest,
            "model_version": r.model_version,
            "image_url": r.image_url,
            "event_id": r.event_id,
            "source": r.source,
            "first_processed_at": now,
            "last_seen_at": now,
            "attempts": 1,
        }
        for r in first.values()
    ]
    stmt, params = _rows_insert(conn, insert, t, rows)
    upsert = stmt.on_conflict_do_update(
        index_elements=["product_id", "image_digest", "model_version"],
        set_={"attempts": t.c.attempts + 1, "last_seen_at": stmt.excluded.last_seen_at},
    ).returning(t.c.product_id, t.c.image_digest, t.c.model_version, t.c.attempts)
    new = {(p, d, m) for p, d, m, attempts in conn.execute(upsert, params) if attempts == 1}
    for key in repeats:  # rare: the same event delivered twice inside one batch
        product_id, digest, version = key
        conn.execute(
            t.update()
            .where(t.c.product_id == product_id, t.c.image_digest == digest, t.c.model_version == version)
            .values(attempts=t.c.attempts + 1, last_seen_at=now)
        )
    return [r for key, r in first.items() if key in new]


def _upsert_products(conn: Connection, insert: InsertFactory, fresh: list[ProductResult], now: datetime) -> None:
    merged: dict[str, dict[str, Any]] = {}
    for r in fresh:  # a product with several new images in the batch: its last non-empty values
        row = merged.setdefault(r.product_id, product_row(r.product_id, now))
        for column, value in (
            ("title", r.title),
            ("description", r.description),
            ("category_hint", r.category_hint),
            ("last_event_id", r.event_id),
        ):
            if value:
                row[column] = value
    upsert_products(conn, insert, [merged[p] for p in sorted(merged)])


def product_row(
    product_id: str,
    now: datetime,
    title: str | None = None,
    category_hint: str | None = None,
    event_id: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """A `products` row first seen (and updated) at `now`, for `upsert_products`."""
    return {
        "product_id": product_id,
        "title": title,
        "description": description,
        "category_hint": category_hint,
        "last_event_id": event_id,
        "first_seen_at": now,
        "updated_at": now,
    }


def upsert_products(
    conn: Connection, insert: InsertFactory, rows: list[dict[str, Any]], *, keep_existing: bool = False
) -> None:
    """The one product upsert: insert `rows` (`product_row`s, in product order); a product already there gets the
    rows' non-empty title, description, category hint and last event and their `updated_at`, or, with
    `keep_existing`, is left as it is."""
    t = PRODUCTS
    stmt, params = _rows_insert(conn, insert, t, rows)
    if keep_existing:
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["product_id"]), params)
        return
    upsert = stmt.on_conflict_do_update(
        index_elements=["product_id"],
        set_={
            "title": func.coalesce(stmt.excluded.title, t.c.title),
            "description": func.coalesce(stmt.excluded.description, t.c.description),
            "category_hint": func.coalesce(stmt.excluded.category_hint, t.c.category_hint),
            "last_event_id": func.coalesce(stmt.excluded.last_event_id, t.c.last_event_id),
            "updated_at": stmt.excluded.updated_at,
        },
    )
    conn.execute(upsert, params)


def _upsert_attributes(conn: Connection, insert: InsertFactory, fresh: list[ProductResult], now: datetime) -> int:
    """Upsert every attribute of the new results (never over an annotator's value); how many were kept."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    written: dict[tuple[str, str], int] = {}  # how many writes each row stands for (later ones replace earlier)
    for r in fresh:
        for a in r.attributes:
            key = (r.product_id, a.attribute)
            rows[key] = attribute_row(r, a, now)
        for name in {a.attribute for a in r.attributes}:
            written[(r.product_id, name)] = written.get((r.product_id, name), 0) + 1
    if not rows:
        return 0
    t = ATTRIBUTES
    stmt, params = _rows_insert(conn, insert, t, [rows[k] for k in sorted(rows)])
    upsert = stmt.on_conflict_do_update(
        index_elements=["product_id", "attribute"],
        set_={name: stmt.excluded[name] for name in ATTRIBUTE_VALUE_COLUMNS},
        where=t.c.source != HUMAN,
    ).returning(t.c.product_id, t.c.attribute)
    changed = {(p, a) for p, a in conn.execute(upsert, params)}
    return sum(n for key, n in written.items() if key not in changed)


def attribute_row(result: ProductResult, attr: AttributeValue, now: datetime) -> dict[str, Any]:
    encoded, is_list = encode_value(attr.value)
    return {
        "product_id": result.product_id,
        "attribute": attr.attribute,
        "value": encoded,
        "value_is_list": is_list,
        "auto_filled": bool(attr.auto_filled),
        "withheld_by": attr.withheld_by,
        "readings": dict(attr.readings) if attr.readings is not None else None,
        "confidence": float(attr.confidence),
        "alternatives": [{"value": alt.value, "confidence": float(alt.confidence)} for alt in attr.alternatives],
        "source": MODEL,
        "model_version": result.model_version,
        "box": [float(v) for v in attr.box] if attr.box is not None else None,
        "mask": dict(attr.mask) if attr.mask is not None else None,
        "image_digest": result.image_digest,
        "annotator": None,
        "updated_at": now,
    }


def encode_value(value: str | Sequence[str]) -> tuple[str, bool]:
    """A value as stored in a text column: the label, or a JSON array of labels; and whether it is a list."""
    if isinstance(value, str):
        return value, False
    return json.dumps(list(value), ensure_ascii=False), True


def decode_value(value: str, is_list: bool) -> str | list[str]:
    """The inverse of `encode_value`."""
    decoded: str | list[str] = json.loads(value) if is_list else value
    return decoded


def human_write_time(conn: Connection) -> datetime:
    """Serialise the transactions that write human values and return the time to stamp them with, read only once
    this one is next: stamps then rise in commit order. The learner's watermark is the newest human value a run
    trained on (`updated_at`), and the trigger counts values stamped after it; a value stamped before a concurrent
    one but committed after the learner read would otherwise never count as new (two review threads, the webhook's
    and the poller's, or two review workers, write at once). PostgreSQL: a transaction-scoped advisory lock; SQLite:
    its write transactions (BEGIN IMMEDIATE) already run one at a time."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:ns, 0)"), {"ns": HUMAN_VALUES_LOCK_NAMESPACE})
    return current_time()


def write_human_value(
    conn: Connection,
    insert: InsertFactory,
    product_id: str,
    attribute: str,
    value: str | Sequence[str],
    annotator: str,
    box: Sequence[float] | None,
    image_digest: str | None,
    now: datetime,
    mask: Mapping[str, Any] | None = None,
) -> None:
    """Set an annotator's value (confidence 1.0, source 'human') in the caller's transaction, replacing any earlier
    value, model or human; creates the product row if needed. Stamp it with `human_write_time`."""
    encoded, is_list = encode_value(value)
    upsert_products(conn, insert, [product_row(product_id, now)], keep_existing=True)
    row = insert(ATTRIBUTES).values(
        product_id=product_id,
        attribute=attribute,
        value=encoded,
        value_is_list=is_list,
        auto_filled=True,
        withheld_by=None,
        readings=None,
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
        row.on_conflict_do_update(
            index_elements=["product_id", "attribute"],
            set_={name: row.excluded[name] for name in ATTRIBUTE_VALUE_COLUMNS},
        )
    )


def _insert_review_outbox(conn: Connection, insert: InsertFactory, reviews: list[ProductResult], now: datetime) -> None:
    """The transactional outbox: products chosen for review are stored with their results, or not at all. One row per
    (product, image digest, model version): a second routing of the same key adds nothing."""
    rows = []
    for r in reviews:
        stored = payload_to_json(r.review) if r.review is not None else {}
        review = payload_from_json(stored)  # the columns; a partial payload gets the defaults
        rows.append(
            {
                "product_id": r.product_id,
                "image_digest": r.image_digest,
                "model_version": r.model_version,
                "image_url": r.image_url,
                "reason": review["reason"],
                "priority": review["priority"],
                "payload": stored,
                "status": "pending",
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
                "next_attempt_at": now,
            }
        )
    stmt = insert(REVIEW_OUTBOX).on_conflict_do_nothing(index_elements=["product_id", "image_digest", "model_version"])
    conn.execute(stmt, rows)
