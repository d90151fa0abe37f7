"""The holdout: which products it holds (`HoldoutRule`, and `EffectiveHoldout` for one run), pinning the rule and
recording every run's threshold in the registry (`pin_holdout_rule`, `holdout_ceiling`, `record_holdout_threshold`),
and scoring a bundle on it (`evaluate_on_holdout`) for the promotion gate.

The rule: a fixed share of the labelled products, with a floor and a cap, chosen by product id alone. Each product
has a bucket `sha256("<salt>:<product id>")[:8] / 2**64` in [0, 1); a run's holdout is the labelled products (the
original set and human corrections; only those are ever evaluated) whose bucket is below the run's threshold `t`:

    t = min(ceiling, clamp(fraction, t_floor, t_cap))

- `fraction`: the share (the bucket of a product is uniform, so about `fraction` of the products fall below it);
- `t_floor`: just above the `min_products`-th smallest bucket of the run's labelled products, so the holdout holds at
  least `min_products` of them (but the floor never takes more than half of the labelled products, or nothing
  would be left to train on);
- `t_cap`: the `(max_products + 1)`-th smallest bucket, so it holds at most `max_products`;
- `ceiling`: the lowest threshold any earlier run used, recorded in the registry (`holdout.json`).

The design constraint: **a product that was ever trained on must never enter the holdout**, or a challenger would be
scored on what its ancestors learned. Every product outside a run's holdout (bucket >= that run's `t`) may be
trained on by it; because `t` never rises (the ceiling), that product's bucket stays >= every later `t`, so it
never enters a later holdout. As labelled data grows the floor and cap lower `t`: products only ever *leave* the
holdout (into training), and new products with a bucket below the current `t` join it. Without floor or cap
(`min_products` 0, no `max_products`), `t` is `fraction` for ever, the rule of earlier versions.

Comparability: champion and challenger are always evaluated on the same current holdout, paired product by
product (learner/evaluation/bootstrap.py), so the gate never compares figures from two different holdouts. The
figures stored with each decision carry the holdout they were measured on (threshold, labelled products, holdout
products and images): figures of earlier champions are comparable with each other where those agree, and every
champion can be re-scored on today's holdout (`shelfsight evaluate`), which none of them trained on.

Pinned: the salt and fraction are pinned in the registry (`holdout.json`) the first time they are used and a run with
others is refused (they would move products between training and holdout). The floor and cap may change: the
ceiling keeps the threshold from rising anyway. A registry pinned before thresholds were recorded is read with the
fraction as its ceiling (those runs held out exactly `bucket < fraction`). It is never trained on
(learner/lifecycle/corrections.py splits it off first, with the same `EffectiveHoldout`).

Must not: train, read the database, register or promote (learner/lifecycle/retrain.py does), or read configuration.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from learner.datasets.images import ImageDataset
from learner.datasets.labelled import Sample
from learner.evaluation.detector_eval import evaluate_detector
from learner.evaluation.evaluate import compute_metrics, headline, predict
from learner.evaluation.gate import ProductScores, scores_from_rows
from learner.inference.decoding import ValueDecoder
from learner.inference.engine import pick_device
from learner.inference.product_decision import decide_products
from learner.lifecycle.errors import RetrainError
from learner.model.bundle import ModelBundle
from learner.model.title_model import named_groups
from learner.training.runtime import amp_settings

HOLDOUT_FILE = "holdout.json"
HOLDOUT_FORMAT = 2  # 2: thresholds recorded per run; files without "format" predate them (ceiling = fraction)
FLOOR_SHARE_LIMIT = 0.5  # the floor never holds out more than this share of the labelled products
RECORDED_RUNS = 500  # runs kept in holdout.json (the ceiling is kept apart, so dropping old entries loses nothing)

# image file -> objects annotators boxed: (detector class, xyxy) or (detector class, xyxy, mask as COCO RLE or None)
Boxes = dict[Path, list[tuple[str, list[float]] | tuple[str, list[float], dict[str, Any] | None]]]


@dataclass(frozen=True)
class HoldoutRule:
    """Holdout membership by product id (see the module docstring): a share `fraction` of the labelled products,
    at least `min_products` and at most `max_products` (None: no cap) of them."""

    salt: str = "shelfsight-holdout-v1"
    fraction: float = 0.2
    min_products: int = 0
    max_products: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"holdout fraction must be in (0, 1), not {self.fraction}")
        if self.min_products < 0:
            raise ValueError(f"holdout min_products must be >= 0, not {self.min_products}")
        if self.max_products is not None and self.max_products < max(1, self.min_products):
            raise ValueError(
                f"holdout max_products ({self.max_products}) must be >= 1 and >= min_products ({self.min_products})"
            )

    def bucket(self, product_id: str) -> float:
        digest = hashlib.sha256(f"{self.salt}:{product_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def contains(self, product_id: str) -> bool:
        """Below the fraction alone, before floor, cap and ceiling; a run's holdout is `effective(...).contains`."""
        return self.bucket(product_id) < self.fraction

    def threshold(self, product_ids: Iterable[str], ceiling: float | None = None) -> float:
        """The threshold for these labelled products: `min(ceiling, clamp(fraction, t_floor, t_cap))` (see the
        module docstring). Pure: the same products and ceiling always give the same threshold."""
        buckets = sorted({self.bucket(p) for p in product_ids})
        t = self.fraction
        floor = min(self.min_products, math.floor(FLOOR_SHARE_LIMIT * len(buckets)))
        if floor > 0:
            t = max(t, math.nextafter(buckets[floor - 1], math.inf))  # the floor-th smallest bucket is below t
        if self.max_products is not None and len(buckets) > self.max_products:
            t = min(t, buckets[self.max_products])  # exactly max_products buckets are below t
        if ceiling is not None:
            t = min(t, ceiling)
        return t

    def effective(self, product_ids: Iterable[str], ceiling: float | None = None) -> EffectiveHoldout:
        """One run's holdout over its labelled products, never above `ceiling` (`holdout_ceiling` of the registry)."""
        ids = set(product_ids)
        t = self.threshold(ids, ceiling)
        return EffectiveHoldout(self, t, len(ids), sum(1 for p in ids if self.bucket(p) < t), ceiling)

    def describe(self) -> str:
        cap = "no cap" if self.max_products is None else f"at most {self.max_products} products"
        return (
            f"product in holdout iff sha256('{self.salt}:' + product_id)[:8] / 2**64 < t; t = {self.fraction:g} "
            f"raised to hold at least {self.min_products} products (at most {FLOOR_SHARE_LIMIT:g} of those "
            f"labelled), lowered to hold {cap}, never above an earlier run's t"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "salt": self.salt,
            "fraction": self.fraction,
            "min_products": self.min_products,
            "max_products": self.max_products,
            "rule": self.describe(),
        }


