"""The Label Studio task format of the review loop: the labelling configuration generated from the taxonomy
(`label_config`: one Choices block per classifier group, single or multiple choice; one RectangleLabels block per
detector group, and for a mask detector a PolygonLabels and a BrushLabels block beside it), the model's guess as
pre-annotations (`prediction_result`, with per-region scores), an annotator's choices (`answer_result`, for
scripted annotators), box conversions between pixels and Label Studio's percent, and annotations read back
(`parse_annotation`: attribute values, boxes, and masks of polygon or brush regions, with a clear outcome for
everything: applied, skipped, unknown_label, unknown_group, not_answered, invalid; `annotation_revision`: a
digest of what an annotation says).

Pure: JSON in, JSON out. No network (the daemon's review worker talks to Label Studio), no database, no policy.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from connectors.records import TITLE_PHOTO_CONFLICT, AttributeValue, ModelValue
from learner.inference.engine import ImageTags
from learner.model.masks import MaskError, from_labelstudio_brush, from_labelstudio_polygon, to_box
from learner.model.taxonomy import AttributeGroup, Taxonomy

IMAGE_NAME = "image"  # the Image object tag of the labelling configuration, and the task data key of the image
DESCRIPTION_NAME = "description"  # the Text object tag showing the product's description, and its task data key
CONFLICT_NAME = "conflict"  # the Text object tag naming the title/photo conflicts (`conflict_note`), and its data key
SKIPPED_ATTRIBUTE = "*"  # the attribute name of an outcome that concerns the whole annotation (a skipped task)

# for a mask detector, each detector group also gets a PolygonLabels and a BrushLabels control, named the group's name
# plus these suffixes (Label Studio needs one name per control); regions drawn with them count for the group
MASK_CONTROL_SUFFIXES = {"polygonlabels": "_outline", "brushlabels": "_brush"}
MASK_CONTROL_TAGS = {"polygonlabels": "PolygonLabels", "brushlabels": "BrushLabels"}
SAME_OBJECT_IOU = 0.5  # a rectangle whose box overlaps an outline of the same label this much is that object

Outcome = Literal["applied", "skipped", "unknown_label", "unknown_group", "not_answered", "invalid"]


def label_config(taxonomy: Taxonomy, masks: bool = False) -> str:
    """The labelling configuration for a taxonomy: the product's title, id and description (task data `title`,
    `product_id`, `description`; an empty description shows nothing), where its title and photos disagree (task
    data `conflict`, `conflict_note`; empty for most products), the image, then one block per
    attribute group in taxonomy order: Choices (single or multiple) for classifier groups, RectangleLabels for
    detector groups. Control names are the group names, choice values the taxonomy's values. With `masks` (the
    champion's detector returns instance masks), each detector group also gets PolygonLabels and BrushLabels
    controls (`MASK_CONTROL_SUFFIXES`) with the same labels, so annotators can outline objects: the model's boxes
    stay rectangles, an outline of a boxed object replaces its rectangle (see `parse_annotation`)."""
    view = ET.Element("View")
    ET.SubElement(view, "Header", value="$title")
    ET.SubElement(view, "Header", value="$product_id", size="6")
    ET.SubElement(view, "Text", name=DESCRIPTION_NAME, value=f"${DESCRIPTION_NAME}")
    ET.SubElement(view, "Text", name=CONFLICT_NAME, value=f"${CONFLICT_NAME}")
    ET.SubElement(view, "Image", name=IMAGE_NAME, value=f"${IMAGE_NAME}", zoom="true", zoomControl="true")
    for group in taxonomy.groups:
        ET.SubElement(view, "Header", value=group.name, size="5")
        if group.source == "detector":
            block = ET.SubElement(view, "RectangleLabels", name=group.name, toName=IMAGE_NAME)
            for value in group.values:
                ET.SubElement(block, "Label", value=value)
            for kind, suffix in MASK_CONTROL_SUFFIXES.items():
                if not masks:
                    break
                block = ET.SubElement(view, MASK_CONTROL_TAGS[kind], name=group.name + suffix, toName=IMAGE_NAME)
                for value in group.values:
                    ET.SubElement(block, "Label", value=value)
        else:
            block = ET.SubElement(
                view,
                "Choices",
                name=group.name,
                toName=IMAGE_NAME,
                choice="multiple" if group.multi_label else "single",
                showInline="true",
            )
            for value in group.values:
                ET.SubElement(block, "Choice", value=value)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode")


def conflict_note(model_values: Mapping[str, ModelValue]) -> str:
    """What annotators read about a product whose title and photos confidently disagree: one sentence per group
    withheld for that (`TITLE_PHOTO_CONFLICT`) with both readings, e.g. "baseColour: the title says Blue (0.97), the
    photos say Red (0.88)."; "" when no group was."""
    notes = []
    for group, model in model_values.items():
        if model.get("withheld_by") != TITLE_PHOTO_CONFLICT:
            continue
        readings = model.get("readings") or {}
        said = [
            f"the {who} {verb} {reading['value']} ({float(reading.get('confidence') or 0.0):.2f})"
            for who, verb, key in (("title", "says", "title"), ("photos", "say", "photos"))
            if isinstance(reading := readings.get(key), Mapping) and reading.get("value") is not None
        ]
        notes.append(f"{group}: {', '.join(said) or 'the title and the photos disagree'}.")
    return " ".join(notes)


