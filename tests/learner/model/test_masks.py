"""Instance masks as COCO RLE (learner/model/masks.py): round trips, polygons (COCO and Label Studio percent),
Label Studio brush strokes, resizing, and malformed masks refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from learner.model.masks import (
    MaskError,
    area,
    decode,
    encode,
    from_coco_segmentation,
    from_labelstudio_brush,
    from_labelstudio_polygon,
    resize,
    to_box,
    validate,
)


def _blob(h: int = 30, w: int = 40) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[5:20, 8:30] = True
    m[12, 2] = True
    return m


def test_a_mask_survives_encoding_and_decoding_bit_identically_and_as_json_text() -> None:
    m = _blob()
    rle = encode(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [30, 40]
    assert np.array_equal(decode(rle), m)
    assert area(rle) == int(m.sum()) and to_box(rle) == [2.0, 5.0, 30.0, 20.0]
    assert validate({"size": [30, 40], "counts": rle["counts"]}) == rle


def test_a_coco_polygon_and_a_labelstudio_polygon_cover_the_same_pixels() -> None:
    coco = from_coco_segmentation([[10, 10, 30, 10, 30, 20, 10, 20]], width=40, height=30)
    percent = [[25.0, 100 / 3], [75.0, 100 / 3], [75.0, 200 / 3], [25.0, 200 / 3]]
    studio = from_labelstudio_polygon(percent, width=40, height=30)
    assert abs(area(coco) - 200) <= 45  # a 20 x 10 rectangle, edges rasterised
    assert np.array_equal(decode(coco), decode(studio))


def test_a_labelstudio_brush_stroke_decodes_to_its_pixels() -> None:
    m = _blob()
    strokes = mask2rle(m.astype(np.uint8) * 255)  # what Label Studio's brush sends
    assert np.array_equal(decode(from_labelstudio_brush(strokes, width=40, height=30)), m)


def test_resizing_scales_the_mask_with_its_image() -> None:
    rle = encode(_blob())
    bigger = resize(rle, 80, 60)
    assert bigger["size"] == [60, 80] and area(bigger) == 4 * area(rle)
    assert to_box(bigger) == [4.0, 10.0, 60.0, 40.0]


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: validate({"size": [0, 4], "counts": "abc"}), "positive integers"),
        (lambda: validate({"size": [2, 2], "counts": [1, 1]}), "summing to 2 x 2"),
        (lambda: validate("not a mask"), "a dict with size and counts"),
        (lambda: from_labelstudio_polygon([[10, 10], [20, 20]], 40, 30), "at least 3 points"),
        (lambda: from_labelstudio_polygon([[10, 10], [250, 20], [20, 40]], 40, 30), "outside the image"),
        (lambda: from_labelstudio_brush([1, 2, 3], 40, 30), "brush RLE"),
        (lambda: from_labelstudio_brush(mask2rle(np.ones((5, 5), np.uint8)), 40, 30), "the 40 x 30 image"),
        (lambda: from_coco_segmentation(encode(_blob()), width=10, height=10), "not the image's"),
    ],
)
def test_a_malformed_mask_is_refused_with_the_reason(build: object, reason: str) -> None:
    with pytest.raises(MaskError, match=reason):
        build()  # type: ignore[operator]


def test_a_manifest_says_whether_its_detector_returns_masks() -> None:
    from learner.model.detector import DetectorSpec
    from learner.model.manifest import detector_has_masks

    mask_spec = DetectorSpec("maskrcnn_mobilenet_v3_large_fpn", ["__background__", "person"], weights="bundle")
    box_spec = DetectorSpec("fasterrcnn_mobilenet_v3_large_320_fpn", ["__background__", "person"], weights="bundle")

    assert detector_has_masks(mask_spec.to_dict()) and mask_spec.has_masks
    assert not detector_has_masks(box_spec.to_dict()) and not box_spec.has_masks
    assert not detector_has_masks(None)  # no detector
