"""The across-seed summary of the active-learning benchmark (tests/benchmarks/al_report.py): spread per arm, the
gap paired by seed with its t-interval, the PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks.al_report import gap_table, gaps, plot_curves, plot_gaps, spread, spread_table, t_interval


def _run(arm: str, seed: int, top1: list[float]) -> dict[str, Any]:
    rounds = [
        {
            "round": i,
            "labels": 10 * i,
            "mean_top1": v,
            "mean_macro_f1": v / 2,
            "challenger_mean_top1": None if i == 0 else v + 0.01,
            "challenger_mean_macro_f1": None if i == 0 else v / 2,
        }
        for i, v in enumerate(top1)
    ]
    return {"arm": arm, "seed": seed, "rounds": rounds}


RUNS = [
    _run("uncertainty", 1, [0.70, 0.74, 0.78]),
    _run("random", 1, [0.70, 0.72, 0.74]),
    _run("uncertainty", 2, [0.70, 0.73, 0.77]),
    _run("random", 2, [0.70, 0.72, 0.72]),
    _run("uncertainty", 3, [0.70, 0.75, 0.76]),
    _run("random", 3, [0.70, 0.71, 0.75]),
]


def test_t_interval_matches_the_textbook_value_and_needs_two_values() -> None:
    mean, low, high = t_interval([1.0, 2.0, 3.0]) or (0.0, 0.0, 0.0)
    assert mean == 2.0
    assert high - mean == pytest.approx(4.303 * 1.0 / 3**0.5)  # t(0.975, 2) * sd / sqrt(3)
    assert low == pytest.approx(2 * mean - high)
    assert t_interval([1.0]) is None


def test_the_gap_is_paired_by_seed_at_each_budget() -> None:
    rows = gaps(RUNS, budget=10)
    final = rows[-1]
    assert final["budget"] == 20
    assert final["mean_top1"]["per_seed"] == pytest.approx({1: 0.04, 2: 0.05, 3: 0.01})
    assert final["mean_top1"]["mean"] == pytest.approx(0.10 / 3)
    assert final["mean_top1"]["low"] < final["mean_top1"]["mean"] < final["mean_top1"]["high"]
    assert rows[0]["mean_top1"]["mean"] == 0.0 and rows[0]["challenger_mean_top1"]["seeds"] == 0
    assert "+0.033" in gap_table(rows)


def test_a_seed_only_one_arm_finished_is_left_out_of_the_gap() -> None:
    rows = gaps([*RUNS, _run("uncertainty", 4, [0.7, 0.9, 0.99])], budget=10)
    assert rows[-1]["mean_top1"]["seeds"] == 3


def test_the_spread_gives_mean_and_range_over_seeds_per_arm() -> None:
    summary = spread(RUNS, budget=10)
    final = summary["random"][-1]["mean_top1"]
    assert (final["min"], final["max"]) == (0.72, 0.75)
    assert final["mean"] == pytest.approx((0.74 + 0.72 + 0.75) / 3)
    assert summary["uncertainty"][0]["challenger_mean_top1"]["mean"] is None  # round 0: the seed model only
    assert "uncertainty routing" in spread_table(summary)


def test_both_pngs_are_written(tmp_path: Path) -> None:
    plot_curves(spread(RUNS, 10), tmp_path / "curves.png", "test")
    plot_gaps(gaps(RUNS, 10), tmp_path / "gap.png", "test")
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and (tmp_path / "gap.png").stat().st_size > 10_000
