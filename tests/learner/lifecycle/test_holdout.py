"""The holdout rule (learner/lifecycle/holdout.py): a share of the labelled products with a floor and a cap, whose
threshold never rises from run to run, so a product once trained on never enters the holdout; and its record in the
registry (`holdout.json`). Pure: product ids are strings, the registry a temporary directory."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from learner.lifecycle.errors import RetrainError
from learner.lifecycle.holdout import (
    HOLDOUT_FILE,
    HoldoutRule,
    holdout_ceiling,
    pin_holdout_rule,
    record_holdout_threshold,
)


def _ids(start: int, count: int) -> list[str]:
    return [f"p{i}" for i in range(start, start + count)]


def _held(rule: HoldoutRule, ids: list[str], ceiling: float | None = None) -> set[str]:
    effective = rule.effective(ids, ceiling)
    return {p for p in ids if effective.contains(p)}


def test_without_floor_or_cap_the_holdout_is_the_fraction_rule() -> None:
    rule = HoldoutRule(salt="s", fraction=0.2)
    ids = _ids(0, 3000)
    assert rule.threshold(ids) == 0.2
    assert _held(rule, ids) == {p for p in ids if rule.contains(p)}


@pytest.mark.parametrize("n", [40, 100, 250, 500, 600, 1000, 2000, 5000, 12000])
def test_the_holdout_holds_at_least_the_floor_and_at_most_the_cap(n: int) -> None:
    rule = HoldoutRule(salt="s", fraction=0.2, min_products=150, max_products=800)
    ids = _ids(0, n)
    effective = rule.effective(ids)
    held = _held(rule, ids)
    assert effective.products == len(held) and effective.labelled_products == n
    assert len(held) >= min(150, n // 2)  # the floor takes at most half of the labelled products
    assert len(held) <= 800
    if n >= 2 * 150 and 150 < 0.2 * n < 800 - 50:  # neither binds (with room for the hash's spread): the share
        assert effective.threshold == 0.2
    if n * 0.2 > 800 + 50:
        assert len(held) == 800  # the cap holds exactly
    if n >= 300 and n * 0.2 < 150 - 30:
        assert len(held) == 150  # the floor holds exactly


def test_the_threshold_never_rises_from_run_to_run(tmp_path: Path) -> None:
    """Labelled data mostly grows, sometimes shrinks (products deleted), and the floor is raised once: the threshold
    each run records never exceeds an earlier one."""
    rng = random.Random(0)
    rule = HoldoutRule(salt="s", fraction=0.25, min_products=100, max_products=400)
    pin_holdout_rule(tmp_path, rule)
    ids = _ids(0, 120)
    thresholds = []
    for run in range(40):
        if run == 20:
            rule = HoldoutRule(salt="s", fraction=0.25, min_products=300, max_products=400)  # a higher floor
            pin_holdout_rule(tmp_path, rule)
        if run % 7 == 6:
            ids = rng.sample(ids, k=len(ids) * 3 // 4)  # some products deleted: the floor would want a higher t
        else:
            ids = ids + _ids(10_000 * (run + 1), rng.randint(20, 300))
        effective = rule.effective(ids, holdout_ceiling(tmp_path))
        record_holdout_threshold(tmp_path, effective, run)
        thresholds.append(effective.threshold)
    assert all(later <= earlier for earlier, later in itertools.pairwise(thresholds))
    assert thresholds[-1] < thresholds[0]  # and it did fall as the data grew past the cap
    recorded = json.loads((tmp_path / HOLDOUT_FILE).read_text())
    assert [r["threshold"] for r in recorded["runs"]] == thresholds
    assert recorded["threshold"] == holdout_ceiling(tmp_path) == thresholds[-1]


def test_a_product_once_trained_on_never_enters_a_later_holdout(tmp_path: Path) -> None:
    rng = random.Random(1)
    rule = HoldoutRule(salt="s", fraction=0.3, min_products=80, max_products=250)
    pin_holdout_rule(tmp_path, rule)
    ids = _ids(0, 60)  # small: the floor holds out half of them at first
    trained_ever: set[str] = set()
    held_first: set[str] | None = None
    for run in range(30):
        ids = ids + _ids(10_000 * (run + 1), rng.randint(10, 200))
        if run % 5 == 4:
            ids = rng.sample(ids, k=len(ids) * 2 // 3)
        effective = rule.effective(ids, holdout_ceiling(tmp_path))
        record_holdout_threshold(tmp_path, effective, run)
        held = {p for p in ids if effective.contains(p)}
        assert not held & trained_ever
        trained_ever |= set(ids) - held  # the run may train on everything outside its holdout
        held_first = held if held_first is None else held_first
    assert held_first and held_first & trained_ever  # products did leave the holdout into training


def test_without_the_recorded_ceiling_a_raised_floor_would_pull_trained_products_in(tmp_path: Path) -> None:
    ids = _ids(0, 1000)
    low = HoldoutRule(salt="s", fraction=0.1)
    high = HoldoutRule(salt="s", fraction=0.1, min_products=300)
    trained = {p for p in ids if not low.contains(p)}
    assert _held(high, ids) & trained  # what the ceiling prevents
    pin_holdout_rule(tmp_path, low)
    record_holdout_threshold(tmp_path, low.effective(ids), 1)
    pin_holdout_rule(tmp_path, high)  # floor and cap may change; the ceiling stays
    assert not _held(high, ids, holdout_ceiling(tmp_path)) & trained


def test_a_registry_pinned_before_thresholds_were_recorded_keeps_the_fraction_as_its_ceiling(tmp_path: Path) -> None:
    (tmp_path / HOLDOUT_FILE).write_text(json.dumps({"salt": "s", "fraction": 0.2, "rule": "old"}))
    assert holdout_ceiling(tmp_path) == 0.2
    rule = HoldoutRule(salt="s", fraction=0.2, min_products=500)
    pin_holdout_rule(tmp_path, rule)
    assert holdout_ceiling(tmp_path) == 0.2
    ids = _ids(0, 800)  # the floor alone would hold out 400
    assert rule.effective(ids, holdout_ceiling(tmp_path)).threshold == 0.2


def test_a_fresh_registry_has_no_ceiling_and_the_first_run_sets_it(tmp_path: Path) -> None:
    rule = HoldoutRule(salt="s", fraction=0.2, min_products=100)
    pin_holdout_rule(tmp_path, rule)
    assert holdout_ceiling(tmp_path) is None
    effective = rule.effective(_ids(0, 300))
    assert effective.threshold > 0.2 and effective.products == 100
    record_holdout_threshold(tmp_path, effective, 7)
    assert holdout_ceiling(tmp_path) == effective.threshold
    run = json.loads((tmp_path / HOLDOUT_FILE).read_text())["runs"][0]
    assert (run["run_id"], run["labelled_products"], run["products"]) == (7, 300, 100)


def test_recording_a_threshold_above_the_ceiling_is_refused(tmp_path: Path) -> None:
    rule = HoldoutRule(salt="s", fraction=0.2)
    pin_holdout_rule(tmp_path, rule)
    record_holdout_threshold(tmp_path, rule.effective(_ids(0, 100), 0.1), 1)
    with pytest.raises(RetrainError, match="above the ceiling"):
        record_holdout_threshold(tmp_path, rule.effective(_ids(0, 100)), 2)


def test_a_floor_above_the_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="max_products"):
        HoldoutRule(min_products=500, max_products=100)
