"""Multi-label groups: F-beta, per-value thresholds that maximise it (beta moves them), figures at those thresholds
and at 0.5 side by side, and calibration storing the thresholds in the bundle where the engine reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from learner.evaluation.calibration import fit_calibration
from learner.evaluation.evaluate import (
    GroupPredictions,
    fbeta_score,
    multi_label_metrics,
)
from learner.evaluation.report import render_text
from learner.evaluation.thresholds import best_fbeta_threshold, fbeta_thresholds
from learner.model.bundle import ModelBundle
from learner.model.taxonomy import parse_taxonomy

TAXONOMY = parse_taxonomy(
    """
schema_version: 1
name: tiny-multi
groups:
  kind:
    kind: single
    label_column: articleType
    values: [Shirt, Shoe]
  tags:
    kind: multi
    label_column: tags
    values: [sale, new]
"""
)

# ten scores, best first; positives at ranks 1, 2, 4 and 7 (a straggler below two negatives)
SCORES = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
POSITIVE = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0], dtype=bool)


def _fbeta_at(threshold: float, beta: float) -> float:
    predicted = np.greater_equal(SCORES, threshold)
    tp, fp, fn = (predicted & POSITIVE).sum(), (predicted & ~POSITIVE).sum(), (~predicted & POSITIVE).sum()
    return float(fbeta_score(np.array([tp]), np.array([fp]), np.array([fn]), beta)[0])


def test_fbeta_score_weighs_recall_beta_times_precision() -> None:
    # precision 1/2, recall 1: F1 2/3, F2 5 * 0.5 / (4 * 0.5 + 1) = 5/6, F0.5 1.25 * 0.5 / (0.25 * 0.5 + 1) = 5/9
    tp, fp, fn = np.array([2]), np.array([2]), np.array([0])
    assert fbeta_score(tp, fp, fn, 1.0)[0] == pytest.approx(2 / 3)
    assert fbeta_score(tp, fp, fn, 2.0)[0] == pytest.approx(5 / 6)
    assert fbeta_score(tp, fp, fn, 0.5)[0] == pytest.approx(5 / 9)
    assert fbeta_score(np.array([0]), np.array([0]), np.array([0]), 2.0)[0] == 0.0


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0, 4.0])
def test_threshold_search_finds_the_best_fbeta_of_every_cut(beta: float) -> None:
    threshold, best = best_fbeta_threshold(SCORES, POSITIVE, beta)  # type: ignore[misc]

    every_cut = [_fbeta_at(t, beta) for t in SCORES]
    assert best == pytest.approx(max(every_cut))
    assert _fbeta_at(threshold, beta) == pytest.approx(best)  # the threshold itself achieves it


def test_a_larger_beta_chooses_a_lower_threshold() -> None:
    chosen = {beta: best_fbeta_threshold(SCORES, POSITIVE, beta)[0] for beta in (0.5, 1.0, 4.0)}  # type: ignore[index]

    # precision first: accept the top two (F0.5 0.833); F1: the top four (0.75, the top seven 0.727); recall
    # first: down to the straggler (F4 0.958)
    assert chosen[0.5] == pytest.approx(0.85)
    assert chosen[1.0] == pytest.approx(0.65)
    assert chosen[4.0] == pytest.approx(0.35)


def _predictions() -> GroupPredictions:
    """`sale` separable at 0.3 (its scores are low), `new` without any positive; one unlabelled row."""
    probs = np.array([[0.35, 0.9], [0.4, 0.2], [0.1, 0.6], [0.2, 0.1], [0.05, 0.3], [0.9, 0.9]])
    targets = np.array([[1, 0], [1, 0], [0, 0], [0, 0], [0, 0], [np.nan, np.nan]])
    return GroupPredictions(TAXONOMY.group("tags"), probs, targets)


def test_per_value_thresholds_skip_values_without_positives() -> None:
    thresholds, without = fbeta_thresholds(_predictions(), beta=1.0)

    assert thresholds == {"sale": pytest.approx(0.275)}  # halfway between 0.35 and the next score, 0.2
    assert without == ["new"]


def test_metrics_report_fbeta_at_per_value_thresholds_beside_the_fixed_half() -> None:
    pred = _predictions()

    m = multi_label_metrics(pred.probs, pred.targets, ["sale", "new"], {"sale": 0.275}, beta=2.0)

    assert m["beta"] == 2.0 and m["n"] == 5
    # per value: sale perfect; new (0.5 by default) wrongly accepted on rows 0 and 2: tp 2, fp 2, fn 0
    assert m["micro_fbeta"] == pytest.approx(5 * 2 / (5 * 2 + 2))
    assert m["macro_fbeta"] == pytest.approx(1.0)  # only sale is present
    fixed = m["at_default_threshold"]
    # at 0.5 sale is never accepted: tp 0, fp 2, fn 2
    assert fixed["threshold"] == 0.5 and fixed["micro_fbeta"] == 0.0 and fixed["macro_fbeta"] == 0.0
    assert m["per_class"]["sale"]["threshold"] == 0.275 and m["per_class"]["new"]["threshold"] == 0.5
    report = {"model_version": "v", "split": "val", "data": {}, "summary": {}, "groups": {"tags": m}}
    text = render_text(report)
    assert "| tags | 5 | per value |" in text and "| tags | 5 | fixed 0.5 |" in text


def _bundle() -> ModelBundle:
    import torch

    from learner.model.classifier import AttributeClassifier

    torch.manual_seed(0)
    model = AttributeClassifier(TAXONOMY, "tf_efficientnet_lite0", pretrained=False)
    return ModelBundle("tiny-multi-test", TAXONOMY, model, thresholds={"tags": {"sale": 0.5, "new": 0.42}})


def test_calibrated_multi_label_thresholds_replace_the_bundles_and_survive_save_and_load(tmp_path: Path) -> None:
    from learner.model.bundle import load_bundle

    single = GroupPredictions(TAXONOMY.group("kind"), np.full((6, 2), 0.5), np.array([0, 1, 0, 1, 0, 1]))
    calibration = fit_calibration({"kind": single, "tags": _predictions()}, TAXONOMY, beta=2.0)
    bundle = calibration.apply(_bundle())
    path = bundle.save(tmp_path / "calibrated.safetensors")

    reloaded = load_bundle(path)
    assert reloaded.threshold("tags", "sale") == pytest.approx(0.275)  # fitted
    assert reloaded.threshold("tags", "new") == pytest.approx(0.42)  # no positive: the bundle's own is kept
    fit = reloaded.calibration["multi_label"]
    assert fit["beta"] == 2.0 and fit["groups"]["tags"]["without_positives"] == ["new"]
    assert fit["groups"]["tags"]["micro_fbeta_at_0.5"] == 0.0
