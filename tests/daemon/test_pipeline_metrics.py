"""The pipeline's metrics middleware: stages are timed around their work, retries and failures counted beside it."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any, cast

import pytest

from connectors.images import FetchedImage, FetchError, FetchReason
from connectors.records import TITLE_PHOTO_CONFLICT, AttributeValue
from daemon.metrics import PipelineMetrics, ServiceMetrics
from daemon.pipeline import Enricher, PipelineOptions
from learner.inference.decoding import ValueDecoder
from learner.inference.product_decision import FROM_BOTH, FROM_PHOTOS, FROM_TITLE, ProductDecider
from learner.model.taxonomy import load_taxonomy


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


def test_the_served_models_groups_count_title_decisions_and_conflicts_from_zero_before_any_title() -> None:
    # The conflict share alert (ShelfSightTitlePhotoConflictsHigh) divides these counters per group: every
    # single-choice group of the model served has its series at 0 from the start, titles read or not.
    taxonomy = load_taxonomy("fashion-products")
    engine = SimpleNamespace(
        model_version="v1",
        bundle=SimpleNamespace(backbone_name="resnet50", taxonomy=taxonomy),
        decider=ProductDecider(taxonomy, ValueDecoder(taxonomy)),
    )
    metrics = ServiceMetrics()
    nothing = cast(Any, None)
    enricher = Enricher(
        source=nothing, dead_letters=nothing, store=nothing, fetcher=nothing, engine=nothing, metrics=metrics
    )
    assert metrics.registry.get_sample_value("shelfsight_title_photo_conflicts_total", {"group": "gender"}) is None
    enricher.install_engine(cast(Any, engine))

    for group in ("gender", "articleType", "baseColour", "usage"):
        conflicts = metrics.registry.get_sample_value("shelfsight_title_photo_conflicts_total", {"group": group})
        assert conflicts == 0.0, group
        for decided_from in (FROM_BOTH, FROM_TITLE, FROM_PHOTOS):
            labels = {"group": group, "decided_from": decided_from}
            assert metrics.registry.get_sample_value("shelfsight_title_decisions_total", labels) == 0.0
    multi_label = {"group": "detectedObjects"}
    assert metrics.registry.get_sample_value("shelfsight_title_photo_conflicts_total", multi_label) is None

    readings = {"decided_from": FROM_BOTH, "title": None, "photos": None}
    PipelineMetrics(metrics, "kafka").decided(
        [
            AttributeValue("gender", "Men", 0.6, withheld_by=TITLE_PHOTO_CONFLICT, readings=readings),
            AttributeValue("usage", "Casual", 0.99, auto_filled=True, readings=readings),
        ]
    )
    assert sample(metrics, "shelfsight_title_photo_conflicts_total", group="gender") == 1
    assert sample(metrics, "shelfsight_title_photo_conflicts_total", group="usage") == 0
    assert sample(metrics, "shelfsight_title_decisions_total", group="gender", decided_from=FROM_BOTH) == 1
    assert sample(metrics, "shelfsight_title_decisions_total", group="usage", decided_from=FROM_BOTH) == 1
