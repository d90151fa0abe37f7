"""Fixtures shared by the daemon's tests: `backend` (engine-level tests run on each inference backend; the ONNX export
of a session-scoped bundle is made once, beside it) and in-process review workers (test_review_loop.py,
test_review_recovery.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from daemon.config import Settings
from daemon.review.worker import ReviewWorker, ReviewWorkerOptions, build_review_worker
from learner.inference.backends import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each inference backend in turn (torch, onnxruntime)."""
    return str(request.param)


@pytest.fixture
def workers() -> Iterator[Callable[..., ReviewWorker]]:
    """In-process review workers (polling hourly unless told), stopped after the test."""
    started: list[ReviewWorker] = []

    def start(settings: Settings, **options: Any) -> ReviewWorker:
        defaults: dict[str, Any] = {"send_interval_s": 0.3, "poll_interval_s": 3600.0, "webhook_port": 0}
        worker = build_review_worker(settings, worker_options=ReviewWorkerOptions(**{**defaults, **options}))
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.stop()
        worker.store.store.close()
