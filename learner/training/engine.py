"""The epoch loop, in the style of torchvision's detection references (`engine.py`): `train_one_epoch` (one pass
over the batches, one optimiser step each) and `evaluate_epoch` (the classifier's full metrics on a loader).

`train_one_epoch` is shared by the classifier's trainings (learner/training/fit.py, through `ClassifierBatchLoss`)
and the detector's fine-tuning (learner/training/detector.py): each gives its batches and how a batch becomes a loss;
the step itself (backward, AMP scaling, clipping, schedule, moving average) is `Optimization.step`
(learner/training/optim.py).

Must not: build data sets, loaders, models or optimisers, write files, or decide when training stops
(learner/training/fit.py does).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from learner.evaluation.evaluate import compute_metrics, predict
from learner.inference.imaging import normalize
from learner.model.classifier import AttributeClassifier
from learner.model.preprocessing import Preprocessing
from learner.training.distillation import Distillation
from learner.training.loss import AttributeLoss
from learner.training.optim import Optimization
from learner.training.runtime import autocast

B = TypeVar("B")


@dataclass
class EpochStats:
    """One pass of `train_one_epoch`: the mean loss over the images trained on, how many, how long, and the loss
    of the batch that stopped it (None: the pass ran to the end)."""

    loss: float
    images: int
    seconds: float
    not_finite: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[B],
    loss_of: Callable[[B], tuple[torch.Tensor, int]],
    optimization: Optimization,
    *,
    desc: str,
    progress: bool = True,
    stop_when_not_finite: bool = False,
) -> EpochStats:
    """One pass over `batches` with `model` in the mode the caller set: `loss_of(batch)` gives the batch's loss and
    its number of images, then one `optimization.step`. `stop_when_not_finite`: end the pass, without stepping, at
    the first batch whose loss is not finite (one process only: under DDP every rank must take every step)."""
    total, seen, start = 0.0, 0, time.perf_counter()
    with tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress, dynamic_ncols=True) as bar:
        for batch in bar:
            loss, n = loss_of(batch)
            if stop_when_not_finite and not math.isfinite(value := float(loss.detach())):
                return EpochStats(total / max(1, seen), seen, time.perf_counter() - start, not_finite=value)
            optimization.step(loss, model)
            total += float(loss.detach()) * n
            seen += n
            elapsed = time.perf_counter() - start
            lr = optimization.scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{total / seen:.3f}", lr=f"{lr:.2e}", ips=f"{seen / elapsed:.1f}")
    return EpochStats(total / max(1, seen), seen, time.perf_counter() - start)


class ClassifierBatchLoss:
    """How a batch of the classifier's loader (uint8 images, per-group targets) becomes its loss: normalised as
    `preprocessing` says (the classifier's), downscaled to `input_size` (progressive resizing; None: as loaded), the
    forward pass of `model` (the classifier or its DDP wrapper) under autocast, then `loss_fn`; with `distillation`,
    combined with the distillation loss against its teacher's answers for the same pixels. `side` is the largest
    side trained on (mixed-resolution batches: the serving side)."""

    def __init__(
        self,
        model: nn.Module,
        preprocessing: Preprocessing,
        loss_fn: AttributeLoss,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        input_size: int | None = None,
        distillation: Distillation | None = None,
    ) -> None:
        self.model, self.preprocessing, self.loss_fn = model, preprocessing, loss_fn
        self.distillation = distillation
        self.device, self.amp_dtype = device, amp_dtype
        self.input_size = input_size
        self.side = 0

    def __call__(self, batch: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> tuple[torch.Tensor, int]:
        images, targets = batch
        pixels = images.to(self.device, non_blocking=True)
        x = normalize(pixels, self.preprocessing)
        if self.input_size is not None:
            x = downscale(x, self.input_size)
        self.side = max(self.side, x.shape[-1])  # the largest side trained on (mixed resolutions: the serving one)
        targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
        with autocast(self.device, self.amp_dtype):
            logits = self.model(x)
            soft = self.distillation.soft_targets(pixels) if self.distillation is not None else None
        loss, _ = self.loss_fn(logits, targets)
        if self.distillation is not None and soft is not None:
            loss = self.distillation.combine(loss, self.distillation(logits, soft))
        return loss, len(images)


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
