"""The records every package shares: what the model concluded about a product (`ProductResult`, `AttributeValue`,
`Alternative`) and the review outbox payload (`OutboxPayload` and its parts, with `payload_to_json` /
`payload_from_json`). Defined once, here, beside the database package and not inside it: the daemon builds results,
`learner/review/` (pure, no I/O) decides on them and writes the payload, `connectors/db/` stores both, the review
worker reads the payload back.

Values of multi-label groups are lists of labels; the store keeps them as a JSON array in a text column (see
`connectors/db/models.py`) and gives back a list.

The payload is a `TypedDict`, not a class: it is JSON as stored (no conversion on write, the stored format is
unchanged), and the type checker still knows every key. `payload_from_json` is the one way to read a stored payload:
it fills the keys an older or partial row lacks with their defaults (a row written before a key existed, or by a
writer that sets only `reason`, `priority` and `model_values`), so readers can index every key (but a model value's
`auto_filled` and `withheld_by`, which an old row cannot know: see `ModelValue`). Keys it does not know are kept.

What it must not do: import anything (no SQLAlchemy, no `learner/`, no `daemon/`), do I/O, or know what the
Label Studio regions in `prediction.result` mean (they are opaque JSON here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "DEFAULT_REASON",
    "SUSPENDED",
    "TITLE_PHOTO_CONFLICT",
    "Alternative",
    "AttributeSource",
    "AttributeValue",
    "LowValueInfo",
    "ModelValue",
    "OutboxPayload",
    "Prediction",
    "ProductResult",
    "UncertaintyInfo",
    "payload_from_json",
    "payload_to_json",
]

AttributeSource = Literal["model", "human"]  # who set a stored attribute's value

DEFAULT_REASON = "review"  # the reason of an outbox row whose payload names none
# `withheld_by` of a value its group's threshold would have auto-filled, kept as a suggestion because the group's
# auto-fill is suspended for the serving model version (table autofill_suspensions)
SUSPENDED = "suspended"
# `withheld_by` of a single-choice value whose group the product's title and photos confidently disagree on (the
# title names a value the photos give little probability, learner/inference/product_decision.py): nothing of the
# group is auto-filled, both readings are kept (`AttributeValue.readings`), and the product is routed to review
# with this reason
TITLE_PHOTO_CONFLICT = "title_photo_conflict"


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
    # what, beyond its group's threshold, keeps the value a suggestion (None: nothing else): "unfamiliar_photo" (the
    # shift guard found the photo it came from unlike the training photos; no value of it is auto-filled) or
    # SUSPENDED (the group's auto-fill is suspended for this model version: its audited precision fell below target)
    # or TITLE_PHOTO_CONFLICT (the title and the photos confidently disagree on the group)
    withheld_by: str | None = None
    mask: dict[str, Any] | None = None
    # a single-choice value decided with the product's title (learner/inference/product_decision.py): what it was
    # decided from ("decided_from": "photos+title" or "title") and each signal's own reading, {"value",
    # "confidence"} or None ("title", "photos"); None for values from the photos alone (no title, as before)
    readings: dict[str, Any] | None = None


class UncertaintyInfo(TypedDict):
    """How uncertain the model was: the measure's name, the product's score (its most uncertain reviewed group),
    and each reviewed group's score, all in [0, 1]."""

    measure: str
    score: float
    groups: dict[str, float]


class LowValueInfo(TypedDict):
    """A value the model gave under its group's threshold."""

    group: str
    value: str
    confidence: float
    threshold: float


class Prediction(TypedDict):
    """The model's guess as Label Studio pre-annotations: `result` is Label Studio result JSON (regions), `score`
    the lowest classifier region score. `model_version` None: an old row that did not say (the row's column does)."""

    model_version: str | None
    score: float
    result: list[dict[str, Any]]


