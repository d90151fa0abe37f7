"""The classifier's training recipe (`TrainConfig`): every knob of first training and of fine-tuning, with its
default, stored in the bundle's lineage; `TrainConfig.from_dict` reads it back (the torchrun workers get it as JSON).

Must not: train, build models or read configuration (daemon/ builds a `TrainConfig` from its settings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from learner.datasets.augmentation import Augmentation
from learner.datasets.labelled import SplitRule

SCHEDULES = ("cosine", "restarts")  # the learning-rate schedules after warm-up (learner.training.optim.lr_factor)


@dataclass
class TrainConfig:
    """The training recipe. Every field is stored in the bundle's lineage."""

    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    input_size: int | None = None  # None: the backbone's native size
    # progressive resizing: training input sides, smallest first, the last the input size (() = the input size
    # only); the epochs are split evenly across them (`epoch_input_sizes`); validation is always at the input size
    sizes: tuple[int, ...] = ()
    epochs: int = 15
    # low-resolution photos (`run_training`'s low_res_samples, `shelfsight train --low-res-data`: e.g. 60x80
    # thumbnails), trained at their own small side in batches of their own (learner/datasets/mixed_resolution.py)
    low_res_size: int = 112  # their letterbox side (the serving photos stay at the input size)
    low_res_fraction: float = 0.25  # the share of them drawn afresh for each epoch that uses them
    # each of their titles' weight in the title model's loss (the serving sets' weigh 1): the thumbnails are mostly
    # another era of the catalog, whose seasons follow other words; 0.1 chosen on validation (docs/model-card.md,
    # "Its title model: whose titles teach")
    low_res_title_weight: float = 0.1
    serving_only_epochs: int = 3  # the last N epochs see serving-resolution photos only, each once
    # True: those epochs keep the mixed epochs' step count, a second draw of serving photos filling the low-resolution
    # batches' places (the recipe before 2026-12-07; a lineage written then, without this field, reads back True)
    serving_only_keep_steps: bool = False
    batch_size: int = 32
    lr: float = 1e-3  # learning rate of the heads (peak, after warm-up)
    backbone_lr_decay: float = 0.8  # each backbone stage, from the last, gets this factor less
    weight_decay: float = 0.02  # AdamW; not applied to biases and normalisation weights
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    schedule: str = "cosine"  # after warm-up: one cosine to the end, or "restarts" (cosine cycles, warm restarts)
    restart_epochs: float = 5.0  # restarts: length of the first cycle in epochs
    restart_mult: float = 1.0  # restarts: each cycle is this many times longer than the one before (>= 1)
    freeze_stages: int = 3  # first N backbone stages frozen (stem counts as one)
    label_smoothing: float = 0.1
    class_weight_power: float = 0.5  # CE class weight = frequency ** -power (0: unweighted, 1: inverse freq)
    # > 0: in multi-label groups each value's positive targets weigh min(cap, negatives / positives) on the train
    # split (BCE pos_weight, learner.training.loss.positive_weights); 0: off (every target weighs 1)
    pos_weight_cap: float = 0.0
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
    distil_weight: float = 0.5  # with a teacher (`run_training`'s `teacher`): the distillation loss's share
    distil_temperature: float = 2.0  # with a teacher: the softmax temperature of the distillation loss
    split: SplitRule = field(default_factory=SplitRule)
    progress: bool = True
    title: bool = True  # also train the title model (learner/training/title.py) when the samples carry titles

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
        if "serving_only_epochs" in d:  # written before serving-only epochs became one pass: they kept the steps
            d.setdefault("serving_only_keep_steps", True)
        if "low_res_fraction" in d:  # written before low-resolution titles weighed less: they weighed 1
            d.setdefault("low_res_title_weight", 1.0)
        for name in ("scale", "sizes"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        return cls(**d, progress=False)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], **given: Any) -> TrainConfig:
        """A recipe from options named like its fields (e.g. the command line's: the others are left out), `given`
        taking precedence; fields named in neither keep their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in options.items() if k in names}, **given})

    def low_res_epochs(self) -> int:
        """How many epochs, from the first, also train on the low-resolution photos; ValueError for a recipe that
        cannot (the serving-only epochs would leave none, or the side or fraction is out of range)."""
        if not 0 < self.low_res_fraction <= 1:
            raise ValueError(f"--low-res-fraction must be in (0, 1], not {self.low_res_fraction}")
        if not 0 <= self.low_res_title_weight <= 1:
            raise ValueError(f"--low-res-title-weight must be in [0, 1], not {self.low_res_title_weight}")
        if self.low_res_size <= 0:
            raise ValueError(f"--low-res-size must be positive, not {self.low_res_size}")
        if not 0 <= self.serving_only_epochs < self.epochs:
            raise ValueError(
                f"--serving-only-epochs must leave at least one of the {self.epochs} epochs for the low-resolution "
                f"photos, not {self.serving_only_epochs}"
            )
        if self.sizes:
            raise ValueError("low-resolution photos and progressive resizing (--sizes) do not combine: use one")
        return self.epochs - self.serving_only_epochs

    def epoch_input_sizes(self, input_size: int) -> list[int]:
        """The training input side of each epoch (`epoch_input_sizes(sizes, epochs, input_size)`)."""
        return epoch_input_sizes(self.sizes, self.epochs, input_size)


def epoch_input_sizes(sizes: Sequence[int], epochs: int, input_size: int) -> list[int]:
    """Progressive resizing's plan: element i is the side of the training inputs in epoch i + 1.

    The epochs are split evenly across `sizes` in order (12 epochs, sizes 160,224: 6 at 160 then 6 at 224); when
    they do not divide evenly the later, larger sizes get the extra epochs. No sizes: every epoch at `input_size`.
    Raises ValueError unless the last size is `input_size` (the size validation and serving use), every size is
    positive and at most `input_size` (training images are downscaled from the input size), and there are no more
    sizes than epochs.
    """
    if not sizes:
        return [input_size] * epochs
    if sizes[-1] != input_size:
        raise ValueError(
            f"the last training size must be the model's input size {input_size} (validation and serving use it), "
            f"not {sizes[-1]}: end --sizes with {input_size} or set --input-size {sizes[-1]}"
        )
    if any(s <= 0 or s > input_size for s in sizes):
        raise ValueError(f"training sizes must be between 1 and the input size {input_size}, not {list(sizes)}")
    if len(sizes) > epochs:
        raise ValueError(f"{len(sizes)} training sizes need at least as many epochs, not {epochs}")
    base, extra = divmod(epochs, len(sizes))
    plan: list[int] = []
    for i, size in enumerate(sizes):
        plan += [size] * (base + (1 if i >= len(sizes) - extra else 0))
    return plan


def parse_sizes(text: str) -> tuple[int, ...]:
    """`"160,224"` -> (160, 224); ValueError with the expected form otherwise."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes:
        raise ValueError(f"--sizes takes comma-separated input sides, smallest first (e.g. 160,224), not {text!r}")
    return sizes
