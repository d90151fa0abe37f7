"""The review loop's tables against the real databases (SQLite and PostgreSQL 18): the transactional outbox written
with the model's results, claiming and retrying it, and recording annotations idempotently into the catalog."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from connectors.db import AnnotationRecord, AnnotationValue, ClaimOwner, ProductStore, ReviewStore
from connectors.db.result_writes import human_write_time, write_human_value
from connectors.records import Alternative, AttributeValue, ProductResult

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Iterator[ProductStore]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    s = ProductStore(url, connect_timeout_s=10.0)  # local, but the machine may be loaded
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def reviews(store: ProductStore) -> ReviewStore:
    return ReviewStore(store)


def routed(product_id: str = "p1", priority: float = 0.5, garment: str = "Shirt", **changes: object) -> ProductResult:
    result = ProductResult(
        product_id=product_id,
        title="Linen shirt",
        category_hint=None,
        event_id=f"e-{product_id}",
        image_url=f"https://cdn.example/{product_id}.jpg",
        image_digest=f"d-{product_id}",
        model_version="m1",
        attributes=[AttributeValue("garment", garment, 0.4, [Alternative(garment, 0.4)])],
        source="test",
        review={
            "reason": "low_confidence",
            "priority": priority,
            "model_values": {"garment": {"value": garment, "confidence": 0.4, "box": None}},
        },
    )
    return dataclasses.replace(result, **changes)  # type: ignore[arg-type]


def annotation(
    annotation_id: int = 101,
    value: str = "Dress",
    *,
    task_id: int = 7,
    product_id: str = "p1",
    annotator: str = "alice@example.com",
    updated: datetime = T0,
    outcome: str = "applied",
) -> AnnotationRecord:
    return AnnotationRecord(
        task_id=task_id,
        annotation_id=annotation_id,
        product_id=product_id,
        annotator=annotator,
        created_at=updated,
        updated_at=updated,
        revision=f"rev-{value}-{outcome}",
        values=[AnnotationValue("garment", outcome, value, None, "Shirt", value == "Shirt")],
        lead_time_s=4.2,
    )


def garment(store: ProductStore, product_id: str = "p1") -> tuple[object, ...]:
    product = store.get_product(product_id)
    assert product is not None
    a = product.attributes["garment"]
    return (a.value, a.source, a.annotator, a.updated_at)


# -------------------------------------------------------------------------------------------- outbox


def test_a_routed_product_gets_its_outbox_row_in_the_same_transaction(
    store: ProductStore, reviews: ReviewStore
) -> None:
    store.write_results([routed("p1"), routed("p2", review=None)])
    (item,) = reviews.outbox_items()
    assert (item.product_id, item.status, item.attempts, item.reason) == ("p1", "pending", 0, "low_confidence")
    assert item.payload["model_values"]["garment"]["value"] == "Shirt" and item.key == "p1|d-p1|m1"
    # a batch that fails half-way stores neither results nor outbox rows
    bad = routed("p3", attributes=[AttributeValue("garment", "Shirt", 1.5)])
    with pytest.raises(sa.exc.IntegrityError):
        store.write_results([routed("p0"), bad])
    assert [i.product_id for i in reviews.outbox_items()] == ["p1"] and store.get_product("p0") is None


def test_a_redelivered_event_adds_no_second_outbox_row(store: ProductStore, reviews: ReviewStore) -> None:
    store.write_results([routed("p1")])
    stats = store.write_results([routed("p1", priority=0.9)])
    assert stats.duplicates == 1 and len(reviews.outbox_items()) == 1


# An outbox payload exactly as the routing hook stored it before the payload had a type (written here as literal JSON,
# not by today's code), and a partial one with only the keys the store itself needs.
OLD_PAYLOAD = {
    "reason": "low_confidence",
    "priority": 0.61,
    "uncertainty": {"measure": "margin", "score": 0.61, "groups": {"garment": 0.61, "kids": 0.02}},
    "low_values": [{"group": "garment", "value": "Shirt", "confidence": 0.55, "threshold": 0.7}],
    "title": "Linen shirt",
    "image_url": "https://cdn.example/old.jpg",
    "image_size": [400, 500],
    "prediction": {
        "model_version": "m0",
        "score": 0.55,
        "result": [
            {
                "id": "garment",
                "from_name": "garment",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": ["Shirt"]},
                "score": 0.55,
            }
        ],
    },
    "model_values": {"garment": {"value": "Shirt", "confidence": 0.55, "box": None}},
}
PARTIAL_PAYLOAD = {"reason": "audit", "model_values": {"garment": {"value": "Shirt"}}}


def insert_outbox_row(store: ProductStore, product_id: str, payload: dict[str, object]) -> None:
    """An outbox row as an earlier version left it in the database, written past today's store code."""
    now = datetime.now(UTC)
    table = sa.table(
        "review_outbox",
        *(sa.column(c) for c in ("product_id", "image_digest", "model_version", "image_url", "reason", "priority")),
        sa.column("payload", sa.JSON),
        *(sa.column(c) for c in ("status", "attempts", "created_at", "updated_at", "next_attempt_at")),
    )
    row = {"product_id": product_id, "image_digest": f"d-{product_id}", "model_version": "m0"}
    row |= {"image_url": f"https://cdn.example/{product_id}.jpg", "reason": str(payload["reason"]), "priority": 0.5}
    row |= {"payload": payload, "status": "pending", "attempts": 0, "created_at": now, "updated_at": now}
    with store.engine.begin() as conn:
        conn.execute(sa.insert(table).values(**row, next_attempt_at=now))


