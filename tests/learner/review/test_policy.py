"""The routing policy (learner/review/policy.py): which values are low (an operator's group threshold, else the
decoder's auto-fill mark, else the bundle's per-value thresholds), audit and random sampling, pluggable strategies."""

from __future__ import annotations

from datetime import timedelta

import pytest

from connectors.records import Alternative, AttributeValue
from learner.model.taxonomy import Taxonomy
from learner.review.policy import Assessment, AuditSample, BelowThreshold, RandomSample
from tests.learner.review.outputs import T0, confident, policy, single

# -------------------------------------------------------------------------------------------- threshold


def test_a_value_under_its_calibrated_threshold_routes_the_product(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, thresholds={"garment": {"Shirt": 0.9}, "kids": {"False": 0.5}})
    decision = p.decide(confident(garment=0.85), T0)
    assert decision.routed and decision.reason == "low_confidence"
    assert [(v.group, v.value, v.threshold) for v in decision.assessment.low_values] == [("garment", "Shirt", 0.9)]


def test_values_at_or_above_their_threshold_are_accepted(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, thresholds={"garment": {"Shirt": 0.9}, "kids": {"False": 0.5}})
    decision = p.decide(confident(garment=0.9), T0)
    assert not decision.routed and decision.reason is None


def test_each_value_has_its_own_threshold_and_others_use_the_default(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, thresholds={"garment": {"Dress": 0.99}}, default_threshold=0.7)
    assert not p.decide(confident(garment=0.8), T0).routed  # Shirt: default 0.7
    low = [single("garment", ("Dress", 0.95), ("Skirt", 0.03)), single("kids", ("False", 0.99), ("True", 0.01))]
    assert p.decide(low, T0).reason == "low_confidence"  # Dress: 0.95 < 0.99


def test_a_group_policy_can_override_the_threshold_or_leave_the_group_out(taxonomy: Taxonomy) -> None:
    from learner.review.policy import GroupPolicy

    stricter = policy(taxonomy, groups={"kids": GroupPolicy(threshold=0.99)})
    assert stricter.decide(confident(kids=0.97), T0).routed
    ignored = policy(taxonomy, thresholds={"garment": {"Shirt": 0.99}}, groups={"garment": GroupPolicy(review=False)})
    assert not ignored.decide(confident(garment=0.6), T0).routed


def test_a_value_kept_as_a_suggestion_below_its_groups_autofill_threshold_routes_the_product(
    taxonomy: Taxonomy,
) -> None:
    p = policy(taxonomy, default_threshold=0.5, autofill_thresholds={"garment": 0.9, "kids": 0.6})
    suggestion = p.decide(confident(garment=0.85, suggested={"garment"}), T0)
    assert suggestion.routed and [(v.group, v.threshold) for v in suggestion.assessment.low_values] == [
        ("garment", 0.9)
    ]
    assert not p.decide(confident(garment=0.92), T0).routed  # auto-filled: nothing to review
    never = policy(taxonomy, autofill_thresholds={"garment": 2.0})  # no threshold reached the target precision
    assert never.decide(confident(garment=0.999, suggested={"garment"}), T0).routed


def test_a_policy_naming_a_group_the_taxonomy_lacks_is_refused(taxonomy: Taxonomy) -> None:
    from learner.review.policy import GroupPolicy

    with pytest.raises(ValueError, match="colour"):
        policy(taxonomy, groups={"colour": GroupPolicy()})


def test_multi_label_values_are_each_held_to_their_threshold(taxonomy: Taxonomy) -> None:
    objects = AttributeValue(
        "detectedObjects", ["person", "tie"], 0.9, [Alternative("person", 0.9), Alternative("tie", 0.4)]
    )
    p = policy(taxonomy, default_threshold=0.5)
    decision = p.decide([*confident(), objects], T0)
    assert [(v.group, v.value) for v in decision.assessment.low_values] == [("detectedObjects", "tie")]


def test_the_policy_follows_the_decoders_auto_fill_mark_and_never_compares_again(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, autofill_thresholds={"garment": 0.9})
    # the confidence shown is rounded to 4 places: 0.89996 shows as 0.9, the decoder compared 0.89996 < 0.9
    rounded = [single("garment", ("Shirt", 0.9), ("Polo", 0.1), auto_filled=False), *confident()[1:]]
    decision = p.decide(rounded, T0)
    low = decision.assessment.low_values
    assert decision.routed
    assert [(v.group, v.value, v.confidence, v.threshold) for v in low] == [("garment", "Shirt", 0.9, 0.9)]
    assert not p.decide(confident(garment=0.85), T0).routed  # the decoder auto-filled it: nothing to review


def test_with_a_hierarchy_the_low_value_is_the_decoded_one_not_the_most_probable(taxonomy: Taxonomy) -> None:
    # the hierarchy made the decoder choose Polo although Shirt scored higher; Polo is what was kept as a suggestion
    decoded = [single("garment", ("Polo", 0.4), ("Shirt", 0.5), auto_filled=False), *confident()[1:]]
    low = policy(taxonomy, autofill_thresholds={"garment": 0.9}).decide(decoded, T0).assessment.low_values
    assert [(v.group, v.value, v.confidence) for v in low] == [("garment", "Polo", 0.4)]


