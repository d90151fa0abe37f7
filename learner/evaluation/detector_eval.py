"""Scoring a bundle's detector on outlined objects: detections as the tagging engine serves them (above the
detector's score threshold, boxes and masks in original image pixels) against objects annotators drew, per image.

`evaluate_detector(bundle, objects)`: box mAP@[.5:.95], mAP@.5, mAP@.75 and the IoU-sweep score
(learner/evaluation/detection.py); for a mask detector also mask mAP and the mask IoU sweep, on the images whose
every object carries a mask. `objects` is what `learner.datasets.coco.coco_instances` reads from a COCO instances
file, or what the retraining run collects from annotators' boxes (`learner.lifecycle.holdout`).
`evaluate_detector_on_coco` does it for a bundle file and a COCO instances file (`shelfsight evaluate-detector`).

`classes` restricts the judgement to a vocabulary: a file annotating only some categories (Fashionpedia: garments
and their parts) cannot say whether a detection of another class (a COCO `person`) is right, so detections and
objects outside `classes` are left out, and counted.

Must not: read files other than the images, the bundle and the COCO file, write anything, or decide promotion.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from learner.datasets.coco import coco_categories, coco_instances
from learner.evaluation.detection import detection_map, iou_sweep
from learner.inference.engine import ImageTags, TaggingEngine
from learner.model.bundle import ModelBundle, load_bundle

# image -> [(class, [x1, y1, x2, y2])] or [(class, box, mask as COCO RLE or None)], as learner.training.detector
Objects = Mapping[Path, Sequence[tuple[Any, ...]]]


def evaluate_detector(
    bundle: ModelBundle,
    objects: Objects,
    device: str = "auto",
    classes: Collection[str] | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Detection figures of `bundle`'s detector on the images of `objects` (see the module docstring):
    `map`, `map_50`, `map_75`, `iou_sweep`, `images`, `objects`, and for a mask detector with outlined objects
    `mask_map`, `mask_iou_sweep`, `mask_images`; with `classes`, `left_out` counts what fell outside them."""
    if bundle.detector is None or bundle.detector_spec is None:
        raise ValueError(f"bundle {bundle.model_version} has no detector to evaluate")
    paths = sorted(objects)
    engine = TaggingEngine(bundle, device=device)
    tagged = engine.tag_bytes([p.read_bytes() for p in paths], batch_size=batch_size)
    found = [t.detections if isinstance(t, ImageTags) else [] for t in tagged]
    bundle.detector.to("cpu")
    bundle.classifier.to("cpu")
    predicted = [[(d.label, d.score, list(d.box), d.mask) for d in dets] for dets in found]
    truth = [list(objects[p]) for p in paths]
    left_out: Counter[str] = Counter()
    if classes is not None:
        wanted = set(classes)
        left_out["detections of other classes"] = sum(1 for p in predicted for d in p if d[0] not in wanted)
        left_out["objects of other classes"] = sum(1 for t in truth for o in t if o[0] not in wanted)
        predicted = [[d for d in p if d[0] in wanted] for p in predicted]
        truth = [[o for o in t if o[0] in wanted] for t in truth]
    figures = detection_figures(predicted, truth, bundle.detector_spec.has_masks)
    if classes is not None:
        figures["left_out"] = dict(left_out)
    return figures


def evaluate_detector_on_coco(
    bundle_path: Path,
    coco: Path,
    images: Path | None = None,
    renames: Mapping[str, str] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """`evaluate_detector` of the bundle at `bundle_path` on the objects of a COCO instances file (`images`: the
    folder of its file_names, default images/ beside it; `renames`: file category -> detector class), on the classes
    both have. The figures also name the bundle, the file, the classes and what was skipped. ValueError when the
    bundle has no detector, no category is a class of it, or no object is usable."""
    bundle = load_bundle(bundle_path)
    if bundle.detector_spec is None:
        raise ValueError(f"{bundle_path} has no detector")
    objects, skipped = coco_instances(coco, images, renames)
    known = set(bundle.detector_spec.class_names[1:])
    classes = [c for c in coco_categories(coco, renames) if c in known]
    if not classes:
        raise ValueError(
            f"no category of {coco} is a class of the detector ({', '.join(sorted(known))}): map them with "
            "--rename CATEGORY=CLASS"
        )
    if not objects:
        raise ValueError(f"{coco} has no usable object on an image that exists ({dict(skipped) or 'none'})")
    figures = evaluate_detector(bundle, objects, device, classes)
    return {"bundle": str(bundle_path), "coco": str(coco), "classes": classes, **figures, "skipped": dict(skipped)}


def detection_figures(
    predicted: Sequence[Sequence[tuple[str, float, Sequence[float], Mapping[str, Any] | None]]],
    truth: Sequence[Sequence[tuple[Any, ...]]],
    masks: bool,
) -> dict[str, Any]:
    """The figures of `evaluate_detector` from per-image detections (class, score, box, mask or None) and
    objects (class, box[, mask or None]); mask figures only when `masks` and some object has a mask."""
    boxes_found = [[(c, s, list(b)) for c, s, b, _ in p] for p in predicted]
    boxes_true = [[(o[0], list(o[1])) for o in t] for t in truth]
    figures = detection_map(boxes_found, boxes_true)
    figures["iou_sweep"] = iou_sweep(boxes_found, boxes_true)["iou_sweep"]
    outlined = [[(o[0], o[2]) for o in t if len(o) > 2 and o[2] is not None] for t in truth]
    if masks and any(outlined):
        kept = [i for i, (objs, t) in enumerate(zip(outlined, truth, strict=True)) if len(objs) == len(t)]
        masks_found = [[(c, s, m) for c, s, _, m in predicted[i] if m is not None] for i in kept]
        masks_true = [outlined[i] for i in kept]
        figures["mask_map"] = detection_map(masks_found, masks_true, "segm")["map"]
        figures["mask_iou_sweep"] = iou_sweep(masks_found, masks_true, "segm")["iou_sweep"]
        figures["mask_images"] = len(kept)
    return figures
