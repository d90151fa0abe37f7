"""Metrics of the enrichment daemon (`shelfsight run`): events, stages, batches, retries, the model in service;
`PipelineMetrics` is the middleware its pipeline stages call."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import TracebackType

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from connectors.records import TITLE_PHOTO_CONFLICT, AttributeValue
from daemon.metrics.shift import PhotoShiftMonitor
from learner.inference.engine import ImageTags
from learner.inference.product_decision import FROM_BOTH, FROM_PHOTOS, FROM_TITLE
from learner.model.shift_guard import ShiftGuard

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
STAGES = ("queue", "fetch", "decode", "inference", "write")
RETRY_OPERATIONS = ("fetch", "database", "dead_letter", "commit")
DECIDED_FROM = (FROM_BOTH, FROM_TITLE, FROM_PHOTOS)  # what a value decided with a title was decided from


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
        self.shift = PhotoShiftMonitor(r)  # the shift guard's verdicts and the drift figure
        # -- the product decision with the title (learner/inference/product_decision.py) ------------------------
        self.title_decisions = Counter(
            "shelfsight_title_decisions_total",
            "Single-choice values decided with the product's title, by group and what they were decided from "
            "(photos+title: fused; title: no familiar photo).",
            ["group", "decided_from"],
            registry=r,
        )
        self.title_photo_conflicts = Counter(
            "shelfsight_title_photo_conflicts_total",
            "Products whose title and photos confidently disagreed on a group: nothing of the group auto-filled, "
            "both readings kept, the product routed to review (reason title_photo_conflict).",
            ["group"],
            registry=r,
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

    def set_model(self, version: str, backbone: str, taxonomy: str, groups: Iterable[str] = ()) -> None:
        """The model now serving; `groups`: its single-choice groups, whose title decision and conflict counters
        start at zero (a bundle that reads no titles exports zeros: no product was decided with a title), so the
        conflict share of every group exists, and its alert is evaluated, from the first scrape."""
        self.model_info.info({"version": version, "backbone": backbone, "taxonomy": taxonomy})
        for group in groups:
            self.title_photo_conflicts.labels(group)
            for decided_from in DECIDED_FROM:
                self.title_decisions.labels(group, decided_from)


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

    def photos_tagged(self, tags: Iterable[ImageTags], guard: ShiftGuard | None) -> None:
        """The photos of one product were tagged by a model whose shift guard is `guard`."""
        self._m.shift.observe(tags, guard)

    def decided(self, attributes: Iterable[AttributeValue]) -> None:
        """The values of one product: those decided with its title, and its groups where title and photos
        conflicted."""
        for a in attributes:
            if a.readings is not None:
                self._m.title_decisions.labels(a.attribute, str(a.readings.get("decided_from"))).inc()
            if a.withheld_by == TITLE_PHOTO_CONFLICT:
                self._m.title_photo_conflicts.labels(a.attribute).inc()

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
