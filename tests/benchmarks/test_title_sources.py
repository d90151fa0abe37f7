"""The title-weight sweep's summary: per weight, the mean and range over seeds, per set and group."""

from __future__ import annotations

import pytest

from tests.benchmarks.title_sources import summary


def row(weight: float, seed: int, season: float) -> dict:
    per_set = [{"season": season, "gender": 0.99}, {"season": season - 0.1, "gender": 0.98}]
    return {"weight": weight, "seed": seed, "per_set": per_set, "joint_mean": season}


def test_each_weight_is_averaged_over_its_seeds_and_keeps_its_range():
    table = summary([row(1.0, 0, 0.77), row(1.0, 1, 0.79), row(0.1, 0, 0.83), row(0.1, 1, 0.85)])
    assert list(table) == [1.0, 0.1]
    assert table[1.0]["joint_mean"] == pytest.approx(0.78) and table[1.0]["range"] == (0.77, 0.79)
    assert table[0.1]["per_set"][0]["season"] == pytest.approx(0.84)
    assert table[0.1]["per_set"][1]["season"] == pytest.approx(0.74)
    assert table[0.1]["per_set"][1]["gender"] == pytest.approx(0.98)
