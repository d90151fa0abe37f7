"""The classifier's epoch loop, shared by first training (learner/training/train.py) and fine-tuning a champion
(learner/training/finetune.py), in one process or data-parallel under torchrun.

In the style of torchvision's detection references (`engine.py`): `train_one_epoch` and `evaluate_epoch`, plus the
setup both callers share: `seed_everything`, `configure_threads`, `prepare_model` (freeze, move), `Optimization`
(AdamW over discriminative learning rates, per-step warm-up then cosine, AMP, the weights' moving average),
`EarlyStopping` (best validation epoch, patience) and `fit`, the loop over epochs that wires them. Model selection
uses the validation split only: `PRIMARY_METRIC` is the mean over single-choice groups of top-1 accuracy.

Must not: build data sets or loaders, write files or bundles, or know where a model goes next (callers do that).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from learner.evaluation.calibration import Calibration, fit_calibration
from learner.evaluation.evaluate import GroupPredictions, choose_thresholds, compute_metrics, predict
from learner.evaluation.gate import PRIMARY_METRIC
from learner.inference.imaging import normalize
from learner.model.classifier import AttributeClassifier
from learner.training import distributed
from learner.training.loss import AttributeLoss
from learner.training.recipe import SCHEDULES, TrainConfig

M = TypeVar("M", bound=nn.Module)


class TrainingError(ValueError):
    """Training cannot start or gave no usable model; the message says what to change (recipe or data)."""


# --- setup --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_threads(device: torch.device, threads: int | None) -> int:
    """Use every core for intra-op parallelism on CPU (the loader runs in-process there)."""
    n = threads or os.cpu_count() or 1
    if device.type == "cpu":
        torch.set_num_threads(n)
    return torch.get_num_threads()


def amp_settings(device: torch.device, enabled: bool) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """(autocast dtype, grad scaler): bf16 without scaler where supported, fp16 with one otherwise; CPU: none."""
    if not enabled or device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def prepare_model(model: AttributeClassifier, freeze_stages: int, device: torch.device) -> AttributeClassifier:
    """Freeze the first `freeze_stages` backbone stages (weights and batch-norm statistics) and move the model to
    `device` in channels-last layout."""
    if not 0 <= freeze_stages <= model.num_stages:
        raise TrainingError(f"freeze_stages must be between 0 and {model.num_stages} for {model.backbone_name}")
    model.freeze_stages(freeze_stages)
    model.to(device).to(memory_format=torch.channels_last)
    return model


def make_optimizer(model: AttributeClassifier, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the model's discriminative-LR groups, each split into decayed and not-decayed params."""
    groups: list[dict[str, Any]] = []
    for g in model.parameter_groups(config.lr, config.backbone_lr_decay):
        params = g["params"]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        if decay:
            groups.append({"params": decay, "lr": g["lr"], "weight_decay": config.weight_decay, "name": g["name"]})
        if no_decay:
            groups.append({"params": no_decay, "lr": g["lr"], "weight_decay": 0.0, "name": f"{g['name']}-no-decay"})
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_factor(
    step: int,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    cycle_steps: int | None = None,
    cycle_mult: float = 1.0,
) -> float:
    """The learning-rate factor (of the peak) at optimiser step `step` (0-based): linear warm-up from ~0 to 1 over
    `warmup_steps`, then a cosine from 1 to `min_lr_ratio`, over the remaining steps (`cycle_steps` None), or in
    cycles restarting at 1 (SGDR, cosine annealing with warm restarts): the first `cycle_steps` long, each next
    `cycle_mult` times longer. A cycle cut short by the end of training stops before its floor."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = float(step - warmup_steps)
    if cycle_steps is None:
        progress = min(1.0, t / max(1, total_steps - warmup_steps))
    else:
        length = float(max(1, cycle_steps))
        while t >= length:
            t -= length
            length = max(1.0, length * cycle_mult)
        progress = t / length
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    cycle_steps: int | None = None,
    cycle_mult: float = 1.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule `lr_factor`: warm-up, then one cosine (`cycle_steps` None) or cosine cycles with warm
    restarts."""
    if cycle_mult < 1.0:
        raise TrainingError(f"the restart cycle multiplier must be at least 1, not {cycle_mult}")

    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps, total_steps, min_lr_ratio, cycle_steps, cycle_mult)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class WeightAverage(Generic[M]):
    """Exponential moving average of a model's state (parameters and batch-norm statistics).

    The decay ramps up as (1 + n) / (10 + n) over the first updates so early weights fade fast. A model inside a
    DistributedDataParallel wrapper is averaged as the module itself (same keys as the bundle).
    """

    def __init__(self, model: M, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module: M = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        model = distributed.unwrap(model)
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_state = self.module.state_dict()
        floats_ema, floats_new = [], []
        for k, v in model.state_dict().items():
            e = ema_state[k]
            if e.dtype.is_floating_point:
                floats_ema.append(e)
                floats_new.append(v.detach())
            else:
                e.copy_(v)
        torch._foreach_lerp_(floats_ema, floats_new, 1.0 - d)


@dataclass
class Optimization:
    """What changes the weights step by step: AdamW, the per-step schedule, AMP (dtype and grad scaler) and the
    moving average of the weights (None when the recipe's `ema_decay` is 0)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    ema: WeightAverage[AttributeClassifier] | None

    @classmethod
    def build(
        cls, model: AttributeClassifier, config: TrainConfig, steps_per_epoch: int, device: torch.device
    ) -> Optimization:
        """The recipe's optimisation for `model` (unwrapped): warm-up over `warmup_epochs`, then cosine to the end
        (`schedule` "cosine") or cosine cycles of `restart_epochs` x `restart_mult`**k with warm restarts."""
        optimizer = make_optimizer(model, config)
        if config.schedule not in SCHEDULES:
            raise TrainingError(f"schedule must be one of {', '.join(SCHEDULES)}, not {config.schedule!r}")
        restarts = config.schedule == "restarts"
        if restarts and config.restart_epochs <= 0:
            raise TrainingError(f"restart_epochs must be positive with restarts, not {config.restart_epochs}")
        scheduler = make_scheduler(
            optimizer,
            warmup_steps=max(1, round(config.warmup_epochs * steps_per_epoch)),
            total_steps=config.epochs * steps_per_epoch,
            min_lr_ratio=config.min_lr_ratio,
            cycle_steps=max(1, round(config.restart_epochs * steps_per_epoch)) if restarts else None,
            cycle_mult=config.restart_mult,
        )
        amp_dtype, scaler = amp_settings(device, config.amp)
        ema = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
        return cls(optimizer, scheduler, amp_dtype, scaler, ema)

    def evaluated(self, model: AttributeClassifier) -> AttributeClassifier:
        """The weights that are validated and kept: the moving average when there is one, else the model."""
        return self.ema.module if self.ema is not None else model


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


# --- one epoch / evaluation ---------------------------------------------------------------------------


def train_one_epoch(
    model: AttributeClassifier,
    loader: DataLoader[Any],
    loss_fn: AttributeLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epoch: int,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    ema: WeightAverage[AttributeClassifier] | None = None,
    progress: bool = True,
    input_size: int | None = None,
) -> dict[str, float]:
    """One pass over `loader`: a step of the optimiser and of the schedule per batch, then the moving average.
    `model` may be a DDP wrapper exposing `.preprocessing` (learner.training.distributed.PreprocessingDDP).
    `input_size`: train on batches downscaled to this side (progressive resizing; `downscale`); None: as loaded."""
    model.train()
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    total_loss, seen, side, start = 0.0, 0, 0, time.perf_counter()
    desc = f"epoch {epoch}" + (f" @{input_size}px" if input_size is not None else "")
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress, dynamic_ncols=True)
    for images, targets in bar:
        x = normalize(images.to(device, non_blocking=True), model.preprocessing)
        if input_size is not None:
            x = downscale(x, input_size)
        side = x.shape[-1]
        targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
        with autocast:
            logits = model(x)
        loss, _ = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model)
        n = len(images)
        total_loss += float(loss.detach()) * n
        seen += n
        elapsed = time.perf_counter() - start
        lr = scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", lr=f"{lr:.2e}", ips=f"{seen / elapsed:.1f}")
    elapsed = time.perf_counter() - start
    return {
        "loss": total_loss / max(1, seen),
        "images_per_s": seen / max(elapsed, 1e-9),
        "seconds": elapsed,
        "input_size": side,  # the side of the batches the model was trained on
    }


def downscale(x: torch.Tensor, size: int) -> torch.Tensor:
    """A normalised N x 3 x S x S batch resized to `size` x `size` (bilinear, antialiased; unchanged when S is
    already `size`). Normalisation is affine per channel, so resizing after it equals resizing the pixels first."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


def evaluate_epoch(
    model: AttributeClassifier,
    loader: DataLoader[Any],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    thresholds: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Full metrics (see learner.evaluation.evaluate.compute_metrics) of `model` on `loader`."""
    return compute_metrics(predict(model, loader, device, amp_dtype), thresholds)


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


# --- the loop over epochs -----------------------------------------------------------------------------


@dataclass
class EpochResult:
    """What `fit` hands the caller's `record` after each epoch (on every rank)."""

    epoch: int
    loss: float  # mean training loss, averaged over ranks
    stats: dict[str, float]  # this rank's `train_one_epoch` figures
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
) -> FitResult:
    """Train `epochs` epochs (fewer when `stopping` says so or the loss stops being finite), validating the
    evaluated weights (`Optimization.evaluated`) on rank 0 after each and broadcasting the score, so every rank
    takes the same early-stopping decision; `stopping` keeps rank 0's best weights.

    `set_epoch(epoch)` runs first each epoch (augmentation seeds, sampler shuffles); `record` turns an
    `EpochResult` into the history row (and may log it); `say` logs the early stop. `wrapped`: what is trained
    when it is not `model` itself (its DDP wrapper under torchrun, see `ctx`). `input_sizes`: the training input
    side of each epoch (progressive resizing, `TrainConfig.epoch_input_sizes`; validation stays at the model's
    input size); early stopping then waits for `stopping.patience` epochs of the last size."""
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
        stats = train_one_epoch(
            trained,  # type: ignore[arg-type]  # a DDP wrapper exposing .preprocessing, or the model itself
            train_loader,
            loss_fn,
            optimization.optimizer,
            optimization.scheduler,
            device,
            epoch,
            optimization.amp_dtype,
            optimization.scaler,
            optimization.ema,
            progress,
            input_sizes[epoch - 1] if input_sizes is not None else None,
        )
        loss = distributed.mean_across_ranks(stats["loss"], ctx)
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
