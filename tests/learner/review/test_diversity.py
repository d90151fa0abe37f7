"""Routing that mixes uncertainty with diversity (learner/review/diversity.py): the same products as uncertainty
routing, queued so that annotators see one kind of product after another instead of a run of near-identical unsure
ones; the audit sample stays beside it."""

from __future__ import annotations

import pytest

from connectors.records import AttributeValue
from learner.model.taxonomy import Taxonomy, load_taxonomy
from learner.review.diversity import (
    ClassBalanced,
    ClusterMargin,
    PriorityTiers,
    class_group,
    prediction_vector,
    tier_band,
)
from learner.review.policy import AuditSample, BelowThreshold, ReviewPolicy
from tests.learner.review.outputs import ROOT, T0, policy, single


def unsure(garment: str, p: float, runner_up: str = "Polo", kids: float = 0.97) -> list[AttributeValue]:
    """A product the decoder kept as a suggestion in `garment` (so it is low), with confidence `p`."""
    return [
        single("garment", (garment, p), (runner_up, (1 - p) / 2), auto_filled=False),
        single("kids", ("False", kids), ("True", 1 - kids)),
    ]


def queue(p: ReviewPolicy, products: list[list[AttributeValue]]) -> list[tuple[str, float]]:
    """(predicted garment, confidence) of the routed products in outbox order: priority, then arrival."""
    routed = []
    for i, attrs in enumerate(products):
        d = p.decide(attrs, T0)
        if d.routed:
            routed.append((-d.priority, i, (d.assessment.predicted["garment"], attrs[0].confidence)))
    return [item for _, _, item in sorted(routed)]


def balanced(taxonomy: Taxonomy, **kwargs: float | None) -> ReviewPolicy:
    return policy(
        taxonomy,
        autofill_thresholds={"garment": 0.9, "kids": 0.6},
        strategies=[ClassBalanced(taxonomy, **kwargs), AuditSample(0.0)],  # type: ignore[arg-type]
    )


def test_a_queue_of_one_class_of_near_identical_unsure_products_is_interleaved_with_other_classes(
    taxonomy: Taxonomy,
) -> None:
    # twenty near-identical unsure shirts arrive first, then a few unsure dresses and hats, a little less unsure
    shirts = [unsure("Shirt", 0.40 + i * 0.001) for i in range(20)]
    others = [unsure("Dress", 0.45), unsure("Hat", 0.47), unsure("Dress", 0.5), unsure("Hat", 0.52)]
    order = [garment for garment, _ in queue(balanced(taxonomy), shirts + others)]
    assert order[:6] == ["Shirt", "Dress", "Hat", "Shirt", "Dress", "Hat"]  # round robin over the classes
    assert order[6:] == ["Shirt"] * 18

    uncertainty_first = policy(taxonomy, autofill_thresholds={"garment": 0.9, "kids": 0.6})
    assert [g for g, _ in queue(uncertainty_first, shirts + others)][:20] == ["Shirt"] * 20  # the run it breaks


def test_within_a_class_the_most_uncertain_comes_first_and_an_earlier_arrival_keeps_its_tier(
    taxonomy: Taxonomy,
) -> None:
    products = [unsure("Shirt", p) for p in (0.7, 0.4, 0.6)] + [unsure("Dress", 0.8)]
    order = queue(balanced(taxonomy), products)
    # 0.4 is the most uncertain shirt; 0.7 arrived before it, so nothing was ahead of it then: both lead their
    # class (a stream cannot know what comes later); 0.6 came after the more uncertain 0.4 and waits a tier
    assert order == [("Shirt", 0.4), ("Shirt", 0.7), ("Dress", 0.8), ("Shirt", 0.6)]


def test_class_balanced_routes_exactly_what_uncertainty_routing_routes(taxonomy: Taxonomy) -> None:
    products = [unsure("Shirt", 0.5), single_confident(), unsure("Dress", 0.6), single_confident()]
    plain = policy(taxonomy, autofill_thresholds={"garment": 0.9, "kids": 0.6})
    mixed = balanced(taxonomy)
    for attrs in products:
        a, b = plain.decide(attrs, T0), mixed.decide(attrs, T0)
        assert (a.routed, a.reason) == (b.routed, b.reason)
        assert b.reason in (None, BelowThreshold.name)


def single_confident() -> list[AttributeValue]:
    return [single("garment", ("Shirt", 0.97), ("Polo", 0.02)), single("kids", ("False", 0.99), ("True", 0.01))]


def test_the_audit_sample_is_kept_beside_class_balanced_routing(taxonomy: Taxonomy) -> None:
    p = policy(
        taxonomy,
        autofill_thresholds={"garment": 0.9, "kids": 0.6},
        strategies=[ClassBalanced(taxonomy), AuditSample(1.0, seed=3)],
    )
    assert p.decide(single_confident(), T0).reason == "audit"  # accepted products still reach the audit sample
    assert p.decide(unsure("Shirt", 0.4), T0).reason == BelowThreshold.name  # never audited in its place


