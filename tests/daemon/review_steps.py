"""The steps review-loop tests share (test_review_loop.py, test_review_commands.py, test_review_recovery.py): settings
for a daemon that routes to a real Label Studio, enriching a few CC0 photos, waiting for a condition, reading the
product database directly, an annotator's answer, the worker's metrics, and a second webhook receiver that records
Label Studio's deliveries.

Test helpers only: no assertions on the system under test, and nothing started that the caller does not stop.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from labelstudio_server import LabelStudioServer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from daemon.config import Settings
from daemon.review.worker import ReviewWorker
from daemon.service import run_service

SECRET = "webhook-test-secret"
CC0_DIR = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "clothing-cc0"
MODEL_VERSION = "cc0-untrained-test"  # tests/plugins/models.py


def review_settings(
    tmp_path: Path, bundle: Path, database_url: str, label_studio: LabelStudioServer, **review: Any
) -> Settings:
    return Settings(
        source="local",
        model_path=bundle,
        database_url=database_url,
        device="cpu",
        http_port=0,
        local={"events_dir": tmp_path / "events", "exit_when_idle": True},  # type: ignore[arg-type]
        fetch={"file_root": CC0_DIR / "images", "attempts": 1},  # type: ignore[arg-type]
        review={  # type: ignore[arg-type]
            "enabled": True,
            "audit_rate": 0.0,
            "label_studio_url": label_studio.url,
            "label_studio_token": label_studio.token,
            "project_title": f"review-test-{uuid.uuid4().hex[:8]}",
            "webhook_secret": SECRET,
            "local_files_root": CC0_DIR,
            "retry_initial_s": 0.2,
            "retry_max_s": 1.0,
            **review,
        },
    )


def enrich(settings: Settings, images: list[Path]) -> list[str]:
    """Publish one new-product event per image and run the enrichment daemon until it has processed them."""
    events = settings.local.events_dir
    events.mkdir(parents=True, exist_ok=True)
    ids = []
    for i, image in enumerate(images):
        product_id = f"SKU-{uuid.uuid4().hex[:6]}-{i}"
        event = {"schema_version": 1, "product_id": product_id, "image_urls": [image.as_uri()], "title": f"Item {i}"}
        (events / f"{product_id}.json").write_text(json.dumps(event))
        ids.append(product_id)
    run_service(settings)
    return ids


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def attribute(database_url: str, product_id: str, name: str) -> tuple[Any, ...] | None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT value, source, annotator, model_version, updated_at FROM product_attributes "
                    "WHERE product_id = :p AND attribute = :a"
                ),
                {"p": product_id, "a": name},
            ).first()
    finally:
        engine.dispose()
    return tuple(row) if row is not None else None


def snapshot(database_url: str) -> list[list[tuple[Any, ...]]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [
                [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2"))]
                for table in ("product_attributes", "review_annotations", "review_outbox", "products")
            ]
    finally:
        engine.dispose()


def all_sent(worker: ReviewWorker, n: int) -> bool:
    items = worker.store.outbox_items()
    return len(items) == n and all(i.status == "sent" for i in items)


def other_garment(model_value: str) -> str:
    return "Dress" if model_value != "Dress" else "Skirt"


def garment_answer(value: str) -> list[dict[str, Any]]:
    return [{"from_name": "garment", "to_name": "image", "type": "choices", "value": {"choices": [value]}}]


def metric(worker: ReviewWorker, name: str, **labels: str) -> float:
    assert worker.webhook is not None
    body = httpx.get(f"http://127.0.0.1:{worker.webhook.port}/metrics", timeout=30).text
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


class CapturedWebhooks:
    """A second webhook receiver registered in Label Studio: records the real deliveries, to replay them."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        captured = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                captured.append((dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/capture"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
