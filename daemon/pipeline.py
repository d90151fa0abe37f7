"""The enrichment pipeline: events in, tagged attributes committed to the product database, offsets out.

Stages and threads (each stage is one small call: parse, fetch, decode, infer, write; timing and counting
happen around it through the `daemon.metrics.PipelineMetrics` hooks, never inside it):

    main thread        poll the source -> hand events to the fetch pool; take finished events back,
                       commit offsets; pause partitions when too much is in flight (backpressure).
                       It is the only thread that touches the consumer (kafka-python is not thread-safe)
                       and it never blocks on the GPU or the database, so heartbeats and polls go on.
    fetch/decode pool  parse the event, fetch each image (retries for transient failures), decode and
                       resize it on CPU, queue it for inference. `fetch_workers` threads (the fetcher's
                       concurrency: remote downloads mostly wait), of which at most `decode_workers` decode at
                       once (decoding is CPU work, and more threads at it only contend for the GIL).
    inference thread   dynamic batching: a batch closes at `max_images` or `max_delay_ms` after its first
                       image; one forward pass; events whose images are all tagged go to the writer. It does
                       nothing else: it is the one serial stage, and Python work here holds the GIL it needs.
                       With `inference_workers` > 1 that many threads each take their own batch off the same
                       queue (onnxruntime on CPU: single-threaded runs side by side keep every core busy while
                       one of them is between runs or preempted by the other stages, instead of one run whose
                       parallel section waits for its slowest thread).
    writer thread      merges each finished event's images into one result and routes it (review), writes a
                       group of finished events in one transaction of a few set-based statements (retried with
                       backoff while the database is down, never dead-lettered), dead letters for permanent
                       failures (waiting for the broker's ack), then reports the events as done.

An offset is committed only when every earlier event of its partition is done, and "done" means its
results are committed in the database (or its dead letter acknowledged): at-least-once delivery, and the
processing log's idempotency key (product, image digest, model version) makes repeated deliveries write
nothing twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from connectors.db import DatabaseUnavailable, ProductStore
from connectors.events import EventRejected, ProductEvent, parse_event
from connectors.images import FetchError, ImageFetcher
from connectors.records import Alternative, AttributeValue, OutboxPayload, ProductResult
from connectors.source import DeadLetterSink, EventSource, OffsetTracker, Partition, SourceRecord, TransientSourceError
from daemon.metrics import PipelineMetrics, ServiceMetrics
from learner.inference.engine import ImageTags, TaggingEngine
from learner.inference.imaging import ImageDecodeError, PreparedImage
from learner.model.taxonomy import Taxonomy

T = TypeVar("T")

log = logging.getLogger("shelfsight.pipeline")

# Decides whether a product goes to human review; returns the outbox payload, or None to accept it as is.
ReviewRouter = Callable[[ProductResult, list[ImageTags]], OutboxPayload | None]


@dataclass
class PipelineOptions:
    max_batch_images: int = 32
    max_batch_delay_ms: int = 25
    max_in_flight_events: int = 256
    fetch_workers: int = 16  # the fetch/decode pool's threads; at most decode_workers decode at once (module docstring)
    decode_workers: int = 4
    inference_workers: int = 1  # threads running forward passes, each on its own batch (see the module docstring)
    fetch_attempts: int = 3
    retry_initial_s: float = 0.5
    retry_max_s: float = 5.0
    shutdown_timeout_s: float = 30.0
    lag_interval_s: float = 5.0
    poll_timeout_ms: int = 200


class PermanentFailure(Exception):
    """This event can never succeed: dead-letter it once."""

    def __init__(self, reason: str, message: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts


@dataclass
class EventJob:
    record: SourceRecord
    consumed_at: float
    event: ProductEvent | None = None
    images: list[tuple[str, str]] = field(default_factory=list)  # (url, sha256) in event order
    tags: dict[int, ImageTags] = field(default_factory=dict)
    expected: int = 0
    engine: TaggingEngine | None = None  # the engine that tags this event (fixed when its work starts)
    abandoned: bool = False  # shutting down before its work started: left uncommitted, redelivered later
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def tp(self) -> Partition:
        return (self.record.topic, self.record.partition)


@dataclass
class Finished:
    """An event whose work is over: every image tagged (the writer builds its `result`), or a permanent failure."""

    job: EventJob
    failure: PermanentFailure | None = None
    result: ProductResult | None = None


@dataclass
class _InferItem:
    job: EventJob
    index: int
    prepared: PreparedImage
    queued_at: float
    engine: TaggingEngine  # the engine that prepared it (its preprocessing) infers it, even across a reload


class Enricher:
    def __init__(
        self,
        *,
        source: EventSource,
        dead_letters: DeadLetterSink,
        store: ProductStore,
        fetcher: ImageFetcher,
        engine: TaggingEngine,
        metrics: ServiceMetrics,
        options: PipelineOptions | None = None,
        source_name: str = "kafka",
        review_router: ReviewRouter | None = None,
    ) -> None:
        self.source = source
        self.dead_letters = dead_letters
        self.store = store
        self.fetcher = fetcher
        self.engine = engine
        self.metrics = metrics
        self.opts = options or PipelineOptions()
        self.source_name = source_name
        self.review_router = review_router
        self.observe = PipelineMetrics(metrics, source_name)  # every metric of the stages goes through it
        self.tracker = OffsetTracker()
        self.stop_event = threading.Event()  # graceful: stop consuming, finish in-flight work
        self._draining = threading.Event()  # set by the graceful stop: work not yet started is abandoned
        self._abort = threading.Event()  # hard: give up waiting (shutdown timeout)
        # bounded: prepared images wait for at most one batch more than there are inference workers, so memory stays
        # flat, fetch workers block (backpressure reaches the consumer through the in-flight limit) and a graceful stop
        # has little to finish
        depth = (1 + max(1, self.opts.inference_workers)) * self.opts.max_batch_images
        self._infer_q: queue.Queue[_InferItem | None] = queue.Queue(maxsize=depth)
        self._write_q: queue.Queue[Finished | None] = queue.Queue()
        self._done_q: queue.Queue[EventJob] = queue.Queue()
        self._jobs: dict[tuple[str, int, int], EventJob] = {}
        workers = max(self.opts.fetch_workers, self.opts.decode_workers)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
        self._decode_slots = threading.BoundedSemaphore(self.opts.decode_workers)
        self._threads: list[threading.Thread] = []
        self._paused = False
        self._last_lag = 0.0
        self.ready = threading.Event()
        self.heartbeat = time.monotonic()
        self.events_processed = 0  # finished events (written or dead-lettered), for the shutdown log line

    # ---------------------------------------------------------------------------------------------
    # main thread
    # ---------------------------------------------------------------------------------------------
    def run(self, exit_when_idle: Callable[[], bool] | None = None) -> None:
        """Run until `stop_event` is set (or, with `exit_when_idle`, until the source has nothing left)."""
        self._start_threads()
        self.metrics.set_model(
            self.engine.model_version, self.engine.bundle.backbone_name, self.engine.bundle.taxonomy.name
        )
        self.ready.set()
        self.metrics.up.set(1)
        try:
            while not self.stop_event.is_set():
                self.heartbeat = time.monotonic()
                self._consume_once()
                self._drain_done()
                self._commit()
                self._apply_backpressure()
                self._report_lag()
                if exit_when_idle is not None and not self._jobs and exit_when_idle():
                    break
            self._shutdown()
        finally:
            self.ready.clear()
            self.metrics.up.set(0)
            self._stop_threads()

    def install_engine(self, engine: TaggingEngine) -> None:
        """Serve `engine` from now on (hot reload). Images already prepared finish on their own engine."""
        self.engine = engine
        bundle = engine.bundle
        self.metrics.set_model(engine.model_version, bundle.backbone_name, bundle.taxonomy.name)

    def request_stop(self) -> None:
        self.stop_event.set()

    def abort(self) -> None:
        """Stop waiting for in-flight work (second signal, or shutdown timeout)."""
        self._abort.set()

    def _consume_once(self) -> None:
        poll_timeout_ms = self.opts.poll_timeout_ms
        if self._paused:
            # wait for in-flight work to finish, not a fixed sleep: the partitions resume as soon as enough is done
            # (a fixed sleep plus a poll that waits out its timeout on paused partitions left the workers idle)
            self._drain_done(timeout_s=poll_timeout_ms / 1000)
            poll_timeout_ms = 0
            # kafka-python keeps heartbeating from its own thread; polling a paused consumer is harmless
        records = self.source.poll(timeout_ms=poll_timeout_ms)
        now = time.monotonic()
        consumed = 0
        for record in records:
            key = (record.topic, record.partition, record.offset)
            if key in self._jobs:  # redelivered while still in flight (after a seek); keep the first
                continue
            job = EventJob(record=record, consumed_at=now)
            self._jobs[key] = job
            self.tracker.add((record.topic, record.partition), record.offset)
            consumed += 1
            self._pool.submit(self._prepare_event, job)
        self.observe.consumed(consumed)
        self.observe.in_flight(len(self._jobs))

    def _drain_done(self, timeout_s: float = 0.0) -> int:
        n = 0
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                remaining = deadline - time.monotonic()
                job = self._done_q.get(timeout=remaining) if remaining > 0 and n == 0 else self._done_q.get_nowait()
            except queue.Empty:
                break
            self._jobs.pop((job.record.topic, job.record.partition, job.record.offset), None)
            if not job.abandoned:
                self.tracker.done(job.tp, job.record.offset)
                self.events_processed += 1
            n += 1
        if n:
            self.observe.in_flight(len(self._jobs))
        return n

    def _commit(self) -> None:
        offsets = self.tracker.committable()
        if not offsets:
            return
        try:
            self.source.commit(offsets)
            self.tracker.committed(offsets)
        except TransientSourceError as exc:
            self.observe.retried("commit")
            log.warning("offset commit failed, will retry: %s", exc)

    def _apply_backpressure(self) -> None:
        in_flight = len(self._jobs)
        if in_flight >= self.opts.max_in_flight_events:
            self._paused = True
        elif self._paused and in_flight <= self.opts.max_in_flight_events // 2:
            self.source.resume(self.source.assignment())
            self._paused = False
        if self._paused:
            # re-applied every turn: partitions assigned by a rebalance arrive unpaused
            unpaused = self.source.assignment() - self.source.paused()
            if unpaused:
                self.source.pause(unpaused)
        self.observe.paused(len(self.source.paused()))

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < self.opts.lag_interval_s:
            return
        self._last_lag = now
        try:
            self.observe.lag(self.source.lag())
        except Exception as exc:
            log.debug("lag unavailable: %s", exc)

    def on_partitions_revoked(self, partitions: Iterable[Partition]) -> None:
        """Rebalance: finish and commit in-flight events of partitions we are losing, then forget them."""
        revoked = set(partitions)
        deadline = time.monotonic() + self.opts.shutdown_timeout_s
        while any(j.tp in revoked for j in self._jobs.values()) and time.monotonic() < deadline:
            self._drain_done(timeout_s=0.1)
        offsets = {tp: off for tp, off in self.tracker.committable().items() if tp in revoked}
        if offsets:
            try:
                self.source.commit(offsets)
            except TransientSourceError as exc:
                log.warning("commit on revocation failed (the next owner may redo some events): %s", exc)
        for key in [k for k, j in self._jobs.items() if j.tp in revoked]:
            self._jobs.pop(key)  # unfinished: the new owner will redo them; writes are idempotent
        self.tracker.forget(revoked)

    def _shutdown(self) -> None:
        """Graceful stop: nothing new is consumed; events being worked on finish, are written and committed.

        Events still waiting for a fetch worker are abandoned: not written, not committed, so they are
        redelivered (to this daemon after a restart or to another group member). The fetch pool takes
        work in order, so within a partition the abandoned events are always after every finished one
        and no finished event is ever redelivered: a clean stop processes nothing twice.
        """
        self._draining.set()
        log.info(
            "stopping after %d events processed (written or dead-lettered); finishing the %d still in flight",
            self.events_processed,
            len(self._jobs),
        )
        deadline = time.monotonic() + self.opts.shutdown_timeout_s
        while self._jobs and time.monotonic() < deadline:
            self._drain_done(timeout_s=0.1)
            self._commit()
        if self._jobs:
            log.warning("shutdown timeout: %d events left uncommitted (they will be redelivered)", len(self._jobs))
        self._commit()
        log.info("stopped consuming: %d events processed in all", self.events_processed)

    # ---------------------------------------------------------------------------------------------
    # fetch / decode pool
    # ---------------------------------------------------------------------------------------------
    def _prepare_event(self, job: EventJob) -> None:
        if self._draining.is_set():
            job.abandoned = True
            self._done_q.put(job)
            return
        self.observe.waited(job.consumed_at, time.monotonic())
        try:
            try:
                job.event = parse_event(job.record.value)
            except EventRejected as exc:
                raise PermanentFailure(exc.reason, str(exc)) from None
            prepared: list[PreparedImage] = []
            engine = job.engine = self.engine  # one engine for all images of an event, even across a reload
            for url in job.event.image_urls:
                data, digest = self._fetch(url)
                with self._decode_slots, self.observe.stage("decode"):
                    prepared.append(self._decode(engine, url, data))
                job.images.append((url, digest))
            job.expected = len(prepared)
            now = time.monotonic()
            for i, p in enumerate(prepared):
                self._put_blocking(self._infer_q, _InferItem(job, i, p, now, engine))
        except PermanentFailure as failure:
            self._write_q.put(Finished(job, failure=failure))
        except _Aborted:
            return  # shutting down hard; the event stays uncommitted and will be redelivered
        except Exception as exc:
            log.exception("unexpected error preparing %s", job.record.offset)
            self._write_q.put(Finished(job, failure=PermanentFailure("internal_error", repr(exc))))

    def _fetch(self, url: str) -> tuple[bytes, str]:
        """Download `url` (transient failures retried with backoff); its data and SHA-256."""
        delay = self.opts.retry_initial_s
        for attempt in range(1, self.opts.fetch_attempts + 1):
            try:
                with self.observe.stage("fetch"):
                    fetched = self.fetcher.fetch(url)
                return fetched.data, fetched.sha256
            except FetchError as exc:
                reason = f"fetch_{exc.reason}"
                if not exc.transient:
                    raise PermanentFailure(reason, f"{url}: {exc}", attempt) from None
                self.observe.transient_failure(reason)
                if attempt == self.opts.fetch_attempts:
                    raise PermanentFailure(reason, f"{url}: {exc} (after {attempt} attempts)", attempt) from None
                self.observe.retried("fetch")
                self._sleep(delay)
                delay = min(delay * 2, self.opts.retry_max_s)
        raise AssertionError("unreachable")

    @staticmethod
    def _decode(engine: TaggingEngine, url: str, data: bytes) -> PreparedImage:
        """Decode and resize one image with the engine's preprocessing; a broken image is a permanent failure."""
        try:
            return engine.prepare(data)
        except ImageDecodeError as exc:
            raise PermanentFailure(f"image_{exc.reason}", f"{url}: {exc}") from None

    def _put_blocking(self, q: queue.Queue[T], item: T) -> None:
        while True:
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._abort.is_set():
                    raise _Aborted from None

    def _sleep(self, seconds: float) -> None:
        if self._abort.wait(seconds):
            raise _Aborted

    # ---------------------------------------------------------------------------------------------
    # inference thread
    # ---------------------------------------------------------------------------------------------
    def _inference_loop(self) -> None:
        delay_s = self.opts.max_batch_delay_ms / 1000
        while (batch := next_batch(self._infer_q, self.opts.max_batch_images, delay_s)) is not None:
            self._infer_batch(batch)
        with contextlib.suppress(queue.Full):  # the stop sentinel, passed on to the other inference workers
            self._infer_q.put(None, timeout=5)

    def _infer_batch(self, batch: list[_InferItem]) -> None:
        by_engine: dict[int, list[_InferItem]] = {}
        for item in batch:  # more than one group only in the batch that straddles a hot reload
            by_engine.setdefault(id(item.engine), []).append(item)
        for items in by_engine.values():
            self._infer_with(items[0].engine, items)

    def _infer_with(self, engine: TaggingEngine, batch: list[_InferItem]) -> None:
        now = time.monotonic()
        for item in batch:
            self.observe.waited(item.queued_at, now)
        try:
            with self.observe.stage("inference", on_error=False):
                results = engine.infer([item.prepared for item in batch])
        except Exception as exc:  # e.g. CUDA OOM: retry images one by one
            log.warning("batch of %d failed (%s); retrying one by one", len(batch), exc)
            for item in batch:
                try:
                    (tags,) = engine.infer([item.prepared])
                    self._image_done(item, tags)
                except Exception as exc2:
                    self._write_q.put(Finished(item.job, failure=PermanentFailure("inference_error", repr(exc2))))
            return
        self.observe.batch_inferred(len(batch))
        for item, tags in zip(batch, results, strict=True):
            self._image_done(item, tags)

    def _image_done(self, item: _InferItem, tags: ImageTags) -> None:
        job = item.job
        with job.lock:
            job.tags[item.index] = tags
            complete = len(job.tags) == job.expected
        if complete:
            self._write_q.put(Finished(job))  # merged and routed on the writer thread: inference only infers

    def _product_result(self, job: EventJob) -> ProductResult:
        assert job.event is not None
        tags = [job.tags[i] for i in range(job.expected)]
        digests = [d for _, d in job.images]
        digest = digests[0] if len(digests) == 1 else hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()
        result = ProductResult(
            product_id=job.event.product_id,
            title=job.event.title,
            category_hint=job.event.category_hint,
            event_id=job.event.event_id,
            image_url=job.images[0][0],
            image_digest=digest,
            model_version=tags[0].model_version,
            attributes=merge_attributes(
                tags, job.engine.bundle.taxonomy if job.engine else self.engine.bundle.taxonomy
            ),
            source=f"{self.source_name}:{job.record.topic}/{job.record.partition}@{job.record.offset}",
        )
        if self.review_router is not None:
            review = self.review_router(result, tags)
            if review is not None:
                result = dataclasses.replace(result, review=review)
        return result

    # ---------------------------------------------------------------------------------------------
    # writer thread
    # ---------------------------------------------------------------------------------------------
    def _writer_loop(self) -> None:
        while (group := next_batch(self._write_q, 256)) is not None:
            try:
                self._write_group(group)
            except _Aborted:
                return

    def _write_group(self, group: list[Finished]) -> None:
        for f in group:
            if f.failure is None and f.result is None:
                try:
                    f.result = self._product_result(f.job)
                except Exception as exc:  # a bug in merging or routing: this event only, dead-lettered
                    log.exception("unexpected error building the result of offset %s", f.job.record.offset)
                    f.failure = PermanentFailure("internal_error", repr(exc))
        results = [f.result for f in group if f.failure is None and f.result is not None]
        if results:
            with self.observe.stage("write", on_error=False):
                stats = self._retry_forever("database", functools.partial(self.store.write_results, results))
            self.observe.written(stats.written, stats.duplicates)
        for f in group:
            if f.failure is not None:
                failure, record = f.failure, f.job.record
                sink = functools.partial(self.dead_letters, record, failure.reason, str(failure), failure.attempts)
                self._retry_forever("dead_letter", sink)
                self.observe.dead_lettered(failure.reason)
                log.info("dead-lettered offset %s: %s: %s", record.offset, failure.reason, failure)
        now = time.monotonic()
        for f in group:
            self.observe.finished(f.job.consumed_at, now)
            self._done_q.put(f.job)

    def _retry_forever(self, operation: str, fn: Callable[[], T]) -> T:
        """Transient infrastructure failures (database or broker down) are retried, never dead-lettered."""
        delay = self.opts.retry_initial_s
        while True:
            try:
                return fn()
            except (DatabaseUnavailable, TransientSourceError) as exc:
                self.observe.retried(operation)
                self.observe.transient_failure(f"{operation}_unavailable")
                log.warning("%s unavailable, retrying in %.1fs: %s", operation, delay, exc)
                self._sleep(delay)
                delay = min(delay * 2, self.opts.retry_max_s)

    # ---------------------------------------------------------------------------------------------
    def _start_threads(self) -> None:
        workers = max(1, self.opts.inference_workers)
        names = ["inference"] if workers == 1 else [f"inference_{i}" for i in range(workers)]
        loops = [(name, self._inference_loop) for name in names]
        for name, target in (*loops, ("writer", self._writer_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _stop_threads(self) -> None:
        self._abort.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(queue.Full):
            self._infer_q.put(None, timeout=5)  # the inference thread is still draining the queue
        self._write_q.put(None)
        for t in self._threads:
            t.join(timeout=10)


class _Aborted(Exception):
    pass


def next_batch(q: queue.Queue[T | None], max_items: int, max_wait_s: float = 0.0) -> list[T] | None:
    """Waits for one item, then takes what else arrives within `max_wait_s` of it, up to `max_items`; None once the
    stop sentinel (None) is read. A sentinel that ends a batch is put back, so the next call returns None."""
    first = q.get()
    if first is None:
        return None
    batch = [first]
    deadline = time.monotonic() + max_wait_s
    while len(batch) < max_items:
        remaining = deadline - time.monotonic()
        try:
            item = q.get(timeout=remaining) if remaining > 0 else q.get_nowait()
        except queue.Empty:
            break
        if item is None:
            q.put(None)  # re-post the sentinel for the caller's loop
            break
        batch.append(item)
    return batch


def merge_attributes(tags: list[ImageTags], taxonomy: Taxonomy) -> list[AttributeValue]:
    """One value per attribute group for a product with one or more images.

    Single-choice groups take the image whose best value is most confident (with that image's
    alternatives); multi-label groups take the union of values (stored as a list), each at its
    highest confidence, with the box (and mask) of the strongest detection when the values come from the detector.
    A single-choice value below its group's auto-fill threshold is stored as a suggestion (auto_filled False).
    """
    out: list[AttributeValue] = []
    for g in taxonomy.groups:
        if g.multi_label:
            best: dict[str, float] = {}
            for t in tags:
                for v, c in t.attributes.get(g.name, []):
                    best[v] = max(best.get(v, 0.0), c)
            if not best:
                continue
            values = sorted(best, key=lambda v: -best[v])
            boxes = [d for t in tags for d in t.detections if d.attributes.get(g.name) in best]
            strongest_detection = max(boxes, key=lambda d: d.score) if boxes else None
            out.append(
                AttributeValue(
                    attribute=g.name,
                    value=values,
                    confidence=best[values[0]],
                    alternatives=[Alternative(v, round(best[v], 4)) for v in values],
                    box=list(strongest_detection.box) if strongest_detection is not None else None,
                    mask=strongest_detection.mask if strongest_detection is not None else None,
                )
            )
        else:
            candidates = [t for t in tags if t.attributes.get(g.name)]
            if not candidates:
                continue
            strongest = max(candidates, key=lambda t: t.attributes[g.name][0][1])
            chosen = strongest.attributes[g.name]
            out.append(
                AttributeValue(
                    attribute=g.name,
                    value=chosen[0][0],
                    confidence=chosen[0][1],
                    alternatives=[Alternative(v, round(c, 4)) for v, c in chosen],
                    auto_filled=strongest.is_auto_filled(g.name),
                )
            )
    return out
