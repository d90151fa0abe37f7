"""Pytest fixtures for the real Kafka broker (nothing is mocked).

* `kafka_broker` (session): one single-node KRaft broker started by `deploy/dev/kafka_server.py` in a
  temporary directory; tests may `restart()` it (same port, same data). Jars are cached outside the repo
  (see that script), so only the first run on a machine downloads them.
* `kafka_topic` (function): a factory, `kafka_topic(partitions=3) -> name`, creating a uniquely named topic.
* `kafka_publisher` (function): a factory, `kafka_publisher(topic) -> EventPublisher`, closed afterwards.

Tests using `kafka_broker` get the `kafka` marker automatically (`pytest -m "not kafka"` skips them).
Without Java or Maven the fixture fails with the reason: CI always has both, so a missing broker is an
error, not a skip.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from kafka_server import KafkaBroker, KafkaUnavailable  # deploy/dev, on sys.path via tests/conftest.py

if TYPE_CHECKING:  # imported in the fixtures, after pytest_configure installed the warning filters
    from connectors.kafka_producers import EventPublisher


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3.0.12 loads its protocol schemas with importlib.resources' legacy API at import time.
    config.addinivalue_line("filterwarnings", "ignore:read_text is deprecated:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore:open_text is deprecated:DeprecationWarning")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "kafka_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), partitions=3, die_with_parent=True)
    try:
        broker.start()
    except KafkaUnavailable as exc:
        pytest.fail(f"the Kafka test broker is unavailable: {exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_topic(kafka_broker: KafkaBroker, request: pytest.FixtureRequest) -> Callable[..., str]:
    test_name = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name)[:60].strip("-")

    from connectors.kafka_producers import ensure_topics

    def make(partitions: int = 3, *, name: str | None = None) -> str:
        topic = name or f"{test_name}-{uuid.uuid4().hex[:8]}"
        ensure_topics(kafka_broker.bootstrap, {topic: partitions})
        return topic

    return make


@pytest.fixture
def kafka_publisher(kafka_broker: KafkaBroker) -> Iterator[Callable[[str], EventPublisher]]:
    from connectors.kafka_producers import EventPublisher

    publishers: list[EventPublisher] = []

    def make(topic: str) -> EventPublisher:
        publisher = EventPublisher(kafka_broker.bootstrap, topic, timeout_ms=20_000)
        publishers.append(publisher)
        return publisher

    yield make
    for publisher in publishers:
        publisher.close(timeout_s=5)
