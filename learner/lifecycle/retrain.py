"""Retraining on human corrections: assemble the data, fine-tune the champion, evaluate both on the holdout,
apply the gate, register the challenger and promote it only when it won. One call of `run_retraining` is one run.

Training data (`assemble_training_data`):
- the original labelled set (a `labels.csv` directory, see learner/training/data.py) plus every human correction read
  from the product database (`source = 'human'` rows only: the model's own unreviewed values never become
  labels). A correction's product and image become one sample whose corrected groups carry the annotator's
  value and whose other groups are *missing* (masked out of the loss), unless the original set has the same
  image, whose labels the correction then overrides group by group.
- deduplicated by (product id, image digest) and by image digest alone (the same photo under two products is
  kept once, the corrected one first): the digest is the SHA-256 of the image bytes.
- the holdout (`HoldoutRule`) is split off first and never trained on. The rest is split into train and
  validation (early stopping, thresholds) by product id with `learner.training.data.SplitRule`.
- replay: corrections the champion was not trained on (newer than those in its lineage) are all trained on; the
  older data (original set and corrections the champion already learned from) is replayed: a deterministic
  sample of `replay_ratio` times as many items, at least `replay_min_samples` (all of it when it is smaller),
  so the model does not forget what it knew.

The holdout rule (documented in `HoldoutRule`): a product is in the holdout iff
`sha256("<salt>:<product id>")[:8] / 2**64 < fraction`, and only products labelled by humans (the original
set, corrections) are ever evaluated. The rule is pinned in the registry (`holdout.json`) the first time it is
used and a run with another rule is refused, so membership depends on the product id alone and never changes:
the holdout only grows, as newly audited products happen to fall in it.

Fine-tuning (`fine_tune`) starts from the champion's weights with the recipe of `learner.training.train.TrainConfig`
(the first `freeze_stages` stages frozen, discriminative learning rates, AdamW, warm-up then cosine, EMA, early
stopping on validation, AMP on CUDA), reusing learner.training.train's building blocks (`train_one_epoch`,
`make_optimizer`, `make_scheduler`, `AttributeLoss`, `WeightAverage`) and learner.evaluation.evaluate's metrics and
best-F1 thresholds. Under
torchrun it runs data-parallel (learner/training/distributed.py); the epoch loop is written here rather than reusing
`learner.training.train.train` because it starts from a bundle and has to keep ranks in step (sampler epochs, one
early-stopping decision broadcast from rank 0, saving on rank 0).

The detector (`fine_tune_detector` in learner/training/detector.py, its recipe `RetrainConfig.detector`): when the
champion has one and annotators boxed objects on products outside the holdout (`training_boxes`: the same rule as
`holdout_boxes`), the challenger gets a copy fine-tuned on those boxes; otherwise the champion's detector goes on
unchanged. The figures (images, objects, skipped boxes, loss per epoch) are recorded in the challenger's lineage and
with the decision (`detector_training`); the gate rejects a challenger whose holdout mAP@[.5:.95] drops by more than
`GateConfig.max_detection_regression`.

What it must not do: read configuration (daemon/ passes a `RetrainConfig`), or promote without the gate.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from connectors.db.learner import DatabaseLock, HumanCorrection, LearnerStore
from connectors.images import FetchError, ImageFetcher
from learner.evaluation.evaluate import choose_thresholds, compute_metrics, headline, predict
from learner.evaluation.gate import GateConfig, GateDecision, ProductScores, decide, scores_from_rows
from learner.inference.engine import pick_device
from learner.lifecycle.registry import CHAMPION, ModelRegistry, RegistryError, read_alias_state
from learner.model.bundle import BundleError, ModelBundle, load_bundle
from learner.model.classifier import AttributeClassifier
from learner.model.taxonomy import Taxonomy
from learner.training import distributed
from learner.training.data import DataError, ImageDataset, Label, Sample, SplitRule, load_labelled_set
from learner.training.detector import DetectorRecipe, DetectorTrainingError, fine_tune_detector
from learner.training.train import (
    PRIMARY_METRIC,
    AttributeLoss,
    TrainConfig,
    WeightAverage,
    amp_settings,
    configure_threads,
    make_optimizer,
    make_scheduler,
    model_version,
    seed_everything,
    train_one_epoch,
)

log = logging.getLogger(__name__)

RUN_LOCK = "learner-retrain"
HOLDOUT_FILE = "holdout.json"
VAL_SALT = "shelfsight-retrain-val-v1"


class RetrainError(RuntimeError):
    """A run cannot go on; the message says why and what to do."""


# --- holdout ------------------------------------------------------------------------------------------


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


# --- configuration and results ------------------------------------------------------------------------


def default_recipe() -> TrainConfig:
    """The fine-tuning recipe: learner.training.train's, with a lower peak learning rate and fewer epochs (it starts
    from a trained model)."""
    return TrainConfig(epochs=8, lr=3e-4, warmup_epochs=0.5, patience=3, freeze_stages=3, progress=False)


@dataclass
class RetrainConfig:
    """Everything one run needs besides the database and the image fetcher (daemon/commands_learn.py builds it
    from `LearnerSettings`)."""

    registry: Path
    work_dir: Path
    base_data: Path | None = None  # the original labelled set (labels.csv + images/); None: corrections only
    base_group_column: str | None = None  # column of labels.csv holding the product id (default: image name)
    holdout: HoldoutRule = field(default_factory=HoldoutRule)
    val_fraction: float = 0.15
    min_corrections: int = 50  # products with new corrections needed for a run triggered by corrections
    replay_ratio: float = 4.0
    replay_min_samples: int = 1000
    recipe: TrainConfig = field(default_factory=default_recipe)
    detector: DetectorRecipe = field(default_factory=lambda: DetectorRecipe(progress=False))
    gate: GateConfig = field(default_factory=GateConfig)
    nproc_per_node: int = 1  # >1: torchrun with that many processes (one per GPU)
    eval_batch_size: int = 64


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
    holdout_boxes: dict[Path, list[tuple[str, list[float]]]] = field(default_factory=dict)  # image -> objects
    train_boxes: dict[Path, list[tuple[str, list[float]]]] = field(default_factory=dict)  # outside the holdout


@dataclass
class FineTuneResult:
    bundle: ModelBundle | None  # None on ranks other than 0
    history: list[dict[str, Any]]
    failure: str | None  # e.g. a non-finite loss: the gate rejects the challenger


@dataclass
class HoldoutEvaluation:
    metrics: dict[str, Any]  # learner.evaluation.evaluate.compute_metrics on the holdout, at the bundle's thresholds
    scores: ProductScores  # per product and single-choice group, for the paired bootstrap
    images: int
    detection: dict[str, Any] | None = None  # mAP@[.5:.95] etc. when the bundle detects and boxes exist

    def summary(self) -> dict[str, Any]:
        """What is recorded: `learner.evaluation.evaluate.headline` figures plus detection mAP."""
        return {**headline(self.metrics), "detection": self.detection}


@dataclass
class RunOutcome:
    """What one call of `run_retraining` did. `status`: promoted, rejected, failed, skipped, or locked (another
    learner holds the run lock; nothing was recorded)."""

    status: str
    run_id: int | None = None
    champion: str | None = None
    challenger: str | None = None
    decision: dict[str, Any] | None = None
    champion_holdout: dict[str, Any] | None = None
    challenger_holdout: dict[str, Any] | None = None
    message: str = ""
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- training data ------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        sample = Sample(sample_id=f"{product_id}@{digest[:12]}", image_path=path, split_key=product_id, labels=labels)
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


def _label(group: Any, value: str | list[str]) -> Label:
    if group.multi_label:
        values = [value] if isinstance(value, str) else list(value)
        if not values or any(v not in group.values for v in values):
            return None
        return tuple(sorted({group.index(v) for v in values}))
    if isinstance(value, list) or value not in group.values:
        return None
    return int(group.index(value))


def assemble_training_data(
    config: RetrainConfig,
    taxonomy: Taxonomy,
    corrections: Sequence[HumanCorrection],
    since: datetime | None,
    fetcher: ImageFetcher,
) -> TrainingData:
    """The run's train / val / holdout samples (see the module docstring for every rule)."""
    base: list[tuple[Sample, str]] = []
    base_summary: dict[str, Any] | None = None
    if config.base_data is not None:
        labelled = load_labelled_set(config.base_data, taxonomy, group_column=config.base_group_column)
        base = [(s, sha256_file(s.image_path)) for s in labelled.samples]
        base_summary = {**labelled.summary(), "csv_sha256": sha256_file(labelled.source)}
    fixed, skipped = correction_samples(corrections, taxonomy, fetcher, config.work_dir / "images")

    # merge: a correction overrides the original labels of the same (product, image), group by group
    merged: dict[tuple[str, str], Sample] = {(s.split_key, d): s for s, d in base}
    is_new: dict[tuple[str, str], bool] = dict.fromkeys(merged, False)
    for sample, digest, updated in fixed:
        key = (sample.split_key, digest)
        earlier = merged.get(key)
        if earlier is not None:
            labels = {g: (sample.labels[g] if sample.labels[g] is not None else v) for g, v in earlier.labels.items()}
            sample = dataclasses.replace(earlier, labels=labels)
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

    holdout = [s for s, _ in unique if config.holdout.contains(s.split_key)]
    pool = [(s, new) for s, new in unique if not config.holdout.contains(s.split_key)]
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
    boxes = holdout_boxes(corrections, taxonomy, config.holdout, fetcher, config.work_dir / "images")
    train_boxes = training_boxes(corrections, taxonomy, config.holdout, fetcher, config.work_dir / "images")
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
            **config.holdout.to_dict(),
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
    return TrainingData(taxonomy, train, val, holdout, snapshot, len(new), until, boxes, train_boxes)


