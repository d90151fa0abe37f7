"""Detection quality: COCO mAP of a detector's boxes or masks against the objects annotators outlined
(`detection_map`, torchmetrics' `MeanAveragePrecision`), and the IoU-sweep instance score (`iou_sweep`): per image,
the mean over IoU thresholds 0.50, 0.55, ..., 0.95 of TP / (TP + FP + FN), averaged over images (the metric of the
Data Science Bowl 2018 and iMaterialist-Fashion competitions). The retraining run compares champion and challenger
with them on the holdout.

The sweep, exactly: at threshold t, predictions are taken best score first; each is a true positive when an
unmatched target of the same class overlaps it with IoU > t (strictly; the most overlapping such target is
matched), else a false positive; targets left unmatched are false negatives. An image with neither predictions
nor targets scores 1 (nothing to find, nothing claimed). Boxes are [x1, y1, x2, y2]; masks are COCO RLE
(`learner.model.masks`).

Must not: run models, read files or the database, or decide promotion (learner/evaluation/gate.py does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
Region = Sequence[float] | Mapping[str, Any]  # a box [x1, y1, x2, y2] or a mask (COCO RLE)


def detection_map(
    predicted: Sequence[Sequence[tuple[str, float, Region]]],
    targets: Sequence[Sequence[tuple[str, Region]]],
    iou_type: Literal["bbox", "segm"] = "bbox",
) -> dict[str, Any]:
    """COCO mAP@[.5:.95], mAP@.5 and mAP@.75 (torchmetrics) of detections against outlined objects, per image:
    predictions (class, score, region) and targets (class, region); regions are boxes for "bbox", masks for
    "segm"."""
    from torchmetrics.detection import MeanAveragePrecision

    classes = sorted({c for t in targets for c, _ in t} | {c for p in predicted for c, _, _ in p})
    index = {c: i for i, c in enumerate(classes)}
    metric = MeanAveragePrecision(iou_type=iou_type, box_format="xyxy")
    key = "boxes" if iou_type == "bbox" else "masks"
    preds = [
        {
            key: _regions([r for _, _, r in p], iou_type),
            "scores": torch.tensor([s for _, s, _ in p], dtype=torch.float32),
            "labels": torch.tensor([index[c] for c, _, _ in p], dtype=torch.int64),
        }
        for p in predicted
    ]
    truth = [
        {
            key: _regions([r for _, r in t], iou_type),
            "labels": torch.tensor([index[c] for c, _ in t], dtype=torch.int64),
        }
        for t in targets
    ]
    if iou_type == "segm":  # torchmetrics needs a mask tensor shaped like the image even when there is none
        for p, t in zip(preds, truth, strict=True):
            shape = next((x[key].shape[1:] for x in (p, t) if len(x[key])), (1, 1))
            for x in (p, t):
                if not len(x[key]):
                    x[key] = torch.zeros((0, *shape), dtype=torch.bool)
    metric.update(preds, truth)
    result = metric.compute()
    return {
        "map": round(float(result["map"]), 4),
        "map_50": round(float(result["map_50"]), 4),
        "map_75": round(float(result["map_75"]), 4),
        "images": len(targets),
        "objects": sum(len(t) for t in targets),
    }


def iou_sweep(
    predicted: Sequence[Sequence[tuple[str, float, Region]]],
    targets: Sequence[Sequence[tuple[str, Region]]],
    iou_type: Literal["bbox", "segm"] = "bbox",
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict[str, Any]:
    """The IoU-sweep score (see the module docstring) of detections against outlined objects, per image:
    predictions (class, score, region), targets (class, region). Returns the score, its value per threshold
    (mean over images) and the image and object counts."""
    if len(predicted) != len(targets):
        raise ValueError(f"{len(predicted)} images of predictions but {len(targets)} of targets")
    per_image = np.array([image_sweep(p, t, iou_type, thresholds) for p, t in zip(predicted, targets, strict=True)])
    per_image = per_image.reshape(len(targets), len(thresholds))
    by_threshold = per_image.mean(axis=0) if len(targets) else np.zeros(len(thresholds))
    return {
        "iou_sweep": round(float(by_threshold.mean()), 4) if len(targets) else 0.0,
        "by_threshold": {f"{t:.2f}": round(float(v), 4) for t, v in zip(thresholds, by_threshold, strict=True)},
        "images": len(targets),
        "objects": sum(len(t) for t in targets),
    }


def image_sweep(
    predicted: Sequence[tuple[str, float, Region]],
    targets: Sequence[tuple[str, Region]],
    iou_type: Literal["bbox", "segm"] = "bbox",
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> list[float]:
    """One image's TP / (TP + FP + FN) at each threshold."""
    if not predicted and not targets:
        return [1.0] * len(thresholds)
    order = sorted(range(len(predicted)), key=lambda i: -predicted[i][1])
    preds = [predicted[i] for i in order]
    ious = _iou_matrix([r for _, _, r in preds], [r for _, r in targets], iou_type)
    same_class = np.array([[pc == tc for tc, _ in targets] for pc, _, _ in preds], dtype=bool)
    ious = np.where(same_class.reshape(ious.shape), ious, 0.0)
    out = []
    for t in thresholds:
        matched = np.zeros(len(targets), dtype=bool)
        tp = 0
        for i in range(len(preds)):
            candidates = np.where(~matched & (ious[i] > t), ious[i], -1.0)
            if len(candidates) and candidates.max() > t:
                matched[int(candidates.argmax())] = True
                tp += 1
        fp, fn = len(preds) - tp, len(targets) - tp
        out.append(tp / (tp + fp + fn))
    return out


def _iou_matrix(predicted: Sequence[Region], truth: Sequence[Region], iou_type: str) -> np.ndarray:
    if not predicted or not truth:
        return np.zeros((len(predicted), len(truth)))
    if iou_type == "segm":
        from learner.model.masks import iou_matrix

        return iou_matrix([_as_mask(m) for m in predicted], [_as_mask(m) for m in truth])
    from torchvision.ops import box_iou

    p = torch.tensor([list(_as_box(b)) for b in predicted], dtype=torch.float64)
    t = torch.tensor([list(_as_box(b)) for b in truth], dtype=torch.float64)
    return box_iou(p, t).numpy()


def _regions(regions: Sequence[Region], iou_type: str) -> torch.Tensor:
    if iou_type == "bbox":
        return torch.tensor([list(_as_box(b)) for b in regions], dtype=torch.float32).reshape(-1, 4)
    from learner.model.masks import decode

    if not regions:
        return torch.zeros((0, 1, 1), dtype=torch.bool)
    return torch.from_numpy(np.stack([decode(_as_mask(m)) for m in regions]))


def _as_box(region: Region) -> Sequence[float]:
    if isinstance(region, Mapping):
        raise ValueError("a box metric was given a mask; pass iou_type='segm'")
    return region


def _as_mask(region: Region) -> Mapping[str, Any]:
    if not isinstance(region, Mapping):
        raise ValueError("a mask metric was given a box; masks are COCO RLE dicts")
    return region
