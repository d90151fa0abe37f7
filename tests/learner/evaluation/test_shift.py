"""Fitting the shift guard's cut-off on validation scores (learner/evaluation/shift.py)."""

from __future__ import annotations

import numpy as np
import pytest

from learner.evaluation.shift import fit_shift_guard, guard_report


def test_the_cut_off_withholds_at_most_the_asked_share_of_auto_filled_values_and_is_the_lowest_that_does() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(-20.0, 2.0, 2000)
    filled = rng.integers(0, 6, 2000)

    guard = fit_shift_guard(scores, filled, ["a", "b"], max_withheld=0.02)

    above = scores > guard.cutoff
    assert filled[above].sum() / filled.sum() <= 0.02
    assert guard.withheld_share == pytest.approx(filled[above].sum() / filled.sum(), abs=1e-6)
    # one more image withheld (the next highest score) would cross the 2%
    nxt = scores[~above & (filled > 0)].max()
    assert filled[scores >= nxt].sum() / filled.sum() > 0.02
    assert len(guard.reference) == 11 and guard.reference[0] == scores.min()


def test_images_with_nothing_auto_filled_cost_nothing_to_withhold() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    filled = np.array([5, 5, 5, 0, 0])  # the two most unfamiliar images had nothing auto-filled

    guard = fit_shift_guard(scores, filled, ["a"], max_withheld=0.0)

    assert guard.cutoff == 3.0  # 4 and 5 withheld: no auto-filled value lost
    report = guard_report(guard, scores, filled)
    assert report["unfamiliar_images"] == 2 and report["withheld_values"] == 0


def test_when_even_the_most_unfamiliar_image_carries_too_much_nothing_is_withheld() -> None:
    guard = fit_shift_guard(np.array([1.0, 2.0]), np.array([1, 1]), ["a"], max_withheld=0.01)
    assert not guard.unfamiliar(np.array([1.0, 2.0])).any()
    with pytest.raises(ValueError):
        fit_shift_guard(np.array([1.0]), np.array([1, 2]), ["a"])
