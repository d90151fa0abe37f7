"""The review loop's pure parts (learner/review/): the routing policy's choices (threshold, uncertainty ranking,
audit sampling, caps), the labelling configuration generated from the taxonomy, predictions as Label Studio
pre-annotations, and annotations parsed back into attribute values with a clear outcome for everything."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.records import Alternative, AttributeValue, ProductResult
from learner.inference.engine import Detection, ImageTags
from learner.model.taxonomy import Taxonomy, load_taxonomy
from learner.review.caps import ReviewCaps
from learner.review.policy import Assessment, AuditSample, BelowThreshold, RandomSample, ReviewPolicy, rank_for_review
from learner.review.routing import ReviewRouting
from learner.review.tasks import (
    ParsedValue,
    annotation_revision,
    answer_result,
    box_from_percent,
    box_to_percent,
    label_config,
    parse_annotation,
    prediction_result,
)
from learner.review.uncertainty import entropy, least_confidence, margin

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy(ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml")


def single(group: str, *candidates: tuple[str, float]) -> AttributeValue:
    return AttributeValue(group, candidates[0][0], candidates[0][1], [Alternative(v, c) for v, c in candidates])


def confident(garment: float = 0.95, kids: float = 0.97) -> list[AttributeValue]:
    return [
        single("garment", ("Shirt", garment), ("Polo", (1 - garment) / 2), ("T-Shirt", (1 - garment) / 4)),
        single("kids", ("False", kids), ("True", 1 - kids)),
    ]


def policy(taxonomy: Taxonomy, **kwargs: Any) -> ReviewPolicy:
    kwargs.setdefault("audit_rate", 0.0)
    return ReviewPolicy(taxonomy, kwargs.pop("thresholds", {}), **kwargs)


# -------------------------------------------------------------------------------------------- threshold


def test_a_value_under_its_calibrated_threshold_routes_the_product(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, thresholds={"garment": {"Shirt": 0.9}, "kids": {"False": 0.5}})
    decision = p.decide(confident(garment=0.85), T0)
    assert decision.routed and decision.reason == "low_confidence"
    assert [(v.group, v.value, v.threshold) for v in decision.assessment.low_values] == [("garment", "Shirt", 0.9)]


def test_values_at_or_above_their_threshold_are_accepted(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, thresholds={"garment": {"Shirt": 0.9}, "kids": {"False": 0.5}})
    decision = p.decide(confident(garment=0.9), T0)
    assert not decision.routed and decision.reason is None


def test_each_value_has_its_own_threshold_and_others_use_the_default(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, thresholds={"garment": {"Dress": 0.99}}, default_threshold=0.7)
    assert not p.decide(confident(garment=0.8), T0).routed  # Shirt: default 0.7
    low = [single("garment", ("Dress", 0.95), ("Skirt", 0.03)), single("kids", ("False", 0.99), ("True", 0.01))]
    assert p.decide(low, T0).reason == "low_confidence"  # Dress: 0.95 < 0.99


def test_a_group_policy_can_override_the_threshold_or_leave_the_group_out(taxonomy: Taxonomy) -> None:
    from learner.review.policy import GroupPolicy

    stricter = policy(taxonomy, groups={"kids": GroupPolicy(threshold=0.99)})
    assert stricter.decide(confident(kids=0.97), T0).routed
    ignored = policy(taxonomy, thresholds={"garment": {"Shirt": 0.99}}, groups={"garment": GroupPolicy(review=False)})
    assert not ignored.decide(confident(garment=0.6), T0).routed


def test_a_value_kept_as_a_suggestion_below_its_groups_autofill_threshold_routes_the_product(
    taxonomy: Taxonomy,
) -> None:
    p = policy(taxonomy, default_threshold=0.5, autofill_thresholds={"garment": 0.9, "kids": 0.6})
    suggestion = p.decide(confident(garment=0.85), T0)
    assert suggestion.routed and [(v.group, v.threshold) for v in suggestion.assessment.low_values] == [
        ("garment", 0.9)
    ]
    assert not p.decide(confident(garment=0.92), T0).routed  # auto-filled: nothing to review
    never = policy(taxonomy, autofill_thresholds={"garment": 2.0})  # no threshold reached the target precision
    assert never.decide(confident(garment=0.999), T0).routed


def test_a_policy_naming_a_group_the_taxonomy_lacks_is_refused(taxonomy: Taxonomy) -> None:
    from learner.review.policy import GroupPolicy

    with pytest.raises(ValueError, match="colour"):
        policy(taxonomy, groups={"colour": GroupPolicy()})


def test_multi_label_values_are_each_held_to_their_threshold(taxonomy: Taxonomy) -> None:
    objects = AttributeValue(
        "detectedObjects", ["person", "tie"], 0.9, [Alternative("person", 0.9), Alternative("tie", 0.4)]
    )
    p = policy(taxonomy, default_threshold=0.5)
    decision = p.decide([*confident(), objects], T0)
    assert [(v.group, v.value) for v in decision.assessment.low_values] == [("detectedObjects", "tie")]


# -------------------------------------------------------------------------------------------- uncertainty


def test_each_uncertainty_measure_scores_a_near_tie_above_a_clear_winner() -> None:
    clear, tie = [0.9, 0.05, 0.03], [0.45, 0.44, 0.05]
    for measure in (least_confidence, margin, entropy):
        assert measure(tie, False, 17) > measure(clear, False, 17), measure.__name__
        assert 0.0 <= measure(clear, False, 17) <= 1.0 and 0.0 <= measure(tie, False, 17) <= 1.0


def test_the_measures_disagree_where_they_should() -> None:
    # a confident top-1 with a close runner-up vs an unsure top-1 with a spread tail
    close_second = [0.55, 0.44, 0.01]
    spread = [0.40, 0.10, 0.10]
    assert margin(close_second, False, 17) > margin(spread, False, 17)  # margin only sees the gap to the second
    assert least_confidence(spread, False, 17) > least_confidence(close_second, False, 17)  # sees only the top
    assert entropy(spread, False, 17) > entropy(close_second, False, 17)  # sees the whole spread


def test_multi_label_uncertainty_peaks_at_one_half() -> None:
    for measure in (least_confidence, margin, entropy):
        assert measure([0.5], True, 5) == pytest.approx(1.0)
        assert measure([0.99], True, 5) < 0.1
        assert measure([0.99, 0.55], True, 5) > measure([0.99, 0.9], True, 5)


@pytest.mark.parametrize("measure", ["least_confidence", "margin", "entropy"])
def test_routed_products_are_ranked_most_uncertain_first(taxonomy: Taxonomy, measure: str) -> None:
    p = policy(taxonomy, uncertainty=measure, default_threshold=0.99)
    products = {
        "sure": confident(garment=0.97),
        "unsure": [single("garment", ("Shirt", 0.35), ("Polo", 0.33), ("Top", 0.2)), *confident()[1:]],
        "middling": confident(garment=0.7),
    }
    scored = [(pid, p.decide(attrs, T0).assessment.uncertainty) for pid, attrs in products.items()]
    assert rank_for_review(scored) == ["unsure", "middling", "sure"]


def test_ranking_keeps_arrival_order_between_equally_uncertain_products() -> None:
    assert rank_for_review([("a", 0.5), ("b", 0.9), ("c", 0.5)]) == ["b", "a", "c"]


def test_an_unknown_uncertainty_measure_is_refused_and_a_custom_one_is_used(taxonomy: Taxonomy) -> None:
    with pytest.raises(ValueError, match="least_confidence"):
        policy(taxonomy, uncertainty="variance")
    constant = policy(taxonomy, uncertainty=lambda confidences, multi, n: 0.42)
    assert constant.decide(confident(), T0).assessment.uncertainty == 0.42


# -------------------------------------------------------------------------------------------- audit sampling


def test_audit_sampling_routes_about_its_rate_of_accepted_products_reproducibly(taxonomy: Taxonomy) -> None:
    def run(seed: int) -> list[int]:
        p = policy(taxonomy, audit_rate=0.02, audit_seed=seed)
        return [i for i in range(5000) if p.decide(confident(), T0 + timedelta(seconds=i)).reason == "audit"]

    first = run(7)
    assert 60 <= len(first) <= 140  # 2 % of 5000 = 100; binomial sd ~ 10
    assert run(7) == first  # same seed, same sample
    assert run(8) != first


def test_audit_samples_only_accepted_products_and_low_confidence_wins(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, audit_rate=1.0, thresholds={"garment": {"Shirt": 0.9}})
    assert p.decide(confident(garment=0.5), T0).reason == "low_confidence"
    assert p.decide(confident(garment=0.95), T0).reason == "audit"


def test_a_zero_audit_rate_never_samples(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, audit_rate=0.0)
    assert not any(p.decide(confident(), T0).routed for _ in range(2000))


def test_random_routing_samples_every_product_whatever_its_confidence_in_a_random_order(
    taxonomy: Taxonomy,
) -> None:
    def sample(seed: int) -> list[tuple[bool, float]]:
        p = policy(taxonomy, thresholds={"garment": {"Shirt": 0.9}}, strategies=[RandomSample(0.3, seed=seed)])
        outputs = [confident(garment=0.6), confident()] * 500  # half unsure, half sure
        return [(d.routed, d.priority) for d in (p.decide(o, T0) for o in outputs)]

    first = sample(7)
    assert first == sample(7)  # seeded: reproducible
    routed = [i for i, (r, _) in enumerate(first) if r]
    assert 0.25 < len(routed) / len(first) < 0.35
    unsure = sum(1 for i in routed if i % 2 == 0)
    assert 0.4 < unsure / len(routed) < 0.6  # confidence plays no part
    priorities = [first[i][1] for i in routed]
    assert len(set(priorities)) == len(priorities) and all(0 <= x < 1 for x in priorities)
    assert routed != sorted(routed, key=lambda i: -first[i][1])  # the queue order is not the arrival order
    assert all(d.reason == "random" for d in [policy(taxonomy, strategies=[RandomSample(1.0)]).decide(confident(), T0)])
    with pytest.raises(ValueError, match="within"):
        RandomSample(1.5)


def test_under_uncertainty_routing_the_priority_is_the_uncertainty(taxonomy: Taxonomy) -> None:
    decision = policy(taxonomy, thresholds={"garment": {"Shirt": 0.9}}).decide(confident(garment=0.6), T0)
    assert decision.routed and decision.priority == decision.assessment.uncertainty > 0


def test_strategies_are_pluggable(taxonomy: Taxonomy) -> None:
    class NewProductLine:
        name = "new_line"

        def select(self, assessment: Assessment) -> bool:
            return assessment.group_uncertainty.get("kids", 0.0) > 0.5

    p = policy(taxonomy, strategies=[NewProductLine(), BelowThreshold(), AuditSample(0.0)])
    assert p.decide(confident(kids=0.55), T0).reason == "new_line"
    assert p.decide(confident(kids=0.99), T0).routed is False


# -------------------------------------------------------------------------------------------- caps


def test_the_hourly_cap_holds_back_products_until_the_hour_has_passed(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, default_threshold=0.99, caps=ReviewCaps(per_hour=3))
    reasons = [p.decide(confident(), T0 + timedelta(minutes=i)).reason for i in range(5)]
    assert reasons == ["low_confidence"] * 3 + ["capped:low_confidence"] * 2
    assert p.decide(confident(), T0 + timedelta(minutes=59)).reason == "capped:low_confidence"
    assert p.decide(confident(), T0 + timedelta(minutes=60, seconds=1)).reason == "low_confidence"


def test_the_daily_cap_holds_across_hours(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, default_threshold=0.99, caps=ReviewCaps(per_hour=2, per_day=5))
    routed = [p.decide(confident(), T0 + timedelta(minutes=20 * i)).routed for i in range(12)]  # four hours
    assert sum(routed) == 5
    assert p.decide(confident(), T0 + timedelta(hours=24, minutes=1)).routed


def test_caps_count_audit_samples_too_and_survive_a_restart(taxonomy: Taxonomy) -> None:
    caps = ReviewCaps(per_hour=2)
    caps.sync([T0 - timedelta(minutes=30)])  # routed by the previous process
    p = policy(taxonomy, audit_rate=1.0, caps=caps)
    assert [p.decide(confident(), T0).reason for _ in range(2)] == ["audit", "capped:audit"]
    assert caps.counts(T0) == (2, 2)


def test_a_sync_counts_other_replicas_routes_and_keeps_own_routes_not_yet_in_the_outbox(taxonomy: Taxonomy) -> None:
    caps = ReviewCaps(per_hour=4)
    p = policy(taxonomy, audit_rate=1.0, caps=caps)
    assert p.decide(confident(), T0).routed  # this replica's route, not committed yet
    caps.sync([T0 - timedelta(minutes=5), T0 - timedelta(minutes=2)])  # two routes of another replica
    assert caps.counts(T0) == (3, 3)
    assert p.decide(confident(), T0 + timedelta(seconds=1)).routed
    assert p.decide(confident(), T0 + timedelta(seconds=2)).reason == "capped:audit"

    # all four are committed now; the route made since the last sync is still added on top (it might not have
    # been committed), so it counts twice until the sync after: the caps err on the side of fewer products
    committed = [T0 - timedelta(minutes=5), T0 - timedelta(minutes=2), T0, T0 + timedelta(seconds=1)]
    caps.sync(committed)
    assert caps.counts(T0 + timedelta(seconds=3)) == (5, 5)
    caps.sync(committed)
    assert caps.counts(T0 + timedelta(seconds=3)) == (4, 4)
    assert caps.counts(T0 + timedelta(minutes=58)) == (2, 4)  # the other replica's routes left the hour


def test_no_caps_means_no_limit(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, default_threshold=0.99)
    assert all(p.decide(confident(), T0).routed for _ in range(1000))


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


def tags_with_tie() -> ImageTags:
    return ImageTags(
        attributes={"garment": [("Shirt", 0.6)], "detectedObjects": [("tie", 0.8)]},
        detections=[
            Detection("tie", 0.8, (100.0, 50.0, 200.0, 350.0), {"detectedObjects": "tie"}),
            Detection("car", 0.9, (0.0, 0.0, 10.0, 10.0), {}),  # maps to no group: not shown
        ],
        width=400,
        height=500,
        model_version="m1",
    )


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


def test_the_router_builds_the_outbox_payload_for_routed_products_only(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, thresholds={"garment": {"Shirt": 0.9}})
    decisions = []
    router = ReviewRouting(p, clock=lambda: T0, on_decision=decisions.append)
    result = ProductResult(
        product_id="SKU-1",
        title="Linen shirt",
        category_hint=None,
        event_id=None,
        image_url="file:///images/a.jpg",
        image_digest="d1",
        model_version="m1",
        attributes=confident(garment=0.6),
        source="test",
    )
    payload = router(result, [tags_with_tie()])
    assert payload is not None and payload["reason"] == "low_confidence"
    assert payload["prediction"]["model_version"] == "m1" and payload["prediction"]["result"]
    assert payload["model_values"]["garment"]["value"] == "Shirt"
    assert payload["priority"] == payload["uncertainty"]["score"] > 0
    assert payload["image_size"] == [400, 500] and payload["title"] == "Linen shirt"
    import json

    json.dumps(payload)  # stored as JSON in the outbox
    assert router(ProductResult(**{**result.__dict__, "attributes": confident()}), [tags_with_tie()]) is None
    assert [d.routed for d in decisions] == [True, False]


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
