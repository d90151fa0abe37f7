"""The enrichment pipeline: events in, tagged attributes committed to the product database, offsets out.

One class per thread role, each with one job, put together by `Enricher` (`enricher.py`); timing, counting and
retries wrap the stages (`daemon.metrics.PipelineMetrics` hooks, `connectors.retry.RetryPolicy`), never sit inside
them:

    main thread        `ConsumerLoop` (consumer.py): poll the source, hand events to the fetch pool, take finished
                       events back and commit offsets, pause partitions when too much is in flight (backpressure),
                       hand partitions over on a rebalance. The only thread that touches the consumer, and it never
                       blocks on the GPU or the database.
    fetch/decode pool  `EventPreparer` (prepare.py): parse the event, fetch each image (transient failures retried),
                       decode and resize it on CPU, queue it for inference; `fetch_workers` threads, of which at most
                       `decode_workers` decode at once.
    inference thread   `InferenceWorker` (inference.py): dynamic batches (`max_images` or `max_delay_ms` after the
                       first image), one forward pass, on the engine that prepared the images (hot reload);
                       `inference_workers` of them.
    writer thread      `ResultWriter` (writer.py): merge each finished event's images into one result
                       (merge.py) and route it (review), write a group in one transaction (waited for while the
                       database is down, never dead-lettered), dead-letter permanent failures, report events done.

What the stages hand each other lives in work.py. An offset is committed only when every earlier event of its
partition is done, and "done" means its results are committed in the database (or its dead letter acknowledged):
at-least-once delivery, and the processing log's idempotency key (product, image digest, model version) makes
repeated deliveries write nothing twice.

What this package must not do: build itself from settings (`daemon.service` does) or parse configuration.
"""

from daemon.pipeline.enricher import Enricher
from daemon.pipeline.merge import merge_attributes
from daemon.pipeline.work import EventJob, PermanentFailure, PipelineOptions, ReviewRouter, next_batch

__all__ = [
    "Enricher",
    "EventJob",
    "PermanentFailure",
    "PipelineOptions",
    "ReviewRouter",
    "merge_attributes",
    "next_batch",
]
