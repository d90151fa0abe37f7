"""COCO instances files as detection data: `coco_instances` turns an annotation JSON (COCO's format, as Fashionpedia,
Detectron2 and most labelling tools export it) into the per-image objects the detector's fine-tuning
(`learner.training.detector.fine_tune_detector`) and its evaluation (`learner.evaluation.detector_eval`) take, each
with its box and mask (polygons or RLE -> COCO RLE, `learner.model.masks`).

Class names are the file's category names, optionally renamed (`rename`) to the detector's classes. Crowd regions,
objects whose segmentation is malformed and images that are missing are skipped and counted, never raised.

Must not: train, evaluate, read configuration, or write files.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from learner.model.masks import MaskError, from_coco_segmentation, to_box

Objects = dict[Path, list[tuple[str, list[float]] | tuple[str, list[float], dict[str, Any] | None]]]


def coco_categories(annotations: str | Path, rename: Mapping[str, str] | None = None) -> list[str]:
    """The category names a COCO instances file declares (renamed like `coco_instances` renames them): the classes
    it annotates, so a detection of another class cannot be judged against it."""
    doc = json.loads(Path(annotations).read_text())
    names = [str(c["name"]) for c in doc.get("categories", [])]
    return list(dict.fromkeys((rename or {}).get(n, n) for n in names))


def coco_instances(
    annotations: str | Path, images: str | Path | None = None, rename: Mapping[str, str] | None = None
) -> tuple[Objects, Counter[str]]:
    """(image file -> [(class, [x1, y1, x2, y2], mask)], what was skipped -> count) from a COCO instances file.
    `images` is the folder of `file_name`s (default: `images/` beside the file)."""
    path = Path(annotations)
    doc = json.loads(path.read_text())
    folder = Path(images) if images is not None else path.parent / "images"
    names = {int(c["id"]): str(c["name"]) for c in doc.get("categories", [])}
    infos = {int(i["id"]): i for i in doc.get("images", [])}
    out: Objects = {}
    skipped: Counter[str] = Counter()
    for ann in doc.get("annotations", []):
        info = infos.get(int(ann.get("image_id", -1)))
        if info is None:
            skipped["annotation of an unknown image"] += 1
            continue
        file = folder / str(info["file_name"])
        if not file.is_file():
            skipped["image file missing"] += 1
            continue
        if ann.get("iscrowd"):
            skipped["crowd region"] += 1
            continue
        name = names.get(int(ann.get("category_id", -1)))
        if name is None:
            skipped["unknown category"] += 1
            continue
        try:
            mask = from_coco_segmentation(ann.get("segmentation"), int(info["width"]), int(info["height"]))
        except MaskError:
            skipped["segmentation malformed"] += 1
            continue
        x, y, w, h = (float(v) for v in ann.get("bbox") or to_box(mask))
        box = [x, y, x + w, y + h] if ann.get("bbox") else [x, y, w, h]
        out.setdefault(file, []).append(((rename or {}).get(name, name), box, mask))
    return out, skipped
