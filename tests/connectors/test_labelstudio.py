"""`LabelStudioClient` against the real Label Studio 1.23.2 server (tests/plugins/labelstudio.py): projects,
local files, tasks with pre-annotations, lookups, incremental listing, webhooks, and how failures are sorted."""

from __future__ import annotations

import itertools
import json
import random
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from labelstudio_server import LabelStudioServer

from connectors.labelstudio import LabelStudioClient, LabelStudioError, LabelStudioUnavailable, parse_timestamp

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="garment" toName="image" choice="single"><Choice value="Shirt"/><Choice value="Dress"/></Choices>
</View>"""

# generous: the first test of a session on a fresh machine also installs and initialises Label Studio (minutes)
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture
def client(label_studio: LabelStudioServer) -> LabelStudioClient:
    return LabelStudioClient(label_studio.url, label_studio.token)


def title() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def guess(choice: str = "Shirt", score: float = 0.4) -> dict[str, object]:
    result = [
        {"id": "g", "from_name": "garment", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}
    ]
    return {"model_version": "m-1", "score": score, "result": [{**result[0], "score": score}]}


def test_a_project_is_created_once_and_reused_by_title(client: LabelStudioClient) -> None:
    name = title()
    first = client.ensure_project(name, CONFIG)
    assert client.ensure_project(name, CONFIG) == first
    changed = CONFIG.replace('<Choice value="Dress"/>', '<Choice value="Dress"/><Choice value="Skirt"/>')
    assert client.ensure_project(name, changed) == first
    assert "Skirt" in client.project(first)["label_config"]


def test_tasks_carry_the_models_guess_as_pre_annotations(client: LabelStudioClient) -> None:
    project = client.ensure_project(title(), CONFIG)
    assert client.set_model_version(project, "m-1") is False  # refused until it has predictions of m-1
    imported = client.import_tasks(
        project,
        [
            {"data": {"image": "https://cdn.example/a.jpg", "key": "a"}, "predictions": [guess("Shirt", 0.4)]},
            {"data": {"image": "https://cdn.example/b.jpg", "key": "b"}, "predictions": [guess("Dress", 0.3)]},
        ],
    )
    assert len(imported.task_ids) == 2 and imported.predictions == 2
    assert client.set_model_version(project, "m-1") is True
    assert client.project(project)["model_version"] == "m-1"
    task = client.get_task(imported.task_ids[1])
    (prediction,) = task["predictions"]
    assert prediction["model_version"] == "m-1" and prediction["score"] == pytest.approx(0.3)
    assert prediction["result"][0]["value"] == {"choices": ["Dress"]} and prediction["result"][0]["score"] == 0.3
    assert client.find_task(project, "key", "b") == imported.task_ids[1]
    assert client.find_task(project, "key", "nope") is None


def test_local_files_are_served_to_annotators_through_a_local_storage(
    client: LabelStudioClient, label_studio: LabelStudioServer
) -> None:
    project = client.ensure_project(title(), CONFIG)
    assert label_studio.document_root is not None
    images = label_studio.document_root / "images"
    storage = client.ensure_local_storage(project, str(images))
    assert client.ensure_local_storage(project, str(images)) == storage  # idempotent
    photo = sorted(images.glob("*.jpg"))[0]
    response = httpx.get(
        f"{label_studio.url}/data/local-files/?d=images/{photo.name}",
        headers={"Authorization": f"Token {label_studio.token}"},
        timeout=10,
    )
    assert response.status_code == 200 and response.content == photo.read_bytes()


def test_changed_tasks_are_listed_incrementally_including_edits(client: LabelStudioClient) -> None:
    project = client.ensure_project(title(), CONFIG)
    (first, second) = client.import_tasks(
        project, [{"data": {"image": "https://cdn.example/a.jpg"}}, {"data": {"image": "https://cdn.example/b.jpg"}}]
    ).task_ids
    time.sleep(0.05)
    before = datetime.now(UTC)  # same machine, same clock as the server
    annotation = client.sdk.annotations.create(id=second, result=guess("Dress")["result"], lead_time=3.5)
    changed = list(client.tasks_updated_since(project, before))
    assert [t["id"] for t in changed] == [second]
    (seen,) = changed[0]["annotations"]
    assert (
        seen["id"] == annotation.id
        and seen["lead_time"] == 3.5
        and "admin@shelfsight.local" in seen["created_username"]
    )
    watermark = parse_timestamp(changed[0]["updated_at"])
    assert watermark is not None
    assert list(client.tasks_updated_since(project, watermark)) == []
    time.sleep(0.01)
    client.sdk.annotations.update(id=annotation.id, result=guess("Shirt")["result"])
    assert [t["id"] for t in client.tasks_updated_since(project, watermark)] == [second]
    assert {t["id"] for t in client.tasks_updated_since(project, None)} == {first, second}


def test_a_listing_skips_no_task_while_an_annotator_edits_between_its_pages(
    client: LabelStudioClient, label_studio: LabelStudioServer
) -> None:
    """Edits move tasks to the end of the `updated_at` order; paging in that order skipped tasks at page boundaries.
    Here an annotator edits five tasks of the first page after it was read and before the next request: every task is
    listed once, and the next listing, from the server's clock read before this one, has the five edits."""
    project = client.ensure_project(title(), CONFIG)
    tasks = [{"data": {"image": f"https://cdn.example/{i}.jpg"}} for i in range(30)]
    ids = client.import_tasks(project, tasks).task_ids
    annotations = {t: client.sdk.annotations.create(id=t, result=guess("Shirt")["result"]).id for t in ids}
    editor = LabelStudioClient(label_studio.url, label_studio.token)  # another person, another connection
    listings = 0

    def edit_after_the_first_page(response: httpx.Response) -> None:
        nonlocal listings
        if response.request.method == "GET" and response.request.url.path.rstrip("/").endswith("/api/tasks"):
            listings += 1
            if listings == 1:
                for task in ids[:5]:
                    editor.sdk.annotations.update(id=annotations[task], result=guess("Dress")["result"])

    client.sdk._client_wrapper.httpx_client.httpx_client.event_hooks["response"].append(edit_after_the_first_page)
    started = client.server_time()
    listed = [t["id"] for t in client.tasks_updated_since(project, None, page_size=10)]
    assert listings > 3, "the listing should have needed several pages"
    assert sorted(listed) == sorted(ids), f"skipped: {sorted(set(ids) - set(listed))}"
    again = {t["id"]: t for t in client.tasks_updated_since(project, started)}
    assert set(ids[:5]) <= set(again)
    for task in ids[:5]:
        (answer,) = again[task]["annotations"]
        assert answer["result"][0]["value"]["choices"] == ["Dress"]  # the edit, not the first answer


