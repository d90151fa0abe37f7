"""The one classifier training flow (`run_training`) that first training (learner/training/train.py) and fine-tuning
a champion (learner/training/finetune.py) both call, from a starting point: `FreshBackbone` (the recipe's pretrained
backbone with new heads) or `FromBundle` (a copy of a trained bundle's classifier).

The flow: seed, threads; the starting classifier with its first `freeze_stages` backbone stages frozen (weights and
batch-norm statistics), in channels-last on the device; the datasets, decoded once up front; the loaders; the loss;
the optimisation (learner/training/optim.py); the epochs with early stopping on validation (learner/training/fit.py);
then, on rank 0, the best epoch's weights (refused when not finite), their per-class thresholds, metrics and
calibration on validation (`validate_selected`) and, when asked, their predictions on a test split. Under torchrun
(a `DistContext`) each rank trains its shard of every batch (learner/training/distributed.py) and only rank 0 gets
the model.

Must not: save bundles, decide promotion, write files, or read configuration.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader
from tqdm import tqdm

from learner.datasets.images import ImageDataset
from learner.datasets.labelled import Sample
from learner.datasets.mixed_resolution import MixedResolutionBatches
from learner.evaluation.calibration import Calibration, fit_calibration
from learner.evaluation.evaluate import GroupPredictions, compute_metrics, predict
from learner.evaluation.thresholds import choose_thresholds
from learner.model.bundle import ModelBundle
from learner.model.classifier import AttributeClassifier
from learner.model.detector import DetectorSpec
from learner.model.taxonomy import Taxonomy
from learner.training import distributed
from learner.training.distillation import Distillation, check_teacher
from learner.training.errors import TrainingError
from learner.training.fit import EarlyStopping, EpochResult, fit
from learner.training.loss import AttributeLoss
from learner.training.optim import Optimization
from learner.training.recipe import TrainConfig
from learner.training.runtime import configure_threads, seed_everything

# --- starting points ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FreshBackbone:
    """First training: the recipe's backbone (pretrained weights when `TrainConfig.pretrained`) with new heads for
    `taxonomy`, at the recipe's input size. An equal validation score keeps the later epoch (further down the cosine,
    averaged longer)."""

    taxonomy: Taxonomy
    ties_to_later: ClassVar[bool] = True

    def classifier(self, config: TrainConfig) -> AttributeClassifier:
        return new_classifier(config, self.taxonomy)


@dataclass(frozen=True)
class FromBundle:
    """Fine-tuning: a copy of a trained bundle's classifier (its taxonomy, backbone and input size; the bundle is not
    touched). An equal validation score keeps the earlier epoch (closer to the bundle)."""

    bundle: ModelBundle
    ties_to_later: ClassVar[bool] = False

    @property
    def taxonomy(self) -> Taxonomy:
        return self.bundle.taxonomy

    def classifier(self, config: TrainConfig) -> AttributeClassifier:
        return copy.deepcopy(self.bundle.classifier)


StartingPoint = FreshBackbone | FromBundle


def new_classifier(config: TrainConfig, taxonomy: Taxonomy) -> AttributeClassifier:
    """The recipe's untrained classifier (pretrained backbone, new heads, input size), on the CPU, nothing frozen."""
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
    return model


def prepare_model(model: AttributeClassifier, freeze_stages: int, device: torch.device) -> AttributeClassifier:
    """Freeze the first `freeze_stages` backbone stages (weights and batch-norm statistics) and move the model to
    `device` in channels-last layout."""
    if not 0 <= freeze_stages <= model.num_stages:
        raise TrainingError(f"freeze_stages must be between 0 and {model.num_stages} for {model.backbone_name}")
    model.freeze_stages(freeze_stages)
    model.to(device).to(memory_format=torch.channels_last)
    return model


def build_classifier(config: TrainConfig, taxonomy: Taxonomy, device: torch.device) -> AttributeClassifier:
    """The recipe's untrained classifier (pretrained backbone, input size, frozen stages) on `device`."""
    return prepare_model(new_classifier(config, taxonomy), config.freeze_stages, device)


# --- the selected model -------------------------------------------------------------------------------


@dataclass
class SelectedValidation:
    """The selected model on validation: per-class best-F1 thresholds (multi-label groups), the classes that kept the
    default, its metrics at those thresholds, its calibration (per-group temperatures and the auto-fill
    thresholds at the taxonomy's target precision; learner.evaluation.calibration) and its raw predictions.

    `metrics` are the *uncalibrated* model's (no temperatures, hierarchy or auto-fill thresholds): what the bundle
    reports is `learner.evaluation.evaluate.bundle_metrics(calibrated bundle, predictions)`."""

    thresholds: dict[str, dict[str, float]]
    defaulted: list[str]
    metrics: dict[str, Any]
    calibration: Calibration
    predictions: dict[str, GroupPredictions]


