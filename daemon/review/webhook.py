"""`WebhookReceiver`: Label Studio's webhook deliveries (POST /webhook, checked against the shared secret header),
queued and answered at once; GET /metrics and /healthz on the same port.

What it must not do: apply deliveries on the HTTP thread (the worker's apply thread does, so Label Studio is
answered within its one-second wait), or log the secret.
"""

from __future__ import annotations

import hmac
import json
import queue
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CollectorRegistry

from daemon.http import BackgroundHTTPServer, QuietHandler
from daemon.metrics import ReviewMetrics
from daemon.review.project import SECRET_HEADER


class WebhookReceiver(BackgroundHTTPServer):
    """POST /webhook (shared secret in the X-ShelfSight-Webhook-Secret header), GET /metrics and /healthz.

    Deliveries are checked, queued and answered at once; `process` (the worker's thread) applies them. A
    delivery that cannot be applied (database down) is dropped after a few tries: the poller picks it up."""

    def __init__(
        self,
        host: str,
        port: int,
        secret: str,
        registry: CollectorRegistry,
        metrics: ReviewMetrics,
        path: str = "/webhook",
    ) -> None:
        if not secret:
            raise ValueError("the webhook receiver needs a shared secret")
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=10_000)
        self.path = path
        handler = _webhook_handler(self, secret.encode(), registry, metrics)
        super().__init__(host, port, handler, thread_name="review-webhook")


def _webhook_handler(
    receiver: WebhookReceiver, secret: bytes, registry: CollectorRegistry, metrics: ReviewMetrics
) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self._serve_get(registry, {"/healthz": lambda: (200, b"ok\n")})

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != receiver.path:
                self._send(404, b"not found\n")
                return
            given = (self.headers.get(SECRET_HEADER) or "").encode()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, 50_000_000)) if length > 0 else b""
            if not hmac.compare_digest(given, secret):
                metrics.webhooks.labels("rejected_secret").inc()
                self._send(
                    401, b'{"error": "missing or wrong X-ShelfSight-Webhook-Secret header"}\n', "application/json"
                )
                return
            try:
                payload = json.loads(body)
                if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
                    raise ValueError("not a Label Studio webhook payload (no action)")
            except ValueError as exc:
                metrics.webhooks.labels("bad_request").inc()
                self._send(400, json.dumps({"error": str(exc)}).encode(), "application/json")
                return
            if payload["action"] not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"):
                metrics.webhooks.labels("ignored").inc()
                self._send(200, b'{"status": "ignored"}', "application/json")
                return
            try:
                receiver.queue.put_nowait(payload)
            except queue.Full:
                metrics.webhooks.labels("unavailable").inc()
                self._send(503, b'{"error": "busy; polling will pick this up"}', "application/json")
                return
            metrics.webhooks.labels("accepted").inc()
            self._send(200, b'{"status": "queued"}', "application/json")

    return Handler
