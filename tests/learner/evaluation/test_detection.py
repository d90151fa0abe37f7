"""The IoU-sweep instance score (learner/evaluation/detection.py) against hand-computed cases, for boxes and masks,
and mask mAP beside it."""

from __future__ import annotations

import numpy as np
import pytest

from learner.evaluation.detection import IOU_THRESHOLDS, detection_map, iou_sweep
from learner.model.masks import encode


def _square_mask(x1: int, y1: int, x2: int, y2: int, size: int = 20) -> dict[str, object]:
    m = np.zeros((size, size), dtype=bool)
    m[y1:y2, x1:x2] = True
    return encode(m)


def test_the_thresholds_are_point_five_to_point_nine_five_in_steps_of_point_oh_five() -> None:
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_one_box_at_iou_point_eight_is_a_hit_at_six_of_ten_thresholds() -> None:
    # IoU 80/100 = 0.8 exceeds 0.50 ... 0.75 (six thresholds), not 0.80 (strictly greater) and above
    result = iou_sweep([[("shirt", 0.9, [0, 0, 10, 8])]], [[("shirt", [0, 0, 10, 10])]])
    assert result["iou_sweep"] == pytest.approx(0.6)
    assert result["by_threshold"]["0.75"] == 1.0 and result["by_threshold"]["0.80"] == 0.0


def test_a_wrong_class_is_a_false_positive_and_leaves_its_target_a_false_negative() -> None:
    # TP 1 (perfect shirt), FP 2 (a "bag" exactly on the skirt, a shirt far away), FN 1 (the skirt): 1 / 4
    predicted = [[("shirt", 0.9, [0, 0, 10, 10]), ("bag", 0.8, [20, 20, 30, 30]), ("shirt", 0.7, [50, 50, 60, 60])]]
    targets = [[("shirt", [0, 0, 10, 10]), ("skirt", [20, 20, 30, 30])]]
    assert iou_sweep(predicted, targets)["iou_sweep"] == pytest.approx(0.25)


def test_the_more_confident_prediction_claims_the_target_first() -> None:
    # score 0.9 at IoU 0.6 takes the target at t = 0.50, 0.55; score 0.5 at IoU 0.9 takes it at 0.60 ... 0.85;
    # one TP and one FP there (1/2); at 0.90 and 0.95 nothing matches (0 / 3). (8 * 0.5 + 2 * 0) / 10 = 0.4
    predicted = [[("shirt", 0.5, [0, 0, 10, 9]), ("shirt", 0.9, [0, 0, 10, 6])]]
    targets = [[("shirt", [0, 0, 10, 10])]]
    assert iou_sweep(predicted, targets)["iou_sweep"] == pytest.approx(0.4)


def test_images_are_averaged_and_an_empty_image_scores_one() -> None:
    predicted = [[], [], [("shirt", 0.9, [0, 0, 10, 10])]]
    targets = [[], [("shirt", [0, 0, 10, 10])], [("shirt", [0, 0, 10, 10])]]
    result = iou_sweep(predicted, targets)
    assert result["iou_sweep"] == pytest.approx((1.0 + 0.0 + 1.0) / 3, abs=1e-4)
    assert (result["images"], result["objects"]) == (3, 2)


def test_masks_are_compared_by_mask_iou() -> None:
    target = [("shirt", _square_mask(0, 0, 10, 10))]
    half = [("shirt", 0.9, _square_mask(0, 0, 10, 5))]  # IoU 0.5: not above any threshold
    most = [("shirt", 0.9, _square_mask(0, 0, 10, 9))]  # IoU 0.9: above 0.50 ... 0.85 (eight)
    assert iou_sweep([half], [target], iou_type="segm")["iou_sweep"] == 0.0
    assert iou_sweep([most], [target], iou_type="segm")["iou_sweep"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="iou_type='segm'"):
        iou_sweep([most], [target])


def test_mask_map_is_one_for_perfect_masks_and_lower_for_a_poor_one() -> None:
    target = [[("shirt", _square_mask(0, 0, 10, 10))], []]
    perfect = detection_map([[("shirt", 0.9, _square_mask(0, 0, 10, 10))], []], target, iou_type="segm")
    poor = detection_map([[("shirt", 0.9, _square_mask(0, 0, 10, 6))], []], target, iou_type="segm")
    assert perfect["map"] == pytest.approx(1.0) and poor["map"] < 0.5
