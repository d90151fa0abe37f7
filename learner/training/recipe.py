"""The classifier's training recipe (`TrainConfig`): every knob of first training and of fine-tuning, with its
default, stored in the bundle's lineage; `TrainConfig.from_dict` reads it back (the torchrun workers get it as JSON).

Must not: train, build models or read configuration (daemon/ builds a `TrainConfig` from its settings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from learner.training.data import Augmentation, SplitRule


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict` (progress bars off: the readers are torchrun workers)."""
        d = dict(d)
        split = d.pop("split", None)
        d.pop("progress", None)
        if split is not None:
            d["split"] = SplitRule.from_dict(split)
        if isinstance(d.get("scale"), list):
            d["scale"] = tuple(d["scale"])
        return cls(**d, progress=False)
