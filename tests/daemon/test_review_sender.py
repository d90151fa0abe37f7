"""The review worker's outbox rows -> Label Studio tasks (daemon/review/sender.py: `TaskBuilder`), for payloads of
every age: one written today and one stored before the payload had a type, with only some of its keys; and the real
Label Studio 1.23.2 (tests/plugins/labelstudio.py) taking them under the labelling view of learner/review/tasks.py."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from labelstudio_server import LabelStudioServer

from connectors.db import OutboxItem
from connectors.labelstudio import LabelStudioClient, LabelStudioError
from connectors.records import TITLE_PHOTO_CONFLICT, payload_from_json
from daemon.review.sender import TASK_KEY, TaskBuilder
from learner.model.taxonomy import load_taxonomy
from learner.review.tasks import CONFLICT_NAME, DESCRIPTION_NAME, IMAGE_NAME, label_config

ROOT = Path(__file__).resolve().parents[2]

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
        "description": "Short sleeves, chest pocket.",
        "prediction": {"model_version": "m1", "score": 0.55, "result": [REGION]},
        "model_values": {"garment": {"value": "Shirt", "confidence": 0.55, "box": None}},
    }
    task = TaskBuilder().task(item(payload))
    data = task["data"]
    assert data[IMAGE_NAME] == "https://cdn.example/p1.jpg" and data[TASK_KEY] == "p1|d1|m1"
    assert (data["title"], data["uncertainty"], data["priority"]) == ("Linen shirt", 0.45, 0.4)
    assert data[DESCRIPTION_NAME] == "Short sleeves, chest pocket." and data[CONFLICT_NAME] == ""
    assert task["predictions"] == [{"model_version": "m1", "score": 0.55, "result": [REGION]}]


def test_an_old_payload_without_uncertainty_title_description_or_prediction_still_becomes_a_task() -> None:
    task = TaskBuilder().task(item({"reason": "audit", "model_values": {}}, priority=0.3))
    assert (task["data"]["title"], task["data"]["uncertainty"], task["data"]["reason"]) == ("", 0.3, "audit")
    # Label Studio refuses a task without a key its view shows
    assert task["data"][DESCRIPTION_NAME] == "" and task["data"][CONFLICT_NAME] == ""
    assert "predictions" not in task


def test_an_old_prediction_without_its_model_version_or_score_takes_the_rows() -> None:
    task = TaskBuilder().task(item({"reason": "audit", "prediction": {"result": [REGION]}}))
    assert task["predictions"] == [{"model_version": "m1", "score": 0.0, "result": [REGION]}]


@pytest.mark.timeout(1200)  # the first Label Studio test of a session on a fresh machine installs it (minutes)
def test_label_studio_takes_tasks_with_and_without_a_description_or_conflict_and_an_older_project_takes_the_view(
    label_studio: LabelStudioServer,
) -> None:
    client = LabelStudioClient(label_studio.url, label_studio.token)
    config = label_config(load_taxonomy(ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml"))
    older = "\n".join(line for line in config.splitlines() if "<Text" not in line)  # before description and conflict
    name = f"test-description-{uuid.uuid4().hex[:8]}"
    project = client.ensure_project(name, older)
    client.import_tasks(project, [{"data": {"image": "https://cdn.example/old.jpg", "title": "", "product_id": "p0"}}])
    assert client.ensure_project(name, config) == project  # the older project, with a task, takes the new view
    assert {"$description", "$conflict"} <= set(re.findall(r"\$\w+", client.project(project)["label_config"]))

    readings = {"title": {"value": "Blouse", "confidence": 0.96}, "photos": {"value": "Shirt", "confidence": 0.9}}
    disputed = {"value": "Shirt", "confidence": 0.5, "auto_filled": False, "withheld_by": TITLE_PHOTO_CONFLICT}
    disputed["readings"] = readings
    described = item(
        {
            "reason": TITLE_PHOTO_CONFLICT,
            "title": "Linen blouse",
            "description": "Short sleeves, chest pocket.",
            "model_values": {"garment": disputed},
        }
    )
    plain = item({"reason": "audit", "model_values": {}})
    ids = client.import_tasks(project, [TaskBuilder().task(described), TaskBuilder().task(plain)]).task_ids

    shown = [client.get_task(task_id)["data"] for task_id in ids]
    assert [(d["title"], d[DESCRIPTION_NAME], d[CONFLICT_NAME]) for d in shown] == [
        (
            "Linen blouse",
            "Short sleeves, chest pocket.",
            "garment: the title says Blouse (0.96), the photos say Shirt (0.90).",
        ),
        ("", "", ""),
    ]
    with pytest.raises(LabelStudioError):  # why the builder never leaves the key out
        client.import_tasks(project, [{"data": {"image": "https://cdn.example/x.jpg", "title": "", "product_id": "x"}}])
