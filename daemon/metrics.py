"""Prometheus metrics of the ShelfSight services: the one place where metric names are defined.

Every metric lives in a `ServiceMetrics` object built on its own `CollectorRegistry` (no module-global
registry), so tests can build several and the daemon exports exactly what it owns. The Grafana dashboard
and the alert rules in `deploy/` refer to these names; `tests/deploy` checks they exist.

Naming follows Prometheus conventions: `shelfsight_` prefix, base units (seconds, bytes), `_total` for
counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
STAGES = ("queue", "fetch", "decode", "inference", "write")


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
        for operation in ("fetch", "database", "dead_letter", "commit"):
            self.retries.labels(operation)
        for outcome in ("loaded", "failed"):
            self.model_reloads.labels(outcome)

    def set_model(self, version: str, backbone: str, taxonomy: str) -> None:
        self.model_info.info({"version": version, "backbone": backbone, "taxonomy": taxonomy})
