"""The review outbox as the review worker's send queue: claiming due rows, recording each attempt's end, and the
registry of review workers whose heartbeats keep their claims alive. `ReviewStore` (review_store.py) is this plus
the annotation tables.

What it guarantees:
- Rows are only ever added by `ProductStore.write_results` (same transaction as the model's results).
- `claim_due` hands out pending rows due for an attempt, most uncertain first, and in the same transaction pushes
  their next attempt back by a lease and stamps them with the claiming worker (`ClaimOwner`: its identity and its
  process's start time), so two workers do not send the same row at once (on PostgreSQL, rows locked by another
  worker are skipped). Every end of an attempt (`mark_sent`, `mark_retry`, `mark_failed`) clears the claim.
- A claim is taken over before its lease ends when its owner is gone: a new process of the same identity
  releases its previous incarnation's claims when it registers (`register_worker`), and a claim whose owner has
  not heartbeaten for `stale_s` is due again at once. A row stays 'pending' until Label Studio has it or has
  refused it for good: nothing routed is lost while Label Studio or a worker is down.

What it must not do: decide policy (what to route, when to retry), talk to Label Studio, or import `learner/` or
`daemon/`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select, update

from connectors.db.connection import Database, as_utc
from connectors.db.connection import now as current_time
from connectors.db.models import REVIEW_OUTBOX, REVIEW_WORKERS
from connectors.records import OutboxPayload, payload_from_json

__all__ = ["ClaimOwner", "OutboxItem", "OutboxQueue"]


@dataclass(frozen=True)
class ClaimOwner:
    """A review worker process: its identity (stable across restarts: the pod name in Kubernetes, the host name by
    default) and the time this process started (tells its incarnations apart)."""

    worker_id: str
    started_at: datetime


@dataclass(frozen=True)
class OutboxItem:
    """One routed product. `attempts` counts claims before this one: above 0, an earlier attempt may have reached
    Label Studio before the worker stopped, so the sender looks the task up before importing it again."""

    id: int
    product_id: str
    image_digest: str
    model_version: str
    image_url: str
    reason: str
    priority: float
    payload: OutboxPayload
    status: str
    task_id: int | None
    attempts: int
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    claimed_by: str | None = None

    @property
    def key(self) -> str:
        """The idempotency key also stored in the Label Studio task's data."""
        return f"{self.product_id}|{self.image_digest}|{self.model_version}"


