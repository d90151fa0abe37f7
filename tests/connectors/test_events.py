"""The event contract: what is accepted, what is rejected and with which reason (pure, no services)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.events import MAX_IMAGES, REJECT_REASONS, EventRejected, ProductEvent, example_event, parse_event


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def event(**changes: Any) -> dict[str, Any]:
    doc = {"schema_version": 1, "product_id": "sku-1", "image_urls": ["https://img.example/1.jpg"]}
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not _DROP}


_DROP = object()


def rejected(raw: bytes | None) -> EventRejected:
    with pytest.raises(EventRejected) as info:
        parse_event(raw)
    assert info.value.reason in REJECT_REASONS
    return info.value


def test_the_documented_example_is_a_valid_event() -> None:
    parsed = parse_event(encode(example_event()))
    assert parsed.product_id == "sku-10042"
    assert len(parsed.image_urls) == 2
    assert parsed.category_hint == "tops"
    assert parsed.title == "Linen shirt, short sleeves"
    assert parsed.description is not None and parsed.description.startswith("Relaxed fit linen shirt")
    assert parsed.occurred_at == datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)


def test_a_minimal_event_needs_only_version_product_and_one_image() -> None:
    parsed = parse_event(encode(event()))
    assert parsed == ProductEvent(schema_version=1, product_id="sku-1", image_urls=["https://img.example/1.jpg"])
    assert parsed.title is None and parsed.description is None
    assert parsed.event_id is None and parsed.occurred_at is None


def test_title_and_description_are_kept_with_surrounding_whitespace_stripped() -> None:
    parsed = parse_event(encode(event(title=" Puma Men Black Running Shoes ", description="Mesh upper.\n")))
    assert (parsed.title, parsed.description) == ("Puma Men Black Running Shoes", "Mesh upper.")


@pytest.mark.parametrize("blank", ["", "   ", None])
def test_a_blank_title_or_description_is_read_as_none(blank: str | None) -> None:
    parsed = parse_event(encode(event(title=blank, description=blank)))
    assert parsed.title is None and parsed.description is None


def test_a_single_image_url_is_accepted_as_a_list_of_one() -> None:
    parsed = parse_event(encode(event(image_urls=_DROP, image_url="file:///photos/a.jpg")))
    assert parsed.image_urls == ["file:///photos/a.jpg"]


def test_giving_both_image_url_and_image_urls_is_rejected() -> None:
    exc = rejected(encode(event(image_url="https://img.example/2.jpg")))
    assert exc.reason == "invalid_event"
    assert "image_url" in str(exc)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    parsed = parse_event(encode(event(brand="Acme", price={"amount": 10})))
    assert parsed.product_id == "sku-1"


def test_a_timestamp_without_zone_is_read_as_utc() -> None:
    parsed = parse_event(encode(event(occurred_at="2024-05-01T12:00:00")))
    assert parsed.occurred_at == datetime(2024, 5, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe\x00garbage", b"", None])
def test_bytes_that_are_not_json_are_rejected_as_malformed(raw: bytes | None) -> None:
    assert rejected(raw).reason == "malformed_json"


@pytest.mark.parametrize("doc", [[1, 2], "a string", 42, None])
def test_json_that_is_not_an_object_is_an_invalid_event(doc: Any) -> None:
    exc = rejected(encode(doc))
    assert exc.reason == "invalid_event"
    assert "JSON object" in str(exc)


@pytest.mark.parametrize("version", [0, 2, 99])
def test_an_unknown_schema_version_is_rejected_with_its_own_reason(version: int) -> None:
    exc = rejected(encode(event(schema_version=version)))
    assert exc.reason == "unknown_schema_version"
    assert exc.field == "schema_version"
    assert str(version) in str(exc)


@pytest.mark.parametrize("version", [_DROP, "1", True, 1.5, None])
def test_a_missing_or_non_integer_schema_version_is_an_invalid_event(version: Any) -> None:
    exc = rejected(encode(event(schema_version=version)))
    assert exc.reason == "invalid_event"
    assert exc.field == "schema_version"
    assert "schema_version" in str(exc)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"product_id": _DROP}, "product_id"),
        ({"product_id": ""}, "product_id"),
        ({"product_id": "   "}, "product_id"),
        ({"product_id": 123}, "product_id"),
        ({"image_urls": _DROP}, "image_urls"),
        ({"image_urls": []}, "image_urls"),
        ({"image_urls": "https://img.example/1.jpg"}, "image_urls"),
        ({"image_urls": [f"https://img.example/{i}.jpg" for i in range(MAX_IMAGES + 1)]}, "image_urls"),
        ({"image_urls": [42]}, "image_urls"),
        ({"image_urls": [{"url": "x"}]}, "image_urls"),
        ({"image_urls": ["  "]}, "image_urls"),
        ({"image_urls": _DROP, "image_url": 7}, "image_url"),
        ({"title": 5}, "title"),
        ({"description": ["long", "text"]}, "description"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
    ],
)
def test_an_invalid_field_is_rejected_and_named(changes: dict[str, Any], field: str) -> None:
    exc = rejected(encode(event(**changes)))
    assert exc.reason == "invalid_event"
    assert exc.field == field
    assert field in str(exc)


def test_up_to_sixteen_images_are_accepted() -> None:
    urls = [f"https://img.example/{i}.jpg" for i in range(MAX_IMAGES)]
    assert parse_event(encode(event(image_urls=urls))).image_urls == urls


def test_url_schemes_are_not_judged_here() -> None:
    # The image fetcher decides which schemes and hosts it accepts; the contract only needs strings.
    parsed = parse_event(encode(event(image_urls=["ftp://old.example/a.jpg"])))
    assert parsed.image_urls == ["ftp://old.example/a.jpg"]


def test_parsed_events_are_immutable() -> None:
    parsed = parse_event(encode(event()))
    with pytest.raises(ValueError):
        parsed.product_id = "other"
