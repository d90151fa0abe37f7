"""Training data for a retraining run: the original labelled set plus every human correction, split into train,
validation and holdout (`assemble_training_data`), and the objects annotators boxed (`holdout_boxes`,
`training_boxes`).

- the original labelled set (a `labels.csv` directory, learner/datasets/labelled.py) plus every human correction read
  from the product database (`source = 'human'` rows only, `RetrainingStore`: the model's own unreviewed values
  never become labels). A correction's product and image become one sample whose corrected groups carry the
  annotator's value and whose other groups are *missing* (masked out of the loss), unless the original set has the
  same image, whose labels the correction then overrides group by group. Images are fetched once
  (connectors.images) into the run's work directory, named by their SHA-256.
- deduplicated by (product id, image digest) and by image digest alone (the same photo under two products is
  kept once, the corrected one first): the digest is the SHA-256 of the image bytes.
- the holdout is split off first and never trained on: `HoldoutRule.effective` over this run's labelled products
  (after deduplication), never above the ceiling the registry recorded (`holdout_ceiling`), gives the run's
  `EffectiveHoldout`; the same object decides the samples, the boxes and what the run records, so what is trainable
  and what is held out can never disagree. The rest is split into train and validation (early stopping,
  thresholds) by product id with `learner.datasets.labelled.SplitRule` (salt `VAL_SALT`).
- replay: corrections the champion was not trained on (newer than those in its lineage) are all trained on; the
  older data (original set and corrections the champion already learned from) is replayed: a deterministic
  sample of `replay_ratio` times as many items, at least `replay_min_samples` (all of it when it is smaller),
  so the model does not forget what it knew.
- boxes: a human value of a detector group (`source: detector` in the taxonomy) with a `box` is one object whose
  class is the detector class the taxonomy's `detector_mapping` maps to that value; those on holdout products
  score the detectors, the others train the challenger's.

Must not: write to the database, train, evaluate, or touch the registry; problems with single corrections (an
unknown value, an image that cannot be fetched) are counted in the snapshot, not raised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from connectors.db import HumanCorrection
from connectors.images import FetchError, ImageFetcher
from learner.datasets.labelled import Label, Sample, SplitRule, load_labelled_set
from learner.lifecycle.holdout import Boxes, EffectiveHoldout, HoldoutRule
from learner.model.manifest import file_sha256
from learner.model.taxonomy import AttributeGroup, Taxonomy
from learner.training.recipe import TrainConfig

log = logging.getLogger(__name__)

VAL_SALT = "shelfsight-retrain-val-v1"


class Membership(Protocol):
    """Decides holdout membership by product id (`EffectiveHoldout`, or a bare `HoldoutRule` at its fraction)."""

    def contains(self, product_id: str) -> bool: ...


class DataSettings(Protocol):
    """What `assemble_training_data` reads of a run's configuration (learner.lifecycle.retrain.RetrainConfig)."""

    work_dir: Path
    base_data: Path | None
    base_group_column: str | None
    holdout: HoldoutRule
    val_fraction: float
    replay_ratio: float
    replay_min_samples: int
    recipe: TrainConfig  # its seed orders the replay sample


@dataclass
class TrainingData:
    """One run's samples, and the snapshot of where they came from (stored in the challenger's lineage)."""

    taxonomy: Taxonomy
    train: list[Sample]
    val: list[Sample]
    holdout: list[Sample]
    snapshot: dict[str, Any]
    new_corrections: int
    corrections_until: datetime | None
    effective_holdout: EffectiveHoldout  # threshold and sizes: recorded in the registry before training
    holdout_boxes: Boxes = field(default_factory=dict)  # image -> objects
    train_boxes: Boxes = field(default_factory=dict)  # outside the holdout


