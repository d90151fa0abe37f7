"""The classifier's loop over epochs (`fit`): train an epoch (learner/training/engine.py), validate the weights that
would be kept on rank 0, broadcast the score, and stop early (`EarlyStopping`: the best validation epoch, patience)
or when the loss stops being finite. Model selection uses the validation split only: `PRIMARY_METRIC` is the mean
over single-choice groups of top-1 accuracy.

Must not: build data sets, loaders or models, write files, or know where a model goes next (callers do that).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from learner.evaluation.gate import PRIMARY_METRIC
from learner.model.classifier import AttributeClassifier
from learner.training import distributed
from learner.training.distillation import Distillation
from learner.training.engine import ClassifierBatchLoss, evaluate_epoch, train_one_epoch
from learner.training.errors import TrainingError
from learner.training.loss import AttributeLoss
from learner.training.optim import Optimization


@dataclass
class EarlyStopping:
    """The best validation epoch so far (its score and a CPU copy of its weights) and when to stop: after
    `patience` epochs without improvement (0: never). `ties_to_later`: whether an equal score replaces the best
    (first training: the later epoch is further down the cosine and averaged longer) or keeps the earlier one
    (fine-tuning: closer to the champion)."""

    patience: int
    ties_to_later: bool
    best_score: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    # patience is counted from no earlier than this epoch (progressive resizing: the last phase's first epoch - 1,
    # so training never stops before the input size has had `patience` epochs)
    count_from: int = 0

    def update(self, epoch: int, score: float, model: nn.Module | None) -> bool:
        """Record `epoch`'s validation score; copy `model`'s weights when it is the best so far (None: keep no copy,
        as on ranks other than 0). True when training should stop now."""
        better = score >= self.best_score if self.ties_to_later else score > self.best_score
        if better:
            self.best_score, self.best_epoch = score, epoch
            if model is not None:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return False
        return bool(self.patience) and epoch - max(self.best_epoch, self.count_from) >= self.patience


@dataclass
class EpochResult:
    """What `fit` hands the caller's `record` after each epoch (on every rank)."""

    epoch: int
    loss: float  # mean training loss, averaged over ranks
    stats: dict[str, float]  # this rank's figures: loss, images_per_s, seconds, input_size (of the trained batches)
    score: float | None  # validation PRIMARY_METRIC, the same on every rank; None when not evaluated
    validation: dict[str, Any] | None  # full validation metrics, on rank 0 only; None when not evaluated


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)  # `record`'s rows, one per epoch run
    failure: str | None = None  # e.g. a non-finite loss: the epochs stopped there


def fit(
    model: AttributeClassifier,
    train_loader: DataLoader[Any],
    val_loader: DataLoader[Any],
    loss_fn: AttributeLoss,
    optimization: Optimization,
    stopping: EarlyStopping,
    epochs: int,
    device: torch.device,
    *,
    record: Callable[[EpochResult], dict[str, Any]],
    say: Callable[[str], None],
    set_epoch: Callable[[int], None],
    ctx: distributed.DistContext | None = None,
    wrapped: nn.Module | None = None,
    progress: bool = True,
    input_sizes: Sequence[int] | None = None,
    distillation: Distillation | None = None,
) -> FitResult:
    """Train `epochs` epochs (fewer when `stopping` says so or the loss stops being finite), validating the
    evaluated weights (`Optimization.evaluated`) on rank 0 after each and broadcasting the score, so every rank
    takes the same early-stopping decision; `stopping` keeps rank 0's best weights.

    `set_epoch(epoch)` runs first each epoch (augmentation seeds, sampler shuffles); `record` turns an
    `EpochResult` into the history row (and may log it); `say` logs the early stop. `wrapped`: what is trained
    when it is not `model` itself (its DDP wrapper under torchrun, see `ctx`). `input_sizes`: the training input
    side of each epoch (progressive resizing, `TrainConfig.epoch_input_sizes`; validation stays at the model's
    input size); early stopping then waits for `stopping.patience` epochs of the last size. `distillation`: the
    labels' loss is combined with the distillation loss against that teacher (learner/training/distillation.py)."""
    ctx = ctx or distributed.DistContext(0, 0, 1, device)
    trained = wrapped if wrapped is not None else model
    if input_sizes is not None:
        if len(input_sizes) < epochs:
            raise TrainingError(f"{len(input_sizes)} input sizes for {epochs} epochs: one per epoch is needed")
        last_phase_start = epochs  # 1-based first epoch of the run of sizes that ends training
        while last_phase_start > 1 and input_sizes[last_phase_start - 2] == input_sizes[epochs - 1]:
            last_phase_start -= 1
        stopping.count_from = max(stopping.count_from, last_phase_start - 1)
    result = FitResult()
    for epoch in range(1, epochs + 1):
        set_epoch(epoch)
        input_size = input_sizes[epoch - 1] if input_sizes is not None else None
        batch_loss = ClassifierBatchLoss(
            trained, model.preprocessing, loss_fn, device, optimization.amp_dtype, input_size, distillation
        )
        trained.train()
        epoch_stats = train_one_epoch(
            trained,
            train_loader,
            batch_loss,
            optimization,
            desc=f"epoch {epoch}" + (f" @{input_size}px" if input_size is not None else ""),
            progress=progress,
        )
        stats = {
            "loss": epoch_stats.loss,
            "images_per_s": epoch_stats.images_per_s,
            "seconds": epoch_stats.seconds,
            "input_size": batch_loss.side,
        }
        loss = distributed.mean_across_ranks(epoch_stats.loss, ctx)
        selected = optimization.evaluated(model)
        validation = None
        if math.isfinite(loss) and ctx.is_main:
            validation = evaluate_epoch(selected, val_loader, device, optimization.amp_dtype)
        score = distributed.broadcast_from_main(validation["summary"][PRIMARY_METRIC] if validation else None, ctx)
        result.history.append(record(EpochResult(epoch, loss, stats, score, validation)))
        if not math.isfinite(loss):
            result.failure = f"training loss is not finite ({loss}) in epoch {epoch}"
            break
        assert score is not None
        if stopping.update(epoch, score, selected if ctx.is_main else None):
            say(f"early stop: no validation improvement for {stopping.patience} epochs (best {stopping.best_epoch})")
            break
    return result