def prediction_result(
    taxonomy: Taxonomy,
    attributes: Sequence[AttributeValue],
    tags: ImageTags | None,
) -> list[dict[str, Any]]:
    """The model's guess as Label Studio result JSON (pre-annotations): one `choices` region per classifier group
    with its score, one `rectanglelabels` region per detection of the shown image (`tags`) whose class maps to a
    detector group value, with the detection's score; boxes in percent of the original image."""
    out: list[dict[str, Any]] = []
    by_group = {a.attribute: a for a in attributes}
    for group in taxonomy.groups:
        if group.source == "detector":
            continue
        attr = by_group.get(group.name)
        if attr is None:
            continue
        values = [v for v in (attr.value if isinstance(attr.value, list) else [attr.value]) if v in group.values]
        if not values:
            continue
        scores = {a.value: float(a.confidence) for a in attr.alternatives}
        score = min(scores.get(v, float(attr.confidence)) for v in values)
        out.append(
            {
                "id": f"{group.name}",
                "from_name": group.name,
                "to_name": IMAGE_NAME,
                "type": "choices",
                "value": {"choices": values},
                "score": round(score, 4),
            }
        )
    if tags is not None and tags.width > 0 and tags.height > 0:
        detector_groups = [g for g in taxonomy.groups if g.source == "detector"]
        for i, det in enumerate(tags.detections):
            for group in detector_groups:
                value = det.attributes.get(group.name)
                if value is None or value not in group.values:
                    continue
                out.append(
                    {
                        "id": f"{group.name}-{i}",
                        "from_name": group.name,
                        "to_name": IMAGE_NAME,
                        "type": "rectanglelabels",
                        "original_width": tags.width,
                        "original_height": tags.height,
                        "image_rotation": 0,
                        "value": {**box_to_percent(det.box, tags.width, tags.height), "rectanglelabels": [value]},
                        "score": round(float(det.score), 4),
                    }
                )
    return out


def answer_result(taxonomy: Taxonomy, values: Mapping[str, str | Sequence[str]]) -> list[dict[str, Any]]:
    """An annotator's answer as Label Studio result JSON: one `choices` region per classifier group named in
    `values` (a label, or labels for a multi-label group), in taxonomy order; what `parse_annotation` reads back.
    Scripted annotators (tests, tests/benchmarks/bench_active_learning.py) submit it through the SDK. A group the
    taxonomy lacks, or a value it does not list, raises ValueError (an annotator cannot pick it)."""
    groups = {g.name: g for g in taxonomy.groups if g.source == "classifier"}
    unknown = set(values) - set(groups)
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not classifier groups of taxonomy {taxonomy.name!r}")
    out: list[dict[str, Any]] = []
    for name, group in groups.items():
        if name not in values:
            continue
        given = values[name]
        chosen = [given] if isinstance(given, str) else list(given)
        missing = [v for v in chosen if v not in group.values]
        if missing:
            raise ValueError(f"{missing} are not values of group {name!r}")
        out.append(
            {"from_name": name, "to_name": IMAGE_NAME, "type": "choices", "value": {"choices": chosen}, "id": name}
        )
    return out


def box_to_percent(box: Sequence[float], width: int, height: int) -> dict[str, float]:
    """[x1, y1, x2, y2] in pixels -> Label Studio's x, y, width, height in percent of the image, clipped to it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    return {
        "x": round(100.0 * x1 / width, 4),
        "y": round(100.0 * y1 / height, 4),
        "width": round(100.0 * (x2 - x1) / width, 4),
        "height": round(100.0 * (y2 - y1) / height, 4),
        "rotation": 0,
    }


def box_from_percent(value: Mapping[str, Any], width: float, height: float) -> list[float]:
    """Label Studio's percent box -> [x1, y1, x2, y2] in pixels of the original image."""
    x = float(value.get("x", 0.0)) * width / 100.0
    y = float(value.get("y", 0.0)) * height / 100.0
    w = float(value.get("width", 0.0)) * width / 100.0
    h = float(value.get("height", 0.0)) * height / 100.0
    return [round(x, 2), round(y, 2), round(x + w, 2), round(y + h, 2)]


