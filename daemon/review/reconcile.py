"""`FullReconcile`: the periodic check that nothing annotators answered is missing from the database, whatever
webhooks and polls did or missed (a receiver down, a watermark moved too far, a database restored, a bug).

One pass: list every task of the project with only its id, `updated_at` and annotation count
(`LabelStudioClient.task_digests`, about 100 bytes a task, 1,000 tasks a request), compare with what the database
holds, and read whole (`get_task`) only the tasks that differ:

- a task the worker has read whole before (`review_task_sync`) differs when Label Studio's `updated_at` is newer
  than the one it was read at (every create, edit, skip or delete of an annotation moves it);
- a task never read whole differs when Label Studio or the database count any annotation on it (a task nobody
  answered has nothing to recover).

Each differing task goes through `AnnotationApplier.reconcile` (idempotent): annotations it records with new
content and annotations it withdraws are what the poll and the webhook had missed: each is logged and counted
(`shelfsight_review_reconcile_recovered_total`). Runs at start-up and every `review.reconcile_interval_s`.

What it must not do: parse or record annotations itself (the applier does), or send tasks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from connectors.db import ReviewStore
from connectors.labelstudio import TaskDigest
from daemon.metrics import ReviewMetrics
from daemon.review.applier import AnnotationApplier
from daemon.review.project import ReviewProject

log = logging.getLogger("shelfsight.review")


@dataclass
class ReconcileReport:
    """One pass: tasks listed, tasks that differed and were read whole, answers recovered (recorded) and
    annotations withdrawn, and how long it took."""

    tasks: int = 0
    differing: int = 0
    recovered: int = 0
    withdrawn: int = 0
    seconds: float = 0.0


class FullReconcile:
    """Label Studio's tasks against the database, re-reading only the tasks that differ (see the module docstring)."""

    def __init__(
        self,
        store: ReviewStore,
        project: ReviewProject,
        applier: AnnotationApplier,
        metrics: ReviewMetrics,
        *,
        page_size: int = 1000,
    ) -> None:
        self.store = store
        self.project = project
        self.applier = applier
        self.metrics = metrics
        self.page_size = page_size

    def differing(self, digests: list[TaskDigest]) -> list[TaskDigest]:
        """The tasks whose state in Label Studio the database may not hold."""
        marks = self.store.task_sync_marks()
        counts = self.store.active_annotation_counts()
        out = []
        for task in digests:
            seen = marks.get(task.id)
            if seen is None:
                if task.annotations or counts.get(task.id, 0):
                    out.append(task)
            elif task.updated_at is not None and task.updated_at > seen:
                out.append(task)
        return out

    def run_once(self) -> ReconcileReport:
        """One pass. Raises LabelStudioUnavailable / DatabaseUnavailable (the worker retries at the next interval)."""
        started = time.monotonic()
        project_id = self.project.ensure()
        digests = list(self.project.client.task_digests(project_id, page_size=self.page_size))
        report = ReconcileReport(tasks=len(digests))
        todo = self.differing(digests)
        report.differing = len(todo)
        for digest in todo:
            task = self.project.client.get_task(digest.id)
            done = self.applier.reconcile(task)
            for annotation_id in done.recorded:
                self.metrics.reconcile_recovered.labels("recorded").inc()
                log.warning(
                    "reconcile recovered annotation %d of task %d (product %s): webhook and poll had missed it",
                    annotation_id,
                    done.task_id,
                    done.product_id,
                )
            for annotation_id in done.withdrawn:
                self.metrics.reconcile_recovered.labels("withdrawn").inc()
                log.warning(
                    "reconcile withdrew annotation %d of task %d (product %s): deleted in Label Studio, missed",
                    annotation_id,
                    done.task_id,
                    done.product_id,
                )
            report.recovered += len(done.recorded)
            report.withdrawn += len(done.withdrawn)
        report.seconds = round(time.monotonic() - started, 3)
        self.metrics.reconciles.labels("ok").inc()
        self.metrics.reconcile_differing.set(report.differing)
        log.info(
            "reconcile: %d tasks listed, %d differed and were read whole, %d answers recovered, %d withdrawn (%.1fs)",
            report.tasks,
            report.differing,
            report.recovered,
            report.withdrawn,
            report.seconds,
        )
        return report
