"""`ReviewCaps`: the review loop's budget, at most so many routed products per hour and per day (sliding windows),
shared by every daemon replica through the outbox (the daemon's `CapsSync` feeds `sync`).

No I/O and no clock of its own: callers pass the time.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta


class ReviewCaps:
    """At most `per_hour` routed products in any 60 minutes and `per_day` in any 24 hours (None: no cap).

    Thread-safe. A process counts the routes it records; `sync` replaces that count with the routes every replica
    has committed to the outbox, so replicas share one budget (and a restart does not reset it). This process's
    own routes since the previous sync are kept on top, because they may not be committed yet: a route both
    committed and that recent is counted twice until the next sync, so the caps err on the side of fewer products.
    """

    def __init__(self, per_hour: int | None = None, per_day: int | None = None) -> None:
        for name, cap in (("per_hour", per_hour), ("per_day", per_day)):
            if cap is not None and cap < 0:
                raise ValueError(f"{name} cap must be >= 0, got {cap}")
        self.per_hour = per_hour
        self.per_day = per_day
        self._times: list[datetime] = []  # sorted: the outbox's routes at the last sync, plus own routes since
        self._own_since_sync: list[datetime] = []
        self._lock = threading.Lock()

    def sync(self, committed: Sequence[datetime]) -> None:
        """The routes every replica has committed (the outbox, the last day), including this process's."""
        with self._lock:
            self._times = sorted([*committed, *self._own_since_sync])
            self._own_since_sync = []

    def try_record(self, now: datetime) -> bool:
        """Count one more route at `now` if the caps allow it; False (nothing counted) if they do not."""
        with self._lock:
            hour, day = self._counts(now)
            if (self.per_day is not None and day >= self.per_day) or (
                self.per_hour is not None and hour >= self.per_hour
            ):
                return False
            bisect.insort(self._times, now)
            self._own_since_sync.append(now)
            return True

    def counts(self, now: datetime) -> tuple[int, int]:
        """(routed in the last hour, routed in the last day)."""
        with self._lock:
            return self._counts(now)

    def _counts(self, now: datetime) -> tuple[int, int]:
        del self._times[: bisect.bisect_right(self._times, now - timedelta(days=1))]
        return len(self._times) - bisect.bisect_right(self._times, now - timedelta(hours=1)), len(self._times)
