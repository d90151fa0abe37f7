"""Temperatures and auto-fill thresholds on synthetic score sets whose right answers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from learner.evaluation.calibration import fit_calibration, fit_temperature
from learner.evaluation.evaluate import GroupPredictions, expected_calibration_error
from learner.evaluation.selective import (
    NEVER,
    choose_autofill_threshold,
    coverage_at,
    wilson_lower_bound,
)
from learner.inference.decoding import apply_temperature
from learner.model.taxonomy import parse_taxonomy


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def over_confident(n: int = 3000, classes: int = 5, sharpen: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z); the model reports softmax(sharpen * z): right ranking, too sure of itself."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, size=(n, classes))
    true_p = softmax(z)
    targets = (rng.uniform(size=(n, 1)) < true_p.cumsum(axis=1)).argmax(axis=1)
    return softmax(sharpen * z), targets


def ece_of(probs: np.ndarray, targets: np.ndarray) -> float:
    predicted = probs.argmax(axis=1)
    return expected_calibration_error(probs[np.arange(len(targets)), predicted], predicted == targets)


def test_temperature_scaling_lowers_the_ece_of_an_over_confident_model() -> None:
    probs, targets = over_confident()

    temperature = fit_temperature(probs, targets)
    calibrated = apply_temperature(probs, temperature)

    assert temperature == pytest.approx(3.0, rel=0.15)  # undoes the sharpening
    before, after = ece_of(probs, targets), ece_of(calibrated, targets)
    assert before > 0.1
    assert after < before / 3
    assert (calibrated.argmax(axis=1) == probs.argmax(axis=1)).all()  # a temperature never changes the ranking


def test_a_well_calibrated_model_keeps_a_temperature_near_one() -> None:
    probs, targets = over_confident(sharpen=1.0, seed=1)

    assert fit_temperature(probs, targets) == pytest.approx(1.0, abs=0.15)


def constructed_scores() -> tuple[np.ndarray, np.ndarray]:
    """400 values: the 300 most confident have 1 error in 100, the 100 least confident are right half the time."""
    confidence = np.linspace(0.999, 0.2, 400)
    correct = np.ones(400, dtype=bool)
    correct[[50, 150, 250]] = False  # one error in each hundred of the top 300
    correct[300::2] = False
    return confidence, correct


def test_threshold_search_reaches_the_asked_precision_on_a_constructed_score_set() -> None:
    confidence, correct = constructed_scores()

    choice = choose_autofill_threshold(
        confidence, correct, target_precision=0.98, confidence_level=0.5, band_floor=0.0, confidence_floor=0.0
    )

    accepted = confidence >= choice.threshold
    assert correct[accepted].mean() >= 0.98
    assert choice.precision == pytest.approx(correct[accepted].mean())
    assert choice.accepted == accepted.sum() and choice.coverage == pytest.approx(accepted.mean())
    # it is the lowest such threshold: every lower candidate accepts values at a lower precision
    for t in confidence[confidence < choice.threshold]:
        assert correct[confidence >= t].mean() < 0.98
    assert 300 <= choice.accepted <= 310  # the top 300 (99%) plus a few of the noisy tail


def test_the_lower_bound_makes_the_threshold_more_cautious_and_is_itself_above_the_target() -> None:
    confidence, correct = constructed_scores()

    plain = choose_autofill_threshold(confidence, correct, 0.97, confidence_level=0.5, confidence_floor=0.0)
    bounded = choose_autofill_threshold(confidence, correct, 0.97, confidence_level=0.95, confidence_floor=0.0)

    assert bounded.threshold >= plain.threshold and bounded.accepted <= plain.accepted
    assert bounded.precision_lower_bound is not None and bounded.precision_lower_bound >= 0.97
    k, n = correct[confidence >= bounded.threshold].sum(), (confidence >= bounded.threshold).sum()
    assert wilson_lower_bound(np.array([k]), np.array([n]), 0.95)[0] >= 0.97


def test_nothing_is_auto_filled_when_no_threshold_reaches_the_target() -> None:
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.5, 1.0, 500)
    correct = rng.uniform(size=500) < 0.8  # 80% right at every confidence

    choice = choose_autofill_threshold(confidence, correct, target_precision=0.97)

    assert choice.threshold == NEVER and not choice.reached
    assert choice.accepted == 0 and choice.precision is None
    assert coverage_at(confidence, correct, choice.threshold)["auto_filled"] == 0


def test_a_small_validation_set_cannot_prove_the_target_even_without_errors() -> None:
    confidence = np.linspace(0.99, 0.9, 20)
    right = np.ones(20, dtype=bool)

    assert not choose_autofill_threshold(confidence, right, 0.97).reached  # the default wants 50 values accepted
    assert not choose_autofill_threshold(confidence, right, 0.97, confidence_level=0.95, min_accepted=1).reached
    assert choose_autofill_threshold(confidence, right, 0.97, confidence_level=0.5, min_accepted=20).reached
    assert not choose_autofill_threshold(confidence, right, 0.97, confidence_level=0.5, min_accepted=21).reached


def test_a_few_lucky_values_at_the_top_do_not_make_a_weak_group_auto_filled() -> None:
    rng = np.random.default_rng(5)
    confidence = np.sort(rng.uniform(0.3, 1.0, 600))[::-1]
    correct = rng.uniform(size=600) < 0.75
    correct[:10] = True  # the ten most confident values happen to be right

    assert not choose_autofill_threshold(confidence, correct, 0.97).reached
    assert choose_autofill_threshold(confidence, correct, 0.97, min_accepted=1).reached


TAXONOMY = """
schema_version: 1
name: tiny
groups:
  colour:
    kind: single
    values: [a, b, c, d, e]
    target_precision: 0.9
  size:
    kind: single
    values: [a, b, c, d, e]