@dataclass(frozen=True)
class EffectiveHoldout:
    """The holdout of one run: its rule at the threshold in force for the run's labelled products."""

    rule: HoldoutRule
    threshold: float
    labelled_products: int  # the run's labelled products (original set + corrections, deduplicated)
    products: int  # of those, the ones in the holdout
    ceiling: float | None = None  # the lowest threshold of earlier runs (None: no run recorded one)

    def contains(self, product_id: str) -> bool:
        return self.rule.bucket(product_id) < self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.rule.to_dict(),
            "threshold": self.threshold,
            "ceiling": self.ceiling,
            "labelled_products": self.labelled_products,
            "products": self.products,
        }


def pin_holdout_rule(registry_root: Path, rule: HoldoutRule) -> HoldoutRule:
    """Record the rule in the registry on first use; refuse another salt or fraction later (the holdout must not
    move). A changed floor or cap is recorded: the ceiling keeps the threshold from rising anyway."""
    path = Path(registry_root) / HOLDOUT_FILE
    if path.is_file():
        pinned = json.loads(path.read_text(encoding="utf-8"))
        if (pinned.get("salt"), float(pinned.get("fraction", -1))) != (rule.salt, rule.fraction):
            raise RetrainError(
                f"the holdout rule is pinned in {path} (salt {pinned.get('salt')!r}, fraction "
                f"{pinned.get('fraction')}); configured: salt {rule.salt!r}, fraction {rule.fraction}. Changing it "
                "would move products between training and holdout; set the pinned values in the learner settings"
            )
        ceiling = _ceiling_of(pinned)
        runs = list(pinned.get("runs") or [])
        if pinned.get("format") == HOLDOUT_FORMAT and _same_limits(pinned, rule):
            return rule
    else:
        ceiling, runs = None, []
    _write_json(path, {**rule.to_dict(), "format": HOLDOUT_FORMAT, "threshold": ceiling, "runs": runs})
    return rule


def holdout_ceiling(registry_root: Path) -> float | None:
    """The lowest threshold any run recorded in the registry (None: none yet): no later run may exceed it."""
    path = Path(registry_root) / HOLDOUT_FILE
    if not path.is_file():
        return None
    return _ceiling_of(json.loads(path.read_text(encoding="utf-8")))


def record_holdout_threshold(registry_root: Path, holdout: EffectiveHoldout, run_id: int | None) -> None:
    """Record the threshold a run used before it trains on anything outside its holdout: it becomes the ceiling of
    every later run. Refuses a threshold above the ceiling (it would let trained-on products into the holdout)."""
    path = Path(registry_root) / HOLDOUT_FILE
    if not path.is_file():
        raise RetrainError(f"{path} is missing: pin the holdout rule (pin_holdout_rule) before recording a threshold")
    pinned = json.loads(path.read_text(encoding="utf-8"))
    ceiling = _ceiling_of(pinned)
    if ceiling is not None and holdout.threshold > ceiling:
        raise RetrainError(
            f"holdout threshold {holdout.threshold!r} is above the ceiling {ceiling!r} recorded in {path}: products "
            "earlier runs trained on would enter the holdout"
        )
    entry = {
        "run_id": run_id,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "threshold": holdout.threshold,
        "labelled_products": holdout.labelled_products,
        "products": holdout.products,
    }
    runs = [*(pinned.get("runs") or []), entry][-RECORDED_RUNS:]
    _write_json(path, {**pinned, "format": HOLDOUT_FORMAT, "threshold": holdout.threshold, "runs": runs})


