"""`ReviewStore`: the review loop's tables (review_outbox, review_workers, review_annotations, review_sync_state,
review_task_sync) as the review worker uses them, on the same database and engine as `ProductStore`.

What it guarantees:
- Outbox and claims: see review_outbox.py (`OutboxQueue`, which `ReviewStore` extends).
- Annotations: `record_annotation` is idempotent and atomic. The same annotation content (same `revision`)
  recorded twice changes nothing the second time; an edit supersedes the earlier rows; content older than the
  active revision (a listing read before an edit the webhook already brought) is ignored; a deleted annotation's
  rows become 'deleted' and a late delivery of it is ignored. After each change, every attribute it touched is
  resolved again in the same transaction: the most recently updated active annotation that answered it sets
  the product's human value; when none is left, the model's value from the outbox payload comes back.
- Reconcile marks: `mark_task_synced` keeps, per Label Studio task, the newest `updated_at` at which the worker read
  the whole task and recorded it; `task_sync_marks` and `active_annotation_counts` are what the periodic reconcile
  compares Label Studio's listing with.

What it must not do: decide policy (what to route, when to retry), talk to Label Studio, or import `learner/` or
`daemon/`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Connection, case, delete, func, select, text, update

from connectors.db.connection import as_utc
from connectors.db.connection import now as current_time
from connectors.db.models import ATTRIBUTES, REVIEW_ANNOTATIONS, REVIEW_OUTBOX, REVIEW_SYNC_STATE, REVIEW_TASK_SYNC
from connectors.db.result_writes import decode_value, encode_value, human_write_time, write_human_value
from connectors.db.review_outbox import ClaimOwner, OutboxItem, OutboxQueue
from connectors.db.store import ProductStore
from connectors.records import payload_from_json

__all__ = [
    "AnnotationRecord",
    "AnnotationValue",
    "ClaimOwner",
    "OutboxItem",
    "RecordResult",
    "ReviewStats",
    "ReviewStore",
]

APPLIED = "applied"
REVIEW_LOCK_NAMESPACE = 0x52455649  # "REVI": first key of the review loop's per-product advisory locks
SKIPPED = "skipped"


@dataclass(frozen=True)
class AnnotationValue:
    """One attribute of one annotation, already parsed (see learner/review/tasks.py: `parse_annotation`)."""

    attribute: str
    outcome: str  # applied | skipped | unknown_label | unknown_group | not_answered | invalid
    value: str | list[str] | None = None
    boxes: list[dict[str, Any]] | None = None
    model_value: str | list[str] | None = None
    model_was_right: bool | None = None
    # what the model had done with its value: 'auto', 'suspended', 'suggestion' (review_annotations.model_fill)
    model_fill: str | None = None


@dataclass(frozen=True)
class AnnotationRecord:
    """One Label Studio annotation, as the review worker records it."""

    task_id: int
    annotation_id: int
    product_id: str
    annotator: str
    created_at: datetime
    updated_at: datetime
    revision: str
    values: Sequence[AnnotationValue]
    outbox_id: int | None = None
    image_digest: str | None = None
    lead_time_s: float | None = None


@dataclass(frozen=True)
class RecordResult:
    """`status`: 'recorded' (new content), 'unchanged' (this content was already recorded), 'ignored_stale' (older
    than the content recorded: a listing read before an edit) or 'ignored_deleted' (the annotation was deleted
    before; a late delivery). `changed_attributes`: product attributes whose value
    was set or restored. `first_for_task`: this was the task's first annotation or skip (it completed the task)."""

    status: Literal["recorded", "unchanged", "ignored_stale", "ignored_deleted"]
    changed_attributes: list[str] = field(default_factory=list)
    first_for_task: bool = False