"""


def test_calibration_uses_each_groups_target_and_stores_everything_in_the_bundle_manifest() -> None:
    taxonomy = parse_taxonomy(TAXONOMY)
    probs, targets = over_confident()
    preds = {name: GroupPredictions(taxonomy.group(name), probs, targets) for name in ("colour", "size")}

    calibration = fit_calibration(preds, taxonomy, default_target=0.99, confidence_level=0.5)

    assert calibration.thresholds["colour"].target_precision == 0.9
    assert calibration.target_source == {"colour": "taxonomy", "size": "default"}
    assert calibration.thresholds["size"].target_precision == 0.99
    assert calibration.thresholds["size"].threshold > calibration.thresholds["colour"].threshold
    report = calibration.report()
    assert report["groups"]["colour"]["ece_after"] < report["groups"]["colour"]["ece_before"]


def test_the_least_confident_band_must_itself_be_right_often_enough_not_only_the_average_above_it() -> None:
    # 900 values nearly always right at the top, then 100 at low confidence that are right only 70% of the time:
    # the cumulative precision over all 1,000 is still 0.97, but the last tenth of coverage is a coin toss
    confidence = np.r_[np.linspace(0.99, 0.6, 900), np.linspace(0.59, 0.1, 100)]
    correct = np.ones(1000, dtype=bool)
    correct[900::10] = False
    correct[901::10] = False
    correct[902::10] = False  # 70% right in the last hundred
    assert correct.mean() >= 0.97

    average_only = choose_autofill_threshold(confidence, correct, 0.97, band_floor=0.0, confidence_floor=0.0)
    banded = choose_autofill_threshold(confidence, correct, 0.97, band_floor=0.9, confidence_floor=0.0)

    assert average_only.accepted == 1000
    assert banded.reached and banded.threshold > average_only.threshold
    assert banded.band_precision is not None and banded.band_precision >= 0.9
    assert banded.band_size == 100  # the last 10% of the fitting set's values
    lowest = np.sort(confidence[confidence >= banded.threshold])[:100]
    assert correct[np.isin(confidence, lowest)].mean() >= 0.9


def test_no_value_below_the_confidence_floor_is_auto_filled_however_good_the_fitting_set_was() -> None:
    confidence = np.linspace(0.99, 0.05, 500)
    correct = np.ones(500, dtype=bool)  # every value right, even the least confident

    choice = choose_autofill_threshold(confidence, correct, 0.97, confidence_floor=0.5)

    assert choice.threshold >= 0.5
    assert choice.confidence_floor == 0.5
    assert choose_autofill_threshold(confidence, correct, 0.97, confidence_floor=0.0).threshold < 0.5


def test_calibration_fits_the_shift_guard_when_the_predictions_carry_shift_scores() -> None:
    from learner.evaluation.evaluate import Predictions

    taxonomy = parse_taxonomy(TAXONOMY)
    probs, targets = over_confident()
    plain = {name: GroupPredictions(taxonomy.group(name), probs, targets) for name in ("colour", "size")}
    assert fit_calibration(plain, taxonomy).shift_guard is None  # no scores: no guard

    preds = Predictions(plain)
    preds.shift_scores = np.random.default_rng(2).normal(-20.0, 2.0, len(targets))
    calibration = fit_calibration(preds, taxonomy, default_target=0.9, max_withheld=0.05)

    guard = calibration.shift_guard
    assert guard is not None and guard.groups == ("colour", "size") and guard.withheld_share <= 0.05
    assert (preds.shift_scores > guard.cutoff).any()  # the least familiar images carry values: some are withheld
    assert calibration.report()["shift_guard"]["cutoff"] == guard.cutoff