MASK_REGION_TYPES = ("polygonlabels", "brushlabels")


def region_mask(item: Mapping[str, Any]) -> dict[str, Any]:
    """A Label Studio `polygonlabels` or `brushlabels` result item -> its mask (COCO RLE over the original image,
    `learner.model.masks`). Raises MaskError saying what is wrong (no image size, too few points, a point outside
    the image, brush data that does not decode)."""
    width = int(float(item.get("original_width") or 0))
    height = int(float(item.get("original_height") or 0))
    if width <= 0 or height <= 0:
        raise MaskError("the region has no original_width/original_height, so its mask cannot be placed")
    value = item.get("value") or {}
    if item.get("type") == "polygonlabels":
        return from_labelstudio_polygon(value.get("points"), width, height)
    if value.get("format", "rle") != "rle":
        raise MaskError(f"brush format {value.get('format')!r} is not read; only 'rle'")
    return from_labelstudio_brush(value.get("rle"), width, height)


@dataclass(frozen=True)
class ParsedValue:
    """One attribute of one annotation. `value` is a label (single-choice group) or a list of labels (multi-label
    and detector groups); `boxes` [{"label", "box": [x1, y1, x2, y2]}] in pixels for detector groups, with
    "mask" (COCO RLE) too when the annotator outlined the object with a polygon or brush.
    `model_was_right` is None unless the outcome is 'applied' and the model had a value for the group."""

    attribute: str
    outcome: Outcome
    value: str | list[str] | None = None
    boxes: list[dict[str, Any]] | None = None
    model_value: str | list[str] | None = None
    model_was_right: bool | None = None
    detail: str = ""


