"""Uncertainty measures (learner/review/uncertainty.py) and the order they give routed products
(`rank_for_review`): most uncertain first, whatever the measure."""

from __future__ import annotations

import pytest

from learner.model.taxonomy import Taxonomy
from learner.review.policy import rank_for_review
from learner.review.uncertainty import entropy, least_confidence, margin
from tests.learner.review.outputs import T0, confident, policy, single

# -------------------------------------------------------------------------------------------- uncertainty


def test_each_uncertainty_measure_scores_a_near_tie_above_a_clear_winner() -> None:
    clear, tie = [0.9, 0.05, 0.03], [0.45, 0.44, 0.05]
    for measure in (least_confidence, margin, entropy):
        assert measure(tie, False, 17) > measure(clear, False, 17), measure.__name__
        assert 0.0 <= measure(clear, False, 17) <= 1.0 and 0.0 <= measure(tie, False, 17) <= 1.0


def test_the_measures_disagree_where_they_should() -> None:
    # a confident top-1 with a close runner-up vs an unsure top-1 with a spread tail
    close_second = [0.55, 0.44, 0.01]
    spread = [0.40, 0.10, 0.10]
    assert margin(close_second, False, 17) > margin(spread, False, 17)  # margin only sees the gap to the second
    assert least_confidence(spread, False, 17) > least_confidence(close_second, False, 17)  # sees only the top
    assert entropy(spread, False, 17) > entropy(close_second, False, 17)  # sees the whole spread


def test_multi_label_uncertainty_peaks_at_one_half() -> None:
    for measure in (least_confidence, margin, entropy):
        assert measure([0.5], True, 5) == pytest.approx(1.0)
        assert measure([0.99], True, 5) < 0.1
        assert measure([0.99, 0.55], True, 5) > measure([0.99, 0.9], True, 5)


@pytest.mark.parametrize("measure", ["least_confidence", "margin", "entropy"])
def test_routed_products_are_ranked_most_uncertain_first(taxonomy: Taxonomy, measure: str) -> None:
    p = policy(taxonomy, uncertainty=measure, default_threshold=0.99)
    products = {
        "sure": confident(garment=0.97),
        "unsure": [single("garment", ("Shirt", 0.35), ("Polo", 0.33), ("Top", 0.2)), *confident()[1:]],
        "middling": confident(garment=0.7),
    }
    scored = [(pid, p.decide(attrs, T0).assessment.uncertainty) for pid, attrs in products.items()]
    assert rank_for_review(scored) == ["unsure", "middling", "sure"]


def test_ranking_keeps_arrival_order_between_equally_uncertain_products() -> None:
    assert rank_for_review([("a", 0.5), ("b", 0.9), ("c", 0.5)]) == ["b", "a", "c"]


def test_an_unknown_uncertainty_measure_is_refused_and_a_custom_one_is_used(taxonomy: Taxonomy) -> None:
    with pytest.raises(ValueError, match="least_confidence"):
        policy(taxonomy, uncertainty="variance")
    constant = policy(taxonomy, uncertainty=lambda confidences, multi, n: 0.42)
    assert constant.decide(confident(), T0).assessment.uncertainty == 0.42
