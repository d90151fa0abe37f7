"""Train-time augmentation that keeps every catalog attribute true (`Augmentation`), applied to uint8 image tensors by
learner/datasets/images.py. Torch is imported only when an image is augmented, so a recipe can name its
augmentation without loading torch.

Must not: decode images, read labels, or add colour (hue/saturation) jitter: colour is a label.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Augmentation:
    """Train-time augmentation that keeps every catalog attribute true.

    Horizontal flip, a small random scale/translate (the product stays whole: the canvas is filled with
    the letterbox colour), and slight brightness/contrast. There is deliberately no hue or saturation
    jitter: colour is a label (`colour: true` groups), and `for_taxonomy` refuses to add colour jitter
    then.
    """

    hflip: float = 0.5
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.06  # fraction of the side
    brightness: float = 0.1  # multiplicative factor in [1 - b, 1 + b]
    contrast: float = 0.1
    pad_value: int = 255

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(self, x: torch.Tensor, rng: random.Random) -> torch.Tensor:
        import torch
        import torchvision.transforms.v2.functional as F

        if self.hflip and rng.random() < self.hflip:
            x = x.flip(-1)
        s = rng.uniform(*self.scale) if self.scale != (1.0, 1.0) else 1.0
        size = x.shape[-1]
        tx = round(rng.uniform(-self.translate, self.translate) * size) if self.translate else 0
        ty = round(rng.uniform(-self.translate, self.translate) * size) if self.translate else 0
        if s != 1.0 or tx or ty:
            x = F.affine(
                x,
                angle=0.0,
                translate=[tx, ty],
                scale=s,
                shear=[0.0, 0.0],
                interpolation=F.InterpolationMode.BILINEAR,
                fill=[float(self.pad_value)] * 3,
            )
        if self.brightness or self.contrast:
            b = rng.uniform(1 - self.brightness, 1 + self.brightness) if self.brightness else 1.0
            c = rng.uniform(1 - self.contrast, 1 + self.contrast) if self.contrast else 1.0
            xf = x.float()
            mean = xf.mean()
            xf = (xf - mean) * c + mean * b
            x = xf.round_().clamp_(0, 255).to(torch.uint8)
        return x