def correction_samples(
    corrections: Sequence[HumanCorrection],
    taxonomy: Taxonomy,
    fetcher: ImageFetcher,
    image_dir: Path,
) -> tuple[list[tuple[Sample, str, datetime]], Counter[str]]:
    """One sample per (product, image) that annotators corrected: (sample, image sha256, newest correction time).
    Images are fetched once into `image_dir/<sha256>`; problems are counted, not raised."""
    groups = {g.name: g for g in taxonomy.classifier_groups}
    skipped: Counter[str] = Counter()
    by_image: dict[tuple[str, str], list[HumanCorrection]] = {}
    for c in corrections:
        if c.attribute not in groups:
            skipped[f"not a classifier group: {c.attribute}"] += 1
            continue
        if not c.image_url:
            skipped["no image known for the product"] += 1
            continue
        by_image.setdefault((c.product_id, c.image_url), []).append(c)
    image_dir.mkdir(parents=True, exist_ok=True)
    out: list[tuple[Sample, str, datetime]] = []
    fetched: dict[str, tuple[Path, str] | None] = {}
    for (product_id, url), items in by_image.items():
        if url not in fetched:
            fetched[url] = _fetch_into(fetcher, url, image_dir)
        got = fetched[url]
        if got is None:
            skipped["image could not be fetched"] += len(items)
            continue
        path, digest = got
        labels: dict[str, Label] = {g: None for g in groups}
        for c in sorted(items, key=lambda c: c.updated_at):
            label = _label(groups[c.attribute], c.value)
            if label is None:
                skipped[f"value not in the taxonomy: {c.attribute}"] += 1
                continue
            labels[c.attribute] = label
        if all(v is None for v in labels.values()):
            continue
        title = next((c.title for c in items if c.title), None)
        sample = Sample(f"{product_id}@{digest[:12]}", path, product_id, labels, title)
        out.append((sample, digest, max(c.updated_at for c in items)))
    return out, skipped


def _fetch_into(fetcher: ImageFetcher, url: str, image_dir: Path) -> tuple[Path, str] | None:
    try:
        image = fetcher.fetch(url)
    except FetchError as exc:
        log.warning("correction image %s not fetched: %s", url, exc)
        return None
    path = image_dir / image.sha256
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(image.data)
        tmp.replace(path)
    return path, image.sha256


def _label(group: AttributeGroup, value: str | list[str]) -> Label:
    if group.multi_label:
        values = [value] if isinstance(value, str) else list(value)
        if not values or any(v not in group.values for v in values):
            return None
        return tuple(sorted({group.index(v) for v in values}))
    if isinstance(value, list) or value not in group.values:
        return None
    return int(group.index(value))


def assemble_training_data(
    config: DataSettings,
    taxonomy: Taxonomy,
    corrections: Sequence[HumanCorrection],
    since: datetime | None,
    fetcher: ImageFetcher,
    holdout_ceiling: float | None = None,
) -> TrainingData:
    """The run's train / val / holdout samples (see the module docstring for every rule). `holdout_ceiling`: the
    lowest holdout threshold an earlier run used (`learner.lifecycle.holdout.holdout_ceiling`; None: none)."""
    base: list[tuple[Sample, str]] = []
    base_summary: dict[str, Any] | None = None
    if config.base_data is not None:
        labelled = load_labelled_set(config.base_data, taxonomy, group_column=config.base_group_column)
        base = [(s, file_sha256(s.image_path)) for s in labelled.samples]
        base_summary = {**labelled.summary(), "csv_sha256": file_sha256(labelled.source)}
    fixed, skipped = correction_samples(corrections, taxonomy, fetcher, config.work_dir / "images")

    # merge: a correction overrides the original labels of the same (product, image), group by group
    merged: dict[tuple[str, str], Sample] = {(s.split_key, d): s for s, d in base}
    is_new: dict[tuple[str, str], bool] = dict.fromkeys(merged, False)
    for sample, digest, updated in fixed:
        key = (sample.split_key, digest)
        earlier = merged.get(key)
        if earlier is not None:
            labels = {g: (sample.labels[g] if sample.labels[g] is not None else v) for g, v in earlier.labels.items()}
            sample = dataclasses.replace(earlier, labels=labels, title=sample.title or earlier.title)
        merged[key] = sample
        is_new[key] = is_new.get(key, False) or since is None or updated > since
    # the same photo under two products is kept once (a corrected one first)
    seen_digests: set[str] = set()
    unique: list[tuple[Sample, bool]] = []
    duplicates = 0
    for (_, digest), sample in sorted(merged.items(), key=lambda kv: (not is_new[kv[0]], kv[0])):
        if digest in seen_digests:
            duplicates += 1
            continue
        seen_digests.add(digest)
        unique.append((sample, is_new[(sample.split_key, digest)]))

    effective = config.holdout.effective({s.split_key for s, _ in unique}, holdout_ceiling)
    holdout = [s for s, _ in unique if effective.contains(s.split_key)]
    pool = [(s, new) for s, new in unique if not effective.contains(s.split_key)]
    new = [s for s, n in pool if n]
    old = [s for s, n in pool if not n]
    replay_size = min(len(old), max(config.replay_min_samples, math.ceil(config.replay_ratio * len(new))))
    replay = sorted(old, key=lambda s: hashlib.sha256(f"replay:{config.recipe.seed}:{s.sample_id}".encode()).digest())
    replay = replay[:replay_size]
    val_rule = SplitRule(salt=VAL_SALT, train=1.0 - config.val_fraction, val=config.val_fraction)
    chosen = sorted(new + replay, key=lambda s: s.sample_id)
    train = [s for s in chosen if val_rule.split_of(s.split_key) == "train"]
    val = [s for s in chosen if val_rule.split_of(s.split_key) == "val"]
    until = max((updated for _, _, updated in fixed), default=None)
    boxes = holdout_boxes(corrections, taxonomy, effective, fetcher, config.work_dir / "images")
    train_boxes = training_boxes(corrections, taxonomy, effective, fetcher, config.work_dir / "images")
    snapshot = {
        "base": base_summary,
        "corrections": {
            "rows": len(corrections),
            "images": len(fixed),
            "new_images": len(new),
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "skipped": dict(skipped),
        },
        "replay": {"pool": len(old), "used": len(replay), "ratio": config.replay_ratio},
        "duplicates_dropped": duplicates,
        "holdout": {
            **effective.to_dict(),
            "images": len(holdout),
            "products": len({s.split_key for s in holdout}),
        },
        "val_split": val_rule.to_dict(),
        "train": len(train),
        "val": len(val),
        "train_sha256": _samples_digest(train),
        "holdout_boxes": {"images": len(boxes), "objects": sum(len(v) for v in boxes.values())},
        "train_boxes": {"images": len(train_boxes), "objects": sum(len(v) for v in train_boxes.values())},
    }
    return TrainingData(taxonomy, train, val, holdout, snapshot, len(new), until, effective, boxes, train_boxes)


