"""Detection quality: COCO mAP of a detector's boxes against the objects annotators boxed (`detection_map`,
torchmetrics' `MeanAveragePrecision`). The retraining run compares champion and challenger with it on the holdout.

Must not: run models, read files or the database, or decide promotion (learner/evaluation/gate.py does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def detection_map(
    predicted: Sequence[Sequence[tuple[str, float, Sequence[float]]]],
    targets: Sequence[Sequence[tuple[str, Sequence[float]]]],
) -> dict[str, Any]:
    """COCO mAP@[.5:.95], mAP@.5 and mAP@.75 (torchmetrics) of detections against boxed objects, per image:
    predictions (class, score, [x1, y1, x2, y2]) and targets (class, [x1, y1, x2, y2])."""
    from torchmetrics.detection import MeanAveragePrecision

    classes = sorted({c for t in targets for c, _ in t} | {c for p in predicted for c, _, _ in p})
    index = {c: i for i, c in enumerate(classes)}
    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy")
    preds = [
        {
            "boxes": torch.tensor([list(b) for _, _, b in p], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor([s for _, s, _ in p], dtype=torch.float32),
            "labels": torch.tensor([index[c] for c, _, _ in p], dtype=torch.int64),
        }
        for p in predicted
    ]
    truth = [
        {
            "boxes": torch.tensor([list(b) for _, b in t], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([index[c] for c, _ in t], dtype=torch.int64),
        }
        for t in targets
    ]
    metric.update(preds, truth)
    result = metric.compute()
    return {
        "map": round(float(result["map"]), 4),
        "map_50": round(float(result["map_50"]), 4),
        "map_75": round(float(result["map_75"]), 4),
        "images": len(targets),
        "objects": sum(len(t) for t in targets),
    }
