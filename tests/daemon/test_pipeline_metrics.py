"""The pipeline's metrics middleware: stages are timed around their work, retries and failures counted beside it."""

from __future__ import annotations

import hashlib
from typing import Any, cast

import pytest

from connectors.images import FetchedImage, FetchError, FetchReason
from daemon.metrics import PipelineMetrics, ServiceMetrics
from daemon.pipeline import Enricher, PipelineOptions


def sample(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class FlakyFetcher:
    """Times out `failures` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def fetch(self, url: str) -> FetchedImage:
        if self.failures:
            self.failures -= 1
            raise FetchError(FetchReason.TIMEOUT, "read timed out", transient=True)
        data = b"image"
        return FetchedImage(url, data, "image/jpeg", 0.0, hashlib.sha256(data).hexdigest())


def test_the_fetch_stage_times_each_attempt_but_not_the_backoff_between_them() -> None:
    metrics = ServiceMetrics()
    nothing = cast(Any, None)
    enricher = Enricher(
        source=nothing,
        dead_letters=nothing,
        store=nothing,
        fetcher=cast(Any, FlakyFetcher(failures=1)),
        engine=nothing,
        metrics=metrics,
        options=PipelineOptions(fetch_attempts=3, retry_initial_s=0.3),
    )
    data, _digest = enricher.preparer.fetch("https://images.example/p1.jpg")

    assert data == b"image"
    assert sample(metrics, "shelfsight_stage_duration_seconds_count", stage="fetch") == 2
    assert sample(metrics, "shelfsight_stage_duration_seconds_sum", stage="fetch") < 0.3, "backoff counted as fetch"
    assert sample(metrics, "shelfsight_retries_total", operation="fetch") == 1
    assert sample(metrics, "shelfsight_events_failed_total", reason="fetch_timeout", kind="transient") == 1


def test_a_stage_that_raises_is_timed_unless_only_completed_runs_count() -> None:
    metrics = ServiceMetrics()
    observe = PipelineMetrics(metrics, "local")
    with pytest.raises(RuntimeError), observe.stage("decode"):
        raise RuntimeError("broken image")
    with pytest.raises(RuntimeError), observe.stage("inference", on_error=False):
        raise RuntimeError("CUDA out of memory")
    with observe.stage("inference", on_error=False):
        pass

    assert sample(metrics, "shelfsight_stage_duration_seconds_count", stage="decode") == 1
    assert sample(metrics, "shelfsight_stage_duration_seconds_count", stage="inference") == 1


def test_events_consumed_appear_under_the_source_name_only_once_something_was_consumed() -> None:
    metrics = ServiceMetrics()
    observe = PipelineMetrics(metrics, "kafka")
    observe.consumed(0)
    assert metrics.registry.get_sample_value("shelfsight_events_consumed_total", {"source": "kafka"}) is None
    observe.consumed(3)
    assert sample(metrics, "shelfsight_events_consumed_total", source="kafka") == 3
