"""Calibration of a bundle on labelled predictions: per-group temperatures and auto-fill thresholds.

`fit_calibration(predictions, taxonomy, ...)`, for every single-choice classifier group with labels:
1. fits a temperature T by minimising the negative log-likelihood of softmax(log p / T) (L-BFGS over log T;
   T == 1 is kept when the fit does not improve the NLL) and reports the expected calibration error (ECE,
   15 equal-width bins) before and after;
2. decodes the calibrated probabilities as the engine will (`learner.inference.decoding.ValueDecoder`,
   hierarchy included) and chooses the group's auto-fill threshold with
   `learner.evaluation.selective.choose_autofill_threshold` at the group's target precision (the taxonomy's
   `target_precision`, else the default given here), band floor and confidence floor (the taxonomy's, else
   `DEFAULT_BAND_FLOOR` and `DEFAULT_CONFIDENCE_FLOOR` of learner/model/taxonomy.py);
   when the predictions carry each image's shift score (`Predictions.shift_scores`), the shift guard's cut-off: the
   lowest score whose images above it carry at most `max_withheld` of the values those thresholds auto-fill
   (`learner.evaluation.shift.fit_shift_guard`).
3. for every multi-label classifier group with labels, per-value decision thresholds maximising F-beta
   (`beta`, default 1: F1) on these predictions (`learner.evaluation.thresholds.fbeta_thresholds`).
`Calibration.apply(bundle)` stores the result in the bundle (temperatures, auto-fill thresholds and a report);
the multi-label thresholds replace that group's per-value `thresholds` (training's best-F1 points, which is the
same search at beta 1), which the engine, the review policy and evaluation already read. A value without a positive
sample here keeps the threshold the bundle had.

Figures are measured on the set the calibration was fitted on (normally the validation split): ECE after
scaling is in-sample. Evaluate the calibrated bundle on the test split for out-of-sample figures.
No model runs here (see `learner.evaluation.evaluate.predict`), and nothing is written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from learner.evaluation.evaluate import (
    DEFAULT_THRESHOLD,
    ECE_BINS,
    GroupPredictions,
    expected_calibration_error,
    multi_label_metrics,
)
from learner.evaluation.selective import (
    DEFAULT_CONFIDENCE_LEVEL,
    DEFAULT_MIN_ACCEPTED,
    DEFAULT_TARGET_PRECISION,
    ThresholdChoice,
    choose_autofill_threshold,
)
from learner.evaluation.shift import DEFAULT_MAX_WITHHELD, fit_shift_guard
from learner.evaluation.thresholds import fbeta_thresholds
from learner.inference.decoding import ValueDecoder
from learner.model.bundle import ModelBundle
from learner.model.shift_guard import ShiftGuard
from learner.model.taxonomy import Taxonomy

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def _nll(log_probs: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(log_probs / temperature, targets)


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising the NLL of `targets` (N,) under softmax(log `probs` / T); `probs` (N, C)."""
    if len(targets) == 0:
        return 1.0
    log_p = torch.from_numpy(np.log(np.maximum(np.asarray(probs, dtype=np.float64), 1e-300)))
    t = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = _nll(log_p, t, log_t.exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE))
        loss.backward()
        return loss

    optimiser.step(closure)
    temperature = float(log_t.detach().exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE))
    with torch.no_grad():
        before = float(_nll(log_p, t, torch.tensor(1.0, dtype=torch.float64)))
        after = float(_nll(log_p, t, torch.tensor(temperature, dtype=torch.float64)))
    return temperature if math.isfinite(after) and after < before else 1.0


@dataclass
class Calibration:
    """Per single-choice group: temperature, threshold choice and ECE before/after; plus what it was fitted on."""

    temperatures: dict[str, float]
    thresholds: dict[str, ThresholdChoice]
    ece: dict[str, dict[str, float | None]]
    target_source: dict[str, str]  # group -> "taxonomy" (its target_precision) or "default"
    hierarchy_disagreement: float | None = None  # share of rows whose raw heads broke the hierarchy
    fitted_on: dict[str, Any] = field(default_factory=dict)
    beta: float = 1.0  # the F-beta the multi-label thresholds maximise
    multi_thresholds: dict[str, dict[str, float]] = field(default_factory=dict)  # multi group -> value -> threshold
    multi_report: dict[str, dict[str, Any]] = field(default_factory=dict)  # multi group -> figures of the fit
    shift_guard: ShiftGuard | None = None  # None: the predictions carried no shift scores

    @property
    def unreached(self) -> list[str]:
        """Groups where no threshold reaches the target: nothing of them is auto-filled."""
        return [g for g, c in self.thresholds.items() if not c.reached]

    def report(self) -> dict[str, Any]:
        return {
            "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **self.fitted_on,
            "ece_bins": ECE_BINS,
            "hierarchy_disagreement": self.hierarchy_disagreement,
            "groups": {
                g: {
                    "temperature": self.temperatures.get(g, 1.0),
                    "ece_before": self.ece[g]["before"],
                    "ece_after": self.ece[g]["after"],
                    "target_from": self.target_source[g],
                    **{k: _round(v) for k, v in c.to_dict().items()},
                }
                for g, c in self.thresholds.items()
            },
            **({"multi_label": {"beta": self.beta, "groups": self.multi_report}} if self.multi_report else {}),
            **({"shift_guard": self.shift_guard.to_dict()} if self.shift_guard is not None else {}),
        }

    def apply(self, bundle: ModelBundle) -> ModelBundle:
        """Store the calibration in `bundle` (in place) and return it; the weights are untouched."""
        bundle.temperatures = {g: round(t, 6) for g, t in self.temperatures.items()}
        bundle.autofill_thresholds = {g: round(c.threshold, 6) for g, c in self.thresholds.items()}
        for g, fitted in self.multi_thresholds.items():
            bundle.thresholds = {**bundle.thresholds, g: {**bundle.thresholds.get(g, {}), **fitted}}
        bundle.calibration = self.report()
        if self.shift_guard is not None:
            bundle.shift_guard = self.shift_guard
        return bundle


