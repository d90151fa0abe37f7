"""Kafka for the enrichment daemon: consuming new-product events, committing offsets safely, dead letters.

Records (`SourceRecord`), offset bookkeeping (`OffsetTracker`) and the source contract (`EventSource`,
`TransientSourceError`) are not Kafka's: they live in `connectors.source`, shared with the local sources.
What is here:

* `KafkaEventSource`: a consumer-group member (manual commits, pause/resume, lag, rebalance callbacks).
* `DeadLetterPublisher`: writes a failed message, unchanged, to the dead-letter topic with error headers
  and waits for the broker's acknowledgement.
* `ensure_topics`, `EventPublisher`: create topics; produce events (demo, benchmarks, tests).

Threading (kafka-python 3.x): a `KafkaConsumer` runs its network IO, heartbeats included, on its own
background thread, but it is not safe to call from several threads. The owner calls every
`KafkaEventSource` method from ONE thread and must keep calling `poll()`: more than `max_poll_interval_ms`
between polls and the group evicts the member. Rebalance callbacks (`on_revoked`, `on_assigned`,
`on_lost`) run on a short-lived helper thread while the owner's thread is blocked inside `poll()` or
`close()`; they may call `commit()`, `assignment()` and `paused()`, never `poll()`. They are called before
the partitions move: another member only receives a revoked partition after `on_revoked` returned, so
offsets committed there are where the next owner starts.

What this module must not do: parse event payloads (that is `connectors.events`), touch the database,
or import `learner`/`daemon`. It never commits offsets on its own (auto-commit is off).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

# kafka-python ships no type information (pyproject's [tool.mypy] override lets these imports be untyped)
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.future import Future
from kafka.structs import OffsetAndMetadata

from connectors.source import Partition, SourceRecord, TransientSourceError

log = logging.getLogger("shelfsight.kafka")

RebalanceCallback = Callable[[set[Partition]], None]

ERROR_HEADER_PREFIX = "x-shelfsight-"
MAX_ERROR_MESSAGE_BYTES = 1024

# Errors after which repeating the operation later can succeed: broker or coordinator unreachable,
# timeouts, and the group moving on (after the next poll() the partitions are either still ours, and the
# retry commits, or revoked, and `commit` skips them).
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.RetriableError,
    kafka_errors.CommitFailedError,
    kafka_errors.RebalanceInProgressError,
    kafka_errors.IllegalGenerationError,
    kafka_errors.UnknownMemberIdError,
    kafka_errors.BrokerNotAvailableError,
)


class KafkaSourceError(Exception):
    """A Kafka operation failed in a way retrying will not fix (configuration, authorisation, a bug)."""


class TransientKafkaError(KafkaSourceError, TransientSourceError):
    """A Kafka operation failed but may succeed later (broker down, timeout, rebalance): retry it."""


# -- consumer -----------------------------------------------------------------------------------------


class KafkaEventSource:
    """A member of consumer group `group_id` reading `topics`, with manual, explicit offset commits.

    Keyword arguments carry kafka-python's consumer setting of the same name; defaults are kafka-python's
    except session_timeout_ms (10 s, not 45 s: a dead replica's partitions move sooner), max_poll_records
    (100, not 500: a poll's worth of events fits the daemon's in-flight limit) and these:
        auto_offset_reset: where a group with no committed offset starts; "earliest" so no event
            produced before the first deployment is skipped.
        commit_timeout_ms: how long `commit()` retries before raising `TransientKafkaError`.
        reconnect_backoff_max_ms: ceiling of the reconnect backoff (default 5 s, not 30 s, so the source
            is back within seconds of a broker restart).
        on_revoked / on_assigned / on_lost: rebalance callbacks, each called with a set of
            (topic, partition); see the module docstring for the threading rules. `on_lost` (the group
            evicted us; commits will fail) defaults to `on_revoked`. Settable later with
            `set_rebalance_callbacks`, before the first `poll()`.

    Raises TransientKafkaError when no broker answers within `connect_timeout_ms`.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topics: str | Sequence[str],
        group_id: str,
        *,
        client_id: str = "shelfsight",
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        max_poll_interval_ms: int = 300_000,
        max_poll_records: int = 100,
        fetch_max_bytes: int = 52_428_800,
        max_partition_fetch_bytes: int = 1_048_576,
        fetch_max_wait_ms: int = 500,
        request_timeout_ms: int = 30_000,
        auto_offset_reset: str = "earliest",
        commit_timeout_ms: int = 10_000,
        connect_timeout_ms: int = 30_000,
        reconnect_backoff_max_ms: int = 5_000,
        on_revoked: RebalanceCallback | None = None,
        on_assigned: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.group_id = group_id
        self._commit_timeout_ms = commit_timeout_ms
        self._committed: dict[Partition, int] = {}  # last known committed offsets, for lag()
        self._lock = threading.Lock()
        self._closed = False
        self.on_revoked = on_revoked
        self.on_assigned = on_assigned
        self.on_lost = on_lost
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=bootstrap_servers,
                group_id=group_id,
                client_id=client_id,
                enable_auto_commit=False,
                auto_offset_reset=auto_offset_reset,
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=heartbeat_interval_ms,
                max_poll_interval_ms=max_poll_interval_ms,
                max_poll_records=max_poll_records,
                fetch_max_bytes=fetch_max_bytes,
                max_partition_fetch_bytes=max_partition_fetch_bytes,
                fetch_max_wait_ms=fetch_max_wait_ms,
                request_timeout_ms=request_timeout_ms,
                bootstrap_timeout_ms=connect_timeout_ms,
                reconnect_backoff_max_ms=reconnect_backoff_max_ms,
                allow_auto_create_topics=False,
            )
        except kafka_errors.KafkaConfigurationError as exc:
            raise KafkaSourceError(f"invalid Kafka consumer settings: {exc}") from exc
        except kafka_errors.KafkaError as exc:
            raise TransientKafkaError(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from exc
        self._consumer.subscribe(self.topics, listener=_RebalanceBridge(self))

    def set_rebalance_callbacks(
        self,
        on_revoked: RebalanceCallback | None = None,
        on_assigned: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        """Install the owner's rebalance callbacks (for owners built after the source)."""
        self.on_revoked, self.on_assigned, self.on_lost = on_revoked, on_assigned, on_lost

    # -- the event-source protocol ----------------------------------------------------------------

    def poll(self, timeout_ms: int = 200, max_records: int | None = None) -> list[SourceRecord]:
        """Records fetched since the last poll, in offset order per partition; [] while the broker is away.

        Also drives group membership: joining, rebalancing and the rebalance callbacks happen in here.
        """
        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except kafka_errors.RetriableError as exc:
            log.warning("poll failed, kafka-python will reconnect: %s", exc)
            return []
        return [
            SourceRecord(
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                key=r.key,
                value=r.value,
                headers=[(k, v if v is not None else b"") for k, v in r.headers or ()],  # null header -> b""
                timestamp_ms=r.timestamp,
            )
            for records in batches.values()
            for r in records
        ]

    def commit(self, offsets: Mapping[Partition, int]) -> dict[Partition, int]:
        """Commit `offsets` ({(topic, partition): next offset to read}) synchronously.

        Partitions not assigned to this member any more are skipped (committing them could move another
        member's position); the committed subset is returned. Raises TransientKafkaError when the commit
        could not be made (broker away, timeout, group rebalancing): retry after the next poll().
        """
        assigned = self._consumer.assignment()
        request: dict[TopicPartition, OffsetAndMetadata] = {}
        for (topic, partition), offset in offsets.items():
            tp = TopicPartition(topic, partition)
            if tp in assigned:
                request[tp] = OffsetAndMetadata(offset, "", -1)
            else:
                log.debug("not committing %s@%d: partition no longer assigned", tp, offset)
        if not request:
            return {}
        try:
            self._consumer.commit(request, timeout_ms=self._commit_timeout_ms)
        except _TRANSIENT_ERRORS as exc:
            raise TransientKafkaError(f"offset commit failed: {type(exc).__name__}: {exc}") from exc
        except kafka_errors.KafkaError as exc:
            raise KafkaSourceError(f"offset commit rejected: {type(exc).__name__}: {exc}") from exc
        done = {(tp.topic, tp.partition): meta.offset for tp, meta in request.items()}
        with self._lock:
            self._committed.update(done)
        return done

    def pause(self, partitions: Iterable[Partition]) -> None:
        """Stop fetching from `partitions` (backpressure); does not leave the group. Unassigned ones are ignored."""
        tps = self._assigned(partitions)
        if tps:
            self._consumer.pause(*tps)

    def resume(self, partitions: Iterable[Partition]) -> None:
        tps = self._assigned(partitions)
        if tps:
            self._consumer.resume(*tps)

    def paused(self) -> set[Partition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.paused()}

    def assignment(self) -> set[Partition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def lag(self, timeout_ms: int = 2_000) -> dict[Partition, int]:
        """Messages between the committed offset and the end of each assigned partition.

        One ListOffsets request, plus one committed-offset lookup for partitions this member has not
        committed yet. Cheap enough every few seconds. Raises TransientKafkaError if the broker is away.
        """
        tps = sorted(self._consumer.assignment())
        if not tps:
            return {}
        try:
            ends = self._consumer.end_offsets(tps, timeout_ms=timeout_ms)
            with self._lock:
                unknown = [tp for tp in tps if (tp.topic, tp.partition) not in self._committed]
            starts: dict[TopicPartition, int] = {}
            for tp in unknown:
                committed = self._consumer.committed(tp, timeout_ms=timeout_ms)
                if committed is not None and committed >= 0:
                    with self._lock:
                        self._committed.setdefault((tp.topic, tp.partition), committed)
                else:
                    starts[tp] = -1
            if starts:  # nothing committed yet: everything still in the log is unprocessed
                starts = self._consumer.beginning_offsets(list(starts), timeout_ms=timeout_ms)
        except kafka_errors.KafkaError as exc:
            raise TransientKafkaError(f"lag unavailable: {type(exc).__name__}: {exc}") from exc
        out: dict[Partition, int] = {}
        with self._lock:
            for tp in tps:
                key = (tp.topic, tp.partition)
                base = self._committed.get(key, starts.get(tp, 0))
                out[key] = max(0, ends[tp] - base)
        return out

    def close(self, timeout_ms: int = 10_000) -> None:
        """Leave the group (on_revoked runs first, so the owner can commit). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close(autocommit=False, timeout_ms=timeout_ms)
        except kafka_errors.KafkaError as exc:
            log.warning("closing the consumer: %s", exc)

    def __enter__(self) -> KafkaEventSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------

    def _assigned(self, partitions: Iterable[Partition]) -> list[TopicPartition]:
        assigned = self._consumer.assignment()
        return [tp for tp in (TopicPartition(t, p) for t, p in partitions) if tp in assigned]

    def _forget_committed(self, partitions: set[Partition]) -> None:
        with self._lock:
            for tp in partitions:
                self._committed.pop(tp, None)

    async def _call_owner(self, callback: RebalanceCallback | None, partitions: set[Partition]) -> None:
        """Run an owner callback on a helper thread, letting the consumer's IO loop (heartbeats, and
        `commit()` made from the callback) run meanwhile; re-raise what the callback raised."""
        if callback is None or not partitions:
            return
        finished: Future = Future()
        # kafka-python 3.0 offers no public way to wake its IO loop from another thread; its network
        # manager's call_soon is the documented thread-safe entry point (pinned: kafka-python==3.0.12).
        manager = self._consumer._manager

        def run() -> None:
            try:
                callback(set(partitions))
            except BaseException as exc:
                manager.call_soon(finished.failure, exc)
            else:
                manager.call_soon(finished.success, None)

        threading.Thread(target=run, name="kafka-rebalance-callback", daemon=True).start()
        await finished


class _RebalanceBridge(AsyncConsumerRebalanceListener):
    """Forwards kafka-python's rebalance events to the owner's callbacks (see `KafkaEventSource`)."""

    def __init__(self, source: KafkaEventSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        partitions = {(tp.topic, tp.partition) for tp in revoked}
        log.info("partitions revoked: %s", sorted(partitions))
        await self._source._call_owner(self._source.on_revoked, partitions)
        self._source._forget_committed(partitions)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        partitions = {(tp.topic, tp.partition) for tp in assigned}
        log.info("partitions assigned: %s", sorted(partitions))
        self._source._forget_committed(partitions)  # another member may have committed meanwhile
        await self._source._call_owner(self._source.on_assigned, partitions)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        partitions = {(tp.topic, tp.partition) for tp in lost}
        log.warning("partitions lost (evicted from the group): %s", sorted(partitions))
        await self._source._call_owner(self._source.on_lost or self._source.on_revoked, partitions)
        self._source._forget_committed(partitions)


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
