"""The enrichment daemon against the real Kafka broker and PostgreSQL, broken on purpose.

Each test runs `shelfsight run` as a subprocess (tests/daemon/harness.py), feeds it events on a fresh
topic, breaks something (SIGKILL, SIGTERM, database stop, broker restart, a second replica, bad events)
and then checks the product database: every product present, nothing written twice, nothing lost.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest

from tests.daemon.harness import (
    DaemonProcess,
    Db,
    daemon_env,
    group_assignments,
    produce,
    product_event,
    read_all,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

GROUPS_PER_PRODUCT = 2  # clothing-cc0 taxonomy: garment, kids (the detector group is empty without a detector)


@pytest.fixture
def setup(kafka_broker, kafka_topic, postgres_url, untrained_bundle_path, cc0_images, tmp_path):
    topic = kafka_topic(partitions=4)
    kafka_topic(name=f"{topic}.dlq", partitions=1)
    env = daemon_env(
        bootstrap=kafka_broker.bootstrap,
        topic=topic,
        database_url=postgres_url,
        model_path=untrained_bundle_path,
        file_root=cc0_images[0].parent,
        # a group of its own: a member left over from an earlier test in a shared group triggers a rebalance right
        # after this test's daemon joins (seen: the revocation then waited out this test's database outage)
        group_id=f"shelfsight-test-{uuid.uuid4().hex[:8]}",
    )
    daemons: list[DaemonProcess] = []

    def spawn(extra: dict[str, str] | None = None) -> DaemonProcess:
        d = DaemonProcess({**env, **(extra or {})}, tmp_path / f"daemon-{len(daemons)}.log")
        daemons.append(d)
        return d.start()

    def events(n: int, prefix: str = "p") -> list[dict[str, object]]:
        return [product_event(f"{prefix}-{i:04d}", cc0_images[i % len(cc0_images)]) for i in range(n)]

    ctx = type("Ctx", (), {})()
    ctx.topic, ctx.bootstrap, ctx.spawn, ctx.events = topic, kafka_broker.bootstrap, spawn, events
    ctx.group_id = env["SHELFSIGHT_KAFKA__GROUP_ID"]
    ctx.db = Db(postgres_url)
    ctx.broker = kafka_broker
    ctx.logs = lambda: "\n---\n".join(d.log_tail() for d in daemons)
    yield ctx
    for d in daemons:
        d.ensure_stopped()


def assert_every_product_written_once(db: Db, n: int) -> None:
    assert db.scalar("SELECT COUNT(*) FROM products") == n
    assert db.scalar("SELECT COUNT(*) FROM processing_log") == n
    assert db.scalar("SELECT COUNT(*) FROM product_attributes") == n * GROUPS_PER_PRODUCT
    missing = db.rows(
        "SELECT p.product_id FROM products p LEFT JOIN product_attributes a ON a.product_id = p.product_id "
        "WHERE a.product_id IS NULL"
    )
    assert missing == []


def test_hard_kills_while_events_flow_lose_nothing_and_duplicate_nothing(setup):
    n = 1000
    events = setup.events(n)

    def feed() -> None:  # events keep arriving while the daemon is being killed
        for i in range(0, n, 50):
            produce(setup.bootstrap, setup.topic, events[i : i + 50])
            time.sleep(0.3)

    producer = threading.Thread(target=feed)
    producer.start()
    rng = random.Random(7)
    progress_at_kill = []
    for _ in range(5):
        daemon = setup.spawn().wait_ready()
        before = setup.db.processed()
        # let it make some progress, then kill it at a random moment
        wait_until(lambda b=before: setup.db.processed() > b + 20, 120, "progress before the kill", setup.logs)
        time.sleep(rng.uniform(0.0, 2.0))
        daemon.kill()
        progress_at_kill.append(setup.db.processed())
    producer.join(timeout=120)
    assert progress_at_kill[-1] < n, f"the kills happened mid-stream: {progress_at_kill}"
    final = setup.spawn().wait_ready()
    wait_until(lambda: setup.db.processed() >= n, 300, f"all {n} products", setup.logs)
    final.terminate()
    assert_every_product_written_once(setup.db, n)
    assert read_all(setup.bootstrap, f"{setup.topic}.dlq", timeout_s=3) == []


def test_graceful_stop_mid_stream_then_restart_processes_nothing_twice(setup):
    n = 300
    produce(setup.bootstrap, setup.topic, setup.events(n))
    daemon = setup.spawn().wait_ready()
    wait_until(lambda: setup.db.processed() >= 60, 120, "60 products", setup.logs)
    assert daemon.terminate() == 0, daemon.log_tail()
    stopped_at = setup.db.processed()
    assert stopped_at < n, "stopped mid-stream"
    second = setup.spawn().wait_ready()
    wait_until(lambda: setup.db.processed() >= n, 180, f"all {n} products", setup.logs)
    time.sleep(2)
    metrics = second.metrics()
    second.terminate()
    assert_every_product_written_once(setup.db, n)
    assert setup.db.scalar("SELECT MAX(attempts) FROM processing_log") == 1, "an event was processed twice"
    assert metrics.get('shelfsight_events_processed_total{outcome="skipped_duplicate"}', 0.0) == 0.0


def test_database_stopped_for_20_seconds_is_waited_for_and_nothing_is_dead_lettered(setup, postgres_server):
    n = 300
    produce(setup.bootstrap, setup.topic, setup.events(n))
    daemon = setup.spawn().wait_ready()
    wait_until(lambda: setup.db.processed() >= 30, 120, "30 products", setup.logs)
    setup.db.engine.dispose()
    postgres_server.stop()
    time.sleep(20)
    assert daemon.alive, daemon.log_tail()
    postgres_server.start()
    wait_until(lambda: setup.db.processed() >= n, 240, f"all {n} products after the outage", setup.logs)
    metrics = daemon.metrics()
    daemon.terminate()
    assert_every_product_written_once(setup.db, n)
    assert metrics.get('shelfsight_retries_total{operation="database"}', 0) > 0, "the outage was noticed"
    assert read_all(setup.bootstrap, f"{setup.topic}.dlq", timeout_s=3) == []


def test_broker_restart_is_survived_and_consumption_resumes(setup):
    produce(setup.bootstrap, setup.topic, setup.events(100, prefix="before"))
    daemon = setup.spawn().wait_ready()
    wait_until(lambda: setup.db.processed() >= 100, 120, "first 100 products", setup.logs)
    setup.broker.restart()
    produce(setup.bootstrap, setup.topic, setup.events(100, prefix="after"))
    wait_until(lambda: setup.db.processed() >= 200, 180, "100 more after the broker restart", setup.logs)
    assert daemon.alive
    daemon.terminate()
    assert_every_product_written_once(setup.db, 200)


def test_two_daemons_in_one_group_split_partitions_and_write_each_product_once(setup):
    n = 400
    a = setup.spawn().wait_ready()
    b = setup.spawn().wait_ready()

    def split_between_two() -> bool:  # the group is Stable and both members hold some of the topic's partitions
        held = group_assignments(setup.bootstrap, setup.group_id, setup.topic)
        return held is not None and len(held) == 2 and set.union(*held) == set(range(4))

    # the rebalance that gives b its partitions can take well over 8 s on a loaded machine: wait for it, not a guess
    wait_until(split_between_two, 120, "both replicas to hold partitions of the topic", setup.logs)
    produce(setup.bootstrap, setup.topic, setup.events(n))
    wait_until(lambda: setup.db.processed() >= n, 240, f"all {n} products", setup.logs)

    def tagged(daemon: DaemonProcess) -> float:
        return daemon.metrics().get('shelfsight_events_processed_total{outcome="tagged"}', 0)

    # the counter moves just after the database write: wait for it too (a duplicate would still push it past n)
    wait_until(lambda: tagged(a) + tagged(b) >= n, 60, "both replicas to count their products", setup.logs)
    done_a, done_b = tagged(a), tagged(b)
    a.terminate()
    b.terminate()
    assert done_a > 0 and done_b > 0, f"both replicas worked: {done_a} / {done_b}"
    assert done_a + done_b == n
    assert_every_product_written_once(setup.db, n)
    assert setup.db.scalar("SELECT MAX(attempts) FROM processing_log") == 1


def test_bad_events_each_end_in_the_dead_letter_topic_with_their_reason_while_good_ones_flow(setup, image_cdn):
    cdn = image_cdn.url
    bad: list[tuple[str, bytes | dict[str, object]]] = [
        ("malformed_json", b'{"schema_version": 1, "product_id": '),
        ("invalid_event", {"schema_version": 1, "image_urls": [cdn("/ok.jpg")]}),
        ("unknown_schema_version", {"schema_version": 42, "product_id": "v42", "image_urls": [cdn("/ok.jpg")]}),
        ("fetch_not_found", product_event_url("missing", cdn("/404"))),
        ("fetch_timeout", product_event_url("slow", cdn("/slow"))),
        ("fetch_bad_content_type", product_event_url("notimage", cdn("/notimage.jpg"))),
        ("image_truncated", product_event_url("truncated", cdn("/truncated.jpg"))),
        ("image_too_large", product_event_url("bomb", cdn("/bomb.png"))),
        ("fetch_blocked_address", product_event_url("loopback", "http://127.0.0.1:9/x.jpg")),
        ("fetch_blocked_address", product_event_url("metadata", "http://169.254.169.254/latest/meta-data/")),
    ]
    good = [product_event_url(f"good-{i}", cdn("/ok.jpg")) for i in range(20)]
    stream: list[bytes | dict[str, object]] = []
    for i, (_, item) in enumerate(bad):
        stream += [item, *good[2 * i : 2 * i + 2]]
    extra = {
        "SHELFSIGHT_FETCH__ALLOWED_NETWORKS": '["127.0.0.2/32"]',
        "SHELFSIGHT_FETCH__READ_TIMEOUT_S": "1",
        "SHELFSIGHT_FETCH__TOTAL_TIMEOUT_S": "2",
    }
    daemon = setup.spawn(extra).wait_ready()
    for item in stream:  # one partition key each, in order
        produce(setup.bootstrap, setup.topic, [item])
    wait_until(lambda: setup.db.processed() >= len(good), 180, "the good events", setup.logs)
    wait_until(
        lambda: len(read_all(setup.bootstrap, f"{setup.topic}.dlq", timeout_s=2)) >= len(bad),
        120,
        "every bad event dead-lettered",
        setup.logs,
    )
    # a fresh consumer stops after this many idle seconds: on a loaded machine joining and the first fetch take longer
    dead = read_all(setup.bootstrap, f"{setup.topic}.dlq", timeout_s=10)
    daemon.terminate()
    reasons = sorted(dict(r.headers)["x-shelfsight-error-class"].decode() for r in dead)
    assert reasons == sorted(reason for reason, _ in bad), "each bad event dead-lettered exactly once, with its reason"
    for r in dead:
        headers = dict(r.headers)
        assert headers["x-shelfsight-error-message"], "the message says what went wrong"
        assert int(headers["x-shelfsight-source-offset"].decode()) >= 0
        assert headers["x-shelfsight-source-topic"].decode() == setup.topic
    timeout = next(r for r in dead if dict(r.headers)["x-shelfsight-error-class"] == b"fetch_timeout")
    assert dict(timeout.headers)["x-shelfsight-attempts"] == b"2", "transient failures were retried first"
    assert any(r.value == bad[0][1] for r in dead), "the original payload is kept byte for byte"
    assert setup.db.scalar("SELECT COUNT(*) FROM products") == len(good)


def product_event_url(product_id: str, url: str) -> dict[str, object]:
    return {"schema_version": 1, "product_id": product_id, "image_urls": [url]}