def test_an_outbox_row_stored_before_the_payload_was_typed_is_read_as_it_was_written(
    store: ProductStore, reviews: ReviewStore
) -> None:
    insert_outbox_row(store, "old", OLD_PAYLOAD)
    (item,) = reviews.claim_due(5, now=datetime.now(UTC) + timedelta(seconds=1))
    assert item.product_id == "old" and dict(item.payload) == {**OLD_PAYLOAD, "description": None}  # added since


def test_an_outbox_row_with_a_partial_payload_is_read_with_defaults_for_the_missing_keys(
    store: ProductStore, reviews: ReviewStore
) -> None:
    insert_outbox_row(store, "partial", PARTIAL_PAYLOAD)
    (item,) = reviews.outbox_items()
    assert (item.payload["reason"], item.payload["priority"], item.payload["title"]) == ("audit", 0.0, None)
    assert item.payload["uncertainty"] is None and item.payload["prediction"] is None
    assert (
        item.payload["low_values"] == [] and item.payload["image_size"] is None and item.payload["description"] is None
    )
    assert item.payload["model_values"] == {"garment": {"value": "Shirt", "confidence": 0.0, "box": None}}


def test_the_payload_is_stored_as_the_same_json_the_router_hands_over(store: ProductStore) -> None:
    store.write_results([routed("p1", review=OLD_PAYLOAD)])
    with store.engine.connect() as conn:
        (stored,) = conn.execute(sa.text("SELECT payload FROM review_outbox")).scalars().all()
    assert (json.loads(stored) if isinstance(stored, str) else stored) == OLD_PAYLOAD


def test_due_rows_are_claimed_most_uncertain_first_and_leased(store: ProductStore, reviews: ReviewStore) -> None:
    store.write_results([routed("low", 0.2), routed("high", 0.9), routed("mid", 0.5)])
    now = datetime.now(UTC)
    assert [i.product_id for i in reviews.claim_due(2, lease_s=60, now=now)] == ["high", "mid"]
    assert [i.product_id for i in reviews.claim_due(5, lease_s=60, now=now)] == ["low"]  # the others are leased
    again = reviews.claim_due(5, lease_s=60, now=now + timedelta(seconds=61))
    assert [(i.product_id, i.attempts) for i in again] == [("high", 1), ("mid", 1), ("low", 1)]


def test_a_row_waits_for_its_backoff_and_stays_pending_until_sent(store: ProductStore, reviews: ReviewStore) -> None:
    store.write_results([routed("p1")])
    now = datetime.now(UTC)
    (item,) = reviews.claim_due(1, now=now)
    reviews.mark_retry(item.id, "Label Studio unreachable", now + timedelta(seconds=30), now=now)
    assert reviews.claim_due(1, lease_s=0, now=now + timedelta(seconds=29)) == []
    (again,) = reviews.claim_due(1, now=now + timedelta(seconds=31))
    assert again.status == "pending" and again.last_error == "Label Studio unreachable"
    reviews.mark_sent(again.id, task_id=42, now=now)
    (sent,) = reviews.outbox_items()
    assert (sent.status, sent.task_id) == ("sent", 42) and reviews.outbox_for_task(42) == sent
    assert reviews.claim_due(5, now=now + timedelta(days=1)) == []


