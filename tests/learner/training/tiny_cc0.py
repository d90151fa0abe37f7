"""The tiny labelled set the training tests share (3 garment classes x 5 CC0 demo photos) and the recipe they start
from. The `tiny_set` fixture that copies it is in conftest.py."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

from learner.datasets.labelled import SplitRule
from learner.training.recipe import TrainConfig

ROOT = Path(__file__).resolve().parents[3]
CC0 = ROOT / "deploy" / "demo" / "clothing-cc0"
CC0_TAXONOMY = ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml"
CLASSES = ("Shoes", "Hat", "Pants")
PER_CLASS = 5


def copy_tiny_set(root: Path) -> Path:
    """3 garment classes x 5 CC0 photos, copied under `root` with their labels.csv rows."""
    (root / "images").mkdir()
    with (CC0 / "labels.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    chosen = []
    for cls in CLASSES:
        chosen += [r for r in rows if r["label"] == cls][:PER_CLASS]
    for r in chosen:
        shutil.copy(CC0 / "images" / f"{r['image']}.jpg", root / "images" / f"{r['image']}.jpg")
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(chosen)
    return root


def tiny_recipe(**overrides: Any) -> TrainConfig:
    """The recipe the training tests start from (128 px, a few epochs on CPU), with `overrides`."""
    base: dict[str, Any] = {
        "input_size": 128,
        "epochs": 8,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_epochs": 0.5,
        "ema_decay": 0.0,
        "patience": 0,
        "split": SplitRule(salt="tiny", train=0.6, val=0.25),  # 10 / 3 / 2 images
        "progress": False,
        "device": "cpu",
    }
    return TrainConfig(**{**base, **overrides})
