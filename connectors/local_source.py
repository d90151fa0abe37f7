"""Local event sources for the embedded default: a directory of JSON event files, or JSON lines on stdin.

They behave like the Kafka source (`poll`, `commit`, `pause`, `resume`, `lag`, `close`) so the daemon is
the same code with or without a broker. Delivery is at-least-once, as with Kafka:

- `LocalDirectorySource` reads `*.json` (one event per file) and `*.jsonl` (one per line) in name order.
  A file is moved to `done/` once every record in it has been committed, so a crash re-reads only files
  that were not finished (idempotent writes absorb the repeats). Dead letters go to `dead-letter/` as
  JSON documents holding the original payload and the error.
- `StdinSource` reads JSON lines from a stream; commit is a no-op (a pipe cannot be rewound).

Offsets are per process: partition 0, numbered in reading order.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from connectors.source import SourceRecord

LOCAL_TOPIC = "local"


@dataclass
class _Pending:
    file: Path
    first_offset: int
    last_offset: int


class _SinglePartition:
    """Pause, resume and assignment of a source with one partition (`LOCAL_TOPIC`, 0)."""

    _paused = False

    def pause(self, partitions: Iterable[tuple[str, int]] | None = None) -> None:
        self._paused = True

    def resume(self, partitions: Iterable[tuple[str, int]] | None = None) -> None:
        self._paused = False

    def paused(self) -> set[tuple[str, int]]:
        return {(LOCAL_TOPIC, 0)} if self._paused else set()

    def assignment(self) -> set[tuple[str, int]]:
        return {(LOCAL_TOPIC, 0)}


class LocalDirectorySource(_SinglePartition):
    def __init__(self, events_dir: Path, poll_interval_s: float = 0.5) -> None:
        self.dir = Path(events_dir)
        self.done_dir = self.dir / "done"
        self.dead_dir = self.dir / "dead-letter"
        for d in (self.dir, self.done_dir, self.dead_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._poll_interval_s = poll_interval_s
        self._next_offset = 0
        self._buffer: list[SourceRecord] = []
        self._files: list[_Pending] = []  # files read, not yet fully committed, in offset order
        self._seen: set[Path] = set()
        self._paused = False
        self._committed = 0

    # -- the event-source protocol ------------------------------------------------------------------
    def poll(self, timeout_ms: int = 500, max_records: int = 100) -> list[SourceRecord]:
        if self._paused:
            time.sleep(min(timeout_ms, 100) / 1000)
            return []
        if not self._buffer:
            self._scan()
        if not self._buffer:
            time.sleep(min(timeout_ms / 1000, self._poll_interval_s))
            return []
        out, self._buffer = self._buffer[:max_records], self._buffer[max_records:]
        return out

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        next_offset = offsets.get((LOCAL_TOPIC, 0))
        if next_offset is None:
            return
        self._committed = max(self._committed, next_offset)
        while self._files and self._files[0].last_offset < self._committed:
            done = self._files.pop(0)
            target = self.done_dir / done.file.name
            if done.file.exists():
                done.file.replace(target)

    def lag(self) -> dict[tuple[str, int], int]:
        return {(LOCAL_TOPIC, 0): self._next_offset - self._committed + self._unread_estimate()}

    def idle(self) -> bool:
        """True when every event found so far has been committed and no new file is waiting."""
        return not self._buffer and not self._files and not self._new_files()

    def close(self) -> None:
        return None

    # -- dead letters --------------------------------------------------------------------------------
    def dead_letter(self, record: SourceRecord, error_class: str, message: str, attempts: int) -> None:
        doc = {
            "error_class": error_class,
            "error_message": message[:1024],
            "attempts": attempts,
            "source": dict(record.headers).get("x-shelfsight-local-file", b"").decode(),
            "source_offset": record.offset,
            "failed_at": time.time(),
            "payload": (record.value or b"").decode("utf-8", errors="replace"),
        }
        name = f"{int(time.time() * 1000)}-{record.offset}.json"
        tmp = self.dead_dir / (name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(self.dead_dir / name)

    # -- internals -----------------------------------------------------------------------------------
    def _new_files(self) -> list[Path]:
        files = [p for p in self.dir.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl")]
        return sorted(p for p in files if p not in self._seen)

    def _unread_estimate(self) -> int:
        return len(self._buffer)

    def _scan(self) -> None:
        for path in self._new_files():
            try:
                raw = path.read_bytes()
            except OSError:
                continue  # being written or removed; next scan
            self._seen.add(path)
            chunks = [line for line in raw.splitlines() if line.strip()] if path.suffix == ".jsonl" else [raw]
            if not chunks:
                path.replace(self.done_dir / path.name)
                continue
            first = self._next_offset
            for i, chunk in enumerate(chunks):
                self._buffer.append(
                    SourceRecord(
                        topic=LOCAL_TOPIC,
                        partition=0,
                        offset=self._next_offset,
                        key=None,
                        value=chunk,
                        headers=[("x-shelfsight-local-file", f"{path.name}:{i + 1}".encode())],
                        timestamp_ms=int(path.stat().st_mtime * 1000),
                    )
                )
                self._next_offset += 1
            self._files.append(_Pending(path, first, self._next_offset - 1))


class StdinSource(_SinglePartition):
    """JSON lines from a stream (standard input by default). Ends when the stream does."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=10_000)
        self._next_offset = 0
        self._eof = False
        self._paused = False
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True, name="stdin-reader")
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            if line.strip():
                self._queue.put(line.rstrip(b"\r\n"))
        self._queue.put(None)

    def poll(self, timeout_ms: int = 500, max_records: int = 100) -> list[SourceRecord]:
        out: list[SourceRecord] = []
        if self._paused or self._eof:
            time.sleep(min(timeout_ms, 100) / 1000)
            return out
        deadline = time.monotonic() + timeout_ms / 1000
        while len(out) < max_records:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()) if not out else 0.0)
            except queue.Empty:
                break
            if item is None:
                self._eof = True
                break
            out.append(SourceRecord(LOCAL_TOPIC, 0, self._next_offset, None, item, [], int(time.time() * 1000)))
            self._next_offset += 1
        return out

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        return None

    def lag(self) -> dict[tuple[str, int], int]:
        return {(LOCAL_TOPIC, 0): self._queue.qsize()}

    def idle(self) -> bool:
        return self._eof and self._queue.empty()

    def dead_letter(self, record: SourceRecord, error_class: str, message: str, attempts: int) -> None:
        import sys

        print(
            json.dumps({"dead_letter": error_class, "message": message[:1024], "offset": record.offset}),
            file=sys.stderr,
        )

    def close(self) -> None:
        return None
