"""The audit's reads and the auto-fill suspensions (connectors/db/audit_store.py) against the real databases (SQLite
and PostgreSQL 18): which answers count as audit answers, the label-free estimate's inputs, one open suspension per
group and model version, and resuming."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from connectors.db import AnnotationRecord, AnnotationValue, AuditStore, ProductStore, ReviewStore
from connectors.records import Alternative, AttributeValue, ProductResult

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Iterator[ProductStore]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    s = ProductStore(url, connect_timeout_s=10.0)  # local, but the machine may be loaded
    s.migrate()
    yield s
    s.close()


def routed(
    product_id: str, version: str = "v1", auto_filled: bool = True, withheld_by: str | None = None
) -> ProductResult:
    garment = AttributeValue(
        "garment", "Shirt", 0.9, [Alternative("Shirt", 0.9)], auto_filled=auto_filled, withheld_by=withheld_by
    )
    model = {"value": "Shirt", "confidence": 0.9, "box": None, "auto_filled": auto_filled, "withheld_by": withheld_by}
    return ProductResult(
        product_id=product_id,
        title=None,
        category_hint=None,
        event_id=None,
        image_url=f"https://cdn.example/{product_id}.jpg",
        image_digest=f"d-{product_id}",
        model_version=version,
        attributes=[garment, AttributeValue("kids", "False", 0.6, [Alternative("False", 0.6)])],
        source="test",
        review={"reason": "audit", "priority": 0.1, "model_values": {"garment": model}},  # type: ignore[typeddict-item]
    )


def answer(reviews: ReviewStore, product_id: str, task: int, right: bool, fill: str | None) -> None:
    (item,) = [i for i in reviews.outbox_items() if i.product_id == product_id]
    value = "Shirt" if right else "Dress"
    reviews.record_annotation(
        AnnotationRecord(
            task_id=task,
            annotation_id=task,
            product_id=product_id,
            annotator="alice@example.com",
            created_at=T0,
            updated_at=T0,
            revision=f"r{task}",
            values=[AnnotationValue("garment", "applied", value, None, "Shirt", right, fill)],
            outbox_id=item.id,
        )
    )


def test_answers_on_auto_filled_and_suspended_values_count_and_suggestions_do_not(store: ProductStore) -> None:
    reviews, audit = ReviewStore(store), AuditStore(store)
    fills = {"a": "auto", "b": "auto", "c": "suspended", "d": "suggestion", "e": None}
    store.write_results(
        [routed(p, auto_filled=f == "auto", withheld_by=f if f == "suspended" else None) for p, f in fills.items()]
    )
    for task, (product, fill) in enumerate(fills.items(), start=1):
        answer(reviews, product, task, right=product != "b", fill=fill)
    (garment,) = audit.audited_answers()
    assert (garment.group, garment.model_version, garment.audited, garment.right) == ("garment", "v1", 3, 2)
    confidence = {(c.group, c.model_version): c for c in audit.autofill_confidence()}
    # the label-free estimate reads what is stored: the model values auto-filled or withheld by a suspension (the
    # answered products now hold people's values, so only the kids values and none of the garments remain)
    assert set(confidence) == {("kids", "v1")}
    assert confidence[("kids", "v1")].values == 5 and confidence[("kids", "v1")].mean_confidence == pytest.approx(0.6)


def test_one_suspension_per_group_and_version_stays_open_until_resumed(store: ProductStore) -> None:
    audit = AuditStore(store)
    first = audit.suspend("garment", "v1", reason="below target", figures={"audited": 30}, by="worker-a", now=T0)
    assert first is not None and first.open and first.figures == {"audited": 30}
    assert audit.suspend("garment", "v1", reason="below target", figures={}, by="worker-b") is None  # already open
    audit.suspend("garment", "v0", reason="below target", figures={}, by="worker-a")
    assert audit.suspended_groups() == {("garment", "v1"), ("garment", "v0")}

    (ended,) = audit.resume("garment", by="operator", model_version="v1", now=T0 + timedelta(hours=1))
    assert (ended.resumed_by, ended.resumed_at) == ("operator", T0 + timedelta(hours=1))
    assert audit.suspended_groups() == {("garment", "v0")}
    assert [s.model_version for s in audit.resume_other_versions("v1", by="promotion of v1")] == ["v0"]
    assert audit.suspended_groups() == frozenset() and audit.suspensions(open_only=True) == []
    assert audit.suspend("garment", "v1", reason="below target again", figures={}, by="worker-a") is not None


def test_answers_recorded_before_a_resume_no_longer_count(store: ProductStore) -> None:
    reviews, audit = ReviewStore(store), AuditStore(store)
    store.write_results([routed("a"), routed("b")])
    answer(reviews, "a", 1, right=False, fill="auto")
    audit.suspend("garment", "v1", reason="below target", figures={}, by="worker")
    audit.resume("garment", by="operator", now=datetime.now(UTC))
    assert audit.audited_answers() == []  # the measurement starts afresh
    answer(reviews, "b", 2, right=True, fill="auto")
    (garment,) = audit.audited_answers()
    assert (garment.audited, garment.right) == (1, 1) and garment.since is not None
