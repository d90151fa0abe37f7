"""What the learner reads from and writes to the product database: human corrections, its run log, and a lock
that lets only one learner process retrain at a time across replicas.

- `LearnerStore.human_corrections(since)`: every attribute value an annotator set (`source = 'human'`), with
  the image it was set on (the URL comes from the processing log's row for that product and image digest, else
  the product's latest processed image). The model's own values are never returned. `count_new_corrections`:
  how many products, and how many values, have human values newer than a time (the retraining trigger counts
  products).
- `LearnerStore.start_run` / `finish_run` / `last_completed_run`: the `learner_runs` table. `start_run` first
  marks any run still 'running' as 'abandoned': it is called with the run lock held, so such a run's process
  is gone.
- `DatabaseLock`: on PostgreSQL a session advisory lock (`pg_try_advisory_lock`) on a connection of its own,
  released by the server when that connection closes, so a killed process never leaves it held. On SQLite a
  lease row in `learner_locks` renewed by a heartbeat thread; a holder that dies stops renewing, and the lease
  can be taken over once it expires.

What it must not do: decide policy (when to retrain, what to train on) or import `daemon/` or `learner/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from connectors.db.connection import DatabaseUnavailable, as_utc, now
from connectors.db.models import ATTRIBUTES, LEARNER_LOCKS, LEARNER_RUNS, PROCESSING_LOG
from connectors.db.result_writes import HUMAN, decode_value
from connectors.db.store import ProductStore

__all__ = ["DatabaseLock", "HumanCorrection", "LearnerRunRecord", "LearnerStore", "LockLost", "process_holder"]

log = logging.getLogger(__name__)

COMPLETED = ("promoted", "rejected")
FINAL_STATUSES = ("promoted", "rejected", "failed", "skipped", "abandoned")


def process_holder() -> str:
    """`host:pid`, how a learner process names itself in locks and runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


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


@dataclass(frozen=True)
class LearnerRunRecord:
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


class LearnerStore:
    """The learner's tables, through a `ProductStore`'s engine (same retries and error mapping)."""

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

    def last_completed_run(self) -> LearnerRunRecord | None:
        """The latest run that reached a decision (promoted or rejected)."""
        query = (
            select(LEARNER_RUNS).where(LEARNER_RUNS.c.status.in_(COMPLETED)).order_by(LEARNER_RUNS.c.id.desc()).limit(1)
        )
        with self.database.transaction() as conn:
            row = conn.execute(query).mappings().first()
        return _run(row) if row is not None else None

    def runs(self, limit: int = 50) -> list[LearnerRunRecord]:
        """The latest runs, newest first."""
        with self.database.transaction() as conn:
            rows = conn.execute(select(LEARNER_RUNS).order_by(LEARNER_RUNS.c.id.desc()).limit(limit)).mappings().all()
        return [_run(r) for r in rows]


class LockLost(RuntimeError):
    """A lock this process held is no longer held (connection lost, lease taken over)."""


