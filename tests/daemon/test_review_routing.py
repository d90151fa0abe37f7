"""The enrichment daemon's review router as `build_service` wires it (daemon/routing.py: `build_review_router`), on a
real product database: caps that survive a restart and that replicas share, routing through a database outage,
and thresholds that follow a hot-reloaded model."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from connectors.db import ProductStore
from connectors.records import Alternative, AttributeValue, ProductResult
from daemon.config import Settings
from daemon.metrics import ReviewRoutingMetrics
from daemon.routing import build_review_router
from learner.model.taxonomy import Taxonomy, load_taxonomy

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def taxonomy() -> Taxonomy:
    return load_taxonomy(ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml")


def bundle(version: str, shirt_threshold: float) -> Any:
    return SimpleNamespace(
        model_version=version,
        taxonomy=taxonomy(),
        thresholds={"garment": {"Shirt": shirt_threshold}},
        autofill_thresholds={},  # a bundle made before calibration: no auto-fill thresholds
    )


def result(product_id: str, version: str, confidence: float = 0.8) -> ProductResult:
    return ProductResult(
        product_id=product_id,
        title=None,
        category_hint=None,
        event_id=None,
        image_url="https://cdn.example/p.jpg",
        image_digest=f"d-{product_id}",
        model_version=version,
        attributes=[
            AttributeValue("garment", "Shirt", confidence, [Alternative("Shirt", confidence)]),
            AttributeValue("kids", "False", 0.99, [Alternative("False", 0.99), Alternative("True", 0.01)]),
        ],
        source="test",
    )


def settings(**review: Any) -> Settings:
    return Settings(review={"enabled": True, "audit_rate": 0.0, **review})  # type: ignore[arg-type]


def test_the_router_follows_a_hot_reloaded_models_thresholds(sqlite_url: str) -> None:
    store = ProductStore(sqlite_url)
    store.migrate()
    served = {"bundle": bundle("v1", shirt_threshold=0.5)}
    metrics = ReviewRoutingMetrics()
    route = build_review_router(
        settings(), served["bundle"], store, metrics, current_bundle=lambda: served["bundle"], clock=lambda: NOW
    )
    assert route(result("a", "v1"), []) is None  # 0.8 >= 0.5
    served["bundle"] = bundle("v2", shirt_threshold=0.9)  # the new champion is stricter
    payload = route(result("b", "v2"), [])
    assert payload is not None and payload["low_values"][0]["threshold"] == 0.9
    assert route(result("c", "v1"), []) is None  # late results of the old model keep its thresholds
    assert metrics.routed.labels("low_confidence")._value.get() == 1
    store.close()


def test_the_caps_count_what_the_outbox_already_holds_after_a_restart(sqlite_url: str) -> None:
    store = ProductStore(sqlite_url)
    store.migrate()
    config = settings(max_per_hour=2, default_threshold=0.99)
    first = build_review_router(config, bundle("v1", 0.99), store, ReviewRoutingMetrics(), clock=lambda: NOW)
    routed = [r for i in range(2) if (r := first(result(f"p{i}", "v1"), []))]
    store.write_results(
        [ProductResult(**{**result(f"p{i}", "v1").__dict__, "review": p}) for i, p in enumerate(routed)]
    )

    # the daemon restarts a minute later: the hour's cap is already used
    metrics = ReviewRoutingMetrics()
    later = lambda: datetime.now(UTC) + timedelta(minutes=1)  # noqa: E731 - outbox rows carry the real time
    again = build_review_router(config, bundle("v1", 0.99), store, metrics, clock=later)
    assert again(result("p9", "v1"), []) is None
    assert metrics.capped.labels("low_confidence")._value.get() == 1
    store.close()


def write_routed(store: ProductStore, routed: list[tuple[str, dict[str, Any]]]) -> None:
    store.write_results([ProductResult(**{**result(pid, "v1").__dict__, "review": payload}) for pid, payload in routed])


@pytest.mark.postgres
def test_replicas_share_the_caps_through_the_outbox(postgres_url: str) -> None:
    store = ProductStore(postgres_url)
    store.migrate()
    config = settings(max_per_hour=3, default_threshold=0.99, caps_sync_s=10)
    now = {"t": datetime.now(UTC)}
    clock = lambda: now["t"]  # noqa: E731
    a, b = (build_review_router(config, bundle("v1", 0.99), store, ReviewRoutingMetrics(), clock=clock) for _ in "ab")

    routed = [(pid, p) for pid in ("a1", "a2", "a3") if (p := a(result(pid, "v1"), []))]
    assert len(routed) == 3  # replica a used the whole hour's budget
    write_routed(store, routed)
    assert b(result("b1", "v1"), []) is not None  # b has not read the outbox since it started: one more gets through

    now["t"] += timedelta(seconds=11)  # b's next read of the outbox sees a's three routes
    assert b(result("b2", "v1"), []) is None
    now["t"] += timedelta(minutes=61)  # an hour later there is room again, for both
    assert b(result("b3", "v1"), []) is not None
    store.close()


@pytest.mark.postgres
def test_a_database_outage_does_not_stop_routing_and_is_logged(
    postgres_server: Any, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = ProductStore(postgres_url, connect_timeout_s=1.0)
    store.migrate()
    config = settings(max_per_hour=2, default_threshold=0.99, caps_sync_s=10)
    now = {"t": datetime.now(UTC)}
    route = build_review_router(config, bundle("v1", 0.99), store, ReviewRoutingMetrics(), clock=lambda: now["t"])

    postgres_server.stop()
    try:
        now["t"] += timedelta(seconds=11)
        with caplog.at_level(logging.WARNING, logger="shelfsight.review"):
            decisions = [route(result(f"p{i}", "v1"), []) for i in range(3)]
    finally:
        postgres_server.start()
    # the replica kept routing, within its own count of the caps, and said why it could not do better
    assert [d is not None for d in decisions] == [True, True, False]
    warnings = [r.getMessage() for r in caplog.records if "cannot read the outbox" in r.getMessage()]
    assert len(warnings) == 1  # one failed read, then a minute before the next try
    assert postgres_server.password not in warnings[0]
    store.close()


def garment_result(product_id: str, garment: str, confidence: float = 0.8) -> ProductResult:
    alternatives = [Alternative(garment, confidence), Alternative("Blouse", 1.0 - confidence)]
    base = result(product_id, "v1")
    return ProductResult(
        **{**base.__dict__, "attributes": [AttributeValue("garment", garment, confidence, alternatives)]}
    )


@pytest.mark.parametrize("routing", ["class_balanced", "cluster_margin"])
def test_a_diversity_routing_queues_another_kind_of_product_before_a_second_of_the_same(
    sqlite_url: str, routing: str
) -> None:
    store = ProductStore(sqlite_url)
    store.migrate()
    metrics = ReviewRoutingMetrics()
    config = settings(routing=routing, default_threshold=0.99)
    route = build_review_router(config, bundle("v1", 0.99), store, metrics, clock=lambda: NOW)
    first, second, other = (route(garment_result(p, g), []) for p, g in (("a", "Shirt"), ("b", "Shirt"), ("c", "Hat")))
    assert first is not None and second is not None and other is not None
    assert {first["reason"], second["reason"], other["reason"]} == {"low_confidence"}
    assert other["priority"] > second["priority"] and first["priority"] > second["priority"]
    assert metrics.routed.labels("low_confidence")._value.get() == 3
    store.close()
