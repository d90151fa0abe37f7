"""Annotators' answers are never lost: the periodic full reconcile recovers what webhook and poll missed, a review
worker SIGKILLed mid-send is restarted and resumes sending at once (its claims carry its identity), and a short
soak (tests/benchmarks/soak_review.py: answers while the worker is down, edits during its catch-up, two SIGKILLs
mid-sync, Label Studio stopped) ends with Label Studio, review_annotations and product_attributes in agreement.
Real Label Studio, real databases, the worker as a real process where the test says so; nothing is mocked."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from devprocess import free_port  # deploy/dev, on sys.path via tests/conftest.py
from labelstudio_server import LabelStudioServer

from daemon.review.worker import ReviewWorker
from tests.benchmarks.soak_actors import WorkerProcess, route_products, taxonomy_of, worker_env
from tests.benchmarks.soak_checks import outbox_counts
from tests.benchmarks.soak_review import SoakConfig, run_soak
from tests.daemon.review_steps import (
    attribute,
    garment_answer,
    other_garment,
    review_settings,
    wait_for,
)

pytestmark = pytest.mark.timeout(1200)


def test_the_full_reconcile_recovers_answers_webhook_and_poll_missed_counts_and_logs_each(
    tmp_path: Path,
    untrained_bundle_path: Path,
    label_studio: LabelStudioServer,
    sqlite_url: str,
    workers: Callable[..., ReviewWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = review_settings(tmp_path, untrained_bundle_path, sqlite_url, label_studio)
    products = route_products(sqlite_url, taxonomy_of(untrained_bundle_path), 3, random.Random(0), "rec")
    worker = workers(settings, webhook_port=None)  # no receiver, polling hourly: only the reconcile can see answers
    wait_for(lambda: outbox_counts(sqlite_url).get("sent") == 3, 120, "the tasks to be sent")
    assert worker.reconciler is not None and worker.project.id is not None
    items = {i.product_id: i for i in worker.store.outbox_items()}
    sdk = worker.client.sdk
    answers = {}
    for product in products[:2]:
        model_value = str(items[product].payload["model_values"]["garment"]["value"])
        answers[product] = other_garment(model_value)
        sdk.annotations.create(id=items[product].task_id, result=garment_answer(answers[product]))
    # the poll's watermark is already past these answers (e.g. moved by a listing that skipped them)
    worker.store.set_state(worker.poller.state_name(worker.project.id), "2999-01-01T00:00:00+00:00")
    assert worker.poller.poll_once() == 0

    with caplog.at_level(logging.WARNING, logger="shelfsight.review"):
        first = worker.reconciler.run_once()
    assert (first.tasks, first.differing, first.recovered) == (3, 2, 2)
    for product in products[:2]:
        assert attribute(sqlite_url, product, "garment")[:2] == (answers[product], "human")  # type: ignore[index]
    recovered_lines = [r.getMessage() for r in caplog.records if "reconcile recovered annotation" in r.getMessage()]
    assert len(recovered_lines) == 2 and all("product SOAK-rec-" in line for line in recovered_lines)
    assert worker.metrics.reconcile_recovered.labels("recorded")._value.get() == 2

    # steady state: nothing differs, no task is read whole
    again = worker.reconciler.run_once()
    assert (again.differing, again.recovered) == (0, 0)

    # a deletion the webhook and poll missed is withdrawn too: the model's value comes back
    (annotation,) = worker.client.get_task(int(items[products[0]].task_id or 0))["annotations"]
    sdk.annotations.delete(id=annotation["id"])
    third = worker.reconciler.run_once()
    assert (third.differing, third.withdrawn) == (1, 1)
    assert attribute(sqlite_url, products[0], "garment")[1] == "model"  # type: ignore[index]
    assert worker.metrics.reconcile_recovered.labels("withdrawn")._value.get() == 1


class HoldingProxy:
    """An HTTP proxy in front of Label Studio that can hold task imports (never forwarding them): a worker caught
    mid-send, its rows claimed, the task not created."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.hold = threading.Event()
        self.held = threading.Event()  # an import is being held
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST" and "/import" in self.path and proxy.hold.is_set():
                    proxy.held.set()
                    proxy.release.wait(60)
                    self.send_error(502, "held and dropped by the test proxy")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                upstream = httpx.request(
                    self.command, proxy.upstream + self.path, content=body, headers=headers, timeout=60
                )
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _relay

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def holding_proxy(label_studio: LabelStudioServer) -> Iterator[HoldingProxy]:
    proxy = HoldingProxy(label_studio.url)
    yield proxy
    proxy.close()


