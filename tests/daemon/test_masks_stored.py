"""Masks reach the product database: a mask detector's strongest detection gives its detector group's value a mask
(daemon/pipeline/merge.py `merge_attributes`), the store keeps it (product_attributes.mask, migration 0005); an
annotator's polygon becomes the human value's mask, and a malformed polygon is rejected with the reason
(learner/review/tasks.py `parse_annotation`, connectors/db/review_store.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from connectors.db import AnnotationRecord, AnnotationValue, ProductStore, ReviewStore
from connectors.records import ProductResult
from daemon.pipeline import merge_attributes
from learner.inference.engine import Detection, ImageTags
from learner.model.masks import decode, encode
from learner.model.taxonomy import Taxonomy, load_taxonomy
from learner.review.tasks import annotation_revision, parse_annotation

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def taxonomy() -> Taxonomy:
    return load_taxonomy(ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml")


@pytest.fixture
def store(sqlite_url: str) -> Iterator[ProductStore]:
    s = ProductStore(sqlite_url)
    s.migrate()
    yield s
    s.close()


def _mask(x1: int, y1: int, x2: int, y2: int) -> dict[str, object]:
    m = np.zeros((60, 80), dtype=bool)
    m[y1:y2, x1:x2] = True
    return encode(m)


def _polygon(item_id: str, points: list[list[float]]) -> dict[str, object]:
    return {
        "id": item_id,
        "from_name": "detectedObjects",
        "to_name": "image",
        "type": "polygonlabels",
        "original_width": 80,
        "original_height": 60,
        "value": {"points": points, "polygonlabels": ["handbag"]},
    }


def _record(taxonomy: Taxonomy, result: list[dict[str, object]], annotation_id: int) -> AnnotationRecord:
    parsed = parse_annotation(taxonomy, result)
    now = datetime.now(UTC)
    return AnnotationRecord(
        task_id=1,
        annotation_id=annotation_id,
        product_id="p1",
        annotator="alice",
        created_at=now,
        updated_at=now,
        revision=annotation_revision(result, False),
        values=[
            AnnotationValue(p.attribute, p.outcome, p.value, p.boxes, p.model_value, p.model_was_right) for p in parsed
        ],
    )


def test_the_strongest_detections_mask_is_stored_with_the_detector_value(
    taxonomy: Taxonomy, store: ProductStore
) -> None:
    weak, strong = _mask(0, 0, 10, 10), _mask(20, 10, 50, 40)
    tags = ImageTags(
        {"detectedObjects": [("handbag", 0.9), ("person", 0.6)]},
        [
            Detection("person", 0.6, (0, 0, 10, 10), {"detectedObjects": "person"}, mask=weak),
            Detection("handbag", 0.9, (20, 10, 50, 40), {"detectedObjects": "handbag"}, mask=strong),
        ],
        80,
        60,
        "cc0-mask",
    )
    (value,) = merge_attributes([tags], taxonomy)
    assert value.mask == strong and value.box == [20, 10, 50, 40]
    store.write_results(
        [ProductResult("p1", None, None, "e1", "https://cdn.example/p1.jpg", "sha-1", "cc0-mask", [value], "test")]
    )
    product = store.get_product("p1")
    assert product is not None
    stored = product.attributes["detectedObjects"].mask
    assert stored == strong and np.array_equal(decode(stored), decode(strong))


def test_an_annotators_polygon_becomes_the_human_values_mask_and_a_malformed_one_is_rejected(
    taxonomy: Taxonomy, store: ProductStore
) -> None:
    reviews = ReviewStore(store)
    good = [_polygon("r1", [[25.0, 25.0], [75.0, 25.0], [75.0, 75.0], [25.0, 75.0]])]
    reviews.record_annotation(_record(taxonomy, good, annotation_id=7))
    product = store.get_product("p1")
    assert product is not None
    human = product.attributes["detectedObjects"]
    assert (human.value, human.source) == (["handbag"], "human")
    assert human.mask is not None and human.mask["size"] == [60, 80]
    assert human.box == [20.0, 15.0, 60.0, 45.0]  # the polygon: 20..60 x 15..45 px

    bad = [_polygon("r2", [[25.0, 25.0], [175.0, 25.0], [75.0, 75.0]])]  # a point at 175% of the width
    (parsed,) = parse_annotation(taxonomy, bad)
    assert parsed.outcome == "invalid" and "outside the image" in parsed.detail and "r2" in parsed.detail
    reviews.record_annotation(_record(taxonomy, bad, annotation_id=8))
    after = store.get_product("p1")
    assert after is not None and after.attributes["detectedObjects"].mask == human.mask  # nothing applied
