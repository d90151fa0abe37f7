"""What retraining reads from and writes to the product database: the human corrections it trains on and its run
log (the `learner_runs` table). The lock that lets one process retrain at a time is `connectors/db/locks.py`.

- `RetrainingStore.human_corrections(since)`: every attribute value an annotator set (`source = 'human'`), with
  the image it was set on (the URL comes from the processing log's row for that product and image digest, else
  the product's latest processed image). The model's own values are never returned. `count_new_corrections`:
  how many products, and how many values, have human values newer than a time (the retraining trigger counts
  products).
- `RetrainingStore.start_run` / `finish_run` / `last_completed_run`: the run log. `start_run` first marks any run
  still 'running' as 'abandoned': it is called with the run lock held, so such a run's process is gone.

What it must not do: decide policy (when to retrain, what to train on) or import `daemon/` or `learner/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update

from connectors.db.connection import as_utc, now
from connectors.db.locks import process_holder
from connectors.db.models import ATTRIBUTES, LEARNER_RUNS, PROCESSING_LOG, PRODUCTS
from connectors.db.result_writes import HUMAN, decode_value
from connectors.db.store import ProductStore

__all__ = ["COMPLETED", "FINAL_STATUSES", "HumanCorrection", "RetrainingRun", "RetrainingStore"]

COMPLETED = ("promoted", "rejected")
FINAL_STATUSES = ("promoted", "rejected", "failed", "skipped", "abandoned")


@dataclass(frozen=True)
class HumanCorrection:
    """One attribute value set by an annotator, with the image it applies to (None when unknown)."""

    product_id: str
    attribute: str
    value: str | list[str]
    image_digest: str | None
    image_url: str | None
    box: list[float] | None
    annotator: str
    updated_at: datetime
    mask: dict[str, Any] | None = None  # COCO RLE, when the annotator outlined the object (polygon or brush)
    title: str | None = None  # the product's title (products.title), which retraining's title model reads


@dataclass(frozen=True)
class RetrainingRun:
    id: int
    started_at: datetime
    finished_at: datetime | None
    status: str
    reason: str
    holder: str
    champion_version: str | None
    challenger_version: str | None
    corrections_used: int
    corrections_until: datetime | None
    detail: dict[str, Any]


class RetrainingStore:
    """The corrections and the run log of `store`'s database (its `Database`: same engine, same error mapping)."""

    def __init__(self, store: ProductStore) -> None:
        self.store = store
        self.database = store.database

    # -- corrections -------------------------------------------------------------------------------
    def human_corrections(self, since: datetime | None = None) -> list[HumanCorrection]:
        """Every value set by an annotator (updated after `since` when given), oldest first."""
        a, p = ATTRIBUTES, PROCESSING_LOG
        exact_url = (
            select(p.c.image_url)
            .where(p.c.product_id == a.c.product_id, p.c.image_digest == a.c.image_digest)
            .order_by(p.c.last_seen_at.desc())
            .limit(1)
            .scalar_subquery()
        )
        latest = (
            select(p.c.image_url, p.c.image_digest)
            .where(p.c.product_id == a.c.product_id)
            .order_by(p.c.last_seen_at.desc(), p.c.id.desc())
            .limit(1)
        )
        latest_url = latest.with_only_columns(p.c.image_url).scalar_subquery()
        latest_digest = latest.with_only_columns(p.c.image_digest).scalar_subquery()
        query = select(
            a.c.product_id,
            a.c.attribute,
            a.c.value,
            a.c.value_is_list,
            a.c.box,
            a.c.mask,
            a.c.annotator,
            a.c.updated_at,
            func.coalesce(a.c.image_digest, latest_digest).label("digest"),
            func.coalesce(exact_url, latest_url).label("url"),
            select(PRODUCTS.c.title).where(PRODUCTS.c.product_id == a.c.product_id).scalar_subquery().label("title"),
        ).where(a.c.source == HUMAN)
        if since is not None:
            query = query.where(a.c.updated_at > since)
        query = query.order_by(a.c.updated_at, a.c.product_id, a.c.attribute)
        with self.database.transaction() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            HumanCorrection(
                product_id=r["product_id"],
                attribute=r["attribute"],
                value=decode_value(r["value"], r["value_is_list"]),
                image_digest=r["digest"],
                image_url=r["url"],
                box=[float(v) for v in r["box"]] if r["box"] is not None else None,
                mask=dict(r["mask"]) if r["mask"] is not None else None,
                annotator=r["annotator"],
                updated_at=as_utc(r["updated_at"]),
                title=r["title"] or None,
            )
            for r in rows
        ]

    def count_human_corrections(self, since: datetime | None = None) -> int:
        """Human attribute values updated after `since` (several per product)."""
        return self.count_new_corrections(since)[1]

    def count_corrected_products(self, since: datetime | None = None) -> int:
        """Products with at least one human value updated after `since`: what the corrections trigger counts."""
        return self.count_new_corrections(since)[0]

    def count_new_corrections(self, since: datetime | None = None) -> tuple[int, int]:
        """(products, values) with human values updated after `since`, in one query."""
        a = ATTRIBUTES
        query = select(func.count(func.distinct(a.c.product_id)), func.count()).where(a.c.source == HUMAN)
        if since is not None:
            query = query.where(a.c.updated_at > since)
        with self.database.transaction() as conn:
            products, values = conn.execute(query).one()
        return int(products), int(values)

    def new_corrections_since_last_run(self) -> tuple[int, int]:
        """(products, values) with human values newer than the last completed run's newest correction."""
        last = self.last_completed_run()
        return self.count_new_corrections(last.corrections_until if last is not None else None)

    # -- runs --------------------------------------------------------------------------------------
    def start_run(self, reason: str, champion_version: str | None, holder: str | None = None) -> tuple[int, int]:
        """Record a new run as 'running'; returns (run id, number of earlier runs marked 'abandoned').
        Call it only while holding the run lock."""
        started = now()
        with self.database.transaction(write=True) as conn:
            abandoned = conn.execute(
                update(LEARNER_RUNS)
                .where(LEARNER_RUNS.c.status == "running")
                .values(status="abandoned", finished_at=started, detail={"error": "the learner process died mid-run"})
            ).rowcount
            run_id = conn.execute(
                insert(LEARNER_RUNS)
                .values(
                    started_at=started,
                    status="running",
                    reason=reason,
                    holder=holder or process_holder(),
                    champion_version=champion_version,
                    corrections_used=0,
                    detail={},
                )
                .returning(LEARNER_RUNS.c.id)
            ).scalar_one()
        return int(run_id), int(abandoned or 0)

    def finish_run(
        self,
        run_id: int,
        status: str,
        *,
        challenger_version: str | None = None,
        corrections_used: int = 0,
        corrections_until: datetime | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}, not {status!r}")
        with self.database.transaction(write=True) as conn:
            conn.execute(
                update(LEARNER_RUNS)
                .where(LEARNER_RUNS.c.id == run_id)
                .values(
                    status=status,
                    finished_at=now(),
                    challenger_version=challenger_version,
                    corrections_used=corrections_used,
                    corrections_until=corrections_until,
                    detail=json.loads(json.dumps(detail or {}, default=str)),
                )
            )

    def last_completed_run(self) -> RetrainingRun | None:
        """The latest run that reached a decision (promoted or rejected)."""
        query = (
            select(LEARNER_RUNS).where(LEARNER_RUNS.c.status.in_(COMPLETED)).order_by(LEARNER_RUNS.c.id.desc()).limit(1)
        )
        with self.database.transaction() as conn:
            row = conn.execute(query).mappings().first()
        return _run(row) if row is not None else None

    def runs(self, limit: int = 50) -> list[RetrainingRun]:
        """The latest runs, newest first."""
        with self.database.transaction() as conn:
            rows = conn.execute(select(LEARNER_RUNS).order_by(LEARNER_RUNS.c.id.desc()).limit(limit)).mappings().all()
        return [_run(r) for r in rows]


def _run(row: Any) -> RetrainingRun:
    return RetrainingRun(
        id=int(row["id"]),
        started_at=as_utc(row["started_at"]),
        finished_at=as_utc(row["finished_at"]) if row["finished_at"] is not None else None,
        status=row["status"],
        reason=row["reason"],
        holder=row["holder"],
        champion_version=row["champion_version"],
        challenger_version=row["challenger_version"],
        corrections_used=int(row["corrections_used"]),
        corrections_until=as_utc(row["corrections_until"]) if row["corrections_until"] is not None else None,
        detail=dict(row["detail"] or {}),
    )
