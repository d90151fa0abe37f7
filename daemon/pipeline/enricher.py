"""`Enricher`: the enrichment pipeline put together. It builds the four stages (see the package docstring), starts
the inference and writer threads, runs the consumer loop on the calling thread, and stops everything in order.

What it must not do: any stage's work (each stage is its own class), or build its parts from settings
(`daemon.service` does).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable

from connectors.db import ProductStore
from connectors.images import ImageFetcher
from connectors.records import ProductResult
from connectors.source import DeadLetterSink, EventSource, Partition
from daemon.metrics import PipelineMetrics, ServiceMetrics
from daemon.pipeline.consumer import ConsumerLoop
from daemon.pipeline.inference import InferenceWorker
from daemon.pipeline.prepare import EventPreparer
from daemon.pipeline.work import Lanes, PipelineOptions, ReviewRouter, StopSignals
from daemon.pipeline.writer import ResultWriter
from learner.inference.engine import TaggingEngine


class Enricher:
    """Events from `source` in, results in `store`, permanent failures to `dead_letters`, offsets committed.
    `withhold` (optional) is applied to every result before it is routed and written: the auto-fill suspensions."""

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
        withhold: Callable[[ProductResult], ProductResult] | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.metrics = metrics
        self.opts = options or PipelineOptions()
        self.observe = PipelineMetrics(metrics, source_name)  # every metric of the stages goes through it
        self.signals = StopSignals()
        self.lanes = Lanes(self.opts)
        self.ready = threading.Event()
        current_engine = self.current_engine
        self.preparer = EventPreparer(fetcher, current_engine, self.lanes, self.signals, self.opts, self.observe)
        self.consumer = ConsumerLoop(source, self.preparer.submit, self.lanes, self.signals, self.opts, self.observe)
        self.inference = [
            InferenceWorker(self.lanes, self.opts, self.observe) for _ in range(max(1, self.opts.inference_workers))
        ]
        self.writer = ResultWriter(
            store,
            dead_letters,
            current_engine,
            self.lanes,
            self.signals,
            self.opts,
            self.observe,
            source_name=source_name,
            review_router=review_router,
            withhold=withhold,
        )
        self._threads: list[threading.Thread] = []

    # -- what the service and the probes use ----------------------------------------------------------
    @property
    def source(self) -> EventSource:
        return self.consumer.source

    @source.setter
    def source(self, source: EventSource) -> None:
        self.consumer.source = source

    @property
    def stop_event(self) -> threading.Event:
        return self.signals.stop

    @property
    def heartbeat(self) -> float:
        return self.consumer.heartbeat

    @property
    def events_processed(self) -> int:
        return self.consumer.events_processed

    def current_engine(self) -> TaggingEngine:
        return self.engine

    def run(self, exit_when_idle: Callable[[], bool] | None = None) -> None:
        """Run until `request_stop` (or, with `exit_when_idle`, until the source has nothing left)."""
        self._start_threads()
        bundle = self.engine.bundle
        self.metrics.set_model(
            self.engine.model_version, bundle.backbone_name, bundle.taxonomy.name, decided_groups(self.engine)
        )
        self.ready.set()
        self.metrics.up.set(1)
        try:
            self.consumer.run(exit_when_idle)
        finally:
            self.ready.clear()
            self.metrics.up.set(0)
            self._stop_threads()

    def install_engine(self, engine: TaggingEngine) -> None:
        """Serve `engine` from now on (hot reload). Images already prepared finish on their own engine."""
        self.engine = engine
        bundle = engine.bundle
        self.metrics.set_model(engine.model_version, bundle.backbone_name, bundle.taxonomy.name, decided_groups(engine))

    def request_stop(self) -> None:
        self.signals.stop.set()

    def abort(self) -> None:
        """Stop waiting for in-flight work (second signal, or shutdown timeout)."""
        self.signals.abort.set()

    def on_partitions_revoked(self, partitions: Iterable[Partition]) -> None:
        """Rebalance callback: see `ConsumerLoop.on_partitions_revoked`."""
        self.consumer.on_partitions_revoked(partitions)

    # -- threads ----------------------------------------------------------------------------------------
    def _start_threads(self) -> None:
        workers = self.inference
        names = ["inference"] if len(workers) == 1 else [f"inference_{i}" for i in range(len(workers))]
        loops = [(name, worker.run) for name, worker in zip(names, workers, strict=True)]
        for name, target in (*loops, ("writer", self.writer.run)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _stop_threads(self) -> None:
        self.signals.abort.set()
        self.preparer.shutdown()
        with contextlib.suppress(queue.Full):
            self.lanes.infer.put(None, timeout=5)  # the inference thread is still draining the queue
        self.lanes.write.put(None)
        for t in self._threads:
            t.join(timeout=10)


def decided_groups(engine: TaggingEngine) -> list[str]:
    """The groups the engine decides once per product (from its photos and, when the bundle reads them, its
    title): the single-choice groups of its bundle."""
    return [g.name for g in engine.decider.decoder.groups]
