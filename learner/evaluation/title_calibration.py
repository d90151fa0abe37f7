"""The title model's calibration and figures on labelled titles (learner/model/title_model.py; trained by
learner/training/title.py).

- `fit_title_calibration(model, samples, taxonomy)`: temperatures by NLL and the title-only auto-fill thresholds,
  fitted on the labelled titles that give a signal by the image model's own rule: the same
  `learner.evaluation.calibration.fit_calibration` (temperature per group, then thresholds on the values decoded
  with the hierarchy by `learner.evaluation.selective.choose_autofill_threshold`), on the title model's
  uncalibrated probabilities instead of the image classifier's. Stored in the model (in place).
- `title_metrics(model, samples, taxonomy, masked=...)`: top-1 per group of the decoded title values, as written or
  with the attribute words masked (`mask_attribute_words`), auto-fill coverage, and the share of titles without a
  signal (counted as errors).

Torch only through fit_calibration's temperature fit. Must not import learner.training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from learner.datasets.labelled import IGNORE_INDEX, Sample
from learner.evaluation.calibration import Calibration, fit_calibration
from learner.evaluation.evaluate import GroupPredictions
from learner.evaluation.selective import DEFAULT_CONFIDENCE_LEVEL, DEFAULT_MIN_ACCEPTED, DEFAULT_TARGET_PRECISION
from learner.inference.decoding import ValueDecoder
from learner.model.taxonomy import AttributeGroup, Taxonomy
from learner.model.title_model import TitleModel, attribute_words, mask_attribute_words


class TitleCalibrationError(ValueError):
    """No labelled title with a signal to fit on."""


def titled(samples: Sequence[Sample]) -> list[Sample]:
    """The samples that carry a title."""
    return [s for s in samples if s.title and s.title.strip()]


def targets_of(samples: Sequence[Sample], group: AttributeGroup) -> np.ndarray:
    """(N,) class indices of `group`'s labels, IGNORE_INDEX where missing."""
    return np.array(
        [s.labels.get(group.name) if isinstance(s.labels.get(group.name), int) else IGNORE_INDEX for s in samples],
        dtype=np.int64,
    )


def title_predictions(model: TitleModel, samples: Sequence[Sample], taxonomy: Taxonomy) -> dict[str, GroupPredictions]:
    """Per group the model's uncalibrated probabilities and the labels, over the samples whose title gives a signal."""
    with_signal = [s for s in samples if model.has_signal(s.title)]
    probs = model.probabilities([s.title for s in with_signal], calibrated=False)
    return {
        g.name: GroupPredictions(g, probs[g.name], targets_of(with_signal, g))
        for g in taxonomy.classifier_groups
        if g.name in probs
    }


def fit_title_calibration(
    model: TitleModel,
    samples: Sequence[Sample],
    taxonomy: Taxonomy,
    *,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    confidence_level: float = DEFAULT_CONFIDENCE_LEVEL,
    min_accepted: int = DEFAULT_MIN_ACCEPTED,
    fitted_on: dict[str, Any] | None = None,
) -> Calibration:
    """Fit the model's temperatures and title-only auto-fill thresholds on the labelled titles of `samples` (those
    with a signal), by the image model's rule (learner.evaluation.calibration.fit_calibration), and store them in
    `model` (in place). Returns the calibration (its report says what was fitted on what)."""
    predictions = title_predictions(model, samples, taxonomy)
    if not predictions or not len(next(iter(predictions.values())).targets):
        raise TitleCalibrationError("no labelled title with a signal to calibrate the title model on")
    on = {"titles": len(next(iter(predictions.values())).targets), **(fitted_on or {})}
    calibration = fit_calibration(predictions, taxonomy, target_precision, confidence_level, min_accepted, on)
    model.temperatures = {g: round(t, 6) for g, t in calibration.temperatures.items()}
    model.autofill_thresholds = {g: round(c.threshold, 6) for g, c in calibration.thresholds.items()}
    model.config["calibration"] = {
        g: {"coverage": round(c.coverage, 4), "precision": c.precision and round(c.precision, 4)}
        for g, c in calibration.thresholds.items()
    }
    return calibration


def title_metrics(model: TitleModel, samples: Sequence[Sample], taxonomy: Taxonomy, *, masked: bool) -> dict[str, Any]:
    """Top-1 per group of the model's decoded values (temperatures, hierarchy) on the labelled titles of `samples`,
    as written or with the attribute words masked; a title without a signal counts as an error. Also `no_signal`:
    the share of titles without one, and `n` per group."""
    words = attribute_words(taxonomy)
    titles = [mask_attribute_words(s.title or "", taxonomy, words) if masked else s.title for s in samples]
    signal = np.array([model.has_signal(t) for t in titles], dtype=bool)
    probs = model.probabilities(titles)
    single = [g for g in taxonomy.classifier_groups if not g.multi_label]
    uniform = {g.name: np.full((len(titles), len(g.values)), 1.0 / len(g.values)) for g in single}
    filled = {g: np.where(signal[:, None], p, uniform[g]) for g, p in probs.items()}
    decisions = ValueDecoder(taxonomy, {}, model.autofill_thresholds)({**uniform, **filled})
    single = [g for g in single if g.name in probs]
    top1: dict[str, float | None] = {}
    n: dict[str, int] = {}
    coverage: dict[str, float | None] = {}
    for g in single:
        targets = targets_of(samples, g)
        known = targets != IGNORE_INDEX
        right = (decisions.chosen[g.name] == targets) & signal
        n[g.name] = int(known.sum())
        top1[g.name] = float(right[known].mean()) if known.any() else None
        auto = decisions.auto_filled[g.name] & signal & known
        coverage[g.name] = float(auto.sum() / known.sum()) if known.any() else None
    return {
        "top1": top1,
        "n": n,
        "autofill_coverage": coverage,
        "no_signal": float(1.0 - signal.mean()) if len(signal) else None,
        "masked": masked,
    }
