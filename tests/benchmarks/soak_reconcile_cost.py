"""What one full reconcile of the review worker costs Label Studio (`python -m tests.benchmarks.soak_review
--measure-reconcile N`): N tasks are created (a third answered) and recorded as the worker would, then the requests
and response bytes of one reconcile that finds nothing to do are counted by an httpx event hook.

What it must not do: run the soak scenario, or mock a service.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.benchmarks.soak_actors import Annotators, taxonomy_of

# --------------------------------------------------------------------------------------------------- reconcile cost


@dataclass
class ReconcileCost:
    tasks: int
    answered: int
    requests: int
    response_bytes: int
    seconds: float
    differing: int

    page_size: int = 1000

    def per_10k(self) -> dict[str, float]:
        """Bytes scale with the tasks; requests with the pages (one per `page_size` tasks) plus the fixed ones."""
        pages = -(-self.tasks // self.page_size)
        fixed = max(self.requests - pages, 0)
        scale = 10_000 / max(self.tasks, 1)
        return {"requests": -(-10_000 // self.page_size) + fixed, "bytes": round(self.response_bytes * scale)}


def measure_reconcile(label_studio: Any, database_url: str, bundle: Path, n: int) -> ReconcileCost:
    """Create `n` tasks (a third answered), record them as the worker would, then count what one full reconcile
    asks of Label Studio when nothing differs (its steady state): requests and response bytes."""
    from connectors.db import ProductStore, ReviewStore
    from connectors.labelstudio import LabelStudioClient
    from daemon.metrics import ReviewMetrics
    from daemon.review.applier import AnnotationApplier
    from daemon.review.project import ReviewProject
    from daemon.review.reconcile import FullReconcile

    taxonomy = taxonomy_of(bundle)
    rng = random.Random(1)
    store = ProductStore(database_url)
    store.migrate()
    reviews = ReviewStore(store)
    traffic = Counter[str]()

    def count(response: httpx.Response) -> None:
        response.read()
        traffic["requests"] += 1
        traffic["bytes"] += len(response.content)

    http = httpx.Client(timeout=60, event_hooks={"response": [count]})
    client = LabelStudioClient(label_studio.url, label_studio.token, timeout_s=60, http_client=http)
    project = ReviewProject(client, taxonomy, f"reconcile-cost-{uuid.uuid4().hex[:6]}", model_version=lambda: None)
    project_id = project.ensure()
    annotators = Annotators(client, taxonomy, project_id, rng)
    for start in range(0, n, 500):
        batch = [
            {"data": {"image": "/x.jpg", "product_id": f"C-{i}", "title": "t", "description": "", "conflict": ""}}
            for i in range(start, min(n, start + 500))
        ]
        client.import_tasks(project_id, batch)
    answered, _ = annotators.answer_tasks(n // 3)
    metrics = ReviewMetrics()
    applier = AnnotationApplier(reviews, client, taxonomy, metrics)
    reconcile = FullReconcile(reviews, project, applier, metrics)
    reconcile.run_once()  # first pass: reads the answered tasks whole once (nothing was recorded yet)
    traffic.clear()
    t0 = time.monotonic()
    report = reconcile.run_once()
    seconds = time.monotonic() - t0
    store.close()
    return ReconcileCost(n, answered, traffic["requests"], traffic["bytes"], round(seconds, 2), report.differing)
