"""The end-to-end benchmark's steady rate (tests/benchmarks/bench_e2e.py): rows per second between the 10th and the
90th percentile commit, so a slow first batch or a late last one does not change it."""

from __future__ import annotations

import math

from tests.benchmarks.bench_e2e import burst_phases, steady_rate
from tests.benchmarks.e2e_engine import combine_engine_runs


def test_the_steady_rate_ignores_a_slow_ramp_up_and_tail() -> None:
    # 100 rows committed 10 ms apart, after a 2 s ramp-up and before a 1 s tail
    commits = [2.0] + [2.0 + 0.01 * i for i in range(1, 99)] + [3.98 + 1.0]
    assert steady_rate(commits) == 100.0


def test_the_steady_rate_counts_rows_committed_in_batches() -> None:
    # 10 batches of 32 rows, one batch every 0.1 s: 320 rows/s
    commits = [0.1 * (i // 32) for i in range(320)]
    assert abs(steady_rate(commits) - 320.0) < 320.0 * 0.15


def test_the_steady_rate_of_rows_committed_at_once_is_not_a_number() -> None:
    assert math.isnan(steady_rate([5.0] * 10))


def test_the_engine_figure_is_the_mean_of_the_runs_before_and_after_the_daemon_with_every_pass_kept() -> None:
    before = {
        "engine_224_img_s": 300.0,
        "engine_224_img_s_passes": [299.0, 300.0, 301.0],
        "engine_224_cpu_ms_per_img": 6.0,
    }
    after = {
        "engine_224_img_s": 340.0,
        "engine_224_img_s_passes": [340.0, 338.0, 341.0],
        "engine_224_cpu_ms_per_img": 5.0,
    }
    combined = combine_engine_runs(before, after)
    assert combined["engine_224_img_s"] == 320.0 and combined["engine_224_cpu_ms_per_img"] == 5.5
    assert combined["engine_224_img_s_passes"] == [299.0, 300.0, 301.0, 340.0, 338.0, 341.0]


def test_the_burst_phases_add_up_to_the_first_send_to_the_last_row() -> None:
    commits = [10.5 + 0.01 * i for i in range(101)]  # first row 0.5 s after the send, then 100 rows/s
    phases = burst_phases(commits, t0=10.0)
    assert phases["first_row"] == 0.5
    assert phases["ramp_to_p10"] == 0.1
    assert phases["steady_p10_p90"] == 0.8
    assert phases["drain_p90_last"] == 0.1
    assert abs(sum(phases.values()) - (commits[-1] - 10.0)) < 1e-9
