"""The pipeline's fetch pool: remote downloads overlap up to the fetcher's concurrency, while decoding (CPU work)
stays within `decode_workers`, so slow image servers do not cap the daemon at a few images per latency."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, cast

from connectors.images import ImageFetcher
from connectors.source import SourceRecord
from daemon.metrics import ServiceMetrics
from daemon.pipeline import Enricher, EventJob, PipelineOptions
from tests.plugins.http import LocalHTTPServer


class CountingEngine:
    """Stands in for the tagging engine's CPU half: records how many images it prepares at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def prepare(self, data: bytes) -> bytes:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.05)
        with self.lock:
            self.now -= 1
        return data


def record(offset: int, url: str) -> SourceRecord:
    value = json.dumps({"schema_version": 1, "product_id": f"p{offset}", "image_urls": [url]}).encode()
    return SourceRecord("products", 0, offset, None, value, [], 0)


def test_downloads_overlap_beyond_the_decode_workers_and_decoding_stays_within_them(
    http_server: LocalHTTPServer,
) -> None:
    engine = CountingEngine()
    nothing = cast(Any, None)
    with ImageFetcher(allow_private_networks=True, max_concurrency=8, total_timeout_s=10) as fetcher:
        pipeline = Enricher(
            source=nothing,
            dead_letters=nothing,
            store=nothing,
            fetcher=fetcher,
            engine=cast(Any, engine),
            metrics=ServiceMetrics(),
            options=PipelineOptions(fetch_workers=8, decode_workers=2, max_batch_images=16),
        )
        url = http_server.url("/slow-headers?delay=0.5")
        jobs = [EventJob(record=record(i, url), consumed_at=time.monotonic()) for i in range(16)]
        for job in jobs:
            pipeline.preparer.submit(job)
        queued = [pipeline.lanes.infer.get(timeout=30) for _ in jobs]
        pipeline.preparer.shutdown()

    assert sorted(item.job.record.offset for item in queued if item is not None) == list(range(16))
    assert http_server.max_in_flight("/slow-headers") >= 6, "downloads did not overlap beyond the decode workers"
    assert 1 <= engine.most <= 2, f"{engine.most} images decoded at once with decode_workers=2"
