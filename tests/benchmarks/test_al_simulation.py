"""The offline active-learning simulation (tests/benchmarks/al_simulation.py) in its quick variant, on synthetic
features: every arm at every budget, paired gaps to random, the figures and the curves written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.benchmarks.al_simulation import ARMS, judged_rows, main


def test_the_quick_simulation_reports_every_arm_at_every_budget_against_random(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--synthetic", "400", "--quick", "--out", str(tmp_path)]) == 0

    figures = json.loads((tmp_path / "figures.json").read_text())
    table = figures["table"]
    assert [row["labels"] for row in table] == [0, 20, 40, 60]  # the seed set, then three batches of 20
    for row in table:
        assert set(row["arms"]) == set(ARMS)
        random = row["arms"]["random"]
        assert random["gap"] == 0.0 and random["gap_low"] == 0.0 == random["gap_high"]  # paired with itself
        for arm in ARMS:
            assert len(row["arms"][arm]["per_seed"]) == 2
            assert 0.0 < row["arms"][arm]["mean_top1"] <= 1.0
    assert all(row["arms"][arm]["gap"] == 0.0 for arm in ARMS for row in table[:1])  # one seed set for all arms
    assert all(
        len(row["arms"][a]["vs_uncertainty"]) == 3 for a in ("class_balanced", "cluster_margin") for row in table
    )
    assert {(r["arm"], r["seed"]) for r in figures["runs"]} == {(a, s) for a in ARMS for s in (1, 2)}
    assert (tmp_path / "al-simulation.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "uncertainty - random" in printed and "diversity - uncertainty" in printed and "wall time" in printed


def test_an_unknown_arm_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown arm"):
        main(["--synthetic", "200", "--quick", "--arms", "random,badge", "--out", str(tmp_path)])


def test_a_pool_only_set_adds_labelable_products_but_none_to_the_holdout() -> None:
    holdout = np.array([True, False, True, False, True])
    pool_only = np.array([False, False, True, True, False])  # the third and fourth: thumbnails

    keep, judged = judged_rows(holdout, pool_only)

    assert keep.tolist() == [True, True, False, True, True]  # the reserved thumbnail is neither labelled nor judged
    assert judged.tolist() == [True, False, False, True]  # rows of the kept products: catalog holdout ones only
