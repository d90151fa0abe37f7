"""Metrics on tiny hand-made prediction sets whose right answers were worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from learner.datasets.labelled import IGNORE_INDEX
from learner.evaluation.evaluate import (
    GroupPredictions,
    compute_metrics,
    expected_calibration_error,
    multi_label_metrics,
    single_label_metrics,
)
from learner.evaluation.report import build_report, write_report
from learner.evaluation.thresholds import best_f1_threshold, choose_thresholds
from learner.model.taxonomy import AttributeGroup

VALUES = ["a", "b", "c", "d"]
# argmax per row: a a b b d c (the last row has no label and must be ignored)
PROBS = np.array(
    [
        [0.90, 0.05, 0.05, 0.00],
        [0.62, 0.30, 0.08, 0.00],
        [0.20, 0.72, 0.08, 0.00],
        [0.10, 0.82, 0.08, 0.00],
        [0.10, 0.10, 0.06, 0.74],
        [0.08, 0.08, 0.84, 0.00],
        [1.00, 0.00, 0.00, 0.00],
    ]
)
TARGETS = np.array([0, 0, 0, 1, 1, 2, IGNORE_INDEX])


def test_single_label_metrics_match_hand_computed_values() -> None:
    m = single_label_metrics(PROBS, TARGETS, VALUES)

    assert m["n"] == 6 and m["skipped"] == 1
    assert m["top1"] == pytest.approx(4 / 6)
    a, b, c = m["per_class"]["a"], m["per_class"]["b"], m["per_class"]["c"]
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((1.0, 2 / 3, 0.8, 3))
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == pytest.approx((0.5, 0.5, 0.5, 2))
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((1.0, 1.0, 1.0, 1))
    assert m["per_class"]["d"]["support"] == 0 and m["per_class"]["d"]["predicted"] == 1
    assert m["confusion"][1] == [0, 1, 0, 1]


def test_top3_counts_a_sample_whose_true_value_is_among_the_three_highest_scores() -> None:
    probs = np.array([[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
    m = single_label_metrics(probs, np.array([2, 3, 1]), VALUES)

    assert m["top1"] == 0.0
    assert m["top3"] == pytest.approx(2 / 3)  # rank 2 and rank 2 are in, rank 3 is out


def test_macro_f1_averages_only_classes_present_in_the_evaluated_split() -> None:
    m = single_label_metrics(PROBS, TARGETS, VALUES)

    # a, b, c are present; d is only predicted, so it is not averaged (it would give 0.575)
    assert m["classes_present"] == 3
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)


def test_expected_calibration_error_weights_each_bin_by_its_share_of_samples() -> None:
    m = single_label_metrics(PROBS, TARGETS, VALUES)

    # bins of width 1/15: {.90 right}, {.62 right}, {.72 wrong}, {.74 wrong}, {.82 right, .84 right}
    expected = (0.10 + 0.38 + 0.72 + 0.74 + 2 * abs(1 - 0.83)) / 6
    assert m["ece"] == pytest.approx(expected)
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([True, True])) == pytest.approx(0.1)


def test_best_f1_threshold_accepts_the_best_prefix_and_sits_between_scores() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.3])
    positive = np.array([True, False, True, True, False])

    # F1 of accepting the top 1..5 scores: 0.5, 0.4, 0.667, 0.857, 0.75 -> accept four
    threshold, f1 = best_f1_threshold(scores, positive)  # type: ignore[misc]

    assert f1 == pytest.approx(6 / 7)
    assert threshold == pytest.approx(0.35)
    assert best_f1_threshold(scores, np.zeros(5, dtype=bool)) is None


def test_multi_label_metrics_apply_per_class_thresholds_and_skip_unlabelled_rows() -> None:
    probs = np.array([[0.6, 0.2], [0.4, 0.35], [0.7, 0.1], [0.9, 0.9]])
    targets = np.array([[1, 0], [0, 1], [0, 0], [np.nan, np.nan]])

    m = multi_label_metrics(probs, targets, ["x", "y"], {"x": 0.5, "y": 0.3})

    assert m["n"] == 3 and m["skipped"] == 1
    assert m["per_class"]["x"]["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["y"]["f1"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert m["micro_f1"] == pytest.approx(0.8)
    assert m["exact_match"] == pytest.approx(2 / 3)


def _group(name: str, values: list[str]) -> AttributeGroup:
    return AttributeGroup(name=name, kind="single", source="classifier", values=tuple(values), label_column=name)


def test_thresholds_cover_every_class_and_name_those_without_validation_examples() -> None:
    preds = {"letter": GroupPredictions(_group("letter", VALUES), PROBS, TARGETS)}

    thresholds, defaulted = choose_thresholds(preds)

    assert set(thresholds["letter"]) == set(VALUES)
    assert defaulted == ["letter/d"]
    assert thresholds["letter"]["d"] == 0.5
    # class c: only row 6 is positive and it has the highest c score (0.84); next lower c score is 0.08
    assert thresholds["letter"]["c"] == pytest.approx((0.84 + 0.08) / 2)


def test_summary_means_are_over_groups_and_report_files_are_written(tmp_path) -> None:
    other = np.array([[0.2, 0.8], [0.7, 0.3]])
    preds = {
        "letter": GroupPredictions(_group("letter", VALUES), PROBS, TARGETS),
        "binary": GroupPredictions(_group("binary", ["no", "yes"]), other, np.array([1, 1])),
    }

    metrics = compute_metrics(preds)
    report = build_report(metrics, model_version="m1", split="test", data={"source": "x.csv", "evaluated": 7})
    paths = write_report(report, tmp_path / "report")

    assert metrics["summary"]["mean_top1"] == pytest.approx((4 / 6 + 1 / 2) / 2)
    assert json.loads(paths["json"].read_text())["groups"]["binary"]["top1"] == pytest.approx(0.5)
    assert "| letter | 6 | 1 | 0.667 | 1.000 | 0.767 |" in paths["text"].read_text()
    for key in ("f1_png", "confusion_png"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
