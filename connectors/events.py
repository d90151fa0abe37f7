"""The new-product event contract: what producers put in a Kafka message value (or a local event file).

One JSON object per message, UTF-8. Version 1 (see `example_event()`, which the README shows):

    schema_version  int, required, must be 1 (a newer producer fails loudly instead of being half-read)
    product_id      non-empty string, required
    image_urls      list of 1..16 non-empty strings; a single `image_url` string is accepted instead
    title           string, optional (the product's name as the catalogue shows it; blank is read as absent)
    description     string, optional (the catalogue's longer text about the product; blank is read as absent)
    category_hint   string, optional (the catalogue's own category, if any)
    event_id        string, optional (the producer's id, kept for tracing)
    occurred_at     ISO 8601 timestamp, optional (a timestamp without zone is read as UTC)

Unknown fields are ignored, so producers may add fields without breaking version 1 readers.

`parse_event` turns a raw message value into a `ProductEvent` or raises `EventRejected` whose `reason` is
one of `REJECT_REASONS` (a metric label and dead-letter header) and whose message names the field.

What this module must not do: fetch or judge URLs (schemes, hosts and sizes are the image fetcher's job;
here a URL only has to be a non-empty string), or know about Kafka, the database or the models.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

CURRENT_SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
MAX_IMAGES = 16

RejectReason = Literal["malformed_json", "invalid_event", "unknown_schema_version"]
REJECT_REASONS: tuple[RejectReason, ...] = ("malformed_json", "invalid_event", "unknown_schema_version")


class EventRejected(Exception):
    """The message can never become a valid event (dead-letter it; retrying cannot help).

    `reason` is one of `REJECT_REASONS`; `field` names the offending field when there is one.
    """

    def __init__(self, reason: RejectReason, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason: RejectReason = reason
        self.field = field


class ProductEvent(BaseModel):
    """A validated version-1 new-product event (immutable)."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    schema_version: StrictInt
    product_id: StrictStr = Field(min_length=1, max_length=512)
    image_urls: list[StrictStr] = Field(min_length=1, max_length=MAX_IMAGES)
    title: StrictStr | None = None
    description: StrictStr | None = None
    category_hint: StrictStr | None = None
    event_id: StrictStr | None = None
    occurred_at: datetime | None = None

    @field_validator("image_urls")
    @classmethod
    def _urls_not_blank(cls, urls: list[str]) -> list[str]:
        for i, url in enumerate(urls):
            if not url:
                raise ValueError(f"image_urls[{i}] is empty")
        return urls

    @field_validator("title", "description")
    @classmethod
    def _blank_is_absent(cls, value: str | None) -> str | None:
        return value or None  # already stripped: "" and "   " carry no text, so the product has none

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def example_event() -> dict[str, Any]:
    """A complete, valid version-1 event (the README shows it; tests parse it)."""
    return {
        "schema_version": 1,
        "product_id": "sku-10042",
        "image_urls": [
            "https://cdn.example.com/products/sku-10042/front.jpg",
            "https://cdn.example.com/products/sku-10042/back.jpg",
        ],
        "title": "Linen shirt, short sleeves",
        "description": "Relaxed fit linen shirt with short sleeves and a chest pocket.",
        "category_hint": "tops",
        "event_id": "0b9e6c1e-5d1f-4c55-9a53-0f3a3f0c2a11",
        "occurred_at": "2025-03-14T09:26:53Z",
    }


def parse_event(raw: bytes | str | None) -> ProductEvent:
    """Parse and validate one message value; raise `EventRejected` if it can never be a valid event."""
    if raw is None or len(raw) == 0:
        raise EventRejected("malformed_json", "the message has no value (empty or tombstone); expected a JSON object")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise EventRejected("malformed_json", f"the message value is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise EventRejected("invalid_event", f"the event must be a JSON object, got {type(doc).__name__}")

    _check_schema_version(doc)
    doc = _normalise_single_image(doc)
    try:
        return ProductEvent.model_validate(doc)
    except ValidationError as exc:
        field, message = _describe(exc)
        raise EventRejected("invalid_event", message, field) from None


def _check_schema_version(doc: dict[str, Any]) -> None:
    if "schema_version" not in doc:
        raise EventRejected(
            "invalid_event",
            f'schema_version: field required (add "schema_version": {CURRENT_SCHEMA_VERSION})',
            "schema_version",
        )
    version = doc["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise EventRejected(
            "invalid_event", f"schema_version: must be an integer, got {json.dumps(version)}", "schema_version"
        )
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise EventRejected(
            "unknown_schema_version",
            f"schema_version: {version} is not supported; this ShelfSight reads {sorted(SUPPORTED_SCHEMA_VERSIONS)}"
            " (upgrade the enricher before producers send newer events)",
            "schema_version",
        )


def _normalise_single_image(doc: dict[str, Any]) -> dict[str, Any]:
    if "image_url" not in doc:
        return doc
    if "image_urls" in doc:
        raise EventRejected("invalid_event", "image_url/image_urls: give one of them, not both", "image_urls")
    single = doc["image_url"]
    if not isinstance(single, str):
        raise EventRejected("invalid_event", f"image_url: must be a string, got {type(single).__name__}", "image_url")
    out = {k: v for k, v in doc.items() if k != "image_url"}
    out["image_urls"] = [single]
    return out


def _describe(exc: ValidationError) -> tuple[str | None, str]:
    """A one-line message naming the field(s), e.g. `image_urls.0: Input should be a valid string`."""
    parts: list[str] = []
    first_field: str | None = None
    for error in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in error["loc"]) or "event"
        if first_field is None and error["loc"]:
            first_field = str(error["loc"][0])
        parts.append(f"{loc}: {error['msg']}")
    extra = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
    return first_field, "; ".join(parts[:3]) + extra
