"""The review worker (`shelfsight review run`): the routed products in, Label Studio tasks out, annotators'
answers back into the catalog.

One process, four small parts, each with one job:

    OutboxSender       every `send_interval_s`: claim due outbox rows (most uncertain first), import them into
                       Label Studio as tasks with the model's prediction, mark them sent. Label Studio down:
                       the rows stay pending and are retried with exponential backoff; Label Studio refusing a
                       task (4xx): retried a few times, then 'failed' with its answer. A row whose earlier attempt
                       may have reached Label Studio is looked up by its key first, so no task is created twice.
    WebhookReceiver    POST /webhook from Label Studio (ANNOTATION_CREATED/UPDATED, ANNOTATIONS_DELETED),
                       checked against the shared secret header, queued and answered at once (Label Studio waits
                       at most a second); GET /metrics and /healthz on the same port.
    AnnotationPoller   every `poll_interval_s`: tasks changed since the stored watermark, their annotations
                       recorded and deleted ones withdrawn: the backstop for webhooks Label Studio dropped while
                       the receiver was down.
    AnnotationApplier  one annotation -> parsed values (learner/review/policy.py) -> `ReviewStore.record_annotation`
                       (idempotent: the same content twice changes nothing). Shared by the webhook and the poller.

`ReviewProject` bootstraps Label Studio (project with the taxonomy's labelling configuration, local files storage,
webhook) and keeps the project's model version in step with the champion bundle. `build_review_router` builds the
enrichment daemon's routing hook. Nothing here logs the Label Studio token or the webhook secret.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from connectors.db import AnnotationRecord, AnnotationValue, DatabaseUnavailable, OutboxItem, ProductStore, ReviewStore
from connectors.labelstudio import LabelStudioClient, LabelStudioError, LabelStudioUnavailable, parse_timestamp
from daemon.config import ReviewSettings, Settings
from daemon.http import BackgroundHTTPServer, QuietHandler
from daemon.metrics import ReviewMetrics, ReviewRoutingMetrics
from daemon.reload import ModelSource
from learner.model.taxonomy import Taxonomy
from learner.review.policy import IMAGE_NAME, ReviewCaps, annotation_revision, parse_annotation

log = logging.getLogger("shelfsight.review")

SECRET_HEADER = "X-ShelfSight-Webhook-Secret"
TASK_KEY = "shelfsight_key"  # task data field holding the outbox key (product|digest|model version)
CLAIM_LEASE_S = 120.0
POLL_OVERLAP = timedelta(seconds=2)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ImageNotShowable(ValueError):
    """The image URL cannot be shown in Label Studio as configured (a file outside its local files storage)."""


# ------------------------------------------------------------------------------------------------------------
# tasks
# ------------------------------------------------------------------------------------------------------------


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
        prediction = payload.get("prediction") or {}
        data = {
            IMAGE_NAME: self.image_url(item.image_url),
            "product_id": item.product_id,
            "title": payload.get("title") or "",
            "reason": item.reason,
            "uncertainty": (payload.get("uncertainty") or {}).get("score", item.priority),
            "priority": item.priority,  # the queue order: the uncertainty, or a random rank (review.routing)
            "model_version": item.model_version,
            "image_url": item.image_url,
            "outbox_id": item.id,
            TASK_KEY: item.key,
        }
        task: dict[str, Any] = {"data": data}
        if prediction.get("result"):
            task["predictions"] = [
                {
                    "model_version": prediction.get("model_version", item.model_version),
                    "score": float(prediction.get("score", 0.0)),
                    "result": prediction["result"],
                }
            ]
        return task


# ------------------------------------------------------------------------------------------------------------
# Label Studio project
# ------------------------------------------------------------------------------------------------------------


class ReviewProject:
    """The Label Studio project of the review loop, created or reused by title; idempotent and cheap to call
    again (the labelling configuration, local storage and webhook are set up once per process, the model
    version is compared with the champion every call)."""

    def __init__(
        self,
        client: LabelStudioClient,
        taxonomy: Taxonomy,
        title: str,
        *,
        model_version: Callable[[], str | None],
        local_storage_path: Path | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        self.client = client
        self.taxonomy = taxonomy
        self.title = title
        self._model_version = model_version
        self.local_storage_path = local_storage_path
        self.webhook_url = webhook_url
        self._webhook_secret = webhook_secret
        self._id: int | None = None
        self._shown_version: str | None = None
        self._lock = threading.Lock()

    @property
    def id(self) -> int | None:
        return self._id

    def use_webhook(self, url: str, secret: str) -> None:
        """Register this receiver at the next bootstrap (call before `ensure`)."""
        self.webhook_url = url
        self._webhook_secret = secret

    def ensure(self) -> int:
        """The project id, bootstrapping Label Studio on first use. Raises LabelStudioUnavailable/Error."""
        from learner.review.policy import label_config

        with self._lock:
            if self._id is None:
                project_id = self.client.ensure_project(self.title, label_config(self.taxonomy))
                if self.local_storage_path is not None:
                    self.client.ensure_local_storage(project_id, str(self.local_storage_path))
                if self.webhook_url is not None and self._webhook_secret is not None:
                    self.client.ensure_webhook(project_id, self.webhook_url, {SECRET_HEADER: self._webhook_secret})
                self._id = project_id
                log.info("Label Studio project %d (%r) ready at %s", project_id, self.title, self.client.url)
                self._follow_champion(project_id)
            return self._id

    def follow_champion(self) -> str | None:
        """Show the champion's predictions once Label Studio has some (it refuses a version without any); called
        after every import. Returns the version shown."""
        with self._lock:
            if self._id is not None:
                self._follow_champion(self._id)
            return self._shown_version

    def _follow_champion(self, project_id: int) -> None:
        version = self._model_version()
        if (
            version is not None
            and version != self._shown_version
            and self.client.set_model_version(project_id, version)
        ):
            self._shown_version = version


# ------------------------------------------------------------------------------------------------------------
# sending
# ------------------------------------------------------------------------------------------------------------


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
    ) -> None:
        self.store = store
        self.project = project
        self.tasks = tasks
        self.metrics = metrics
        self.batch = batch
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.max_attempts_rejected = max_attempts_rejected
        self.clock = clock

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt `attempts + 1`: exponential from `retry_initial_s`, capped, with 10% jitter."""
        delay = min(self.retry_initial_s * 2.0 ** max(attempts - 1, 0), self.retry_max_s)
        return float(delay * random.uniform(0.9, 1.1))

    def send_once(self) -> SendReport:
        """One batch. Never raises for Label Studio trouble (it is reported); DatabaseUnavailable propagates."""
        report = SendReport()
        items = self.store.claim_due(self.batch, lease_s=CLAIM_LEASE_S, now=self.clock())
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
        delay = self.backoff(item.attempts + 1)
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


