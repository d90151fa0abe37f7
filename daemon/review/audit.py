"""`AutofillAudit`: the review worker measures the audited precision of auto-filled values, exports it, and suspends
a group's auto-fill when it is significantly below target.

Every `review.audit_interval_s` (checked on the worker's statistics refresh, and at once by `review sync`):
1. the champion (its model version and the targets its thresholds were fitted for) is read; when it changed since
   the last measurement (a promotion, seen even across restarts: the last champion is kept in review_sync_state),
   the open suspensions of every other model version end (`resumed_by` 'promotion of <version>');
2. the answers per group and model version, the label-free inputs and the open suspensions are read
   (connectors/db/audit_store.py) and turned into `GroupAudit`s (learner/evaluation/audit.py);
3. a group due for suspension (upper bound below target, at least `review.suspend_min_audited` answers) is suspended
   for that model version, logged and counted, unless `review.suspend_autofill` is false; every enrichment daemon
   replica reads the suspensions on its own poll (daemon/suspensions.py);
4. the gauges are set (daemon/metrics/review.py).

What it must not do: raise into the worker's loops (a failed measurement is logged, counted and tried again at the
next interval), decide which values are auto-filled (the daemons apply the suspensions), or touch people's values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import Gauge

from connectors.db import AuditStore, DatabaseUnavailable, ReviewStore
from daemon.metrics import ReviewMetrics
from daemon.reload import ModelSource
from learner.evaluation.audit import GroupAudit, audit_groups, autofill_targets, due_for_suspension

log = logging.getLogger("shelfsight.review")

CHAMPION_STATE = "audit.champion_version"  # review_sync_state: the champion the last measurement saw


@dataclass(frozen=True)
class Champion:
    """The champion's model version and the precision each of its groups promises."""

    model_version: str
    targets: Mapping[str, float]


def champion_reader(source: ModelSource) -> Callable[[], Champion | None]:
    """Reads the champion's version and targets from its manifest (cheap), again only when the resolved file or its
    modification time changes; None while it cannot be read (the last known one is kept once there is one)."""
    from learner.model.manifest import BundleError, read_manifest
    from learner.model.taxonomy import Taxonomy

    cached: tuple[tuple[str, int], Champion] | None = None

    def read() -> Champion | None:
        nonlocal cached
        try:
            path = source.resolve()
            key = (str(path), path.stat().st_mtime_ns)
            if cached is not None and cached[0] == key:
                return cached[1]
            manifest = read_manifest(path)
            taxonomy = Taxonomy.from_dict(manifest["taxonomy"], source=f"{path}#taxonomy")
            champion = Champion(str(manifest["model_version"]), autofill_targets(taxonomy, manifest.get("calibration")))
        except (BundleError, OSError, LookupError, ValueError) as exc:  # being replaced, or not readable
            log.debug("champion not readable right now: %s", exc)
            return cached[1] if cached is not None else None
        cached = (key, champion)
        return champion

    return read


class AutofillAudit:
    """The measurement and the suspensions (see the module docstring); `maybe_run` is called by the worker."""

    def __init__(
        self,
        store: AuditStore,
        review_store: ReviewStore,
        metrics: ReviewMetrics,
        champion: Callable[[], Champion | None],
        *,
        worker_id: str,
        interval_s: float = 60.0,
        level: float = 0.95,
        min_audited: int = 20,
        suspend: bool = True,
    ) -> None:
        self.store = store
        self.review_store = review_store
        self.metrics = metrics
        self.champion = champion
        self.worker_id = worker_id
        self.interval_s = interval_s
        self.level = level
        self.min_audited = min_audited
        self.suspend = suspend
        self._last_run: float | None = None

    def maybe_run(self, *, force: bool = False) -> list[GroupAudit] | None:
        """Measure (and act) when `interval_s` has passed since the last measurement, or now with `force`. Returns
        the audits, or None when not due or when the measurement failed (logged and counted)."""
        now = time.monotonic()
        if not force and self._last_run is not None and now - self._last_run < self.interval_s:
            return None
        self._last_run = now
        try:
            audits = self.run_once()
        except DatabaseUnavailable as exc:
            self.metrics.audits.labels("database_unavailable").inc()
            log.warning("audited precision: database unavailable: %s", exc)
            return None
        except Exception:
            self.metrics.audits.labels("error").inc()
            log.exception("audited precision: unexpected error")
            return None
        self.metrics.audits.labels("ok").inc()
        return audits

    def run_once(self) -> list[GroupAudit]:
        """One measurement: promotion check, audits, suspensions, gauges."""
        champion = self.champion()
        if champion is not None:
            self._end_suspensions_of_earlier_champions(champion.model_version)
        audits = [self._act(a) for a in self.measure()]
        self._export(audits)
        return audits

    def measure(self) -> list[GroupAudit]:
        """The audits as the database holds them now (reads only: `shelfsight models precision` shows these)."""
        champion = self.champion()
        targets = champion.targets if champion is not None else {}
        return audit_groups(
            self.store.audited_answers(),
            self.store.autofill_confidence(),
            targets,
            self.store.suspended_groups(),
            baseline=[(group, champion.model_version) for group in targets] if champion is not None else (),
            level=self.level,
            min_audited=self.min_audited,
        )

    def _act(self, audit: GroupAudit) -> GroupAudit:
        if not (self.suspend and due_for_suspension(audit)):
            return audit
        a = audit.audit
        reason = (
            f"audited precision {a.precision:.3f} of {a.audited} answers, interval [{a.lower:.3f}, {a.upper:.3f}] "
            f"({a.level:.0%}), significantly below the target {audit.target:g}"
        )
        by = f"review-worker:{self.worker_id}"
        opened = self.store.suspend(audit.group, audit.model_version, reason=reason, figures=audit.figures(), by=by)
        if opened is not None:
            self.metrics.suspensions.labels(audit.group).inc()
            log.warning(
                "auto-fill of group %s suspended for model %s: %s; its values are stored as suggestions until "
                "`shelfsight models resume %s` or a new champion",
                audit.group,
                audit.model_version,
                reason,
                audit.group,
            )
        return dataclasses.replace(audit, suspended=True)

    def _end_suspensions_of_earlier_champions(self, version: str) -> None:
        if self.review_store.get_state(CHAMPION_STATE) == version:
            return
        for ended in self.store.resume_other_versions(version, by=f"promotion of {version}"):
            log.warning(
                "auto-fill of group %s resumed: model %s is no longer the champion (now %s)",
                ended.group,
                ended.model_version,
                version,
            )
        self.review_store.set_state(CHAMPION_STATE, version)

    def _export(self, audits: list[GroupAudit]) -> None:
        m = self.metrics
        for audit in audits:
            labels = (audit.group, audit.model_version)
            a = audit.audit
            if a.precision is not None:
                m.audited_precision.labels(*labels).set(a.precision)
            else:
                _remove(m.audited_precision, labels)
            m.audited_precision_lower.labels(*labels).set(a.lower)
            m.audited_precision_upper.labels(*labels).set(a.upper)
            m.audited_values.labels(*labels).set(a.audited)
            m.target_precision.labels(*labels).set(audit.target)
            m.autofill_suspended.labels(*labels).set(1 if audit.suspended else 0)
            if audit.label_free is not None:
                m.label_free_precision.labels(*labels).set(audit.label_free)


def _remove(gauge: Gauge, labels: tuple[str, str]) -> None:
    with contextlib.suppress(KeyError):  # never set
        gauge.remove(*labels)