def test_the_audit_sample_stays_in_the_daemons_diversity_routings() -> None:
    from daemon.config import Settings
    from daemon.routing import routing_strategies

    tax = load_taxonomy(ROOT / "learner" / "taxonomies" / "fashion-products.yaml")
    for routing, kind in (("class_balanced", ClassBalanced), ("cluster_margin", ClusterMargin)):
        settings = Settings(review={"enabled": True, "routing": routing, "audit_rate": 0.05})  # type: ignore[arg-type]
        strategies = routing_strategies(settings, tax)
        assert [type(s) for s in strategies][2:] == [kind, AuditSample]
        audit = strategies[-1]
        assert isinstance(audit, AuditSample) and audit.rate == 0.05


def test_the_class_group_is_the_taxonomys_most_specific_single_choice_group(taxonomy: Taxonomy) -> None:
    assert class_group(load_taxonomy(ROOT / "learner" / "taxonomies" / "fashion-products.yaml")) == "articleType"
    assert class_group(taxonomy) == "garment"  # no hierarchy: the single-choice group with the most values


def test_recent_routes_count_less_as_more_products_are_routed() -> None:
    tiers = PriorityTiers(half_life=2.0)
    tiers.route("a", 0.5)
    for _ in range(6):
        tiers.route("b", 0.5)
    assert tiers.count("a") == pytest.approx(0.5**3)
    assert tiers.route("a", 0.5) == tier_band(0, 0.5)  # so long ago that it is a first route again
    never = PriorityTiers(half_life=None)
    never.route("a", 0.5)
    assert never.route("a", 0.5) == tier_band(1, 0.5)


def test_priorities_stay_within_zero_and_one_and_tiers_never_overlap() -> None:
    bands = [(tier_band(t, 0.0), tier_band(t, 1.0)) for t in range(50)]
    assert bands[0] == (0.5, 1.0)
    assert all(0 < low < high <= 1 for low, high in bands)
    assert all(bands[t + 1][1] <= bands[t][0] for t in range(49))


def test_products_the_model_reads_alike_share_a_cluster_and_others_do_not(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, autofill_thresholds={"garment": 0.9, "kids": 0.6})
    strategy = ClusterMargin(taxonomy, radius=0.3)
    kinds = [strategy.kind(p.assess(attrs)) for attrs in (unsure("Shirt", 0.5), unsure("Shirt", 0.52))]
    kinds.append(strategy.kind(p.assess(unsure("Dress", 0.5, runner_up="Skirt"))))
    assert kinds[0] == kinds[1] != kinds[2]


def test_the_prediction_vector_holds_each_groups_probabilities(taxonomy: Taxonomy) -> None:
    vec = prediction_vector(taxonomy, policy(taxonomy).assess(unsure("Shirt", 0.5)))
    garment, kids = vec[:17] * 2**0.5, vec[17:] * 2**0.5  # two single-choice groups, each scaled by 1/sqrt(2)
    assert garment.sum() == pytest.approx(1.0) and kids.sum() == pytest.approx(1.0)
    assert garment[taxonomy.group("garment").index("Shirt")] == pytest.approx(0.5)
    assert kids[0] == pytest.approx(0.97)


def test_cluster_margin_interleaves_a_run_of_near_identical_unsure_products(taxonomy: Taxonomy) -> None:
    p = policy(
        taxonomy,
        autofill_thresholds={"garment": 0.9, "kids": 0.6},
        strategies=[ClusterMargin(taxonomy, radius=0.3), AuditSample(0.0)],
    )
    shirts = [unsure("Shirt", 0.40 + i * 0.001) for i in range(10)]
    order = [g for g, _ in queue(p, [*shirts, unsure("Dress", 0.6, runner_up="Skirt"), unsure("Hat", 0.6, "Top")])]
    assert order[:3] == ["Shirt", "Dress", "Hat"]


def test_a_cluster_cap_makes_late_products_join_the_nearest_cluster(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy)
    strategy = ClusterMargin(taxonomy, radius=0.01, max_clusters=2)
    kinds = {strategy.kind(p.assess(unsure(g, 0.5))) for g in ("Shirt", "Dress", "Hat", "Top")}
    assert kinds == {"0", "1"}


def test_a_taxonomy_without_a_single_choice_group_cannot_be_class_balanced() -> None:
    from learner.model.taxonomy import parse_taxonomy

    only_multi = parse_taxonomy(
        "schema_version: 1\nname: t\ngroups:\n  o:\n    kind: multi\n    source: classifier\n"
        "    label_column: o\n    values: [a, b]\n"
    )
    with pytest.raises(ValueError, match="single-choice"):
        ClassBalanced(only_multi)
