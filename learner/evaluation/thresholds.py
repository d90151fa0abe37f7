"""Per-class decision thresholds chosen on labelled predictions: the best-F1 point of each class (`best_f1_threshold`,
`choose_thresholds`: training picks them on the validation split) and the best F-beta point of each value of a
multi-label group (`best_fbeta_threshold`, `fbeta_thresholds`: calibration).

Pure numpy over `GroupPredictions` (learner/evaluation/evaluate.py), so every choice can be checked by hand.
Must not: run a model, or write anything.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from learner.evaluation.evaluate import DEFAULT_THRESHOLD, GroupPredictions


def best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float] | None:
    """The decision threshold (predict positive when score >= threshold) with the best F1 on these
    scores, and that F1. It sits halfway between the last accepted and the next lower score so it does
    not hug one validation image. None when there is no positive to learn from."""
    return best_fbeta_threshold(scores, positive, 1.0)


def best_fbeta_threshold(scores: np.ndarray, positive: np.ndarray, beta: float) -> tuple[float, float] | None:
    """As `best_f1_threshold`, maximising F-beta = (1 + b^2) tp / (tp + fp + b^2 positives): beta > 1 favours
    recall (a lower threshold), beta < 1 precision (a higher one)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    # only cut where the score changes: equal scores are accepted together
    last_of_run = np.r_[s[1:] != s[:-1], True]
    tp, fp, cut_scores = tp[last_of_run], fp[last_of_run], s[last_of_run]
    b2 = beta * beta
    score = (1 + b2) * tp / (tp + fp + b2 * n_pos)
    best = int(np.argmax(score))
    lower = cut_scores[best + 1] if best + 1 < len(cut_scores) else 0.0
    return float((cut_scores[best] + lower) / 2), float(score[best])


def fbeta_thresholds(pred: GroupPredictions, beta: float) -> tuple[dict[str, float], list[str]]:
    """Per value of a multi-label group, the threshold with the best F-beta on these predictions (labelled rows
    only); values without a positive sample are left out and named in the second element."""
    known = pred.known()
    probs, positive = pred.probs[known], pred.targets[known] > 0.5
    thresholds: dict[str, float] = {}
    without: list[str] = []
    for i, value in enumerate(pred.group.values):
        found = best_fbeta_threshold(probs[:, i], positive[:, i], beta)
        if found is None:
            without.append(value)
        else:
            thresholds[value] = round(found[0], 6)
    return thresholds, without


def choose_thresholds(predictions: Mapping[str, GroupPredictions]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Per class of every group, the best-F1 threshold on these predictions (one-vs-rest for single-choice
    groups). Classes without a positive sample get DEFAULT_THRESHOLD and are returned as `group/value`."""
    thresholds: dict[str, dict[str, float]] = {}
    defaulted: list[str] = []
    for name, pred in predictions.items():
        known = pred.known()
        probs, targets = pred.probs[known], pred.targets[known]
        thresholds[name] = {}
        for i, value in enumerate(pred.group.values):
            positive = targets[:, i] > 0.5 if pred.group.multi_label else targets == i
            found = best_f1_threshold(probs[:, i], positive)
            if found is None:
                thresholds[name][value] = DEFAULT_THRESHOLD
                defaulted.append(f"{name}/{value}")
            else:
                thresholds[name][value] = round(found[0], 6)
    return thresholds, defaulted
