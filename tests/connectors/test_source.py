"""connectors.source: records, and the OffsetTracker (an offset becomes committable only when every earlier
handed-out offset is done; pure)."""

from __future__ import annotations

import random
import subprocess
import sys

from connectors.source import OffsetTracker, SourceRecord

P0 = ("products.new", 0)
P1 = ("products.new", 1)


def tracker_with(tp: tuple[str, int], offsets: range | list[int]) -> OffsetTracker:
    tracker = OffsetTracker()
    for offset in offsets:
        assert tracker.add(tp, offset)
    return tracker


def test_nothing_is_committable_before_anything_is_done() -> None:
    tracker = tracker_with(P0, range(5))
    assert tracker.committable() == {}
    assert tracker.in_flight() == 5


def test_the_commit_stops_at_the_first_unfinished_record() -> None:
    tracker = tracker_with(P0, range(10, 15))
    for offset in (10, 11, 13, 14):
        tracker.done(P0, offset)
    assert tracker.committable() == {P0: 12}
    assert tracker.in_flight() == 1
    assert tracker.waiting() == 2


def test_finishing_the_gap_releases_everything_behind_it() -> None:
    tracker = tracker_with(P0, range(10, 15))
    for offset in (14, 13, 11, 10):
        tracker.done(P0, offset)
    assert tracker.committable() == {P0: 12}
    tracker.done(P0, 12)
    assert tracker.committable() == {P0: 15}
    assert tracker.in_flight() == 0 and tracker.waiting() == 0


def test_a_late_first_record_blocks_the_whole_partition() -> None:
    tracker = tracker_with(P0, range(3))
    tracker.done(P0, 1)
    tracker.done(P0, 2)
    assert tracker.committable() == {}


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    for offset in range(3):
        tracker.add(P0, offset)
        tracker.add(P1, offset)
    tracker.done(P0, 0)
    tracker.done(P1, 1)
    assert tracker.committable() == {P0: 1}
    assert tracker.in_flight(P0) == 2 and tracker.in_flight(P1) == 2


def test_gaps_in_offsets_from_compaction_or_transaction_markers_do_not_block() -> None:
    tracker = tracker_with(P0, [5, 7, 8, 12])  # 6, 9-11 were never handed out
    for offset in (5, 7, 8, 12):
        tracker.done(P0, offset)
    assert tracker.committable() == {P0: 13}


def test_committed_offsets_are_not_offered_again() -> None:
    tracker = tracker_with(P0, range(4))
    tracker.done(P0, 0)
    tracker.done(P0, 1)
    offsets = tracker.committable()
    assert offsets == {P0: 2}
    tracker.committed(offsets)
    assert tracker.committable() == {}
    tracker.done(P0, 2)
    assert tracker.committable() == {P0: 3}


def test_a_record_seen_twice_is_tracked_once() -> None:
    tracker = tracker_with(P0, range(3))
    assert tracker.add(P0, 1) is False
    tracker.done(P0, 0)
    assert tracker.add(P0, 0) is False  # already behind the frontier (redelivery after a seek)
    tracker.done(P0, 1)
    tracker.done(P0, 2)
    assert tracker.committable() == {P0: 3}


def test_records_handed_out_out_of_order_are_still_committed_in_order() -> None:
    tracker = tracker_with(P0, [3, 1, 2, 0])
    for offset in (1, 2, 3):
        tracker.done(P0, offset)
    assert tracker.committable() == {}
    tracker.done(P0, 0)
    assert tracker.committable() == {P0: 4}


def test_done_for_an_unknown_offset_changes_nothing() -> None:
    tracker = tracker_with(P0, range(2))
    tracker.done(P0, 7)
    tracker.done(P1, 0)
    assert tracker.committable() == {}
    assert tracker.in_flight() == 2


def test_forgetting_a_revoked_partition_drops_its_state() -> None:
    tracker = OffsetTracker()
    tracker.add(P0, 0)
    tracker.add(P1, 0)
    tracker.forget([P0])
    tracker.done(P0, 0)  # late completion of work for a partition we no longer own
    tracker.done(P1, 0)
    assert tracker.committable() == {P1: 1}
    assert tracker.partitions() == {P1}
    assert tracker.in_flight() == 0


def test_random_completion_order_never_commits_past_an_unfinished_record() -> None:
    rng = random.Random(7)
    offsets = list(range(200))
    tracker = tracker_with(P0, offsets)
    finished: set[int] = set()
    order = offsets[:]
    rng.shuffle(order)
    for offset in order:
        tracker.done(P0, offset)
        finished.add(offset)
        expected = next(o for o in [*offsets, 200] if o not in finished)
        assert tracker.committable().get(P0, 0) == expected


def test_a_repeated_header_reads_as_its_last_value() -> None:
    record = SourceRecord("t", 0, 0, None, b"{}", [("a", b"1"), ("b", b"2"), ("a", b"3")], 0)
    assert record.header("a") == b"3"
    assert record.header("missing") is None
    assert record.tp == ("t", 0)


def test_the_local_sources_load_without_the_kafka_client() -> None:
    probe = "import sys, connectors.local_source; print(sorted(m for m in sys.modules if m.split('.')[0] == 'kafka'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
