"""A product whose photos cannot be read: with a title the engine reads, it is decided from the title alone (marked
so) instead of dead-lettered; without a title it is dead-lettered as before."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import numpy as np
import pytest

from connectors.images import ImageFetcher
from connectors.source import SourceRecord
from daemon.metrics import ServiceMetrics
from daemon.pipeline import Enricher, EventJob, PermanentFailure, PipelineOptions
from daemon.pipeline.merge import product_result
from learner.inference.decoding import ValueDecoder
from learner.inference.product_decision import FROM_TITLE, Fusion, GroupFusion, ProductDecider
from learner.model.taxonomy import load_taxonomy
from tests.plugins.http import LocalHTTPServer

TAXONOMY = load_taxonomy("fashion-products")
SINGLE = [g for g in TAXONOMY.classifier_groups if not g.multi_label]


class Titles:
    """A title model stand-in that reads every title as each group's first value at 0.99."""

    def __init__(self) -> None:
        self.autofill_thresholds = {g.name: 0.95 for g in SINGLE}

    def probabilities(self, titles: list[str | None]) -> dict[str, np.ndarray]:
        rows = {g.name: np.r_[0.99, np.full(len(g.values) - 1, 0.01 / (len(g.values) - 1))] for g in SINGLE}
        return {g: np.array([row for _ in titles]) for g, row in rows.items()}


class UnreadableEngine:
    """The engine's CPU half and decision, for events whose photos never arrive."""

    model_version = "v-title"

    def __init__(self) -> None:
        fusion = Fusion({g.name: GroupFusion() for g in SINGLE})
        self.decider = ProductDecider(TAXONOMY, ValueDecoder(TAXONOMY), Titles(), fusion)

    def prepare(self, data: bytes) -> bytes:
        raise AssertionError("no photo of these events can be fetched")


def prepared(http_server: LocalHTTPServer, event: dict[str, Any]) -> EventJob:
    """The event through the pipeline's fetch stage: what it hands the writer."""
    engine = UnreadableEngine()
    nothing = cast(Any, None)
    with ImageFetcher(allow_private_networks=True, total_timeout_s=5) as fetcher:
        pipeline = Enricher(
            source=nothing,
            dead_letters=nothing,
            store=nothing,
            fetcher=fetcher,
            engine=cast(Any, engine),
            metrics=ServiceMetrics(),
            options=PipelineOptions(fetch_attempts=1),
        )
        value = json.dumps({"schema_version": 1, "image_urls": [http_server.url("/404")], **event}).encode()
        job = EventJob(record=SourceRecord("products", 0, 1, None, value, [], 0), consumed_at=time.monotonic())
        pipeline.preparer.submit(job).result(timeout=30)
        finished = pipeline.lanes.write.get(timeout=60)  # generous: a loaded machine
        pipeline.preparer.shutdown()
    assert finished is not None and finished.job is job
    if finished.failure is not None:
        raise finished.failure
    return job


def test_an_event_whose_photos_all_fail_is_decided_from_its_title_alone(http_server: LocalHTTPServer) -> None:
    job = prepared(http_server, {"product_id": "p1", "title": "Puma Men Black Tshirt"})
    assert job.expected == 0 and job.images == []

    result = product_result(job, cast(Any, job.engine).decider, "test")

    assert result.model_version == "v-title" and result.image_url == http_server.url("/404")
    values = {a.attribute: a for a in result.attributes}
    assert set(values) == {g.name for g in SINGLE}
    assert all(a.readings is not None and a.readings["decided_from"] == FROM_TITLE for a in values.values())
    assert all(a.readings is not None and a.readings["photos"] is None for a in values.values())
    assert values["gender"].value == "Men" and values["gender"].auto_filled  # 0.99 >= the title's own 0.95


def test_without_a_title_an_event_whose_photo_fails_is_dead_lettered_as_before(http_server: LocalHTTPServer) -> None:
    with pytest.raises(PermanentFailure) as failure:
        prepared(http_server, {"product_id": "p2"})
    assert failure.value.reason == "fetch_not_found"
