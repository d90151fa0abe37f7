"""Evaluating a bundle file on a labelled set (`shelfsight evaluate`): read the set with the bundle's taxonomy, choose
the split (the bundle's test split when the set is its training data, else all of it, unless one is asked for),
measure the bundle on it as the engine tags (`predict_bundle`, `bundle_metrics`) and list the labels the taxonomy does
not know. When the bundle reads titles and the set has them, the products are also decided from their photos alone,
their titles alone and both (`compare_sources`, with the attribute words masked too).

Must not: print, write reports, parse options or read configuration (daemon/commands_train.py does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learner.datasets.labelled import LabelledSet, SplitRule, load_labelled_set
from learner.evaluation.evaluate import (
    audit_labels,
    bundle_metrics,
    predict_bundle,
    split_rule_of,
    training_set_relation,
)
from learner.evaluation.source_comparison import compare_sources
from learner.model.bundle import load_bundle


@dataclass
class LabelledEvaluation:
    """The figures of one bundle on one split of a labelled set: the metrics (`compute_metrics`' form), the images
    measured, the split and the bundle's split rule that cut it, the set, the label audit (`audit_labels`) and
    notes on the choice of split (one line each)."""

    model_version: str
    metrics: dict[str, Any]
    images: int
    split: str
    rule: SplitRule
    labelled: LabelledSet
    audit: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    # photos / title / fused (and masked) side by side (`compare_sources`); None: the bundle reads no titles or the
    # set has none
    sources: dict[str, Any] | None = None


def evaluate_on_labelled_set(
    bundle_path: Path,
    data: Path,
    split: str | None = None,
    *,
    group_column: str | None = None,
    image_column: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    tta: str | None = None,
    beta: float = 1.0,
) -> LabelledEvaluation:
    """The bundle at `bundle_path` measured on `split` of the labelled set `data` (None: its test split when `data`
    is the bundle's training set, else all of it; see the module docstring). `group_column` defaults to the
    bundle's recorded one. Raises the bundle's and the data's errors (BundleError, DataError, ValueError)."""
    bundle = load_bundle(bundle_path)
    group_column = group_column or bundle.lineage.get("data", {}).get("group_column")
    labelled = load_labelled_set(data, bundle.taxonomy, image_column=image_column, group_column=group_column)
    rule = split_rule_of(bundle)
    training = training_set_relation(bundle, labelled)
    notes = []
    if split is None:
        split = "test" if training else "all"
        what = "its test split" if training else "all of it"
        why = training or "it is not the bundle's training set"
        notes.append(f"{labelled.source}: {why}: evaluating {what} (--split chooses another)")
    elif training is None and split != "all":
        notes.append(f"{labelled.source} is not the bundle's training set: cut by its split rule ({split}) as asked")
    predictions, n = predict_bundle(bundle, labelled, split, rule, batch_size, device, tta)
    metrics = bundle_metrics(bundle, predictions, beta)
    samples = labelled.split(rule, split)
    audit = audit_labels(labelled, samples, image_column)
    sources = None
    titles = [s.title for s in samples]
    if bundle.title_model is not None and bundle.fusion is not None and any(titles):
        sources = compare_sources(bundle, predictions, titles)
    elif bundle.title_model is not None:
        notes.append(f"{labelled.source}: no titles (the bundle's title column is {bundle.taxonomy.title_column!r})")
    return LabelledEvaluation(bundle.model_version, metrics, n, split, rule, labelled, audit, notes, sources)