class OutboxQueue:
    """The outbox and worker-registry half of `ReviewStore` (see the module docstring)."""

    database: Database

    # ------------------------------------------------------------------ claims

    def claim_due(
        self,
        limit: int,
        lease_s: float = 60.0,
        now: datetime | None = None,
        *,
        owner: ClaimOwner | None = None,
        stale_s: float = 15.0,
    ) -> list[OutboxItem]:
        """Up to `limit` pending rows due for an attempt, most uncertain first (priority, then age): their next
        attempt is due, or they are claimed by a worker that restarted or has not heartbeaten for `stale_s`. Their
        next attempt moves `lease_s` ahead, their attempt count goes up and `owner` (when given) claims them, in one
        transaction."""
        now = now or current_time()
        t, w = REVIEW_OUTBOX, REVIEW_WORKERS
        owner_alive = exists().where(
            w.c.worker_id == t.c.claimed_by,
            w.c.started_at == t.c.claimed_by_started_at,
            w.c.heartbeat_at >= now - timedelta(seconds=stale_s),
        )
        orphaned = and_(t.c.claimed_by.is_not(None), ~owner_alive)
        query = (
            select(t)
            .where(t.c.status == "pending", or_(t.c.next_attempt_at <= now, orphaned))
            .order_by(t.c.priority.desc(), t.c.id)
            .limit(limit)
        )
        if self.database.dialect == "postgresql":
            query = query.with_for_update(of=t, skip_locked=True)
        with self.database.transaction(write=True) as conn:
            rows = conn.execute(query).mappings().all()
            if rows:
                conn.execute(
                    update(t)
                    .where(t.c.id.in_([r["id"] for r in rows]))
                    .values(
                        attempts=t.c.attempts + 1,
                        next_attempt_at=now + timedelta(seconds=lease_s),
                        updated_at=now,
                        claimed_by=owner.worker_id if owner else None,
                        claimed_by_started_at=owner.started_at if owner else None,
                    )
                )
        claimed_by = owner.worker_id if owner else None
        return [dataclasses.replace(_outbox_item(r), claimed_by=claimed_by) for r in rows]

    def mark_sent(self, outbox_id: int, task_id: int, now: datetime | None = None) -> None:
        now = now or current_time()
        t = REVIEW_OUTBOX
        with self.database.transaction(write=True) as conn:
            conn.execute(
                update(t)
                .where(t.c.id == outbox_id)
                .values(status="sent", task_id=task_id, sent_at=now, updated_at=now, last_error=None, **_UNCLAIMED)
            )

    def mark_retry(self, outbox_id: int, error: str, next_attempt_at: datetime, now: datetime | None = None) -> None:
        """Still pending: try again at `next_attempt_at` (backoff chosen by the caller)."""
        now = now or current_time()
        t = REVIEW_OUTBOX
        with self.database.transaction(write=True) as conn:
            conn.execute(
                update(t)
                .where(t.c.id == outbox_id, t.c.status == "pending")
                .values(last_error=error[:2000], next_attempt_at=next_attempt_at, updated_at=now, **_UNCLAIMED)
            )

    def mark_failed(self, outbox_id: int, error: str, now: datetime | None = None) -> None:
        """Label Studio refused this task for good; `retry_failed` puts it back in the queue."""
        now = now or current_time()
        t = REVIEW_OUTBOX
        with self.database.transaction(write=True) as conn:
            conn.execute(
                update(t)
                .where(t.c.id == outbox_id)
                .values(status="failed", last_error=error[:2000], updated_at=now, **_UNCLAIMED)
            )

    def retry_failed(self, now: datetime | None = None) -> int:
        """Failed rows back to pending, due now (after fixing what Label Studio refused). Returns how many."""
        now = now or current_time()
        t = REVIEW_OUTBOX
        with self.database.transaction(write=True) as conn:
            result = conn.execute(
                update(t).where(t.c.status == "failed").values(status="pending", next_attempt_at=now, updated_at=now)
            )
        return int(result.rowcount or 0)

    def make_due(self, now: datetime | None = None) -> int:
        """Every pending row due now, whatever its backoff (`shelfsight review sync`). Returns how many."""
        now = now or current_time()
        t = REVIEW_OUTBOX
        with self.database.transaction(write=True) as conn:
            result = conn.execute(
                update(t).where(t.c.status == "pending", t.c.next_attempt_at > now).values(next_attempt_at=now)
            )
        return int(result.rowcount or 0)

    # ------------------------------------------------------------------ workers

    def register_worker(self, owner: ClaimOwner, now: datetime | None = None) -> int:
        """`owner` is now the live incarnation of its identity: its row in review_workers names this process, and
        the claims of the identity's earlier incarnations (a process killed mid-send) are released, due at once.
        Returns how many claims were released."""
        now = now or current_time()
        t, w = REVIEW_OUTBOX, REVIEW_WORKERS
        with self.database.transaction(write=True) as conn:
            conn.execute(delete(w).where(w.c.worker_id == owner.worker_id))
            conn.execute(
                w.insert().values(
                    worker_id=owner.worker_id,
                    started_at=owner.started_at,
                    heartbeat_at=now,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                )
            )
            released = conn.execute(
                update(t)
                .where(
                    t.c.status == "pending",
                    t.c.claimed_by == owner.worker_id,
                    t.c.claimed_by_started_at != owner.started_at,
                )
                .values(next_attempt_at=now, updated_at=now, **_UNCLAIMED)
            ).rowcount
        return int(released or 0)

    def heartbeat(self, owner: ClaimOwner, now: datetime | None = None) -> bool:
        """Keep `owner`'s claims alive. False when its identity's row names another process (a second worker runs
        with the same identity and has taken its claims over): identities must be unique among live workers."""
        now = now or current_time()
        w = REVIEW_WORKERS
        with self.database.transaction(write=True) as conn:
            updated = conn.execute(
                update(w)
                .where(w.c.worker_id == owner.worker_id, w.c.started_at == owner.started_at)
                .values(heartbeat_at=now)
            ).rowcount
        return bool(updated)

    def unregister_worker(self, owner: ClaimOwner, now: datetime | None = None) -> int:
        """A clean stop: release what `owner` still claims (due at once) and remove its row. Returns how many."""
        now = now or current_time()
        t, w = REVIEW_OUTBOX, REVIEW_WORKERS
        with self.database.transaction(write=True) as conn:
            released = conn.execute(
                update(t)
                .where(
                    t.c.status == "pending",
                    t.c.claimed_by == owner.worker_id,
                    t.c.claimed_by_started_at == owner.started_at,
                )
                .values(next_attempt_at=now, updated_at=now, **_UNCLAIMED)
            ).rowcount
            conn.execute(delete(w).where(w.c.worker_id == owner.worker_id, w.c.started_at == owner.started_at))
        return int(released or 0)

    # ------------------------------------------------------------------ reads

    def outbox_item(self, outbox_id: int) -> OutboxItem | None:
        with self.database.transaction() as conn:
            row = conn.execute(select(REVIEW_OUTBOX).where(REVIEW_OUTBOX.c.id == outbox_id)).mappings().first()
        return _outbox_item(row) if row is not None else None

    def outbox_for_task(self, task_id: int) -> OutboxItem | None:
        with self.database.transaction() as conn:
            row = conn.execute(select(REVIEW_OUTBOX).where(REVIEW_OUTBOX.c.task_id == task_id)).mappings().first()
        return _outbox_item(row) if row is not None else None

    def outbox_items(self, product_id: str | None = None) -> list[OutboxItem]:
        query = select(REVIEW_OUTBOX).order_by(REVIEW_OUTBOX.c.id)
        if product_id is not None:
            query = query.where(REVIEW_OUTBOX.c.product_id == product_id)
        with self.database.transaction() as conn:
            return [_outbox_item(r) for r in conn.execute(query).mappings().all()]

    def routed_since(self, since: datetime) -> list[datetime]:
        """When each product routed after `since` was routed (seeds the routing caps after a restart)."""
        t = REVIEW_OUTBOX
        query = select(t.c.created_at).where(t.c.created_at > since).order_by(t.c.created_at)
        with self.database.transaction() as conn:
            return [as_utc(v) for v in conn.execute(query).scalars().all()]


_UNCLAIMED: dict[str, Any] = {"claimed_by": None, "claimed_by_started_at": None}


def _outbox_item(row: Any) -> OutboxItem:
    return OutboxItem(
        id=int(row["id"]),
        product_id=row["product_id"],
        image_digest=row["image_digest"],
        model_version=row["model_version"],
        image_url=row["image_url"],
        reason=row["reason"],
        priority=float(row["priority"]),
        payload=payload_from_json(row["payload"]),
        status=row["status"],
        task_id=int(row["task_id"]) if row["task_id"] is not None else None,
        attempts=int(row["attempts"]),
        last_error=row["last_error"],
        created_at=as_utc(row["created_at"]),
        sent_at=as_utc(row["sent_at"]) if row["sent_at"] is not None else None,
        claimed_by=row["claimed_by"],
    )