def holdout_boxes(
    corrections: Sequence[HumanCorrection],
    taxonomy: Taxonomy,
    holdout: HoldoutRule,
    fetcher: ImageFetcher,
    image_dir: Path,
) -> dict[Path, list[tuple[str, list[float]]]]:
    """Objects annotators boxed on holdout products, as (detector class, [x1, y1, x2, y2]) per image.

    A box is a human value of a detector group (`source: detector` in the taxonomy) with a `box`: one object
    whose class is the detector class the taxonomy's `detector_mapping` maps to that value."""
    return _correction_boxes(corrections, taxonomy, holdout.contains, fetcher, image_dir)


def training_boxes(
    corrections: Sequence[HumanCorrection],
    taxonomy: Taxonomy,
    holdout: HoldoutRule,
    fetcher: ImageFetcher,
    image_dir: Path,
) -> dict[Path, list[tuple[str, list[float]]]]:
    """Objects annotators boxed on products outside the holdout (the detector's training data); the rule of
    `holdout_boxes` otherwise."""
    return _correction_boxes(corrections, taxonomy, lambda p: not holdout.contains(p), fetcher, image_dir)


def _correction_boxes(
    corrections: Sequence[HumanCorrection],
    taxonomy: Taxonomy,
    keep: Callable[[str], bool],
    fetcher: ImageFetcher,
    image_dir: Path,
) -> dict[Path, list[tuple[str, list[float]]]]:
    detector_groups = {g.name for g in taxonomy.groups if g.source == "detector"}
    to_class = {
        (group, value): det_class
        for det_class, attrs in taxonomy.detector_mapping.items()
        for group, value in attrs.items()
    }
    out: dict[Path, list[tuple[str, list[float]]]] = {}
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
            out.setdefault(got[0], []).append((det_class, list(c.box)))
    return out