# ------------------------------------------------------------------------------------------------------------
# receiving
# ------------------------------------------------------------------------------------------------------------


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
        model = (outbox.payload.get("model_values") if outbox else None) or {}
        result = annotation.get("result") or []
        cancelled = bool(annotation.get("was_cancelled"))
        parsed = parse_annotation(self.taxonomy, result, was_cancelled=cancelled, model=model)
        created = parse_timestamp(annotation.get("created_at")) or _utcnow()
        record = AnnotationRecord(
            task_id=task_id,
            annotation_id=int(annotation["id"]),
            product_id=str(product_id),
            annotator=self._annotator(annotation),
            created_at=created,
            updated_at=parse_timestamp(annotation.get("updated_at")) or created,
            revision=annotation_revision(result, cancelled),
            values=[
                AnnotationValue(p.attribute, p.outcome, p.value, p.boxes, p.model_value, p.model_was_right)
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

    def reconcile(self, task: dict[str, Any]) -> None:
        """Every annotation the task has now, and the withdrawal of those it no longer has.

        `task` is a listing that may be older than an annotation the webhook has recorded since (the poller lists
        tasks before it reconciles them): an annotation is withdrawn only when a fresh read of the task, made after
        the database said it was active, no longer has it. Withdrawing on the listing alone lost answers."""
        live = task.get("annotations") or []
        for annotation in live:
            self.apply(task, annotation)
        gone = self.store.active_annotation_ids(int(task["id"])) - {int(a["id"]) for a in live}
        if gone:
            fresh = self.client.get_task(int(task["id"]))
            gone -= {int(a["id"]) for a in fresh.get("annotations") or []}
        if gone:
            self.delete(gone)

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

    def _count(self, status: str, parsed: list[Any], cancelled: bool) -> None:
        if status != "recorded":
            self.metrics.annotations.labels(status).inc()
            return
        self.metrics.annotations.labels("skipped" if cancelled else "applied").inc()
        for p in parsed:
            if p.outcome == "applied" and p.model_was_right is not None:
                self.metrics.corrections.labels(p.attribute, "true" if p.model_was_right else "false").inc()


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
        """Reconcile every task changed since the watermark (all tasks with `full`). Returns how many tasks."""
        project_id = self.project.ensure()
        name = self.state_name(project_id)
        stored = None if full else self.store.get_state(name)
        newest = parse_timestamp(stored) if stored else None
        since = newest - POLL_OVERLAP if newest is not None else None
        seen = 0
        for task in self.project.client.tasks_updated_since(project_id, since):
            self.applier.reconcile(task)
            seen += 1
            updated = parse_timestamp(task.get("updated_at"))
            if updated is not None and (newest is None or updated > newest):
                newest = updated
                self.store.set_state(name, newest.isoformat())
        self.metrics.polls.labels("ok").inc()
        return seen


class WebhookReceiver(BackgroundHTTPServer):
    """POST /webhook (shared secret in the X-ShelfSight-Webhook-Secret header), GET /metrics and /healthz.

    Deliveries are checked, queued and answered at once; `process` (the worker's thread) applies them. A
    delivery that cannot be applied (database down) is dropped after a few tries: the poller picks it up."""

    def __init__(
        self,
        host: str,
        port: int,
        secret: str,
        registry: CollectorRegistry,
        metrics: ReviewMetrics,
        path: str = "/webhook",
    ) -> None:
        if not secret:
            raise ValueError("the webhook receiver needs a shared secret")
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=10_000)
        self.path = path
        handler = _webhook_handler(self, secret.encode(), registry, metrics)
        super().__init__(host, port, handler, thread_name="review-webhook")


def _webhook_handler(
    receiver: WebhookReceiver, secret: bytes, registry: CollectorRegistry, metrics: ReviewMetrics
) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send_metrics(registry)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            else:
                self._send(404, b"not found\n")

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != receiver.path:
                self._send(404, b"not found\n")
                return
            given = (self.headers.get(SECRET_HEADER) or "").encode()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, 50_000_000)) if length > 0 else b""
            if not hmac.compare_digest(given, secret):
                metrics.webhooks.labels("rejected_secret").inc()
                self._send(
                    401, b'{"error": "missing or wrong X-ShelfSight-Webhook-Secret header"}\n', "application/json"
                )
                return
            try:
                payload = json.loads(body)
                if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
                    raise ValueError("not a Label Studio webhook payload (no action)")
            except ValueError as exc:
                metrics.webhooks.labels("bad_request").inc()
                self._send(400, json.dumps({"error": str(exc)}).encode(), "application/json")
                return
            if payload["action"] not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"):
                metrics.webhooks.labels("ignored").inc()
                self._send(200, b'{"status": "ignored"}', "application/json")
                return
            try:
                receiver.queue.put_nowait(payload)
            except queue.Full:
                metrics.webhooks.labels("unavailable").inc()
                self._send(503, b'{"error": "busy; polling will pick this up"}', "application/json")
                return
            metrics.webhooks.labels("accepted").inc()
            self._send(200, b'{"status": "queued"}', "application/json")

    return Handler


