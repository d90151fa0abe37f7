"""Audited precision that acts, end to end on a real PostgreSQL: people's answers below target on one group's
auto-filled values make the review worker suspend that group's auto-fill; two running daemon replicas (two
enrichment services against the same database, each with its own events) then store its values as suggestions and
audit its products at the raised rate, until `shelfsight models resume` restores auto-filling in both. Values set by
people are never touched."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from connectors.db import AnnotationRecord, AnnotationValue, ProductStore, ReviewStore
from connectors.records import Alternative, AttributeValue, ProductResult
from daemon.cli import app
from daemon.config import Settings
from daemon.review.worker import build_review_worker
from daemon.service import Service, build_service
from tests.daemon.harness import Db, wait_until

pytestmark = pytest.mark.postgres

VERSION = "cc0-untrained-test"  # the calibrated fixture bundle: kids always auto-filled, garment never


def settings(tmp_path: Path, name: str, database_url: str, bundle: Path, file_root: Path) -> Settings:
    review = {
        "enabled": True,
        "audit_rate": 0.0,  # no product is audited ...
        "suspended_audit_rate": 1.0,  # ... but every one with a suspended group's value
        "groups": {"garment": {"review": False}},  # garment suggestions never route a product
        "suspension_poll_s": 1.0,
        "suspend_min_audited": 20,
        "label_studio_token": "unused",
        "label_studio_url": "http://127.0.0.1:9",  # nothing listens: the worker's sync finds Label Studio down
        "webhook_port": 0,
    }
    return Settings(
        source="local",
        model_path=bundle,
        database_url=database_url,
        device="cpu",
        http_port=0,
        reload_interval_s=0,
        local={"events_dir": tmp_path / name},  # type: ignore[arg-type]
        fetch={"file_root": file_root, "attempts": 1},  # type: ignore[arg-type]
        review=review,  # type: ignore[arg-type]
    )


class Replica:
    """One enrichment daemon (`build_service`, as `shelfsight run` builds it) running on its own thread."""

    def __init__(self, config: Settings) -> None:
        config.local.events_dir.mkdir(parents=True)
        self.events = config.local.events_dir
        self.service: Service = build_service(config)
        self.thread = threading.Thread(target=self.service.enricher.run, daemon=True)
        self.thread.start()

    def send(self, product_id: str, image: Path, name: str | None = None) -> None:
        """An event file (`name`, default the product id; processed files move to done/, so a name is used once)."""
        event = {"schema_version": 1, "product_id": product_id, "image_urls": [image.as_uri()]}
        tmp = self.events / f"{name or product_id}.tmp"
        tmp.write_text(json.dumps(event))
        os.replace(tmp, self.events / f"{name or product_id}.json")  # never read half-written

    def suspended_groups(self) -> float:
        value = self.service.metrics.registry.get_sample_value("shelfsight_autofill_suspended_groups")
        return -1.0 if value is None else value

    def stop(self) -> None:
        self.service.enricher.request_stop()
        self.thread.join(timeout=60)
        self.service.close()


@pytest.fixture
def replicas(
    tmp_path: Path, postgres_url: str, calibrated_bundle_path: Path, cc0_images: list[Path]
) -> Iterator[tuple[Replica, Replica]]:
    root = cc0_images[0].parent
    a = Replica(settings(tmp_path, "events-a", postgres_url, calibrated_bundle_path, root))
    b = Replica(settings(tmp_path, "events-b", postgres_url, calibrated_bundle_path, root))
    yield a, b
    a.stop()
    b.stop()


def wrong_answers(store: ProductStore, n: int) -> None:
    """`n` audit answers that disagree with the model's auto-filled kids value (as the review worker records them)."""
    kids = AttributeValue("kids", "False", 0.9, [Alternative("False", 0.9)])
    model = {"value": "False", "confidence": 0.9, "box": None, "auto_filled": True, "withheld_by": None}
    results = [
        ProductResult(
            product_id=f"audited-{i}",
            title=None,
            category_hint=None,
            event_id=None,
            image_url=f"https://cdn.example/audited-{i}.jpg",
            image_digest=f"d-audited-{i}",
            model_version=VERSION,
            attributes=[kids],
            source="test",
            review={"reason": "audit", "priority": 0.1, "model_values": {"kids": model}},  # type: ignore[typeddict-item]
        )
        for i in range(n)
    ]
    store.write_results(results)
    reviews = ReviewStore(store)
    for i, item in enumerate(reviews.outbox_items()):
        reviews.record_annotation(
            AnnotationRecord(
                task_id=1000 + i,
                annotation_id=1000 + i,
                product_id=item.product_id,
                annotator="alice@example.com",
                created_at=item.created_at,
                updated_at=item.created_at,
                revision=f"r{i}",
                values=[AnnotationValue("kids", "applied", "True", None, "False", False, "auto")],
                outbox_id=item.id,
            )
        )


