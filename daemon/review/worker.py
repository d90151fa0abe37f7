"""`ReviewWorker`: the review worker's threads (sender, poller, full reconcile, heartbeat, webhook apply) and one-pass
`sync` (CLI `review sync`, tests); `build_review_worker` wires the parts from settings, with the taxonomy and model
version taken from the champion bundle.

Claims: the worker registers its identity (`review.worker_id`) and start time before sending anything, which
releases what an earlier process of the same identity had claimed (killed mid-send), and heartbeats every
`heartbeat_interval_s` so other workers take its claims over only once it has been silent for `claim_stale_s`.

What it must not do: route products (the enrichment daemon does, daemon/routing.py), or log the Label Studio token
or the webhook secret.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connectors.db import AuditStore, ClaimOwner, DatabaseUnavailable, ProductStore, ReviewStore
from connectors.labelstudio import LabelStudioClient, LabelStudioError, LabelStudioUnavailable
from connectors.retry import RetryAborted, RetryPolicy
from daemon.config import ReviewConfigError, ReviewSettings, Settings
from daemon.metrics import ReviewMetrics
from daemon.reload import ModelSource
from daemon.review.applier import AnnotationApplier
from daemon.review.audit import AutofillAudit, champion_reader
from daemon.review.poller import CATCH_UP_TASKS, AnnotationPoller
from daemon.review.project import ReviewProject
from daemon.review.reconcile import FullReconcile
from daemon.review.sender import OutboxSender, SendReport, TaskBuilder
from daemon.review.webhook import WebhookReceiver
from learner.model.taxonomy import Taxonomy

log = logging.getLogger("shelfsight.review")

# a webhook delivery the database or Label Studio could not take yet: two more tries, 1 s and 2 s later (the poller
# picks up whatever is still missing)
WEBHOOK_RETRIES = RetryPolicy(initial_s=1.0, max_s=2.0, attempts=3)


@dataclass
class ReviewWorkerOptions:
    send_interval_s: float = 2.0
    poll_interval_s: float = 30.0
    reconcile_interval_s: float | None = None  # full reconcile this often (None: never) ...
    reconcile_at_start: bool = True  # ... and once at start-up
    heartbeat_interval_s: float = 2.0
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
    reconciler: FullReconcile | None = None
    owner: ClaimOwner | None = None  # claims carry it once `start` registered it (one-pass `sync` claims without)
    audit: AutofillAudit | None = None  # the audited precision of auto-filled values, measured on the stats refresh
    stop_event: threading.Event = field(default_factory=threading.Event)
    # set after a poll that read a catch-up's worth of tasks (or by `stop`): the reconcile runs now, not at its interval
    reconcile_soon: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> ReviewWorker:
        """Register this process (taking over its identity's earlier claims), start the receiver (so the project's
        webhook can point at it) and the sender, poller, reconcile, heartbeat and processing threads. Label Studio
        may be down: everything retries; the database must be up to start."""
        self.register()
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
            ("review-reconcile", self._reconcile_loop),
            ("review-heartbeat", self._heartbeat_loop),
            ("review-apply", self._apply_loop),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stop_event.set()
        self.reconcile_soon.set()  # wakes the reconcile thread
        if self.webhook is not None:
            self.webhook.stop()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._threads.clear()
        owner, self.sender.owner = self.sender.owner, None
        if owner is not None:
            try:
                self.store.unregister_worker(owner)
            except DatabaseUnavailable as exc:
                log.warning("could not release this worker's claims (they expire by themselves): %s", exc)

    def register(self) -> None:
        """This process is now its identity's live incarnation; claims of the earlier one are released. From now
        on the sender's claims carry this process."""
        owner = self.owner
        if owner is None:
            return
        released = self.store.register_worker(owner)
        self.sender.owner = owner
        self.metrics.claims_taken_over.inc(released)
        if released:
            log.warning(
                "worker %s took over %d outbox claim(s) of its previous process (stopped mid-send)",
                owner.worker_id,
                released,
            )
        log.info("review worker %s started at %s", owner.worker_id, owner.started_at.isoformat())

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
        if self.audit is not None:
            self.audit.maybe_run(force=True)
        return report

    def refresh_gauges(self) -> None:
        if self.audit is not None:
            self.audit.maybe_run()  # when review.audit_interval_s has passed
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
                seen = self.poller.poll_once()
                reconciles = self.reconciler is not None and self.options.reconcile_interval_s is not None
                if seen >= CATCH_UP_TASKS and reconciles:
                    # A listing this long is a catch-up (the worker was down, or webhooks were lost). Catch-ups once
                    # skipped answers (Label Studio re-reads a page's tasks after paging them; fixed in the listing,
                    # docs/review-loop.md); the reconcile is cheap and its recovered counter shows anything that
                    # still slips through, so it follows every catch-up.
                    log.info("the poll read %d tasks (a catch-up): a full reconcile follows", seen)
                    self.reconcile_soon.set()
            except LabelStudioUnavailable as exc:
                self.metrics.polls.labels("unavailable").inc()
                log.warning("polling Label Studio failed: %s", exc)
            except DatabaseUnavailable as exc:
                self.metrics.polls.labels("database_unavailable").inc()
                log.warning("polling: database unavailable: %s", exc)
            except Exception:
                self.metrics.polls.labels("error").inc()
                log.exception("review poller: unexpected error")

    def _reconcile_loop(self) -> None:
        interval = self.options.reconcile_interval_s
        if interval is None or self.reconciler is None:
            return
        # at start-up, then every interval (a failed pass is tried again after a poll interval)
        delay = 0.0 if self.options.reconcile_at_start else interval
        while not self.stop_event.is_set():
            self.reconcile_soon.wait(delay)
            self.reconcile_soon.clear()
            if self.stop_event.is_set():
                return
            delay = interval
            try:
                self.reconciler.run_once()
            except LabelStudioUnavailable as exc:
                self.metrics.reconciles.labels("unavailable").inc()
                log.warning("reconcile: Label Studio unavailable: %s", exc)
                delay = min(interval, self.options.poll_interval_s)
            except DatabaseUnavailable as exc:
                self.metrics.reconciles.labels("database_unavailable").inc()
                log.warning("reconcile: database unavailable: %s", exc)
                delay = min(interval, self.options.poll_interval_s)
            except Exception:
                self.metrics.reconciles.labels("error").inc()
                log.exception("review reconcile: unexpected error")

    def _heartbeat_loop(self) -> None:
        owner = self.owner
        if owner is None:
            return
        while not self.stop_event.wait(self.options.heartbeat_interval_s):
            try:
                if not self.store.heartbeat(owner):
                    log.error(
                        "another review worker runs with this worker's identity %r: it has taken this worker's "
                        "claims over; give every worker its own review.worker_id",
                        owner.worker_id,
                    )
            except DatabaseUnavailable as exc:
                log.warning("heartbeat: database unavailable: %s", exc)
            except Exception:
                log.exception("review heartbeat: unexpected error")

    def _apply_loop(self) -> None:
        while not self.stop_event.is_set():
            if self.webhook is None:
                self.stop_event.wait(0.5)
                continue
            try:
                payload = self.webhook.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                WEBHOOK_RETRIES.call(
                    functools.partial(self.handle_webhook, payload),
                    retry_on=(DatabaseUnavailable, LabelStudioUnavailable),
                    abort=self.stop_event,
                    on_failure=lambda exc: log.warning("webhook delivery not applied yet: %s", exc),
                )
            except RetryAborted:
                return
            except (DatabaseUnavailable, LabelStudioUnavailable):
                log.warning(
                    "webhook delivery not applied after %d tries; the poller will pick it up", WEBHOOK_RETRIES.attempts
                )
            except Exception:
                log.exception("webhook delivery could not be applied; polling will retry it")

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        action = payload.get("action")
        if action == "ANNOTATIONS_DELETED":
            ids = [int(a["id"]) for a in payload.get("annotations") or [] if isinstance(a, dict) and "id" in a]
            self.applier.delete(ids)
        elif action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            task, annotation = payload.get("task"), payload.get("annotation")
            if isinstance(task, dict) and isinstance(annotation, dict):
                self.applier.apply(task, annotation)


