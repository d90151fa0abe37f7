"""Fine-tuning the champion's object detector on the boxes annotators drew (learner/lifecycle/retrain.py calls it).

Input: a torchvision detector (learner/model/detector.py), its `DetectorSpec`, and training boxes: per image file, the
objects annotators boxed as (detector class, [x1, y1, x2, y2]) in pixels of the original (EXIF-rotated) image, from
corrections of products outside the holdout (`learner.lifecycle.corrections.training_boxes`), or read from a COCO
instances file (`learner.datasets.coco`). An object may carry a third item, its mask (COCO RLE over the original
image, `learner.model.masks`): a mask detector (Mask R-CNN) trains only on objects that have one (the others are
skipped and counted), a box detector ignores masks. Output: a fine-tuned copy (the champion's module is not
touched) whose spec says its weights live in the bundle.

The recipe (`DetectorRecipe`, every field stored in the challenger's lineage):
- only images with at least one usable box are trained on; a box whose class is not one of the detector's classes
  (`spec.class_names`) or that is empty after clipping to the image is skipped and counted, never raised.
- images are resized like the tagging engine does (longest side at most `max_side`, the engine's
  `DETECTOR_MAX_SIDE`), boxes and masks with them; horizontal flips (probability `hflip`) mirror them too.
- the training loss is the weighted sum of the detector's losses (`loss_weights`, torchvision's loss names, each
  1.0 unless given; e.g. RPN objectness 1.0, RPN box 0.8, head class/box/mask 6.0 as in the iMaterialist-Fashion
  Mask R-CNN recipe). A name the detector does not report is an error, not ignored.
- the backbone body's first blocks are frozen: its parameter-owning children in forward order (ResNet: conv1, bn1,
  layer1-4; MobileNetV3: its 17 feature blocks; SSDlite: the blocks of its two feature stages), all but the last
  `trainable_blocks`. The FPN, the extra layers, the RPN and the heads always train. Frozen blocks stay
  bit-identical (parameters and batch-norm statistics).
- batch-norm statistics are frozen everywhere by default (`freeze_batch_norm`): detection batches are a few images,
  too few to estimate them, and torchvision's pretrained detectors use frozen batch norm for the same reason.
- AdamW (no weight decay on biases and normalisation weights), linear warm-up then cosine per step
  (`learner.training.optim.make_scheduler`), gradient norm clipped, AMP on CUDA only (bf16, or fp16 with a grad
  scaler), a fixed number of epochs, deterministic for a seed on CPU (order and flips come from seeded generators).
  The epochs run in the classifier's epoch loop (`learner.training.engine.train_one_epoch`, one
  `learner.training.optim.Optimization.step` per batch); only the batches and their loss are the detector's, and an
  epoch stops at the first non-finite loss.
- no replay and no early stopping: the champion's detector has no stored training set to replay (a COCO detector's
  data is not here) and the boxes are the only detection labels ShelfSight has. Forgetting is held back by the
  frozen blocks, the low learning rate and few epochs, and caught by the promotion gate: the challenger's holdout
  mAP@[.5:.95] must not drop by more than `GateConfig.max_detection_regression` below the champion's.

Limitation: the product database keeps one box per (product, detector group), so an image with several objects of
one group contributes only the boxed one and the others act as background.

What it must not do: read configuration (the caller passes a `DetectorRecipe`), or write files.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learner.inference.engine import DETECTOR_MAX_SIDE, pick_device
from learner.inference.imaging import ImageDecodeError, decode_image, pil_to_uint8_tensor
from learner.model.detector import DetectorSpec, build_detector
from learner.training.engine import train_one_epoch
from learner.training.optim import Optimization, make_scheduler
from learner.training.runtime import amp_settings, autocast, configure_threads, seed_everything

log = logging.getLogger(__name__)

# image -> [(detector class, [x1, y1, x2, y2])] or [(detector class, box, mask as COCO RLE or None)]
Boxes = Mapping[Path, Sequence[tuple[str, Sequence[float]] | tuple[str, Sequence[float], Mapping[str, Any] | None]]]
LOSS_NAMES = (  # torchvision's detection losses, for `DetectorRecipe.loss_weights`
    "loss_objectness",
    "loss_rpn_box_reg",
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
    "classification",
    "bbox_regression",
    "bbox_ctrness",
)


class DetectorTrainingError(RuntimeError):
    """The detector cannot be fine-tuned as asked (e.g. a bad setting); the message says what to change."""


@dataclass(frozen=True)
class DetectorRecipe:
    """How the detector is fine-tuned (see the module docstring)."""

    epochs: int = 6
    batch_size: int = 4
    lr: float = 1e-4  # peak learning rate, after warm-up
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    trainable_blocks: int = 3  # last N blocks of the backbone body that train; the earlier ones are frozen
    freeze_batch_norm: bool = True
    hflip: float = 0.5
    max_side: int = DETECTOR_MAX_SIDE
    grad_clip: float = 10.0  # max gradient norm (0: no clipping)
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    threads: int | None = None
    progress: bool = True
    loss_weights: dict[str, float] = field(default_factory=dict)  # torchvision loss name -> weight (default 1.0)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.loss_weights) - set(LOSS_NAMES))
        if unknown or any(not w >= 0 for w in self.loss_weights.values()):
            raise ValueError(
                f"loss_weights take non-negative weights of {', '.join(LOSS_NAMES)}; got {dict(self.loss_weights)}"
            )
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.trainable_blocks < 0 or self.max_side < 32:
            raise ValueError(
                f"invalid detector recipe: epochs {self.epochs} and batch_size {self.batch_size} must be >= 1, "
                f"lr {self.lr} > 0, trainable_blocks {self.trainable_blocks} >= 0, max_side {self.max_side} >= 32"
            )
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"hflip is a probability, not {self.hflip}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("progress")
        return d


@dataclass
class DetectorFineTune:
    """What `fine_tune_detector` produced. `detector` is None when it failed (`failure` says why)."""

    detector: nn.Module | None
    spec: DetectorSpec
    figures: dict[str, Any]  # images, objects, skipped, frozen blocks, per-epoch loss, ... (for the record)
    failure: str | None = None


@dataclass
class _Example:
    image: torch.Tensor  # uint8 3xHxW, resized
    boxes: torch.Tensor  # float (N, 4) in the resized image's pixels
    labels: torch.Tensor  # int64 (N,)
    masks: torch.Tensor | None = None  # uint8 (N, H, W) in the resized image's pixels (mask detectors)


@dataclass
class DetectionExamples:
    """Decoded training images with their boxes, and what was left out (reason -> count)."""

    examples: list[_Example]
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def objects(self) -> int:
        return sum(len(e.labels) for e in self.examples)


def load_examples(
    boxes: Boxes, class_names: Sequence[str], max_side: int = DETECTOR_MAX_SIDE, masks: bool = False
) -> DetectionExamples:
    """Decode every boxed image (longest side at most `max_side`, as the tagging engine does) with its usable
    boxes in the resized image's pixels (and, with `masks`, their masks: objects without a usable mask are then
    skipped). Boxes of unknown classes, empty boxes, bad masks and unreadable images are counted in `skipped`;
    images left without a box are not used."""
    from learner.model.masks import MaskError, decode, resize

    index = {name: i for i, name in enumerate(class_names) if i > 0}  # 0 is the background
    out = DetectionExamples([])
    for path in sorted(boxes):
        try:
            img = decode_image(Path(path).read_bytes())
        except (OSError, ImageDecodeError) as exc:
            log.warning("detector training image %s skipped: %s", path, exc)
            out.skipped["image unreadable"] += len(boxes[path])
            continue
        w, h = img.size
        scale = min(1.0, max_side / max(w, h))
        if scale < 1.0:
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))))
        sw, sh = img.size
        kept_boxes: list[list[float]] = []
        kept_labels: list[int] = []
        kept_masks: list[torch.Tensor] = []
        for obj in boxes[path]:
            name, box = obj[0], obj[1]
            mask = obj[2] if len(obj) > 2 else None
            if name not in index:
                out.skipped[f"class not in the detector: {name}"] += 1
                continue
            if masks:
                if mask is None:
                    out.skipped["no mask (the detector segments)"] += 1
                    continue
                try:
                    if list(mask["size"]) != [h, w]:
                        raise MaskError(f"mask size {mask['size']} is not the image's [{h}, {w}]")
                    small = torch.from_numpy(decode(resize(mask, sw, sh)).astype("uint8"))
                except (MaskError, KeyError, TypeError) as exc:
                    log.warning("mask of %s in %s skipped: %s", name, path, exc)
                    out.skipped["mask unusable"] += 1
                    continue
            x1, y1, x2, y2 = (float(v) * scale for v in box)
            x1, x2 = sorted((min(max(x1, 0.0), sw), min(max(x2, 0.0), sw)))
            y1, y2 = sorted((min(max(y1, 0.0), sh), min(max(y2, 0.0), sh)))
            if x2 - x1 < 1.0 or y2 - y1 < 1.0:
                out.skipped["box empty inside the image"] += 1
                continue
            kept_boxes.append([x1, y1, x2, y2])
            kept_labels.append(index[name])
            if masks:
                kept_masks.append(small)
        if not kept_boxes:
            out.skipped["image without a usable box"] += 1
            continue
        out.examples.append(
            _Example(
                pil_to_uint8_tensor(img),
                torch.tensor(kept_boxes, dtype=torch.float32),
                torch.tensor(kept_labels, dtype=torch.int64),
                torch.stack(kept_masks) if masks else None,
            )
        )
    return out


def hflip_example(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror an image (CxHxW) left to right and its boxes (N, 4 as x1, y1, x2, y2) with it."""
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return image.flip(-1), flipped


