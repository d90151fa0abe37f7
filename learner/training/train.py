"""First training: an `AttributeClassifier` from pretrained backbone weights on a labelled set, saved as a bundle.

`train` wires the pieces in the style of torchvision's detection references: the data and loaders here, the epoch
loop and its setup in learner/training/engine.py (`fit`, `Optimization`, `EarlyStopping`), the loss in
learner/training/loss.py, the recipe in learner/training/recipe.py (`TrainConfig`, every field documented there).

The recipe: the first `freeze_stages` backbone stages are frozen (weights and batch-norm statistics); discriminative
learning rates (heads get `lr`, each earlier stage `backbone_lr_decay` times less); AdamW with linear warm-up then
cosine decay; optional progressive resizing (`TrainConfig.sizes`: early epochs on downscaled batches, the last phase
and validation at the input size); per group cross-entropy with label smoothing and tempered class weights (inverse
frequency ** `class_weight_power`), BCE for multi-label groups; samples whose label is missing are masked out of
that group's loss; attribute-safe augmentation (no hue/saturation jitter, see
`learner.datasets.augmentation.Augmentation`);
an exponential moving average of the weights (EMA) is what gets evaluated and saved; early stopping on the
validation split; a non-finite training loss stops training with a `TrainingError`.

Model selection uses only the validation split: the primary metric is the mean over single-choice
groups of top-1 accuracy (`PRIMARY_METRIC`); per-class thresholds are the best-F1 points on validation.
The test split is evaluated once, after training, for the bundle's metrics and the report.

This module does not parse command lines (see `daemon/commands_train.py`) and keeps no global state.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from learner.datasets.images import ImageDataset
from learner.datasets.labelled import DataError, LabelledSet
from learner.evaluation.evaluate import bundle_metrics, headline, predict
from learner.inference.engine import pick_device
from learner.model.bundle import ModelBundle
from learner.model.classifier import AttributeClassifier
from learner.model.manifest import file_sha256
from learner.model.taxonomy import Taxonomy
from learner.training.engine import (
    PRIMARY_METRIC,
    EarlyStopping,
    EpochResult,
    Optimization,
    TrainingError,
    configure_threads,
    fit,
    prepare_model,
    seed_everything,
    validate_selected,
)
from learner.training.loss import AttributeLoss
from learner.training.recipe import TrainConfig


@dataclass
class TrainResult:
    bundle: ModelBundle
    bundle_path: Path
    validation: dict[str, Any]  # full metrics on the validation split, of the calibrated bundle
    test: dict[str, Any] | None  # full metrics on the test split, of the calibrated bundle (None when not evaluated)
    history: list[dict[str, Any]]
    elapsed_s: float


def train(
    config: TrainConfig,
    data: LabelledSet,
    out: str | Path,
    evaluate_test: bool = True,
) -> TrainResult:
    """Fine-tune on the train split, select on val, evaluate test once, and save the bundle to `out`."""
    start = time.time()
    taxonomy = data.taxonomy
    device = pick_device(config.device)
    threads = configure_threads(device, config.threads)
    seed_everything(config.seed)
    splits = {name: data.split(config.split, name) for name in ("train", "val", "test")}
    if not splits["train"]:
        raise DataError(f"the train split of {data.source} is empty ({len(data.samples)} samples in all)")
    if not splits["val"]:
        raise DataError(
            f"the validation split of {data.source} is empty: early stopping and thresholds need it; "
            "use more images or a larger val fraction"
        )

    model = build_classifier(config, taxonomy, device)
    pre = model.preprocessing
    try:
        input_sizes = config.epoch_input_sizes(pre.input_size) if config.sizes else None
    except ValueError as exc:
        raise TrainingError(str(exc)) from None

    workers = config.workers if config.workers is not None else (4 if device.type == "cuda" else 0)
    pin = device.type == "cuda"
    train_ds = ImageDataset(
        splits["train"], taxonomy, pre, config.augmentation(pre.pad_value if pre.letterbox else 0), seed=config.seed
    )
    eval_sets = {name: ImageDataset(splits[name], taxonomy, pre) for name in ("val", "test")}
    _preload([train_ds, eval_sets["val"], *([eval_sets["test"]] if evaluate_test else [])], config.progress)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        train_ds,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(train_ds) > config.batch_size,
        num_workers=workers,
        pin_memory=pin,
        generator=generator,
        persistent_workers=workers > 0,
    )
    eval_loaders = {
        name: DataLoader(ds, batch_size=config.batch_size * 2, num_workers=workers, pin_memory=pin)
        for name, ds in eval_sets.items()
    }

    loss_fn = AttributeLoss(
        taxonomy,
        splits["train"],
        config.label_smoothing,
        config.class_weight_power,
        config.group_loss_weights,
        config.pos_weight_cap,
    ).to(device)
    optimization = Optimization.build(model, config, len(train_loader), device)
    # a tie goes to the later epoch (further down the cosine, longer averaged)
    stopping = EarlyStopping(config.patience, ties_to_later=True)
    fitted = fit(
        model,
        train_loader,
        eval_loaders["val"],
        loss_fn,
        optimization,
        stopping,
        config.epochs,
        device,
        record=lambda r: _epoch_row(r, config.epochs),
        say=tqdm.write,
        set_epoch=train_ds.set_epoch,
        progress=config.progress,
        input_sizes=input_sizes,
    )
    if fitted.failure is not None:
        raise TrainingError(f"{fitted.failure}: lower the learning rate (lr {config.lr:g}) or check the labels")

    assert stopping.best_state is not None
    model.load_state_dict(stopping.best_state)
    amp_dtype = optimization.amp_dtype
    selected = validate_selected(model, eval_loaders["val"], device, amp_dtype)
    test_predictions = None
    if evaluate_test and splits["test"]:
        test_predictions = predict(model, eval_loaders["test"], device, amp_dtype)
    elapsed = time.time() - start

    model.to("cpu").to(memory_format=torch.contiguous_format)
    lineage = {
        "parent": None,
        "data": {**data.summary(config.split), "csv_sha256": file_sha256(data.source)},
        "split": {**config.split.to_dict(), "key_column": data.split_column},
        "recipe": config.to_dict(),
        "seed": config.seed,
        "torch": torch.__version__,
        "device": str(device),
        "threads": threads,
        "epochs_run": len(fitted.history),
        "best_epoch": stopping.best_epoch,
        "history": fitted.history,
        "thresholds_defaulted": selected.defaulted,
        "elapsed_s": round(elapsed, 1),
    }
    bundle = ModelBundle(
        model_version=model_version(taxonomy, config.backbone, model),
        taxonomy=taxonomy,
        classifier=model,
        thresholds=selected.thresholds,
        lineage=lineage,
    )
    selected.calibration.apply(bundle)
    # measured as the calibrated bundle tags (temperatures, hierarchy, auto-fill thresholds): the same figures as
    # `shelfsight evaluate BUNDLE --split val`
    validation = bundle_metrics(bundle, selected.predictions)
    test = bundle_metrics(bundle, test_predictions) if test_predictions is not None else None
    bundle.metrics = {
        "primary_metric": f"{PRIMARY_METRIC} (mean over single-choice groups of top-1 accuracy), validation split",
        "validation": headline(validation),
        **({"test": headline(test)} if test is not None else {}),
    }
    path = bundle.save(out)
    return TrainResult(bundle, path, validation, test, fitted.history, elapsed)


def build_classifier(config: TrainConfig, taxonomy: Taxonomy, device: torch.device) -> AttributeClassifier:
    """The recipe's untrained classifier (pretrained backbone, input size, frozen stages) on `device`."""
    model = AttributeClassifier(
        taxonomy,
        config.backbone,
        pretrained=config.pretrained,
        dropout=config.dropout,
        colour_bins=config.colour_bins,
        tap_stages=config.tap_stages,
        tap_pooling=config.tap_pooling,
    )
    if config.input_size is not None:
        model.preprocessing = dataclasses.replace(model.preprocessing, input_size=config.input_size)
    return prepare_model(model, config.freeze_stages, device)


