"""Backpressure: the source is paused while too many events are in flight, resumed once they drain."""

from __future__ import annotations

import json

from connectors.local_source import LocalDirectorySource
from daemon.config import Settings
from daemon.service import build_service


class RecordingSource(LocalDirectorySource):
    """The real local source, noting how much was in flight whenever it was paused or resumed."""

    def __init__(self, events_dir, enricher_ref):  # type: ignore[no-untyped-def]
        super().__init__(events_dir, poll_interval_s=0.05)
        self.enricher_ref = enricher_ref
        self.calls: list[tuple[str, int]] = []

    def pause(self, partitions=None):  # type: ignore[no-untyped-def]
        self.calls.append(("pause", self.enricher_ref[0].consumer.in_flight))
        super().pause(partitions)

    def resume(self, partitions=None):  # type: ignore[no-untyped-def]
        self.calls.append(("resume", self.enricher_ref[0].consumer.in_flight))
        super().resume(partitions)


def test_source_pauses_above_the_in_flight_limit_and_resumes_below_half(tmp_path, untrained_bundle_path, cc0_images):
    events = tmp_path / "events"
    events.mkdir()
    lines = [
        json.dumps({"schema_version": 1, "product_id": f"p{i}", "image_urls": [cc0_images[i % 20].as_uri()]})
        for i in range(40)
    ]
    (events / "batch.jsonl").write_text("\n".join(lines) + "\n")
    settings = Settings(
        model_path=untrained_bundle_path,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        http_port=0,
        local={"events_dir": events, "exit_when_idle": True},  # type: ignore[arg-type]
        fetch={"file_root": cc0_images[0].parent},  # type: ignore[arg-type]
        batch={"max_in_flight_events": 8, "max_images": 4},  # type: ignore[arg-type]
    )
    service = build_service(settings)
    enricher = service.enricher
    ref = [enricher]
    source = RecordingSource(events, ref)
    enricher.source = source
    enricher.source.poll = _limit(source.poll, 3)  # small polls, as Kafka's max_poll_records would give
    try:
        enricher.run(exit_when_idle=source.idle)
    finally:
        service.close()
    pauses = [n for call, n in source.calls if call == "pause"]
    resumes = [n for call, n in source.calls if call == "resume"]
    assert pauses and resumes, source.calls
    assert all(n >= 8 for n in pauses), "paused only at the limit"
    assert all(n <= 4 for n in resumes), "resumed only below half the limit"
    assert enricher.store.count_products() == 40, "nothing lost while paused"


def _limit(poll, n):  # type: ignore[no-untyped-def]
    return lambda timeout_ms=500, max_records=100: poll(timeout_ms=timeout_ms, max_records=min(n, max_records))