# ------------------------------------------------------------------------------------------------------------
# the worker
# ------------------------------------------------------------------------------------------------------------


@dataclass
class ReviewWorkerOptions:
    send_interval_s: float = 2.0
    poll_interval_s: float = 30.0
    stats_interval_s: float = 10.0
    webhook_host: str = "127.0.0.1"
    webhook_port: int | None = 0  # None: no receiver (polling only); 0: any free port
    webhook_url: str | None = None  # how Label Studio reaches the receiver (default from host and port)


@dataclass
class SyncReport:
    sent: int = 0
    failed: int = 0
    tasks_polled: int = 0
    unavailable: str | None = None


@dataclass
class ReviewWorker:
    store: ReviewStore
    client: LabelStudioClient
    taxonomy: Taxonomy
    project: ReviewProject
    sender: OutboxSender
    applier: AnnotationApplier
    poller: AnnotationPoller
    metrics: ReviewMetrics
    options: ReviewWorkerOptions
    webhook_secret: str | None = None
    webhook: WebhookReceiver | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> ReviewWorker:
        """Start the receiver (so the project's webhook can point at it) and the sender, poller and processing
        threads. Label Studio may be down: everything retries."""
        if self.options.webhook_port is not None and self.webhook_secret:
            self.webhook = WebhookReceiver(
                self.options.webhook_host,
                self.options.webhook_port,
                self.webhook_secret,
                self.metrics.registry,
                self.metrics,
            ).start()
            url = (
                self.options.webhook_url or f"http://{self.options.webhook_host}:{self.webhook.port}{self.webhook.path}"
            )
            self.project.use_webhook(url, self.webhook_secret)
            log.info("webhook receiver on http://%s:%d%s", self.options.webhook_host, self.webhook.port, "/webhook")
        for name, target in (
            ("review-sender", self._send_loop),
            ("review-poller", self._poll_loop),
            ("review-apply", self._apply_loop),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stop_event.set()
        if self.webhook is not None:
            self.webhook.stop()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._threads.clear()

    def run_forever(self) -> None:
        self.start()
        try:
            while not self.stop_event.wait(1.0):
                pass
        finally:
            self.stop()

    # -- one pass (CLI `review sync`, tests) -------------------------------------------------------------------
    def sync(self, *, full: bool = False, retry_failed: bool = False) -> SyncReport:
        report = SyncReport()
        try:
            if retry_failed:
                self.store.retry_failed()
            self.store.make_due()
            while True:
                sent = self.sender.send_once()
                report.sent += sent.sent
                report.failed += sent.failed
                if sent.unavailable:
                    report.unavailable = "Label Studio is unavailable; the outbox keeps every routed product"
                    break
                if sent.sent + sent.failed == 0:
                    break
            if report.unavailable is None:
                report.tasks_polled = self.poller.poll_once(full=full)
        except LabelStudioUnavailable as exc:
            report.unavailable = f"Label Studio is unavailable; the outbox keeps every routed product ({exc})"
        self.refresh_gauges()
        return report

    def refresh_gauges(self) -> None:
        stats = self.store.stats()
        self.metrics.outbox_pending.set(stats.pending)
        self.metrics.backlog.set(stats.backlog)
        self.metrics.failed.set(stats.failed)
        for group, (right, judged) in stats.agreement.items():
            if judged:
                self.metrics.agreement.labels(group).set(right / judged)

    # -- loops ------------------------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        last_stats = 0.0
        while not self.stop_event.is_set():
            report = SendReport()
            try:
                try:
                    self.project.ensure()  # bootstrap once: the webhook is registered before any task exists
                except LabelStudioUnavailable as exc:
                    log.warning("Label Studio unavailable: %s", exc)
                report = self.sender.send_once()  # Label Studio down: due rows are retried with backoff
                if time.monotonic() - last_stats > self.options.stats_interval_s:
                    self.refresh_gauges()
                    last_stats = time.monotonic()
            except LabelStudioUnavailable as exc:
                self.metrics.label_studio_up.set(0)
                log.warning("Label Studio unavailable: %s", exc)
            except LabelStudioError as exc:
                log.error("Label Studio refused the review project setup: %s", exc)
            except DatabaseUnavailable as exc:
                log.warning("database unavailable: %s", exc)
            except Exception:
                log.exception("review sender: unexpected error")
            if report.sent and not report.unavailable:
                continue  # more may be due right away
            self.stop_event.wait(self.options.send_interval_s)

    def _poll_loop(self) -> None:
        while not self.stop_event.wait(self.options.poll_interval_s):
            try:
                self.poller.poll_once()
            except LabelStudioUnavailable as exc:
                self.metrics.polls.labels("unavailable").inc()
                log.warning("polling Label Studio failed: %s", exc)
            except DatabaseUnavailable as exc:
                self.metrics.polls.labels("database_unavailable").inc()
                log.warning("polling: database unavailable: %s", exc)
            except Exception:
                self.metrics.polls.labels("error").inc()
                log.exception("review poller: unexpected error")

    def _apply_loop(self) -> None:
        while not self.stop_event.is_set():
            if self.webhook is None:
                self.stop_event.wait(0.5)
                continue
            try:
                payload = self.webhook.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            for attempt in range(3):
                try:
                    self.handle_webhook(payload)
                    break
                except (DatabaseUnavailable, LabelStudioUnavailable) as exc:
                    log.warning("webhook delivery not applied yet (attempt %d): %s", attempt + 1, exc)
                    if self.stop_event.wait(1.0 * (attempt + 1)):
                        return
                except Exception:
                    log.exception("webhook delivery could not be applied; polling will retry it")
                    break

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        action = payload.get("action")
        if action == "ANNOTATIONS_DELETED":
            ids = [int(a["id"]) for a in payload.get("annotations") or [] if isinstance(a, dict) and "id" in a]
            self.applier.delete(ids)
        elif action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            task, annotation = payload.get("task"), payload.get("annotation")
            if isinstance(task, dict) and isinstance(annotation, dict):
                self.applier.apply(task, annotation)


# ------------------------------------------------------------------------------------------------------------
# composition
# ------------------------------------------------------------------------------------------------------------


class ReviewConfigError(RuntimeError):
    """The review loop cannot start with this configuration; the message says what to set."""


def champion_model_version(source: ModelSource) -> Callable[[], str | None]:
    """Reads the champion's model version (the registry's champion alias, or the bundle file; manifest only,
    cheap), re-read when the resolved file or its modification time changes."""
    from learner.model.manifest import BundleError, read_manifest

    cache: dict[str, Any] = {"key": None, "version": None}

    def version() -> str | None:
        try:
            path = source.resolve()
            key = (str(path), path.stat().st_mtime_ns)
        except Exception as exc:  # registry being rewritten, file replaced: keep the last known version
            log.debug("champion not readable right now: %s", exc)
            return cache["version"]  # type: ignore[no-any-return]
        if key != cache["key"]:
            try:
                cache["version"] = read_manifest(path)["model_version"]
                cache["key"] = key
            except BundleError as exc:
                log.warning("cannot read the champion's model version: %s", exc)
        return cache["version"]  # type: ignore[no-any-return]

    return version


def review_taxonomy(source: ModelSource) -> Taxonomy:
    """The champion's taxonomy (the labelling configuration is generated from it)."""
    from learner.lifecycle.registry import RegistryError
    from learner.model.manifest import BundleError, read_manifest

    try:
        path = source.resolve()
        return Taxonomy.from_dict(read_manifest(path)["taxonomy"], source=f"{path}#taxonomy")
    except (BundleError, RegistryError, OSError, LookupError) as exc:
        raise ReviewConfigError(
            f"the review loop takes its taxonomy from the champion bundle: {exc} "
            "(set SHELFSIGHT_MODEL_PATH or SHELFSIGHT_REGISTRY_DIR)"
        ) from None


def build_review_worker(
    settings: Settings,
    *,
    store: ProductStore | None = None,
    metrics: ReviewMetrics | None = None,
    worker_options: ReviewWorkerOptions | None = None,
) -> ReviewWorker:
    """The review worker from settings: product store (migrated), Label Studio client, taxonomy and model
    version from the champion bundle."""
    r: ReviewSettings = settings.review
    if r.label_studio_token is None:
        raise ReviewConfigError("set review.label_studio_token (SHELFSIGHT_REVIEW__LABEL_STUDIO_TOKEN)")
    champion = ModelSource(settings.model_path, settings.registry_dir)
    taxonomy = review_taxonomy(champion)
    if store is None:
        store = ProductStore(settings.database_url)
        store.migrate()
    review_store = ReviewStore(store)
    metrics = metrics or ReviewMetrics()
    client = LabelStudioClient(
        r.label_studio_url, r.label_studio_token.get_secret_value(), timeout_s=r.request_timeout_s
    )
    storage = r.local_storage_path or settings.fetch.file_root
    if (
        r.local_files_root is not None
        and storage is not None
        and not storage.resolve().is_relative_to(r.local_files_root.resolve())
    ):
        raise ReviewConfigError(
            f"review.local_storage_path {storage} must lie inside review.local_files_root {r.local_files_root} "
            "(Label Studio serves local files only under its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)"
        )
    project = ReviewProject(
        client,
        taxonomy,
        r.project_title,
        model_version=champion_model_version(champion),
        local_storage_path=storage.resolve() if r.local_files_root is not None and storage is not None else None,
    )
    tasks = TaskBuilder(r.local_files_root, storage if r.local_files_root is not None else None)
    sender = OutboxSender(
        review_store,
        project,
        tasks,
        metrics,
        batch=r.send_batch,
        retry_initial_s=r.retry_initial_s,
        retry_max_s=r.retry_max_s,
        max_attempts_rejected=r.max_attempts_rejected,
    )
    applier = AnnotationApplier(review_store, client, taxonomy, metrics)
    poller = AnnotationPoller(review_store, project, applier, metrics)
    options = worker_options or ReviewWorkerOptions(
        send_interval_s=r.send_interval_s,
        poll_interval_s=r.poll_interval_s,
        webhook_host=r.webhook_host,
        webhook_port=r.webhook_port or None,
        webhook_url=r.webhook_url,
    )
    secret = r.webhook_secret.get_secret_value() if r.webhook_secret is not None else None
    if options.webhook_port is not None and not secret:
        raise ReviewConfigError(
            "set review.webhook_secret (SHELFSIGHT_REVIEW__WEBHOOK_SECRET) for the webhook receiver, "
            "or review.webhook_port = 0 to rely on polling alone"
        )
    return ReviewWorker(
        store=review_store,
        client=client,
        taxonomy=taxonomy,
        project=project,
        sender=sender,
        applier=applier,
        poller=poller,
        metrics=metrics,
        options=options,
        webhook_secret=secret,
    )


class CapsSync:
    """Keeps a `ReviewCaps` in step with the outbox, which every replica writes to: at most every `every_s`, it
    reads when each product of the last day was routed and hands that to `caps.sync`. So N replicas share the
    caps instead of routing N times as much; between two reads a replica counts only its own routes.

    The read runs on the routing thread: a few milliseconds normally. A failed read (database outage) costs at
    most the store's connect timeout, is logged, never raised into the routing path, and retried after a minute at
    the earliest; meanwhile the replica keeps counting its own routes on top of the last read."""

    RETRY_AFTER_FAILURE_S = 60.0

    def __init__(
        self,
        caps: ReviewCaps,
        routed_since: Callable[[datetime], Sequence[datetime]],
        every_s: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.caps = caps
        self.routed_since = routed_since
        self.every = timedelta(seconds=every_s)
        self.clock = clock
        self._due: datetime | None = None
        self._lock = threading.Lock()

    def __call__(self, fail: bool = False) -> None:
        """Sync if due. `fail`: raise a failed read instead of logging it (at start-up, when a broken database
        should stop the daemon)."""
        now = self.clock()
        with self._lock:
            if self._due is not None and now < self._due:
                return
            try:
                routed = self.routed_since(now - timedelta(days=1))
            except DatabaseUnavailable as exc:
                if fail:
                    raise
                self._due = now + max(self.every, timedelta(seconds=self.RETRY_AFTER_FAILURE_S))
                log.warning(
                    "review caps: cannot read the outbox (%s); counting this replica's routes only, retry at %s",
                    exc,
                    self._due.isoformat(timespec="seconds"),
                )
                return
            self.caps.sync(routed)
            self._due = now + self.every


def build_review_router(
    settings: Settings,
    bundle: Any,
    store: ProductStore,
    metrics: ReviewRoutingMetrics,
    *,
    current_bundle: Callable[[], Any] | None = None,
    clock: Callable[[], datetime] = _utcnow,
) -> Callable[[Any, list[Any]], dict[str, Any] | None]:
    """The enrichment daemon's `ReviewRouter` from settings and the loaded bundle (its thresholds and taxonomy).

    `current_bundle` (optional) gives the bundle being served after a hot reload: a result from a model version
    not seen yet is routed with that bundle's thresholds and taxonomy, under the same caps and audit sampler. The
    caps start from what the outbox already holds for the last day, so a restart does not reset them."""
    from learner.review.policy import (
        AuditSample,
        BelowThreshold,
        Decision,
        GroupPolicy,
        RandomSample,
        ReviewPolicy,
        ReviewRouting,
        RoutingStrategy,
    )

    r = settings.review
    caps = ReviewCaps(per_hour=r.max_per_hour, per_day=r.max_per_day)
    sync_caps = CapsSync(caps, ReviewStore(store).routed_since, r.caps_sync_s, clock)
    sync_caps(fail=True)  # start from what the outbox holds: a restart does not reset the caps
    strategies: list[RoutingStrategy] = (
        [RandomSample(r.audit_rate, r.audit_seed)]
        if r.routing == "random"
        else [BelowThreshold(), AuditSample(r.audit_rate, r.audit_seed)]
    )

    def count(decision: Decision) -> None:
        if decision.routed and decision.reason:
            metrics.routed.labels(decision.reason).inc()
        elif decision.reason and decision.reason.startswith("capped:"):
            metrics.capped.labels(decision.reason.removeprefix("capped:")).inc()

    def routing_for(served: Any) -> ReviewRouting:
        policy = ReviewPolicy(
            served.taxonomy,
            served.thresholds,
            groups={name: GroupPolicy(g.review, g.threshold) for name, g in r.groups.items()},
            default_threshold=r.default_threshold,
            uncertainty=r.uncertainty,
            strategies=strategies,
            caps=caps,
        )
        return ReviewRouting(policy, clock, on_decision=count)

    try:
        latest = routing_for(bundle)
    except ValueError as exc:
        raise ReviewConfigError(f"review policy: {exc}") from None
    by_version: dict[str, ReviewRouting] = {bundle.model_version: latest}

    def route(result: Any, tags: list[Any]) -> dict[str, Any] | None:
        nonlocal latest
        sync_caps()
        routing = by_version.get(result.model_version)
        if routing is None and current_bundle is not None:
            served = current_bundle()
            if served.model_version == result.model_version:
                try:
                    routing = latest = by_version[served.model_version] = routing_for(served)
                except ValueError as exc:
                    log.error(
                        "review policy does not fit model %s (%s); routing with the previous one",
                        result.model_version,
                        exc,
                    )
        return (routing or latest)(result, tags)

    return route