def test_refused_rows_fail_and_can_be_put_back(store: ProductStore, reviews: ReviewStore) -> None:
    store.write_results([routed("p1")])
    (item,) = reviews.claim_due(1)
    reviews.mark_failed(item.id, "HTTP 400: bad image")
    assert reviews.stats().failed == 1 and reviews.claim_due(1, now=datetime.now(UTC) + timedelta(days=1)) == []
    assert reviews.retry_failed() == 1
    assert [i.product_id for i in reviews.claim_due(1, now=datetime.now(UTC) + timedelta(seconds=1))] == ["p1"]


# -------------------------------------------------------------------------------------------- annotations


def test_an_annotation_sets_a_human_value_once(store: ProductStore, reviews: ReviewStore) -> None:
    store.write_results([routed("p1")])
    first = reviews.record_annotation(annotation())
    assert first.status == "recorded" and first.changed_attributes == ["garment"] and first.first_for_task
    before = garment(store)
    assert before[:3] == ("Dress", "human", "alice@example.com")
    again = reviews.record_annotation(annotation())
    assert again.status == "unchanged" and garment(store) == before
    (row,) = reviews.annotations("p1")
    assert row["model_was_right"] is False and row["lead_time_s"] == 4.2 and row["model_value"] == "Shirt"
    # the model's later output never overwrites it
    store.write_results([routed("p1", image_digest="d-new", garment="Polo")])
    assert garment(store) == before


def test_an_edit_supersedes_and_undoing_it_brings_the_first_answer_back(
    store: ProductStore, reviews: ReviewStore
) -> None:
    store.write_results([routed("p1")])
    reviews.record_annotation(annotation(value="Dress"))
    edited = reviews.record_annotation(annotation(value="Skirt", updated=T0 + timedelta(minutes=1)))
    assert edited.status == "recorded" and not edited.first_for_task and garment(store)[0] == "Skirt"
    assert [(r["value"], r["state"]) for r in reviews.annotations("p1")] == [
        ("Dress", "superseded"),
        ("Skirt", "active"),
    ]
    reviews.record_annotation(annotation(value="Dress", updated=T0 + timedelta(minutes=2)))
    assert garment(store)[0] == "Dress"
    assert [r["state"] for r in reviews.annotations("p1")] == ["active", "superseded"]


def test_the_latest_of_several_annotators_wins_and_a_deletion_falls_back(
    store: ProductStore, reviews: ReviewStore
) -> None:
    store.write_results([routed("p1")])
    reviews.record_annotation(annotation(101, "Dress", annotator="alice@example.com", updated=T0))
    reviews.record_annotation(annotation(102, "Skirt", annotator="bob@example.com", updated=T0 + timedelta(minutes=5)))
    assert garment(store)[:3] == ("Skirt", "human", "bob@example.com")
    assert reviews.delete_annotations([102]) == ["p1/garment"]
    assert garment(store)[:3] == ("Dress", "human", "alice@example.com")
    assert reviews.delete_annotations([102]) == []  # idempotent
    late = reviews.record_annotation(annotation(102, "Skirt", annotator="bob@example.com"))
    assert late.status == "ignored_deleted" and garment(store)[0] == "Dress"
    reviews.delete_annotations([101])
    value, source, annotator, _ = garment(store)
    assert (value, source, annotator) == ("Shirt", "model", None)  # the model's value is back


def test_unknown_labels_and_skips_are_recorded_but_change_no_attribute(
    store: ProductStore, reviews: ReviewStore
) -> None:
    store.write_results([routed("p1")])
    before = garment(store)
    unknown = reviews.record_annotation(annotation(101, "Kimono", outcome="unknown_label"))
    assert unknown.status == "recorded" and unknown.changed_attributes == [] and garment(store) == before
    skip = AnnotationRecord(7, 103, "p1", "carol@example.com", T0, T0, "rev-skip", [AnnotationValue("*", "skipped")])
    assert reviews.record_annotation(skip).changed_attributes == []
    stats = reviews.stats()
    assert stats.annotations == 2 and stats.skipped == 1 and stats.agreement == {}


