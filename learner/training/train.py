"""Fine-tuning an `AttributeClassifier` on a labelled set and writing the model bundle.

Flat functions in the style of torchvision's detection references: `make_optimizer`, `make_scheduler`,
`AttributeLoss`, `train_one_epoch`, `evaluate`, and `train`, which wires them and writes the bundle.

The recipe (`TrainConfig`, every field documented there): the first `freeze_stages` backbone stages are
frozen (weights and batch-norm statistics); discriminative learning rates (heads get `lr`, each earlier
stage `backbone_lr_decay` times less); AdamW with linear warm-up then cosine decay; per group cross-entropy
with label smoothing and tempered class weights (inverse frequency ** `class_weight_power`), BCE for
multi-label groups; samples whose label is missing are masked out of that group's loss; attribute-safe
augmentation (no hue/saturation jitter, see `learner.training.data.Augmentation`); an exponential moving average
of the weights (EMA) is what gets evaluated and saved; early stopping on the validation split.

Model selection uses only the validation split: the primary metric is the mean over single-choice
groups of top-1 accuracy (`PRIMARY_METRIC`); per-class thresholds are the best-F1 points on validation.
The test split is evaluated once, after training, for the bundle's metrics and the report.

This module does not parse command lines (see `daemon/commands_learner.py`) and keeps no global state.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import hashlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from learner.evaluation.evaluate import choose_thresholds, compute_metrics, headline, predict
from learner.inference.engine import pick_device
from learner.inference.imaging import normalize
from learner.model.bundle import ModelBundle
from learner.model.classifier import AttributeClassifier
from learner.model.taxonomy import Taxonomy
from learner.training.data import (
    IGNORE_INDEX,
    Augmentation,
    DataError,
    ImageDataset,
    LabelledSet,
    Sample,
    SplitRule,
    class_counts,
)

PRIMARY_METRIC = "mean_top1"  # key of compute_metrics()["summary"] that early stopping and selection use


@dataclass
class TrainConfig:
    """The training recipe. Every field is stored in the bundle's lineage."""

    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    input_size: int | None = None  # None: the backbone's native size
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3  # learning rate of the heads (peak, after warm-up)
    backbone_lr_decay: float = 0.8  # each backbone stage, from the last, gets this factor less
    weight_decay: float = 0.02  # AdamW; not applied to biases and normalisation weights
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    freeze_stages: int = 3  # first N backbone stages frozen (stem counts as one)
    label_smoothing: float = 0.1
    class_weight_power: float = 0.5  # CE class weight = frequency ** -power (0: unweighted, 1: inverse freq)
    dropout: float = 0.2
    group_loss_weights: dict[str, float] = field(default_factory=dict)  # group -> weight of its loss (default 1)
    colour_bins: int = 0  # >0: colour groups also see a bins^3 RGB histogram of the product (see classifier.py)
    tap_stages: tuple[int, ...] = ()  # backbone stages whose pooled outputs every head also sees (classifier.py)
    tap_pooling: str = "mean"  # how taps are pooled: mean, or foreground (non-background pixels only)
    ema_decay: float = 0.998  # 0 disables the moving average of weights
    patience: int = 5  # epochs without validation improvement before stopping (0: never stop early)
    hflip: float = 0.5
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.06
    brightness: float = 0.1
    contrast: float = 0.1
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # autocast on CUDA (bf16 where supported, else fp16 with a GradScaler)
    threads: int | None = None  # CPU threads for torch; None: all cores
    workers: int | None = None  # data loader processes; None: 0 on CPU (images are cached), 4 on CUDA
    split: SplitRule = field(default_factory=SplitRule)
    progress: bool = True

    def augmentation(self, pad_value: int) -> Augmentation:
        return Augmentation(
            hflip=self.hflip,
            scale=self.scale,
            translate=self.translate,
            brightness=self.brightness,
            contrast=self.contrast,
            pad_value=pad_value,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["split"] = self.split.to_dict()
        d.pop("progress")
        return d


@dataclass
class TrainResult:
    bundle: ModelBundle
    bundle_path: Path
    validation: dict[str, Any]  # full metrics on the validation split
    test: dict[str, Any] | None  # full metrics on the test split (None when not evaluated)
    history: list[dict[str, Any]]
    elapsed_s: float


# --- building blocks --------------------------------------------------------------------------------


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


class AttributeLoss(nn.Module):
    """Weighted sum over classifier groups of each group's loss; missing labels are masked out.

    Single-choice: cross-entropy with label smoothing and class weights (frequency ** -power, normalised
    so the average training sample weighs 1). Multi-label: BCE with smoothed targets, NaN rows masked.
    """

    def __init__(
        self,
        taxonomy: Taxonomy,
        train_samples: list[Sample],
        label_smoothing: float,
        class_weight_power: float,
        group_weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.taxonomy = taxonomy
        self.label_smoothing = label_smoothing
        names = {g.name for g in taxonomy.classifier_groups}
        unknown = set(group_weights or {}) - names
        if unknown:
            raise ValueError(f"loss weights name unknown groups {sorted(unknown)}; groups: {sorted(names)}")
        self.group_weights = {name: float((group_weights or {}).get(name, 1.0)) for name in names}
        for g in taxonomy.classifier_groups:
            counts = torch.tensor(class_counts(train_samples, g), dtype=torch.float64)
            weights = torch.where(counts > 0, counts.clamp(min=1) ** -class_weight_power, torch.zeros_like(counts))
            if counts.sum() > 0:
                weights = weights * counts.sum() / (weights * counts).sum()
            self.register_buffer(f"weight_{g.name}", weights.float())

    def class_weights(self, group: str) -> torch.Tensor:
        w: torch.Tensor = getattr(self, f"weight_{group}")
        return w

    def forward(
        self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total = next(iter(logits.values())).new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        for g in self.taxonomy.classifier_groups:
            z = logits[g.name].float()
            t = targets[g.name]
            if g.multi_label:
                known = ~torch.isnan(t).any(dim=1)
                if not known.any():
                    continue
                smooth = t[known] * (1 - self.label_smoothing) + self.label_smoothing / 2
                loss = nn.functional.binary_cross_entropy_with_logits(z[known], smooth)
            else:
                if not (t != IGNORE_INDEX).any():
                    continue
                loss = nn.functional.cross_entropy(
                    z,
                    t,
                    weight=self.class_weights(g.name),
                    ignore_index=IGNORE_INDEX,
                    label_smoothing=self.label_smoothing,
                )
            total = total + self.group_weights[g.name] * loss
            parts[g.name] = float(loss.detach())
        return total, parts


def make_optimizer(model: AttributeClassifier, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the model's discriminative-LR groups, each split into decayed and not-decayed params."""
    groups: list[dict[str, Any]] = []
    for g in model.parameter_groups(config.lr, config.backbone_lr_decay):
        params: list[nn.Parameter] = list(g["params"])  # type: ignore[call-overload]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        if decay:
            groups.append({"params": decay, "lr": g["lr"], "weight_decay": config.weight_decay, "name": g["name"]})
        if no_decay:
            groups.append({"params": no_decay, "lr": g["lr"], "weight_decay": 0.0, "name": f"{g['name']}-no-decay"})
    return torch.optim.AdamW(groups, lr=config.lr)


def make_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step factor: linear warm-up from ~0 to 1, then cosine from 1 to `min_lr_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class WeightAverage:
    """Exponential moving average of a model's state (parameters and batch-norm statistics).

    The decay ramps up as (1 + n) / (10 + n) over the first updates so early weights fade fast.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
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


# --- one epoch / evaluation -------------------------------------------------------------------------


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
    ema: WeightAverage | None = None,
    progress: bool = True,
) -> dict[str, float]:
    model.train()
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress, dynamic_ncols=True)
    for images, targets in bar:
        x = normalize(images.to(device, non_blocking=True), model.preprocessing)
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
    return {"loss": total_loss / max(1, seen), "images_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed}


def evaluate(
    model: AttributeClassifier,
    loader: DataLoader[Any],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    thresholds: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Full metrics (see learner.evaluation.evaluate.compute_metrics) of `model` on `loader`."""
    return compute_metrics(predict(model, loader, device, amp_dtype), thresholds)


# --- the whole run ----------------------------------------------------------------------------------


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
    if not 0 <= config.freeze_stages <= model.num_stages:
        raise ValueError(f"freeze_stages must be between 0 and {model.num_stages} for {config.backbone}")
    model.freeze_stages(config.freeze_stages)
    model.to(device).to(memory_format=torch.channels_last)
    pre = model.preprocessing

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
        taxonomy, splits["train"], config.label_smoothing, config.class_weight_power, config.group_loss_weights
    ).to(device)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = len(train_loader)
    scheduler = make_scheduler(
        optimizer,
        warmup_steps=max(1, round(config.warmup_epochs * steps_per_epoch)),
        total_steps=config.epochs * steps_per_epoch,
        min_lr_ratio=config.min_lr_ratio,
    )
    amp_dtype, scaler = amp_settings(device, config.amp)
    ema = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None

    history: list[dict[str, Any]] = []
    best_score, best_epoch, best_state = -math.inf, -1, None
    for epoch in range(1, config.epochs + 1):
        train_ds.set_epoch(epoch)
        stats = train_one_epoch(
            model, train_loader, loss_fn, optimizer, scheduler, device, epoch, amp_dtype, scaler, ema, config.progress
        )
        selected = ema.module if ema is not None else model
        val = evaluate(selected, eval_loaders["val"], device, amp_dtype)  # type: ignore[arg-type]
        score = val["summary"][PRIMARY_METRIC]
        row = {
            "epoch": epoch,
            **{k: round(v, 4) for k, v in stats.items()},
            "val_" + PRIMARY_METRIC: round(score, 4),
            "val_mean_macro_f1": round(val["summary"]["mean_macro_f1"], 4),
            "val_top1": {g: round(m["top1"], 4) for g, m in val["groups"].items() if m.get("top1") is not None},
        }
        history.append(row)
        tops = " ".join(f"{g}={v:.3f}" for g, v in row["val_top1"].items())
        tqdm.write(  # one line per epoch even without progress bars: it is the run's log
            f"epoch {epoch}/{config.epochs} loss {stats['loss']:.3f} {stats['images_per_s']:.1f} img/s | "
            f"val {PRIMARY_METRIC} {score:.4f} macro-F1 {row['val_mean_macro_f1']:.4f} | {tops}"
        )
        if score >= best_score:  # a tie goes to the later epoch (further down the cosine, longer averaged)
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in selected.state_dict().items()}
        elif config.patience and epoch - best_epoch >= config.patience:
            tqdm.write(f"early stop: no validation improvement for {config.patience} epochs (best {best_epoch})")
            break

    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    val_predictions = predict(model, eval_loaders["val"], device, amp_dtype)
    thresholds, defaulted = choose_thresholds(val_predictions)
    validation = compute_metrics(val_predictions, thresholds)
    test = None
    if evaluate_test and splits["test"]:
        test = evaluate(model, eval_loaders["test"], device, amp_dtype, thresholds)
    elapsed = time.time() - start

    model.to("cpu").to(memory_format=torch.contiguous_format)
    metrics: dict[str, Any] = {
        "primary_metric": f"{PRIMARY_METRIC} (mean over single-choice groups of top-1 accuracy), validation split",
        "validation": headline(validation),
    }
    if test is not None:
        metrics["test"] = headline(test)
    lineage = {
        "parent": None,
        "data": {**data.summary(config.split), "csv_sha256": _file_sha256(data.source)},
        "split": {**config.split.to_dict(), "key_column": data.split_column},
        "recipe": config.to_dict(),
        "seed": config.seed,
        "torch": torch.__version__,
        "device": str(device),
        "threads": threads,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "history": history,
        "thresholds_defaulted": defaulted,
        "elapsed_s": round(elapsed, 1),
    }
    bundle = ModelBundle(
        model_version=model_version(taxonomy, config.backbone, model),
        taxonomy=taxonomy,
        classifier=model,
        thresholds=thresholds,
        metrics=metrics,
        lineage=lineage,
    )
    path = bundle.save(out)
    return TrainResult(bundle, path, validation, test, history, elapsed)


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


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
