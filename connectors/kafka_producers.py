"""Kafka producers and topic administration: dead letters, events for the demo, benchmarks and tests, topics.

* `DeadLetterPublisher`: writes a failed message, unchanged, to the dead-letter topic with error headers
  and waits for the broker's acknowledgement (the daemon's dead-letter sink).
* `EventPublisher`: produces events keyed by product id (demo, benchmarks, tests; the service only consumes).
* `ensure_topics`: creates topics that do not exist yet.

Consuming, and the errors every Kafka operation raises (`KafkaSourceError`, `TransientKafkaError`), are in
`connectors.kafka`.

What this module must not do: parse event payloads, touch the database, or import `learner`/`daemon`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

# kafka-python ships no type information (pyproject's [tool.mypy] override lets these imports be untyped)
from kafka import KafkaAdminClient, KafkaProducer
from kafka import errors as kafka_errors

from connectors.kafka import KafkaSourceError, TransientKafkaError
from connectors.source import SourceRecord

log = logging.getLogger("shelfsight.kafka")

ERROR_HEADER_PREFIX = "x-shelfsight-"
MAX_ERROR_MESSAGE_BYTES = 1024


# -- producing ----------------------------------------------------------------------------------------


def _producer(bootstrap_servers: str | Sequence[str], client_id: str, timeout_ms: int, **extra: Any) -> KafkaProducer:
    request_timeout_ms = min(timeout_ms, 30_000)
    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            retries=2**31 - 1,  # bounded by delivery_timeout_ms
            max_block_ms=timeout_ms,
            request_timeout_ms=request_timeout_ms,
            delivery_timeout_ms=max(timeout_ms, request_timeout_ms + extra.get("linger_ms", 0)),
            bootstrap_timeout_ms=timeout_ms,
            reconnect_backoff_max_ms=5_000,
            **extra,
        )
    except kafka_errors.KafkaConfigurationError as exc:
        raise KafkaSourceError(f"invalid Kafka producer settings: {exc}") from exc
    except kafka_errors.KafkaError as exc:
        raise TransientKafkaError(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from exc


def _truncate_utf8(text: str, limit: int) -> bytes:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", errors="ignore").encode("utf-8")


class DeadLetterPublisher:
    """Sends messages that can never be processed to `topic`, unchanged, with the reason in headers.

    The dead letter keeps the original key, value and headers (so it can be replayed as is) and adds
    `x-shelfsight-error-class`, `-error-message` (UTF-8, at most 1 KB), `-attempts`, `-source-topic`,
    `-source-partition`, `-source-offset` and `-failed-at` (ISO 8601, UTC). Headers of those names already
    on the message (a dead letter replayed and failing again) are replaced, not repeated.

    `publish` returns once the broker acknowledged the write (acks=all), so the caller may then commit the
    source offset; it raises TransientKafkaError if that did not happen within `timeout_ms`. Thread-safe.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        *,
        client_id: str = "shelfsight-dead-letters",
        timeout_ms: int = 30_000,
    ) -> None:
        self.topic = topic
        self._timeout_s = timeout_ms / 1000
        self._producer = _producer(bootstrap_servers, client_id, timeout_ms)

    def publish(self, record: SourceRecord, error_class: str, message: str, attempts: int) -> None:
        ours = {
            "error-class": error_class.encode("utf-8"),
            "error-message": _truncate_utf8(message, MAX_ERROR_MESSAGE_BYTES),
            "attempts": str(attempts).encode(),
            "source-topic": record.topic.encode("utf-8"),
            "source-partition": str(record.partition).encode(),
            "source-offset": str(record.offset).encode(),
            "failed-at": datetime.now(UTC).isoformat(timespec="milliseconds").encode(),
        }
        names = {ERROR_HEADER_PREFIX + name for name in ours}
        headers = [(k, bytes(v)) for k, v in record.headers if k not in names]
        headers += [(ERROR_HEADER_PREFIX + name, value) for name, value in ours.items()]
        value = record.value if (record.value is not None or record.key is not None) else b""
        try:
            future = self._producer.send(self.topic, key=record.key, value=value, headers=headers)
            future.get(timeout=self._timeout_s)
        except kafka_errors.KafkaError as exc:
            raise TransientKafkaError(
                f"dead letter for {record.topic}/{record.partition}@{record.offset} not acknowledged by "
                f"{self.topic}: {type(exc).__name__}: {exc}"
            ) from exc

    __call__ = publish  # usable directly as the daemon's dead-letter sink

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)


