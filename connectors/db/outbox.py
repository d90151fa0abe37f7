"""The review outbox payload: what the routing hook stores with a routed product, and what the review worker and the
store read back. Defined once, here; `learner/review/routing.py` writes it, `connectors/db` stores it as JSON in
`review_outbox.payload`, `daemon/review/` reads it.

The payload is a `TypedDict`, not a class: it is JSON as stored (no conversion on write, the stored format is
unchanged), and the type checker still knows every key. `payload_from_json` is the one way to read a stored payload:
it fills the keys an older or partial row lacks with their defaults (a row written before a key existed, or by a
writer that sets only `reason`, `priority` and `model_values`), so readers can index every key. Keys it does not
know are kept.

What it must not do: import `learner/` or `daemon/`, or know what the Label Studio regions in `prediction.result`
mean (they are opaque JSON here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

__all__ = [
    "DEFAULT_REASON",
    "LowValueInfo",
    "ModelValue",
    "OutboxPayload",
    "Prediction",
    "UncertaintyInfo",
    "payload_from_json",
    "payload_to_json",
]

DEFAULT_REASON = "review"  # the reason of a row whose payload names none


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
    """What the model said for one group: a label or labels, the confidence, a box [x1, y1, x2, y2] in pixels.
    Judges whether the annotator agreed, and comes back when a correction is withdrawn."""

    value: str | list[str] | None
    confidence: float
    box: list[float] | None


class OutboxPayload(TypedDict):
    """One routed product, everything the review worker needs later without the model. `reason` and `priority`
    are also stored as columns (the queue orders by priority, higher first)."""

    reason: str
    priority: float
    uncertainty: UncertaintyInfo | None
    low_values: list[LowValueInfo]
    title: str | None
    image_url: str | None
    image_size: list[int] | None  # [width, height] of the shown image
    prediction: Prediction | None
    model_values: dict[str, ModelValue]


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
    return {"value": raw.get("value"), "confidence": float(raw.get("confidence") or 0.0), "box": raw.get("box")}
