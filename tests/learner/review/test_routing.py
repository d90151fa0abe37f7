"""`ReviewRouting` (learner/review/routing.py): the outbox payload of a routed product, and nothing for the others."""

from __future__ import annotations

from connectors.records import ProductResult
from learner.model.taxonomy import Taxonomy
from learner.review.routing import ReviewRouting
from tests.learner.review.outputs import T0, confident, policy, tags_with_tie


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
        description="Short sleeves, chest pocket.",
    )
    payload = router(result, [tags_with_tie()])
    assert payload is not None and payload["reason"] == "low_confidence"
    assert payload["prediction"]["model_version"] == "m1" and payload["prediction"]["result"]
    assert payload["model_values"]["garment"]["value"] == "Shirt"
    assert payload["priority"] == payload["uncertainty"]["score"] > 0
    assert payload["image_size"] == [400, 500] and payload["title"] == "Linen shirt"
    assert payload["description"] == "Short sleeves, chest pocket."
    import json

    json.dumps(payload)  # stored as JSON in the outbox
    assert router(ProductResult(**{**result.__dict__, "attributes": confident()}), [tags_with_tie()]) is None
    assert [d.routed for d in decisions] == [True, False]


def test_a_product_with_a_photo_the_guard_found_unfamiliar_is_routed_as_unfamiliar_photo(taxonomy: Taxonomy) -> None:
    router = ReviewRouting(policy(taxonomy, autofill_thresholds={"garment": 0.9, "kids": 0.9}), clock=lambda: T0)
    result = ProductResult(
        product_id="SKU-2",
        title=None,
        category_hint=None,
        event_id=None,
        image_url="file:///images/street.jpg",
        image_digest="d2",
        model_version="m1",
        attributes=confident(suggested={"garment", "kids"}),
        source="test",
    )
    familiar, odd = tags_with_tie(), tags_with_tie()
    odd.unfamiliar, odd.shift_score = True, -3.0

    payload = router(result, [familiar, odd])

    assert payload is not None and payload["reason"] == "unfamiliar_photo"
    routed = router(result, [familiar])
    assert routed is not None and routed["reason"] == "low_confidence"  # the same values, a familiar photo


def test_a_product_whose_title_and_photos_disagree_is_routed_with_both_readings(taxonomy: Taxonomy) -> None:
    import dataclasses

    from connectors.records import TITLE_PHOTO_CONFLICT

    router = ReviewRouting(policy(taxonomy, autofill_thresholds={"garment": 0.9, "kids": 0.9}), clock=lambda: T0)
    garment, kids = confident()
    readings = {
        "decided_from": "photos+title",
        "title": {"value": "Polo", "confidence": 0.98},
        "photos": {"value": "Shirt", "confidence": 0.95},
    }
    withheld = dataclasses.replace(garment, auto_filled=False, withheld_by=TITLE_PHOTO_CONFLICT, readings=readings)
    result = ProductResult("SKU-3", "Blue polo", None, None, "file:///a.jpg", "d3", "m1", [withheld, kids], "test")

    payload = router(result, [tags_with_tie()])

    assert payload is not None and payload["reason"] == TITLE_PHOTO_CONFLICT
    assert payload["model_values"]["garment"]["readings"] == readings
    assert payload["model_values"]["garment"]["withheld_by"] == TITLE_PHOTO_CONFLICT
    assert "readings" not in payload["model_values"]["kids"]  # decided from the photos alone
    odd = tags_with_tie()
    odd.unfamiliar = True
    routed = router(result, [odd])
    assert routed is not None and routed["reason"] == "unfamiliar_photo"  # the first strategy still wins
    assert router(ProductResult(**{**result.__dict__, "attributes": [garment, kids]}), [tags_with_tie()]) is None