def test_stats_count_the_queue_and_the_agreement(store: ProductStore, reviews: ReviewStore) -> None:
    store.write_results([routed("p1"), routed("p2"), routed("p3")])
    items = {i.product_id: i for i in reviews.outbox_items()}
    reviews.mark_sent(items["p1"].id, 7)
    reviews.mark_sent(items["p2"].id, 8)
    reviews.record_annotation(annotation(101, "Dress", task_id=7, product_id="p1"))
    reviews.record_annotation(annotation(102, "Shirt", task_id=8, product_id="p2"))
    stats = reviews.stats()
    assert (stats.pending, stats.sent, stats.completed, stats.backlog) == (1, 2, 2, 0)
    assert stats.agreement == {"garment": (1, 2)} and stats.agreement_ratio("garment") == 0.5


def test_sync_state_is_kept(reviews: ReviewStore) -> None:
    assert reviews.get_state("w") is None
    reviews.set_state("w", "2026-11-22T12:00:00+00:00")
    reviews.set_state("w", "2026-11-22T13:00:00+00:00")
    assert reviews.get_state("w") == "2026-11-22T13:00:00+00:00"


def test_concurrent_deliveries_for_one_product_end_with_the_latest_answer(
    store: ProductStore, reviews: ReviewStore
) -> None:
    import threading

    store.write_results([routed("p1")])
    for round_ in range(5):
        base = T0 + timedelta(hours=round_)
        records = [
            annotation(1000 + 10 * round_, "Dress", annotator="alice@example.com", updated=base),
            annotation(1001 + 10 * round_, "Skirt", annotator="bob@example.com", updated=base + timedelta(seconds=1)),
        ]
        records.append(records[1])  # the same delivery twice at once (webhook and poll)
        results: list[str] = []
        barrier = threading.Barrier(len(records))

        def deliver(record: AnnotationRecord, barrier: threading.Barrier, results: list[str]) -> None:
            barrier.wait()
            results.append(reviews.record_annotation(record).status)

        threads = [threading.Thread(target=deliver, args=(r, barrier, results)) for r in records]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == ["recorded", "recorded", "unchanged"]
        assert garment(store)[:3] == ("Skirt", "human", "bob@example.com")


def test_an_answer_waiting_behind_another_writer_is_stamped_after_that_writer_committed(
    store: ProductStore, reviews: ReviewStore
) -> None:
    """The learner counts human values stamped after the newest one its last run trained on. A value stamped
    before a concurrent writer's but committed after it would never count as new: stamps must follow commits."""
    import threading
    import time

    store.write_results([routed("p1"), routed("p2")])
    outcome: list[str] = []
    with store.database.transaction(write=True) as conn:  # another writer of human values, mid-transaction
        human_write_time(conn)
        write_human_value(conn, store.database.insert, "p1", "garment", "Dress", "alice@example.com", None, None, T0)
        writer = threading.Thread(
            target=lambda: outcome.append(
                reviews.record_annotation(annotation(202, "Skirt", task_id=8, product_id="p2")).status
            )
        )
        writer.start()
        time.sleep(0.5)
        assert writer.is_alive(), "the second writer must wait for the first to commit"
        first_committed_by = datetime.now(UTC)
    writer.join(timeout=30)
    assert outcome == ["recorded"]
    value, source, _, stamped = garment(store, "p2")
    assert (value, source) == ("Skirt", "human")
    assert stamped >= first_committed_by  # type: ignore[operator]


# -------------------------------------------------------------------------------------------- claims of workers


def owner(worker_id: str = "review-0", started: datetime = T0) -> ClaimOwner:
    return ClaimOwner(worker_id, started)


def soon() -> datetime:
    """A moment after the rows just written became due (they are due when written)."""
    return datetime.now(UTC) + timedelta(seconds=1)


def test_a_restarted_worker_takes_its_previous_processes_claims_over_at_once(
    store: ProductStore, reviews: ReviewStore
) -> None:
    t0 = soon()
    store.write_results([routed("p1"), routed("p2")])
    first = owner(started=t0)
    reviews.register_worker(first, now=t0)
    claimed = reviews.claim_due(5, lease_s=120, now=t0, owner=first)
    assert [i.claimed_by for i in claimed] == ["review-0", "review-0"]
    # the process is killed mid-send; a new one of the same identity starts 3 s later
    restarted = owner(started=t0 + timedelta(seconds=3))
    assert reviews.register_worker(restarted, now=t0 + timedelta(seconds=3)) == 2
    again = reviews.claim_due(5, lease_s=120, now=t0 + timedelta(seconds=3), owner=restarted)
    assert sorted((i.product_id, i.attempts) for i in again) == [("p1", 1), ("p2", 1)]  # looked up before resent


