"""The retraining side of the product database (connectors/db/retraining_store.py) on real SQLite and PostgreSQL:
human corrections with their images, the counts the trigger reads, and the run log."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from connectors.db import ProductStore, RetrainingStore
from connectors.records import AttributeValue, ProductResult


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


@pytest.fixture
def store(database_url: str) -> Iterator[ProductStore]:
    s = ProductStore(database_url, connect_timeout_s=10.0)  # local, but the machine may be loaded
    s.migrate()
    yield s
    s.close()


def _model_result(product_id: str, digest: str, url: str, garment: str = "Shirt") -> ProductResult:
    return ProductResult(
        product_id=product_id,
        title=None,
        category_hint=None,
        event_id=None,
        image_url=url,
        image_digest=digest,
        model_version="m1",
        attributes=[AttributeValue("garment", garment, 0.4), AttributeValue("kids", "False", 0.9)],
        source="test",
    )


def test_human_corrections_are_the_annotators_values_with_their_images(store: ProductStore) -> None:
    store.write_results(
        [_model_result("p1", "d1", "file:///img/p1.jpg"), _model_result("p2", "d2", "file:///img/p2.jpg")]
    )
    store.set_human_value("p1", "garment", "Dress", annotator="ann", image_digest="d1")
    store.set_human_value("p2", "garment", "Skirt", annotator="ann")  # no digest: the product's latest image
    learner = RetrainingStore(store)
    corrections = learner.human_corrections()
    assert [(c.product_id, c.attribute, c.value, c.image_digest, c.image_url) for c in corrections] == [
        ("p1", "garment", "Dress", "d1", "file:///img/p1.jpg"),
        ("p2", "garment", "Skirt", "d2", "file:///img/p2.jpg"),
    ]
    # the model's own values (kids, and everything on p2 but garment) are never training labels
    assert all(c.attribute == "garment" for c in corrections)
    assert learner.count_human_corrections() == 2
    assert learner.count_human_corrections(since=corrections[0].updated_at) == 1
    assert [c.product_id for c in learner.human_corrections(since=corrections[0].updated_at)] == ["p2"]


def test_a_run_left_running_by_a_dead_process_is_marked_abandoned_by_the_next(store: ProductStore) -> None:
    learner = RetrainingStore(store)
    first, abandoned = learner.start_run("schedule", "v1")
    assert abandoned == 0
    second, abandoned = learner.start_run("schedule", "v1")
    assert abandoned == 1
    until = datetime(2026, 1, 1, tzinfo=UTC)
    learner.finish_run(second, "rejected", challenger_version="v2", corrections_used=3, corrections_until=until)
    runs = {r.id: r for r in learner.runs()}
    assert runs[first].status == "abandoned"
    last = learner.last_completed_run()
    assert last is not None and last.id == second and last.corrections_until == until


def test_the_trigger_counts_products_with_new_human_values_and_the_values_separately(store: ProductStore) -> None:
    store.write_results([_model_result(p, f"d-{p}", f"file:///img/{p}.jpg") for p in ("p1", "p2", "p3")])
    learner = RetrainingStore(store)
    for attribute, value in (("garment", "Dress"), ("kids", "True")):  # one annotator answers two groups of p1
        store.set_human_value("p1", attribute, value, annotator="ann")
    assert learner.count_new_corrections() == (1, 2)
    store.set_human_value("p2", "garment", "Skirt", annotator="ann")
    assert learner.count_corrected_products() == 2 and learner.count_human_corrections() == 3
    assert learner.new_corrections_since_last_run() == (2, 3)  # no completed run yet: everything is new


def test_a_correction_carries_its_products_title_for_the_title_model(store: ProductStore) -> None:
    titled = dataclasses.replace(_model_result("p1", "d1", "file:///img/p1.jpg"), title="Acme Kids Red Dress")
    store.write_results([titled, _model_result("p2", "d2", "file:///img/p2.jpg")])
    store.set_human_value("p1", "garment", "Dress", annotator="ann", image_digest="d1")
    store.set_human_value("p2", "garment", "Skirt", annotator="ann", image_digest="d2")
    corrections = RetrainingStore(store).human_corrections()
    assert [(c.product_id, c.title) for c in corrections] == [("p1", "Acme Kids Red Dress"), ("p2", None)]