class ModelValue(TypedDict):
    """What the model said for one group: a label or labels, the confidence, a box [x1, y1, x2, y2] in pixels, and
    whether it was auto-filled (`AttributeValue.auto_filled`) and what withheld it (`AttributeValue.withheld_by`).
    Judges whether the annotator agreed, comes back when a correction is withdrawn, and says which answers measure
    the precision of auto-filled values (learner/evaluation/audit.py). The last two keys are the only ones a stored
    payload may lack (written before they existed, they are not made up when read): use `.get`."""

    value: str | list[str] | None
    confidence: float
    box: list[float] | None
    auto_filled: NotRequired[bool]
    withheld_by: NotRequired[str | None]
    readings: NotRequired[dict[str, Any] | None]  # `AttributeValue.readings`, when the title took part


class OutboxPayload(TypedDict):
    """One routed product, everything the review worker needs later without the model. `reason` and `priority`
    are also stored as columns of `review_outbox` (the queue orders by priority, higher first)."""

    reason: str
    priority: float
    uncertainty: UncertaintyInfo | None
    low_values: list[LowValueInfo]
    title: str | None
    description: str | None
    image_url: str | None
    image_size: list[int] | None  # [width, height] of the shown image
    prediction: Prediction | None
    model_values: dict[str, ModelValue]


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
    # outbox in the same transaction as the attributes, so a routed product is never lost.
    review: OutboxPayload | None = None
    description: str | None = None  # the event's longer text about the product, stored like the title


def payload_to_json(payload: OutboxPayload) -> dict[str, Any]:
    """The payload as the JSON object stored in `review_outbox.payload` (the same keys and values)."""
    return dict(payload)


def payload_from_json(raw: Mapping[str, Any] | None) -> OutboxPayload:
    """A stored payload, of any age, as an `OutboxPayload`: missing keys get their defaults (no uncertainty, no
    prediction, no model values, ...), a prediction or model value missing inner keys gets theirs; unknown keys are
    kept. Never raises for a missing key: a row already in the database is always readable."""
    data = dict(raw or {})
    uncertainty = data.get("uncertainty")
    prediction = data.get("prediction")
    priority = float(data.get("priority") or 0.0)
    payload: dict[str, Any] = {
        **data,
        "reason": str(data.get("reason") or DEFAULT_REASON),
        "priority": priority,
        "uncertainty": _uncertainty(uncertainty, priority) if isinstance(uncertainty, Mapping) else None,
        "low_values": list(data.get("low_values") or []),
        "title": data.get("title"),
        "description": data.get("description"),
        "image_url": data.get("image_url"),
        "image_size": data.get("image_size"),
        "prediction": _prediction(prediction) if isinstance(prediction, Mapping) else None,
        "model_values": {
            str(group): _model_value(value)
            for group, value in (data.get("model_values") or {}).items()
            if isinstance(value, Mapping)
        },
    }
    return payload  # type: ignore[return-value]  # every key of OutboxPayload is set above


def _uncertainty(raw: Mapping[str, Any], priority: float) -> UncertaintyInfo:
    score = raw.get("score")
    return {
        "measure": str(raw.get("measure") or ""),
        "score": float(score) if score is not None else priority,
        "groups": {str(g): float(u) for g, u in (raw.get("groups") or {}).items()},
    }


def _prediction(raw: Mapping[str, Any]) -> Prediction:
    version = raw.get("model_version")
    return {
        "model_version": str(version) if version is not None else None,
        "score": float(raw.get("score") or 0.0),
        "result": list(raw.get("result") or []),
    }


def _model_value(raw: Mapping[str, Any]) -> ModelValue:
    model: ModelValue = {
        "value": raw.get("value"),
        "confidence": float(raw.get("confidence") or 0.0),
        "box": raw.get("box"),
    }
    if raw.get("auto_filled") is not None:  # absent from payloads written before it existed: not made up
        model["auto_filled"] = bool(raw["auto_filled"])
        model["withheld_by"] = None if raw.get("withheld_by") is None else str(raw["withheld_by"])
    if isinstance(raw.get("readings"), Mapping):
        model["readings"] = dict(raw["readings"])
    return model
