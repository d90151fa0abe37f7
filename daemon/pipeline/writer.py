"""The pipeline's writer thread (`ResultWriter`): finished events in, database rows and dead letters out, then the
events reported done to the consumer (which commits their offsets).

For a group of finished events it builds each event's result (its images merged, `daemon.pipeline.merge`) and asks
the review router whether a person should look at it, writes all results in one transaction of a few set-based
statements, and dead-letters the permanent failures (waiting for the broker's acknowledgement). The database or the
broker being down is waited for with `connectors.retry`'s backoff, never dead-lettered: nothing is reported done
before it is durable.

What it must not do: touch the source (offsets are the consumer's), fetch or infer.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from connectors.db import DatabaseUnavailable, ProductStore
from connectors.records import AttributeValue, ProductResult
from connectors.retry import RetryAborted
from connectors.source import DeadLetterSink, TransientSourceError
from daemon.metrics import PipelineMetrics
from daemon.pipeline.merge import image_tags, product_result
from daemon.pipeline.work import (
    EventJob,
    Finished,
    Lanes,
    PermanentFailure,
    PipelineOptions,
    ReviewRouter,
    StopSignals,
    next_batch,
)
from learner.inference.engine import TaggingEngine
from learner.inference.product_decision import ProductDecider

T = TypeVar("T")

log = logging.getLogger("shelfsight.pipeline")

GROUP_SIZE = 256  # finished events written in one transaction at most


class ResultWriter:
    """The writer thread's loop (see the module docstring); ends on the stop sentinel or a hard stop."""

    def __init__(
        self,
        store: ProductStore,
        dead_letters: DeadLetterSink,
        current_engine: Callable[[], TaggingEngine],
        lanes: Lanes,
        signals: StopSignals,
        options: PipelineOptions,
        observe: PipelineMetrics,
        *,
        source_name: str,
        review_router: ReviewRouter | None = None,
        withhold: Callable[[ProductResult], ProductResult] | None = None,
    ) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.current_engine = current_engine
        self.lanes = lanes
        self.signals = signals
        self.observe = observe
        self.source_name = source_name
        self.review_router = review_router
        self.withhold = withhold  # the auto-fill suspensions (daemon/suspensions.py), applied before routing
        self.outage_retries = options.retry_policy(attempts=None)

    def run(self) -> None:
        while (group := next_batch(self.lanes.write, GROUP_SIZE)) is not None:
            try:
                self.write(group)
            except RetryAborted:
                return  # stopping hard while the database or the broker is away: the group stays uncommitted

    def write(self, group: list[Finished]) -> None:
        pending = [f for f in group if f.failure is None and f.result is None]
        decided = self.decide_all([f.job for f in pending])
        for f, attributes in zip(pending, decided, strict=True):
            try:
                f.result = self.result_of(f.job, attributes)
            except Exception as exc:  # a bug in merging or routing: this event only, dead-lettered
                log.exception("unexpected error building the result of offset %s", f.job.record.offset)
                f.failure = PermanentFailure("internal_error", repr(exc))
        results = [f.result for f in group if f.failure is None and f.result is not None]
        if results:
            with self.observe.stage("write", on_error=False):
                stats = self.until_available("database", lambda: self.store.write_results(results))
            self.observe.written(stats.written, stats.duplicates)
        for f in group:
            if f.failure is not None:
                self.dead_letter(f.job, f.failure)
        now = time.monotonic()
        for f in group:
            self.observe.finished(f.job.consumed_at, now)
            self.lanes.done.put(f.job)

    def decide_all(self, jobs: list[EventJob]) -> list[list[AttributeValue] | None]:
        """Each event's values, the events of one engine decided at once (`ProductDecider.decide_many`: one
        vectorised decision, the values each event gets alone); None for the events of a batch that failed, decided
        again one by one in `result_of` so that only the one at fault is dead-lettered."""
        out: list[list[AttributeValue] | None] = [None] * len(jobs)
        by_decider: dict[int, tuple[ProductDecider, list[tuple[int, EventJob, str | None]]]] = {}
        for k, job in enumerate(jobs):
            if job.event is not None:
                decider = (job.engine or self.current_engine()).decider
                by_decider.setdefault(id(decider), (decider, []))[1].append((k, job, job.event.title))
        for decider, batch in by_decider.values():
            ks = [k for k, _, _ in batch]
            try:
                values = decider.decide_many([(image_tags(job), title) for _, job, title in batch])
            except Exception:  # decided one by one instead (result_of)
                log.warning("deciding %d events at once failed; deciding them one by one", len(ks), exc_info=True)
                continue
            for k, v in zip(ks, values, strict=True):
                out[k] = v
        return out

    def result_of(self, job: EventJob, attributes: list[AttributeValue] | None = None) -> ProductResult:
        """The event's merged result (values of suspended groups withheld), with the review payload when the router
        sends it to review. `attributes`: its values when already decided (`decide_all`)."""
        engine = job.engine or self.current_engine()
        result = product_result(job, engine.decider, self.source_name, attributes)
        self.observe.decided(result.attributes)
        if self.withhold is not None:
            result = self.withhold(result)
        self.observe.photos_tagged(image_tags(job), engine.bundle.shift_guard)
        if self.review_router is not None:
            review = self.review_router(result, image_tags(job))
            if review is not None:
                result = dataclasses.replace(result, review=review)
        return result

    def dead_letter(self, job: EventJob, failure: PermanentFailure) -> None:
        record = job.record
        self.until_available(
            "dead_letter", lambda: self.dead_letters(record, failure.reason, str(failure), failure.attempts)
        )
        self.observe.dead_lettered(failure.reason)
        log.info("dead-lettered offset %s: %s: %s", record.offset, failure.reason, failure)

    def until_available(self, operation: str, fn: Callable[[], T]) -> T:
        """Transient infrastructure failures (database or broker down) are retried, never dead-lettered."""

        def on_retry(exc: BaseException, delay_s: float) -> None:
            self.observe.retried(operation)
            self.observe.transient_failure(f"{operation}_unavailable")
            log.warning("%s unavailable, retrying in %.1fs: %s", operation, delay_s, exc)

        return self.outage_retries.call(
            fn,
            retry_on=(DatabaseUnavailable, TransientSourceError),
            abort=self.signals.abort,
            on_retry=on_retry,
        )
