"""`/healthz`, `/readyz` and `/metrics` on one HTTP port (stdlib server on a daemon thread).

- `/healthz`: the process is alive and its main loop turned recently (liveness probe).
- `/readyz`: the model is loaded, the database reachable and the source connected (readiness probe).
- `/metrics`: Prometheus exposition of the service's own registry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class BackgroundHTTPServer:
    """A threading stdlib HTTP server on a daemon thread: `start()`, `stop()`, and the bound `port` (0 picks
    a free one). The daemon's health endpoints and the review worker's webhook receiver are both one."""

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler], thread_name: str) -> None:
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=thread_name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


Probe = Callable[[], tuple[int, bytes]]  # a GET endpoint's (status, plain-text body)


class QuietHandler(BaseHTTPRequestHandler):
    """Request handler base: `_send` writes a whole response, `_serve_get` answers GET /metrics and the probe
    paths; nothing is logged per request (scrapes every few seconds would flood the log)."""

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_metrics(self, registry: CollectorRegistry) -> None:
        self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    def _serve_get(self, registry: CollectorRegistry, probes: Mapping[str, Probe]) -> None:
        """GET: /metrics from `registry`, a probe path from its probe, 404 for anything else."""
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send_metrics(registry)
        elif (probe := probes.get(path)) is not None:
            self._send(*probe())
        else:
            self._send(404, b"not found\n")

    def log_message(self, format: str, *args: object) -> None:
        return


class HealthServer(BackgroundHTTPServer):
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(host, port, _make_handler(registry, ready, alive), thread_name="http")


def _make_handler(
    registry: CollectorRegistry, ready: Callable[[], bool], alive: Callable[[], bool]
) -> type[BaseHTTPRequestHandler]:
    probes: dict[str, Probe] = {
        "/healthz": lambda: (200, b"ok\n") if alive() else (503, b"main loop stalled\n"),
        "/readyz": lambda: (200, b"ready\n") if ready() else (503, b"not ready\n"),
    }

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self._serve_get(registry, probes)

    return Handler


def main_loop_alive(heartbeat: Callable[[], float], stall_after_s: float = 120.0) -> Callable[[], bool]:
    return lambda: time.monotonic() - heartbeat() < stall_after_s