def detection_map(
    predicted: Sequence[Sequence[tuple[str, float, Sequence[float]]]],
    targets: Sequence[Sequence[tuple[str, Sequence[float]]]],
) -> dict[str, Any]:
    """COCO mAP@[.5:.95], mAP@.5 and mAP@.75 (torchmetrics) of detections against boxed objects, per image:
    predictions (class, score, [x1, y1, x2, y2]) and targets (class, [x1, y1, x2, y2])."""
    from torchmetrics.detection import MeanAveragePrecision

    classes = sorted({c for t in targets for c, _ in t} | {c for p in predicted for c, _, _ in p})
    index = {c: i for i, c in enumerate(classes)}
    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy")
    preds = [
        {
            "boxes": torch.tensor([list(b) for _, _, b in p], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor([s for _, s, _ in p], dtype=torch.float32),
            "labels": torch.tensor([index[c] for c, _, _ in p], dtype=torch.int64),
        }
        for p in predicted
    ]
    truth = [
        {
            "boxes": torch.tensor([list(b) for _, b in t], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([index[c] for c, _ in t], dtype=torch.int64),
        }
        for t in targets
    ]
    metric.update(preds, truth)
    result = metric.compute()
    return {
        "map": round(float(result["map"]), 4),
        "map_50": round(float(result["map_50"]), 4),
        "map_75": round(float(result["map_75"]), 4),
        "images": len(targets),
        "objects": sum(len(t) for t in targets),
    }


def _samples_digest(samples: Sequence[Sample]) -> str:
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.sample_id):
        h.update(f"{s.sample_id}|{s.split_key}|{sorted(s.labels.items())}\n".encode())
    return h.hexdigest()


# --- fine-tuning --------------------------------------------------------------------------------------


class _UnwrappedAverage(WeightAverage):
    """`WeightAverage` of the module inside a DistributedDataParallel wrapper (same keys as the bundle)."""

    def update(self, model: torch.nn.Module) -> None:
        super().update(distributed.unwrap(model))


def fine_tune(
    champion: ModelBundle,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    recipe: TrainConfig,
    ctx: distributed.DistContext | None = None,
    lineage: dict[str, Any] | None = None,
) -> FineTuneResult:
    """Fine-tune a copy of the champion's classifier; rank 0 gets the challenger bundle (not saved)."""
    ctx = ctx or distributed.DistContext.single(recipe.device)
    if not train_samples or not val_samples:
        raise RetrainError(
            f"nothing to fine-tune on: {len(train_samples)} training and {len(val_samples)} validation images"
        )
    started = time.time()
    device = ctx.device
    threads = configure_threads(device, recipe.threads)
    seed_everything(recipe.seed)
    taxonomy = champion.taxonomy
    model: AttributeClassifier = copy.deepcopy(champion.classifier)
    if not 0 <= recipe.freeze_stages <= model.num_stages:
        raise RetrainError(f"freeze_stages must be between 0 and {model.num_stages} for {model.backbone_name}")
    model.freeze_stages(recipe.freeze_stages)
    model.to(device).to(memory_format=torch.channels_last)
    pre = model.preprocessing
    wrapped = distributed.wrap(model, ctx)

    train_ds = ImageDataset(
        train_samples, taxonomy, pre, recipe.augmentation(pre.pad_value if pre.letterbox else 0), seed=recipe.seed
    )
    val_ds = ImageDataset(val_samples, taxonomy, pre)
    sampler = distributed.make_sampler(train_ds, ctx, seed=recipe.seed)
    per_rank_batch = max(1, recipe.batch_size // ctx.world_size)
    workers = recipe.workers if recipe.workers is not None else (4 if device.type == "cuda" else 0)
    train_loader = DataLoader(
        train_ds, batch_size=per_rank_batch, sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda"
    )
    val_loader = DataLoader(val_ds, batch_size=recipe.batch_size * 2, num_workers=workers)
    loss_fn = AttributeLoss(taxonomy, list(train_samples), recipe.label_smoothing, recipe.class_weight_power)
    loss_fn.to(device)
    optimizer = make_optimizer(model, recipe)
    steps = len(train_loader)
    scheduler = make_scheduler(
        optimizer,
        warmup_steps=max(1, round(recipe.warmup_epochs * steps)),
        total_steps=recipe.epochs * steps,
        min_lr_ratio=recipe.min_lr_ratio,
    )
    amp_dtype, scaler = amp_settings(device, recipe.amp)
    ema = _UnwrappedAverage(model, recipe.ema_decay) if recipe.ema_decay > 0 else None

    history: list[dict[str, Any]] = []
    failure: str | None = None
    best_score, best_epoch = -math.inf, 0
    best_state: dict[str, torch.Tensor] | None = None
    progress = recipe.progress and ctx.is_main
    for epoch in range(1, recipe.epochs + 1):
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        stats = train_one_epoch(
            wrapped,  # type: ignore[arg-type]  # a DDP wrapper exposing .preprocessing, or the model itself
            train_loader,
            loss_fn,
            optimizer,
            scheduler,
            device,
            epoch,
            amp_dtype,
            scaler,
            ema,
            progress,
        )
        loss = distributed.mean_across_ranks(stats["loss"], ctx)
        selected = ema.module if ema is not None else model
        score = None
        if math.isfinite(loss) and ctx.is_main:
            val = compute_metrics(predict(selected, val_loader, device, amp_dtype))  # type: ignore[arg-type]
            score = val["summary"][PRIMARY_METRIC]
        score = distributed.broadcast_from_main(score, ctx)
        history.append({"epoch": epoch, "loss": round(loss, 5), "val_" + PRIMARY_METRIC: score})
        log.info("epoch %d/%d loss %.4f val %s %s", epoch, recipe.epochs, loss, PRIMARY_METRIC, score)
        if not math.isfinite(loss):
            failure = f"training loss is not finite ({loss}) in epoch {epoch}"
            break
        assert score is not None
        if score > best_score:
            best_score, best_epoch = score, epoch
            if ctx.is_main:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in selected.state_dict().items()}
        elif recipe.patience and epoch - best_epoch >= recipe.patience:
            log.info("early stop: no validation improvement for %d epochs (best %d)", recipe.patience, best_epoch)
            break

    if not ctx.is_main:
        return FineTuneResult(None, history, failure)
    if failure is not None or best_state is None:
        return FineTuneResult(None, history, failure or "no epoch produced a usable model")
    model.load_state_dict(best_state)
    if not all(torch.isfinite(v).all() for v in best_state.values() if v.dtype.is_floating_point):
        return FineTuneResult(None, history, "the fine-tuned weights are not finite")
    model.eval()
    val_predictions = predict(model, val_loader, device, amp_dtype)
    thresholds, defaulted = choose_thresholds(val_predictions)
    validation = compute_metrics(val_predictions, thresholds)
    model.to("cpu").to(memory_format=torch.contiguous_format)
    bundle = ModelBundle(
        model_version=model_version(taxonomy, model.backbone_name, model),
        taxonomy=taxonomy,
        classifier=model,
        detector=champion.detector,  # not fine-tuned here: the champion's detector goes on unchanged
        detector_spec=champion.detector_spec,
        thresholds=thresholds,
        metrics={
            "primary_metric": f"{PRIMARY_METRIC} (mean over single-choice groups of top-1 accuracy)",
            "validation": headline(validation),
        },
        lineage={
            "parent": champion.model_version,
            **(lineage or {}),
            "recipe": recipe.to_dict(),
            "fine_tuned_from": champion.model_version,
            "world_size": ctx.world_size,
            "device": str(device),
            "threads": threads,
            "torch": torch.__version__,
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "history": history,
            "thresholds_defaulted": defaulted,
            "elapsed_s": round(time.time() - started, 1),
        },
    )
    return FineTuneResult(bundle, history, None)


# --- holdout evaluation -------------------------------------------------------------------------------


def evaluate_on_holdout(
    bundle: ModelBundle,
    samples: Sequence[Sample],
    device: str = "auto",
    batch_size: int = 64,
    boxes: dict[Path, list[tuple[str, list[float]]]] | None = None,
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
    rows: list[tuple[str, str, bool]] = []
    single = [g.name for g in bundle.taxonomy.classifier_groups if not g.multi_label]
    for name in single:
        pred = predictions[name]
        guessed = pred.probs.argmax(axis=1)
        for i, sample in enumerate(samples):
            if pred.targets[i] >= 0:
                rows.append((sample.split_key, name, bool(guessed[i] == pred.targets[i])))
    scores = scores_from_rows(rows, single)
    if not np.isfinite(scores.correct).all():
        raise RetrainError("holdout scores are not finite")
    detection = None
    if boxes and bundle.detector is not None:
        from learner.inference.engine import ImageTags, TaggingEngine

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


# --- one run ------------------------------------------------------------------------------------------


def run_retraining(
    config: RetrainConfig,
    learner_store: LearnerStore,
    fetcher: ImageFetcher,
    reason: str = "manual",
    force: bool = False,
    on_phase: Callable[[str], None] | None = None,
) -> RunOutcome:
    """One retraining run under the database run lock (see the module docstring). Without `force`, a run with
    no correction newer than the last completed (promoted or rejected) run's, or for `reason` 'corrections' fewer
    than `min_corrections` of them, is recorded as skipped. Exceptions after the run is recorded become a 'failed'
    run; the champion only ever changes in the last step (an atomic alias update), so a crash anywhere leaves it
    as it was."""
    started = time.time()
    lock = DatabaseLock(learner_store.store, RUN_LOCK)
    if not lock.try_acquire():
        return RunOutcome("locked", message="another learner process is retraining; nothing to do")
    registry = ModelRegistry(config.registry)
    run_id: int | None = None
    try:
        removed = registry.remove_orphans()
        if removed:
            log.warning("removed %d files left by an interrupted run: %s", len(removed), [p.name for p in removed])
        _clean_work_dir(config.work_dir)
        champion_version = read_alias_state(config.registry).version(CHAMPION)
        run_id, abandoned = learner_store.start_run(reason, champion_version)
        if abandoned:
            log.warning("%d earlier run(s) were still marked running: recorded as abandoned", abandoned)
        outcome = _run(
            config, learner_store, fetcher, registry, lock, run_id, champion_version, reason, force, on_phase
        )
    except Exception as exc:
        expected = RegistryError | RetrainError | DataError | BundleError | DetectorTrainingError
        if isinstance(exc, expected):  # expected: the message says it
            log.error("retraining run %s failed: %s", run_id, exc)
        else:
            log.exception("retraining run %s failed", run_id)
        outcome = RunOutcome("failed", run_id=run_id, message=f"{type(exc).__name__}: {exc}")
        if run_id is not None:
            learner_store.finish_run(run_id, "failed", detail={"error": outcome.message})
    finally:
        lock.release()
    outcome.duration_s = round(time.time() - started, 2)
    return outcome


def _run(
    config: RetrainConfig,
    learner_store: LearnerStore,
    fetcher: ImageFetcher,
    registry: ModelRegistry,
    lock: DatabaseLock,
    run_id: int,
    champion_version: str | None,
    reason: str,
    force: bool,
    on_phase: Callable[[str], None] | None,
) -> RunOutcome:
    phase = on_phase or (lambda _name: None)
    if champion_version is None:
        raise RegistryError(
            f"the registry {config.registry} has no champion to fine-tune; register one first: "
            "`shelfsight models register BUNDLE --promote`"
        )
    pin_holdout_rule(config.registry, config.holdout)
    champion = load_bundle(registry.resolve(CHAMPION))
    last = learner_store.last_completed_run()
    since = last.corrections_until if last is not None else None
    corrections = learner_store.human_corrections()
    new_rows = len({c.product_id for c in corrections if since is None or c.updated_at > since})
    needed = 1 if reason != "corrections" else config.min_corrections
    if not force and new_rows < needed:
        message = f"{new_rows} new correction(s) since the last run (counted by product), {needed} needed"
        learner_store.finish_run(run_id, "skipped", detail={"message": message})
        return RunOutcome("skipped", run_id=run_id, champion=champion_version, message=message)

    phase("data")
    # "new" for the replay rule: corrections the champion has not learned from (a rejected run's are still new)
    data = assemble_training_data(config, champion.taxonomy, corrections, champion_data_until(champion), fetcher)
    run_dir = config.work_dir / "runs" / str(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    lineage = {"data": data.snapshot, "split": data.snapshot["val_split"], "holdout": config.holdout.to_dict()}
    lineage["run_id"] = run_id

    phase("train")
    challenger, failure = _train(config, champion, data, run_dir, lineage)
    detector_training = None
    if challenger is not None:
        detector_training, detector_failure = _train_detector(config, champion, challenger, data)
        failure = failure or detector_failure

    phase("evaluate")
    champion_eval = challenger_eval = None
    try:
        device, batch = config.recipe.device, config.eval_batch_size
        champion_eval = evaluate_on_holdout(champion, data.holdout, device, batch, data.holdout_boxes)
        if challenger is not None:
            challenger_eval = evaluate_on_holdout(challenger, data.holdout, device, batch, data.holdout_boxes)
    except Exception as exc:  # a failed evaluation means rejection, with the reason recorded
        log.exception("holdout evaluation failed")
        failure = failure or f"evaluation failed: {type(exc).__name__}: {exc}"
    decision = decide(
        champion_eval.metrics if champion_eval else None,
        challenger_eval.metrics if challenger_eval else None,
        champion_eval.scores if champion_eval else None,
        challenger_eval.scores if challenger_eval else None,
        config.gate,
        failure=failure,
        champion_detection=champion_eval.detection if champion_eval else None,
        challenger_detection=challenger_eval.detection if challenger_eval else None,
    )
    record = _decision_record(
        decision, champion_version, champion_eval, challenger_eval, data, run_id, detector_training
    )

    phase("register")
    if not lock.held():
        raise RetrainError(
            "the run lock was lost during the run (database connection or lease gone), so another learner may be "
            "running: nothing registered or promoted; the next run starts over"
        )
    current = read_alias_state(config.registry).version(CHAMPION)
    if decision.promote and current != champion_version:
        decision.promote = False
        decision.reasons.append(f"the champion changed during the run ({champion_version} -> {current}): not promoted")
        record = _decision_record(
            decision, champion_version, champion_eval, challenger_eval, data, run_id, detector_training
        )
    challenger_version = None
    if challenger is not None:
        challenger.metrics["holdout"] = challenger_eval.summary() if challenger_eval else None
        challenger.lineage["gate"] = decision.to_dict()
        path = challenger.save(run_dir / "challenger.safetensors")
        registry.register(path, run_id=run_id, status=decision.outcome, holdout=challenger.metrics["holdout"])
        challenger_version = challenger.model_version
        registry.record_decision(challenger_version, record)
        if decision.promote:
            registry.promote(challenger_version, reason=decision.summary(), actor=f"learner run {run_id}")
    else:
        registry.record_decision(f"run-{run_id}-no-challenger", record)
    learner_store.finish_run(
        run_id,
        decision.outcome,
        challenger_version=challenger_version,
        corrections_used=len(corrections),
        corrections_until=data.corrections_until,
        detail=record,
    )
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("run %d: %s", run_id, decision.summary())
    return RunOutcome(
        decision.outcome,
        run_id=run_id,
        champion=champion_version,
        challenger=challenger_version,
        decision=record,
        champion_holdout=record.get("champion_holdout"),
        challenger_holdout=record.get("challenger_holdout"),
        message=decision.summary(),
    )


def champion_data_until(bundle: ModelBundle) -> datetime | None:
    """The newest human correction the bundle was trained on (None: none, e.g. the first champion)."""
    until = ((bundle.lineage.get("data") or {}).get("corrections") or {}).get("until")
    return datetime.fromisoformat(until) if until else None


def _train(
    config: RetrainConfig, champion: ModelBundle, data: TrainingData, run_dir: Path, lineage: dict[str, Any]
) -> tuple[ModelBundle | None, str | None]:
    """Fine-tune in this process, or with torchrun when `nproc_per_node` > 1. (challenger, failure)."""
    if config.nproc_per_node <= 1:
        result = fine_tune(champion, data.train, data.val, config.recipe, lineage=lineage)
        return result.bundle, result.failure
    plan = distributed.TrainingPlan(
        champion=str(run_dir / "champion.safetensors"),
        out=str(run_dir / "challenger.safetensors"),
        failure_file=str(run_dir / "failure.txt"),
        train=[distributed.sample_to_dict(s) for s in data.train],
        val=[distributed.sample_to_dict(s) for s in data.val],
        recipe=config.recipe.to_dict(),
        lineage=lineage,
    )
    champion.save(plan.champion)
    plan_path = plan.write(run_dir / "plan.json")
    command = distributed.torchrun_command(plan_path, config.nproc_per_node)
    log.info("training with %d processes: %s", config.nproc_per_node, " ".join(command))
    done = subprocess.run(command, check=False)
    failure_file = Path(plan.failure_file)
    if failure_file.exists():
        return None, failure_file.read_text(encoding="utf-8").strip()
    if done.returncode != 0 or not Path(plan.out).exists():
        return None, f"distributed training exited with status {done.returncode}"
    return load_bundle(plan.out), None


def _train_detector(
    config: RetrainConfig, champion: ModelBundle, challenger: ModelBundle, data: TrainingData
) -> tuple[dict[str, Any], str | None]:
    """Give the challenger a detector fine-tuned on the boxes of training products when the champion has a detector
    and annotators boxed objects the detector knows; otherwise it keeps the champion's (as `fine_tune` left it).
    Returns the figures to record (in the challenger's lineage too) and a failure that rejects the challenger."""
    if champion.detector is None or champion.detector_spec is None:
        figures: dict[str, Any] = {"fine_tuned": False, "reason": "the champion has no detector"}
    elif not data.train_boxes:
        figures = {"fine_tuned": False, "reason": "no boxed objects on products outside the holdout"}
    else:
        result = fine_tune_detector(champion.detector, champion.detector_spec, data.train_boxes, config.detector)
        figures = {"fine_tuned": result.detector is not None, **result.figures}
        if result.detector is not None:
            challenger.detector, challenger.detector_spec = result.detector, result.spec
        else:
            figures["reason"] = result.failure
            if result.figures["images"] > 0:  # it trained and failed (a non-finite loss): the challenger is rejected
                challenger.lineage["detector"] = figures
                return figures, f"detector fine-tuning failed: {result.failure}"
            # boxes, but none of a class the detector knows: as without boxes
    challenger.lineage["detector"] = figures
    if figures["fine_tuned"]:
        log.info("detector fine-tuned on %d boxed objects in %d images", figures["objects"], figures["images"])
    return figures, None


def _decision_record(
    decision: GateDecision,
    champion_version: str,
    champion_eval: HoldoutEvaluation | None,
    challenger_eval: HoldoutEvaluation | None,
    data: TrainingData,
    run_id: int,
    detector_training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "champion": champion_version,
        **decision.to_dict(),
        "champion_holdout": champion_eval.summary() if champion_eval else None,
        "challenger_holdout": challenger_eval.summary() if challenger_eval else None,
        "holdout_images": champion_eval.images if champion_eval else len(data.holdout),
        "detector_training": detector_training,
        "data": data.snapshot,
    }


def _clean_work_dir(work_dir: Path) -> None:
    """Per-run directories of earlier runs (a crash leaves them): no run is active while we hold the lock."""
    runs = work_dir / "runs"
    if runs.is_dir():
        for child in runs.iterdir():
            shutil.rmtree(child, ignore_errors=True)


def recipe_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Inverse of `TrainConfig.to_dict` (for the torchrun workers)."""
    d = dict(d)
    split = d.pop("split", None)
    d.pop("progress", None)
    if split is not None:
        d["split"] = SplitRule.from_dict(split)
    if isinstance(d.get("scale"), list):
        d["scale"] = tuple(d["scale"])
    return TrainConfig(**d, progress=False)


__all__ = [
    "DataError",
    "FineTuneResult",
    "HoldoutEvaluation",
    "HoldoutRule",
    "RetrainConfig",
    "RetrainError",
    "RunOutcome",
    "TrainingData",
    "assemble_training_data",
    "evaluate_on_holdout",
    "fine_tune",
    "pin_holdout_rule",
    "run_retraining",
    "training_boxes",
]
