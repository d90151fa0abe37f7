"""The enrichment daemon's review routing hook (`build_review_router`): from settings and the served model bundle,
the `ReviewRouter` that decides, product by product, whether a human should look at the model's output, and hands
the outbox payload to the product store. `CapsSync` keeps the review caps in step with the outbox, so every daemon
replica shares one budget.

Used by the enrichment daemon only (daemon/service.py); the review worker that sends the outbox to Label Studio is
`daemon/review/`. What it must not do: talk to Label Studio, or raise into the routing path for a database outage
(the caps fall back to this replica's own count).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from connectors.db import DatabaseUnavailable, ProductStore, ReviewStore
from connectors.records import OutboxPayload, ProductResult
from daemon.config import ReviewConfigError, Settings
from daemon.metrics import ReviewRoutingMetrics
from daemon.pipeline import ReviewRouter
from learner.inference.engine import ImageTags
from learner.model.bundle import ModelBundle
from learner.model.manifest import BundleInfo
from learner.model.taxonomy import Taxonomy
from learner.review.caps import ReviewCaps
from learner.review.diversity import ClassBalanced, ClusterMargin
from learner.review.policy import (
    AuditSample,
    BelowThreshold,
    Decision,
    GroupPolicy,
    RandomSample,
    ReviewPolicy,
    RoutingStrategy,
    TitlePhotoConflict,
    UnfamiliarPhoto,
)
from learner.review.routing import ReviewRouting

log = logging.getLogger("shelfsight.review")


def _utcnow() -> datetime:
    return datetime.now(UTC)


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


def routing_strategies(settings: Settings, taxonomy: Taxonomy) -> list[RoutingStrategy]:
    """The strategies `review.routing` names, in order. random: a uniform sample of `audit_rate` of all products,
    nothing else. uncertainty, class_balanced, cluster_margin: unfamiliar photos, title-photo conflicts, the
    low-confidence products (ranked most uncertain first, or cycling over predicted classes or prediction-space
    clusters: learner/review/diversity.py), then the audit sample, which stays a separate random sample of the
    accepted products whatever ranks the learning sample."""
    r = settings.review
    if r.routing == "random":
        return [RandomSample(r.audit_rate, r.audit_seed)]
    learning: RoutingStrategy = (
        ClassBalanced(taxonomy)
        if r.routing == "class_balanced"
        else ClusterMargin(taxonomy)
        if r.routing == "cluster_margin"
        else BelowThreshold()
    )
    return [
        UnfamiliarPhoto(),
        TitlePhotoConflict(),
        learning,
        AuditSample(r.audit_rate, r.audit_seed, r.suspended_audit_rate),
    ]


def build_review_router(
    settings: Settings,
    bundle: ModelBundle | BundleInfo,
    store: ProductStore,
    metrics: ReviewRoutingMetrics,
    *,
    current_bundle: Callable[[], ModelBundle | BundleInfo] | None = None,
    clock: Callable[[], datetime] = _utcnow,
) -> ReviewRouter:
    """The enrichment daemon's `ReviewRouter` from settings and the loaded bundle (its thresholds and taxonomy).

    `current_bundle` (optional) gives the bundle being served after a hot reload: a result from a model version
    not seen yet is routed with that bundle's thresholds and taxonomy, under the same caps and audit sampler. The
    caps start from what the outbox already holds for the last day, so a restart does not reset them."""
    r = settings.review
    caps = ReviewCaps(per_hour=r.max_per_hour, per_day=r.max_per_day)
    sync_caps = CapsSync(caps, ReviewStore(store).routed_since, r.caps_sync_s, clock)
    sync_caps(fail=True)  # start from what the outbox holds: a restart does not reset the caps
    try:
        strategies = routing_strategies(settings, bundle.taxonomy)
    except ValueError as exc:
        raise ReviewConfigError(f"review routing {r.routing!r}: {exc}") from None

    def count(decision: Decision) -> None:
        if decision.routed and decision.reason:
            metrics.routed.labels(decision.reason).inc()
        elif decision.reason and decision.reason.startswith("capped:"):
            metrics.capped.labels(decision.reason.removeprefix("capped:")).inc()

    def routing_for(served: ModelBundle | BundleInfo) -> ReviewRouting:
        policy = ReviewPolicy(
            served.taxonomy,
            served.thresholds,
            groups={name: GroupPolicy(g.review, g.threshold) for name, g in r.groups.items()},
            default_threshold=r.default_threshold,
            uncertainty=r.uncertainty,
            strategies=strategies,
            caps=caps,
            autofill_thresholds=served.autofill_thresholds,
        )
        return ReviewRouting(policy, clock, on_decision=count)

    try:
        latest = routing_for(bundle)
    except ValueError as exc:
        raise ReviewConfigError(f"review policy: {exc}") from None
    by_version: dict[str, ReviewRouting] = {bundle.model_version: latest}

    def route(result: ProductResult, tags: list[ImageTags]) -> OutboxPayload | None:
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
