"""The health server's and the webhook receiver's GET endpoints (real HTTP on a free local port)."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry, Counter

from daemon.http import HealthServer
from daemon.metrics import ReviewMetrics
from daemon.review.webhook import WebhookReceiver


def _get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)


def test_health_probes_answer_503_when_not_ready_or_stalled_and_404_elsewhere() -> None:
    registry = CollectorRegistry()
    Counter("probe_test_total", "a counter the scrape must show", registry=registry).inc()
    state = {"ready": False, "alive": True}
    server = HealthServer("127.0.0.1", 0, registry, ready=lambda: state["ready"], alive=lambda: state["alive"]).start()
    try:
        assert (_get(server.port, "/readyz").status_code, _get(server.port, "/readyz").text) == (503, "not ready\n")
        assert (_get(server.port, "/healthz").status_code, _get(server.port, "/healthz").text) == (200, "ok\n")
        state.update(ready=True, alive=False)
        assert (_get(server.port, "/readyz?x=1").status_code, _get(server.port, "/readyz").text) == (200, "ready\n")
        stalled = _get(server.port, "/healthz")
        assert (stalled.status_code, stalled.text) == (503, "main loop stalled\n")
        assert "probe_test_total 1.0" in _get(server.port, "/metrics").text
        assert _get(server.port, "/nothing").status_code == 404
    finally:
        server.stop()


def test_webhook_receiver_serves_healthz_and_metrics_but_no_readyz() -> None:
    registry = CollectorRegistry()
    receiver = WebhookReceiver("127.0.0.1", 0, "secret", registry, ReviewMetrics(registry)).start()
    try:
        assert (_get(receiver.port, "/healthz").status_code, _get(receiver.port, "/healthz").text) == (200, "ok\n")
        assert _get(receiver.port, "/metrics").status_code == 200
        assert _get(receiver.port, "/readyz").status_code == 404
    finally:
        receiver.stop()
