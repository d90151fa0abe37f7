"""Plain data passed to and returned by `ProductStore`: what the daemon writes and what readers get back.

No SQLAlchemy here, so the daemon and the review loop can build results without touching the database layer.
Values of multi-label groups are lists of labels; the store keeps them as a JSON array in a text column (see
`connectors/db/models.py`) and gives back a list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from connectors.db.outbox import OutboxPayload

AttributeSource = Literal["model", "human"]


@dataclass(frozen=True)
class Alternative:
    """One of the model's top-k candidates for an attribute."""

    value: str
    confidence: float


@dataclass(frozen=True)
class AttributeValue:
    """One attribute of one product as the model sees it.

    `value` is a label (single-label group) or a list of labels (multi-label group). `confidence` is in [0, 1];
    the database refuses anything else. `box` is [x1, y1, x2, y2] in pixels of the original image, for
    attributes that come from a detector; `mask` that detection's instance mask (COCO RLE {"size": [h, w],
    "counts": str}, original image pixels) when the detector segments. `auto_filled` False: a suggestion, below its
    group's auto-fill threshold.
    """

    attribute: str
    value: str | list[str]
    confidence: float
    alternatives: list[Alternative] = field(default_factory=list)
    box: list[float] | None = None
    auto_filled: bool = True
    mask: dict[str, Any] | None = None


@dataclass(frozen=True)
class ProductResult:
    """Everything the model concluded about one product image, plus where it came from.

    (product_id, image_digest, model_version) is the idempotency key: writing the same key again is counted
    as a duplicate and changes nothing but the processing log's attempt count. `source` is provenance, e.g.
    "kafka:products.new/3@1234" (topic/partition@offset) or "local:events/0001.json".
    """

    product_id: str
    title: str | None
    category_hint: str | None
    event_id: str | None
    image_url: str
    image_digest: str
    model_version: str
    attributes: list[AttributeValue]
    source: str
    # Set when the review policy chose this product for human review: the store writes it to the review
    # outbox in the same transaction as the attributes, so a routed product is never lost. Its "reason" and
    # "priority" (higher is sent first) are also stored as columns (connectors/db/outbox.py).
    review: OutboxPayload | None = None


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
    mask: dict[str, Any] | None = None  # COCO RLE of a detector value's instance (original image pixels)


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


@dataclass(frozen=True)
class ProcessingLogStats:
    """`rows`: distinct (product, image, model version) keys processed; `max_attempts`: the most times one key
    was written (1 means no result was ever processed twice); `repeated_keys`: keys written more than once."""

    rows: int
    max_attempts: int
    repeated_keys: int