def champion_model_version(source: ModelSource) -> Callable[[], str | None]:
    """Reads the champion's model version (the registry's champion alias, or the bundle file; manifest only,
    cheap), re-read when the resolved file or its modification time changes."""
    from learner.model.manifest import BundleError, read_manifest

    cached_key: tuple[str, int] | None = None
    cached_version: str | None = None

    def version() -> str | None:
        nonlocal cached_key, cached_version
        try:
            path = source.resolve()
            key = (str(path), path.stat().st_mtime_ns)
        except Exception as exc:  # registry being rewritten, file replaced: keep the last known version
            log.debug("champion not readable right now: %s", exc)
            return cached_version
        if key != cached_key:
            try:
                model_version = read_manifest(path)["model_version"]
                cached_version = None if model_version is None else str(model_version)
                cached_key = key
            except BundleError as exc:
                log.warning("cannot read the champion's model version: %s", exc)
        return cached_version

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


def review_masks(source: ModelSource) -> bool:
    """Whether the champion's detector returns instance masks (its labelling configuration then lets annotators
    outline objects); False when it has no detector or its manifest cannot be read (review_taxonomy says why)."""
    from learner.lifecycle.registry import RegistryError
    from learner.model.manifest import BundleError, detector_has_masks, read_manifest

    try:
        return detector_has_masks(read_manifest(source.resolve()).get("detector"))
    except (BundleError, RegistryError, OSError, LookupError):
        return False


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
    masks = review_masks(champion)
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
        masks=masks,
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
        claim_stale_s=r.claim_stale_s,
    )
    applier = AnnotationApplier(review_store, client, taxonomy, metrics)
    poller = AnnotationPoller(review_store, project, applier, metrics)
    options = worker_options or ReviewWorkerOptions(
        send_interval_s=r.send_interval_s,
        poll_interval_s=r.poll_interval_s,
        reconcile_interval_s=r.reconcile_interval_s,
        reconcile_at_start=r.reconcile_at_start,
        heartbeat_interval_s=r.heartbeat_interval_s,
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
        reconciler=FullReconcile(review_store, project, applier, metrics),
        owner=ClaimOwner(r.worker_id, datetime.now(UTC)),
        audit=AutofillAudit(
            AuditStore(store),
            review_store,
            metrics,
            champion_reader(champion),
            worker_id=r.worker_id,
            interval_s=r.audit_interval_s,
            level=r.audit_level,
            min_audited=r.suspend_min_audited,
            suspend=r.suspend_autofill,
        ),
    )
