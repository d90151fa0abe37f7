"""Prometheus metrics of the ShelfSight services: the one place where metric names are defined.

Every metric lives in a `ServiceMetrics` object built on its own `CollectorRegistry` (no module-global
registry), so tests can build several and the daemon exports exactly what it owns. The Grafana dashboard
and the alert rules in `deploy/` refer to these names; `tests/deploy` checks they exist.

Naming follows Prometheus conventions: `shelfsight_` prefix, base units (seconds, bytes), `_total` for
counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from learner.evaluation.gate import VETO_REASONS, vetoed_win_streak, vetoes_of

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
STAGES = ("queue", "fetch", "decode", "inference", "write")
RETRY_OPERATIONS = ("fetch", "database", "dead_letter", "commit")


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # -- event flow -----------------------------------------------------------------------------
        self.events_consumed = Counter(
            "shelfsight_events_consumed_total", "Events read from the event source.", ["source"], registry=r
        )
        self.events_processed = Counter(
            "shelfsight_events_processed_total",
            "Events whose results were committed to the product database.",
            ["outcome"],  # tagged | skipped_duplicate
            registry=r,
        )
        self.events_failed = Counter(
            "shelfsight_events_failed_total",
            "Events that failed, by reason (permanent failures are dead-lettered, transient ones retried).",
            ["reason", "kind"],  # kind: permanent | transient
            registry=r,
        )
        self.dead_letters = Counter(
            "shelfsight_dead_letters_total", "Events sent to the dead-letter topic.", ["reason"], registry=r
        )
        self.images_processed = Counter(
            "shelfsight_images_processed_total",
            "Images tagged; rate() of it is images per second.",
            registry=r,
        )
        self.in_flight = Gauge("shelfsight_in_flight_events", "Events consumed but not yet committed.", registry=r)
        self.consumer_lag = Gauge(
            "shelfsight_consumer_lag_messages",
            "Messages between the committed offset and the end of the partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.paused_partitions = Gauge(
            "shelfsight_paused_partitions", "Partitions paused for backpressure.", registry=r
        )
        # -- where time goes ------------------------------------------------------------------------
        self.stage_seconds = Histogram(
            "shelfsight_stage_duration_seconds",
            "Time per item in each pipeline stage: queue, fetch, decode, inference (per batch), write (per batch).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.event_latency = Histogram(
            "shelfsight_event_latency_seconds",
            "From an event being consumed to its results being committed.",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "shelfsight_batch_size_images", "Images per inference batch.", buckets=BATCH_BUCKETS, registry=r
        )
        # -- model ----------------------------------------------------------------------------------
        self.model_info = Info("shelfsight_model", "The model version serving inference.", registry=r)
        self.model_reloads = Counter(
            "shelfsight_model_reloads_total", "Hot reloads of the model, by outcome.", ["outcome"], registry=r
        )
        self.retries = Counter(
            "shelfsight_retries_total", "Retries of transient failures, by operation.", ["operation"], registry=r
        )
        self.up = Gauge("shelfsight_ready", "1 when the service is ready to process events.", registry=r)

        # known label values start at zero, so every series exists (and rate() works) from the first scrape
        for outcome in ("tagged", "skipped_duplicate"):
            self.events_processed.labels(outcome)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for operation in RETRY_OPERATIONS:
            self.retries.labels(operation)
        for outcome in ("loaded", "failed"):
            self.model_reloads.labels(outcome)

    def set_model(self, version: str, backbone: str, taxonomy: str) -> None:
        self.model_info.info({"version": version, "backbone": backbone, "taxonomy": taxonomy})


class StageTimer:
    """`with timer:` observes the block's duration in one histogram series (on errors too, unless told not to)."""

    __slots__ = ("_histogram", "_on_error", "_started")

    def __init__(self, histogram: Histogram, on_error: bool) -> None:
        self._histogram = histogram
        self._on_error = on_error
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.monotonic()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None or self._on_error:
            self._histogram.observe(time.monotonic() - self._started)


