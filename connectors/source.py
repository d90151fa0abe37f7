"""What every event source shares: the consumed record, offset bookkeeping, and the contract the daemon relies on.

The Kafka source (`connectors.kafka`) and the local sources (`connectors.local_source`) both produce
`SourceRecord`s and implement `EventSource`; the daemon's pipeline tracks their offsets with `OffsetTracker`
and writes failed records to a `DeadLetterSink`. A source signals "try again later" (broker away, timeout)
with `TransientSourceError`, whatever its transport.

* `SourceRecord`: one consumed message, independent of any client library.
* `OffsetTracker`: pure bookkeeping of which offsets were handed out and which are done; `committable()`
  only ever moves past an offset once it and every earlier handed-out offset of its partition is done, so
  a committed offset never skips an event whose database transaction has not committed.

What this module must not do: import a client library (kafka-python), read files or sockets, parse event
payloads (that is `connectors.events`), or import `learner`/`daemon`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

Partition = tuple[str, int]
"""(topic, partition): how partitions are named everywhere outside a source's client library."""


class TransientSourceError(Exception):
    """A source operation (commit, dead letter) failed but may succeed later: retry it, never dead-letter for it."""


@dataclass(frozen=True)
class SourceRecord:
    """One consumed message. `headers` keep Kafka's order and may repeat a key."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int

    @property
    def tp(self) -> Partition:
        return (self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        """The last value of header `name`, or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


class _PartitionOffsets:
    __slots__ = ("committed", "done", "frontier", "pending")

    def __init__(self) -> None:
        self.pending: list[int] = []  # handed out, not yet behind the frontier; sorted
        self.done: set[int] = set()  # the subset of `pending` that is finished
        self.frontier: int | None = None  # next offset after the contiguous finished prefix
        self.committed: int | None = None  # last offset reported committed


class OffsetTracker:
    """Which offsets may be committed, per partition (pure logic; not thread-safe, owner's thread only).

    `add` each record when it is handed out, `done` when its work is durable (results committed in the
    database, or its dead letter acknowledged). `committable()` gives, per partition, the offset after
    the longest run of handed-out offsets that are all done, if it moved past the last `committed()`.
    Offsets need not be consecutive integers (compaction and transaction markers leave gaps): only
    handed-out offsets count.
    """

    def __init__(self) -> None:
        self._parts: dict[Partition, _PartitionOffsets] = {}

    def add(self, tp: Partition, offset: int) -> bool:
        """Record `offset` as handed out; False if it already is, or is already behind the frontier."""
        part = self._parts.setdefault(tp, _PartitionOffsets())
        if part.frontier is not None and offset < part.frontier:
            return False
        i = bisect.bisect_left(part.pending, offset)
        if i < len(part.pending) and part.pending[i] == offset:
            return False
        part.pending.insert(i, offset)
        return True

    def done(self, tp: Partition, offset: int) -> None:
        """Mark `offset` finished. Offsets never handed out (or of forgotten partitions) are ignored."""
        part = self._parts.get(tp)
        if part is None:
            return
        i = bisect.bisect_left(part.pending, offset)
        if i == len(part.pending) or part.pending[i] != offset:
            return
        part.done.add(offset)
        released = 0
        while released < len(part.pending) and part.pending[released] in part.done:
            part.done.discard(part.pending[released])
            released += 1
        if released:
            part.frontier = part.pending[released - 1] + 1
            del part.pending[:released]

    def committable(self) -> dict[Partition, int]:
        """Per partition, the next offset to commit, where it moved past the last committed one."""
        out: dict[Partition, int] = {}
        for tp, part in self._parts.items():
            if part.frontier is not None and (part.committed is None or part.frontier > part.committed):
                out[tp] = part.frontier
        return out

    def committed(self, offsets: Mapping[Partition, int]) -> None:
        """Note that `offsets` were committed, so `committable()` stops returning them."""
        for tp, offset in offsets.items():
            part = self._parts.get(tp)
            if part is not None and (part.committed is None or offset > part.committed):
                part.committed = offset

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Drop all state of `partitions` (revoked or lost): their unfinished records belong to the next owner."""
        for tp in partitions:
            self._parts.pop(tp, None)

    def in_flight(self, tp: Partition | None = None) -> int:
        """Records handed out and not done (for one partition, or all)."""
        return sum(len(p.pending) - len(p.done) for p in self._select(tp))

    def waiting(self, tp: Partition | None = None) -> int:
        """Records done but not committable yet because an earlier record of their partition is unfinished."""
        return sum(len(p.done) for p in self._select(tp))

    def partitions(self) -> set[Partition]:
        return set(self._parts)

    def _select(self, tp: Partition | None) -> list[_PartitionOffsets]:
        if tp is None:
            return list(self._parts.values())
        return [self._parts[tp]] if tp in self._parts else []


class EventSource(Protocol):
    """What the daemon needs of a source. All methods are called from the owner's one thread."""

    def poll(self, timeout_ms: int = ..., max_records: int = ...) -> list[SourceRecord]: ...
    def commit(self, offsets: dict[Partition, int]) -> Mapping[Partition, int] | None:
        """Commit {partition: next offset to read}; may return the subset actually committed."""

    def pause(self, partitions: Iterable[Partition]) -> None: ...
    def resume(self, partitions: Iterable[Partition]) -> None: ...
    def paused(self) -> set[Partition]: ...
    def assignment(self) -> set[Partition]: ...
    def lag(self) -> dict[Partition, int]: ...
    def close(self) -> None: ...


DeadLetterSink = Callable[[SourceRecord, str, str, int], None]
"""Writes a record that can never be processed, with (error class, message, attempts); returns once it is durable
and raises TransientSourceError when it could not be written yet."""
