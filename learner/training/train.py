"""First training: an `AttributeClassifier` from pretrained backbone weights on a labelled set, saved as a bundle.

`train` splits the labelled set, runs the one training flow (`run_training` in learner/training/run.py, from a
`FreshBackbone`) and writes the bundle, in the style of torchvision's detection references: the epoch loop in
learner/training/engine.py, the loop over epochs and early stopping in fit.py, the optimiser and schedule in
optim.py, the loss in loss.py, the recipe in recipe.py (`TrainConfig`, every field documented there).

The recipe: the first `freeze_stages` backbone stages are frozen (weights and batch-norm statistics); discriminative
learning rates (heads get `lr`, each earlier stage `backbone_lr_decay` times less); AdamW with linear warm-up then
cosine decay; optional progressive resizing (`TrainConfig.sizes`: early epochs on downscaled batches, the last phase
and validation at the input size); per group cross-entropy with label smoothing and tempered class weights (inverse
frequency ** `class_weight_power`), BCE for multi-label groups; samples whose label is missing are masked out of
that group's loss; attribute-safe augmentation (no hue/saturation jitter, see
`learner.datasets.augmentation.Augmentation`); an exponential moving average of the weights (EMA) is what gets
evaluated and saved; early stopping on the validation split; a non-finite training loss stops training with a
`TrainingError`.

Model selection uses only the validation split: the primary metric is the mean over single-choice
groups of top-1 accuracy (`PRIMARY_METRIC`); per-class thresholds are the best-F1 points on validation.
The test split is evaluated once, after training, for the bundle's metrics and the report.

When the labelled set has titles (the taxonomy's `title_column`) and the recipe's `title` is on, the bundle also gets
a title model trained on the same train split and calibrated on the same validation split, and the fusion of photos
and title fitted on validation (learner/training/title.py `attach_title_model`).

This module does not parse command lines (see `daemon/commands_train.py`) and keeps no global state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from learner.datasets.labelled import DataError, LabelledSet
from learner.evaluation.evaluate import bundle_metrics, headline
from learner.evaluation.gate import PRIMARY_METRIC
from learner.model.bundle import ModelBundle
from learner.model.manifest import file_sha256
from learner.training.errors import TrainingError
from learner.training.fit import EpochResult
from learner.training.recipe import TrainConfig
from learner.training.run import FreshBackbone, bundle_of, model_version, run_training
from learner.training.title import attach_title_model


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
    more: Sequence[LabelledSet] = (),
    low_res: Sequence[LabelledSet] = (),
    teacher: ModelBundle | None = None,
) -> TrainResult:
    """Fine-tune on the train split, select on val, evaluate test once, and save the bundle to `out`.

    `more`: further sets at serving resolution (e.g. the 300 px photos), split by the same rule, each split joining
    `data`'s (train, validation and calibration, test). `low_res`: sets of low-resolution photos (e.g. thumbnails),
    whose train split only is trained on, at the recipe's `low_res_size` (`run_training`'s `low_res_samples`); their
    validation and test products are never read. The title model also learns from their train split's titles, each
    weighing the recipe's `low_res_title_weight`.
    `teacher`: a trained bundle of the same taxonomy whose classifier is distilled into the new one
    (learner/training/distillation.py); the lineage records its model version."""
    start = time.time()
    sets = [data, *more]
    splits = {name: [s for d in sets for s in d.split(config.split, name)] for name in ("train", "val", "test")}
    low_res_train = [s for d in low_res for s in d.split(config.split, "train")]
    if not splits["train"]:
        raise DataError(f"the train split of {data.source} is empty ({len(data.samples)} samples in all)")
    if not splits["val"]:
        raise DataError(
            f"the validation split of {data.source} is empty: early stopping and thresholds need it; "
            "use more images or a larger val fraction"
        )
    run = run_training(
        FreshBackbone(data.taxonomy),
        splits["train"],
        splits["val"],
        config,
        record=lambda r: _epoch_row(r, config.epochs),
        say=tqdm.write,
        test_samples=splits["test"] if evaluate_test else None,
        low_res_samples=low_res_train,
        teacher=teacher.classifier if teacher is not None else None,
    )
    if run.failure is not None or run.model is None:
        raise TrainingError(f"{run.failure}: lower the learning rate (lr {config.lr:g}) or check the labels")
    elapsed = time.time() - start
    lineage = {
        "parent": None,
        "data": {
            **_source(data, config),
            **({"more": [_source(d, config) for d in more]} if more else {}),
            **({"low_res": [{**_source(d, config), "read": "train split"} for d in low_res]} if low_res else {}),
        },
        "split": {**config.split.to_dict(), "key_column": data.split_column},
        "recipe": config.to_dict(),
        "seed": config.seed,
        **({"teacher": _teacher(teacher, config)} if teacher is not None else {}),
        **run.lineage(),
        "elapsed_s": round(elapsed, 1),
    }
    bundle = bundle_of(run, model_version(data.taxonomy, config.backbone, run.model), lineage)
    assert run.selected is not None
    if config.title:  # the title model and the fusion of photos and title, when the set has titles
        bundle.lineage["title"] = attach_title_model(
            bundle,
            [*splits["train"], *low_res_train],
            splits["val"],
            run.selected.predictions,
            seed=config.seed,
            say=tqdm.write,
            weights=[1.0] * len(splits["train"]) + [config.low_res_title_weight] * len(low_res_train)
            if low_res_train
            else None,
        )
    # measured as the calibrated bundle tags (temperatures, hierarchy, auto-fill thresholds): the same figures as
    # `shelfsight evaluate BUNDLE --split val`
    validation = bundle_metrics(bundle, run.selected.predictions)
    test = bundle_metrics(bundle, run.test_predictions) if run.test_predictions is not None else None
    bundle.metrics = {
        "primary_metric": f"{PRIMARY_METRIC} (mean over single-choice groups of top-1 accuracy), validation split",
        "validation": headline(validation),
        **({"test": headline(test)} if test is not None else {}),
    }
    path = bundle.save(out)
    return TrainResult(bundle, path, validation, test, run.history, elapsed)


def _teacher(teacher: ModelBundle, config: TrainConfig) -> dict[str, Any]:
    return {
        "model_version": teacher.model_version,
        "backbone": teacher.classifier.backbone_name,
        "input_size": teacher.classifier.preprocessing.input_size,
        "weight": config.distil_weight,
        "temperature": config.distil_temperature,
    }


def _source(data: LabelledSet, config: TrainConfig) -> dict[str, Any]:
    return {**data.summary(config.split), "csv_sha256": file_sha256(data.source)}


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