def fit_calibration(
    predictions: Mapping[str, GroupPredictions],
    taxonomy: Taxonomy,
    default_target: float = DEFAULT_TARGET_PRECISION,
    confidence_level: float = DEFAULT_CONFIDENCE_LEVEL,
    min_accepted: int = DEFAULT_MIN_ACCEPTED,
    fitted_on: Mapping[str, Any] | None = None,
    beta: float = 1.0,
    max_withheld: float = DEFAULT_MAX_WITHHELD,
) -> Calibration:
    """Temperatures, then auto-fill thresholds on the decoded calibrated values, and per-value F-beta thresholds
    of multi-label groups (see the module docstring). Groups without any labelled sample keep T = 1 and get no
    threshold (nothing auto-filled: NEVER)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, not {beta}")
    single = [g for g in taxonomy.classifier_groups if not g.multi_label and g.name in predictions]
    temperatures: dict[str, float] = {}
    ece: dict[str, dict[str, float | None]] = {}
    for g in single:
        pred = predictions[g.name]
        known = pred.known()
        probs, targets = pred.probs[known], pred.targets[known].astype(np.int64)
        temperatures[g.name] = fit_temperature(probs, targets)
        ece[g.name] = {"before": _ece(probs, targets), "after": None}
    decisions = ValueDecoder(taxonomy, temperatures)({name: p.probs for name, p in predictions.items()})
    thresholds: dict[str, ThresholdChoice] = {}
    source: dict[str, str] = {}
    for g in single:
        pred = predictions[g.name]
        known = pred.known()
        targets = pred.targets[known].astype(np.int64)
        ece[g.name]["after"] = _ece(decisions.probs[g.name][known], targets)
        target = g.target_precision if g.target_precision is not None else default_target
        source[g.name] = "taxonomy" if g.target_precision is not None else "default"
        correct = decisions.chosen[g.name][known] == targets
        thresholds[g.name] = choose_autofill_threshold(
            decisions.confidence[g.name][known],
            correct,
            target,
            confidence_level,
            min_accepted,
            band_floor=g.auto_fill_band_floor,
            confidence_floor=g.auto_fill_confidence_floor,
        )
    disagreement = None if decisions.disagreed is None else float(decisions.disagreed.mean())
    multi_thresholds, multi_report = fit_multi_thresholds(predictions, taxonomy, beta)
    guard = None
    scores = getattr(predictions, "shift_scores", None)
    if scores is not None and len(scores) and single:
        final = {g: c.threshold for g, c in thresholds.items()}
        marks = ValueDecoder(taxonomy, temperatures, final)({name: p.probs for name, p in predictions.items()})
        filled = np.sum([marks.auto_filled[g.name] for g in single], axis=0)
        guard = fit_shift_guard(scores, filled, [g.name for g in single], max_withheld, fitted_on)
    return Calibration(
        temperatures,
        thresholds,
        ece,
        source,
        disagreement,
        dict(fitted_on or {}),
        beta,
        multi_thresholds,
        multi_report,
        guard,
    )


def fit_multi_thresholds(
    predictions: Mapping[str, GroupPredictions], taxonomy: Taxonomy, beta: float
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """Per multi-label group with labelled rows: per-value F-beta thresholds, and a report of the fit (micro and
    macro F-beta at those thresholds and at the fixed 0.5, values without a positive sample, n)."""
    fitted: dict[str, dict[str, float]] = {}
    report: dict[str, dict[str, Any]] = {}
    for g in taxonomy.classifier_groups:
        pred = predictions.get(g.name)
        if not g.multi_label or pred is None or not pred.known().any():
            continue
        fitted[g.name], without = fbeta_thresholds(pred, beta)
        m = multi_label_metrics(pred.probs, pred.targets, g.values, fitted[g.name], beta)
        at_default = m["at_default_threshold"]
        report[g.name] = {
            "n": m["n"],
            "micro_fbeta": _round(m["micro_fbeta"]),
            "macro_fbeta": _round(m["macro_fbeta"]),
            f"micro_fbeta_at_{DEFAULT_THRESHOLD:g}": _round(at_default["micro_fbeta"]),
            f"macro_fbeta_at_{DEFAULT_THRESHOLD:g}": _round(at_default["macro_fbeta"]),
            "without_positives": without,
        }
    return fitted, report


def _ece(probs: np.ndarray, targets: np.ndarray) -> float | None:
    if len(targets) == 0:
        return None
    predicted = probs.argmax(axis=1)
    return expected_calibration_error(probs[np.arange(len(targets)), predicted], predicted == targets)


def _round(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v