class PipelineMetrics:
    """The enrichment pipeline's metrics as middleware (dramatiq style): `daemon.pipeline.Enricher` calls these
    hooks around its stages and at its turning points, and its stages hold no metric code.

    Label children of known values are bound once here, so the hot path (per image: queue, fetch, decode) does
    no label lookups. Timestamps are `time.monotonic()` values.
    """

    def __init__(self, metrics: ServiceMetrics, source_name: str) -> None:
        self._m = metrics
        self._source_name = source_name
        self._stages = {stage: metrics.stage_seconds.labels(stage) for stage in STAGES}
        self._retries = {operation: metrics.retries.labels(operation) for operation in RETRY_OPERATIONS}
        self._tagged = metrics.events_processed.labels("tagged")
        self._duplicates = metrics.events_processed.labels("skipped_duplicate")

    # -- around stages -------------------------------------------------------------------------------
    def stage(self, name: str, *, on_error: bool = True) -> StageTimer:
        """Times a stage: `with metrics.stage("fetch"): ...` (`on_error=False`: only runs that returned)."""
        return StageTimer(self._stages[name], on_error)

    def waited(self, since: float, now: float) -> None:
        """An event or image waited in a queue from `since` to `now`."""
        self._stages["queue"].observe(now - since)

    def batch_inferred(self, images: int) -> None:
        self._m.batch_size.observe(images)
        self._m.images_processed.inc(images)

    def written(self, written: int, duplicates: int) -> None:
        """A group of results committed to the database: `written` new, `duplicates` already there."""
        self._tagged.inc(written)
        if duplicates:
            self._duplicates.inc(duplicates)

    def dead_lettered(self, reason: str) -> None:
        self._m.events_failed.labels(reason, "permanent").inc()
        self._m.dead_letters.labels(reason).inc()

    def finished(self, consumed_at: float, now: float) -> None:
        """An event is done (written or dead-lettered) `now`."""
        self._m.event_latency.observe(now - consumed_at)

    # -- failures and retries ------------------------------------------------------------------------
    def transient_failure(self, reason: str) -> None:
        self._m.events_failed.labels(reason, "transient").inc()

    def retried(self, operation: str) -> None:
        """`operation` (one of RETRY_OPERATIONS) failed transiently and will be tried again."""
        self._retries[operation].inc()

    # -- the consumer (main thread) ------------------------------------------------------------------
    def consumed(self, events: int) -> None:
        if events:
            self._m.events_consumed.labels(self._source_name).inc(events)

    def in_flight(self, events: int) -> None:
        self._m.in_flight.set(events)

    def paused(self, partitions: int) -> None:
        self._m.paused_partitions.set(partitions)

    def lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        for (topic, partition), lag in lags.items():
            self._m.consumer_lag.labels(topic, str(partition)).set(lag)


REVIEW_DELAY_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0)


class ReviewRoutingMetrics:
    """The routing decisions of the review loop, made and exported by the enrichment daemon (`shelfsight run`):
    pass it the daemon's registry (`ServiceMetrics.registry`) so they appear on its /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.routed = Counter(
            "shelfsight_review_routed_total",
            "Products routed to human review, by reason (low_confidence, audit, random).",
            ["reason"],
            registry=r,
        )
        self.capped = Counter(
            "shelfsight_review_capped_total",
            "Products a routing strategy chose but a per-hour or per-day cap held back, by strategy.",
            ["reason"],
            registry=r,
        )


class ReviewMetrics:
    """Metrics of the review worker (`shelfsight review run`), on their own registry: the outbox, Label Studio,
    annotations, time to annotation and model-human agreement."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # -- outbox and Label Studio (review worker) ------------------------------------------------
        self.outbox_pending = Gauge(
            "shelfsight_review_outbox_pending", "Routed products not yet sent to Label Studio.", registry=r
        )
        self.backlog = Gauge(
            "shelfsight_review_backlog_tasks",
            "Label Studio tasks sent and not yet annotated (nor skipped).",
            registry=r,
        )
        self.failed = Gauge(
            "shelfsight_review_outbox_failed", "Routed products Label Studio refused for good.", registry=r
        )
        self.tasks_sent = Counter("shelfsight_review_tasks_sent_total", "Tasks created in Label Studio.", registry=r)
        self.send_errors = Counter(
            "shelfsight_review_send_errors_total",
            "Failed attempts to send tasks, by kind (unavailable: retried later; rejected: Label Studio said no).",
            ["kind"],
            registry=r,
        )
        self.annotations = Counter(
            "shelfsight_review_annotations_total",
            "Annotations received, by outcome (applied, unchanged, skipped, deleted, ignored).",
            ["outcome"],
            registry=r,
        )
        self.tasks_completed = Counter(
            "shelfsight_review_tasks_completed_total",
            "Tasks whose first annotation (or skip) arrived.",
            registry=r,
        )
        self.webhooks = Counter(
            "shelfsight_review_webhooks_total",
            "Webhook deliveries, by outcome (accepted, rejected_secret, bad_request, unavailable, ignored).",
            ["outcome"],
            registry=r,
        )
        self.polls = Counter(
            "shelfsight_review_polls_total", "Incremental polls of Label Studio, by outcome.", ["outcome"], registry=r
        )
        self.annotation_delay = Histogram(
            "shelfsight_review_annotation_delay_seconds",
            "From a task being sent to Label Studio to its first annotation.",
            buckets=REVIEW_DELAY_BUCKETS,
            registry=r,
        )
        self.agreement = Gauge(
            "shelfsight_review_agreement_ratio",
            "Share of reviewed values where the annotator kept the model's value, per attribute group.",
            ["group"],
            registry=r,
        )
        self.corrections = Counter(
            "shelfsight_review_corrections_total",
            "Reviewed attribute values, by group and whether the model was right.",
            ["group", "model_was_right"],
            registry=r,
        )
        self.label_studio_up = Gauge(
            "shelfsight_review_label_studio_up", "1 when Label Studio answered the last request.", registry=r
        )
        # -- periodic full reconcile (daemon/review/reconcile.py) and claims ---------------------------
        self.reconcile_recovered = Counter(
            "shelfsight_review_reconcile_recovered_total",
            "Annotators' answers the periodic reconcile found missing from the database, by kind (recorded: an "
            "answer or edit recorded; withdrawn: a deletion applied). Above zero, webhooks and polls missed them.",
            ["kind"],
            registry=r,
        )
        self.reconciles = Counter(
            "shelfsight_review_reconciles_total",
            "Full reconciles of Label Studio's tasks with the database, by outcome (ok, unavailable, "
            "database_unavailable, error).",
            ["outcome"],
            registry=r,
        )
        self.reconcile_differing = Gauge(
            "shelfsight_review_reconcile_differing_tasks",
            "Tasks the last full reconcile found different from the database and read whole.",
            registry=r,
        )
        self.claims_taken_over = Counter(
            "shelfsight_review_claims_taken_over_total",
            "Outbox claims of this worker's earlier incarnation (a killed process) released at start.",
            registry=r,
        )
        for kind in ("recorded", "withdrawn"):
            self.reconcile_recovered.labels(kind)
        for outcome in ("ok", "unavailable", "database_unavailable", "error"):
            self.reconciles.labels(outcome)


