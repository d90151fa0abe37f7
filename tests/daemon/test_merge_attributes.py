"""How the results of several images of one product become one value per attribute (pure function)."""

from __future__ import annotations

from daemon.pipeline import merge_attributes
from learner.inference.engine import Detection, ImageTags
from learner.model.taxonomy import load_taxonomy

TAXONOMY = load_taxonomy("fashion-products")


def tags(attributes, detections=()) -> ImageTags:
    return ImageTags(attributes=attributes, detections=list(detections), width=100, height=100, model_version="v1")


def test_single_choice_groups_take_the_most_confident_image_with_its_alternatives():
    front = tags({"gender": [("Men", 0.55), ("Women", 0.40)]})
    side = tags({"gender": [("Women", 0.90), ("Men", 0.05)]})
    (gender,) = [a for a in merge_attributes([front, side], TAXONOMY) if a.attribute == "gender"]
    assert (gender.value, gender.confidence) == ("Women", 0.90)
    assert [(alt.value, alt.confidence) for alt in gender.alternatives] == [("Women", 0.9), ("Men", 0.05)]


def test_multi_label_groups_take_the_union_at_the_highest_confidence_with_the_strongest_box():
    bag = Detection("handbag", 0.7, (1, 2, 3, 4), {"detectedObjects": "handbag"})
    person = Detection("person", 0.95, (5, 6, 7, 8), {"detectedObjects": "person"})
    a = tags({"detectedObjects": [("handbag", 0.7)]}, [bag])
    b = tags({"detectedObjects": [("person", 0.95), ("handbag", 0.6)]}, [person])
    (objects,) = [x for x in merge_attributes([a, b], TAXONOMY) if x.attribute == "detectedObjects"]
    assert objects.value == ["person", "handbag"]
    assert objects.confidence == 0.95
    assert objects.box == [5, 6, 7, 8]


def test_groups_without_any_value_are_left_out():
    merged = merge_attributes([tags({"gender": [("Men", 0.8)]})], TAXONOMY)
    assert [a.attribute for a in merged] == ["gender"]