def validate_selected(
    model: AttributeClassifier, loader: DataLoader[Any], device: torch.device, amp_dtype: torch.dtype | None
) -> SelectedValidation:
    """Thresholds, metrics and calibration of the selected model, from one pass over the validation split. The
    calibration is fitted on the split that also chose the epoch: slightly optimistic, which the auto-fill
    threshold's lower confidence bound on precision absorbs (learner.evaluation.selective)."""
    model.eval()
    predictions = predict(model, loader, device, amp_dtype)
    thresholds, defaulted = choose_thresholds(predictions)
    calibration = fit_calibration(predictions, model.taxonomy, fitted_on={"split": "val"})
    return SelectedValidation(thresholds, defaulted, compute_metrics(predictions, thresholds), calibration, predictions)


# --- the flow -----------------------------------------------------------------------------------------


@dataclass
class TrainingRun:
    """What `run_training` gave this rank. `model` (the selected weights, on the CPU) and `selected` are None on
    ranks other than 0 and when the run failed (`failure` says why, e.g. a non-finite loss)."""

    taxonomy: Taxonomy
    history: list[dict[str, Any]]
    best_epoch: int
    failure: str | None
    device: torch.device
    threads: int
    world_size: int
    started: float  # time.time() when the run began
    model: AttributeClassifier | None = None
    selected: SelectedValidation | None = None
    test_predictions: dict[str, GroupPredictions] | None = None  # None: no test split asked for, or it is empty

    def lineage(self) -> dict[str, Any]:
        """What every bundle records of how its classifier was trained here."""
        return {
            "device": str(self.device),
            "threads": self.threads,
            "torch": torch.__version__,
            "epochs_run": len(self.history),
            "best_epoch": self.best_epoch,
            "history": self.history,
            "thresholds_defaulted": self.selected.defaulted if self.selected is not None else [],
        }