def test_a_worker_sigkilled_mid_send_is_restarted_and_resumes_sending_without_waiting_for_its_claims_to_go_stale(
    tmp_path: Path,
    untrained_bundle_path: Path,
    label_studio: LabelStudioServer,
    holding_proxy: HoldingProxy,
    sqlite_url: str,
) -> None:
    from connectors.db import ProductStore

    store = ProductStore(sqlite_url)
    store.migrate()
    store.close()
    route_products(sqlite_url, taxonomy_of(untrained_bundle_path), 4, random.Random(1), "kill")
    title = f"kill-test-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        database_url=sqlite_url,
        bundle=untrained_bundle_path,
        label_studio_url=holding_proxy.url,
        token=label_studio.token,
        project_title=title,
        webhook_port=free_port(),
        poll_interval_s=3600,
    )
    env["SHELFSIGHT_REVIEW__CLAIM_STALE_S"] = "60"  # only the restart's own takeover can be quick
    holding_proxy.hold.set()
    first = WorkerProcess(env, tmp_path / "worker.log").start()
    second: WorkerProcess | None = None
    try:
        assert holding_proxy.held.wait(60), first.log_tail()
        claimed = _claims(sqlite_url)
        assert claimed and all(owner == "soak-review-worker" for owner in claimed), claimed
        first.kill()
        holding_proxy.hold.clear()
        holding_proxy.release.set()  # the held import is dropped: Label Studio never got it

        restarted = time.monotonic()
        second = WorkerProcess(env, tmp_path / "worker.log").start()
        # the dead worker's claims go stale only after CLAIM_STALE_S (60 s): a restart that sends well before that
        # took them over at once. The deadline is generous because the restart itself (a Python process importing
        # the Label Studio SDK) took 10-17 s on a loaded two-core machine, against about 3 s on a quiet one.
        wait_for(lambda: outbox_counts(sqlite_url).get("sent") == 4, 50, "the restarted worker to send")
        elapsed = time.monotonic() - restarted
        assert elapsed < 45, f"sending resumed {elapsed:.1f}s after the restart\n{second.log_tail()}"
        assert "took over" in second.log_tail(200)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    from connectors.labelstudio import LabelStudioClient

    client = LabelStudioClient(label_studio.url, label_studio.token)
    (project,) = [int(p.id) for p in client.sdk.projects.list(title=title) if p.title == title]
    keys = [t["data"]["shelfsight_key"] for t in client.tasks_updated_since(project, None)]
    assert len(keys) == len(set(keys)) == 4  # each routed product exactly once


def _claims(database_url: str) -> list[Any]:
    from tests.benchmarks.soak_checks import database_rows

    rows = database_rows(database_url, "SELECT claimed_by FROM review_outbox WHERE claimed_by IS NOT NULL")
    return [r[0] for r in rows]


@pytest.mark.postgres
def test_a_short_soak_loses_duplicates_and_leaves_stale_no_answer(
    tmp_path: Path,
    untrained_bundle_path: Path,
    label_studio: LabelStudioServer,
    postgres_url: str,
) -> None:
    config = SoakConfig(
        tasks=170,
        answered_while_down=105,
        skipped_while_down=3,
        edits_while_down=5,
        deletions_while_down=3,
        answered_between_kills=45,
        kills=2,
        outage_s=5.0,
        answered_after_outage=5,
        new_per_restart=3,
        catch_up_timeout_s=240,  # a wait on the stores agreeing: generous for a loaded machine
    )
    counts = run_soak(
        config,
        database_url=postgres_url,
        label_studio=label_studio,
        bundle=untrained_bundle_path,
        work=tmp_path,
        free_port=free_port,
    )
    print(counts)
    worker_log = (tmp_path / "review-worker.log").read_text(errors="replace").splitlines()
    assert not counts.problems, "\n".join([*counts.problems[:20], "worker log:", *worker_log[-80:]])
    # the restart's first poll reads every answer made while the worker was down (more than a page): a catch-up,
    # which the worker follows with a full reconcile
    assert any("(a catch-up): a full reconcile follows" in line for line in worker_log), "\n".join(worker_log[-80:])
    # webhook and polls alone record every answer: the reconciles found nothing to recover. (Before the listing paged
    # by id, a catch-up sometimes skipped about 50 answers here: docs/review-loop.md.)
    missed = counts.recovered_by_worker_reconcile + counts.recovered_by_final_reconcile
    assert missed == 0, f"webhook and poll missed {missed} answer(s) a reconcile recovered; worker log: " + "\n".join(
        worker_log[-80:]
    )
    assert counts.answered_while_down > 100 and counts.edits_during_catch_up > 0
    assert counts.kills == 4 and counts.kills_mid_sync == 2  # two while it was down, two in the middle of a sync