def kids(store: ProductStore, product_id: str) -> Any:
    product = store.get_product(product_id)
    return None if product is None or "kids" not in product.attributes else product.attributes["kids"]


def routed_reasons(store: ProductStore, product_ids: set[str]) -> dict[str, str]:
    return {i.product_id: i.reason for i in ReviewStore(store).outbox_items() if i.product_id in product_ids}


def test_answers_below_target_suspend_a_groups_auto_fill_in_every_replica_until_resumed(
    replicas: tuple[Replica, Replica],
    tmp_path: Path,
    postgres_url: str,
    calibrated_bundle_path: Path,
    cc0_images: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = replicas
    store = ProductStore(postgres_url)
    image = iter(cc0_images)
    a.send("before-a", next(image))
    b.send("before-b", next(image))
    wait_until(lambda: None not in (kids(store, "before-a"), kids(store, "before-b")), 180, "the first products")
    assert kids(store, "before-a").auto_filled and kids(store, "before-b").auto_filled
    store.set_human_value("before-a", "kids", "True", annotator="bob@example.com")  # a person's value

    # the audit: 25 answers, all wrong; the review worker (Label Studio down) measures and suspends kids
    wrong_answers(store, 25)
    worker_settings = settings(tmp_path, "worker", postgres_url, calibrated_bundle_path, cc0_images[0].parent)
    worker = build_review_worker(worker_settings)
    assert worker.sync().unavailable is not None  # Label Studio is down; the audit ran all the same
    metrics = worker.metrics.registry
    labels = {"group": "kids", "model_version": VERSION}
    assert metrics.get_sample_value("shelfsight_autofill_suspended", labels) == 1
    assert metrics.get_sample_value("shelfsight_autofill_audited_values", labels) == 25
    assert metrics.get_sample_value("shelfsight_autofill_audited_precision_upper", labels) < 0.97
    assert metrics.get_sample_value("shelfsight_autofill_suspensions_total", {"group": "kids"}) == 1
    worker.store.store.close()

    # both replicas follow within their poll (1 s here; generous deadline for a loaded machine)
    wait_until(lambda: a.suspended_groups() == 1 and b.suspended_groups() == 1, 60, "both replicas to see it")
    monkeypatch.setenv("SHELFSIGHT_DATABASE_URL", postgres_url)
    monkeypatch.setenv("SHELFSIGHT_MODEL_PATH", str(calibrated_bundle_path))
    shown = CliRunner().invoke(app, ["models", "precision"])
    assert shown.exit_code == 0, shown.output
    (row,) = [line for line in shown.output.splitlines() if line.startswith("kids ")]
    assert row.split()[1:4] == [VERSION, "25", "0.000"] and row.endswith("suspended")

    a.send("during-a", next(image))
    b.send("during-b", next(image))
    a.send("before-a", next(image), name="before-a-again")  # a new photo of the product a person set kids on
    db = Db(postgres_url)
    photos_of = "SELECT COUNT(*) FROM processing_log WHERE product_id = 'before-a'"
    wait_until(lambda: None not in (kids(store, "during-a"), kids(store, "during-b")), 180, "products while suspended")
    wait_until(lambda: db.scalar(photos_of) == 2, 180, "the new photo of the product a person set")
    for product in ("during-a", "during-b"):
        value = kids(store, product)
        assert (value.source, value.auto_filled, value.withheld_by) == ("model", False, "suspended")
    assert routed_reasons(store, {"during-a", "during-b"}) == {"during-a": "audit", "during-b": "audit"}
    withheld = "shelfsight_autofill_suspended_values_total"
    assert all(r.service.metrics.registry.get_sample_value(withheld, {"group": "kids"}) for r in (a, b))

    resumed = CliRunner().invoke(app, ["models", "resume", "kids", "--by", "operator:carol"])
    assert resumed.exit_code == 0 and f"auto-fill of kids resumed for {VERSION}" in resumed.output
    wait_until(lambda: a.suspended_groups() == 0 and b.suspended_groups() == 0, 60, "both replicas to resume")
    a.send("after-a", next(image))
    b.send("after-b", next(image))
    wait_until(lambda: None not in (kids(store, "after-a"), kids(store, "after-b")), 180, "products after resuming")
    for product in ("after-a", "after-b"):
        value = kids(store, product)
        assert (value.source, value.auto_filled, value.withheld_by) == ("model", True, None)
    person = kids(store, "before-a")
    assert (person.source, person.value, person.annotator) == ("human", "True", "bob@example.com")
    db.engine.dispose()
    store.close()
