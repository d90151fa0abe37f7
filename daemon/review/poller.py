"""`AnnotationPoller`: the backstop for webhooks Label Studio dropped. Every task changed since the stored watermark
is reconciled (its annotations recorded, deleted ones withdrawn) through the `AnnotationApplier`.

What it must not do: parse annotations itself (the applier does), or send tasks.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from connectors.db import ReviewStore
from connectors.labelstudio import parse_timestamp
from daemon.metrics import ReviewMetrics
from daemon.review.applier import AnnotationApplier
from daemon.review.project import ReviewProject

POLL_OVERLAP = timedelta(seconds=2)
CATCH_UP_TASKS = 100  # a poll that reads this many tasks (a page of the listing) is a catch-up

log = logging.getLogger("shelfsight.review")


class AnnotationPoller:
    """Incremental polling: tasks whose `updated_at` moved past the stored watermark."""

    def __init__(self, store: ReviewStore, project: ReviewProject, applier: AnnotationApplier, metrics: ReviewMetrics):
        self.store = store
        self.project = project
        self.applier = applier
        self.metrics = metrics

    def state_name(self, project_id: int) -> str:
        return f"poll_watermark:{self.project.client.url}:{project_id}"

    def poll_once(self, *, full: bool = False) -> int:
        """Reconcile every task changed since the watermark (all tasks with `full`). Returns how many tasks.

        The watermark is the server's clock read just before the listing (`server_time`), not the newest
        `updated_at` listed: the listing goes by id, and a task it read early may be edited again before it ends.
        Such an edit is stamped after the listing's start, so the next poll, which asks from there (less
        `POLL_OVERLAP`, for changes stamped before it that committed after it), lists the task again. The watermark
        is stored only once the whole listing is reconciled: a poll cut short by an outage is redone from the old
        one (reconciling a task twice changes nothing).
        """
        project_id = self.project.ensure()
        name = self.state_name(project_id)
        stored = None if full else self.store.get_state(name)
        watermark = parse_timestamp(stored) if stored else None
        since = watermark - POLL_OVERLAP if watermark is not None else None
        started = self.project.client.server_time()
        seen = 0
        for task in self.project.client.tasks_updated_since(project_id, since):
            self.applier.reconcile(task)
            seen += 1
        if watermark is None or started > watermark:
            self.store.set_state(name, started.isoformat())
        self.metrics.polls.labels("ok").inc()
        if seen:  # what a catch-up read, to compare with Label Studio when an answer seems missing
            log.info(
                "polled %d task(s) of project %d changed since %s; watermark now %s",
                seen, project_id, since.isoformat() if since else "the start", max(started, watermark or started),
            )  # fmt: skip
        return seen
