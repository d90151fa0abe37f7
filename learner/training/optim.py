"""What changes the weights step by step: AdamW over the classifier's discriminative learning rates
(`make_optimizer`), the per-step schedule (`lr_factor`, `make_scheduler`: linear warm-up, then one cosine or cosine
cycles with warm restarts), the weights' moving average (`WeightAverage`) and `Optimization`, which holds them with
the AMP settings and takes one optimiser step (`Optimization.step`) for the epoch loop (learner/training/engine.py).

Must not: loop over data, compute losses, or build models.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from learner.model.classifier import AttributeClassifier
from learner.training import distributed
from learner.training.errors import TrainingError
from learner.training.recipe import SCHEDULES, TrainConfig
from learner.training.runtime import amp_settings

M = TypeVar("M", bound=nn.Module)


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


def steps_in_epochs(per_epoch: Sequence[int], epochs: float) -> float:
    """How many optimiser steps the first `epochs` epochs (fractional: part of the next) take, given each epoch's
    step count; past the last epoch, its count goes on."""
    steps, whole = 0.0, int(epochs)
    for e in range(whole):
        steps += per_epoch[min(e, len(per_epoch) - 1)]
    if epochs > whole and per_epoch:
        steps += (epochs - whole) * per_epoch[min(whole, len(per_epoch) - 1)]
    return steps


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
    """What changes the weights step by step: the optimiser, the per-step schedule, AMP (dtype and grad scaler), the
    moving average of the weights (None: none, e.g. the recipe's `ema_decay` is 0) and the largest gradient norm
    (0: no clipping)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    ema: WeightAverage[AttributeClassifier] | None = None
    grad_clip: float = 0.0

    @classmethod
    def build(
        cls,
        model: AttributeClassifier,
        config: TrainConfig,
        steps_per_epoch: int | Sequence[int],
        device: torch.device,
    ) -> Optimization:
        """The recipe's optimisation for the classifier `model` (unwrapped): AdamW (`make_optimizer`), warm-up over
        `warmup_epochs`, then cosine to the end (`schedule` "cosine") or cosine cycles of `restart_epochs` x
        `restart_mult`**k with warm restarts. `steps_per_epoch`: one count for every epoch, or each epoch's (the
        serving-only epochs of a mixed-resolution recipe are shorter); the schedule counts steps."""
        optimizer = make_optimizer(model, config)
        if config.schedule not in SCHEDULES:
            raise TrainingError(f"schedule must be one of {', '.join(SCHEDULES)}, not {config.schedule!r}")
        restarts = config.schedule == "restarts"
        if restarts and config.restart_epochs <= 0:
            raise TrainingError(f"restart_epochs must be positive with restarts, not {config.restart_epochs}")
        per_epoch = [steps_per_epoch] * config.epochs if isinstance(steps_per_epoch, int) else list(steps_per_epoch)
        if len(per_epoch) != config.epochs:
            raise TrainingError(f"{len(per_epoch)} epochs' step counts for a recipe of {config.epochs} epochs")
        mean_steps = sum(per_epoch) / max(1, len(per_epoch))
        scheduler = make_scheduler(
            optimizer,
            warmup_steps=max(1, round(steps_in_epochs(per_epoch, config.warmup_epochs))),
            total_steps=sum(per_epoch),
            min_lr_ratio=config.min_lr_ratio,
            cycle_steps=max(1, round(config.restart_epochs * mean_steps)) if restarts else None,
            cycle_mult=config.restart_mult,
        )
        amp_dtype, scaler = amp_settings(device, config.amp)
        ema = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
        return cls(optimizer, scheduler, amp_dtype, scaler, ema)

    def step(self, loss: torch.Tensor, model: nn.Module) -> None:
        """One optimiser step on `loss`: backward (scaled when there is a grad scaler), the gradient norm of
        `model`'s trainable parameters clipped to `grad_clip`, the step, the schedule's step, then the moving
        average."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(model)

    def evaluated(self, model: AttributeClassifier) -> AttributeClassifier:
        """The weights that are validated and kept: the moving average when there is one, else the model."""
        return self.ema.module if self.ema is not None else model
