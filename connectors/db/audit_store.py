"""`AuditStore`: what the audited precision of auto-filled values reads, and the auto-fill suspensions it writes.

- `audited_answers`: per group and model version, the people's answers on values the model auto-filled (or whose
  auto-fill a suspension withheld: `review_annotations.model_fill` 'auto' or 'suspended'), and how many agreed with
  the model. Active, applied answers only; answers recorded before the last resume of that (group, model version)
  do not count (a resume starts the measurement afresh). The model version is the outbox row's.
- `autofill_confidence`: per group and model version, how many stored model values were auto-filled (or withheld
  by a suspension) and their mean calibrated confidence: the label-free estimate of their precision.
- Suspensions (`autofill_suspensions`): `suspend` opens one for a (group, model version) unless one is open
  already (a partial unique index makes that atomic across workers); `resume` closes the open ones of a group;
  `resume_other_versions` closes those of every model version but the champion's (a promotion ends them);
  `suspended_groups` is the enrichment daemons' cheap poll.

What it must not do: compute precisions or decide when to suspend (learner/evaluation/audit.py and the review
worker do), or import `daemon/` or `learner/`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, or_, select, update

from connectors.db.connection import as_utc
from connectors.db.connection import now as current_time
from connectors.db.models import ATTRIBUTES, AUTOFILL_SUSPENSIONS, REVIEW_ANNOTATIONS, REVIEW_OUTBOX
from connectors.db.store import ProductStore
from connectors.records import SUSPENDED

__all__ = ["AUDITED_FILLS", "AuditStore", "AuditedAnswers", "AutofillConfidenceRow", "Suspension"]

AUDITED_FILLS = ("auto", SUSPENDED)  # review_annotations.model_fill values whose answers are counted


@dataclass(frozen=True)
class AuditedAnswers:
    """`right` of `audited` answers on auto-filled values of `group` from `model_version` agreed with the model;
    counted since `since` (the last resume), or ever when None."""

    group: str
    model_version: str
    audited: int
    right: int
    since: datetime | None = None


@dataclass(frozen=True)
class AutofillConfidenceRow:
    """`values` stored model values of `group` from `model_version` auto-filled (or withheld by a suspension), and
    their mean calibrated confidence."""

    group: str
    model_version: str
    values: int
    mean_confidence: float


@dataclass(frozen=True)
class Suspension:
    """One row of autofill_suspensions (see connectors/db/models.py `AutofillSuspension`)."""

    id: int
    group: str
    model_version: str
    suspended_at: datetime
    suspended_by: str
    reason: str
    figures: dict[str, Any]
    resumed_at: datetime | None
    resumed_by: str | None

    @property
    def open(self) -> bool:
        return self.resumed_at is None


class AuditStore:
    """The audit's reads and the suspensions of `store`'s database. Thread-safe like `ProductStore`."""

    def __init__(self, store: ProductStore) -> None:
        self.store = store
        self.database = store.database

    # ------------------------------------------------------------------ audited precision

    def audited_answers(self) -> list[AuditedAnswers]:
        """Answers on auto-filled values per (group, model version), since each pair's last resume."""
        a, o, s = REVIEW_ANNOTATIONS, REVIEW_OUTBOX, AUTOFILL_SUSPENSIONS
        resumed = (
            select(s.c.attribute, s.c.model_version, func.max(s.c.resumed_at).label("last_resumed"))
            .where(s.c.resumed_at.is_not(None))
            .group_by(s.c.attribute, s.c.model_version)
            .subquery()
        )
        right = func.sum(case((a.c.model_was_right.is_(True), 1), else_=0))
        query = (
            select(a.c.attribute, o.c.model_version, func.count(), right, func.max(resumed.c.last_resumed))
            .select_from(
                a.join(o, o.c.id == a.c.outbox_id).outerjoin(
                    resumed,
                    and_(resumed.c.attribute == a.c.attribute, resumed.c.model_version == o.c.model_version),
                )
            )
            .where(
                a.c.state == "active",
                a.c.outcome == "applied",
                a.c.model_was_right.is_not(None),
                a.c.model_fill.in_(AUDITED_FILLS),
                or_(resumed.c.last_resumed.is_(None), a.c.recorded_at > resumed.c.last_resumed),
            )
            .group_by(a.c.attribute, o.c.model_version)
            .order_by(a.c.attribute, o.c.model_version)
        )
        with self.database.transaction() as conn:
            rows = conn.execute(query).all()
        return [
            AuditedAnswers(str(g), str(v), int(n), int(r or 0), as_utc(since) if since is not None else None)
            for g, v, n, r, since in rows
        ]

    def autofill_confidence(self) -> list[AutofillConfidenceRow]:
        """The label-free estimate's inputs per (group, model version) of the stored model values."""
        t = ATTRIBUTES
        query = (
            select(t.c.attribute, t.c.model_version, func.count(), func.avg(t.c.confidence))
            .where(t.c.source == "model", or_(t.c.auto_filled.is_(True), t.c.withheld_by == SUSPENDED))
            .group_by(t.c.attribute, t.c.model_version)
            .order_by(t.c.attribute, t.c.model_version)
        )
        with self.database.transaction() as conn:
            rows = conn.execute(query).all()
        return [AutofillConfidenceRow(str(g), str(v), int(n), float(mean)) for g, v, n, mean in rows]

    # ------------------------------------------------------------------ suspensions

    def suspend(
        self,
        group: str,
        model_version: str,
        *,
        reason: str,
        figures: dict[str, Any],
        by: str,
        now: datetime | None = None,
    ) -> Suspension | None:
        """Suspend `group`'s auto-fill for `model_version`. Returns the new suspension, or None when one is open
        already (another worker got there first: nothing changes)."""
        s = AUTOFILL_SUSPENSIONS
        row = {
            "attribute": group,
            "model_version": model_version,
            "suspended_at": now or current_time(),
            "suspended_by": by,
            "reason": reason,
            "figures": figures,
        }
        with self.database.transaction(write=True) as conn:
            inserted = conn.execute(self.database.insert(s).values(**row).on_conflict_do_nothing().returning(s.c.id))
            if inserted.first() is None:
                return None
            return self._open(conn, group, model_version)[0]

    def resume(
        self, group: str, *, by: str, model_version: str | None = None, now: datetime | None = None
    ) -> list[Suspension]:
        """End the open suspensions of `group` (of `model_version` only, when given). Returns those ended."""
        at = now or current_time()
        with self.database.transaction(write=True) as conn:
            ended = self._open(conn, group, model_version)
            self._close(conn, ended, by, at)
        return [dataclasses.replace(x, resumed_at=at, resumed_by=by) for x in ended]

    def resume_other_versions(self, model_version: str, *, by: str, now: datetime | None = None) -> list[Suspension]:
        """End the open suspensions of every model version but `model_version` (the champion's: its promotion ended
        them). Returns those ended."""
        at = now or current_time()
        with self.database.transaction(write=True) as conn:
            ended = [x for x in self._open(conn) if x.model_version != model_version]
            self._close(conn, ended, by, at)
        return [dataclasses.replace(x, resumed_at=at, resumed_by=by) for x in ended]

    def suspensions(self, *, open_only: bool = False) -> list[Suspension]:
        """Suspensions, oldest first (only the open ones with `open_only`)."""
        s = AUTOFILL_SUSPENSIONS
        query = select(s).order_by(s.c.id)
        if open_only:
            query = query.where(s.c.resumed_at.is_(None))
        with self.database.transaction() as conn:
            return [_suspension(row) for row in conn.execute(query).mappings()]

    def suspended_groups(self) -> frozenset[tuple[str, str]]:
        """The (group, model version) pairs whose auto-fill is suspended now (the daemons poll this)."""
        s = AUTOFILL_SUSPENSIONS
        with self.database.transaction() as conn:
            rows = conn.execute(select(s.c.attribute, s.c.model_version).where(s.c.resumed_at.is_(None))).all()
        return frozenset((str(g), str(v)) for g, v in rows)

    def _open(self, conn: Connection, group: str | None = None, model_version: str | None = None) -> list[Suspension]:
        s = AUTOFILL_SUSPENSIONS
        query = select(s).where(s.c.resumed_at.is_(None)).order_by(s.c.id)
        if group is not None:
            query = query.where(s.c.attribute == group)
        if model_version is not None:
            query = query.where(s.c.model_version == model_version)
        return [_suspension(row) for row in conn.execute(query).mappings()]

    def _close(self, conn: Connection, suspensions: list[Suspension], by: str, at: datetime) -> None:
        if suspensions:
            s = AUTOFILL_SUSPENSIONS
            conn.execute(
                update(s)
                .where(s.c.id.in_([x.id for x in suspensions]), s.c.resumed_at.is_(None))
                .values(resumed_at=at, resumed_by=by)
            )


def _suspension(row: Any) -> Suspension:
    return Suspension(
        id=int(row["id"]),
        group=row["attribute"],
        model_version=row["model_version"],
        suspended_at=as_utc(row["suspended_at"]),
        suspended_by=row["suspended_by"],
        reason=row["reason"],
        figures=dict(row["figures"] or {}),
        resumed_at=as_utc(row["resumed_at"]) if row["resumed_at"] is not None else None,
        resumed_by=row["resumed_by"],
    )