@dataclass(frozen=True)
class ReviewStats:
    """`pending`/`sent`/`failed`: outbox rows by status. `completed`: sent tasks with at least one active
    annotation or skip; `backlog`: sent tasks without. `agreement`: per attribute group, (values where the model
    was right, values judged) over active applied annotations."""

    pending: int
    sent: int
    failed: int
    completed: int
    backlog: int
    annotations: int
    skipped: int
    agreement: dict[str, tuple[int, int]]

    def agreement_ratio(self, group: str) -> float | None:
        right, judged = self.agreement.get(group, (0, 0))
        return right / judged if judged else None


class ReviewStore(OutboxQueue):
    """The review tables of `store`'s database. Thread-safe like `ProductStore` (share one per process). The
    outbox and the worker registry: `OutboxQueue` (review_outbox.py)."""

    def __init__(self, store: ProductStore) -> None:
        self.store = store
        self.database = store.database

    # ------------------------------------------------------------------ annotations

    def record_annotation(self, record: AnnotationRecord, now: datetime | None = None) -> RecordResult:
        """Record one annotation (idempotent; see the module docstring) and update the product's attributes.
        `now` (default: the time this transaction's turn comes, see `result_writes.human_write_time`) stamps it."""
        a = REVIEW_ANNOTATIONS
        with self.database.transaction(write=True) as conn:
            now = now or human_write_time(conn)
            self._lock_products(conn, [record.product_id])
            columns = (a.c.id, a.c.state, a.c.revision, a.c.attribute, a.c.outcome, a.c.value, a.c.annotator)
            existing = conn.execute(
                select(*columns, a.c.annotation_updated_at).where(a.c.annotation_id == record.annotation_id)
            ).all()
            if any(row.state == "deleted" for row in existing):
                return RecordResult("ignored_deleted")
            if any(row.state == "active" and row.revision == record.revision for row in existing):
                return RecordResult("unchanged")
            if any(row.state == "active" and as_utc(row.annotation_updated_at) > record.updated_at for row in existing):
                return RecordResult("ignored_stale")
            first = (
                conn.execute(select(a.c.id).where(a.c.task_id == record.task_id, a.c.state != "superseded").limit(1))
                .scalars()
                .first()
                is None
            )
            previous = [row for row in existing if row.state == "active"]
            touched = {row.attribute for row in previous if row.outcome == APPLIED}
            if previous:
                conn.execute(update(a).where(a.c.id.in_([row.id for row in previous])).values(state="superseded"))
            earlier_same = [row.id for row in existing if row.revision == record.revision]
            if earlier_same:  # an edit undone: the rows of that content come back
                conn.execute(update(a).where(a.c.id.in_(earlier_same)).values(state="active"))
                touched |= {row.attribute for row in existing if row.id in earlier_same and row.outcome == APPLIED}
            else:
                rows = [_annotation_row(record, value, now) for value in record.values]
                if rows:
                    conn.execute(self.database.insert(a), rows)
                touched |= {v.attribute for v in record.values if v.outcome == APPLIED}
            withdrawn = {row.attribute: row for row in previous if row.outcome == APPLIED}
            changed = [
                attr
                for attr in sorted(touched)
                if self._resolve_attribute(conn, record.product_id, attr, withdrawn_by=withdrawn.get(attr), now=now)
            ]
        return RecordResult("recorded", changed, first)

    def delete_annotations(self, annotation_ids: Iterable[int], now: datetime | None = None) -> list[str]:
        """Annotations deleted in Label Studio: their rows become 'deleted' and the attributes they had set are
        resolved again. Idempotent. Returns the product attributes changed, as 'product_id/attribute'."""
        ids = sorted(set(annotation_ids))
        if not ids:
            return []
        a = REVIEW_ANNOTATIONS
        changed: list[str] = []
        with self.database.transaction(write=True) as conn:
            now = now or human_write_time(conn)
            rows = conn.execute(
                select(a.c.id, a.c.product_id, a.c.attribute, a.c.outcome, a.c.state, a.c.value, a.c.annotator).where(
                    a.c.annotation_id.in_(ids), a.c.state != "deleted"
                )
            ).all()
            if not rows:
                return []
            self._lock_products(conn, [r.product_id for r in rows])
            conn.execute(update(a).where(a.c.id.in_([r.id for r in rows])).values(state="deleted"))
            for row in rows:
                if row.state != "active" or row.outcome != APPLIED:
                    continue
                if self._resolve_attribute(conn, row.product_id, row.attribute, withdrawn_by=row, now=now):
                    changed.append(f"{row.product_id}/{row.attribute}")
        return changed

    def _lock_products(self, conn: Connection, product_ids: Iterable[str]) -> None:
        """Serialise annotation writes per product for the rest of the transaction, so the webhook and the poller
        (or two workers) recording answers for one product at once cannot interleave their resolution. SQLite
        needs nothing: its write transactions (BEGIN IMMEDIATE) already run one at a time."""
        if self.database.dialect != "postgresql":
            return
        for product_id in sorted(set(product_ids)):  # one order for everyone: no deadlocks between workers
            key = int.from_bytes(hashlib.sha256(product_id.encode()).digest()[:4], "big", signed=True)
            conn.execute(text("SELECT pg_advisory_xact_lock(:ns, :key)"), {"ns": REVIEW_LOCK_NAMESPACE, "key": key})

    def active_annotation_ids(self, task_id: int) -> set[int]:
        a = REVIEW_ANNOTATIONS
        with self.database.transaction() as conn:
            return set(
                conn.execute(select(a.c.annotation_id).where(a.c.task_id == task_id, a.c.state == "active"))
                .scalars()
                .all()
            )

    def annotations(self, product_id: str | None = None, *, state: str | None = None) -> list[dict[str, Any]]:
        """Recorded annotation rows (for `shelfsight review status`, the learner and tests), oldest first."""
        a = REVIEW_ANNOTATIONS
        query = select(a).order_by(a.c.id)
        if product_id is not None:
            query = query.where(a.c.product_id == product_id)
        if state is not None:
            query = query.where(a.c.state == state)
        with self.database.transaction() as conn:
            rows = conn.execute(query).mappings().all()
        out = []
        for row in rows:
            item = dict(row)
            item["value"] = _decode(row["value"], row["value_is_list"])
            item["model_value"] = _decode_any(row["model_value"])
            for key in ("annotation_created_at", "annotation_updated_at", "recorded_at"):
                item[key] = as_utc(row[key])
            out.append(item)
        return out

    def _resolve_attribute(
        self, conn: Connection, product_id: str, attribute: str, *, withdrawn_by: Any, now: datetime
    ) -> bool:
        """Set the product's value of `attribute` from the latest active annotation that answered it; with none
        left, undo the withdrawn annotation's value (the model's value comes back). True when something changed."""
        a = REVIEW_ANNOTATIONS
        winner = (
            conn.execute(
                select(a)
                .where(
                    a.c.product_id == product_id,
                    a.c.attribute == attribute,
                    a.c.state == "active",
                    a.c.outcome == APPLIED,
                )
                .order_by(a.c.annotation_updated_at.desc(), a.c.id.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
        current = (
            conn.execute(
                select(ATTRIBUTES).where(ATTRIBUTES.c.product_id == product_id, ATTRIBUTES.c.attribute == attribute)
            )
            .mappings()
            .first()
        )
        if winner is not None:
            value = _decode(winner["value"], winner["value_is_list"])
            assert value is not None
            boxes = winner["box"] or []
            region = next((b for b in boxes if b.get("box")), None)
            box = region["box"] if region is not None else None
            mask = region.get("mask") if region is not None else None
            digest = self._outbox_digest(conn, winner["outbox_id"])
            if (
                current is not None
                and current["source"] == "human"
                and current["value"] == winner["value"]
                and current["annotator"] == winner["annotator"]
                and (current["box"] or None) == (box or None)
                and (current["mask"] or None) == (mask or None)
            ):
                return False
            write_human_value(
                conn, self.database.insert, product_id, attribute, value, winner["annotator"], box, digest, now, mask
            )
            return True
        if withdrawn_by is None or current is None or current["source"] != "human":
            return False
        if current["annotator"] != withdrawn_by.annotator or current["value"] != withdrawn_by.value:
            return False  # set by someone else since: theirs stays
        model = self._model_value(conn, product_id, attribute)
        if model is None:
            conn.execute(
                delete(ATTRIBUTES).where(ATTRIBUTES.c.product_id == product_id, ATTRIBUTES.c.attribute == attribute)
            )
            return True
        value, confidence, box, model_version, digest = model
        encoded, is_list = encode_value(value)
        conn.execute(
            update(ATTRIBUTES)
            .where(ATTRIBUTES.c.product_id == product_id, ATTRIBUTES.c.attribute == attribute)
            .values(
                value=encoded,
                value_is_list=is_list,
                confidence=confidence,
                alternatives=[],
                source="model",
                model_version=model_version,
                box=box,
                mask=None,  # the outbox keeps the model's box, not its mask
                image_digest=digest,
                annotator=None,
                updated_at=now,
            )
        )
        return True

    def _outbox_digest(self, conn: Connection, outbox_id: int | None) -> str | None:
        if outbox_id is None:
            return None
        return cast(
            "str | None",
            conn.execute(
                select(REVIEW_OUTBOX.c.image_digest).where(REVIEW_OUTBOX.c.id == outbox_id)
            ).scalar_one_or_none(),
        )

    def _model_value(
        self, conn: Connection, product_id: str, attribute: str
    ) -> tuple[str | list[str], float, list[float] | None, str, str] | None:
        """The model's value of `attribute` from the product's newest outbox payload that has one."""
        rows = conn.execute(
            select(REVIEW_OUTBOX.c.payload, REVIEW_OUTBOX.c.model_version, REVIEW_OUTBOX.c.image_digest)
            .where(REVIEW_OUTBOX.c.product_id == product_id)
            .order_by(REVIEW_OUTBOX.c.id.desc())
        ).all()
        for payload, model_version, digest in rows:
            model = payload_from_json(payload)["model_values"].get(attribute)
            if model is not None and model["value"] is not None:
                confidence = min(max(model["confidence"], 0.0), 1.0)
                return model["value"], confidence, model["box"], model_version, digest
        return None

    # ------------------------------------------------------------------ reconcile marks

    def mark_task_synced(self, task_id: int, label_studio_updated_at: datetime, now: datetime | None = None) -> None:
        """Task `task_id` was read whole at Label Studio's `updated_at` and recorded. Only ever moves forward."""
        now = now or current_time()
        insert = self.database.insert(REVIEW_TASK_SYNC).values(
            task_id=task_id, label_studio_updated_at=label_studio_updated_at, synced_at=now
        )
        newer = insert.excluded.label_studio_updated_at > REVIEW_TASK_SYNC.c.label_studio_updated_at
        with self.database.transaction(write=True) as conn:
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["task_id"],
                    set_={"label_studio_updated_at": insert.excluded.label_studio_updated_at, "synced_at": now},
                    where=newer,
                )
            )

    def task_sync_marks(self) -> dict[int, datetime]:
        """Every task's `updated_at` as last read whole (see `mark_task_synced`)."""
        query = select(REVIEW_TASK_SYNC.c.task_id, REVIEW_TASK_SYNC.c.label_studio_updated_at)
        with self.database.transaction() as conn:
            return {int(task): as_utc(at) for task, at in conn.execute(query).all()}

    def active_annotation_counts(self) -> dict[int, int]:
        """Per task, how many of its annotations (skips included) are recorded and active."""
        a = REVIEW_ANNOTATIONS
        query = select(a.c.task_id, func.count(func.distinct(a.c.annotation_id))).where(a.c.state == "active")
        with self.database.transaction() as conn:
            return {int(task): int(n) for task, n in conn.execute(query.group_by(a.c.task_id)).all()}

    # ------------------------------------------------------------------ sync state, statistics

    def get_state(self, name: str) -> str | None:
        with self.database.transaction() as conn:
            return cast(
                "str | None",
                conn.execute(
                    select(REVIEW_SYNC_STATE.c.value).where(REVIEW_SYNC_STATE.c.name == name)
                ).scalar_one_or_none(),
            )

    def set_state(self, name: str, value: str, now: datetime | None = None) -> None:
        now = now or current_time()
        insert = self.database.insert(REVIEW_SYNC_STATE).values(name=name, value=value, updated_at=now)
        with self.database.transaction(write=True) as conn:
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["name"], set_={"value": insert.excluded.value, "updated_at": now}
                )
            )

    def stats(self) -> ReviewStats:
        t, a = REVIEW_OUTBOX, REVIEW_ANNOTATIONS
        with self.database.transaction() as conn:
            by_status: dict[str, int] = {
                str(status): int(n) for status, n in conn.execute(select(t.c.status, func.count()).group_by(t.c.status))
            }
            answered = select(a.c.task_id).where(a.c.state == "active").distinct().scalar_subquery()
            completed = conn.execute(
                select(func.count()).select_from(t).where(t.c.status == "sent", t.c.task_id.in_(answered))
            ).scalar_one()
            annotations = conn.execute(
                select(func.count(func.distinct(a.c.annotation_id))).where(a.c.state == "active")
            ).scalar_one()
            skipped = conn.execute(
                select(func.count()).select_from(a).where(a.c.state == "active", a.c.outcome == SKIPPED)
            ).scalar_one()
            right = func.sum(case((a.c.model_was_right.is_(True), 1), else_=0))
            agreement_rows = conn.execute(
                select(a.c.attribute, right, func.count())
                .where(a.c.state == "active", a.c.outcome == APPLIED, a.c.model_was_right.is_not(None))
                .group_by(a.c.attribute)
            ).all()
        sent = int(by_status.get("sent", 0))
        return ReviewStats(
            pending=int(by_status.get("pending", 0)),
            sent=sent,
            failed=int(by_status.get("failed", 0)),
            completed=int(completed),
            backlog=sent - int(completed),
            annotations=int(annotations),
            skipped=int(skipped),
            agreement={str(g): (int(r or 0), int(n)) for g, r, n in agreement_rows},
        )


# ---------------------------------------------------------------------- conversions


def _annotation_row(record: AnnotationRecord, value: AnnotationValue, now: datetime) -> dict[str, Any]:
    encoded: str | None = None
    is_list = False
    if value.value is not None:
        encoded, is_list = encode_value(value.value)
    model = None if value.model_value is None else json.dumps(value.model_value, ensure_ascii=False)
    return {
        "task_id": record.task_id,
        "annotation_id": record.annotation_id,
        "outbox_id": record.outbox_id,
        "product_id": record.product_id,
        "attribute": value.attribute,
        "value": encoded,
        "value_is_list": is_list,
        "box": value.boxes,
        "annotator": record.annotator,
        "annotation_created_at": record.created_at,
        "annotation_updated_at": record.updated_at,
        "lead_time_s": record.lead_time_s,
        "model_value": model,
        "model_was_right": value.model_was_right,
        "model_fill": value.model_fill,
        "state": "active",
        "outcome": value.outcome,
        "revision": record.revision,
        "recorded_at": now,
    }


def _decode(value: str | None, is_list: bool) -> str | list[str] | None:
    return None if value is None else decode_value(value, is_list)


def _decode_any(value: str | None) -> Any:
    return None if value is None else json.loads(value)
