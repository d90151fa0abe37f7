"""The one retry policy for transient failures: exponential backoff with jitter and a cap, run by tenacity.

Every retry in ShelfSight goes through `RetryPolicy`: the enrichment pipeline's image fetches and its waits for the
database or the dead-letter topic (`daemon.pipeline`), the daemon's start-up wait for Kafka (`daemon.service`), and
the review worker's sends to Label Studio (`daemon.review.sender` stores `RetryPolicy.delay` as the outbox row's next
attempt) and webhook deliveries (`daemon.review.worker`).

The policy: the wait before retry n (n = 1 after the first failed attempt) is `initial_s * 2 ** (n - 1)`, capped at
`max_s`, then scaled by a random factor in [1 - jitter, 1 + jitter] so replicas that failed together do not retry
together. An error that carries the server's own wait as `retry_after_s` (an HTTP Retry-After, e.g.
`connectors.images.FetchError`) waits at least that long, but never past `max_s`. Attempts stop after `attempts`
tries or `give_up_after_s` seconds (then the last error is raised as it was), or never when both are None. An
`abort` event set while waiting ends the wait at once with `RetryAborted` (a shutdown must not sit out a backoff).

What it must not do: decide which errors are transient (the caller says), count metrics or log (the caller's
`on_failure`/`on_retry` hooks do), or import `daemon/` or `learner/`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

__all__ = ["RetryAborted", "RetryOn", "RetryPolicy"]

T = TypeVar("T")

# which failures are retried: exception types, or a predicate over the raised exception
RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]

MAX_DOUBLINGS = 60  # 2 ** 60 times any sane initial_s is past any cap; keeps the power from overflowing a float


class RetryAborted(Exception):
    """The abort event was set while waiting for the next attempt: the caller is shutting down."""


@dataclass(frozen=True)
class RetryPolicy:
    """See the module docstring. `attempts` counts tries, the first one included (3: two retries)."""

    initial_s: float = 0.5
    max_s: float = 5.0
    jitter: float = 0.1
    attempts: int | None = None
    give_up_after_s: float | None = None

    def delay(self, retry: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (1: the first retry); `retry_after_s`: the server's wish."""
        doublings = min(max(retry - 1, 0), MAX_DOUBLINGS)
        delay = min(self.initial_s * 2.0**doublings, self.max_s) * random.uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_s))
        return float(delay)

    def call(
        self,
        fn: Callable[[], T],
        *,
        retry_on: RetryOn,
        abort: threading.Event | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        on_retry: Callable[[BaseException, float], None] | None = None,
    ) -> T:
        """`fn()`, tried again after each failure `retry_on` accepts, until it returns or the policy gives up.

        `on_failure(error)` runs after every retryable failure, the last one included; `on_retry(error, delay_s)`
        runs before each wait. Errors `retry_on` does not accept, and the last error once the policy gives up, are
        raised unchanged; `RetryAborted` when `abort` is set during a wait.
        """
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_predicate(retry_on)),
            stop=self._stop(),
            wait=_PolicyWait(self),
            sleep=_sleeper(abort),
            after=tenacity.after_nothing if on_failure is None else lambda state: on_failure(_error(state)),
            before_sleep=None if on_retry is None else lambda state: on_retry(_error(state), _upcoming(state)),
            reraise=True,
        )
        return retrying(fn)

    def _stop(self) -> tenacity.stop.stop_base:
        stops: list[tenacity.stop.stop_base] = []
        if self.attempts is not None:
            stops.append(tenacity.stop_after_attempt(self.attempts))
        if self.give_up_after_s is not None:
            stops.append(tenacity.stop_after_delay(self.give_up_after_s))
        return tenacity.stop_any(*stops) if stops else tenacity.stop_never


class _PolicyWait(tenacity.wait.wait_base):
    """tenacity's wait strategy for a `RetryPolicy`: its `delay` for the attempt that just failed."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        retry_after = getattr(_error(retry_state), "retry_after_s", None)
        hint = float(retry_after) if isinstance(retry_after, int | float) else None
        return self.policy.delay(retry_state.attempt_number, hint)


def _predicate(retry_on: RetryOn) -> Callable[[BaseException], bool]:
    if isinstance(retry_on, tuple):
        types = retry_on
        return lambda error: isinstance(error, types)
    return retry_on


def _sleeper(abort: threading.Event | None) -> Callable[[float], None]:
    if abort is None:
        return time.sleep

    def sleep(seconds: float) -> None:
        if abort.wait(seconds):
            raise RetryAborted(f"stopped while waiting {seconds:.1f}s to retry")

    return sleep


def _error(state: tenacity.RetryCallState) -> BaseException:
    error = state.outcome.exception() if state.outcome is not None else None
    assert error is not None, "tenacity waits and retries only after a failed attempt"
    return error


def _upcoming(state: tenacity.RetryCallState) -> float:
    return float(state.next_action.sleep) if state.next_action is not None else 0.0
