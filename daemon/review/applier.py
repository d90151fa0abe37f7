"""`AnnotationApplier`: Label Studio annotations -> parsed values -> `ReviewStore.record_annotation` (idempotent),
and the withdrawal of deleted annotations. Shared by the webhook receiver and the poller.

What it must not do: decide when to read Label Studio (the worker and the poller do), or send tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connectors.db import AnnotationRecord, AnnotationValue, OutboxItem, ReviewStore
from connectors.labelstudio import LabelStudioClient, LabelStudioError, LabelStudioUnavailable, parse_timestamp
from daemon.metrics import ReviewMetrics
from learner.evaluation.audit import model_fill
from learner.model.taxonomy import Taxonomy
from learner.review.tasks import ParsedValue, annotation_revision, parse_annotation

log = logging.getLogger("shelfsight.review")


@dataclass
class TaskReconciled:
    """What reconciling one task changed: annotations recorded with new content, and annotations withdrawn."""

    task_id: int
    product_id: str | None
    recorded: list[int] = field(default_factory=list)
    withdrawn: list[int] = field(default_factory=list)


class AnnotationApplier:
    """Label Studio annotations -> review_annotations and product attributes (idempotent)."""

    def __init__(self, store: ReviewStore, client: LabelStudioClient, taxonomy: Taxonomy, metrics: ReviewMetrics):
        self.store = store
        self.client = client
        self.taxonomy = taxonomy
        self.metrics = metrics

    def apply(self, task: dict[str, Any], annotation: dict[str, Any]) -> str:
        """Record one annotation of `task`. Returns the outcome: recorded | unchanged | ignored_deleted |
        not_shelfsight (a task this loop did not create: no product id)."""
        data = task.get("data") or {}
        product_id = data.get("product_id")
        if not product_id:
            self.metrics.annotations.labels("ignored").inc()
            return "not_shelfsight"
        task_id = int(task["id"])
        outbox = self._outbox(data, task_id)
        model = outbox.payload["model_values"] if outbox is not None else {}
        result = annotation.get("result") or []
        cancelled = bool(annotation.get("was_cancelled"))
        parsed = parse_annotation(self.taxonomy, result, was_cancelled=cancelled, model=model)
        created = parse_timestamp(annotation.get("created_at")) or datetime.now(UTC)
        record = AnnotationRecord(
            task_id=task_id,
            annotation_id=int(annotation["id"]),
            product_id=str(product_id),
            annotator=self._annotator(annotation),
            created_at=created,
            updated_at=parse_timestamp(annotation.get("updated_at")) or created,
            revision=annotation_revision(result, cancelled),
            values=[
                AnnotationValue(
                    p.attribute,
                    p.outcome,
                    p.value,
                    p.boxes,
                    p.model_value,
                    p.model_was_right,
                    model_fill(model.get(p.attribute)),  # which answers audit auto-filled values
                )
                for p in parsed
            ],
            outbox_id=outbox.id if outbox else None,
            image_digest=outbox.image_digest if outbox else None,
            lead_time_s=float(annotation["lead_time"]) if annotation.get("lead_time") is not None else None,
        )
        outcome = self.store.record_annotation(record)
        self._count(outcome.status, parsed, cancelled)
        if outcome.first_for_task:
            self.metrics.tasks_completed.inc()
            if outbox is not None and outbox.sent_at is not None:
                self.metrics.annotation_delay.observe(max(0.0, (created - outbox.sent_at).total_seconds()))
        for p in parsed:
            if p.outcome in ("unknown_label", "unknown_group", "invalid") and outcome.status == "recorded":
                log.warning(
                    "task %d annotation %s: %s %s: %s", task_id, annotation["id"], p.outcome, p.attribute, p.detail
                )
        if outcome.changed_attributes:
            log.info(
                "product %s: %s set by %s (task %d)",
                product_id,
                ", ".join(outcome.changed_attributes),
                record.annotator,
                task_id,
            )
        return outcome.status

    def delete(self, annotation_ids: Iterable[int]) -> list[str]:
        """Annotations deleted in Label Studio: withdraw what they had set. Returns 'product/attribute' changed."""
        ids = list(annotation_ids)
        changed = self.store.delete_annotations(ids)
        self.metrics.annotations.labels("deleted").inc(len(ids))
        if changed:
            log.info("annotations deleted in Label Studio: withdrew %s", ", ".join(changed))
        return changed

    def reconcile(self, task: dict[str, Any]) -> TaskReconciled:
        """Every annotation the task has now, and the withdrawal of those it no longer has; then the task is marked
        as read whole at its `updated_at` (the periodic reconcile skips it until Label Studio changes it again).

        `task` is a listing that may be older than an annotation the webhook has recorded since (the poller lists
        tasks before it reconciles them): an annotation is withdrawn only when a fresh read of the task, made after
        the database said it was active, no longer has it. Withdrawing on the listing alone lost answers."""
        task_id = int(task["id"])
        product = (task.get("data") or {}).get("product_id")
        done = TaskReconciled(task_id, str(product) if product else None)
        live = task.get("annotations") or []
        for annotation in live:
            if self.apply(task, annotation) == "recorded":
                done.recorded.append(int(annotation["id"]))
        gone = self.store.active_annotation_ids(task_id) - {int(a["id"]) for a in live}
        if gone:
            fresh = self.client.get_task(task_id)
            gone -= {int(a["id"]) for a in fresh.get("annotations") or []}
        if gone:
            self.delete(gone)
            done.withdrawn = sorted(gone)
        updated = parse_timestamp(task.get("updated_at"))
        if updated is not None:
            self.store.mark_task_synced(task_id, updated)
        return done

    def _outbox(self, data: dict[str, Any], task_id: int) -> OutboxItem | None:
        outbox_id = data.get("outbox_id")
        item = (
            self.store.outbox_item(int(outbox_id))
            if isinstance(outbox_id, int | str) and str(outbox_id).isdigit()
            else None
        )
        return item or self.store.outbox_for_task(task_id)

    def _annotator(self, annotation: dict[str, Any]) -> str:
        named = str(annotation.get("created_username") or "").strip()
        if named:  # " alice@example.com, 3"
            return named.rsplit(",", 1)[0].strip() or named
        user = annotation.get("completed_by")
        if isinstance(user, dict):
            return str(user.get("email") or user.get("id"))
        if user is None:
            return "label-studio:unknown"
        try:
            return self.client.user_email(int(user))
        except (LabelStudioUnavailable, LabelStudioError):
            return f"label-studio-user:{user}"

    def _count(self, status: str, parsed: list[ParsedValue], cancelled: bool) -> None:
        if status != "recorded":
            self.metrics.annotations.labels(status).inc()
            return
        self.metrics.annotations.labels("skipped" if cancelled else "applied").inc()
        for p in parsed:
            if p.outcome == "applied" and p.model_was_right is not None:
                self.metrics.corrections.labels(p.attribute, "true" if p.model_was_right else "false").inc()
