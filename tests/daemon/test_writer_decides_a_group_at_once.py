"""The writer decides a write group's products in one call (`ProductDecider.decide_many`), and a product the group's
decision fails on is decided alone: only it is dead-lettered."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from connectors.db.types import WriteStats
from connectors.events import ProductEvent
from connectors.records import ProductResult
from connectors.source import SourceRecord
from daemon.metrics import ServiceMetrics
from daemon.pipeline import Enricher, EventJob, PipelineOptions
from daemon.pipeline.work import Finished
from learner.inference.decoding import ValueDecoder
from learner.inference.engine import ImageTags
from learner.inference.product_decision import FROM_TITLE, Fusion, GroupFusion, ProductDecider
from learner.model.taxonomy import load_taxonomy

TAXONOMY = load_taxonomy("fashion-products")
SINGLE = [g for g in TAXONOMY.classifier_groups if not g.multi_label]


class Titles:
    """Reads every title as each group's first value at 0.99; a title saying "boom" breaks it."""

    def __init__(self) -> None:
        self.autofill_thresholds = {g.name: 0.95 for g in SINGLE}

    def probabilities(self, titles: Sequence[str | None]) -> dict[str, np.ndarray]:
        if any("boom" in (t or "") for t in titles):
            raise RuntimeError("a title the model cannot read")
        rows = {g.name: np.r_[0.99, np.full(len(g.values) - 1, 0.01 / (len(g.values) - 1))] for g in SINGLE}
        return {g: np.array([row for _ in titles]) for g, row in rows.items()}


class CountingDecider(ProductDecider):
    def __init__(self) -> None:
        super().__init__(TAXONOMY, ValueDecoder(TAXONOMY), Titles(), Fusion({g.name: GroupFusion() for g in SINGLE}))
        self.batches: list[int] = []

    def decide_many(self, products: Sequence[tuple[Sequence[ImageTags], str | None]]) -> list[Any]:
        self.batches.append(len(products))
        return super().decide_many(products)


class Engine:
    model_version = "v-title"

    def __init__(self) -> None:
        self.decider = CountingDecider()
        self.bundle = cast(Any, type("Bundle", (), {"shift_guard": None}))


class Store:
    def __init__(self) -> None:
        self.written: list[ProductResult] = []

    def write_results(self, results: Sequence[ProductResult]) -> WriteStats:
        self.written.extend(results)
        return WriteStats(written=len(results))


def finished(offset: int, title: str, engine: Engine) -> Finished:
    """A title-only event (its photos all failed) as the writer gets it."""
    value = json.dumps({"schema_version": 1, "product_id": f"p{offset}", "image_urls": ["http://x/1.jpg"]}).encode()
    job = EventJob(record=SourceRecord("products", 0, offset, None, value, [], 0), consumed_at=time.monotonic())
    job.event = ProductEvent.model_validate({**json.loads(value), "title": title})
    job.engine = cast(Any, engine)
    return Finished(job)


def writer(store: Store, dead: list[tuple[int, str]], engine: Engine) -> Any:
    def dead_letters(record: SourceRecord, reason: str, detail: str, attempts: int) -> None:
        dead.append((record.offset, reason))

    nothing = cast(Any, None)
    return Enricher(
        source=nothing,
        dead_letters=dead_letters,
        store=cast(Any, store),
        fetcher=nothing,
        engine=cast(Any, engine),
        metrics=ServiceMetrics(),
        options=PipelineOptions(),
    ).writer


def test_a_write_group_is_decided_in_one_call_with_the_values_each_product_gets_alone() -> None:
    engine, store, dead = Engine(), Store(), list[tuple[int, str]]()
    group = [finished(i, f"Puma Tshirt {i}", engine) for i in range(5)]
    writer(store, dead, engine).write(group)
    assert engine.decider.batches == [5] and dead == []
    assert [r.product_id for r in store.written] == [f"p{i}" for i in range(5)]
    for r in store.written:
        assert r.attributes == engine.decider.decide([], r.title)
        assert {a.readings["decided_from"] for a in r.attributes if a.readings} == {FROM_TITLE}


def test_a_product_the_groups_decision_fails_on_is_decided_alone_and_only_it_is_dead_lettered() -> None:
    engine, store, dead = Engine(), Store(), list[tuple[int, str]]()
    group = [finished(i, "boom" if i == 2 else f"Puma Tshirt {i}", engine) for i in range(4)]
    writer(store, dead, engine).write(group)
    assert dead == [(2, "internal_error")]
    assert [r.product_id for r in store.written] == ["p0", "p1", "p3"]
