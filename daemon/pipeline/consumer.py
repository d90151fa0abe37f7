"""The pipeline's main thread (`ConsumerLoop`): poll the source, hand events to the fetch/decode stage, take done
events back and commit their offsets, pause the partitions while too much is in flight, hand over partitions on a
rebalance, and stop gracefully.

It is the only thread that touches the source (kafka-python's consumer is not thread-safe; rebalance callbacks run
while this thread is blocked inside `poll()`), and it never blocks on the GPU or the database, so heartbeats and
polls go on. An offset is committed only once every earlier event of its partition is done, and "done" means its
results are committed in the database (or its dead letter acknowledged).

What it must not do: parse, fetch, infer or write an event (the other stages do), or retry a failed commit in a loop
(the next turn commits again).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterable

from connectors.source import EventSource, OffsetTracker, Partition, TransientSourceError
from daemon.metrics import PipelineMetrics
from daemon.pipeline.work import EventJob, Lanes, PipelineOptions, StopSignals

log = logging.getLogger("shelfsight.pipeline")


class ConsumerLoop:
    """Consumes until `signals.stop` is set (see the module docstring); `submit` hands an event to the next stage."""

    def __init__(
        self,
        source: EventSource,
        submit: Callable[[EventJob], object],
        lanes: Lanes,
        signals: StopSignals,
        options: PipelineOptions,
        observe: PipelineMetrics,
    ) -> None:
        self.source = source
        self.submit = submit
        self.lanes = lanes
        self.signals = signals
        self.opts = options
        self.observe = observe
        self.tracker = OffsetTracker()
        self.jobs: dict[tuple[str, int, int], EventJob] = {}  # in flight, by (topic, partition, offset)
        self.paused = False
        self.heartbeat = time.monotonic()  # the last turn of the loop (the liveness probe reads it)
        self.events_processed = 0  # finished events (written or dead-lettered), for the shutdown log line
        self._last_lag = 0.0

    @property
    def in_flight(self) -> int:
        return len(self.jobs)

    def run(self, exit_when_idle: Callable[[], bool] | None = None) -> None:
        """Consume until stopped (or, with `exit_when_idle`, until the source is idle), then stop gracefully."""
        while not self.signals.stop.is_set():
            self.heartbeat = time.monotonic()
            self.consume_once()
            self.drain_done()
            self.commit()
            self.apply_backpressure()
            self.report_lag()
            if exit_when_idle is not None and not self.jobs and exit_when_idle():
                break
        self.shutdown()

    def consume_once(self) -> None:
        poll_timeout_ms = self.opts.poll_timeout_ms
        if self.paused:
            # wait for in-flight work to finish, not a fixed sleep: the partitions resume as soon as enough is done
            # (a fixed sleep plus a poll that waits out its timeout on paused partitions left the workers idle)
            self.drain_done(timeout_s=poll_timeout_ms / 1000)
            poll_timeout_ms = 0
            # kafka-python keeps heartbeating from its own thread; polling a paused consumer is harmless
        records = self.source.poll(timeout_ms=poll_timeout_ms)
        now = time.monotonic()
        consumed = 0
        for record in records:
            job = EventJob(record=record, consumed_at=now)
            if job.key in self.jobs:  # redelivered while still in flight (after a seek); keep the first
                continue
            self.jobs[job.key] = job
            self.tracker.add(job.tp, record.offset)
            consumed += 1
            self.submit(job)
        self.observe.consumed(consumed)
        self.observe.in_flight(len(self.jobs))

    def drain_done(self, timeout_s: float = 0.0) -> int:
        """Take the events the other stages finished (waiting up to `timeout_s` for the first); how many."""
        n = 0
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                remaining = deadline - time.monotonic()
                done = self.lanes.done
                job = done.get(timeout=remaining) if remaining > 0 and n == 0 else done.get_nowait()
            except queue.Empty:
                break
            self.jobs.pop(job.key, None)
            if not job.abandoned:
                self.tracker.done(job.tp, job.record.offset)
                self.events_processed += 1
            n += 1
        if n:
            self.observe.in_flight(len(self.jobs))
        return n

    def commit(self) -> None:
        offsets = self.tracker.committable()
        if not offsets:
            return
        try:
            self.source.commit(offsets)
            self.tracker.committed(offsets)
        except TransientSourceError as exc:
            self.observe.retried("commit")
            log.warning("offset commit failed, will retry: %s", exc)

    def apply_backpressure(self) -> None:
        in_flight = len(self.jobs)
        if in_flight >= self.opts.max_in_flight_events:
            self.paused = True
        elif self.paused and in_flight <= self.opts.max_in_flight_events // 2:
            self.source.resume(self.source.assignment())
            self.paused = False
        if self.paused:
            # re-applied every turn: partitions assigned by a rebalance arrive unpaused
            unpaused = self.source.assignment() - self.source.paused()
            if unpaused:
                self.source.pause(unpaused)
        self.observe.paused(len(self.source.paused()))

    def report_lag(self) -> None:
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
        while any(j.tp in revoked for j in self.jobs.values()) and time.monotonic() < deadline:
            self.drain_done(timeout_s=0.1)
        offsets = {tp: off for tp, off in self.tracker.committable().items() if tp in revoked}
        if offsets:
            try:
                self.source.commit(offsets)
            except TransientSourceError as exc:
                log.warning("commit on revocation failed (the next owner may redo some events): %s", exc)
        for key in [k for k, j in self.jobs.items() if j.tp in revoked]:
            self.jobs.pop(key)  # unfinished: the new owner will redo them; writes are idempotent
        self.tracker.forget(revoked)

    def shutdown(self) -> None:
        """Graceful stop: nothing new is consumed; events being worked on finish, are written and committed.

        Events still waiting for a fetch worker are abandoned: not written, not committed, so they are
        redelivered (to this daemon after a restart or to another group member). The fetch pool takes
        work in order, so within a partition the abandoned events are always after every finished one
        and no finished event is ever redelivered: a clean stop processes nothing twice.
        """
        self.signals.draining.set()
        log.info(
            "stopping after %d events processed (written or dead-lettered); finishing the %d still in flight",
            self.events_processed,
            len(self.jobs),
        )
        deadline = time.monotonic() + self.opts.shutdown_timeout_s
        while self.jobs and time.monotonic() < deadline:
            self.drain_done(timeout_s=0.1)
            self.commit()
        if self.jobs:
            log.warning("shutdown timeout: %d events left uncommitted (they will be redelivered)", len(self.jobs))
        self.commit()
        log.info("stopped consuming: %d events processed in all", self.events_processed)
