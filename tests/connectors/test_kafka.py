"""KafkaEventSource, DeadLetterPublisher and friends against the real broker (tests/plugins/kafka.py).

Group timeouts are short (session 6 s, heartbeat 1 s) so rebalances take seconds. Each test uses its own
topics and consumer group, so they are independent of order; the broker is shared by the session.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from kafka_server import KafkaBroker, free_port

from connectors.events import parse_event
from connectors.kafka import KafkaEventSource, TransientKafkaError
from connectors.kafka_producers import ERROR_HEADER_PREFIX, DeadLetterPublisher, EventPublisher, ensure_topics
from connectors.source import OffsetTracker, Partition, SourceRecord, TransientSourceError

FAST_GROUP = {
    "session_timeout_ms": 6_000,
    "heartbeat_interval_ms": 1_000,
    "max_poll_interval_ms": 20_000,
    "fetch_max_wait_ms": 200,
    "reconnect_backoff_max_ms": 1_000,
    "commit_timeout_ms": 5_000,
}

SourceFactory = Callable[..., KafkaEventSource]
Publishers = Callable[[str], EventPublisher]


def product(i: int) -> dict[str, Any]:
    return {"schema_version": 1, "product_id": f"sku-{i}", "image_urls": [f"https://img.example/{i}.jpg"]}


def new_group() -> str:
    return f"group-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_source(kafka_broker: KafkaBroker) -> Iterator[SourceFactory]:
    sources: list[KafkaEventSource] = []

    def make(topic: str, group: str, **overrides: Any) -> KafkaEventSource:
        settings = {**FAST_GROUP, **overrides}
        source = KafkaEventSource(kafka_broker.bootstrap, topic, group, client_id=f"test-{len(sources)}", **settings)
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.close(timeout_ms=5_000)


def consume(source: KafkaEventSource, n: int, timeout_s: float = 120.0) -> list[SourceRecord]:
    """Poll until `n` records arrived (fails on timeout); returns them in arrival order."""
    got: list[SourceRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} records arrived in {timeout_s:.0f}s"
        got.extend(source.poll(timeout_ms=200))
    return got


def poll_for(source: KafkaEventSource, seconds: float) -> list[SourceRecord]:
    got: list[SourceRecord] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got.extend(source.poll(timeout_ms=200))
    return got


def wait_for_assignment(source: KafkaEventSource, expected: set[Partition], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while source.assignment() != expected:
        assert time.monotonic() < deadline, f"assignment {source.assignment()} never became {expected}"
        assert source.poll(timeout_ms=200) == [], "records arrived before the test published any"


def test_offsets_are_committed_only_up_to_the_first_unfinished_record(
    kafka_topic: Callable[..., str], kafka_publisher: Publishers, make_source: SourceFactory
) -> None:
    topic = kafka_topic(1)
    kafka_publisher(topic).publish_many(product(i) for i in range(5))
    group = new_group()
    source = make_source(topic, group)
    records = consume(source, 5)
    tracker = OffsetTracker()
    for record in records:
        tracker.add(record.tp, record.offset)
    for record in records:
        if record.offset != 2:  # record 2's database transaction has not committed yet
            tracker.done(record.tp, record.offset)

    assert source.commit(tracker.committable()) == {(topic, 0): 2}
    source.close()

    restarted = make_source(topic, group)
    redelivered = consume(restarted, 3)
    assert [r.offset for r in redelivered] == [2, 3, 4]
    assert [parse_event(r.value).product_id for r in redelivered] == ["sku-2", "sku-3", "sku-4"]


def test_a_member_that_rejoins_with_a_new_consumer_gets_its_partitions_back_from_the_committed_offset(
    kafka_topic: Callable[..., str], kafka_publisher: Publishers, make_source: SourceFactory
) -> None:
    # what the stuck-join watchdog does (a kafka-python 3.0.12 client that never took the assignment the broker
    # gave it): the consumer is dropped and the group joined again; what was not committed is read again
    topic = kafka_topic(2)
    kafka_publisher(topic).publish_many(product(i) for i in range(6))
    source = make_source(topic, new_group(), stuck_join_ms=60_000)
    records = consume(source, 6)
    first = {tp: min(r.offset for r in records if r.tp == tp) for tp in {r.tp for r in records}}
    committed = source.commit({tp: offset + 1 for tp, offset in first.items()})  # one record per partition done
    assert len(committed) == 2

    source.rejoin("test")

    assert source.rejoins == 1
    again = consume(source, 4)
    assert sorted((r.tp, r.offset) for r in again) == sorted(
        (r.tp, r.offset) for r in records if r.offset > first[r.tp]
    )


def test_dead_letter_keeps_the_original_payload_and_names_the_error(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str], kafka_publisher: Publishers, make_source: SourceFactory
) -> None:
    topic, dlq = kafka_topic(1), kafka_topic(1)
    kafka_publisher(topic).publish(b"{not json", key="sku-9", headers=[("trace-id", b"abc-123")])
    kafka_publisher(topic).flush()
    (record,) = consume(make_source(topic, new_group()), 1)

    dead_letters = DeadLetterPublisher(kafka_broker.bootstrap, dlq, timeout_ms=10_000)
    try:
        dead_letters.publish(record, "malformed_json", "é" * 1000 + " end", attempts=3)  # 2004 bytes of UTF-8
    finally:
        dead_letters.close()

    (letter,) = consume(make_source(dlq, new_group()), 1)
    assert letter.key == b"sku-9"
    assert letter.value == b"{not json"
    assert ("trace-id", b"abc-123") in letter.headers
    assert letter.header(ERROR_HEADER_PREFIX + "error-class") == b"malformed_json"
    message = letter.header(ERROR_HEADER_PREFIX + "error-message")
    assert message is not None and len(message) <= 1024
    assert message.decode("utf-8").startswith("éé")  # cut on a character boundary
    assert letter.header(ERROR_HEADER_PREFIX + "attempts") == b"3"
    assert letter.header(ERROR_HEADER_PREFIX + "source-topic") == topic.encode()
    assert letter.header(ERROR_HEADER_PREFIX + "source-partition") == b"0"
    assert letter.header(ERROR_HEADER_PREFIX + "source-offset") == str(record.offset).encode()
    failed_at = letter.header(ERROR_HEADER_PREFIX + "failed-at")
    assert failed_at is not None and datetime.fromisoformat(failed_at.decode()).tzinfo is not None


def test_a_dead_letter_that_cannot_be_written_raises_a_transient_error(kafka_broker: KafkaBroker) -> None:
    record = SourceRecord("products.new", 0, 7, b"k", b"v", [], 0)
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"  # the broker does not auto-create topics
    dead_letters = DeadLetterPublisher(kafka_broker.bootstrap, missing, timeout_ms=2_000)
    try:
        with pytest.raises(TransientKafkaError, match=missing):
            dead_letters.publish(record, "invalid_event", "product_id: field required", attempts=1)
    finally:
        dead_letters.close(timeout_s=2)


def test_paused_partition_delivers_nothing_until_resumed(
    kafka_topic: Callable[..., str], kafka_publisher: Publishers, make_source: SourceFactory
) -> None:
    topic = kafka_topic(2)
    source = make_source(topic, new_group())
    wait_for_assignment(source, {(topic, 0), (topic, 1)})
    source.pause([(topic, 0)])
    assert source.paused() == {(topic, 0)}

    publisher = kafka_publisher(topic)
    for i in range(6):
        publisher.publish(product(i), partition=i % 2)
    publisher.flush()

    while_paused = poll_for(source, seconds=3)  # time enough for the paused partition to leak, were it to
    if len(while_paused) < 3:  # a loaded machine: wait for the rest of partition 1's records
        while_paused += consume(source, 3 - len(while_paused))
    assert sorted((r.partition, r.offset) for r in while_paused) == [(1, 0), (1, 1), (1, 2)]

    source.resume([(topic, 0)])
    assert source.paused() == set()
    after_resume = consume(source, 3)
    assert sorted((r.partition, r.offset) for r in after_resume) == [(0, 0), (0, 1), (0, 2)]


def test_two_consumers_in_one_group_split_the_partitions(
    kafka_topic: Callable[..., str], kafka_publisher: Publishers, make_source: SourceFactory
) -> None:
    topic = kafka_topic(4)
    everything = {(topic, p) for p in range(4)}
    group = new_group()
    first = make_source(topic, group)
    wait_for_assignment(first, everything)

    second = make_source(topic, group)
    deadline = time.monotonic() + 120
    while not (first.assignment() and second.assignment() and first.assignment() | second.assignment() == everything):
        assert time.monotonic() < deadline, f"no split: {first.assignment()} / {second.assignment()}"
        first.poll(timeout_ms=100)
        second.poll(timeout_ms=100)
    assert first.assignment().isdisjoint(second.assignment())
    assert len(first.assignment()) == len(second.assignment()) == 2

    kafka_publisher(topic).publish_many(product(i) for i in range(40))
    received: dict[str, list[SourceRecord]] = {"first": [], "second": []}
    deadline = time.monotonic() + 120
    while len(received["first"]) + len(received["second"]) < 40:
        assert time.monotonic() < deadline, "not every record arrived"
        received["first"].extend(first.poll(timeout_ms=100))
        received["second"].extend(second.poll(timeout_ms=100))

    assert received["first"] and received["second"]
    assert {r.tp for r in received["first"]} <= first.assignment()
    assert {r.tp for r in received["second"]} <= second.assignment()
    every = [(r.partition, r.offset) for r in received["first"] + received["second"]]
    assert len(set(every)) == 40  # each record went to exactly one member


def test_revoke_callback_runs_before_partitions_move(
    kafka_topic: Callable[..., str], kafka_publisher: Publishers, make_source: SourceFactory
) -> None:
    topic = kafka_topic(2)
    group = new_group()
    timeline: list[tuple[str, float, set[Partition]]] = []
    first = make_source(topic, group)

    def first_revoked(partitions: set[Partition]) -> None:
        timeline.append(("first revoke started", time.monotonic(), partitions))
        time.sleep(1.0)  # finishing in-flight work takes a while; heartbeats must go on meanwhile
        # Only records 0 and 1 of each partition finished: commit exactly those, from inside the callback.
        first.commit({tp: 2 for tp in partitions})
        timeline.append(("first revoke finished", time.monotonic(), partitions))

    first.set_rebalance_callbacks(on_revoked=first_revoked)
    publisher = kafka_publisher(topic)
    for i in range(8):
        publisher.publish(product(i), partition=i % 2)
    publisher.flush()
    consume(first, 8)

    second = make_source(
        topic, group, on_assigned=lambda parts: timeline.append(("second assigned", time.monotonic(), parts))
    )
    from_second: list[SourceRecord] = []
    deadline = time.monotonic() + 120
    while not second.assignment() or len(from_second) < 2 * len(second.assignment()):
        assert time.monotonic() < deadline, f"rebalance did not complete: {timeline}"
        first.poll(timeout_ms=100)
        from_second.extend(second.poll(timeout_ms=100))

    names = [name for name, _, _ in timeline]
    assert names.index("first revoke finished") < names.index("second assigned"), timeline
    revoke_end = next(t for name, t, _ in timeline if name == "first revoke finished")
    assigned_at = next(t for name, t, _ in timeline if name == "second assigned")
    assert assigned_at > revoke_end
    # The partitions that moved start where the revoke callback committed, not earlier and not later.
    for tp in second.assignment():
        assert sorted(r.offset for r in from_second if r.tp == tp) == [2, 3]


def test_lag_counts_records_after_the_committed_offset(
    kafka_topic: Callable[..., str], kafka_publisher: Publishers, make_source: SourceFactory
) -> None:
    topic = kafka_topic(1)
    kafka_publisher(topic).publish_many(product(i) for i in range(5))
    source = make_source(topic, new_group())
    consume(source, 5)
    assert source.lag() == {(topic, 0): 5}  # nothing committed yet: the whole log is unprocessed
    source.commit({(topic, 0): 2})
    assert source.lag() == {(topic, 0): 3}
    kafka_publisher(topic).publish_many(product(i) for i in range(5, 7))
    assert source.lag() == {(topic, 0): 5}


def test_commit_skips_partitions_this_member_does_not_own(
    kafka_topic: Callable[..., str], make_source: SourceFactory
) -> None:
    topic = kafka_topic(1)
    source = make_source(topic, new_group())
    wait_for_assignment(source, {(topic, 0)})
    assert source.commit({(topic, 0): 0, ("someone-elses-topic", 0): 10}) == {(topic, 0): 0}


def test_consumer_resumes_after_the_broker_restarts(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str], kafka_publisher: Publishers, make_source: SourceFactory
) -> None:
    topic = kafka_topic(1)
    kafka_publisher(topic).publish_many(product(i) for i in range(3))
    source = make_source(topic, new_group(), commit_timeout_ms=2_000)
    assert [r.offset for r in consume(source, 3)] == [0, 1, 2]
    source.commit({(topic, 0): 3})

    # restart() in two halves, to look at the source while the broker is away
    kafka_broker.stop()
    assert poll_for(source, seconds=2) == []  # no exception: kafka-python keeps reconnecting
    with pytest.raises(TransientKafkaError):
        source.commit({(topic, 0): 3})
    kafka_broker.start()

    kafka_publisher(topic).publish_many(product(i) for i in range(3, 6))
    resumed = consume(source, 3, timeout_s=180)
    assert [r.offset for r in resumed] == [3, 4, 5]  # nothing lost, nothing committed redelivered
    deadline = time.monotonic() + 120
    while True:
        try:
            assert source.commit({(topic, 0): 6}) == {(topic, 0): 6}
            break
        except TransientKafkaError:
            assert time.monotonic() < deadline, "commits never worked again after the restart"
            source.poll(timeout_ms=200)


def test_ensure_topics_creates_missing_topics_once(kafka_broker: KafkaBroker) -> None:
    name = f"ensure-{uuid.uuid4().hex[:8]}"
    assert ensure_topics(kafka_broker.bootstrap, {name: 2}) == {name}
    assert ensure_topics(kafka_broker.bootstrap, {name: 2}) == set()


def test_a_source_without_a_reachable_broker_raises_a_transient_error() -> None:
    unused = free_port()  # nothing listens there
    with pytest.raises(TransientKafkaError, match="cannot reach Kafka"):
        KafkaEventSource(f"127.0.0.1:{unused}", "products.new", new_group(), connect_timeout_ms=1_000)


def test_transient_kafka_errors_are_transient_source_errors_so_the_daemon_retries_them() -> None:
    assert issubclass(TransientKafkaError, TransientSourceError)