def holdout_boxes(
    corrections: Sequence[HumanCorrection],
    taxonomy: Taxonomy,
    holdout: Membership,
    fetcher: ImageFetcher,
    image_dir: Path,
) -> Boxes:
    """Objects annotators boxed on holdout products, as (detector class, [x1, y1, x2, y2]) per image.

    A box is a human value of a detector group (`source: detector` in the taxonomy) with a `box`: one object
    whose class is the detector class the taxonomy's `detector_mapping` maps to that value."""
    return _correction_boxes(corrections, taxonomy, holdout.contains, fetcher, image_dir)


def training_boxes(
    corrections: Sequence[HumanCorrection],
    taxonomy: Taxonomy,
    holdout: Membership,
    fetcher: ImageFetcher,
    image_dir: Path,
) -> Boxes:
    """Objects annotators boxed on products outside the holdout (the detector's training data); the rule of
    `holdout_boxes` otherwise."""
    return _correction_boxes(corrections, taxonomy, lambda p: not holdout.contains(p), fetcher, image_dir)


def _correction_boxes(
    corrections: Sequence[HumanCorrection],
    taxonomy: Taxonomy,
    keep: Callable[[str], bool],
    fetcher: ImageFetcher,
    image_dir: Path,
) -> Boxes:
    detector_groups = {g.name for g in taxonomy.groups if g.source == "detector"}
    to_class = {
        (group, value): det_class
        for det_class, attrs in taxonomy.detector_mapping.items()
        for group, value in attrs.items()
    }
    out: Boxes = {}
    fetched: dict[str, tuple[Path, str] | None] = {}
    image_dir.mkdir(parents=True, exist_ok=True)
    for c in corrections:
        if c.attribute not in detector_groups or c.box is None or not c.image_url:
            continue
        if not keep(c.product_id):
            continue
        values = [c.value] if isinstance(c.value, str) else list(c.value)
        det_class = to_class.get((c.attribute, values[0])) if len(values) == 1 else None
        if det_class is None:
            continue
        if c.image_url not in fetched:
            fetched[c.image_url] = _fetch_into(fetcher, c.image_url, image_dir)
        got = fetched[c.image_url]
        if got is not None:
            out.setdefault(got[0], []).append((det_class, list(c.box), c.mask))
    return out


def _samples_digest(samples: Sequence[Sample]) -> str:
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.sample_id):
        h.update(f"{s.sample_id}|{s.split_key}|{sorted(s.labels.items())}\n".encode())
    return h.hexdigest()
