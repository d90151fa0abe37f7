"""The pipeline's fetch/decode stage (`EventPreparer`): parse an event, fetch each image (transient failures retried
with `connectors.retry`'s policy), decode and resize it with the engine's preprocessing, and queue the images for
inference. It runs on its own pool of `fetch_workers` threads (remote downloads mostly wait), of which at most
`decode_workers` decode at once (decoding is CPU work, and more threads at it only contend for the GIL).

A failure that can never succeed (a rejected event, a missing or broken image, retries used up) goes to the writer
as a `PermanentFailure`, to be dead-lettered; except a photo of an event whose title the engine reads
(`ProductDecider.reads_titles`): that photo is left out and the product is decided from its other photos and its
title, from the title alone when every photo failed.

What it must not do: touch the source or the database, run the model, or count metrics inside a fetch or decode
(the stage timers and retry hooks of `daemon.metrics.PipelineMetrics` wrap them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from connectors.events import EventRejected, parse_event
from connectors.images import FetchedImage, FetchError, ImageFetcher
from connectors.retry import RetryAborted
from daemon.metrics import PipelineMetrics
from daemon.pipeline.work import (
    EventJob,
    Finished,
    ImageWork,
    Lanes,
    PermanentFailure,
    PipelineOptions,
    ShuttingDown,
    StopSignals,
    put_unless_aborted,
)
from learner.inference.engine import TaggingEngine
from learner.inference.imaging import ImageDecodeError, PreparedImage

log = logging.getLogger("shelfsight.pipeline")


class EventPreparer:
    """Prepares events on its pool (see the module docstring); `current_engine` gives the engine serving now."""

    def __init__(
        self,
        fetcher: ImageFetcher,
        current_engine: Callable[[], TaggingEngine],
        lanes: Lanes,
        signals: StopSignals,
        options: PipelineOptions,
        observe: PipelineMetrics,
    ) -> None:
        self.fetcher = fetcher
        self.current_engine = current_engine
        self.lanes = lanes
        self.signals = signals
        self.observe = observe
        self.fetch_retries = options.retry_policy(attempts=options.fetch_attempts)
        self.pool = ThreadPoolExecutor(
            max_workers=max(options.fetch_workers, options.decode_workers), thread_name_prefix="fetch"
        )
        self.decode_slots = threading.BoundedSemaphore(options.decode_workers)

    def submit(self, job: EventJob) -> Future[None]:
        """Queue `job` for a fetch worker (the pool takes work in order)."""
        return self.pool.submit(self.prepare, job)

    def shutdown(self) -> None:
        """Wait for the events being prepared; events still waiting for a worker are dropped (redelivered later)."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def prepare(self, job: EventJob) -> None:
        """One event: its images go to inference, or the event goes to the writer as a permanent failure."""
        if self.signals.draining.is_set():
            job.abandoned = True
            self.lanes.done.put(job)
            return
        self.observe.waited(job.consumed_at, time.monotonic())
        try:
            try:
                job.event = parse_event(job.record.value)
            except EventRejected as exc:
                raise PermanentFailure(exc.reason, str(exc)) from None
            prepared: list[PreparedImage] = []
            engine = job.engine = self.current_engine()  # one engine for all images of an event, even across a reload
            # with a title the engine reads, a photo that cannot be read does not vote (the title and the other
            # photos still decide); without one, it dead-letters the event as always
            titled = bool(job.event.title) and engine.decider.reads_titles
            for url in job.event.image_urls:
                try:
                    data, digest = self.fetch(url)
                    with self.decode_slots, self.observe.stage("decode"):
                        prepared.append(decode(engine, url, data))
                except PermanentFailure as failure:
                    if not titled:
                        raise
                    log.info("offset %s: photo left out, the title decides: %s", job.record.offset, failure)
                    continue
                job.images.append((url, digest))
            job.expected = len(prepared)
            if not prepared:  # every photo failed, the title decides alone (learner.inference.product_decision)
                self.lanes.write.put(Finished(job))
                return
            now = time.monotonic()
            for i, p in enumerate(prepared):
                put_unless_aborted(self.lanes.infer, ImageWork(job, i, p, now, engine), self.signals.abort)
        except PermanentFailure as failure:
            self.lanes.write.put(Finished(job, failure=failure))
        except (ShuttingDown, RetryAborted):
            return  # shutting down hard; the event stays uncommitted and will be redelivered
        except Exception as exc:
            log.exception("unexpected error preparing %s", job.record.offset)
            self.lanes.write.put(Finished(job, failure=PermanentFailure("internal_error", repr(exc))))

    def fetch(self, url: str) -> tuple[bytes, str]:
        """Download `url` (transient failures retried with backoff); its data and SHA-256."""
        attempts = 0

        def attempt() -> FetchedImage:
            nonlocal attempts
            attempts += 1
            with self.observe.stage("fetch"):
                return self.fetcher.fetch(url)

        try:
            fetched = self.fetch_retries.call(
                attempt,
                retry_on=lambda exc: isinstance(exc, FetchError) and exc.transient,
                abort=self.signals.abort,
                on_failure=lambda exc: self.observe.transient_failure(_fetch_reason(exc)),
                on_retry=lambda _exc, _delay: self.observe.retried("fetch"),
            )
        except FetchError as exc:
            message = f"{url}: {exc}" + (f" (after {attempts} attempts)" if exc.transient else "")
            raise PermanentFailure(f"fetch_{exc.reason}", message, attempts) from None
        return fetched.data, fetched.sha256


def decode(engine: TaggingEngine, url: str, data: bytes) -> PreparedImage:
    """Decode and resize one image with the engine's preprocessing; a broken image is a permanent failure."""
    try:
        return engine.prepare(data)
    except ImageDecodeError as exc:
        raise PermanentFailure(f"image_{exc.reason}", f"{url}: {exc}") from None


def _fetch_reason(exc: BaseException) -> str:
    return f"fetch_{exc.reason}" if isinstance(exc, FetchError) else "fetch_error"
