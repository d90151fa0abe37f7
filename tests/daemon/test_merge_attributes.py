"""How the results of several images of one product, and its title, become one value per attribute (pure functions)."""

from __future__ import annotations

import dataclasses

import numpy as np

from connectors.events import ProductEvent
from connectors.records import TITLE_PHOTO_CONFLICT
from connectors.source import SourceRecord
from daemon.metrics import PipelineMetrics, ServiceMetrics
from daemon.pipeline import EventJob, merge_attributes
from daemon.pipeline.merge import product_result
from learner.inference.decoding import ValueDecoder
from learner.inference.engine import Detection, ImageTags
from learner.inference.product_decision import Fusion, GroupFusion, ProductDecider
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


class _Titles:
    """A title model stand-in: every title reads as the first value of each group, except gender as Women."""

    def __init__(self) -> None:
        self.autofill_thresholds = {g.name: 0.9 for g in TAXONOMY.classifier_groups if not g.multi_label}

    def probabilities(self, titles):  # type: ignore[no-untyped-def]
        out = {}
        for g in TAXONOMY.classifier_groups:
            row = np.full(len(g.values), 0.01 / (len(g.values) - 1))
            row[g.index("Women") if g.name == "gender" else 0] = 0.99
            out[g.name] = np.array([row for _ in titles])
        return out


def _photo_of_mens_first_values() -> ImageTags:
    probs = {}
    for g in TAXONOMY.classifier_groups:
        if not g.multi_label:
            probs[g.name] = np.full(len(g.values), 0.02 / (len(g.values) - 1))
            probs[g.name][0] = 0.98  # gender: Men
    d = ValueDecoder(TAXONOMY)({g: p[None, :] for g, p in probs.items()})
    attributes = {g.name: d.ranked(g.name, 0, g.values, 3) for g in ValueDecoder(TAXONOMY).groups}
    return ImageTags(attributes, [], 100, 100, "v1", probs={g: p[0] for g, p in d.probs.items()})


def test_the_event_title_takes_part_and_a_confident_disagreement_is_withheld_and_counted() -> None:
    fusion = Fusion(
        {g: GroupFusion(threshold=0.9, conflict_title=0.9, conflict_image=0.05) for g in _Titles().autofill_thresholds}
    )
    decider = ProductDecider(TAXONOMY, ValueDecoder(TAXONOMY), _Titles(), fusion)
    record = SourceRecord("products", 0, 7, None, b"{}", [], 0)
    event = ProductEvent(schema_version=1, product_id="p1", image_urls=["https://cdn/p1.jpg"], title="Women top")
    job = EventJob(record, 0.0, event, [("https://cdn/p1.jpg", "sha")], {0: _photo_of_mens_first_values()}, 1)

    result = product_result(job, decider, "kafka")

    values = {a.attribute: a for a in result.attributes}
    assert values["gender"].withheld_by == TITLE_PHOTO_CONFLICT and not values["gender"].auto_filled
    assert values["gender"].readings is not None and values["gender"].readings["title"]["value"] == "Women"
    assert values["articleType"].auto_filled and values["articleType"].readings is not None
    untitled = product_result(dataclasses.replace(job, event=event.model_copy(update={"title": None})), decider, "k")
    assert untitled.attributes == merge_attributes(list(job.tags.values()), TAXONOMY)

    metrics = ServiceMetrics()
    PipelineMetrics(metrics, "kafka").decided(result.attributes)
    assert metrics.registry.get_sample_value("shelfsight_title_photo_conflicts_total", {"group": "gender"}) == 1
    fused = {"group": "articleType", "decided_from": "photos+title"}
    assert metrics.registry.get_sample_value("shelfsight_title_decisions_total", fused) == 1
