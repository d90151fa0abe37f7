"""Selective prediction: which confidence a value needs to be auto-filled, and what auto-filling then yields.

The question the catalog team asks is "how many products can be filled in without a person, and how often is
a filled value wrong?". For one single-choice group, with `confidence` the (calibrated) probability of the
chosen value and `correct` whether it was right:
- `coverage_at(confidence, correct, threshold)`: the share of values auto-filled (confidence >= threshold) and
  the precision of those (1 - how often a filled value is wrong);
- `precision_coverage_curve`: the same for every threshold (what the PNG of the evaluation report draws);
- `choose_autofill_threshold`: the lowest threshold whose accepted values reach a target precision, whose lowest
  band of accepted values (the last `band_width` of coverage) is itself right often enough, and which is never below
  a confidence floor.

Pure numpy and the standard library; nothing here runs a model or reads a file.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from learner.model.taxonomy import DEFAULT_BAND_FLOOR, DEFAULT_CONFIDENCE_FLOOR

DEFAULT_TARGET_PRECISION = 0.97
DEFAULT_CONFIDENCE_LEVEL = 0.5
DEFAULT_MIN_ACCEPTED = 50
DEFAULT_BAND_WIDTH = 0.10  # the lowest band: the last 10% of coverage (10% of the fitting set's values) above a cut
MIN_BAND = 20  # a band is never judged on fewer values than this (fewer accepted: the band is all of them)
NEVER = 2.0  # an auto-fill threshold no confidence reaches: nothing of the group is auto-filled


def wilson_lower_bound(correct: np.ndarray, total: np.ndarray, level: float = DEFAULT_CONFIDENCE_LEVEL) -> np.ndarray:
    """One-sided Wilson score lower bound of a proportion correct/total at confidence `level`.

    `level` 0.5 gives the point estimate correct/total itself. Totals of 0 give 0.
    """
    k = np.asarray(correct, dtype=np.float64)
    n = np.asarray(total, dtype=np.float64)
    z = NormalDist().inv_cdf(level) if level > 0.5 else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n > 0, k / n, 0.0)
        if z == 0.0:
            return p
        z2 = z * z
        centre = p + z2 / (2 * n)
        margin = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
        bound = (centre - margin) / (1 + z2 / n)
    return np.where(n > 0, np.clip(bound, 0.0, 1.0), 0.0)


@dataclass(frozen=True)
class ThresholdChoice:
    """`threshold`: lowest auto-filled confidence (NEVER when the target is out of reach); what the fitting set
    says about it: values accepted, their precision and its lower bound, and the coverage (accepted / n)."""

    threshold: float
    target_precision: float
    confidence_level: float
    min_accepted: int
    n: int
    accepted: int
    precision: float | None
    precision_lower_bound: float | None
    band_floor: float = 0.0
    confidence_floor: float = 0.0
    band_size: int = 0  # values in the lowest band of the accepted ones
    band_precision: float | None = None  # their precision: what the least confident auto-filled values are worth

    @property
    def reached(self) -> bool:
        return self.threshold <= 1.0

    @property
    def coverage(self) -> float:
        return self.accepted / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "coverage": self.coverage, "reached": self.reached}


def _cuts(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct confidence, high to low: the confidence, values accepted at it, and correct ones."""
    order = np.argsort(-confidence, kind="stable")
    s, y = confidence[order], correct[order]
    accepted = np.arange(1, len(s) + 1)
    right = np.cumsum(y)
    last_of_run = np.r_[s[1:] != s[:-1], True]  # equal confidences are accepted together
    return s[last_of_run], accepted[last_of_run], right[last_of_run]


