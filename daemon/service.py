"""Composition root of the enrichment daemon: settings in, a running `Enricher` out.

Builds the engine from the model bundle, the product store (migrated), the image fetcher, the event
source (Kafka or the local default) and its dead-letter sink, the metrics registry and the health server,
and stops them in order. Signal handling lives here: SIGTERM/SIGINT ask for a graceful stop (finish the
in-flight batch, write, commit, leave the group); a second signal stops waiting.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connectors.retry import RetryPolicy
from connectors.source import DeadLetterSink, EventSource, Partition
from daemon.config import FetchSettings, Settings, redact_url
from daemon.metrics import ServiceMetrics
from daemon.pipeline import Enricher, PipelineOptions
from daemon.reload import ModelSource, ModelWatcher

if TYPE_CHECKING:
    from connectors.db import ProductStore
    from connectors.images import ImageFetcher
    from daemon.suspensions import SuspensionWatch

log = logging.getLogger("shelfsight.service")

# the broker may still be starting (compose, a rolling restart): wait for it rather than crash-loop
KAFKA_START_RETRIES = RetryPolicy(initial_s=1.0, max_s=15.0, give_up_after_s=300.0)


class StartupError(RuntimeError):
    """The service cannot start; the message says what to do."""


@dataclass
class Service:
    enricher: Enricher
    metrics: ServiceMetrics
    closers: list[Callable[[], Any]] = field(default_factory=list)
    idle: Callable[[], bool] | None = None
    watcher: ModelWatcher | None = None

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception as exc:
                log.warning("error while closing: %s", exc)


def build_service(settings: Settings, metrics: ServiceMetrics | None = None) -> Service:
    from connectors.db import ProductStore
    from learner.inference.backends import load_engine
    from learner.inference.engine import TaggingEngine
    from learner.model.manifest import BundleError

    metrics = metrics or ServiceMetrics()
    closers: list[Callable[[], Any]] = []

    model_source = ModelSource(settings.model_path, settings.registry_dir)
    try:
        model_path = model_source.resolve()
    except Exception as exc:
        raise StartupError(f"no champion model in the registry {settings.registry_dir}: {exc}") from None
    if not model_path.is_file():
        raise StartupError(
            f"no model bundle at {model_path}: train one (`shelfsight train ... --out {model_path}`),"
            " or set SHELFSIGHT_MODEL_PATH (the starter model the demo uses: deploy/demo/starter.safetensors)"
        )

    inference_workers, onnx_threads = inference_threads(settings)

    def build_engine(path: Path) -> TaggingEngine:
        # onnxruntime: a missing ONNX export is made in a subprocess, so this process stays torch-free
        return load_engine(
            path,
            settings.backend,
            device=settings.device,
            max_pixels=settings.max_pixels,
            onnx_cache_dir=settings.onnx_cache_dir,
            threads=onnx_threads,
        )

    try:
        engine = build_engine(model_path)
    except BundleError as exc:
        raise StartupError(str(exc)) from None
    bundle = engine.bundle
    log.info("model %s on %s (%s)", bundle.model_version, engine.device, engine.backend)
    if (hint := backend_hint(engine.backend, engine.device)) is not None:
        log.info(hint)

    if settings.database_url.startswith("sqlite:///"):
        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    store = ProductStore(settings.database_url)
    closers.append(store.close)
    log.info("product database %s", redact_url(settings.database_url))
    store.migrate()

    f = settings.fetch
    fetcher = build_fetcher(f)
    closers.append(fetcher.close)

    revoke_hook: list[Callable[[set[Partition]], None]] = []
    source, dead_letters, idle, source_name = _build_source(settings, revoke_hook, closers)

    b = settings.batch
    options = PipelineOptions(
        max_batch_images=b.max_images,
        max_batch_delay_ms=b.max_delay_ms,
        max_in_flight_events=b.max_in_flight_events,
        fetch_workers=settings.fetch.concurrency,
        decode_workers=b.decode_workers,
        inference_workers=inference_workers,
        fetch_attempts=f.attempts,
        shutdown_timeout_s=settings.shutdown_timeout_s,
    )
    suspensions = _suspension_watch(settings, store, metrics)
    closers.append(suspensions.stop)
    review_router = None
    if settings.review.enabled:
        from daemon.config import ReviewConfigError
        from daemon.metrics import ReviewRoutingMetrics
        from daemon.routing import build_review_router

        try:
            review_router = build_review_router(
                settings,
                bundle,
                store,
                ReviewRoutingMetrics(metrics.registry),
                current_bundle=lambda: enricher.engine.bundle,  # follows hot reloads
            )
        except ReviewConfigError as exc:
            raise StartupError(str(exc)) from None
        log.info(
            "review routing on (%s uncertainty, audit rate %s)", settings.review.uncertainty, settings.review.audit_rate
        )
    enricher = Enricher(
        source=source,
        dead_letters=dead_letters,
        store=store,
        fetcher=fetcher,
        engine=engine,
        metrics=metrics,
        options=options,
        source_name=source_name,
        review_router=review_router,
        withhold=suspensions,
    )
    revoke_hook.append(enricher.on_partitions_revoked)
    watcher = None
    if settings.reload_interval_s > 0:
        watcher = ModelWatcher(model_source, build_engine, enricher.install_engine, metrics, settings.reload_interval_s)
    return Service(enricher=enricher, metrics=metrics, closers=closers, idle=idle, watcher=watcher)


def _suspension_watch(settings: Settings, store: ProductStore, metrics: ServiceMetrics) -> SuspensionWatch:
    """The auto-fill suspensions every replica follows (daemon/suspensions.py): read once now, then every poll."""
    from connectors.db import AuditStore
    from daemon.metrics import AutofillSuspensionMetrics
    from daemon.suspensions import SuspensionWatch

    watch = SuspensionWatch(
        AuditStore(store), AutofillSuspensionMetrics(metrics.registry), settings.review.suspension_poll_s
    )
    watch.refresh()
    return watch.start()


def build_fetcher(f: FetchSettings) -> ImageFetcher:
    """The image fetcher with the configured limits and address guard (daemon and learner alike)."""
    from connectors.images import ImageFetcher

    return ImageFetcher(
        connect_timeout_s=f.connect_timeout_s,
        read_timeout_s=f.read_timeout_s,
        total_timeout_s=f.total_timeout_s,
        max_bytes=f.max_bytes,
        max_redirects=f.max_redirects,
        max_concurrency=f.concurrency,
        allow_private_networks=f.allow_private_networks,
        allowed_networks=f.allowed_networks,
        file_root=f.file_root,
    )


def _build_source(
    settings: Settings, revoke_hook: list[Callable[[set[Partition]], None]], closers: list[Callable[[], Any]]
) -> tuple[EventSource, DeadLetterSink, Callable[[], bool] | None, str]:
    if settings.source == "kafka":
        from connectors.kafka import KafkaEventSource, TransientKafkaError
        from connectors.kafka_producers import DeadLetterPublisher

        k = settings.kafka

        def on_revoked(partitions: set[Partition]) -> None:
            for hook in revoke_hook:
                hook(partitions)

        def connect() -> KafkaEventSource:
            return KafkaEventSource(
                k.bootstrap_servers,
                k.topic,
                k.group_id,
                client_id=k.client_id,
                session_timeout_ms=k.session_timeout_ms,
                heartbeat_interval_ms=k.heartbeat_interval_ms,
                max_poll_interval_ms=k.max_poll_interval_ms,
                max_poll_records=k.max_poll_records,
                on_revoked=on_revoked,
            )

        source = KAFKA_START_RETRIES.call(
            connect,
            retry_on=(TransientKafkaError,),
            on_retry=lambda exc, delay_s: log.warning("Kafka unreachable, retrying in %.0fs: %s", delay_s, exc),
        )
        publisher = DeadLetterPublisher(bootstrap_servers=k.bootstrap_servers, topic=k.dead_letter_topic)
        closers.append(publisher.close)
        closers.append(source.close)
        return source, publisher.publish, None, "kafka"

    from connectors.local_source import LocalDirectorySource, StdinSource

    local = settings.local
    if local.stdin:
        stdin_source = StdinSource(sys.stdin.buffer)
        return stdin_source, stdin_source.dead_letter, stdin_source.idle if local.exit_when_idle else None, "stdin"
    dir_source = LocalDirectorySource(local.events_dir)
    log.info("reading events from %s (dead letters in %s)", local.events_dir, dir_source.dead_dir)
    return dir_source, dir_source.dead_letter, dir_source.idle if local.exit_when_idle else None, "local"


def run_service(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (or until idle, when configured). Returns the process exit status."""
    from daemon.http import HealthServer, main_loop_alive

    service = build_service(settings)
    enricher = service.enricher
    server = None
    if settings.http_port:
        server = HealthServer(
            settings.http_host,
            settings.http_port,
            service.metrics.registry,
            ready=enricher.ready.is_set,
            alive=main_loop_alive(lambda: enricher.heartbeat),
        ).start()
        log.info("health and metrics on http://%s:%d", settings.http_host, server.port)

    signals = {"count": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        signals["count"] += 1
        log.info("signal %s: graceful stop", signal.Signals(signum).name)
        enricher.request_stop()
        if signals["count"] > 1:
            enricher.abort()  # second signal: stop waiting for in-flight work

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    if service.watcher is not None:
        service.watcher.start()
    try:
        enricher.run(exit_when_idle=service.idle)
    finally:
        if service.watcher is not None:
            service.watcher.stop()
        if server is not None:
            server.stop()
        service.close()
    log.info("stopped")
    return 0


def backend_hint(backend: str, device: str) -> str | None:
    """A line for the start-up log when the configured backend is the slow one for the device, else None."""
    if backend == "torch" and device == "cpu":
        return (
            "serving on CPU with torch: SHELFSIGHT_BACKEND=onnxruntime tags about 5x the images per second with a "
            "fifth of the memory (same probabilities to 1e-5; README, Inference backends)"
        )
    return None


def inference_threads(settings: Settings) -> tuple[int, int | None]:
    """How many inference workers run side by side, and the onnxruntime threads of each run (None: its default).

    `batch.inference_workers` 0 means: two on onnxruntime on CPU, each with half the cores (on a 2-core machine one
    thread each: one run goes on while the other waits for the GIL or is preempted by decoding, writing, Kafka),
    one otherwise (torch, or a GPU: one run at a time keeps the device busy).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    onnx_cpu = settings.backend == "onnxruntime" and not _onnx_uses_cuda(settings.device)
    workers = settings.batch.inference_workers or (2 if onnx_cpu and cores >= 2 else 1)
    threads = max(1, cores // workers) if onnx_cpu and workers > 1 else None
    return workers, threads


def _onnx_uses_cuda(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()