class EventPublisher:
    """Produces events to `topic`, keyed by product id (so one product's events stay in order).

    For the demo, benchmarks and tests; the service itself only consumes. `publish` accepts a
    `ProductEvent`-like object with `model_dump`, a mapping (JSON-encoded), or raw bytes (sent as is,
    for malformed-message tests). Call `flush()` to wait for every acknowledgement.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        *,
        client_id: str = "shelfsight-publisher",
        timeout_ms: int = 30_000,
        linger_ms: int = 5,
    ) -> None:
        self.topic = topic
        self._timeout_s = timeout_ms / 1000
        self._producer = _producer(bootstrap_servers, client_id, timeout_ms, linger_ms=linger_ms)
        self._pending: list[Any] = []

    def publish(
        self,
        event: Any,
        *,
        key: str | bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> Any:
        """Queue one event; returns kafka-python's future (`.get()` gives topic, partition and offset)."""
        if isinstance(event, bytes | bytearray):
            value = bytes(event)
        else:
            doc = event.model_dump(mode="json", exclude_none=True) if hasattr(event, "model_dump") else dict(event)
            value = json.dumps(doc, separators=(",", ":"), default=str).encode()
            if key is None and doc.get("product_id") is not None:
                key = str(doc["product_id"])
        key_bytes = key.encode("utf-8") if isinstance(key, str) else key
        try:
            future = self._producer.send(
                self.topic, key=key_bytes, value=value, headers=list(headers or []), partition=partition
            )
        except kafka_errors.KafkaError as exc:
            raise TransientKafkaError(f"cannot publish to {self.topic}: {exc}") from exc
        self._pending.append(future)
        return future

    def publish_many(self, events: Iterable[Any]) -> int:
        n = 0
        for event in events:
            self.publish(event)
            n += 1
        self.flush()
        return n

    def flush(self) -> None:
        """Wait until every queued event is acknowledged; raise TransientKafkaError if any failed."""
        pending, self._pending = self._pending, []
        deadline = time.monotonic() + self._timeout_s
        try:
            for future in pending:
                future.get(timeout=max(0.1, deadline - time.monotonic()))
        except kafka_errors.KafkaError as exc:
            raise TransientKafkaError(f"publishing to {self.topic} failed: {exc}") from exc

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- administration -----------------------------------------------------------------------------------


def ensure_topics(
    bootstrap_servers: str | Sequence[str],
    topics: Mapping[str, int],
    *,
    replication_factor: int = -1,
    timeout_ms: int = 30_000,
) -> set[str]:
    """Create the topics ({name: partitions}) that do not exist yet; return the names created.

    Idempotent. An existing topic is left alone even if its partition count differs (logged), since
    changing it would reshuffle keys. `replication_factor=-1` uses the broker's default. Waits until
    every partition has a leader, so producing right after works.
    """
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            client_id="shelfsight-admin",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=min(timeout_ms, 30_000),
        )
    except kafka_errors.KafkaError as exc:
        raise TransientKafkaError(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from exc
    try:
        spec = {
            name: {"num_partitions": partitions, "replication_factor": replication_factor}
            for name, partitions in topics.items()
        }
        response = admin.create_topics(spec, timeout_ms=timeout_ms, raise_errors=False)
        created: set[str] = set()
        existing: list[str] = []
        for result in response["topics"]:
            code = result["error_code"]
            if code == 0:
                created.add(result["name"])
            elif code == kafka_errors.TopicAlreadyExistsError.errno:
                existing.append(result["name"])
            else:
                error = kafka_errors.for_code(code)
                raise KafkaSourceError(
                    f"creating topic {result['name']!r} failed: {error.__name__}: {result.get('error_message')}"
                )
        if existing:
            for info in admin.describe_topics(existing):
                have, want = len(info.get("partitions") or []), topics[info["name"]]
                if have != want:
                    log.warning(
                        "topic %s exists with %d partitions (asked for %d); left as is", info["name"], have, want
                    )
        admin.wait_for_topics(list(topics), timeout_ms=timeout_ms)
        return created
    except kafka_errors.KafkaError as exc:
        raise TransientKafkaError(f"ensuring topics {sorted(topics)}: {exc}") from exc
    finally:
        admin.close()
