"""The pipeline's inference thread (`InferenceWorker`): dynamic batching and one forward pass per batch.

A batch closes at `max_batch_images` or `max_batch_delay_ms` after its first image. Images run on the engine that
prepared them, so the batch that straddles a hot reload runs as two (old engine, new engine). When a batch fails
(e.g. CUDA out of memory) its images are tried one by one and only those that still fail are dead-lettered. Events
whose images are all tagged go to the writer. With `inference_workers` > 1 that many workers each take their own
batch off the same queue (onnxruntime on CPU: single-threaded runs side by side keep every core busy while one of
them is between runs or preempted by the other stages, instead of one run whose parallel section waits for its
slowest thread).

What it must not do: anything but infer (merging and routing happen on the writer thread): it is the one serial
stage, and Python work here holds the GIL it needs.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time

from daemon.metrics import PipelineMetrics
from daemon.pipeline.work import Finished, ImageWork, Lanes, PermanentFailure, PipelineOptions, next_batch
from learner.inference.engine import ImageTags, TaggingEngine

log = logging.getLogger("shelfsight.pipeline")


class InferenceWorker:
    """One inference thread's loop (see the module docstring); ends on the stop sentinel."""

    def __init__(self, lanes: Lanes, options: PipelineOptions, observe: PipelineMetrics) -> None:
        self.lanes = lanes
        self.max_images = options.max_batch_images
        self.max_delay_s = options.max_batch_delay_ms / 1000
        self.observe = observe

    def run(self) -> None:
        while (batch := next_batch(self.lanes.infer, self.max_images, self.max_delay_s)) is not None:
            self.infer(batch)
        with contextlib.suppress(queue.Full):  # the stop sentinel, passed on to the other inference workers
            self.lanes.infer.put(None, timeout=5)

    def infer(self, batch: list[ImageWork]) -> None:
        by_engine: dict[int, list[ImageWork]] = {}
        for item in batch:  # more than one group only in the batch that straddles a hot reload
            by_engine.setdefault(id(item.engine), []).append(item)
        for items in by_engine.values():
            self._infer_with(items[0].engine, items)

    def _infer_with(self, engine: TaggingEngine, batch: list[ImageWork]) -> None:
        now = time.monotonic()
        for item in batch:
            self.observe.waited(item.queued_at, now)
        try:
            with self.observe.stage("inference", on_error=False):
                results = engine.infer([item.prepared for item in batch])
        except Exception as exc:  # e.g. CUDA OOM: retry images one by one
            log.warning("batch of %d failed (%s); retrying one by one", len(batch), exc)
            for item in batch:
                try:
                    (tags,) = engine.infer([item.prepared])
                    self._image_done(item, tags)
                except Exception as exc2:
                    self.lanes.write.put(Finished(item.job, failure=PermanentFailure("inference_error", repr(exc2))))
            return
        self.observe.batch_inferred(len(batch))
        for item, tags in zip(batch, results, strict=True):
            self._image_done(item, tags)

    def _image_done(self, item: ImageWork, tags: ImageTags) -> None:
        job = item.job
        with job.lock:
            job.tags[item.index] = tags
            complete = len(job.tags) == job.expected
        if complete:
            self.lanes.write.put(Finished(job))  # merged and routed on the writer thread: inference only infers