def _ceiling_of(pinned: dict[str, Any]) -> float | None:
    if pinned.get("format") != HOLDOUT_FORMAT:  # pinned before thresholds were recorded: runs used the fraction
        return float(pinned["fraction"])
    threshold = pinned.get("threshold")
    return None if threshold is None else float(threshold)


def _same_limits(pinned: dict[str, Any], rule: HoldoutRule) -> bool:
    return (pinned.get("min_products"), pinned.get("max_products")) == (rule.min_products, rule.max_products)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


@dataclass
class HoldoutEvaluation:
    metrics: dict[str, Any]  # learner.evaluation.evaluate.compute_metrics on the holdout, at the bundle's thresholds
    scores: ProductScores  # per product and single-choice group, for the paired bootstrap
    images: int
    detection: dict[str, Any] | None = None  # mAP@[.5:.95] etc. when the bundle detects and boxes exist
    titles_read: int = 0  # holdout products whose `scores` are the values served from photos and title together
    served_top1: dict[str, float] | None = None  # per group, top-1 of those served values (None: photos only)

    def summary(self) -> dict[str, Any]:
        """What is recorded: `learner.evaluation.evaluate.headline` figures (the photos alone) plus detection mAP,
        and, for a bundle that reads titles, how many holdout titles it read and the top-1 of what it serves."""
        out = {**headline(self.metrics), "detection": self.detection}
        if self.served_top1 is not None:
            out["served"] = {"titles_read": self.titles_read, "top1": self.served_top1}
        return out


def evaluate_on_holdout(
    bundle: ModelBundle,
    samples: Sequence[Sample],
    device: str = "auto",
    batch_size: int = 64,
    boxes: Boxes | None = None,
) -> HoldoutEvaluation:
    """Metrics of a bundle on the holdout (its own preprocessing and thresholds: per group top-1, macro-F1,
    ECE, per-class figures), its per-product scores for the paired bootstrap, and detection mAP and the IoU-sweep
    score when the bundle has a detector and annotators boxed objects on holdout images (detections as the tagging
    engine serves them, i.e. above the detector's score threshold); for a mask detector also mask mAP and the mask
    IoU sweep, on the images whose every object was outlined with a mask."""
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
    served = served_choices(bundle, predictions, [s.title for s in samples])
    served_top1: dict[str, float] | None = {} if served is not None else None
    for name in single:
        pred = predictions[name]
        guessed = served[name] if served is not None else pred.probs.argmax(axis=1)
        known = pred.targets >= 0
        if served_top1 is not None and known.any():
            served_top1[name] = round(float((guessed[known] == pred.targets[known]).mean()), 4)
        for i, sample in enumerate(samples):
            if pred.targets[i] >= 0:
                rows.append((sample.split_key, name, int(pred.targets[i]), int(guessed[i])))
    scores = scores_from_rows(rows, single)
    if not np.isfinite(scores.correct).all():
        raise RetrainError("holdout scores are not finite")
    detection = None
    if boxes and bundle.detector is not None:
        detection = evaluate_detector(bundle, boxes, device)
    titles_read = sum(1 for s in samples if s.title and s.title.strip()) if served is not None else 0
    return HoldoutEvaluation(metrics, scores, len(samples), detection, titles_read, served_top1)


def served_choices(
    bundle: ModelBundle, predictions: Mapping[str, Any], titles: Sequence[str | None]
) -> dict[str, np.ndarray] | None:
    """Per single-choice group, the value index a bundle that reads titles serves for each holdout image: its photo
    probabilities calibrated and decided together with the title as the writer decides a product
    (`learner.inference.product_decision.decide_products`; an image without a title gets the photos' decision).
    None when the bundle reads no titles (no title model or no fusion) or no holdout product has one: its photos
    alone are then judged, by their raw arg-max as before. The gate so judges a retrained title model and fusion,
    not only the image model beside them."""
    title_model, fusion = bundle.title_model, bundle.fusion
    if title_model is None or fusion is None or not any(t and t.strip() for t in titles):
        return None
    decoder = ValueDecoder.for_bundle(bundle)
    photos = decoder({g.name: np.asarray(predictions[g.name].probs) for g in decoder.groups})
    texts = [t or "" for t in titles]
    decided = decide_products(
        photos.probs,
        title_model.probabilities(texts),
        decoder,
        fusion,
        title_model.autofill_thresholds,
        named_groups(texts, bundle.taxonomy),
    )
    return {name: np.asarray(chosen) for name, chosen in decided.chosen.items()}
