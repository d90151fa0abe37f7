"""The review loop end to end against the real Label Studio server and real databases: the enrichment daemon routes
products (a real model, the CC0 photos, a local event directory), the review worker sends them to Label Studio, an
annotator answers through the SDK, and the answer reaches the product database by webhook or by polling.
Nothing is mocked; each test has its own Label Studio project and its own database."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from labelstudio_server import LabelStudioServer

from daemon.review.project import SECRET_HEADER
from daemon.review.sender import TASK_KEY
from daemon.review.worker import ReviewWorker, ReviewWorkerOptions, build_review_worker
from daemon.service import run_service
from tests.daemon.review_steps import (
    MODEL_VERSION,
    SECRET,
    CapturedWebhooks,
    all_sent,
    attribute,
    enrich,
    garment_answer,
    metric,
    other_garment,
    review_settings,
    snapshot,
    wait_for,
)

# generous: the first test of a session on a fresh machine also installs and initialises Label Studio (minutes)
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_database(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


# -------------------------------------------------------------------------------------------------------------


def test_a_routed_product_is_pre_filled_in_label_studio_and_the_annotation_reaches_the_catalog_by_webhook(
    tmp_path: Path,
    untrained_bundle_path: Path,
    any_database: str,
    label_studio: LabelStudioServer,
    cc0_images: list[Path],
    workers: Callable[..., ReviewWorker],
) -> None:
    settings = review_settings(tmp_path, untrained_bundle_path, any_database, label_studio)
    products = enrich(settings, cc0_images[:3])
    worker = workers(settings)  # polling every hour: only the webhook can be quick
    wait_for(lambda: all_sent(worker, 3), 120, "the routed products to reach Label Studio")

    project = worker.project.id
    assert project is not None
    client = worker.client
    assert client.project(project)["model_version"] == MODEL_VERSION  # in step with the champion
    item = next(i for i in worker.store.outbox_items() if i.product_id == products[0])
    assert item.reason == "low_confidence" and item.task_id is not None
    task = client.get_task(item.task_id)
    model_garment = attribute(any_database, products[0], "garment")
    assert model_garment is not None and model_garment[1] == "model"
    # the model's guess is pre-filled, with its score and version; the image is served from local storage
    (prediction,) = task["predictions"]
    assert prediction["model_version"] == MODEL_VERSION
    choices = {r["from_name"]: r for r in prediction["result"]}
    assert choices["garment"]["value"]["choices"] == [model_garment[0]] and 0 < choices["garment"]["score"] < 1
    assert task["data"]["product_id"] == products[0] and task["data"]["title"] == "Item 0"
    image = httpx.get(
        f"{label_studio.url}{task['data']['image']}",
        headers={"Authorization": f"Token {label_studio.token}"},
        timeout=10,
    )
    assert image.status_code == 200 and image.content == cc0_images[0].read_bytes()

    # an annotator corrects the garment
    answer = other_garment(str(model_garment[0]))
    started = time.monotonic()
    client.sdk.annotations.create(id=item.task_id, result=garment_answer(answer), lead_time=7.5)
    human = wait_for(
        lambda: (a := attribute(any_database, products[0], "garment")) and a[1] == "human" and a,
        60,
        "the annotation to reach the product database",
    )
    elapsed = time.monotonic() - started
    assert human[0] == answer and human[2] == label_studio.username, human
    # the worker polls hourly, so an answer within a minute came by webhook (it arrives in about a second; the bound
    # is loose because a loaded two-core machine can take several seconds for Label Studio's delivery)
    assert elapsed < 60
    rows = worker.store.annotations(products[0])
    garment_row = next(r for r in rows if r["attribute"] == "garment")
    assert garment_row["model_was_right"] is False and garment_row["model_value"] == model_garment[0]
    assert garment_row["lead_time_s"] == 7.5 and garment_row["annotator"] == label_studio.username
    assert metric(worker, "shelfsight_review_webhooks_total", outcome="accepted") >= 1
    assert metric(worker, "shelfsight_review_tasks_sent_total") == 3
    assert metric(worker, "shelfsight_review_annotation_delay_seconds_count") == 1
    worker.refresh_gauges()
    assert metric(worker, "shelfsight_review_agreement_ratio", group="garment") == 0.0  # the model was wrong
    assert metric(worker, "shelfsight_review_backlog_tasks") == 2
    # the model's next output for this product never overwrites the annotator's value
    (settings.local.events_dir / "again.json").write_text(
        json.dumps({"schema_version": 1, "product_id": products[0], "image_urls": [cc0_images[5].as_uri()]})
    )
    run_service(settings)
    assert attribute(any_database, products[0], "garment")[:3] == human[:3]  # type: ignore[index]


def test_with_the_webhook_receiver_down_polling_brings_the_annotation_in(
    tmp_path: Path,
    untrained_bundle_path: Path,
    label_studio: LabelStudioServer,
    sqlite_url: str,
    cc0_images: list[Path],
    workers: Callable[..., ReviewWorker],
) -> None:
    settings = review_settings(tmp_path, untrained_bundle_path, sqlite_url, label_studio)
    (product,) = enrich(settings, cc0_images[3:4])
    worker = workers(settings, poll_interval_s=1.0)
    wait_for(lambda: all_sent(worker, 1), 120, "the task to be sent")
    assert worker.webhook is not None
    worker.webhook.stop()  # the receiver is down: Label Studio's delivery is lost
    (item,) = worker.store.outbox_items()
    assert item.task_id is not None
    model_value = attribute(sqlite_url, product, "garment")[0]  # type: ignore[index]
    worker.client.sdk.annotations.create(id=item.task_id, result=garment_answer(other_garment(model_value)))
    human = wait_for(
        lambda: (a := attribute(sqlite_url, product, "garment")) and a[1] == "human" and a,
        60,
        "polling to bring the annotation in",
    )
    assert human[0] == other_garment(model_value)
    assert worker.metrics.webhooks.labels("accepted")._value.get() == 0  # it came by polling


def test_a_poll_listing_older_than_a_webhook_delivery_does_not_withdraw_that_annotation(
    tmp_path: Path,
    untrained_bundle_path: Path,
    label_studio: LabelStudioServer,
    sqlite_url: str,
    cc0_images: list[Path],
    workers: Callable[..., ReviewWorker],
) -> None:
    settings = review_settings(tmp_path, untrained_bundle_path, sqlite_url, label_studio)
    (product,) = enrich(settings, cc0_images[4:5])
    worker = workers(settings)  # polls hourly: this test drives the poller's reconcile step itself
    wait_for(lambda: all_sent(worker, 1), 120, "the task to be sent")
    (item,) = worker.store.outbox_items()
    assert item.task_id is not None
    listed = worker.client.get_task(item.task_id)  # the poller lists the task, not yet answered ...
    assert not listed.get("annotations")
    answer = other_garment(attribute(sqlite_url, product, "garment")[0])  # type: ignore[index]
    worker.client.sdk.annotations.create(id=item.task_id, result=garment_answer(answer))
    wait_for(  # ... the annotator answers and the webhook brings the answer in ...
        lambda: (a := attribute(sqlite_url, product, "garment")) and a[1] == "human", 120, "the webhook delivery"
    )
    worker.applier.reconcile(listed)  # ... then the poller reconciles its older listing
    assert attribute(sqlite_url, product, "garment")[:2] == (answer, "human")  # type: ignore[index]
    assert worker.store.active_annotation_ids(item.task_id), "the answer must not be withdrawn"


def test_label_studio_down_while_products_are_routed_loses_nothing_and_all_arrive_once_it_is_back(
    tmp_path: Path,
    untrained_bundle_path: Path,
    any_database: str,
    label_studio: LabelStudioServer,
    cc0_images: list[Path],
    workers: Callable[..., ReviewWorker],
) -> None:
    settings = review_settings(tmp_path, untrained_bundle_path, any_database, label_studio)
    label_studio.stop()
    try:
        products = enrich(settings, cc0_images[6:10])
        worker = workers(settings)
        wait_for(
            lambda: all(i.attempts >= 2 for i in worker.store.outbox_items()),
            120,
            "the sender to retry while Label Studio is down",
        )
        items = worker.store.outbox_items()
        assert sorted(i.product_id for i in items) == sorted(products)
        assert all(i.status == "pending" and i.task_id is None and i.last_error for i in items)
        assert metric(worker, "shelfsight_review_send_errors_total", kind="unavailable") >= 4
    finally:
        label_studio.start()
    wait_for(lambda: all_sent(worker, 4), 120, "every routed product to reach Label Studio")
    project = worker.project.id
    assert project is not None
    tasks = list(worker.client.tasks_updated_since(project, None))
    keys = [t["data"][TASK_KEY] for t in tasks]
    assert sorted(keys) == sorted(i.key for i in worker.store.outbox_items())  # each exactly once
    assert all(len(t["predictions"]) == 1 for t in tasks)


def test_a_send_interrupted_after_label_studio_stored_the_task_creates_no_second_task(
    tmp_path: Path,
    untrained_bundle_path: Path,
    label_studio: LabelStudioServer,
    sqlite_url: str,
    cc0_images: list[Path],
    workers: Callable[..., ReviewWorker],
) -> None:
    settings = review_settings(tmp_path, untrained_bundle_path, sqlite_url, label_studio)
    enrich(settings, cc0_images[10:11])
    # a worker that imported the task and died before recording it: the row is claimed, the task exists
    crashed = build_review_worker(settings, worker_options=ReviewWorkerOptions(webhook_port=None))
    (item,) = crashed.store.claim_due(1, lease_s=0)
    project = crashed.project.ensure()
    (task_id,) = crashed.client.import_tasks(project, [crashed.sender.tasks.task(item)]).task_ids
    crashed.store.store.close()

    worker = workers(settings)
    wait_for(lambda: all_sent(worker, 1), 120, "the interrupted send to be completed")
    (sent,) = worker.store.outbox_items()
    assert sent.task_id == task_id
    assert [t["id"] for t in worker.client.tasks_updated_since(project, None)] == [task_id]


def test_a_webhook_delivered_twice_changes_nothing_the_second_time(
    tmp_path: Path,
    untrained_bundle_path: Path,
    label_studio: LabelStudioServer,
    sqlite_url: str,
    cc0_images: list[Path],
    workers: Callable[..., ReviewWorker],
) -> None:
    settings = review_settings(tmp_path, untrained_bundle_path, sqlite_url, label_studio)
    (product,) = enrich(settings, cc0_images[11:12])
    worker = workers(settings)
    wait_for(lambda: all_sent(worker, 1), 120, "the task to be sent")
    project = worker.project.id
    assert project is not None and worker.webhook is not None
    capture = CapturedWebhooks()
    try:
        worker.client.ensure_webhook(project, capture.url, {SECRET_HEADER: SECRET})
        (item,) = worker.store.outbox_items()
        assert item.task_id is not None
        worker.client.sdk.annotations.create(id=item.task_id, result=garment_answer("Hoodie"))
        wait_for(lambda: attribute(sqlite_url, product, "garment")[0] == "Hoodie", 60, "the first delivery")  # type: ignore[index]
        wait_for(lambda: capture.deliveries, 60, "Label Studio's delivery to the capture receiver")
    finally:
        capture.close()
    headers, body = capture.deliveries[0]
    assert json.loads(body)["action"] == "ANNOTATION_CREATED" and headers[SECRET_HEADER] == SECRET
    before = snapshot(sqlite_url)

    url = f"http://127.0.0.1:{worker.webhook.port}/webhook"
    replay = httpx.post(url, content=body, headers={SECRET_HEADER: SECRET, "Content-Type": "application/json"})
    assert replay.status_code == 200
    wait_for(lambda: metric(worker, "shelfsight_review_annotations_total", outcome="unchanged") >= 1, 60, "the replay")
    assert snapshot(sqlite_url) == before

    # without the shared secret, nothing is even queued
    for wrong in ({}, {SECRET_HEADER: "guess"}):
        refused = httpx.post(url, content=body, headers={**wrong, "Content-Type": "application/json"})
        assert refused.status_code == 401
    assert metric(worker, "shelfsight_review_webhooks_total", outcome="rejected_secret") == 2
    assert httpx.post(url, content=b"{not json", headers={SECRET_HEADER: SECRET}).status_code == 400
    assert snapshot(sqlite_url) == before

    # deleting the annotation in Label Studio withdraws it (ANNOTATIONS_DELETED): the model's value comes back
    annotation_id = json.loads(body)["annotation"]["id"]
    worker.client.sdk.annotations.delete(id=annotation_id)
    restored = wait_for(
        lambda: (a := attribute(sqlite_url, product, "garment")) and a[1] == "model" and a, 60, "the deletion"
    )
    assert restored[0] == worker.store.outbox_items()[0].payload["model_values"]["garment"]["value"]


def test_edits_deletions_skips_several_annotators_and_unknown_labels_have_clear_outcomes(
    tmp_path: Path,
    untrained_bundle_path: Path,
    label_studio: LabelStudioServer,
    sqlite_url: str,
    cc0_images: list[Path],
) -> None:
    settings = review_settings(tmp_path, untrained_bundle_path, sqlite_url, label_studio)
    (product,) = enrich(settings, cc0_images[12:13])
    worker = build_review_worker(settings, worker_options=ReviewWorkerOptions(webhook_port=None))
    try:
        assert worker.sync().sent == 1
        (item,) = worker.store.outbox_items()
        assert item.task_id is not None
        sdk = worker.client.sdk
        model_value = attribute(sqlite_url, product, "garment")[0]  # type: ignore[index]

        def garment_now() -> tuple[Any, ...]:
            worker.sync()  # incremental poll: picks up edits and deletions too
            return attribute(sqlite_url, product, "garment")[:3]  # type: ignore[index]

        first = sdk.annotations.create(id=item.task_id, result=garment_answer("Dress"))
        assert garment_now() == ("Dress", "human", label_studio.username)
        sdk.annotations.update(id=first.id, result=garment_answer("Blazer"))  # an edit
        assert garment_now() == ("Blazer", "human", label_studio.username)
        edits = [(r["value"], r["state"]) for r in worker.store.annotations(product) if r["attribute"] == "garment"]
        assert edits == [("Dress", "superseded"), ("Blazer", "active")]

        bob = sdk.users.create(email=f"bob-{uuid.uuid4().hex[:6]}@example.com", username=f"bob{uuid.uuid4().hex[:6]}")
        second = sdk.annotations.create(id=item.task_id, result=garment_answer("Hoodie"), completed_by=bob.id)
        assert garment_now() == ("Hoodie", "human", bob.email)  # the latest annotator wins
        skip = sdk.annotations.create(id=item.task_id, result=[], was_cancelled=True)
        assert garment_now() == ("Hoodie", "human", bob.email)  # a skip changes nothing

        sdk.annotations.delete(id=second.id)
        assert garment_now() == ("Blazer", "human", label_studio.username)  # back to the remaining answer
        sdk.annotations.delete(id=first.id)
        assert garment_now() == (model_value, "model", None)  # no answer left: the model's value again

        outcomes = {(r["annotation_id"], r["attribute"], r["state"], r["outcome"]) for r in worker.store.annotations()}
        assert (first.id, "garment", "deleted", "applied") in outcomes  # every revision of a deleted annotation
        assert (second.id, "garment", "deleted", "applied") in outcomes
        assert (skip.id, "*", "active", "skipped") in outcomes

        # a label the taxonomy does not know (someone added it to the project in Label Studio)
        config = worker.client.project(worker.project.ensure())["label_config"]
        sdk.projects.update(
            id=worker.project.id, label_config=config.replace("</Choices>", '<Choice value="Kimono"/></Choices>', 1)
        )
        kimono = sdk.annotations.create(id=item.task_id, result=garment_answer("Kimono"))
        assert garment_now() == (model_value, "model", None)  # never applied
        (row,) = [
            r for r in worker.store.annotations() if (r["annotation_id"], r["attribute"]) == (kimono.id, "garment")
        ]
        assert row["outcome"] == "unknown_label" and row["value"] == "Kimono"
    finally:
        worker.store.store.close()


def test_the_projects_model_version_follows_the_champion(
    tmp_path: Path,
    untrained_bundle_path: Path,
    label_studio: LabelStudioServer,
    sqlite_url: str,
    cc0_images: list[Path],
    workers: Callable[..., ReviewWorker],
) -> None:
    import shutil

    from learner.model.bundle import load_bundle

    champion = tmp_path / "champion.safetensors"
    shutil.copy(untrained_bundle_path, champion)
    settings = review_settings(tmp_path, champion, sqlite_url, label_studio)
    enrich(settings, cc0_images[16:17])
    worker = workers(settings)
    wait_for(lambda: all_sent(worker, 1), 120, "the first task")
    project = worker.project.id
    assert project is not None and worker.client.project(project)["model_version"] == MODEL_VERSION

    successor = load_bundle(untrained_bundle_path)
    successor.model_version = "cc0-untrained-test-2"
    successor.save(champion)  # a new champion replaces the file (atomically)
    enrich(settings, cc0_images[17:18])  # the daemon now routes with the new model
    wait_for(lambda: all_sent(worker, 2), 120, "the second task")
    wait_for(
        lambda: worker.client.project(project)["model_version"] == "cc0-untrained-test-2",
        60,
        "the project to show the new champion's predictions",
    )
