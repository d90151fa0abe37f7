"""The audited precision of auto-filled values (learner/evaluation/audit.py): its Wilson interval, the groups' states
and when a group is due for suspension, which answers count, and the targets they are held to."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from connectors.records import ModelValue
from learner.evaluation.audit import audit_groups, autofill_targets, due_for_suspension, model_fill, precision_interval
from learner.model.taxonomy import load_taxonomy

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Answers:
    group: str
    model_version: str
    audited: int
    right: int


@dataclass(frozen=True)
class Confidence:
    group: str
    model_version: str
    values: int
    mean_confidence: float


def wilson_score_interval(right: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The textbook two-sided Wilson score interval (95% with the default z)."""
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("right", "audited"), [(0, 5), (3, 10), (48, 50), (50, 50), (970, 1000)])
def test_the_interval_is_the_two_sided_wilson_score_interval(right: int, audited: int) -> None:
    interval = precision_interval(right, audited, 0.95)
    lower, upper = wilson_score_interval(right, audited)
    assert interval.lower == pytest.approx(lower, abs=1e-9) and interval.upper == pytest.approx(upper, abs=1e-9)
    assert interval.precision == pytest.approx(right / audited)


def test_without_answers_the_interval_says_nothing() -> None:
    interval = precision_interval(0, 0)
    assert (interval.lower, interval.upper, interval.precision) == (0.0, 1.0, None)


def test_a_group_significantly_below_target_on_enough_answers_is_due_for_suspension() -> None:
    answers = [
        Answers("garment", "v1", audited=40, right=30),  # 0.75, upper bound ~0.86 < 0.97
        Answers("kids", "v1", audited=40, right=40),  # all right: the interval reaches 0.97
        Answers("usage", "v1", audited=5, right=0),  # clearly wrong, but too few answers to act on
        Answers("garment", "v0", audited=40, right=30),  # already suspended
    ]
    confidences = [Confidence("garment", "v1", 120, 0.91), Confidence("colour", "v1", 8, 0.99)]
    audits = audit_groups(answers, confidences, {"garment": 0.97}, [("garment", "v0")], min_audited=20)
    by_key = {(a.group, a.model_version): a for a in audits}
    assert [k for k, a in by_key.items() if due_for_suspension(a)] == [("garment", "v1")]
    assert {k: a.state for k, a in by_key.items()} == {
        ("colour", "v1"): "too_few",
        ("garment", "v0"): "suspended",
        ("garment", "v1"): "below_target",
        ("kids", "v1"): "ok",
        ("usage", "v1"): "too_few",
    }
    garment = by_key[("garment", "v1")]
    assert (garment.label_free, garment.label_free_values, garment.target) == (0.91, 120, 0.97)
    assert by_key[("kids", "v1")].target == 0.97  # the default target for a group the mapping does not name
    assert by_key[("colour", "v1")].audit.audited == 0 and by_key[("kids", "v1")].label_free is None
    figures = garment.figures()
    assert figures["audited"] == 40 and figures["right"] == 30 and figures["interval"][1] < 0.97


def test_only_answers_on_auto_filled_or_suspended_values_are_audit_answers() -> None:
    def value(**keys: object) -> ModelValue:
        return {"value": "Shirt", "confidence": 0.9, "box": None, **keys}  # type: ignore[typeddict-item]

    assert model_fill(value(auto_filled=True, withheld_by=None)) == "auto"
    assert model_fill(value(auto_filled=False, withheld_by="suspended")) == "suspended"
    assert model_fill(value(auto_filled=False, withheld_by="unfamiliar_photo")) == "suggestion"
    assert model_fill(value(auto_filled=False, withheld_by=None)) == "suggestion"
    assert model_fill(value()) is None  # a payload from before the key: unknown, not counted
    assert model_fill(None) is None


def test_a_groups_target_is_the_one_its_thresholds_were_fitted_for() -> None:
    taxonomy = load_taxonomy(ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml")
    calibration = {"groups": {"garment": {"target_precision": 0.95}}}
    targets = autofill_targets(taxonomy, calibration, default=0.97)
    assert targets["garment"] == 0.95 and targets["kids"] == 0.97
    assert autofill_targets(taxonomy, None, default=0.9)["garment"] == 0.9
