"""The holdout: which products it holds (`HoldoutRule`), pinning that rule in the registry (`pin_holdout_rule`), and
scoring a bundle on it (`evaluate_on_holdout`) for the promotion gate.

The rule: a product is in the holdout iff `sha256("<salt>:<product id>")[:8] / 2**64 < fraction`, and only products
labelled by humans (the original set, corrections) are ever evaluated. The rule is pinned in the registry
(`holdout.json`) the first time it is used and a run with another rule is refused, so membership depends on the
product id alone and never changes: the holdout only grows, as newly audited products happen to fall in it. It is
never trained on (learner/lifecycle/corrections.py splits it off first).

Must not: train, read the database, register or promote (learner/lifecycle/retrain.py does), or read configuration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from learner.evaluation.detection import detection_map
from learner.evaluation.evaluate import compute_metrics, headline, predict
from learner.evaluation.gate import ProductScores, scores_from_rows
from learner.inference.engine import ImageTags, TaggingEngine, pick_device
from learner.lifecycle.errors import RetrainError
from learner.model.bundle import ModelBundle
from learner.training.data import Sample
from learner.training.dataset import ImageDataset
from learner.training.engine import amp_settings

HOLDOUT_FILE = "holdout.json"

Boxes = dict[Path, list[tuple[str, list[float]]]]  # image file -> objects annotators boxed: (detector class, xyxy)


@dataclass(frozen=True)
class HoldoutRule:
    """Holdout membership by product id (see the module docstring): `bucket(product) < fraction`."""

    salt: str = "shelfsight-holdout-v1"
    fraction: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"holdout fraction must be in (0, 1), not {self.fraction}")

    def bucket(self, product_id: str) -> float:
        digest = hashlib.sha256(f"{self.salt}:{product_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def contains(self, product_id: str) -> bool:
        return self.bucket(product_id) < self.fraction

    def describe(self) -> str:
        return f"product in holdout iff sha256('{self.salt}:' + product_id)[:8] / 2**64 < {self.fraction:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"salt": self.salt, "fraction": self.fraction, "rule": self.describe()}


def pin_holdout_rule(registry_root: Path, rule: HoldoutRule) -> HoldoutRule:
    """Record the rule in the registry on first use; refuse a different one later (the holdout must not move)."""
    path = Path(registry_root) / HOLDOUT_FILE
    if path.is_file():
        pinned = json.loads(path.read_text(encoding="utf-8"))
        if (pinned.get("salt"), float(pinned.get("fraction", -1))) != (rule.salt, rule.fraction):
            raise RetrainError(
                f"the holdout rule is pinned in {path} (salt {pinned.get('salt')!r}, fraction "
                f"{pinned.get('fraction')}); configured: salt {rule.salt!r}, fraction {rule.fraction}. Changing it "
                "would move products between training and holdout; set the pinned values in the learner settings"
            )
        return rule
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rule.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return rule


@dataclass
class HoldoutEvaluation:
    metrics: dict[str, Any]  # learner.evaluation.evaluate.compute_metrics on the holdout, at the bundle's thresholds
    scores: ProductScores  # per product and single-choice group, for the paired bootstrap
    images: int
    detection: dict[str, Any] | None = None  # mAP@[.5:.95] etc. when the bundle detects and boxes exist

    def summary(self) -> dict[str, Any]:
        """What is recorded: `learner.evaluation.evaluate.headline` figures plus detection mAP."""
        return {**headline(self.metrics), "detection": self.detection}


def evaluate_on_holdout(
    bundle: ModelBundle,
    samples: Sequence[Sample],
    device: str = "auto",
    batch_size: int = 64,
    boxes: Boxes | None = None,
) -> HoldoutEvaluation:
    """Metrics of a bundle on the holdout (its own preprocessing and thresholds: per group top-1, macro-F1,
    ECE, per-class figures), its per-product scores for the paired bootstrap, and detection mAP when the bundle
    has a detector and annotators boxed objects on holdout images (detections as the tagging engine serves
    them, i.e. above the detector's score threshold)."""
    if not samples:
        raise RetrainError("the holdout is empty: label more products or raise the holdout fraction")
    dev = pick_device(device)
    model = bundle.classifier.to(dev).eval()
    loader = DataLoader(ImageDataset(samples, bundle.taxonomy, model.preprocessing), batch_size=batch_size)
    amp_dtype, _ = amp_settings(dev, True)
    predictions = predict(model, loader, dev, amp_dtype)
    model.to("cpu")
    metrics = compute_metrics(predictions, bundle.thresholds)
    rows: list[tuple[str, str, int, int]] = []  # product, group, true and predicted class per image
    single = [g.name for g in bundle.taxonomy.classifier_groups if not g.multi_label]
    for name in single:
        pred = predictions[name]
        guessed = pred.probs.argmax(axis=1)
        for i, sample in enumerate(samples):
            if pred.targets[i] >= 0:
                rows.append((sample.split_key, name, int(pred.targets[i]), int(guessed[i])))
    scores = scores_from_rows(rows, single)
    if not np.isfinite(scores.correct).all():
        raise RetrainError("holdout scores are not finite")
    detection = None
    if boxes and bundle.detector is not None:
        engine = TaggingEngine(bundle, device=device)
        paths = sorted(boxes)
        tagged = engine.tag_bytes([p.read_bytes() for p in paths])
        predicted = [
            [(d.label, d.score, list(d.box)) for d in t.detections] if isinstance(t, ImageTags) else [] for t in tagged
        ]
        detection = detection_map(predicted, [boxes[p] for p in paths])
        bundle.detector.to("cpu")
        model.to("cpu")
    return HoldoutEvaluation(metrics, scores, len(samples), detection)
