"""Instance masks as ShelfSight passes them around: COCO run-length encoding (pycocotools), torch-free.

A mask is a dict `{"size": [height, width], "counts": "<COCO compressed RLE string>"}`: the format COCO, Detectron2
and pycocotools use, JSON-safe and compact (a garment mask of a 1000 x 600 photo is a few hundred bytes). Every
mask ShelfSight stores or returns is in pixels of the original (EXIF-rotated) image, like boxes.

Conversions: binary arrays <-> RLE (`encode`, `decode`), COCO polygons and Label Studio polygons (percent points)
and brush strokes (Label Studio's own RLE) -> RLE, nearest-neighbour resizing, area, box and IoU. A malformed mask
raises `MaskError` saying what is wrong, so an annotation carrying one can be rejected with that reason.

Must not import torch (the engine's assembly step and the review loop use it) or read files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

Mask = dict[str, Any]  # {"size": [h, w], "counts": str}


class MaskError(ValueError):
    """A mask (RLE, polygon or brush stroke) is malformed; the message says how."""


def encode(binary: np.ndarray) -> Mask:
    """A 2-D boolean/0-1 array (H x W) -> COCO compressed RLE with a str `counts`."""
    if binary.ndim != 2:
        raise MaskError(f"a mask is a 2-D array, not {binary.ndim}-D")
    rle = coco_mask.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode(mask: Mapping[str, Any]) -> np.ndarray:
    """COCO RLE (compressed str/bytes counts, or uncompressed list counts) -> H x W bool array."""
    return coco_mask.decode(_coco_rle(mask)).astype(bool)


def validate(mask: Any) -> Mask:
    """`mask` as a canonical compressed RLE, or MaskError: a dict with a positive [h, w] size and counts that
    decode to exactly h * w pixels."""
    rle = _coco_rle(mask)
    h, w = rle["size"]
    if isinstance(mask.get("counts"), list):
        return encode(decode(mask))
    try:
        area = int(coco_mask.area(rle))
        coco_mask.decode(rle)
    except Exception as exc:  # pycocotools raises plain exceptions for corrupt strings
        raise MaskError(f"RLE counts do not decode: {exc}") from None
    if area > h * w:
        raise MaskError(f"RLE covers {area} pixels, more than its {h} x {w} size")
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def area(mask: Mapping[str, Any]) -> int:
    return int(coco_mask.area(_coco_rle(mask)))


def to_box(mask: Mapping[str, Any]) -> list[float]:
    """The tightest [x1, y1, x2, y2] around the mask's pixels (pixel edges), [0, 0, 0, 0] for an empty mask."""
    x, y, w, h = (float(v) for v in coco_mask.toBbox(_coco_rle(mask)))
    return [x, y, x + w, y + h]