def _epoch_row(result: EpochResult, epochs: int) -> dict[str, Any]:
    """The history row of one epoch, and its line in the run's log (one line per epoch even without progress
    bars)."""
    stats = result.stats
    row: dict[str, Any] = {"epoch": result.epoch, **{k: round(v, 4) for k, v in stats.items()}}
    row["input_size"] = int(stats["input_size"])
    if result.validation is None or result.score is None:  # not evaluated: the loss is not finite
        tqdm.write(
            f"epoch {result.epoch}/{epochs} @{row['input_size']}px loss {stats['loss']:.3f}: not finite, stopping"
        )
        return row
    summary, score = result.validation["summary"], result.score
    row["val_" + PRIMARY_METRIC] = round(score, 4)
    row["val_mean_macro_f1"] = round(summary["mean_macro_f1"], 4)
    row["val_top1"] = {
        g: round(m["top1"], 4) for g, m in result.validation["groups"].items() if m.get("top1") is not None
    }
    tops = " ".join(f"{g}={v:.3f}" for g, v in row["val_top1"].items())
    tqdm.write(
        f"epoch {result.epoch}/{epochs} @{stats['input_size']:.0f}px loss {stats['loss']:.3f} "
        f"{stats['images_per_s']:.1f} img/s | "
        f"val {PRIMARY_METRIC} {score:.4f} macro-F1 {row['val_mean_macro_f1']:.4f} | {tops}"
    )
    return row


def model_version(taxonomy: Taxonomy, backbone: str, model: nn.Module) -> str:
    """`{taxonomy}-{backbone}-{UTC timestamp}-{first 8 hex of a digest of the weights}`."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{taxonomy.name}-{backbone}-{stamp}-{h.hexdigest()[:8]}"


def _preload(datasets: list[ImageDataset], progress: bool) -> None:
    """Decode every image once up front (the datasets cache them), so epochs only augment."""
    total = sum(len(ds) for ds in datasets if ds.caches_images)
    with tqdm(total=total, desc="decoding images", unit="img", leave=False, disable=not progress) as bar:
        for ds in datasets:
            if not ds.caches_images:
                continue
            for i in range(len(ds)):
                ds.image(i)
                bar.update()