def test_claims_of_a_worker_whose_heartbeat_stopped_are_taken_over_after_the_stale_timeout(
    store: ProductStore, reviews: ReviewStore
) -> None:
    t0 = soon()
    store.write_results([routed("p1")])
    a, b = owner("review-a"), owner("review-b")
    reviews.register_worker(a, now=t0)
    reviews.register_worker(b, now=t0)
    assert len(reviews.claim_due(5, lease_s=120, now=t0, owner=a)) == 1
    for s in range(2, 11, 2):  # a heartbeats for 10 s: its claim holds
        assert reviews.heartbeat(a, now=t0 + timedelta(seconds=s))
        reviews.heartbeat(b, now=t0 + timedelta(seconds=s))
        assert reviews.claim_due(5, now=t0 + timedelta(seconds=s), owner=b, stale_s=15) == []
    # a falls silent at 10 s: 15 s later (not 120) b takes the row over
    assert reviews.claim_due(5, now=t0 + timedelta(seconds=24), owner=b, stale_s=15) == []
    (taken,) = reviews.claim_due(5, now=t0 + timedelta(seconds=26), owner=b, stale_s=15)
    assert (taken.product_id, taken.claimed_by, taken.attempts) == ("p1", "review-b", 1)


def test_an_ended_attempt_clears_the_claim_so_its_backoff_holds(store: ProductStore, reviews: ReviewStore) -> None:
    t0 = soon()
    store.write_results([routed("p1")])
    a = owner()
    reviews.register_worker(a, now=t0)
    (item,) = reviews.claim_due(1, now=t0, owner=a)
    reviews.mark_retry(item.id, "Label Studio unreachable", t0 + timedelta(seconds=60), now=t0)
    (row,) = reviews.outbox_items()
    assert row.claimed_by is None
    # the worker dies: its retry waits for the backoff, not for a takeover
    assert reviews.claim_due(1, now=t0 + timedelta(seconds=30), owner=owner("other"), stale_s=1) == []


def test_a_second_process_with_the_same_identity_is_told_by_its_heartbeat(reviews: ReviewStore) -> None:
    t0 = soon()
    a, twin = owner(started=t0), owner(started=t0 + timedelta(seconds=1))
    reviews.register_worker(a, now=t0)
    reviews.register_worker(twin, now=t0 + timedelta(seconds=1))
    assert not reviews.heartbeat(a, now=t0 + timedelta(seconds=2))
    assert reviews.heartbeat(twin, now=t0 + timedelta(seconds=2))


def test_a_listing_read_before_an_edit_does_not_bring_the_old_answer_back(
    store: ProductStore, reviews: ReviewStore
) -> None:
    store.write_results([routed("p1")])
    reviews.record_annotation(annotation(value="Dress", updated=T0))
    reviews.record_annotation(annotation(value="Skirt", updated=T0 + timedelta(minutes=1)))  # the webhook: an edit
    late = reviews.record_annotation(annotation(value="Dress", updated=T0))  # a poll listing read before the edit
    assert late.status == "ignored_stale" and garment(store)[0] == "Skirt"


def test_task_sync_marks_only_move_forward_and_annotations_are_counted_per_task(reviews: ReviewStore) -> None:
    reviews.mark_task_synced(7, T0 + timedelta(seconds=5))
    reviews.mark_task_synced(7, T0)  # an older listing
    reviews.mark_task_synced(8, T0)
    assert reviews.task_sync_marks() == {7: T0 + timedelta(seconds=5), 8: T0}
    reviews.record_annotation(annotation(101, "Dress", task_id=7))
    reviews.record_annotation(annotation(102, "Skirt", task_id=7, annotator="bob@example.com"))
    reviews.record_annotation(annotation(103, "Skirt", task_id=9, product_id="p9"))
    reviews.delete_annotations([103])
    assert reviews.active_annotation_counts() == {7: 2}