def iou_matrix(predicted: Sequence[Mapping[str, Any]], truth: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """P x T mask IoUs (pycocotools; crowd flags off)."""
    if not predicted or not truth:
        return np.zeros((len(predicted), len(truth)))
    return np.asarray(
        coco_mask.iou([_coco_rle(m) for m in predicted], [_coco_rle(m) for m in truth], [0] * len(truth))
    ).reshape(len(predicted), len(truth))


def resize(mask: Mapping[str, Any], width: int, height: int) -> Mask:
    """The mask scaled to width x height (nearest neighbour)."""
    binary = decode(mask)
    h, w = binary.shape
    if (w, h) == (width, height):
        return validate(mask)
    rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(np.int64)
    cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(np.int64)
    return encode(binary[rows][:, cols])


def from_polygons(polygons: Sequence[Sequence[float]], width: int, height: int) -> Mask:
    """COCO polygons (each [x1, y1, x2, y2, ...] in pixels) -> one RLE of their union."""
    if width <= 0 or height <= 0:
        raise MaskError(f"image size {width} x {height} is not positive")
    rings = [list(map(float, p)) for p in polygons]
    if not rings or any(len(p) < 6 or len(p) % 2 for p in rings):
        raise MaskError("a polygon needs at least 3 points given as x, y pairs")
    if not all(np.isfinite(p).all() for p in rings):
        raise MaskError("polygon coordinates must be finite numbers")
    merged = coco_mask.merge(coco_mask.frPyObjects(rings, height, width))
    return validate({"size": [height, width], "counts": merged["counts"]})


def from_coco_segmentation(segmentation: Any, width: int, height: int) -> Mask:
    """A COCO annotation's `segmentation` (polygon list or RLE) -> RLE."""
    if isinstance(segmentation, list):
        return from_polygons(segmentation, width, height)
    if isinstance(segmentation, dict):
        out = validate(segmentation)
        if out["size"] != [height, width]:
            raise MaskError(f"RLE size {out['size']} is not the image's [{height}, {width}]")
        return out
    raise MaskError(f"segmentation is neither polygons nor RLE but {type(segmentation).__name__}")


def from_labelstudio_polygon(points: Any, width: int, height: int) -> Mask:
    """Label Studio `polygonlabels` points ([[x%, y%], ...], percent of the original image) -> RLE."""
    if not isinstance(points, list) or len(points) < 3:
        raise MaskError("a polygon needs at least 3 points")
    flat: list[float] = []
    for point in points:
        if not isinstance(point, list | tuple) or len(point) != 2:
            raise MaskError(f"polygon point {point!r} is not an [x, y] pair")
        x, y = float(point[0]), float(point[1])
        if not (-0.5 <= x <= 100.5 and -0.5 <= y <= 100.5):
            raise MaskError(f"polygon point [{x:g}, {y:g}] lies outside the image (percent 0-100)")
        flat += [x * width / 100.0, y * height / 100.0]
    return from_polygons([flat], width, height)


def from_labelstudio_brush(rle: Any, width: int, height: int) -> Mask:
    """Label Studio `brushlabels` strokes (its own RLE of an RGBA image, `value.rle`) -> RLE. Decoded by
    label-studio-sdk's converter (`brush.decode_rle`); a pixel is in the mask when its alpha is not 0."""
    from label_studio_sdk.converter.brush import decode_rle

    if not isinstance(rle, list) or not rle or not all(isinstance(v, int) and 0 <= v <= 255 for v in rle):
        raise MaskError("brush RLE must be a non-empty list of bytes (0-255)")
    try:
        pixels = decode_rle(rle)
    except Exception as exc:  # the decoder reads past the end of a truncated stream (IndexError and kin)
        raise MaskError(f"brush RLE does not decode: {type(exc).__name__} {exc}") from None
    if pixels.size != width * height * 4:
        raise MaskError(f"brush RLE holds {pixels.size} values, the {width} x {height} image has {width * height * 4}")
    return encode(pixels.reshape(height, width, 4)[:, :, 3] > 0)


def _coco_rle(mask: Any) -> dict[str, Any]:
    if not isinstance(mask, Mapping):
        raise MaskError(f"a mask is a dict with size and counts, not {type(mask).__name__}")
    size = mask.get("size")
    counts = mask.get("counts")
    if not isinstance(size, list | tuple) or len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise MaskError(f"mask size must be [height, width] of positive integers, not {size!r}")
    h, w = int(size[0]), int(size[1])
    if isinstance(counts, list):
        if any(not isinstance(c, int) or c < 0 for c in counts) or sum(counts) != h * w:
            raise MaskError(f"uncompressed RLE counts must be non-negative integers summing to {h} x {w} pixels")
        return dict(coco_mask.frPyObjects({"size": [h, w], "counts": counts}, h, w))
    if isinstance(counts, str):
        counts = counts.encode("ascii", errors="replace")
    if not isinstance(counts, bytes) or not counts:
        raise MaskError("mask counts must be a non-empty COCO RLE string")
    return {"size": [h, w], "counts": counts}