def test_a_groups_review_threshold_decides_for_that_group_instead_of_the_auto_fill_mark(taxonomy: Taxonomy) -> None:
    from learner.review.policy import GroupPolicy

    p = policy(taxonomy, autofill_thresholds={"garment": 0.9}, groups={"garment": GroupPolicy(threshold=0.8)})
    assert not p.decide(confident(garment=0.85, suggested={"garment"}), T0).routed  # 0.85 >= 0.8
    low = p.decide(confident(garment=0.75), T0).assessment.low_values  # auto-filled, yet under the operator's 0.8
    assert [(v.group, v.threshold) for v in low] == [("garment", 0.8)]


# -------------------------------------------------------------------------------------------- audit sampling


def test_audit_sampling_routes_about_its_rate_of_accepted_products_reproducibly(taxonomy: Taxonomy) -> None:
    def run(seed: int) -> list[int]:
        p = policy(taxonomy, audit_rate=0.02, audit_seed=seed)
        return [i for i in range(5000) if p.decide(confident(), T0 + timedelta(seconds=i)).reason == "audit"]

    first = run(7)
    assert 60 <= len(first) <= 140  # 2 % of 5000 = 100; binomial sd ~ 10
    assert run(7) == first  # same seed, same sample
    assert run(8) != first


def test_audit_samples_only_accepted_products_and_low_confidence_wins(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, audit_rate=1.0, thresholds={"garment": {"Shirt": 0.9}})
    assert p.decide(confident(garment=0.5), T0).reason == "low_confidence"
    assert p.decide(confident(garment=0.95), T0).reason == "audit"


def test_a_value_withheld_by_a_suspension_is_not_low_and_is_audited_at_the_raised_rate(taxonomy: Taxonomy) -> None:
    import dataclasses

    from connectors.records import SUSPENDED

    def suspended_garment() -> list[AttributeValue]:
        garment, kids = confident()
        return [dataclasses.replace(garment, auto_filled=False, withheld_by=SUSPENDED), kids]

    strategies = [BelowThreshold(), AuditSample(0.0, seed=3, suspended_rate=0.5)]
    p = policy(taxonomy, autofill_thresholds={"garment": 0.9}, strategies=strategies)
    decisions = [p.decide(suspended_garment(), T0 + timedelta(seconds=i)) for i in range(1000)]
    assert all(d.assessment.low_values == () and d.assessment.suspended == ("garment",) for d in decisions)
    assert 400 <= sum(d.reason == "audit" for d in decisions) <= 600  # half of them, not none (audit rate 0)
    assert not any(p.decide(confident(), T0).routed for _ in range(200))  # products of other groups: rate 0


def test_a_zero_audit_rate_never_samples(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, audit_rate=0.0)
    assert not any(p.decide(confident(), T0).routed for _ in range(2000))


def test_random_routing_samples_every_product_whatever_its_confidence_in_a_random_order(
    taxonomy: Taxonomy,
) -> None:
    def sample(seed: int) -> list[tuple[bool, float]]:
        p = policy(taxonomy, thresholds={"garment": {"Shirt": 0.9}}, strategies=[RandomSample(0.3, seed=seed)])
        outputs = [confident(garment=0.6), confident()] * 500  # half unsure, half sure
        return [(d.routed, d.priority) for d in (p.decide(o, T0) for o in outputs)]

    first = sample(7)
    assert first == sample(7)  # seeded: reproducible
    routed = [i for i, (r, _) in enumerate(first) if r]
    assert 0.25 < len(routed) / len(first) < 0.35
    unsure = sum(1 for i in routed if i % 2 == 0)
    assert 0.4 < unsure / len(routed) < 0.6  # confidence plays no part
    priorities = [first[i][1] for i in routed]
    assert len(set(priorities)) == len(priorities) and all(0 <= x < 1 for x in priorities)
    assert routed != sorted(routed, key=lambda i: -first[i][1])  # the queue order is not the arrival order
    assert all(d.reason == "random" for d in [policy(taxonomy, strategies=[RandomSample(1.0)]).decide(confident(), T0)])
    with pytest.raises(ValueError, match="within"):
        RandomSample(1.5)


def test_under_uncertainty_routing_the_priority_is_the_uncertainty(taxonomy: Taxonomy) -> None:
    decision = policy(taxonomy, thresholds={"garment": {"Shirt": 0.9}}).decide(confident(garment=0.6), T0)
    assert decision.routed and decision.priority == decision.assessment.uncertainty > 0


def test_strategies_are_pluggable(taxonomy: Taxonomy) -> None:
    class NewProductLine:
        name = "new_line"

        def select(self, assessment: Assessment) -> bool:
            return assessment.group_uncertainty.get("kids", 0.0) > 0.5

    p = policy(taxonomy, strategies=[NewProductLine(), BelowThreshold(), AuditSample(0.0)])
    assert p.decide(confident(kids=0.55), T0).reason == "new_line"
    assert p.decide(confident(kids=0.99), T0).routed is False
