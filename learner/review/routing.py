"""`ReviewRouting`: the enrichment daemon's `ReviewRouter` hook. A `ProductResult` and its `ImageTags` in; the
policy's decision; for a routed product, the outbox payload (`connectors.records.OutboxPayload`) out, else None.

Pure: the clock is passed in; the daemon (`daemon/routing.py`) builds it from configuration, and the product store
writes the payload in the same transaction as the results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from connectors.records import DEFAULT_REASON, AttributeValue, ModelValue, OutboxPayload, ProductResult
from learner.inference.engine import ImageTags
from learner.model.taxonomy import Taxonomy
from learner.review.policy import Decision, ReviewPolicy
from learner.review.tasks import prediction_result


def model_values(taxonomy: Taxonomy, attributes: Sequence[AttributeValue]) -> dict[str, ModelValue]:
    """What the model said per group, as stored in the outbox payload: value, confidence, box, whether it was
    auto-filled and what withheld it, and, for a value decided with the title, the title's and the photos' readings.
    Used to judge whether the annotator agreed, to restore the model's value when a correction is withdrawn, and to
    tell the answers that audit auto-filled values (learner/evaluation/audit.py)."""
    known = {g.name for g in taxonomy.groups}
    out: dict[str, ModelValue] = {}
    for a in attributes:
        if a.attribute not in known:
            continue
        out[a.attribute] = {
            "value": a.value,
            "confidence": float(a.confidence),
            "box": a.box,
            "auto_filled": a.auto_filled,
            "withheld_by": a.withheld_by,
        }
        if a.readings is not None:
            out[a.attribute]["readings"] = a.readings
    return out


@dataclass
class ReviewRouting:
    """The daemon's `ReviewRouter`: decides with the policy and builds the outbox payload for routed products.

    The payload holds everything the review worker needs later, without the model: title, image URL and size,
    the prediction (Label Studio result JSON, model version, score), the model's values per group, and why the
    product was routed. `on_decision` (optional) is told every decision (metrics).
    """

    policy: ReviewPolicy
    clock: Callable[[], datetime]
    on_decision: Callable[[Decision], None] | None = None
    _taxonomy: Taxonomy = field(init=False)

    def __post_init__(self) -> None:
        self._taxonomy = self.policy.taxonomy

    def __call__(self, result: ProductResult, tags: list[ImageTags]) -> OutboxPayload | None:
        decision = self.policy.decide(result.attributes, self.clock(), unfamiliar=any(t.unfamiliar for t in tags))
        if self.on_decision is not None:
            self.on_decision(decision)
        if not decision.routed:
            return None
        shown = tags[0] if tags else None
        regions = prediction_result(self._taxonomy, result.attributes, shown)
        scores = [float(r["score"]) for r in regions if r["type"] == "choices"]
        a = decision.assessment
        return {
            "reason": decision.reason or DEFAULT_REASON,  # a routed decision always names its strategy
            "priority": round(decision.priority, 6),
            "uncertainty": {
                "measure": self.policy.uncertainty_name,
                "score": round(a.uncertainty, 6),
                "groups": {g: round(u, 6) for g, u in a.group_uncertainty.items()},
            },
            "low_values": [
                {"group": v.group, "value": v.value, "confidence": round(v.confidence, 6), "threshold": v.threshold}
                for v in a.low_values
            ],
            "title": result.title,
            "description": result.description,
            "image_url": result.image_url,
            "image_size": [shown.width, shown.height] if shown is not None else None,
            "prediction": {
                "model_version": result.model_version,
                "score": round(min(scores), 4) if scores else 0.0,
                "result": regions,
            },
            "model_values": model_values(self._taxonomy, result.attributes),
        }
