"""The Label Studio task format (learner/review/tasks.py): the labelling configuration generated from the taxonomy,
predictions as pre-annotations, and annotations parsed back into attribute values with a clear outcome for
everything."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from connectors.records import TITLE_PHOTO_CONFLICT, ModelValue
from learner.model.taxonomy import Taxonomy
from learner.review.tasks import (
    CONFLICT_NAME,
    DESCRIPTION_NAME,
    ParsedValue,
    annotation_revision,
    answer_result,
    box_from_percent,
    box_to_percent,
    conflict_note,
    label_config,
    parse_annotation,
    prediction_result,
)
from tests.learner.review.outputs import confident, tags_with_tie

# -------------------------------------------------------------------------------------------- label config


def test_the_labelling_configuration_has_one_block_per_group(taxonomy: Taxonomy) -> None:
    view = ET.fromstring(label_config(taxonomy))
    image = view.find("Image")
    assert image is not None and image.get("value") == "$image"
    garment = view.find("Choices[@name='garment']")
    assert garment is not None and garment.get("choice") == "single" and garment.get("toName") == "image"
    assert [c.get("value") for c in garment] == list(taxonomy.group("garment").values)
    boxes = view.find("RectangleLabels[@name='detectedObjects']")
    assert boxes is not None and [c.get("value") for c in boxes] == list(taxonomy.group("detectedObjects").values)
    assert view.find("Choices[@name='detectedObjects']") is None
    assert {h.get("value") for h in view.findall("Header")} >= {"$title", "$product_id"}


def test_annotators_see_the_products_title_id_description_and_conflicts_above_the_photo(taxonomy: Taxonomy) -> None:
    view = ET.fromstring(label_config(taxonomy))
    shown = [(tag.tag, tag.get("value")) for tag in view][:5]
    assert shown == [
        ("Header", "$title"),
        ("Header", "$product_id"),
        ("Text", "$description"),
        ("Text", "$conflict"),
        ("Image", "$image"),
    ]
    assert [t.get("name") for t in view.findall("Text")] == [DESCRIPTION_NAME, CONFLICT_NAME]


def test_a_title_photo_conflict_is_told_to_annotators_with_both_readings() -> None:
    both = {"decided_from": "photos+title", "title": {"value": "Blue", "confidence": 0.97}}
    values: dict[str, ModelValue] = {
        "garment": {"value": "Shirt", "confidence": 0.99, "box": None, "auto_filled": True},
        "colour": {
            "value": "Red",
            "confidence": 0.52,
            "box": None,
            "auto_filled": False,
            "withheld_by": TITLE_PHOTO_CONFLICT,
            "readings": {**both, "photos": {"value": "Red", "confidence": 0.88}},
        },
        "gender": {"value": "Men", "confidence": 0.5, "box": None, "withheld_by": TITLE_PHOTO_CONFLICT},
    }
    assert conflict_note(values) == (
        "colour: the title says Blue (0.97), the photos say Red (0.88). gender: the title and the photos disagree."
    )
    assert conflict_note({"garment": values["garment"]}) == "" and conflict_note({}) == ""


def test_multi_label_classifier_groups_get_multiple_choice(taxonomy: Taxonomy) -> None:
    from learner.model.taxonomy import Taxonomy

    data = taxonomy.to_dict()
    data["groups"]["style"] = {"kind": "multi", "source": "classifier", "values": ["floral", "striped"]}
    view = ET.fromstring(label_config(Taxonomy.from_dict(data)))
    style = view.find("Choices[@name='style']")
    assert style is not None and style.get("choice") == "multiple"


def test_a_mask_detector_config_adds_outline_and_brush_controls_to_each_detector_group(taxonomy: Taxonomy) -> None:
    plain = ET.fromstring(label_config(taxonomy))
    assert plain.find("PolygonLabels") is None and plain.find("BrushLabels") is None

    view = ET.fromstring(label_config(taxonomy, masks=True))

    values = list(taxonomy.group("detectedObjects").values)
    rectangles = view.find("RectangleLabels[@name='detectedObjects']")  # the model's boxes stay pre-annotations
    outline = view.find("PolygonLabels[@name='detectedObjects_outline']")
    brush = view.find("BrushLabels[@name='detectedObjects_brush']")
    for block in (rectangles, outline, brush):
        assert block is not None and block.get("toName") == "image"
        assert [label.get("value") for label in block] == values
    names = [e.get("name") for e in view if e.get("name")]
    assert len(names) == len(set(names))  # Label Studio refuses two controls of one name
    assert view.find("PolygonLabels[@name='garment_outline']") is None  # classifier groups are not outlined


def test_an_outline_drawn_with_the_mask_control_replaces_the_rectangle_it_covers(taxonomy: Taxonomy) -> None:
    # the model's tie box is 40..160 x 100..300 px of a 400 x 500 image; the annotator outlines it (a little
    # tighter) and adds an umbrella with the brush-less polygon tool; a second tie box elsewhere stays a box
    outline = {
        "from_name": "detectedObjects_outline",
        "to_name": "image",
        "type": "polygonlabels",
        "original_width": 400,
        "original_height": 500,
        "value": {"points": [[12, 22], [38, 22], [38, 58], [12, 58]], "polygonlabels": ["tie"]},
    }
    umbrella = {**outline, "value": {"points": [[70, 70], [90, 70], [80, 90]], "polygonlabels": ["umbrella"]}}
    result = [rect("tie"), rect("tie", x=60, y=5, w=10, h=10), outline, umbrella]

    objects = by_attribute(parse_annotation(taxonomy, result, model=MODEL))["detectedObjects"]

    assert objects.outcome == "applied" and objects.value == ["tie", "umbrella"]
    assert objects.boxes is not None and len(objects.boxes) == 3
    outlined = [b for b in objects.boxes if b.get("mask") is not None]
    assert sorted(b["label"] for b in outlined) == ["tie", "umbrella"]
    assert [b["box"] for b in objects.boxes if b.get("mask") is None] == [[240.0, 25.0, 280.0, 75.0]]


def test_a_mask_control_of_a_group_the_taxonomy_lacks_is_unknown(taxonomy: Taxonomy) -> None:
    stray = {"from_name": "garment_outline", "to_name": "image", "type": "polygonlabels", "value": {}}

    parsed = by_attribute(parse_annotation(taxonomy, [stray], model=MODEL))

    assert parsed["garment_outline"].outcome == "unknown_group"


# -------------------------------------------------------------------------------------------- predictions


def test_predictions_become_pre_annotations_with_per_region_scores(taxonomy: Taxonomy) -> None:
    regions = prediction_result(taxonomy, confident(garment=0.6), tags_with_tie())
    by_name = {(r["from_name"], r["type"]): r for r in regions}
    garment = by_name[("garment", "choices")]
    assert garment["value"] == {"choices": ["Shirt"]} and garment["score"] == 0.6
    assert by_name[("kids", "choices")]["value"] == {"choices": ["False"]}
    box = by_name[("detectedObjects", "rectanglelabels")]
    assert box["score"] == 0.8 and box["original_width"] == 400 and box["original_height"] == 500
    assert box["value"]["rectanglelabels"] == ["tie"]
    assert box["value"]["x"] == 25.0 and box["value"]["width"] == 25.0 and box["value"]["height"] == 60.0
    assert len([r for r in regions if r["type"] == "rectanglelabels"]) == 1
    assert len({r["id"] for r in regions}) == len(regions)


def test_boxes_round_trip_between_pixels_and_percent() -> None:
    percent = box_to_percent([40.0, 30.0, 240.0, 130.0], 400, 200)
    assert percent["x"] == 10.0 and percent["y"] == 15.0 and percent["width"] == 50.0 and percent["height"] == 50.0
    assert box_from_percent(percent, 400, 200) == [40.0, 30.0, 240.0, 130.0]
    clipped = box_to_percent([-10.0, -5.0, 500.0, 100.0], 400, 200)
    assert clipped["x"] == 0.0 and clipped["width"] == 100.0


# -------------------------------------------------------------------------------------------- parsing


def choice(group: str, *values: str) -> dict[str, object]:
    return {"from_name": group, "to_name": "image", "type": "choices", "value": {"choices": list(values)}}


def rect(label: str, x: float = 10, y: float = 20, w: float = 30, h: float = 40) -> dict[str, object]:
    return {
        "from_name": "detectedObjects",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": 400,
        "original_height": 500,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
    }


MODEL = {"garment": {"value": "Shirt"}, "kids": {"value": "False"}, "detectedObjects": {"value": ["tie"]}}


def by_attribute(values: list[ParsedValue]) -> dict[str, ParsedValue]:
    return {v.attribute: v for v in values}


def test_an_annotation_becomes_attribute_values_and_says_whether_the_model_was_right(taxonomy: Taxonomy) -> None:
    parsed = by_attribute(
        parse_annotation(taxonomy, [choice("garment", "Dress"), choice("kids", "False"), rect("tie")], model=MODEL)
    )
    assert parsed["garment"].outcome == "applied" and parsed["garment"].value == "Dress"
    assert parsed["garment"].model_was_right is False and parsed["garment"].model_value == "Shirt"
    assert parsed["kids"].model_was_right is True
    objects = parsed["detectedObjects"]
    assert objects.value == ["tie"] and objects.model_was_right is True
    assert objects.boxes == [{"label": "tie", "box": [40.0, 100.0, 160.0, 300.0]}]


def test_a_skipped_task_has_one_clear_outcome(taxonomy: Taxonomy) -> None:
    parsed = parse_annotation(taxonomy, [choice("garment", "Dress")], was_cancelled=True, model=MODEL)
    assert [(p.attribute, p.outcome) for p in parsed] == [("*", "skipped")]


def test_a_label_unknown_to_the_taxonomy_is_kept_but_never_applied(taxonomy: Taxonomy) -> None:
    parsed = by_attribute(
        parse_annotation(taxonomy, [choice("garment", "Kimono"), choice("kids", "True"), rect("dog")], model=MODEL)
    )
    assert parsed["garment"].outcome == "unknown_label" and parsed["garment"].value == "Kimono"
    assert "Kimono" in parsed["garment"].detail and parsed["garment"].model_was_right is None
    assert parsed["detectedObjects"].outcome == "unknown_label"
    assert parsed["kids"].outcome == "applied"  # the rest of the annotation still counts


def test_a_control_unknown_to_the_taxonomy_is_reported(taxonomy: Taxonomy) -> None:
    parsed = by_attribute(parse_annotation(taxonomy, [choice("colour", "Red"), choice("garment", "Shirt")], model={}))
    assert parsed["colour"].outcome == "unknown_group"
    assert parsed["garment"].outcome == "applied" and parsed["garment"].model_was_right is None


def test_groups_left_empty_and_ambiguous_answers_are_not_applied(taxonomy: Taxonomy) -> None:
    parsed = by_attribute(parse_annotation(taxonomy, [choice("garment", "Shirt", "Dress")], model=MODEL))
    assert parsed["garment"].outcome == "invalid"
    assert parsed["kids"].outcome == "not_answered"
    # the model's boxes all removed by the annotator: "no objects" is an answer
    assert parsed["detectedObjects"].outcome == "applied" and parsed["detectedObjects"].value == []
    assert parsed["detectedObjects"].model_was_right is False
    none_predicted = by_attribute(parse_annotation(taxonomy, [choice("garment", "Shirt")], model={}))
    assert "detectedObjects" not in none_predicted


def test_an_answer_built_for_an_annotator_parses_back_to_the_same_values(taxonomy: Taxonomy) -> None:
    values: dict[str, str | list[str]] = {
        g.name: list(g.values[:2]) if g.multi_label else g.values[-1] for g in taxonomy.classifier_groups
    }
    parsed = by_attribute(parse_annotation(taxonomy, answer_result(taxonomy, values)))
    assert {name: (p.outcome, p.value) for name, p in parsed.items()} == {
        name: ("applied", value) for name, value in values.items()
    }
    with pytest.raises(ValueError, match="not values"):
        answer_result(taxonomy, {taxonomy.classifier_groups[0].name: "no such value"})
    with pytest.raises(ValueError, match="not classifier groups"):
        answer_result(taxonomy, {"nope": "x"})


def test_the_revision_changes_with_the_content_only(taxonomy: Taxonomy) -> None:
    a = [choice("garment", "Shirt"), choice("kids", "False")]
    assert annotation_revision(a, False) == annotation_revision([dict(x) for x in a], False)
    assert annotation_revision(a, False) != annotation_revision([choice("garment", "Dress")], False)
    assert annotation_revision(a, False) != annotation_revision(a, True)
