"""Fine-tuning a champion bundle's classifier on new samples (retraining's training step; learner/lifecycle/retrain.py
calls it, in-process or through the torchrun worker in learner/training/launch.py).

It runs the one training flow of first training (`run_training` in learner/training/run.py) from a copy of the
champion's weights (`FromBundle`) with first training's recipe (`TrainConfig`; `default_recipe` is retraining's: a
lower peak learning rate and fewer epochs): the first `freeze_stages` stages frozen, discriminative learning rates,
AdamW, warm-up then cosine, EMA, early stopping on validation (an equal score keeps the earlier epoch), AMP on CUDA,
per-class best-F1 thresholds on validation. Under torchrun it runs data-parallel (learner/training/distributed.py):
each rank trains its shard of every batch, rank 0 validates and broadcasts the score so every rank stops together,
and only rank 0 gets the bundle.

A non-finite loss or non-finite weights are not raised: they come back as `FineTuneResult.failure`, which the
promotion gate turns into a rejection.

Must not: touch the database or the registry, decide promotion, write files, or read configuration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from learner.datasets.labelled import Sample
from learner.evaluation.evaluate import bundle_metrics, headline
from learner.evaluation.gate import PRIMARY_METRIC
from learner.model.bundle import ModelBundle
from learner.training import distributed
from learner.training.fit import EpochResult
from learner.training.recipe import TrainConfig
from learner.training.run import FromBundle, bundle_of, model_version, run_training
from learner.training.title import attach_title_model

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

    def record(r: EpochResult) -> dict[str, Any]:
        log.info("epoch %d/%d loss %.4f val %s %s", r.epoch, recipe.epochs, r.loss, PRIMARY_METRIC, r.score)
        return {"epoch": r.epoch, "loss": round(r.loss, 5), "val_" + PRIMARY_METRIC: r.score}

    ctx = ctx or distributed.DistContext.single(recipe.device)
    run = run_training(FromBundle(champion), train_samples, val_samples, recipe, record=record, say=log.info, ctx=ctx)
    if run.model is None or run.selected is None:
        return FineTuneResult(None, run.history, run.failure)
    bundle = bundle_of(
        run,
        model_version(champion.taxonomy, run.model.backbone_name, run.model),
        {
            "parent": champion.model_version,
            **(lineage or {}),
            "recipe": recipe.to_dict(),
            "fine_tuned_from": champion.model_version,
            "world_size": run.world_size,
            **run.lineage(),
            "elapsed_s": round(time.time() - run.started, 1),
        },
        detector=champion.detector,  # not fine-tuned here (learner/training/detector.py is): the champion's for now
        detector_spec=champion.detector_spec,
    )
    if recipe.title:  # the title model retrained where the data has titles, else the champion's kept
        bundle.lineage["title"] = attach_title_model(
            bundle,
            train_samples,
            val_samples,
            run.selected.predictions,
            seed=recipe.seed,
            say=log.info,
            fallback=champion,
        )
    else:
        bundle.title_model, bundle.fusion = champion.title_model, champion.fusion
    bundle.metrics = {  # as the calibrated bundle tags (learner.evaluation.evaluate.bundle_metrics)
        "primary_metric": f"{PRIMARY_METRIC} (mean over single-choice groups of top-1 accuracy)",
        "validation": headline(bundle_metrics(bundle, run.selected.predictions)),
    }
    return FineTuneResult(bundle, run.history, None)
