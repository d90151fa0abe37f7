"""Synthetic detection scenes for detector tests: coloured rectangles on a white background, drawn with Pillow,
their boxes known exactly; and a small randomly initialised torchvision detector (no COCO weights exist here).

A red rectangle is a `person`, a blue one a `handbag` (classes of the clothing-cc0 taxonomy's detector mapping).
For mask detectors, `draw_shape_scenes` draws a red ellipse (`person`) and a blue triangle (`handbag`) whose masks
are known exactly, and `small_mask_detector` is a randomly initialised MobileNetV3 Mask R-CNN.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from learner.model.detector import DetectorSpec, build_detector
from learner.model.masks import encode, to_box

COLOURS = {"person": (220, 30, 30), "handbag": (30, 60, 220)}
CLASSES = ["__background__", "person", "handbag"]
SIZE = 128


def draw_scenes(
    directory: Path, count: int, seed: int, prefix: str = "scene"
) -> dict[Path, list[tuple[str, list[float]]]]:
    """`count` JPEG scenes of SIZE x SIZE px, each with one object of each class (not overlapping): image -> boxes."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[Path, list[tuple[str, list[float]]]] = {}
    for i in range(count):
        img = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        objects: list[tuple[str, list[float]]] = []
        left = rng.random() < 0.5  # which half holds the person
        for name, on_left in (("person", left), ("handbag", not left)):
            w, h = rng.randint(28, 52), rng.randint(36, 60)
            x0 = rng.randint(2, SIZE // 2 - w - 2)
            x1 = x0 if on_left else x0 + SIZE // 2
            y1 = rng.randint(2, SIZE - h - 2)
            draw.rectangle([x1, y1, x1 + w - 1, y1 + h - 1], fill=COLOURS[name])
            objects.append((name, [float(x1), float(y1), float(x1 + w), float(y1 + h)]))
        path = directory / f"{prefix}-{i:03d}.jpg"
        img.save(path, quality=95)
        out[path] = objects
    return out


def small_detector(seed: int = 0, score_threshold: float = 0.05) -> tuple[torch.nn.Module, DetectorSpec]:
    """A randomly initialised MobileNetV3-320 Faster R-CNN over CLASSES, at SIZE px (fast on a CPU)."""
    return _small("fasterrcnn_mobilenet_v3_large_320_fpn", seed, score_threshold)


def _small(kind: str, seed: int, score_threshold: float) -> tuple[torch.nn.Module, DetectorSpec]:
    """A randomly initialised detector of `kind` over CLASSES at SIZE px, with small RPN/head sampling."""
    spec = DetectorSpec(
        kind,
        list(CLASSES),
        weights="bundle",
        score_threshold=score_threshold,
        max_detections=10,
        options={"min_size": SIZE, "max_size": SIZE, "box_batch_size_per_image": 64, "rpn_post_nms_top_n_train": 300},
    )
    torch.manual_seed(seed)
    return build_detector(spec).eval(), spec


def draw_shape_scenes(
    directory: Path, count: int, seed: int, prefix: str = "shapes"
) -> dict[Path, list[tuple[str, list[float], dict[str, object]]]]:
    """`count` PNG scenes of SIZE x SIZE px with a red ellipse (`person`) in one half and a blue triangle
    (`handbag`) in the other: image -> [(class, box, mask as COCO RLE)], box and mask exact."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[Path, list[tuple[str, list[float], dict[str, object]]]] = {}
    for i in range(count):
        img = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        objects: list[tuple[str, list[float], dict[str, object]]] = []
        left = rng.random() < 0.5
        for name, on_left in (("person", left), ("handbag", not left)):
            w, h = rng.randint(30, 54), rng.randint(36, 60)
            x0 = rng.randint(2, SIZE // 2 - w - 2) + (0 if on_left else SIZE // 2)
            y0 = rng.randint(2, SIZE - h - 2)
            silhouette = Image.new("L", (SIZE, SIZE), 0)
            for target, fill in ((draw, COLOURS[name]), (ImageDraw.Draw(silhouette), 255)):
                if name == "person":
                    target.ellipse([x0, y0, x0 + w - 1, y0 + h - 1], fill=fill)
                else:
                    target.polygon([(x0 + w // 2, y0), (x0 + w - 1, y0 + h - 1), (x0, y0 + h - 1)], fill=fill)
            mask = encode(np.asarray(silhouette) > 0)
            objects.append((name, to_box(mask), mask))
        path = directory / f"{prefix}-{i:03d}.png"
        img.save(path)
        out[path] = objects
    return out


def small_mask_detector(seed: int = 0, score_threshold: float = 0.05) -> tuple[torch.nn.Module, DetectorSpec]:
    """A randomly initialised MobileNetV3-Large FPN Mask R-CNN over CLASSES, at SIZE px (fast enough on a CPU)."""
    return _small("maskrcnn_mobilenet_v3_large_fpn", seed, score_threshold)