def test_a_listing_skips_no_task_while_tasks_are_edited_as_it_reads_them(
    client: LabelStudioClient, label_studio: LabelStudioServer
) -> None:
    """Label Studio pages a listing with one query, then reads the page's tasks again: a task edited in between comes
    back with a later `updated_at` than its place in the page. A listing paged by `updated_at` took its next cursor
    from it and skipped every task in between (6 of 30 listings like these lost 150 of 250 tasks). An annotator edits
    answers without pause while the listings run; every listing must hold every task, once."""
    project = client.ensure_project(title(), CONFIG)
    tasks = [{"data": {"image": f"https://cdn.example/{i}.jpg"}} for i in range(250)]
    ids = client.import_tasks(project, tasks).task_ids
    annotations = {t: client.sdk.annotations.create(id=t, result=guess("Shirt")["result"]).id for t in ids}
    stop, edits, turn, lock = threading.Event(), [0, 0], itertools.cycle(ids), threading.Lock()

    def annotator(who: int) -> None:
        editor, rng = LabelStudioClient(label_studio.url, label_studio.token), random.Random(who)
        while not stop.is_set():
            with lock:  # the least recently edited task next: always one of the first page in `updated_at` order
                task = next(turn)
            editor.sdk.annotations.update(id=annotations[task], result=guess(rng.choice(["Shirt", "Dress"]))["result"])
            edits[who] += 1

    threads = [threading.Thread(target=annotator, args=(who,), daemon=True) for who in (0, 1)]
    for thread in threads:
        thread.start()
    try:
        missed = []  # per listing that skipped tasks: how many
        listings, deadline = 0, time.monotonic() + 600
        # 30 listings at least, and more until both annotators made 20 edits (slower on a loaded machine)
        while listings < 30 or (min(edits) < 20 and time.monotonic() < deadline):
            listings += 1
            listed = [t["id"] for t in client.tasks_updated_since(project, None, page_size=100)]
            assert len(listed) == len(set(listed)), "a listing names each task once"
            if set(listed) != set(ids):
                missed.append(len(set(ids) - set(listed)))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert min(edits) >= 20, "both annotators should have edited while the listings ran"
    assert missed == [], f"listings that skipped tasks (how many of {len(ids)}): {missed}"


def test_the_servers_clock_is_read_in_whole_seconds_never_ahead_of_it(client: LabelStudioClient) -> None:
    before = datetime.now(UTC)  # same machine, same clock as the server
    server = client.server_time()
    after = datetime.now(UTC)
    assert server.tzinfo is not None and server.microsecond == 0
    assert before - timedelta(seconds=1) <= server <= after


def test_the_webhook_is_registered_once_per_url(client: LabelStudioClient) -> None:
    project = client.ensure_project(title(), CONFIG)
    hook = client.ensure_webhook(project, "http://127.0.0.1:9/webhook", {"X-ShelfSight-Webhook-Secret": "s"})
    assert client.ensure_webhook(project, "http://127.0.0.1:9/webhook", {"X-ShelfSight-Webhook-Secret": "t"}) == hook
    (stored,) = [h for h in client.sdk.webhooks.list(project=str(project)) if h.id == hook]
    assert stored.headers == {"X-ShelfSight-Webhook-Secret": "t"} and stored.send_payload is True


def test_an_unreachable_server_is_unavailable_and_a_refusal_is_an_error(label_studio: LabelStudioServer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    down = LabelStudioClient(f"http://127.0.0.1:{closed_port}", "token", timeout_s=2)
    with pytest.raises(LabelStudioUnavailable, match="unreachable"):
        down.ensure_project(title(), CONFIG)
    assert down.ping() is False
    wrong = LabelStudioClient(label_studio.url, "not-the-token")
    with pytest.raises(LabelStudioError, match="401") as refused:
        wrong.ensure_project(title(), CONFIG)
    assert refused.value.status_code == 401
    client = LabelStudioClient(label_studio.url, label_studio.token)
    with pytest.raises(LabelStudioError, match="400"):
        client.ensure_project(title(), "<View><Image name='image' value='$image'/><Choices name='x'/></View>")
    assert "not-the-token" not in repr(wrong) and json.dumps(wrong.url)