RUN_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)
RUN_OUTCOMES = ("promoted", "rejected", "failed", "skipped", "locked")


class LearnerMetrics:
    """Metrics of the learner (`shelfsight learn`): retraining runs, their duration, holdout figures per model
    version and promotion decisions. Its own registry, like `ServiceMetrics`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "shelfsight_learner_runs_total",
            "Retraining runs by outcome: promoted, rejected, failed, skipped (nothing new), locked (another "
            "learner was running).",
            ["outcome"],
            registry=r,
        )
        self.run_seconds = Histogram(
            "shelfsight_learner_run_duration_seconds",
            "Wall time of retraining runs that trained (promoted, rejected or failed).",
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.last_run = Gauge(
            "shelfsight_learner_last_run_timestamp_seconds",
            "Unix time of the last run that ended with this outcome.",
            ["outcome"],
            registry=r,
        )
        self.decisions = Counter(
            "shelfsight_learner_promotion_decisions_total",
            "Promotion gate decisions on challengers: promoted or rejected.",
            ["decision"],
            registry=r,
        )
        self.gate_difference = Gauge(
            "shelfsight_learner_gate_difference",
            "Last gate decision: challenger minus champion on the primary metric (estimate) and the bounds of its "
            "paired-bootstrap confidence interval (low, high).",
            ["bound"],
            registry=r,
        )
        self.gate_wins = Counter(
            "shelfsight_learner_gate_significant_wins_total",
            "Gate decisions where the challenger's gain on the primary metric was significant (the lower bound of "
            "its paired-bootstrap interval above zero), promoted or not.",
            registry=r,
        )
        self.gate_vetoes = Counter(
            "shelfsight_learner_gate_vetoes_total",
            "Challengers not promoted, by reason: not_significant, group_regression, detection_regression, "
            "training_failed, evaluation_failed, evaluation_missing, other (a decision with two reasons counts "
            "under both).",
            ["reason"],
            registry=r,
        )
        self.gate_vetoed_wins = Gauge(
            "shelfsight_learner_gate_vetoed_wins_consecutive",
            "Consecutive gate decisions that rejected a significant winner for a regression (a promotion or a "
            "challenger without a significant win resets it; failed runs leave it as it is). Read from the "
            "registry's decisions when this replica becomes the scheduler leader; 0 on standby replicas.",
            registry=r,
        )
        self.holdout = Gauge(
            "shelfsight_learner_holdout_score",
            "Holdout figures of the models of the last decision, by version, role (champion or challenger), "
            "attribute group (or 'summary', or 'detection') and metric (top1, macro_f1, ece, mean_top1, mean_macro_f1; "
            "map, map_50, map_75 for detection).",
            ["version", "role", "group", "metric"],
            registry=r,
        )
        self.running = Gauge("shelfsight_learner_running", "1 while this learner runs a retraining.", registry=r)
        self.leader = Gauge(
            "shelfsight_learner_scheduler_leader",
            "1 when this replica holds the scheduler lock and runs the retraining jobs (0: standby).",
            registry=r,
        )
        self.champion = Info("shelfsight_learner_champion", "The registry's champion model version.", registry=r)
        self.new_corrected_products = Gauge(
            "shelfsight_learner_new_corrected_products",
            "Products with human values newer than the last completed run: what the corrections trigger counts "
            "(a run starts at learner.min_corrected_products). Read from the database at each scrape.",
            registry=r,
        )
        self.new_human_values = Gauge(
            "shelfsight_learner_new_human_values",
            "Human attribute values newer than the last completed run (several per product). Read at each scrape.",
            registry=r,
        )
        self.min_corrected_products = Gauge(
            "shelfsight_learner_min_corrected_products",
            "The corrections trigger's threshold (learner.min_corrected_products).",
            registry=r,
        )
        for outcome in RUN_OUTCOMES:
            self.runs.labels(outcome)
        for decision in ("promoted", "rejected"):
            self.decisions.labels(decision)
        for reason in VETO_REASONS:
            self.gate_vetoes.labels(reason)
        self._vetoed_wins = 0

    def seed_gate_streak(self, decisions: Iterable[Mapping[str, Any]]) -> None:
        """Set the consecutive-vetoed-winners gauge from recorded decisions (the registry's, oldest first)."""
        self._vetoed_wins = vetoed_win_streak(decisions)
        self.gate_vetoed_wins.set(self._vetoed_wins)

    def reset_gate_streak(self) -> None:
        """A standby replica exports 0: only the leader's figure counts."""
        self._vetoed_wins = 0
        self.gate_vetoed_wins.set(0)

    def track_new_corrections(self, read: Callable[[], tuple[int, int]], threshold: int) -> None:
        """Export `read()` = (new corrected products, new human values) at each scrape; NaN when it fails (the
        database is down), so an outage never breaks the scrape."""
        self.min_corrected_products.set(threshold)

        def read_one(index: int) -> Callable[[], float]:
            def value() -> float:
                try:
                    return float(read()[index])
                except Exception:
                    return float("nan")

            return value

        self.new_corrected_products.set_function(read_one(0))
        self.new_human_values.set_function(read_one(1))

    def observe_outcome(self, outcome: dict[str, Any], now: float | None = None) -> None:
        """Record one run's outcome (`learner.lifecycle.retrain.RunOutcome.to_dict()`)."""
        status = str(outcome.get("status", "failed"))
        self.runs.labels(status).inc()
        self.last_run.labels(status).set(now if now is not None else time.time())
        if status in ("promoted", "rejected", "failed"):
            self.run_seconds.observe(float(outcome.get("duration_s") or 0.0))
        if status in ("promoted", "rejected"):
            self.decisions.labels(status).inc()
        decision = outcome.get("decision") or {}
        if status in ("promoted", "rejected") and decision:
            if (decision.get("bootstrap") or {}).get("low", 0) > 0:
                self.gate_wins.inc()
            for reason in vetoes_of(decision):
                self.gate_vetoes.labels(reason if reason in VETO_REASONS else "other").inc()
            self._vetoed_wins = vetoed_win_streak([decision], start=self._vetoed_wins)
            self.gate_vetoed_wins.set(self._vetoed_wins)
        boot = decision.get("bootstrap") or {}
        for bound, key in (("estimate", "difference"), ("low", "low"), ("high", "high")):
            if boot.get(key) is not None:
                self.gate_difference.labels(bound).set(float(boot[key]))
        if decision:
            self.holdout.clear()  # only the versions of the last decision: the label set stays small
        for role in ("champion", "challenger"):
            figures = outcome.get(f"{role}_holdout")
            version = outcome.get(role)
            if not figures or not version:
                continue
            for metric, value in (figures.get("summary") or {}).items():
                if value is not None:
                    self.holdout.labels(version, role, "summary", metric).set(float(value))
            for group, values in (figures.get("groups") or {}).items():
                for metric in ("top1", "macro_f1", "ece", "micro_f1"):
                    if values.get(metric) is not None:
                        self.holdout.labels(version, role, group, metric).set(float(values[metric]))
            for metric, value in (figures.get("detection") or {}).items():
                if metric.startswith("map") and value is not None:
                    self.holdout.labels(version, role, "detection", metric).set(float(value))