def annotation_revision(result: Sequence[Mapping[str, Any]], was_cancelled: bool) -> str:
    """A digest of what an annotation says: equal for the same content however it arrived (webhook or poll,
    once or twice), different after an edit that changed anything."""
    canonical = json.dumps({"result": list(result), "was_cancelled": bool(was_cancelled)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def parse_annotation(
    taxonomy: Taxonomy,
    result: Sequence[Mapping[str, Any]],
    *,
    was_cancelled: bool = False,
    model: Mapping[str, ModelValue] | None = None,
) -> list[ParsedValue]:
    """An annotation's result -> one `ParsedValue` per group it answers (plus groups the model predicted that it
    left unanswered). Rules, each with its outcome:

    - skipped task (`was_cancelled`): one 'skipped' value for attribute '*', nothing else;
    - a control that is not a taxonomy group, or of an unexpected type: 'unknown_group' (never applied);
    - a label that is not a value of its group: 'unknown_label' for the whole group (never applied; the rest of
      the annotation is);
    - a single-choice group with more or fewer than one choice: 'invalid';
    - a detector group: rectangles, polygons and brush strokes are its regions (polygons and strokes become masks),
      drawn with the group's control or its mask controls (`label_config(..., masks=True)`); a rectangle whose box
      overlaps an outline of the same label by IoU >= SAME_OBJECT_IOU is that object and is dropped (the outline
      carries box and mask); a region whose mask is malformed makes the whole group 'invalid', with the reason; the
      set of labels is the value; no boxes while the model had predicted some means the annotator removed them
      (value [], applied); no boxes and no model boxes: 'not_answered';
    - a classifier group the model predicted but the annotation leaves empty: 'not_answered'.
    """
    model = model or {}
    if was_cancelled:
        return [ParsedValue(SKIPPED_ATTRIBUTE, "skipped", detail="the annotator skipped the task")]
    groups = {g.name: g for g in taxonomy.groups}
    choices: dict[str, list[str]] = {}
    boxes: dict[str, list[dict[str, Any]]] = {}
    out: list[ParsedValue] = []
    foreign: dict[str, str] = {}
    bad_masks: dict[str, str] = {}  # group -> why one of its masks is unusable (the whole group is rejected)
    for item in result:
        name = str(item.get("from_name", ""))
        kind = str(item.get("type", ""))
        value = item.get("value") or {}
        group = groups.get(name) or _mask_control_group(name, kind, groups)
        if group is None:
            foreign.setdefault(name, f"control {name!r} ({kind}) is not a group of taxonomy {taxonomy.name!r}")
            continue
        name = group.name  # a mask control (`detectedObjects_outline`) answers for its group
        if group.source == "detector" and kind == "rectanglelabels":
            width = float(item.get("original_width") or 0)
            height = float(item.get("original_height") or 0)
            for label in value.get("rectanglelabels", []):
                box = box_from_percent(value, width, height) if width and height else None
                boxes.setdefault(name, []).append({"label": str(label), "box": box})
        elif group.source == "detector" and kind in MASK_REGION_TYPES:
            try:
                mask = region_mask(item)
            except MaskError as exc:
                bad_masks.setdefault(name, f"{kind} region {item.get('id', '?')}: {exc}")
                continue
            for label in value.get(kind, []):
                boxes.setdefault(name, []).append({"label": str(label), "box": to_box(mask), "mask": mask})
        elif group.source == "classifier" and kind == "choices":
            choices.setdefault(name, []).extend(str(c) for c in value.get("choices", []))
        else:
            foreign.setdefault(name, f"control {name!r} has type {kind!r}, not what group {name!r} uses")
    for name, detail in foreign.items():
        out.append(ParsedValue(name, "unknown_group", detail=detail))
    for group in taxonomy.groups:
        given = model.get(group.name)
        predicted = given["value"] if given is not None else None
        if group.source == "detector":
            if group.name in bad_masks:
                detail = f"{bad_masks[group.name]}; the group's regions are not applied"
                out.append(ParsedValue(group.name, "invalid", model_value=predicted, detail=detail))
                continue
            regions = boxes.get(group.name)
            if regions is None:
                if predicted:
                    out.append(_judged(group, [], predicted, boxes=[]))
                elif predicted is not None:
                    out.append(ParsedValue(group.name, "not_answered", model_value=predicted))
                continue
            regions = _without_outlined_rectangles(regions)
            labels = [r["label"] for r in regions]
            unknown = sorted({v for v in labels if v not in group.values})
            if unknown:
                out.append(_unknown(group, unknown, labels, predicted))
                continue
            out.append(_judged(group, sorted(set(labels), key=group.values.index), predicted, boxes=regions))
            continue
        selected = choices.get(group.name)
        if not selected:
            if predicted is not None:
                out.append(ParsedValue(group.name, "not_answered", model_value=predicted))
            continue
        unknown = sorted({v for v in selected if v not in group.values})
        if unknown:
            out.append(_unknown(group, unknown, selected, predicted))
            continue
        if group.multi_label:
            out.append(_judged(group, sorted(set(selected), key=group.values.index), predicted))
        elif len(set(selected)) != 1:
            out.append(
                ParsedValue(
                    group.name,
                    "invalid",
                    value=selected,
                    model_value=predicted,
                    detail=f"single-choice group {group.name!r} got {len(set(selected))} choices",
                )
            )
        else:
            out.append(_judged(group, selected[0], predicted))
    return out


def _unknown(
    group: AttributeGroup, unknown: list[str], given: list[str], predicted: str | list[str] | None
) -> ParsedValue:
    return ParsedValue(
        group.name,
        "unknown_label",
        value=given if group.multi_label or len(given) != 1 else given[0],
        model_value=predicted,
        detail=f"{unknown} not values of group {group.name!r}; the taxonomy or the project's labelling "
        "configuration is out of date",
    )


def _mask_control_group(name: str, kind: str, groups: Mapping[str, AttributeGroup]) -> AttributeGroup | None:
    """The detector group a mask control (`<group>_outline` for polygons, `<group>_brush` for brush strokes)
    answers for; None for any other name."""
    suffix = MASK_CONTROL_SUFFIXES.get(kind)
    if suffix is None or not name.endswith(suffix):
        return None
    group = groups.get(name[: -len(suffix)])
    return group if group is not None and group.source == "detector" else None


def _without_outlined_rectangles(regions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Regions minus the rectangles that an outline (a region with a mask) of the same label covers by box IoU >=
    SAME_OBJECT_IOU: the annotator outlined the model's boxed object, which is one object, not two."""
    outlines = [r for r in regions if r.get("mask") is not None and r.get("box") is not None]
    if not outlines:
        return regions
    return [
        r
        for r in regions
        if r.get("mask") is not None
        or r.get("box") is None
        or not any(o["label"] == r["label"] and _box_iou(o["box"], r["box"]) >= SAME_OBJECT_IOU for o in outlines)
    ]


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _judged(
    group: AttributeGroup,
    value: str | list[str],
    predicted: str | list[str] | None,
    boxes: list[dict[str, Any]] | None = None,
) -> ParsedValue:
    right: bool | None = None
    if predicted is not None:
        if group.multi_label:
            given = set(predicted) if isinstance(predicted, list) else {predicted}
            right = set(value) == given
        else:
            right = value == predicted
    return ParsedValue(group.name, "applied", value=value, boxes=boxes, model_value=predicted, model_was_right=right)
