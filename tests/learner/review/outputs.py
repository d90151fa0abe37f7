"""Model outputs as the review loop sees them, shared by its tests: attribute values with their candidates (`single`,
`confident`), a policy with audit sampling off unless asked (`policy`), and one image's tags with a detected tie.

Test data only: no assertions here, and nothing that starts a service."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.records import Alternative, AttributeValue
from learner.inference.engine import Detection, ImageTags
from learner.model.taxonomy import Taxonomy
from learner.review.policy import ReviewPolicy

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def single(group: str, *candidates: tuple[str, float], auto_filled: bool = True) -> AttributeValue:
    """A single-choice value: the first candidate, its alternatives, and the decoder's auto-fill mark."""
    return AttributeValue(
        group, candidates[0][0], candidates[0][1], [Alternative(v, c) for v, c in candidates], auto_filled=auto_filled
    )


def confident(garment: float = 0.95, kids: float = 0.97, suggested: Collection[str] = ()) -> list[AttributeValue]:
    """A shirt for adults; `suggested`: the groups the decoder kept as suggestions (below their auto-fill threshold)."""
    return [
        single(
            "garment",
            ("Shirt", garment),
            ("Polo", (1 - garment) / 2),
            ("T-Shirt", (1 - garment) / 4),
            auto_filled="garment" not in suggested,
        ),
        single("kids", ("False", kids), ("True", 1 - kids), auto_filled="kids" not in suggested),
    ]


def policy(taxonomy: Taxonomy, **kwargs: Any) -> ReviewPolicy:
    kwargs.setdefault("audit_rate", 0.0)
    return ReviewPolicy(taxonomy, kwargs.pop("thresholds", {}), **kwargs)


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
