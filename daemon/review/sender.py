"""Outbox -> Label Studio: `TaskBuilder` turns an outbox row into a Label Studio task, `OutboxSender` claims due rows
and imports them (see daemon/review/__init__.py for the retry rules).

What it must not do: decide what is routed (the enrichment daemon did), or read annotations.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from connectors.db import ClaimOwner, OutboxItem, ReviewStore
from connectors.labelstudio import LabelStudioError, LabelStudioUnavailable
from connectors.retry import RetryPolicy
from daemon.metrics import ReviewMetrics
from daemon.review.project import ReviewProject
from learner.review.tasks import CONFLICT_NAME, DESCRIPTION_NAME, IMAGE_NAME, conflict_note

log = logging.getLogger("shelfsight.review")

TASK_KEY = "shelfsight_key"  # task data field holding the outbox key (product|digest|model version)
CLAIM_LEASE_S = 120.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ImageNotShowable(ValueError):
    """The image URL cannot be shown in Label Studio as configured (a file outside its local files storage)."""


@dataclass(frozen=True)
class TaskBuilder:
    """Outbox rows -> Label Studio task JSON. http(s) images pass through; file:// images must lie inside
    `local_storage_path` (under Label Studio's `local_files_root`) and become /data/local-files/?d=<relative>."""

    local_files_root: Path | None = None
    local_storage_path: Path | None = None

    def image_url(self, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("http", "https"):
            return url
        if parts.scheme != "file":
            raise ImageNotShowable(f"image {url!r}: only http(s) and file URLs can be shown in Label Studio")
        if self.local_files_root is None:
            raise ImageNotShowable(
                f"image {url!r} is a local file: set review.local_files_root to Label Studio's "
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT so annotators can see it"
            )
        path = Path(urllib.parse.unquote(parts.path)).resolve()
        storage = (self.local_storage_path or self.local_files_root).resolve()
        if not path.is_relative_to(storage):
            raise ImageNotShowable(f"image {path} is outside Label Studio's local files storage {storage}")
        relative = path.relative_to(self.local_files_root.resolve())
        return f"/data/local-files/?d={urllib.parse.quote(str(relative), safe='/')}"

    def task(self, item: OutboxItem) -> dict[str, Any]:
        payload = item.payload
        prediction = payload["prediction"]
        uncertainty = payload["uncertainty"]
        data = {
            IMAGE_NAME: self.image_url(item.image_url),
            "product_id": item.product_id,
            "title": payload["title"] or "",
            DESCRIPTION_NAME: payload["description"] or "",  # the labelling view names it: never missing
            CONFLICT_NAME: conflict_note(payload["model_values"]),  # the same
            "reason": item.reason,
            "uncertainty": uncertainty["score"] if uncertainty is not None else item.priority,
            "priority": item.priority,  # the queue order: the uncertainty, or a random rank (review.routing)
            "model_version": item.model_version,
            "image_url": item.image_url,
            "outbox_id": item.id,
            TASK_KEY: item.key,
        }
        task: dict[str, Any] = {"data": data}
        if prediction is not None and prediction["result"]:
            task["predictions"] = [
                {
                    "model_version": prediction["model_version"] or item.model_version,
                    "score": prediction["score"],
                    "result": prediction["result"],
                }
            ]
        return task


@dataclass
class SendReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    unavailable: bool = False


class OutboxSender:
    """Sends due outbox rows to Label Studio (see the module docstring)."""

    def __init__(
        self,
        store: ReviewStore,
        project: ReviewProject,
        tasks: TaskBuilder,
        metrics: ReviewMetrics,
        *,
        batch: int = 50,
        retry_initial_s: float = 2.0,
        retry_max_s: float = 300.0,
        max_attempts_rejected: int = 5,
        clock: Callable[[], datetime] = _utcnow,
        owner: ClaimOwner | None = None,
        claim_stale_s: float = 15.0,
    ) -> None:
        self.store = store
        self.project = project
        self.tasks = tasks
        self.metrics = metrics
        self.batch = batch
        # the backoff of a row Label Studio could not take: ±10% jitter, so rows that failed together spread out
        self.retries = RetryPolicy(initial_s=retry_initial_s, max_s=retry_max_s, jitter=0.1)
        self.max_attempts_rejected = max_attempts_rejected
        self.clock = clock
        self.owner = owner  # claims carry it: a restart or a stopped heartbeat hands them over early
        self.claim_stale_s = claim_stale_s

    def send_once(self) -> SendReport:
        """One batch. Never raises for Label Studio trouble (it is reported); DatabaseUnavailable propagates."""
        report = SendReport()
        items = self.store.claim_due(
            self.batch, lease_s=CLAIM_LEASE_S, now=self.clock(), owner=self.owner, stale_s=self.claim_stale_s
        )
        if not items:
            return report
        try:
            project_id = self.project.ensure()
            todo = self._already_there(project_id, items, report)
            ready: list[tuple[OutboxItem, dict[str, Any]]] = []
            for item in todo:
                try:
                    ready.append((item, self.tasks.task(item)))
                except ImageNotShowable as exc:
                    self._reject(item, str(exc), report, final=True)
            if ready:
                self._import(project_id, ready, report)
        except LabelStudioUnavailable as exc:
            report.unavailable = True
            self.metrics.label_studio_up.set(0)
            for item in items:
                self._retry_later(item, str(exc), report, kind="unavailable")
            log.warning("Label Studio unavailable, %d routed products wait in the outbox: %s", len(items), exc)
        except LabelStudioError as exc:  # the project itself (configuration refused): nothing can be sent
            for item in items:
                self._retry_later(item, str(exc), report, kind="rejected")
            log.error("Label Studio refused the review project: %s", exc)
        return report

    def _already_there(self, project_id: int, items: list[OutboxItem], report: SendReport) -> list[OutboxItem]:
        """Rows whose earlier attempt may have created the task: look it up by key instead of importing again."""
        todo = []
        for item in items:
            task_id = self.project.client.find_task(project_id, TASK_KEY, item.key) if item.attempts > 0 else None
            if task_id is None:
                todo.append(item)
            else:
                self.store.mark_sent(item.id, task_id, now=self.clock())
                report.sent += 1
                log.info("outbox %d was already in Label Studio as task %d", item.id, task_id)
        return todo

    def _import(self, project_id: int, ready: list[tuple[OutboxItem, dict[str, Any]]], report: SendReport) -> None:
        try:
            imported = self.project.client.import_tasks(project_id, [task for _, task in ready])
        except LabelStudioError as exc:
            if len(ready) == 1:
                item = ready[0][0]
                self._reject(item, str(exc), report, final=item.attempts + 1 >= self.max_attempts_rejected)
                return
            for one in ready:  # find the task Label Studio refuses; the others go through
                self._import(project_id, [one], report)
            return
        self.metrics.label_studio_up.set(1)
        now = self.clock()
        for (item, _), task_id in zip(ready, imported.task_ids, strict=True):
            self.store.mark_sent(item.id, task_id, now=now)
            report.sent += 1
        self.metrics.tasks_sent.inc(len(ready))
        log.info("sent %d tasks to Label Studio project %d", len(ready), project_id)
        self.project.follow_champion()

    def _retry_later(self, item: OutboxItem, error: str, report: SendReport, *, kind: str) -> None:
        delay = self.retries.delay(item.attempts + 1)  # stored as the row's next attempt: no thread waits for it
        self.store.mark_retry(item.id, error, self.clock() + timedelta(seconds=delay), now=self.clock())
        self.metrics.send_errors.labels(kind).inc()
        report.retried += 1

    def _reject(self, item: OutboxItem, error: str, report: SendReport, *, final: bool) -> None:
        if final:
            self.store.mark_failed(item.id, error, now=self.clock())
            self.metrics.send_errors.labels("rejected").inc()
            report.failed += 1
            log.error("outbox %d (product %s) failed for good: %s", item.id, item.product_id, error)
        else:
            self._retry_later(item, error, report, kind="rejected")
