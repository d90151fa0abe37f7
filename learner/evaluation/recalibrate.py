"""Calibrating a bundle file on a labelled set (`shelfsight models calibrate`): read the set with the bundle's
taxonomy, optionally derive a hierarchy from its labels into the bundle's taxonomy, predict one split with the bundle
(its own split rule), fit temperatures, auto-fill and multi-label thresholds (learner/evaluation/calibration.py); when
the bundle has a title model, refit its temperatures and title-only thresholds on the split's titles
(learner/evaluation/title_calibration.py), then the fusion of photos and title (learner/evaluation/fusion.py, on the
split's titles); and write the calibrated bundle atomically (beside the target, then renamed over it).

Must not: print, parse options or read configuration (daemon/commands_models.py does), or touch the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learner.datasets.labelled import Sample, load_labelled_set
from learner.evaluation.calibration import Calibration, fit_calibration
from learner.evaluation.evaluate import predict_bundle, split_rule_of, training_set_relation
from learner.evaluation.fusion import fit_bundle_fusion
from learner.evaluation.selective import DEFAULT_CONFIDENCE_LEVEL, DEFAULT_MIN_ACCEPTED, DEFAULT_TARGET_PRECISION
from learner.evaluation.title_calibration import TitleCalibrationError, fit_title_calibration, titled
from learner.model.bundle import ModelBundle, load_bundle
from learner.model.fusion import Fusion
from learner.model.hierarchy import DerivedHierarchy, derive_hierarchy
from learner.model.manifest import file_sha256


@dataclass
class Recalibration:
    """What `recalibrate` did: the calibration stored, on how many images of which labels.csv, the file written and
    the given file's SHA-256 before, the hierarchy derived (None: none asked for) and what to say about the split
    fitted on (None: nothing; it starts with "note:" or "warning:")."""

    calibration: Calibration
    images: int
    source: Path
    target: Path
    sha256_before: str
    hierarchy: DerivedHierarchy | None
    split_note: str | None
    fusion: Fusion | None = None  # the photos-and-title fusion fitted (None: the bundle has no title model)
    title_calibration: Calibration | None = None  # the title model's refit (None: no title model, or no titles)


def recalibrate(
    bundle_path: Path,
    data: Path,
    split: str = "val",
    out: Path | None = None,
    *,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    confidence_level: float = DEFAULT_CONFIDENCE_LEVEL,
    min_accepted: int = DEFAULT_MIN_ACCEPTED,
    beta: float = 1.0,
    hierarchy_levels: Sequence[str] | None = None,
    group_column: str | None = None,
    image_column: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
) -> Recalibration:
    """Calibrate the bundle at `bundle_path` on the `split` of the labelled set `data` and write it to `out` (None:
    over `bundle_path`). `group_column` defaults to the bundle's recorded one; `hierarchy_levels` (group names,
    top-down): derive that hierarchy from the set's labels and store it in the bundle's taxonomy first. Raises the
    bundle's, the data's and the taxonomy's errors (BundleError, DataError, TaxonomyError, ValueError, OSError)."""
    target = out or bundle_path
    bundle = load_bundle(bundle_path)
    group_column = group_column or bundle.lineage.get("data", {}).get("group_column")
    labelled = load_labelled_set(data, bundle.taxonomy, image_column=image_column, group_column=group_column)
    derived = None
    if hierarchy_levels:
        derived = derive_hierarchy(labelled.source, bundle.taxonomy, list(hierarchy_levels))
        bundle.taxonomy = bundle.classifier.taxonomy = bundle.taxonomy.with_hierarchy(derived.hierarchy)
    rule = split_rule_of(bundle)
    training = training_set_relation(bundle, labelled)
    note = None
    if training is None and split != "all":
        note = f"note: {labelled.source} is not the bundle's training set: fitting on its {split} split"
    elif training is not None and split in ("train", "all"):
        note = f"warning: fitting on the {split} split of the training data: thresholds will be optimistic"
    predictions, n = predict_bundle(bundle, labelled, split, rule, batch_size, device)
    fitted_on = {"data": str(labelled.source), "csv_sha256": file_sha256(labelled.source), "split": split, "images": n}
    calibration = fit_calibration(
        predictions, bundle.taxonomy, target_precision, confidence_level, min_accepted, fitted_on, beta
    )
    calibration.apply(bundle)
    title_calibration = _refit_title_model(
        bundle, labelled.split(rule, split), target_precision, confidence_level, min_accepted, fitted_on
    )
    titles = [getattr(s, "title", None) for s in labelled.split(rule, split)]  # the rows of `predictions`
    fusion = fit_bundle_fusion(
        bundle,
        predictions,
        titles,
        default_target=target_precision,
        confidence_level=confidence_level,
        min_accepted=min_accepted,
        fitted_on=fitted_on,
    )
    if fusion is not None:  # the bundle has a title model: photos and title decided together (product_decision)
        bundle.fusion = fusion
    before = file_sha256(bundle_path)
    bundle.save(target)  # atomic: written beside the target, then renamed over it
    done = Recalibration(calibration, n, labelled.source, target, before, derived, note, fusion)
    done.title_calibration = title_calibration
    return done


def _refit_title_model(
    bundle: ModelBundle,
    samples: Sequence[Sample],
    target_precision: float,
    confidence_level: float,
    min_accepted: int,
    fitted_on: dict[str, Any],
) -> Calibration | None:
    """The bundle's title model's temperatures and title-only auto-fill thresholds, refitted on the split's labelled
    titles (in place; before the fusion, which reads the calibrated title probabilities). None: the bundle has no
    title model, or the split no title with a signal (the title model keeps its calibration)."""
    if bundle.title_model is None:
        return None
    try:
        return fit_title_calibration(
            bundle.title_model,
            titled(samples),
            bundle.taxonomy,
            target_precision=target_precision,
            confidence_level=confidence_level,
            min_accepted=min_accepted,
            fitted_on=fitted_on,
        )
    except TitleCalibrationError:
        return None
