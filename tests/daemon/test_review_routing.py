"""The enrichment daemon's review router as `build_service` wires it (daemon/review.py: `build_review_router`), on a
real SQLite product database: caps that survive a restart, and thresholds that follow a hot-reloaded model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from connectors.db import Alternative, AttributeValue, ProductResult, ProductStore
from daemon.config import Settings
from daemon.metrics import ReviewRoutingMetrics
from daemon.review import build_review_router
from learner.taxonomy import Taxonomy, load_taxonomy

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def taxonomy() -> Taxonomy:
    return load_taxonomy(ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml")


def bundle(version: str, shirt_threshold: float) -> Any:
    return SimpleNamespace(
        model_version=version, taxonomy=taxonomy(), thresholds={"garment": {"Shirt": shirt_threshold}}
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