def choose_autofill_threshold(
    confidence: np.ndarray,
    correct: np.ndarray,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    confidence_level: float = DEFAULT_CONFIDENCE_LEVEL,
    min_accepted: int = DEFAULT_MIN_ACCEPTED,
    *,
    band_floor: float = DEFAULT_BAND_FLOOR,
    confidence_floor: float = DEFAULT_CONFIDENCE_FLOOR,
    band_width: float = DEFAULT_BAND_WIDTH,
) -> ThresholdChoice:
    """The lowest confidence threshold at which the auto-filled values of the fitting set keep the promise.

    Candidate thresholds are the distinct confidences of the fitting set, scanned from high to low; at each the
    accepted values are those at or above it. A threshold qualifies when
    - at least `min_accepted` values are accepted and the precision of the accepted values reaches the target; with
      `confidence_level` above 0.5 it is the *lower confidence bound* of that precision (one-sided Wilson score
      interval) that must reach it;
    - the lowest band of the accepted values, the least confident `band_width` of the fitting set's values (at least
      `MIN_BAND`, at most all accepted), is right at least `band_floor` of the time. The cumulative precision alone
      lets a group whose top is nearly always right (subCategory on catalog photos) auto-fill values at 0.15
      confidence, values the model itself says are probably wrong: the band check stops the threshold where the
      marginal values stop being good, not where the average of everything above still is;
    - it is at least `confidence_floor`: a value whose own calibrated confidence is below it is never auto-filled,
      however good the fitting set says such values were (a calibrated 0.3 is a 70% chance of an error on photos
      like the fitting set's, and worse on photos unlike them).

    The default is the precision itself (level 0.5) with at least 50 values accepted: the catalog asks for values
    that are right about 97% of the time, and that is what the held-out precision then is on average. A cross-fit
    study on the validation split (`python -m tests.benchmarks.autofill_levels`: fit on one half, measure on the
    other) found the 95% Wilson bound overshooting to about 98% held-out precision while auto-filling far fewer
    values (articleType 9% instead of 69%); the minimum of 50 stops a handful of lucky values at the top from
    "proving" the target for a group the model cannot fill (baseColour, season). A caller who wants a guarantee
    rather than an average passes a higher level (`shelfsight models calibrate --confidence-level 0.95`).

    The lowest qualifying threshold is kept (the most coverage), even when a higher one does not qualify: what is
    promised is the precision of everything accepted. The threshold is the qualifying confidence itself, not a
    point between it and the next lower one: no value the fitting set did not see accepted is accepted. When no
    threshold qualifies, the result is NEVER (> 1): nothing of the group is auto-filled.

    Scanning many thresholds and keeping the lowest that qualifies is somewhat optimistic; measure the precision
    actually reached on data the threshold was not fitted on (`shelfsight evaluate`, test split).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    n = len(conf)
    never = ThresholdChoice(
        NEVER, target_precision, confidence_level, min_accepted, n, 0, None, None, band_floor, confidence_floor
    )
    if n == 0:
        return never
    scores, accepted, k = _cuts(conf, right)
    bound = wilson_lower_bound(k, accepted, confidence_level)
    band_size, band_right = _lowest_bands(right[np.argsort(-conf, kind="stable")], accepted, n, band_width)
    band_precision = band_right / band_size
    ok = np.flatnonzero(
        (bound >= target_precision)
        & (accepted >= min_accepted)
        & (band_precision >= band_floor)
        & (scores >= confidence_floor)
    )
    if len(ok) == 0:
        return never
    i = int(ok[-1])
    return ThresholdChoice(
        threshold=float(scores[i]),
        target_precision=target_precision,
        confidence_level=confidence_level,
        min_accepted=min_accepted,
        n=n,
        accepted=int(accepted[i]),
        precision=float(k[i] / accepted[i]),
        precision_lower_bound=float(bound[i]),
        band_floor=band_floor,
        confidence_floor=confidence_floor,
        band_size=int(band_size[i]),
        band_precision=float(band_precision[i]),
    )


def _lowest_bands(
    right_by_rank: np.ndarray, accepted: np.ndarray, n: int, band_width: float
) -> tuple[np.ndarray, np.ndarray]:
    """At each cut (`accepted` values, most confident first): the size of its lowest band and how many of the band
    are right. The band is the last `band_width * n` accepted values (at least MIN_BAND, at most all of them)."""
    right_before = np.r_[0, np.cumsum(right_by_rank)]  # right_before[j]: right among the j most confident
    size = np.minimum(accepted, max(MIN_BAND, math.ceil(band_width * n)))
    return size, right_before[accepted] - right_before[accepted - size]


def band_precision(
    confidence: np.ndarray, correct: np.ndarray, edges: Sequence[float] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
) -> list[dict[str, Any]]:
    """Precision of the chosen values by confidence band (`edges`, the last band closed): what a value of a given
    calibrated confidence is worth. The model card's "precision by confidence band" plot reads this."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    out = []
    for j, (lo, hi) in enumerate(itertools.pairwise(edges)):
        inside = (conf >= lo) & ((conf < hi) if j < len(edges) - 2 else (conf <= hi))
        count = int(inside.sum())
        out.append({"low": lo, "high": hi, "n": count, "precision": float(right[inside].mean()) if count else None})
    return out


def coverage_at(confidence: np.ndarray, correct: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """What auto-filling at `threshold` does on these values (None: no threshold, every value is auto-filled):
    coverage (share auto-filled), precision of the auto-filled ones, and the counts behind them."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    accepted = conf >= threshold if threshold is not None else np.ones(len(conf), dtype=bool)
    n_acc = int(accepted.sum())
    return {
        "threshold": threshold,
        "n": len(conf),
        "auto_filled": n_acc,
        "errors": int((accepted & ~right).sum()),
        "coverage": n_acc / len(conf) if len(conf) else None,
        "precision": float(right[accepted].mean()) if n_acc else None,
    }


def autofill_figures(
    confidence: np.ndarray, correct: np.ndarray, auto_filled: np.ndarray, band_width: float = DEFAULT_BAND_WIDTH
) -> dict[str, Any]:
    """What the serving decision (`auto_filled`: thresholds, floors and shift guard together) does on these values:
    coverage, precision (cumulative) and the precision of the lowest band of the auto-filled values (the least
    confident `band_width` of all values, at least MIN_BAND, at most all auto-filled)."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    mask = np.asarray(auto_filled, dtype=bool)
    n_acc = int(mask.sum())
    band = min(n_acc, max(MIN_BAND, math.ceil(band_width * len(conf))))
    lowest = np.argsort(conf[mask], kind="stable")[:band]
    return {
        "n": len(conf),
        "auto_filled": n_acc,
        "errors": int((mask & ~right).sum()),
        "coverage": n_acc / len(conf) if len(conf) else None,
        "precision": float(right[mask].mean()) if n_acc else None,
        "band_size": band,
        "band_precision": float(right[mask][lowest].mean()) if band else None,
    }


def precision_coverage_curve(confidence: np.ndarray, correct: np.ndarray, points: int = 100) -> dict[str, list[float]]:
    """Precision of the auto-filled values against coverage, for thresholds from the highest confidence down,
    thinned to about `points` points (the first and last cut always kept)."""
    conf = np.asarray(confidence, dtype=np.float64)
    if len(conf) == 0:
        return {"coverage": [], "precision": [], "threshold": []}
    scores, accepted, k = _cuts(conf, np.asarray(correct, dtype=bool))
    keep = np.unique(np.r_[np.linspace(0, len(scores) - 1, min(points, len(scores))).round().astype(int)])
    return {
        "coverage": [round(float(v), 5) for v in accepted[keep] / len(conf)],
        "precision": [round(float(v), 5) for v in k[keep] / accepted[keep]],
        "threshold": [round(float(v), 6) for v in scores[keep]],
    }
