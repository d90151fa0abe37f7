"""The review worker's outbox rows -> Label Studio tasks (daemon/review/sender.py: `TaskBuilder`), for payloads of
every age: one written today and one stored before the payload had a type, with only some of its keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from connectors.db import OutboxItem
from connectors.records import payload_from_json
from daemon.review.sender import TASK_KEY, TaskBuilder
from learner.review.tasks import IMAGE_NAME

REGION = {"from_name": "garment", "to_name": "image", "type": "choices", "value": {"choices": ["Shirt"]}}


def item(payload: dict[str, Any], priority: float = 0.4) -> OutboxItem:
    return OutboxItem(
        id=7,
        product_id="p1",
        image_digest="d1",
        model_version="m1",
        image_url="https://cdn.example/p1.jpg",
        reason=str(payload.get("reason", "review")),
        priority=priority,
        payload=payload_from_json(payload),
        status="pending",
        task_id=None,
        attempts=0,
        last_error=None,
        created_at=datetime(2026, 11, 22, tzinfo=UTC),
        sent_at=None,
    )


def test_a_full_payload_becomes_a_task_with_the_models_prediction() -> None:
    payload = {
        "reason": "low_confidence",
        "priority": 0.4,
        "uncertainty": {"measure": "margin", "score": 0.45, "groups": {"garment": 0.45}},
        "title": "Linen shirt",
        "prediction": {"model_version": "m1", "score": 0.55, "result": [REGION]},
        "model_values": {"garment": {"value": "Shirt", "confidence": 0.55, "box": None}},
    }
    task = TaskBuilder().task(item(payload))
    data = task["data"]
    assert data[IMAGE_NAME] == "https://cdn.example/p1.jpg" and data[TASK_KEY] == "p1|d1|m1"
    assert (data["title"], data["uncertainty"], data["priority"]) == ("Linen shirt", 0.45, 0.4)
    assert task["predictions"] == [{"model_version": "m1", "score": 0.55, "result": [REGION]}]


def test_an_old_payload_without_uncertainty_title_or_prediction_still_becomes_a_task() -> None:
    task = TaskBuilder().task(item({"reason": "audit", "model_values": {}}, priority=0.3))
    assert (task["data"]["title"], task["data"]["uncertainty"], task["data"]["reason"]) == ("", 0.3, "audit")
    assert "predictions" not in task


def test_an_old_prediction_without_its_model_version_or_score_takes_the_rows() -> None:
    task = TaskBuilder().task(item({"reason": "audit", "prediction": {"result": [REGION]}}))
    assert task["predictions"] == [{"model_version": "m1", "score": 0.0, "result": [REGION]}]
