"""How the inference and writer threads take batches off their queues (`daemon.pipeline.next_batch`)."""

from __future__ import annotations

import queue
import threading
import time

from daemon.pipeline import next_batch


def test_next_batch_takes_what_is_queued_up_to_the_limit() -> None:
    q: queue.Queue[int | None] = queue.Queue()
    for i in range(5):
        q.put(i)
    assert next_batch(q, 3) == [0, 1, 2]
    assert next_batch(q, 3) == [3, 4]


def test_next_batch_waits_for_late_items_only_within_its_delay() -> None:
    q: queue.Queue[int | None] = queue.Queue()
    q.put(1)
    threading.Timer(0.05, q.put, args=(2,)).start()
    threading.Timer(1.0, q.put, args=(3,)).start()
    started = time.monotonic()
    assert next_batch(q, 10, max_wait_s=0.4) == [1, 2]
    assert time.monotonic() - started < 0.9
    assert next_batch(q, 10) == [3]


def test_next_batch_returns_none_at_the_sentinel_after_finishing_the_batch_it_ended() -> None:
    q: queue.Queue[int | None] = queue.Queue()
    q.put(1)
    q.put(None)
    assert next_batch(q, 10) == [1]
    assert next_batch(q, 10) is None