class DatabaseLock:
    """A named, non-blocking, process-crash-safe lock in the product database (see the module docstring).

    `try_acquire()` returns False at once when another process holds it. `held()` checks the lock is still
    ours (PostgreSQL: the lock's connection answers; SQLite: the lease row still names us). `release()` is
    idempotent. SQLite leases last `lease_s` and are renewed every `lease_s / 3` seconds.
    """

    def __init__(self, store: ProductStore, name: str, *, lease_s: float = 60.0) -> None:
        self.store = store
        self.database = store.database
        self.name = name
        self.lease_s = lease_s
        self.holder = f"{process_holder()}:{uuid.uuid4().hex[:8]}"
        self.key = int.from_bytes(hashlib.sha256(f"shelfsight-lock:{name}".encode()).digest()[:8], "big", signed=True)
        self._conn: Connection | None = None
        self._acquired = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._lost = threading.Event()

    def __enter__(self) -> DatabaseLock:
        if not self.try_acquire():
            raise RuntimeError(f"lock {self.name!r} is held by another process")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def acquired(self) -> bool:
        return self._acquired

    def try_acquire(self) -> bool:
        if self._acquired:
            return True
        if self.database.dialect == "postgresql":
            self._acquired = self._try_advisory()
        else:
            self._acquired = self._try_lease()
            if self._acquired:
                self._stop.clear()
                self._lost.clear()
                self._heartbeat = threading.Thread(target=self._renew, name=f"lease-{self.name}", daemon=True)
                self._heartbeat.start()
        if self._acquired:
            log.info("lock %r acquired by %s", self.name, self.holder)
        return self._acquired

    def held(self) -> bool:
        if not self._acquired:
            return False
        if self.database.dialect == "postgresql":
            try:
                assert self._conn is not None
                self._conn.exec_driver_sql("SELECT 1")
                return True
            except DBAPIError:
                return False
        return not self._lost.is_set() and self._lease_is_ours()

    def release(self) -> None:
        if not self._acquired:
            return
        self._acquired = False
        if self.database.dialect == "postgresql":
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.execute(select(func.pg_advisory_unlock(self.key)))
                except DBAPIError as exc:  # connection already gone: the server released the lock with it
                    log.debug("advisory unlock failed (%s); the lock went with its connection", exc)
                finally:
                    conn.close()
        else:
            self._stop.set()
            if self._heartbeat is not None:
                self._heartbeat.join(timeout=5)
            try:
                with self.database.transaction(write=True) as conn:
                    conn.execute(
                        delete(LEARNER_LOCKS).where(
                            LEARNER_LOCKS.c.name == self.name, LEARNER_LOCKS.c.holder == self.holder
                        )
                    )
            except DatabaseUnavailable as exc:
                log.warning("could not delete lease %r (%s); it expires by itself", self.name, exc)
        log.info("lock %r released by %s", self.name, self.holder)

    # -- PostgreSQL --------------------------------------------------------------------------------
    def _try_advisory(self) -> bool:
        try:
            conn = self.database.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except DBAPIError as exc:
            raise self.database.unavailable(exc) from exc
        try:
            got = bool(conn.execute(select(func.pg_try_advisory_lock(self.key))).scalar_one())
        except DBAPIError:
            conn.close()
            raise
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    # -- SQLite leases -----------------------------------------------------------------------------
    def _try_lease(self) -> bool:
        t = LEARNER_LOCKS
        acquired = now()
        expires = acquired + timedelta(seconds=self.lease_s)
        with self.database.transaction(write=True) as conn:
            conn.execute(delete(t).where(t.c.name == self.name, t.c.expires_at < acquired))
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(t).values(name=self.name, holder=self.holder, acquired_at=acquired, expires_at=expires)
                    )
            except IntegrityError:
                return False
        return True

    def _lease_is_ours(self) -> bool:
        t = LEARNER_LOCKS
        query = select(t.c.holder).where(t.c.name == self.name, t.c.expires_at >= now())
        with self.database.transaction() as conn:
            return conn.execute(query).scalar() == self.holder

    def _renew(self) -> None:
        t = LEARNER_LOCKS
        while not self._stop.wait(self.lease_s / 3):
            try:
                with self.database.transaction(write=True) as conn:
                    renewed = conn.execute(
                        update(t)
                        .where(t.c.name == self.name, t.c.holder == self.holder, t.c.expires_at >= now())
                        .values(expires_at=now() + timedelta(seconds=self.lease_s))
                    ).rowcount
            except DatabaseUnavailable as exc:
                log.warning("could not renew lease %r: %s", self.name, exc)
                continue
            if not renewed:
                log.error("lease %r was lost (expired and taken over); stop using it", self.name)
                self._lost.set()
                return


def _run(row: Any) -> LearnerRunRecord:
    return LearnerRunRecord(
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
