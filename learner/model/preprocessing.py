"""How an image becomes a model's input: size, resampling, normalisation, letterboxing.

Torch-free on purpose: the bundle manifest carries it and the onnxruntime inference path reads it without
importing torch. Must not import torch, build models or decode images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor. Stored in every bundle."""

    input_size: int
    resize_interpolation: str  # "bicubic" | "bilinear"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Product photos are centred objects on plain backgrounds: the whole image is letterboxed
    # (padded to square with `pad_value`) rather than centre-cropped, so nothing is cut away.
    letterbox: bool = True
    pad_value: int = 255

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Inverse of `to_dict` (`d` is a bundle manifest's parsed JSON)."""
        return cls(
            input_size=int(d["input_size"]),
            resize_interpolation=str(d["resize_interpolation"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            letterbox=bool(d.get("letterbox", True)),
            pad_value=int(d.get("pad_value", 255)),
        )