def run_training(
    start: StartingPoint,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    config: TrainConfig,
    *,
    record: Callable[[EpochResult], dict[str, Any]],
    say: Callable[[str], None],
    ctx: distributed.DistContext | None = None,
    test_samples: Sequence[Sample] | None = None,
    low_res_samples: Sequence[Sample] = (),
    teacher: AttributeClassifier | None = None,
) -> TrainingRun:
    """Train from `start` on `train_samples`, select on `val_samples` (see the module docstring); `record` turns each
    epoch into its history row (and may log it), `say` logs the early stop. `ctx`: where this process stands; given
    (`DistContext.single()` for one process), each rank trains its `DistributedSampler` shard, whose order does not
    depend on the world size; None: one process, whose loader shuffles with a generator seeded by the recipe and
    drops an incomplete last batch. `test_samples`: also predicted with the selected weights (rank 0).
    `low_res_samples`: also trained on, letterboxed at the recipe's `low_res_size` in batches of their own, a fresh
    `low_res_fraction` of them per epoch, except in the last `serving_only_epochs` (one pass over the serving photos
    each, unless `serving_only_keep_steps`; learner/datasets/mixed_resolution.py); one process only. `teacher`: a
    trained classifier of the same taxonomy (any backbone) whose answers are distilled into the student at the
    recipe's `distil_weight` and `distil_temperature` (learner/training/distillation.py); it is moved to the device
    and never trained."""
    if not train_samples or not val_samples:
        raise TrainingError(
            f"nothing to fine-tune on: {len(train_samples)} training and {len(val_samples)} validation images"
        )
    sharded = ctx is not None
    ctx = ctx or distributed.DistContext.single(config.device)
    started = time.time()
    device = ctx.device
    threads = configure_threads(device, config.threads)
    seed_everything(config.seed)
    taxonomy = start.taxonomy
    distillation = None
    if teacher is not None:  # refused before any photo is decoded
        check_teacher(teacher.taxonomy, taxonomy)
        groups = taxonomy.classifier_groups
        distillation = Distillation(
            teacher.to(device).to(memory_format=torch.channels_last),
            config.distil_weight,
            config.distil_temperature,
            {g.name: float(config.group_loss_weights.get(g.name, 1.0)) for g in groups},  # as the labels' loss
            frozenset(g.name for g in groups if g.multi_label),
        )
    model = prepare_model(start.classifier(config), config.freeze_stages, device)
    pre = model.preprocessing
    try:
        input_sizes = config.epoch_input_sizes(pre.input_size) if config.sizes else None
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    wrapped = distributed.wrap(model, ctx)

    augmentation = config.augmentation(pre.pad_value if pre.letterbox else 0)
    train_ds = ImageDataset(train_samples, taxonomy, pre, augmentation, seed=config.seed)
    low_res_ds, mixed = None, None
    if low_res_samples:
        if sharded:
            raise TrainingError("low-resolution photos are trained in one process only, not under torchrun")
        try:
            low_res_epochs = config.low_res_epochs()
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        low_pre = dataclasses.replace(pre, input_size=config.low_res_size)
        low_res_ds = ImageDataset(low_res_samples, taxonomy, low_pre, augmentation, seed=config.seed)
        mixed = MixedResolutionBatches(
            len(train_ds),
            len(low_res_ds),
            config.batch_size,
            config.low_res_fraction,
            low_res_epochs,
            config.seed,
            keep_steps=config.serving_only_keep_steps,
        )
    val_ds = ImageDataset(val_samples, taxonomy, pre)
    test_ds = ImageDataset(test_samples, taxonomy, pre) if test_samples is not None else None
    evaluated = [val_ds, *([test_ds] if test_ds is not None else [])] if ctx.is_main else []
    preload([train_ds, *([low_res_ds] if low_res_ds is not None else []), *evaluated], config.progress and ctx.is_main)
    workers = config.workers if config.workers is not None else (4 if device.type == "cuda" else 0)
    pin = device.type == "cuda"
    sampler = distributed.make_sampler(train_ds, ctx, seed=config.seed) if sharded else None
    if sampler is not None:
        per_rank_batch = max(1, config.batch_size // ctx.world_size)
        train_loader = DataLoader(
            train_ds, batch_size=per_rank_batch, sampler=sampler, num_workers=workers, pin_memory=pin
        )
    elif mixed is not None and low_res_ds is not None:
        train_loader = DataLoader(
            ConcatDataset([train_ds, low_res_ds]),
            batch_sampler=mixed,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
        )
    else:
        train_loader = DataLoader(
            train_ds,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=len(train_ds) > config.batch_size,
            num_workers=workers,
            pin_memory=pin,
            generator=torch.Generator().manual_seed(config.seed),
            persistent_workers=workers > 0,
        )

    def eval_loader(ds: ImageDataset) -> DataLoader[Any]:
        return DataLoader(ds, batch_size=config.batch_size * 2, num_workers=workers, pin_memory=pin)

    val_loader = eval_loader(val_ds)
    loss_fn = AttributeLoss(
        taxonomy,
        [*train_samples, *low_res_samples],
        config.label_smoothing,
        config.class_weight_power,
        config.group_loss_weights,
        config.pos_weight_cap,
    ).to(device)
    epoch_steps = [mixed.batches_in(e) for e in range(1, config.epochs + 1)] if mixed is not None else len(train_loader)
    optimization = Optimization.build(model, config, epoch_steps, device)
    stopping = EarlyStopping(config.patience, ties_to_later=start.ties_to_later)

    def set_epoch(epoch: int) -> None:
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        if mixed is not None and low_res_ds is not None:
            mixed.set_epoch(epoch)
            low_res_ds.set_epoch(epoch)

    fitted = fit(
        model,
        train_loader,
        val_loader,
        loss_fn,
        optimization,
        stopping,
        config.epochs,
        device,
        record=record,
        say=say,
        set_epoch=set_epoch,
        ctx=ctx,
        wrapped=wrapped,
        progress=config.progress and ctx.is_main,
        input_sizes=input_sizes,
        distillation=distillation,
    )
    run = TrainingRun(
        taxonomy, fitted.history, stopping.best_epoch, fitted.failure, device, threads, ctx.world_size, started
    )
    best_state = stopping.best_state
    if not ctx.is_main or run.failure is not None:
        return run
    if best_state is None:
        run.failure = "no epoch produced a usable model"
        return run
    model.load_state_dict(best_state)
    if not all(torch.isfinite(v).all() for v in best_state.values() if v.dtype.is_floating_point):
        run.failure = "the fine-tuned weights are not finite"
        return run
    run.selected = validate_selected(model, val_loader, device, optimization.amp_dtype)
    if test_ds is not None and len(test_ds):
        run.test_predictions = predict(model, eval_loader(test_ds), device, optimization.amp_dtype)
    model.to("cpu").to(memory_format=torch.contiguous_format)
    run.model = model
    return run


def preload(datasets: list[ImageDataset], progress: bool) -> None:
    """Decode every image once up front (the datasets cache them), so epochs only augment."""
    total = sum(len(ds) for ds in datasets if ds.caches_images)
    with tqdm(total=total, desc="decoding images", unit="img", leave=False, disable=not progress) as bar:
        for ds in datasets:
            if not ds.caches_images:
                continue
            for i in range(len(ds)):
                ds.image(i)
                bar.update()


# --- the bundle ---------------------------------------------------------------------------------------


def bundle_of(
    run: TrainingRun,
    model_version: str,
    lineage: dict[str, Any],
    detector: nn.Module | None = None,
    detector_spec: DetectorSpec | None = None,
) -> ModelBundle:
    """The run's selected classifier as a bundle (not saved): its validation thresholds, calibrated (temperatures,
    auto-fill thresholds; `SelectedValidation.calibration`). Only for a run that gave a model."""
    if run.model is None or run.selected is None:
        raise TrainingError(f"no model to bundle: {run.failure or 'not rank 0'}")
    bundle = ModelBundle(
        model_version=model_version,
        taxonomy=run.taxonomy,
        classifier=run.model,
        detector=detector,
        detector_spec=detector_spec,
        thresholds=run.selected.thresholds,
        lineage=lineage,
    )
    run.selected.calibration.apply(bundle)
    return bundle


def model_version(taxonomy: Taxonomy, backbone: str, model: nn.Module) -> str:
    """`{taxonomy}-{backbone}-{UTC timestamp}-{first 8 hex of a digest of the weights}`."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{taxonomy.name}-{backbone}-{stamp}-{h.hexdigest()[:8]}"
