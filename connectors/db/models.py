"""SQLAlchemy 2 declarative models of the product database: products, their current attributes, the
processing log that makes writes idempotent, and the review loop's outbox and annotations.

The migrations in `connectors/db/migrations/versions/` are the source of truth for the schema that exists in a
database; these models must describe the same thing (a test compares them). This module defines tables only:
no engines, no sessions, no queries (those live in the store modules), and it must not import `daemon/` or `learner/`.

Encoding notes, for anyone reading the tables directly:
- `product_attributes.value` is text. For a multi-label group it is a JSON array of labels encoded as text
  (e.g. '["floral","striped"]') and `value_is_list` is true; otherwise it is the label itself.
- `auto_filled` is false for a model value kept only as a suggestion: it did not reach its group's auto-fill
  threshold (a calibrated bundle's), so it is not the product's value yet; true for every other row.
- `alternatives` is JSON: the model's top-k as [{"value": str, "confidence": float}, ...] ([] for humans).
- `box` is JSON [x1, y1, x2, y2] in pixels of the original image, or null.
- `readings` is JSON, for a single-choice model value of the product decision (learner/inference/
  product_decision.py): what it was decided from and the title's and the photos' own readings, {"decided_from":
  "photos" | "title" | "photos+title", "title": {"value": str, "confidence": float} | null, "photos": the same |
  null}; null for annotators' values, multi-label and detector values, and rows written before it existed.
- `mask` is JSON, the instance mask of a detector value as COCO RLE {"size": [h, w], "counts": "<compressed RLE>"}
  in pixels of the original image (pycocotools decodes it), or null.
- JSON columns are JSONB on PostgreSQL and JSON text on SQLite.
- Timestamps are timezone-aware UTC on PostgreSQL; SQLite stores them without a zone, and the store reads
  them back as UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    Unicode,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JsonType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY
BigIntId = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Product(Base):
    __tablename__ = "products"

    product_id: Mapped[str] = mapped_column(Text, primary_key=True)
    title: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    category_hint: Mapped[str | None] = mapped_column(Text)
    first_seen_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    last_event_id: Mapped[str | None] = mapped_column(Text)


class ProductAttribute(Base):
    """The current value of one attribute of one product; (product_id, attribute) is the primary key, so there
    is exactly one row per pair. A row with source 'human' is never overwritten by the model."""

    __tablename__ = "product_attributes"
    __table_args__ = (
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence_range"),
        CheckConstraint("source IN ('model', 'human')", name="source_kind"),
        CheckConstraint(
            "(source = 'model' AND model_version IS NOT NULL AND annotator IS NULL)"
            " OR (source = 'human' AND annotator IS NOT NULL)",
            name="provenance",
        ),
    )

    product_id: Mapped[str] = mapped_column(
        Text, ForeignKey("products.product_id", ondelete="CASCADE"), primary_key=True
    )
    attribute: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    value_is_list: Mapped[bool] = mapped_column(nullable=False, server_default=false())
    auto_filled: Mapped[bool] = mapped_column(nullable=False, server_default=true())
    withheld_by: Mapped[str | None] = mapped_column(Text)
    readings: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    confidence: Mapped[float] = mapped_column(Float, nullable=False)
    alternatives: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, nullable=False)
    source: Mapped[str] = mapped_column(String(8), nullable=False)
    model_version: Mapped[str | None] = mapped_column(Text)
    box: Mapped[list[float] | None] = mapped_column(JsonType)
    mask: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    image_digest: Mapped[str | None] = mapped_column(Text)
    annotator: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)


class ProcessingLog(Base):
    """One row per (product_id, image_digest, model_version) ever written; `attempts` counts how many times
    that key was written, so attempts > 1 means the same result was processed more than once (a redelivered
    event, a replay after a crash)."""

    __tablename__ = "processing_log"
    __table_args__ = (
        UniqueConstraint("product_id", "image_digest", "model_version"),
        CheckConstraint("attempts >= 1", name="attempts_positive"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    product_id: Mapped[str] = mapped_column(Text, nullable=False)
    image_digest: Mapped[str] = mapped_column(Text, nullable=False)
    model_version: Mapped[str] = mapped_column(Text, nullable=False)
    image_url: Mapped[str] = mapped_column(Text, nullable=False)
    event_id: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    first_processed_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")


# ---------------------------------------------------------------------- learner (retraining)


class LearnerRun(Base):
    """One retraining run of the learner, from start to its outcome. `status` is 'running' while it trains, then
    'promoted', 'rejected', 'failed', 'skipped' (nothing to learn from), or 'abandoned' (found still 'running' by
    the next run: the process died). `corrections_until` is the newest human correction the run trained on: the
    trigger counts corrections after the last promoted or rejected run's. `detail` holds the gate's figures."""

    __tablename__ = "learner_runs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('running', 'promoted', 'rejected', 'failed', 'skipped', 'abandoned')", name="status_kind"
        ),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)  # schedule | corrections | manual
    holder: Mapped[str] = mapped_column(Text, nullable=False)  # host:pid of the learner process
    champion_version: Mapped[str | None] = mapped_column(Text)
    challenger_version: Mapped[str | None] = mapped_column(Text)
    corrections_used: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    corrections_until: Mapped[datetime | None] = mapped_column(Timestamp)
    detail: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False)


class LearnerLock(Base):
    """Named leases for databases without advisory locks (SQLite): a lock is held while `expires_at` is in the
    future and its holder renews it. PostgreSQL uses session advisory locks instead and leaves this empty."""

    __tablename__ = "learner_locks"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    holder: Mapped[str] = mapped_column(Text, nullable=False)
    acquired_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)


class LearnerJob(Base):
    """APScheduler 3's job table (`SQLAlchemyJobStore(tablename="learner_jobs")`), created by the migrations so
    the schema is ours: the job store finds it and does not create anything. Columns as APScheduler defines them."""

    __tablename__ = "learner_jobs"

    id: Mapped[str] = mapped_column(Unicode(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), index=True)
    job_state: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


# ---------------------------------------------------------------------- review loop (migration 0002)

REVIEW_OUTBOX_STATUSES = ("pending", "sent", "failed")
REVIEW_ANNOTATION_STATES = ("active", "deleted", "superseded")


class ReviewOutbox(Base):
    """A product chosen for human review, written in the same transaction as its model results (transactional
    outbox), then sent to Label Studio by the review worker. (product_id, image_digest, model_version) is unique:
    one task per product, image and model version, however often the event is redelivered.

    `status`: 'pending' (not in Label Studio yet; `next_attempt_at` says when to try again), 'sent' (`task_id` is
    the Label Studio task), 'failed' (Label Studio refused it for good; `last_error` says why). `payload` is JSON:
    what the task needs (image URL, title, the model's prediction as Label Studio result JSON, model values).
    `priority` is the routing policy's uncertainty: higher is sent first.
    """

    __tablename__ = "review_outbox"
    __table_args__ = (
        UniqueConstraint("product_id", "image_digest", "model_version"),
        CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status_kind"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("ix_review_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    product_id: Mapped[str] = mapped_column(Text, nullable=False)
    image_digest: Mapped[str] = mapped_column(Text, nullable=False)
    model_version: Mapped[str] = mapped_column(Text, nullable=False)
    image_url: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    priority: Mapped[float] = mapped_column(Float, nullable=False, server_default="0")
    payload: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False)
    status: Mapped[str] = mapped_column(String(8), nullable=False, server_default="pending")
    task_id: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    sent_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # the worker sending the row right now (its identity and the start time of that process): set by a claim,
    # cleared when the attempt ends; a claim whose owner restarted or stopped heartbeating is taken over at once
    claimed_by: Mapped[str | None] = mapped_column(Text)
    claimed_by_started_at: Mapped[datetime | None] = mapped_column(Timestamp)


class ReviewAnnotation(Base):
    """What an annotator said about one attribute of one product, one row per (annotation, attribute, revision).

    `revision` is a digest of the annotation's content, so the same annotation delivered twice (webhook and poll,
    or a webhook retried) adds nothing; an edit adds new rows and marks the earlier ones 'superseded'; a deleted
    annotation's rows become 'deleted'. `outcome` says what was done with the value: 'applied' (written to
    product_attributes as a human value), 'skipped' (the annotator skipped the task; `attribute` is '*'),
    'unknown_label' / 'unknown_group' (not in the taxonomy: kept here, never applied), 'not_answered' (the
    annotation left a group the model had predicted empty). `value` is encoded like product_attributes.value;
    `box` is JSON [{"label": str, "box": [x1, y1, x2, y2]}, ...] in pixels of the original image, or null.
    `model_value` is what the model had predicted, as JSON text ('"Shirt"', '["person"]'), and `model_was_right`
    whether the annotator agreed with it (null when the model had no value or the outcome is not 'applied').
    `model_fill` says what the model had done with that value (from the outbox payload, migration 0007): 'auto'
    (auto-filled), 'suspended' (its threshold would have auto-filled it, but the group's auto-fill was suspended),
    'suggestion' (kept as a suggestion for any other reason), null (no model value, or a payload written before
    the payload said). Answers on 'auto' and 'suspended' values measure the audited precision of auto-filled values.
    """

    __tablename__ = "review_annotations"
    __table_args__ = (
        UniqueConstraint("annotation_id", "attribute", "revision"),
        CheckConstraint("state IN ('active', 'deleted', 'superseded')", name="state_kind"),
        Index("ix_review_annotations_product_id_attribute", "product_id", "attribute"),
        Index("ix_review_annotations_task_id", "task_id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    annotation_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    outbox_id: Mapped[int | None] = mapped_column(BigInteger)
    product_id: Mapped[str] = mapped_column(Text, nullable=False)
    attribute: Mapped[str] = mapped_column(Text, nullable=False)
    value: Mapped[str | None] = mapped_column(Text)
    value_is_list: Mapped[bool] = mapped_column(nullable=False, server_default=false())
    box: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonType)
    annotator: Mapped[str] = mapped_column(Text, nullable=False)
    annotation_created_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    annotation_updated_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    lead_time_s: Mapped[float | None] = mapped_column(Float)
    model_value: Mapped[str | None] = mapped_column(Text)
    model_was_right: Mapped[bool | None] = mapped_column()
    model_fill: Mapped[str | None] = mapped_column(String(12))
    state: Mapped[str] = mapped_column(String(12), nullable=False, server_default="active")
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    revision: Mapped[str] = mapped_column(Text, nullable=False)
    recorded_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)


class ReviewSyncState(Base):
    """Small key/value state of the review worker (e.g. the polling watermark per Label Studio project)."""

    __tablename__ = "review_sync_state"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)


class ReviewWorker(Base):
    """One review worker identity (`review.worker_id`, default the host name: the pod name in Kubernetes) and its
    current incarnation: the process started at `started_at`, alive while `heartbeat_at` keeps moving."""

    __tablename__ = "review_workers"

    worker_id: Mapped[str] = mapped_column(Text, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    heartbeat_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    host: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)


class ReviewTaskSync(Base):
    """The Label Studio `updated_at` of a task when the review worker last read it whole and recorded all its
    annotations: the periodic reconcile re-reads only tasks Label Studio lists as changed since."""

    __tablename__ = "review_task_sync"

    task_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    label_studio_updated_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    synced_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)


# ---------------------------------------------------------------------- auto-fill suspensions (migration 0007)


class AutofillSuspension(Base):
    """A group's auto-fill suspended for one model version, because the audited precision of its auto-filled values
    was significantly below target (the Wilson interval's upper bound under it). While `resumed_at` is null, every
    enrichment daemon serving `model_version` stores the group's values as suggestions (withheld_by 'suspended');
    `resumed_at`/`resumed_by` say who ended it (an operator's `shelfsight models resume`, or the promotion of another
    champion). `figures`: what the decision saw (audited answers, right, precision, interval, target). At most one
    open suspension per (attribute, model_version): a partial unique index."""

    __tablename__ = "autofill_suspensions"
    __table_args__ = (
        Index(
            "ix_autofill_suspensions_open",
            "attribute",
            "model_version",
            unique=True,
            postgresql_where=text("resumed_at IS NULL"),
            sqlite_where=text("resumed_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    attribute: Mapped[str] = mapped_column(Text, nullable=False)
    model_version: Mapped[str] = mapped_column(Text, nullable=False)
    suspended_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    suspended_by: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    figures: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False)
    resumed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    resumed_by: Mapped[str | None] = mapped_column(Text)


# The tables as SQLAlchemy Core `Table`s, for the store modules' queries (defined once, here).
PRODUCTS = cast(Table, Product.__table__)
ATTRIBUTES = cast(Table, ProductAttribute.__table__)
PROCESSING_LOG = cast(Table, ProcessingLog.__table__)
LEARNER_RUNS = cast(Table, LearnerRun.__table__)
LEARNER_LOCKS = cast(Table, LearnerLock.__table__)
REVIEW_OUTBOX = cast(Table, ReviewOutbox.__table__)
REVIEW_ANNOTATIONS = cast(Table, ReviewAnnotation.__table__)
REVIEW_SYNC_STATE = cast(Table, ReviewSyncState.__table__)
REVIEW_WORKERS = cast(Table, ReviewWorker.__table__)
REVIEW_TASK_SYNC = cast(Table, ReviewTaskSync.__table__)
AUTOFILL_SUSPENSIONS = cast(Table, AutofillSuspension.__table__)
