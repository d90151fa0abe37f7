"""The review caps (learner/review/caps.py) as the policy applies them: hourly and daily sliding windows, audit
samples counted too, and the counts of other replicas taken in by a sync."""

from __future__ import annotations

from datetime import timedelta

from learner.model.taxonomy import Taxonomy
from learner.review.caps import ReviewCaps
from tests.learner.review.outputs import T0, confident, policy

# -------------------------------------------------------------------------------------------- caps


def test_the_hourly_cap_holds_back_products_until_the_hour_has_passed(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, default_threshold=0.99, caps=ReviewCaps(per_hour=3))
    reasons = [p.decide(confident(), T0 + timedelta(minutes=i)).reason for i in range(5)]
    assert reasons == ["low_confidence"] * 3 + ["capped:low_confidence"] * 2
    assert p.decide(confident(), T0 + timedelta(minutes=59)).reason == "capped:low_confidence"
    assert p.decide(confident(), T0 + timedelta(minutes=60, seconds=1)).reason == "low_confidence"


def test_the_daily_cap_holds_across_hours(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, default_threshold=0.99, caps=ReviewCaps(per_hour=2, per_day=5))
    routed = [p.decide(confident(), T0 + timedelta(minutes=20 * i)).routed for i in range(12)]  # four hours
    assert sum(routed) == 5
    assert p.decide(confident(), T0 + timedelta(hours=24, minutes=1)).routed


def test_caps_count_audit_samples_too_and_survive_a_restart(taxonomy: Taxonomy) -> None:
    caps = ReviewCaps(per_hour=2)
    caps.sync([T0 - timedelta(minutes=30)])  # routed by the previous process
    p = policy(taxonomy, audit_rate=1.0, caps=caps)
    assert [p.decide(confident(), T0).reason for _ in range(2)] == ["audit", "capped:audit"]
    assert caps.counts(T0) == (2, 2)


def test_a_sync_counts_other_replicas_routes_and_keeps_own_routes_not_yet_in_the_outbox(taxonomy: Taxonomy) -> None:
    caps = ReviewCaps(per_hour=4)
    p = policy(taxonomy, audit_rate=1.0, caps=caps)
    assert p.decide(confident(), T0).routed  # this replica's route, not committed yet
    caps.sync([T0 - timedelta(minutes=5), T0 - timedelta(minutes=2)])  # two routes of another replica
    assert caps.counts(T0) == (3, 3)
    assert p.decide(confident(), T0 + timedelta(seconds=1)).routed
    assert p.decide(confident(), T0 + timedelta(seconds=2)).reason == "capped:audit"

    # all four are committed now; the route made since the last sync is still added on top (it might not have
    # been committed), so it counts twice until the sync after: the caps err on the side of fewer products
    committed = [T0 - timedelta(minutes=5), T0 - timedelta(minutes=2), T0, T0 + timedelta(seconds=1)]
    caps.sync(committed)
    assert caps.counts(T0 + timedelta(seconds=3)) == (5, 5)
    caps.sync(committed)
    assert caps.counts(T0 + timedelta(seconds=3)) == (4, 4)
    assert caps.counts(T0 + timedelta(minutes=58)) == (2, 4)  # the other replica's routes left the hour


def test_no_caps_means_no_limit(taxonomy: Taxonomy) -> None:
    p = policy(taxonomy, default_threshold=0.99)
    assert all(p.decide(confident(), T0).routed for _ in range(1000))
