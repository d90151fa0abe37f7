"""Detector fine-tuning on annotators' boxes (learner/training/detector.py), on synthetic scenes
(tests/learner/scenes.py)
with a small randomly initialised MobileNetV3-320 Faster R-CNN: training raises holdout mAP, frozen blocks do not
move, flips mirror boxes, unknown classes are skipped and counted, a seed fixes the result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.evaluation.detection import detection_map, iou_sweep
from learner.model.detector import DetectorSpec, detect
from learner.training.detector import (
    DetectorRecipe,
    DetectorTrainingError,
    backbone_blocks,
    fine_tune_detector,
    hflip_example,
    load_examples,
)
from tests.learner.scenes import COLOURS, draw_scenes, draw_shape_scenes, small_detector, small_mask_detector


def _holdout_map(
    detector: torch.nn.Module, spec: DetectorSpec, boxes: dict[Path, list[tuple[str, list[float]]]]
) -> float:
    examples = load_examples(boxes, spec.class_names).examples
    detector.eval()
    found = detect(detector, [e.image.float() / 255.0 for e in examples], spec)
    predicted = [[(d["label"], d["score"], d["box"]) for d in dets] for dets in found]
    return float(detection_map(predicted, [boxes[p] for p in sorted(boxes)])["map"])


def _recipe(**changes: object) -> DetectorRecipe:
    base = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "device": "cpu", "threads": 1, "progress": False}
    return DetectorRecipe(**{**base, **changes})  # type: ignore[arg-type]


def test_fine_tuning_on_boxes_raises_holdout_map_above_the_untrained_detectors(tmp_path: Path) -> None:
    train = draw_scenes(tmp_path / "train", 24, seed=1)
    holdout = draw_scenes(tmp_path / "holdout", 8, seed=2, prefix="holdout")
    detector, spec = small_detector(seed=0)
    before = _holdout_map(detector, spec, holdout)

    result = fine_tune_detector(detector, spec, train, _recipe(epochs=6, trainable_blocks=17))

    assert result.failure is None and result.detector is not None
    after = _holdout_map(result.detector, result.spec, holdout)
    assert after > before + 0.005, (before, after)
    assert result.figures["images"] == 24 and result.figures["objects"] == 48
    losses = [row["loss"] for row in result.figures["history"]]
    assert len(losses) == 6 and min(losses[1:]) < losses[0]
    assert _holdout_map(detector, spec, holdout) == before  # the champion's detector itself is not touched


def test_frozen_blocks_stay_bit_identical_and_a_seed_fixes_the_result(tmp_path: Path) -> None:
    boxes = draw_scenes(tmp_path, 4, seed=3)
    detector, spec = small_detector(seed=0)
    before = {k: v.clone() for k, v in detector.state_dict().items()}

    first = fine_tune_detector(detector, spec, boxes, _recipe(trainable_blocks=2, freeze_batch_norm=False))
    again = fine_tune_detector(detector, spec, boxes, _recipe(trainable_blocks=2, freeze_batch_norm=False))

    assert first.detector is not None and again.detector is not None
    blocks = [name for name, _ in backbone_blocks(first.detector)]
    frozen, trainable = blocks[:-2], blocks[-2:]
    assert first.figures["frozen_blocks"] == len(frozen) == 15
    after = first.detector.state_dict()
    for key, value in after.items():
        if any(key.startswith(prefix + ".") for prefix in frozen):  # parameters and batch-norm statistics
            assert torch.equal(value, before[key]), key
    moved = [k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith(tuple(p + "." for p in trainable)) for k in moved)  # the last blocks learned
    assert any(k.startswith("roi_heads.") for k in moved) and any(k.startswith("rpn.") for k in moved)
    assert all(torch.equal(v, again.detector.state_dict()[k]) for k, v in after.items())


def test_horizontal_flip_mirrors_the_boxes_with_the_image(tmp_path: Path) -> None:
    boxes = draw_scenes(tmp_path, 1, seed=4)
    example = load_examples(boxes, ["__background__", "person", "handbag"]).examples[0]
    image, flipped = hflip_example(example.image, example.boxes)
    for (x1, y1, x2, y2), label in zip(flipped.tolist(), example.labels.tolist(), strict=True):
        colour = COLOURS["person" if label == 1 else "handbag"]
        centre = image[:, round((y1 + y2) / 2), round((x1 + x2) / 2)].tolist()
        assert all(abs(a - b) < 40 for a, b in zip(centre, colour, strict=True))  # the object is where its box is
        assert image[:, round((y1 + y2) / 2), round(x1) - 2].tolist() == pytest.approx([255, 255, 255], abs=40)
    assert torch.equal(flipped[:, 2] - flipped[:, 0], example.boxes[:, 2] - example.boxes[:, 0])


def test_boxes_of_classes_the_detector_does_not_know_are_skipped_and_counted(tmp_path: Path) -> None:
    scenes = draw_scenes(tmp_path, 3, seed=5)
    paths = sorted(scenes)
    boxes = {
        paths[0]: [("person", scenes[paths[0]][0][1]), ("umbrella", [1.0, 1.0, 20.0, 20.0])],
        paths[1]: [("umbrella", [1.0, 1.0, 20.0, 20.0])],  # nothing usable: the image is left out
        paths[2]: [("handbag", [500.0, 500.0, 600.0, 600.0])],  # outside the image: empty once clipped
    }
    examples = load_examples(boxes, ["__background__", "person", "handbag"])
    assert len(examples.examples) == 1 and examples.objects == 1
    assert examples.skipped == {
        "class not in the detector: umbrella": 2,
        "box empty inside the image": 1,
        "image without a usable box": 2,
    }
    detector, spec = small_detector()
    result = fine_tune_detector(detector, spec, {paths[1]: boxes[paths[1]]}, _recipe())
    assert result.detector is None and result.figures["images"] == 0
    assert result.failure is not None and "class the detector knows" in result.failure


# --- mask detectors (Mask R-CNN) on synthetic shapes ----------------------------------------------------------------


def _holdout_mask_sweep(
    detector: torch.nn.Module, spec: DetectorSpec, objects: dict[Path, list[tuple[str, list[float], dict[str, object]]]]
) -> float:
    examples = load_examples(objects, spec.class_names, masks=True).examples
    found = detect(detector.eval(), [e.image.float() / 255.0 for e in examples], spec)
    predicted = [[(d["label"], d["score"], d["mask"]) for d in dets] for dets in found]
    targets = [[(c, m) for c, _, m in objects[p]] for p in sorted(objects)]
    return float(iou_sweep(predicted, targets, iou_type="segm")["iou_sweep"])


def test_fine_tuning_a_mask_rcnn_on_masks_raises_the_holdout_mask_iou_sweep_above_the_untrained_ones(
    tmp_path: Path,
) -> None:
    train = draw_shape_scenes(tmp_path / "train", 24, seed=1)
    holdout = draw_shape_scenes(tmp_path / "holdout", 8, seed=2, prefix="holdout")
    detector, spec = small_mask_detector(seed=0)
    before = _holdout_mask_sweep(detector, spec, holdout)

    result = fine_tune_detector(detector, spec, train, _recipe(epochs=10, lr=3e-3, trainable_blocks=17))

    assert result.failure is None and result.detector is not None
    assert result.figures["objects"] == 48 and result.spec.has_masks
    after = _holdout_mask_sweep(result.detector, result.spec, holdout)
    assert after > before, (before, after)


def test_loss_weights_must_name_losses_the_detector_reports(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loss_weights"):
        _recipe(loss_weights={"loss_colour": 1.0})
    boxes = draw_scenes(tmp_path, 2, seed=6)
    detector, spec = small_detector()  # a Faster R-CNN has no mask loss
    with pytest.raises(DetectorTrainingError, match="loss_mask"):
        fine_tune_detector(detector, spec, boxes, _recipe(loss_weights={"loss_mask": 6.0}))


def test_objects_without_a_mask_are_skipped_for_a_mask_detector(tmp_path: Path) -> None:
    shapes = draw_shape_scenes(tmp_path, 2, seed=7)
    first, second = sorted(shapes)
    mixed = {first: shapes[first], second: [(c, b) for c, b, _ in shapes[second]]}
    data = load_examples(mixed, ["__background__", "person", "handbag"], masks=True)
    assert len(data.examples) == 1 and data.objects == 2
    assert data.examples[0].masks is not None and tuple(data.examples[0].masks.shape) == (2, 128, 128)
    assert data.skipped == {"no mask (the detector segments)": 2, "image without a usable box": 1}


def test_a_coco_instances_file_gives_boxes_and_masks_for_training() -> None:
    from learner.datasets.coco import coco_instances
    from learner.model.masks import area

    sample = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "fashionpedia-sample"
    if not (sample / "sample.json").is_file():
        pytest.skip("../shared/data/fashionpedia-sample is not here")
    objects, skipped = coco_instances(sample / "sample.json", rename={"shoe": "person"})
    assert len(objects) == 2 and sum(len(v) for v in objects.values()) == 12 and not skipped
    for obj in (o for items in objects.values() for o in items):
        box, mask = obj[1], obj[2] if len(obj) > 2 else None
        assert mask is not None and area(mask) > 0 and box[2] > box[0] and box[3] > box[1]
    data = load_examples(objects, ["__background__", "person"], max_side=256, masks=True)
    assert data.objects == sum(1 for v in objects.values() for o in v if o[0] == "person") > 0
