"""What the pipeline's stages hand each other: the options, an event's work (`EventJob`), one prepared image
(`ImageWork`), a finished event (`Finished`), the queues between the threads (`Lanes`), the stop signals, and how
a thread takes a batch off its queue (`next_batch`).

What it must not do: run a stage, touch the source, the fetcher, the engine's model or the database.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from connectors.events import ProductEvent
from connectors.records import OutboxPayload, ProductResult
from connectors.retry import RetryPolicy
from connectors.source import Partition, SourceRecord
from learner.inference.engine import ImageTags, TaggingEngine
from learner.inference.imaging import PreparedImage

T = TypeVar("T")

# Decides whether a product goes to human review; returns the outbox payload, or None to accept it as is.
ReviewRouter = Callable[[ProductResult, list[ImageTags]], OutboxPayload | None]


@dataclass
class PipelineOptions:
    max_batch_images: int = 32
    max_batch_delay_ms: int = 25
    max_in_flight_events: int = 256
    fetch_workers: int = 16  # the fetch/decode pool's threads; at most decode_workers decode at once (see prepare.py)
    decode_workers: int = 4
    inference_workers: int = 1  # threads running forward passes, each on its own batch (see the package docstring)
    fetch_attempts: int = 3
    retry_initial_s: float = 0.5
    retry_max_s: float = 5.0
    shutdown_timeout_s: float = 30.0
    lag_interval_s: float = 5.0
    poll_timeout_ms: int = 200

    def retry_policy(self, attempts: int | None = None) -> RetryPolicy:
        """The backoff between tries of a transient failure (`connectors.retry`); `attempts` None: until it works."""
        return RetryPolicy(initial_s=self.retry_initial_s, max_s=self.retry_max_s, attempts=attempts)


class PermanentFailure(Exception):
    """This event can never succeed: dead-letter it once."""

    def __init__(self, reason: str, message: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts


class ShuttingDown(Exception):
    """A stage gave up waiting because the pipeline is stopping hard: its event stays uncommitted (redelivered)."""


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

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.record.topic, self.record.partition, self.record.offset)


@dataclass
class ImageWork:
    """One prepared image of an event, waiting for a forward pass."""

    job: EventJob
    index: int
    prepared: PreparedImage
    queued_at: float
    engine: TaggingEngine  # the engine that prepared it (its preprocessing) infers it, even across a reload


@dataclass
class Finished:
    """An event whose work is over: every image tagged (the writer builds its `result`), or a permanent failure."""

    job: EventJob
    failure: PermanentFailure | None = None
    result: ProductResult | None = None


@dataclass
class StopSignals:
    """How the pipeline stops: `stop` (graceful: consume nothing more, finish what is in flight), `draining` (set by
    the graceful stop: work not yet started is abandoned), `abort` (hard: stop waiting for anything)."""

    stop: threading.Event = field(default_factory=threading.Event)
    draining: threading.Event = field(default_factory=threading.Event)
    abort: threading.Event = field(default_factory=threading.Event)


class Lanes:
    """The queues between the threads: prepared images to inference, finished events to the writer, done events
    back to the consumer. `None` on `infer` or `write` is the stop sentinel."""

    def __init__(self, options: PipelineOptions) -> None:
        # bounded: prepared images wait for at most one batch more than there are inference workers, so memory stays
        # flat, fetch workers block (backpressure reaches the consumer through the in-flight limit) and a graceful stop
        # has little to finish
        depth = (1 + max(1, options.inference_workers)) * options.max_batch_images
        self.infer: queue.Queue[ImageWork | None] = queue.Queue(maxsize=depth)
        self.write: queue.Queue[Finished | None] = queue.Queue()
        self.done: queue.Queue[EventJob] = queue.Queue()


def put_unless_aborted(q: queue.Queue[T], item: T, abort: threading.Event) -> None:
    """Put `item` on a bounded queue, waiting for room; `ShuttingDown` once `abort` is set."""
    while True:
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            if abort.is_set():
                raise ShuttingDown from None


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
