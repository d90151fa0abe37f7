"""The one retry policy (connectors/retry.py): how long it waits, when it gives up, and that a shutdown ends a wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from connectors.retry import RetryAborted, RetryPolicy


class Flaky(Exception):
    def __init__(self, retry_after_s: float | None = None) -> None:
        super().__init__("try again")
        self.retry_after_s = retry_after_s


def failing(times: int, error: Exception) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"

    return calls, fn


def test_the_wait_doubles_from_the_initial_delay_up_to_the_cap_within_the_jitter() -> None:
    policy = RetryPolicy(initial_s=0.5, max_s=5.0, jitter=0.1)
    for retry, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (50, 5.0)]:
        delays = [policy.delay(retry) for _ in range(50)]
        assert all(base * 0.9 <= d <= base * 1.1 for d in delays), (retry, min(delays), max(delays))
    assert RetryPolicy(initial_s=2.0, max_s=300.0, jitter=0.0).delay(3) == 8.0
    assert RetryPolicy(max_s=300.0, jitter=0.0).delay(100_000) == 300.0, "no overflow after days of retries"


def test_a_servers_retry_after_is_waited_for_but_never_past_the_cap() -> None:
    policy = RetryPolicy(initial_s=0.5, max_s=5.0, jitter=0.0)
    assert policy.delay(1, retry_after_s=2.0) == 2.0
    assert policy.delay(1, retry_after_s=60.0) == 5.0
    assert policy.delay(4, retry_after_s=0.1) == 4.0


def test_retryable_failures_are_retried_until_it_works_and_each_retry_is_reported() -> None:
    failures: list[BaseException] = []
    waits: list[float] = []
    calls, fn = failing(2, Flaky())
    result = RetryPolicy(initial_s=0.01, max_s=0.02, attempts=5).call(
        fn,
        retry_on=(Flaky,),
        on_failure=failures.append,
        on_retry=lambda _exc, delay_s: waits.append(delay_s),
    )
    assert result == "done" and len(calls) == 3
    assert len(failures) == 2 and len(waits) == 2 and all(0.009 <= w <= 0.022 for w in waits)


def test_the_last_error_is_raised_once_the_attempts_are_used_up_and_other_errors_at_once() -> None:
    failures: list[BaseException] = []
    calls, fn = failing(10, Flaky())
    with pytest.raises(Flaky):
        RetryPolicy(initial_s=0.001, attempts=3).call(fn, retry_on=(Flaky,), on_failure=failures.append)
    assert len(calls) == 3 and len(failures) == 3, "the last failure is reported too"

    calls, fn = failing(10, ValueError("a bug"))
    with pytest.raises(ValueError):
        RetryPolicy(initial_s=0.001, attempts=3).call(fn, retry_on=lambda exc: isinstance(exc, Flaky))
    assert len(calls) == 1


def test_setting_the_abort_event_ends_a_wait_at_once() -> None:
    abort = threading.Event()
    threading.Timer(0.2, abort.set).start()
    _calls, fn = failing(10, Flaky())
    started = time.monotonic()
    with pytest.raises(RetryAborted):
        RetryPolicy(initial_s=30.0, max_s=30.0).call(fn, retry_on=(Flaky,), abort=abort)
    assert time.monotonic() - started < 5.0
