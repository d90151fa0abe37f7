"""The Kafka consumer of the enrichment daemon: consuming new-product events and committing offsets safely.

Records (`SourceRecord`), offset bookkeeping (`OffsetTracker`) and the source contract (`EventSource`,
`TransientSourceError`) are not Kafka's: they live in `connectors.source`, shared with the local sources.
What is here:

* `KafkaEventSource`: a consumer-group member (manual commits, pause/resume, lag, rebalance callbacks).
* `KafkaSourceError`, `TransientKafkaError`: how every Kafka operation fails (here and in the producers).

Producing (the dead-letter topic, events for the demo and tests) and creating topics live in
`connectors.kafka_producers`.

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

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

# kafka-python ships no type information (pyproject's [tool.mypy] override lets these imports be untyped)
from kafka import KafkaConsumer, TopicPartition
from kafka import errors as kafka_errors
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.future import Future
from kafka.structs import OffsetAndMetadata

from connectors.source import Partition, SourceRecord, TransientSourceError

log = logging.getLogger("shelfsight.kafka")

RebalanceCallback = Callable[[set[Partition]], None]

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
        stuck_join_ms: a group join that has not ended in an assignment this long after it began (the member
            subscribed, or a rebalance revoked its partitions) is taken for the kafka-python 3.0.12 client hang
            seen here (the broker completed the join, the client never took its assignment nor heartbeated
            again); the source then drops that consumer and joins the group with a new one (`rejoin`).
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
        stuck_join_ms: int = 60_000,
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
        self._stuck_join_s = stuck_join_ms / 1000
        self._joining_since: float | None = time.monotonic()  # a join began and no assignment ended it yet
        self.rejoins = 0  # consumers replaced after a stuck join
        self._settings = dict(
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
        self._consumer = self._subscribed_consumer()

    def _subscribed_consumer(self) -> KafkaConsumer:
        """A new consumer with this source's settings, subscribed to its topics (not yet joined)."""
        try:
            consumer = KafkaConsumer(**self._settings)
        except kafka_errors.KafkaConfigurationError as exc:
            raise KafkaSourceError(f"invalid Kafka consumer settings: {exc}") from exc
        except kafka_errors.KafkaError as exc:
            servers = self._settings["bootstrap_servers"]
            raise TransientKafkaError(f"cannot reach Kafka at {servers}: {exc}") from exc
        consumer.subscribe(self.topics, listener=_RebalanceBridge(self))
        return consumer

    def rejoin(self, reason: str) -> None:
        """Drop the consumer (closed on a helper thread, at most 5 s waited for: a hung client may never return)
        and join the group with a new one; the partitions this member held are revoked first only if the old
        consumer still can (the group moves them anyway once its session expires). Offsets not committed are
        redelivered, as after any rebalance."""
        log.warning("rejoining consumer group %s with a new consumer: %s", self.group_id, reason)
        old = self._consumer
        closing = threading.Thread(
            target=lambda: old.close(autocommit=False, timeout_ms=2_000), name="kafka-close-stuck", daemon=True
        )
        closing.start()
        closing.join(timeout=5.0)
        with self._lock:
            self._committed.clear()
        self._consumer = self._subscribed_consumer()
        self._joining_since = time.monotonic()
        self.rejoins += 1

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
        joining = self._joining_since
        if joining is not None and time.monotonic() - joining > self._stuck_join_s:
            self.rejoin(f"no assignment {time.monotonic() - joining:.0f} s after the group join began")
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
        self._source._joining_since = time.monotonic()  # a rebalance began: an assignment should end it
        await self._source._call_owner(self._source.on_revoked, partitions)
        self._source._forget_committed(partitions)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        partitions = {(tp.topic, tp.partition) for tp in assigned}
        log.info("partitions assigned: %s", sorted(partitions))
        self._source._joining_since = None
        self._source._forget_committed(partitions)  # another member may have committed meanwhile
        await self._source._call_owner(self._source.on_assigned, partitions)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        partitions = {(tp.topic, tp.partition) for tp in lost}
        log.warning("partitions lost (evicted from the group): %s", sorted(partitions))
        self._source._joining_since = time.monotonic()  # it rejoins: an assignment should end that
        await self._source._call_owner(self._source.on_lost or self._source.on_revoked, partitions)
        self._source._forget_committed(partitions)
