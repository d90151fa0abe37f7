"""The review loop's commands against the real Label Studio server: `shelfsight review status` and `review sync` on
a real database, and `shelfsight review run` as a process that sends what the daemon routed and stops on SIGTERM
without logging a secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from labelstudio_server import LabelStudioServer
from typer.testing import CliRunner

from connectors.db import ProductStore, ReviewStore
from daemon.review.worker import ReviewWorkerOptions, build_review_worker
from tests.daemon.review_steps import (
    CC0_DIR,
    SECRET,
    enrich,
    garment_answer,
    review_settings,
    wait_for,
)

# generous: the first test of a session on a fresh machine also installs and initialises Label Studio (minutes)
pytestmark = pytest.mark.timeout(1200)


def test_review_status_and_sync_commands(
    tmp_path: Path,
    untrained_bundle_path: Path,
    label_studio: LabelStudioServer,
    sqlite_url: str,
    cc0_images: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from daemon.cli import app

    settings = review_settings(tmp_path, untrained_bundle_path, sqlite_url, label_studio)
    enrich(settings, cc0_images[13:15])
    for name, value in {
        "SHELFSIGHT_DATABASE_URL": sqlite_url,
        "SHELFSIGHT_MODEL_PATH": str(untrained_bundle_path),
        "SHELFSIGHT_FETCH__FILE_ROOT": str(CC0_DIR / "images"),
        "SHELFSIGHT_REVIEW__LABEL_STUDIO_URL": label_studio.url,
        "SHELFSIGHT_REVIEW__LABEL_STUDIO_TOKEN": label_studio.token,
        "SHELFSIGHT_REVIEW__PROJECT_TITLE": settings.review.project_title,
        "SHELFSIGHT_REVIEW__LOCAL_FILES_ROOT": str(CC0_DIR),
        "SHELFSIGHT_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()

    def status() -> dict[str, Any]:
        result = runner.invoke(app, ["review", "status", "--json"])
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.output))

    assert status()["queue_depth"] == 2
    synced = runner.invoke(app, ["review", "sync"])
    assert synced.exit_code == 0 and "sent 2 tasks" in synced.output, synced.output
    assert (status()["queue_depth"], status()["sent"], status()["waiting_for_annotators"]) == (0, 2, 2)

    store = ProductStore(sqlite_url)
    item = ReviewStore(store).outbox_items()[0]
    store.close()
    model_value = str(item.payload["model_values"]["garment"]["value"])
    worker = build_review_worker(settings, worker_options=ReviewWorkerOptions(webhook_port=None))
    worker.client.sdk.annotations.create(id=item.task_id, result=garment_answer(model_value))  # the model was right
    worker.store.store.close()
    assert runner.invoke(app, ["review", "sync"]).exit_code == 0
    report = status()
    assert report["completed"] == 1 and report["waiting_for_annotators"] == 1
    assert report["agreement"]["garment"] == {"model_right": 1, "reviewed": 1, "ratio": 1.0}
    human = runner.invoke(app, ["review", "status"])
    assert "model-human agreement" in human.output and "garment" in human.output

    label_studio.stop()
    try:
        down = runner.invoke(app, ["review", "sync"])
        assert down.exit_code == 1 and "unavailable" in down.output
    finally:
        label_studio.start()


def test_the_review_worker_command_runs_until_sigterm(
    tmp_path: Path,
    untrained_bundle_path: Path,
    label_studio: LabelStudioServer,
    sqlite_url: str,
    cc0_images: list[Path],
) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys

    settings = review_settings(tmp_path, untrained_bundle_path, sqlite_url, label_studio)
    enrich(settings, cc0_images[15:16])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "SHELFSIGHT_DATABASE_URL": sqlite_url,
        "SHELFSIGHT_MODEL_PATH": str(untrained_bundle_path),
        "SHELFSIGHT_FETCH__FILE_ROOT": str(CC0_DIR / "images"),
        "SHELFSIGHT_REVIEW__LABEL_STUDIO_URL": label_studio.url,
        "SHELFSIGHT_REVIEW__LABEL_STUDIO_TOKEN": label_studio.token,
        "SHELFSIGHT_REVIEW__PROJECT_TITLE": settings.review.project_title,
        "SHELFSIGHT_REVIEW__LOCAL_FILES_ROOT": str(CC0_DIR),
        "SHELFSIGHT_REVIEW__WEBHOOK_SECRET": SECRET,
        "SHELFSIGHT_REVIEW__WEBHOOK_PORT": str(port),
        "SHELFSIGHT_REVIEW__SEND_INTERVAL_S": "0.5",
    }
    log_path = tmp_path / "review.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "review", "run"], env=env, stdout=log, stderr=log)
    try:

        def sent() -> bool:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return False
            return "shelfsight_review_tasks_sent_total 1.0" in body

        wait_for(sent, 120, "the worker to send the routed product")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text_log = log_path.read_text()
    assert label_studio.token not in text_log and SECRET not in text_log  # secrets never logged
