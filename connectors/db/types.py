"""What `ProductStore` gives back: a stored product with its attributes (`ProductView`, `StoredAttribute`) and the
counts of a write (`WriteStats`) or of the processing log (`ProcessingLogStats`).

Plain frozen dataclasses, no SQLAlchemy. What the daemon writes (`ProductResult`, `AttributeValue`) is shared with
`learner/` and lives in `connectors/records.py`; only the store's readers use the types here. Values of multi-label
groups are lists of labels (the store keeps them as a JSON array in a text column, `connectors/db/models.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connectors.records import Alternative, AttributeSource


@dataclass(frozen=True)
class WriteStats:
    """What one `write_results` call did. `written`: results stored; `duplicates`: results whose key was
    already in the processing log (nothing rewritten); `human_values_kept`: attribute writes skipped because an
    annotator had set that attribute."""

    written: int = 0
    duplicates: int = 0
    human_values_kept: int = 0


@dataclass(frozen=True)
class StoredAttribute:
    """The current value of one attribute as stored."""

    attribute: str
    value: str | list[str]
    confidence: float
    alternatives: list[Alternative]
    source: AttributeSource
    model_version: str | None
    box: list[float] | None
    image_digest: str | None
    annotator: str | None
    updated_at: datetime
    auto_filled: bool = True  # False: a model suggestion, not (yet) the product's value
    withheld_by: str | None = None  # what, beyond its threshold, keeps the value a suggestion (unfamiliar_photo)
    mask: dict[str, Any] | None = None  # COCO RLE of a detector value's instance (original image pixels)
    # what a single-choice model value was decided from, and the title's and the photos' own readings
    # (`connectors.records.AttributeValue.readings`); None for annotators' values and where the decision gave none
    readings: dict[str, Any] | None = None


@dataclass(frozen=True)
class ProductView:
    """A product with its current attributes, keyed by attribute name."""

    product_id: str
    title: str | None
    category_hint: str | None
    first_seen_at: datetime
    updated_at: datetime
    last_event_id: str | None
    attributes: dict[str, StoredAttribute]
    description: str | None = None  # the last non-empty description an event carried


@dataclass(frozen=True)
class ProcessingLogStats:
    """`rows`: distinct (product, image, model version) keys processed; `max_attempts`: the most times one key
    was written (1 means no result was ever processed twice); `repeated_keys`: keys written more than once."""

    rows: int
    max_attempts: int
    repeated_keys: int
