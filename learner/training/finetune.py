"""Fine-tuning a champion bundle's classifier on new samples (retraining's training step; learner/lifecycle/retrain.py
calls it, in-process or through the torchrun worker in learner/training/launch.py).

It starts from a copy of the champion's weights with the recipe of first training (`TrainConfig`; `default_recipe`
is retraining's: a lower peak learning rate and fewer epochs): the first `freeze_stages` stages frozen,
discriminative learning rates, AdamW, warm-up then cosine, EMA, early stopping on validation (an equal score keeps
the earlier epoch), AMP on CUDA, per-class best-F1 thresholds on validation. The epoch loop and its setup are
learner/training/engine.py's, the same as first training's. Under torchrun it runs data-parallel
(learner/training/distributed.py): each rank trains its shard of every batch, rank 0 validates and broadcasts the
score so every rank stops together, and only rank 0 gets the bundle.

A non-finite loss or non-finite weights are not raised: they come back as `FineTuneResult.failure`, which the
promotion gate turns into a rejection.

Must not: touch the database or the registry, decide promotion, write files, or read configuration.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from learner.datasets.images import ImageDataset
from learner.datasets.labelled import Sample
from learner.evaluation.evaluate import bundle_metrics, headline
from learner.model.bundle import ModelBundle
from learner.model.classifier import AttributeClassifier
from learner.training import distributed
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
from learner.training.train import model_version

log = logging.getLogger(__name__)


def default_recipe() -> TrainConfig:
    """The fine-tuning recipe: first training's, with a lower peak learning rate and fewer epochs (it starts from a
    trained model)."""
    return TrainConfig(epochs=8, lr=3e-4, warmup_epochs=0.5, patience=3, freeze_stages=3, progress=False)


@dataclass
class FineTuneResult:
    bundle: ModelBundle | None  # None on ranks other than 0, and on failure
    history: list[dict[str, Any]]
    failure: str | None  # e.g. a non-finite loss: the gate rejects the challenger


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
        raise TrainingError(
            f"nothing to fine-tune on: {len(train_samples)} training and {len(val_samples)} validation images"
        )
    started = time.time()
    device = ctx.device
    threads = configure_threads(device, recipe.threads)
    seed_everything(recipe.seed)
    taxonomy = champion.taxonomy
    model: AttributeClassifier = prepare_model(copy.deepcopy(champion.classifier), recipe.freeze_stages, device)
    pre = model.preprocessing
    try:
        input_sizes = recipe.epoch_input_sizes(pre.input_size) if recipe.sizes else None
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
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
    loss_fn = AttributeLoss(
        taxonomy,
        list(train_samples),
        recipe.label_smoothing,
        recipe.class_weight_power,
        recipe.group_loss_weights,
        recipe.pos_weight_cap,
    )
    loss_fn.to(device)
    optimization = Optimization.build(model, recipe, len(train_loader), device)
    stopping = EarlyStopping(recipe.patience, ties_to_later=False)

    def set_epoch(epoch: int) -> None:
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)

    def record(r: EpochResult) -> dict[str, Any]:
        log.info("epoch %d/%d loss %.4f val %s %s", r.epoch, recipe.epochs, r.loss, PRIMARY_METRIC, r.score)
        return {"epoch": r.epoch, "loss": round(r.loss, 5), "val_" + PRIMARY_METRIC: r.score}

    fitted = fit(
        model,
        train_loader,
        val_loader,
        loss_fn,
        optimization,
        stopping,
        recipe.epochs,
        device,
        record=record,
        say=log.info,
        set_epoch=set_epoch,
        ctx=ctx,
        wrapped=wrapped,
        progress=recipe.progress and ctx.is_main,
        input_sizes=input_sizes,
    )
    history, best_state = fitted.history, stopping.best_state
    if not ctx.is_main:
        return FineTuneResult(None, history, fitted.failure)
    if fitted.failure is not None or best_state is None:
        return FineTuneResult(None, history, fitted.failure or "no epoch produced a usable model")
    model.load_state_dict(best_state)
    if not all(torch.isfinite(v).all() for v in best_state.values() if v.dtype.is_floating_point):
        return FineTuneResult(None, history, "the fine-tuned weights are not finite")
    selected = validate_selected(model, val_loader, device, optimization.amp_dtype)
    thresholds, defaulted = selected.thresholds, selected.defaulted
    model.to("cpu").to(memory_format=torch.contiguous_format)
    bundle = ModelBundle(
        model_version=model_version(taxonomy, model.backbone_name, model),
        taxonomy=taxonomy,
        classifier=model,
        detector=champion.detector,  # not fine-tuned here (learner/training/detector.py is): the champion's for now
        detector_spec=champion.detector_spec,
        thresholds=thresholds,
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
            "best_epoch": stopping.best_epoch,
            "history": history,
            "thresholds_defaulted": defaulted,
            "elapsed_s": round(time.time() - started, 1),
        },
    )
    selected.calibration.apply(bundle)
    bundle.metrics = {  # as the calibrated bundle tags (learner.evaluation.evaluate.bundle_metrics)
        "primary_metric": f"{PRIMARY_METRIC} (mean over single-choice groups of top-1 accuracy)",
        "validation": headline(bundle_metrics(bundle, selected.predictions)),
    }
    return FineTuneResult(bundle, history, None)
