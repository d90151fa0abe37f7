"""The learning-rate range test (`shelfsight train --find-lr`): train a *copy* of the recipe's model for ~100 steps
while the learning rate grows exponentially from `start_lr` to `end_lr`, record the smoothed training loss, stop
early once it diverges, and suggest a peak learning rate (`TrainConfig.lr`) at the steepest descent of the loss
(Smith, "Cyclical learning rates", 2017; fastai's `lr_find`). A PNG of loss against learning rate (log axis) shows
the curve with the suggestion marked.

The sweep moves the heads' learning rate; the backbone's parameter groups keep their discriminative ratios
(`backbone_lr_decay`), exactly as `make_optimizer` sets them for training, so the suggestion is a value for `lr`.
Written here rather than with torch-lr-finder: that library drives every parameter group to one `end_lr`, which
would lose those ratios, and its criterion and batch interfaces would need wrappers for per-group targets.

Must not: change the caller's model (the test runs on a deep copy), write bundles, or read configuration.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from learner.datasets.images import ImageDataset
from learner.datasets.labelled import DataError, LabelledSet
from learner.inference.engine import pick_device
from learner.inference.imaging import normalize
from learner.model.classifier import AttributeClassifier
from learner.training.loss import AttributeLoss
from learner.training.optim import make_optimizer
from learner.training.recipe import TrainConfig
from learner.training.runtime import configure_threads, seed_everything

DEFAULT_START_LR, DEFAULT_END_LR, DEFAULT_STEPS = 1e-6, 1.0, 100
SMOOTHING = 0.9  # exponential moving average of the loss (bias-corrected)
DIVERGENCE = 4.0  # stop when the smoothed loss exceeds this many times its lowest value


@dataclass
class RangeTest:
    """The sweep: the learning rate of each step, the raw and smoothed losses, why it stopped, the suggestion."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stopped: str  # "end of sweep" or "loss diverged at lr ..."
    suggestion: float | None  # None when the loss never fell

    def to_dict(self) -> dict[str, Any]:
        return {"suggestion": self.suggestion, "stopped": self.stopped, "steps": len(self.lrs)}


def suggest_lr(lrs: list[float], smoothed: list[float]) -> float | None:
    """The learning rate where the smoothed loss falls fastest against log(lr), before its minimum; None when fewer
    than 5 points reach the minimum or the loss never falls."""
    stop = int(np.argmin(smoothed)) + 1
    if stop < 5:
        return None
    slope = np.gradient(np.asarray(smoothed[:stop]), np.log(np.asarray(lrs[:stop])))
    i = int(np.argmin(slope))
    return float(lrs[i]) if slope[i] < 0 else None


def lr_range_test(
    model: AttributeClassifier,
    loader: DataLoader[Any],
    loss_fn: AttributeLoss,
    config: TrainConfig,
    device: torch.device,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    steps: int = DEFAULT_STEPS,
    progress: bool = True,
) -> RangeTest:
    """The range test on a deep copy of `model` (its weights and the caller's optimiser are untouched)."""
    if not 0 < start_lr < end_lr or steps < 2:
        raise ValueError(f"the sweep needs 0 < start_lr < end_lr and 2+ steps, not {start_lr}, {end_lr}, {steps}")
    trial = copy.deepcopy(model).train()
    optimizer = make_optimizer(trial, config)
    ratios = [g["lr"] / config.lr for g in optimizer.param_groups]
    growth = (end_lr / start_lr) ** (1 / (steps - 1))
    batches: Iterator[Any] = itertools.chain.from_iterable(itertools.repeat(loader))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, stopped = 0.0, math.inf, "end of sweep"
    for step in tqdm(range(steps), desc="lr range test", unit="step", leave=False, disable=not progress):
        lr = start_lr * growth**step
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        images, targets = next(batches)
        x = normalize(images.to(device), trial.preprocessing)
        loss, _ = loss_fn(trial(x), {k: v.to(device) for k, v in targets.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        current = average / (1 - SMOOTHING ** (step + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(current)
        if not math.isfinite(current) or current > DIVERGENCE * best:
            stopped = f"loss diverged at lr {lr:.2e}"
            break
        best = min(best, current)
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    suggestion = suggest_lr([lrs[i] for i in finite], [smoothed[i] for i in finite]) if finite else None
    return RangeTest(lrs, losses, smoothed, stopped, suggestion)


def plot_range_test(result: RangeTest, path: str | Path) -> Path:
    """Loss (raw and smoothed) against learning rate on a log axis, the suggestion marked; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed loss")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="C3", linestyle="--", label=f"suggested lr {result.suggestion:.2e}")
    finite = [v for v in (*result.losses, *result.smoothed) if math.isfinite(v)]
    if finite:  # the divergence spike would flatten the interesting part
        low = min(finite)
        ax.set_ylim(low * 0.95, min(max(finite), 2.5 * min(v for v in result.smoothed if math.isfinite(v))) * 1.05)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate of the heads (backbone stages keep their ratios)")
    ax.set_ylabel("training loss")
    ax.set_title(f"learning-rate range test ({len(result.lrs)} steps, {result.stopped})")
    ax.legend()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def find_lr(
    config: TrainConfig,
    data: LabelledSet,
    png: str | Path,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    steps: int = DEFAULT_STEPS,
) -> tuple[RangeTest, Path]:
    """The range test of `config`'s model on the train split of `data` (augmented as in training); writes `png`."""
    from learner.training.run import build_classifier

    device = pick_device(config.device)
    configure_threads(device, config.threads)
    seed_everything(config.seed)
    samples = data.split(config.split, "train")
    if not samples:
        raise DataError(f"the train split of {data.source} is empty ({len(data.samples)} samples in all)")
    model = build_classifier(config, data.taxonomy, device)
    pre = model.preprocessing
    dataset = ImageDataset(samples, data.taxonomy, pre, config.augmentation(pre.pad_value if pre.letterbox else 0))
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(dataset) > config.batch_size,
        generator=torch.Generator().manual_seed(config.seed),
    )
    loss_fn = AttributeLoss(
        data.taxonomy,
        samples,
        config.label_smoothing,
        config.class_weight_power,
        config.group_loss_weights,
        config.pos_weight_cap,
    ).to(device)
    result = lr_range_test(model, loader, loss_fn, config, device, start_lr, end_lr, steps, config.progress)
    return result, plot_range_test(result, png)
