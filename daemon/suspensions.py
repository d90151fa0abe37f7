"""`SuspensionWatch`: every enrichment daemon replica follows the auto-fill suspensions in the database.

The review worker suspends a group's auto-fill for a model version when its audited precision is significantly below
target (daemon/review/audit.py); an operator's `shelfsight models resume` or a new champion ends it. The state lives
in the database (autofill_suspensions), so every replica follows within one `review.suspension_poll_s`: a thread
re-reads the open suspensions, logs each change, and the writer passes every result through the watch before it is
routed and written. While a group is suspended for the model version that made a result, its auto-filled values
become suggestions (`withheld_by` 'suspended', daemon/pipeline/merge.py `withhold_suspended`), counted per group;
the routing policy then samples such products at `review.suspended_audit_rate`. People's values are never touched:
the store never overwrites a human value with a model's.

What it must not do: decide suspensions (the review worker does), or stop the pipeline when the database is away
(the last suspensions read stay in force, and the next poll tries again).
"""

from __future__ import annotations

import dataclasses
import logging
import threading

from connectors.db import AuditStore, DatabaseUnavailable
from connectors.records import ProductResult
from daemon.metrics import AutofillSuspensionMetrics
from daemon.pipeline.merge import withhold_suspended

log = logging.getLogger("shelfsight.autofill")


class SuspensionWatch:
    """The open suspensions as this replica last read them, re-read every `poll_s` on its own thread."""

    def __init__(self, store: AuditStore, metrics: AutofillSuspensionMetrics, poll_s: float = 5.0) -> None:
        self.store = store
        self.metrics = metrics
        self.poll_s = poll_s
        self._suspended: frozenset[tuple[str, str]] = frozenset()
        self._by_version: dict[str, frozenset[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autofill-suspensions", daemon=True)

    def start(self) -> SuspensionWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def refresh(self) -> bool:
        """Read the open suspensions now; log what changed. False when the database was unavailable (the last ones
        read stay in force)."""
        try:
            current = self.store.suspended_groups()
        except DatabaseUnavailable as exc:
            self.metrics.polls.labels("database_unavailable").inc()
            log.warning("cannot read the auto-fill suspensions, keeping the last ones read: %s", exc)
            return False
        self.metrics.polls.labels("ok").inc()
        for group, version in sorted(current - self._suspended):
            log.warning("auto-fill of group %s suspended for model %s: values stored as suggestions", group, version)
        for group, version in sorted(self._suspended - current):
            log.info("auto-fill of group %s resumed for model %s", group, version)
        by_version: dict[str, set[str]] = {}
        for group, version in current:
            by_version.setdefault(version, set()).add(group)
        self._by_version = {v: frozenset(groups) for v, groups in by_version.items()}  # one assignment: thread-safe
        self._suspended = current
        self.metrics.suspended.set(len(current))
        return True

    def suspended_groups(self, model_version: str) -> frozenset[str]:
        """The groups whose auto-fill is suspended for `model_version`, as last read."""
        return self._by_version.get(model_version, frozenset())

    def __call__(self, result: ProductResult) -> ProductResult:
        """`result` with the auto-filled values of its model version's suspended groups kept as suggestions."""
        suspended = self.suspended_groups(result.model_version)
        if not suspended:
            return result
        attributes = withhold_suspended(result.attributes, suspended)
        for before, after in zip(result.attributes, attributes, strict=True):
            if before.auto_filled and not after.auto_filled:
                self.metrics.withheld.labels(after.attribute).inc()
        return dataclasses.replace(result, attributes=attributes)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception:  # a bug must not end the thread: the next poll tries again
                log.exception("reading the auto-fill suspensions failed")