def backbone_blocks(detector: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone body's parameter-owning blocks in forward order, with their names in the detector's state
    dict (see the module docstring)."""
    backbone = getattr(detector, "backbone", None)
    if backbone is None:
        raise DetectorTrainingError(f"{type(detector).__name__} has no .backbone: not a torchvision detector")
    if hasattr(backbone, "body"):
        prefix, body = "backbone.body", backbone.body
    elif hasattr(backbone, "features"):
        prefix, body = "backbone.features", backbone.features
    else:
        prefix, body = "backbone", backbone
    children = list(body.named_children())
    if children and all(isinstance(c, nn.Sequential) for _, c in children) and len(children) <= 3:
        # SSDlite: a few stages, each a Sequential of blocks
        children = [(f"{n}.{m}", b) for n, c in children for m, b in c.named_children()]
    return [(f"{prefix}.{n}", b) for n, b in children if any(True for _ in b.parameters())]


def freeze_early_blocks(detector: nn.Module, trainable_blocks: int) -> list[str]:
    """Freeze all but the last `trainable_blocks` backbone blocks (requires_grad off, kept in eval mode by
    `_train_mode`); every other parameter trains. Returns the frozen blocks' state-dict prefixes."""
    for p in detector.parameters():
        p.requires_grad_(True)
    blocks = backbone_blocks(detector)
    frozen = blocks[: max(0, len(blocks) - trainable_blocks)]
    for _, block in frozen:
        for p in block.parameters():
            p.requires_grad_(False)
    return [name for name, _ in frozen]


def _train_mode(detector: nn.Module, frozen: Sequence[str], freeze_batch_norm: bool) -> None:
    """Train mode, except frozen blocks and (when asked) every batch norm: their statistics must not move."""
    detector.train()
    modules = dict(detector.named_modules())
    for name in frozen:
        modules[name].eval()
    if freeze_batch_norm:
        for m in detector.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _param_groups(detector: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in detector.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def trainable_copy(detector: nn.Module, spec: DetectorSpec) -> tuple[nn.Module, DetectorSpec]:
    """A copy of `detector` as a bundle stores it: built from the spec with weights 'bundle' (a torchvision
    COCO detector uses frozen batch norm, which a bundle rebuilds as ordinary batch norm) and the weights copied."""
    bundle_spec = dataclasses.replace(spec, weights="bundle", class_names=list(spec.class_names))
    if spec.weights == "bundle":
        return copy.deepcopy(detector), bundle_spec
    model = build_detector(bundle_spec)
    missing, unexpected = model.load_state_dict(detector.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise DetectorTrainingError(
            f"the champion's detector ({spec.weights}) does not fit {spec.arch} built for a bundle: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model, bundle_spec


def fine_tune_detector(
    detector: nn.Module, spec: DetectorSpec, boxes: Boxes, recipe: DetectorRecipe
) -> DetectorFineTune:
    """Fine-tune a copy of `detector` on `boxes` with `recipe` (see the module docstring). The result's detector
    is on the CPU in eval mode; `failure` is set (and the detector None) when no image had a usable box or the
    loss stopped being finite."""
    started = time.time()
    device = pick_device(recipe.device)
    threads = configure_threads(device, recipe.threads)
    seed_everything(recipe.seed)
    data = load_examples(boxes, spec.class_names, recipe.max_side, masks=spec.has_masks)
    model, bundle_spec = trainable_copy(detector, spec)
    frozen = freeze_early_blocks(model, recipe.trainable_blocks)
    figures: dict[str, Any] = {
        "images": len(data.examples),
        "objects": data.objects,
        "skipped": dict(data.skipped),
        "frozen_blocks": len(frozen),
        "blocks": len(backbone_blocks(model)),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "recipe": recipe.to_dict(),
        "device": str(device),
        "threads": threads,
    }
    if not data.examples:
        return DetectorFineTune(None, bundle_spec, figures, "no boxed image with a class the detector knows")
    model.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.lr)
    steps = math.ceil(len(data.examples) / recipe.batch_size)
    scheduler = make_scheduler(
        optimizer,
        warmup_steps=max(1, round(recipe.warmup_epochs * steps)),
        total_steps=recipe.epochs * steps,
        min_lr_ratio=recipe.min_lr_ratio,
    )
    amp_dtype, scaler = amp_settings(device, recipe.amp)
    optimization = Optimization(optimizer, scheduler, amp_dtype, scaler, grad_clip=recipe.grad_clip)
    batch_loss = _DetectorBatchLoss(model, spec.arch, recipe.loss_weights, device, amp_dtype)
    generator = torch.Generator().manual_seed(recipe.seed)
    history: list[dict[str, Any]] = []
    failure: str | None = None
    for epoch in range(1, recipe.epochs + 1):
        _train_mode(model, frozen, recipe.freeze_batch_norm)
        stats = train_one_epoch(
            model,
            _EpochBatches(data.examples, recipe.batch_size, recipe.hflip, generator),
            batch_loss,
            optimization,
            desc=f"detector epoch {epoch}",
            progress=recipe.progress,
            stop_when_not_finite=True,
        )
        if stats.not_finite is not None:
            failure = f"detector training loss is not finite ({stats.not_finite}) in epoch {epoch}"
            break
        history.append({"epoch": epoch, "loss": round(stats.loss, 5)})
        log.info("detector epoch %d/%d loss %.4f", epoch, recipe.epochs, stats.loss)
    figures["history"] = history
    figures["elapsed_s"] = round(time.time() - started, 1)
    model.to("cpu").eval()
    if failure is None and not all(
        torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()
    ):
        failure = "the fine-tuned detector's weights are not finite"
    if failure is not None:
        return DetectorFineTune(None, bundle_spec, figures, failure)
    return DetectorFineTune(model, bundle_spec, figures)


# one batch: the images (uint8 CxHxW, some mirrored) and their targets (boxes, labels, masks), on the CPU
Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


class _EpochBatches:
    """One epoch's batches, in an order and with flips drawn from `generator` when the epoch starts (seeded: the
    same on every run); a flipped example is mirrored with its boxes and masks. Built lazily, batch by batch."""

    def __init__(self, examples: Sequence[_Example], batch_size: int, hflip: float, generator: torch.Generator) -> None:
        self.examples, self.batch_size = examples, batch_size
        self.order = torch.randperm(len(examples), generator=generator).tolist()
        self.flips = (torch.rand(len(self.order), generator=generator) < hflip).tolist()

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, len(self.order), self.batch_size):
            images, targets = [], []
            for i, flip in zip(self.order[start : start + self.batch_size], self.flips[start:], strict=False):
                ex = self.examples[i]
                image, boxes = hflip_example(ex.image, ex.boxes) if flip else (ex.image, ex.boxes)
                images.append(image)
                target = {"boxes": boxes, "labels": ex.labels}
                if ex.masks is not None:
                    target["masks"] = ex.masks.flip(-1) if flip else ex.masks
                targets.append(target)
            yield images, targets


class _DetectorBatchLoss:
    """How a detector batch becomes its loss: images scaled to [0, 1] on the device, the torchvision detector's
    losses under autocast, summed with the recipe's `loss_weights` (1.0 unless given)."""

    def __init__(
        self,
        model: nn.Module,
        arch: str,
        loss_weights: Mapping[str, float],
        device: torch.device,
        amp_dtype: torch.dtype | None,
    ) -> None:
        self.model, self.arch, self.loss_weights, self.device, self.amp_dtype = (
            model,
            arch,
            loss_weights,
            device,
            amp_dtype,
        )

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, int]:
        images = [image.to(self.device).float() / 255.0 for image in batch[0]]
        targets = [{k: v.to(self.device) for k, v in target.items()} for target in batch[1]]
        with autocast(self.device, self.amp_dtype):
            losses = self.model(images, targets)
        missing = sorted(set(self.loss_weights) - set(losses))
        if missing:
            raise DetectorTrainingError(
                f"loss_weights name {missing}, which {self.arch} does not report (it reports {sorted(losses)})"
            )
        loss = sum(self.loss_weights.get(k, 1.0) * v.float() for k, v in losses.items())
        assert isinstance(loss, torch.Tensor)
        return loss, len(images)


__all__ = [
    "LOSS_NAMES",
    "DetectionExamples",
    "DetectorFineTune",
    "DetectorRecipe",
    "DetectorTrainingError",
    "backbone_blocks",
    "fine_tune_detector",
    "freeze_early_blocks",
    "hflip_example",
    "load_examples",
    "trainable_copy",
]
