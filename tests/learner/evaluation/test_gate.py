"""The promotion gate (learner/evaluation/gate.py): paired bootstrap over holdout products and the promotion rules."""

from __future__ import annotations

import numpy as np
import pytest

from learner.evaluation.gate import (
    GateConfig,
    ProductScores,
    decide,
    paired_bootstrap,
    primary_metric,
    scores_from_rows,
)

GROUPS = ("garment", "kids")


def _scores(correct_rate: float, products: int = 200, seed: int = 0, rate_kids: float | None = None) -> ProductScores:
    """Two images per product, both groups labelled; each image right with the given probability."""
    rng = np.random.default_rng(seed)
    known = np.full((products, 2), 2.0)
    correct = np.stack(
        [rng.binomial(2, correct_rate, products), rng.binomial(2, rate_kids or correct_rate, products)], axis=1
    ).astype(float)
    return ProductScores(tuple(f"p{i:04d}" for i in range(products)), GROUPS, correct, known)


def _metrics(top1: dict[str, float]) -> dict[str, object]:
    return {"groups": {g: {"top1": v, "macro_f1": v} for g, v in top1.items()}}


def test_primary_metric_is_the_mean_over_groups_of_pooled_accuracy() -> None:
    correct = np.array([[1.0, 0.0], [2.0, 1.0]])
    known = np.array([[1.0, 0.0], [2.0, 2.0]])  # product 0 has no kids label
    # garment 3/3, kids 1/2 -> mean 0.75
    assert primary_metric(correct, known) == pytest.approx(0.75)


def test_bootstrap_interval_of_a_clear_win_lies_above_zero() -> None:
    champion, challenger = _scores(0.6, seed=1), _scores(0.8, seed=2)
    result = paired_bootstrap(champion, challenger, samples=1000, seed=0)
    assert result.difference == pytest.approx(
        primary_metric(challenger.correct, challenger.known) - primary_metric(champion.correct, champion.known)
    )
    assert 0 < result.low < result.difference < result.high


def test_bootstrap_of_equally_good_models_straddles_zero() -> None:
    champion = _scores(0.7, seed=3)
    # the same accuracy, but right on other products (each product's result moved to the next one)
    other = ProductScores(champion.products, champion.groups, np.roll(champion.correct, 1, axis=0), champion.known)
    result = paired_bootstrap(champion, other, samples=1000, seed=0)
    assert result.difference == pytest.approx(0)
    assert result.low < 0 < result.high


def test_bootstrap_is_paired_so_a_constant_gain_on_every_product_has_a_tight_interval() -> None:
    champion = _scores(0.5, seed=5)
    # the challenger gets one more image right on exactly the products the champion missed one: a sure gain
    better = champion.correct.copy()
    better[:, 0] = np.minimum(better[:, 0] + 1, 2)
    challenger = ProductScores(champion.products, champion.groups, better, champion.known)
    result = paired_bootstrap(champion, challenger, samples=500, seed=0)
    assert result.low > 0
    assert result.high - result.low < 0.1


def test_bootstrap_aligns_products_given_in_another_order() -> None:
    champion = _scores(0.6, seed=6)
    order = np.random.default_rng(0).permutation(len(champion.products))
    shuffled = ProductScores(
        tuple(champion.products[i] for i in order), champion.groups, champion.correct[order], champion.known[order]
    )
    result = paired_bootstrap(shuffled, champion, samples=200, seed=0)
    assert result.difference == 0 and result.low == 0 and result.high == 0


def test_bootstrap_refuses_scores_on_different_products() -> None:
    with pytest.raises(ValueError, match="different holdout products"):
        paired_bootstrap(_scores(0.6, products=10), _scores(0.6, products=11), samples=100)


def test_clear_winner_without_regression_is_promoted() -> None:
    decision = decide(
        _metrics({"garment": 0.6, "kids": 0.6}),
        _metrics({"garment": 0.8, "kids": 0.8}),
        _scores(0.6, seed=1),
        _scores(0.8, seed=2),
        GateConfig(bootstrap_samples=500),
    )
    assert decision.promote, decision.reasons
    assert decision.to_dict()["bootstrap"]["low"] > 0


def test_worse_challenger_is_rejected() -> None:
    decision = decide(
        _metrics({"garment": 0.8, "kids": 0.8}),
        _metrics({"garment": 0.5, "kids": 0.5}),
        _scores(0.8, seed=1),
        _scores(0.5, seed=2),
        GateConfig(bootstrap_samples=500),
    )
    assert not decision.promote
    assert "no significant win" in decision.summary()


def test_a_win_on_average_with_one_group_regressing_beyond_the_margin_is_rejected() -> None:
    champion = _scores(0.5, seed=1, rate_kids=0.9)
    challenger = _scores(0.95, seed=2, rate_kids=0.85)
    decision = decide(
        _metrics({"garment": 0.5, "kids": 0.9}),
        _metrics({"garment": 0.95, "kids": 0.85}),
        champion,
        challenger,
        GateConfig(bootstrap_samples=500, max_group_regression=0.02),
    )
    assert decision.bootstrap is not None and decision.bootstrap.low > 0
    assert not decision.promote
    assert decision.regressions == ["kids/top1: -0.0500 (margin 0.0200)", "kids/macro_f1: -0.0500 (margin 0.0200)"]


def test_a_regression_within_the_margin_does_not_block_promotion() -> None:
    decision = decide(
        _metrics({"garment": 0.5, "kids": 0.9}),
        _metrics({"garment": 0.95, "kids": 0.89}),
        _scores(0.5, seed=1, rate_kids=0.9),
        _scores(0.95, seed=2, rate_kids=0.9),
        GateConfig(bootstrap_samples=500, max_group_regression=0.02),
    )
    assert decision.promote, decision.reasons


def test_failed_training_or_missing_evaluation_means_rejection() -> None:
    failed = decide(None, None, None, None, GateConfig(), failure="training loss is not finite (nan)")
    assert not failed.promote and "not finite" in failed.summary()
    missing = decide(_metrics({"garment": 0.5}), None, _scores(0.5), None, GateConfig())
    assert not missing.promote and "missing" in missing.summary()


def test_scores_from_rows_counts_images_per_product_and_group() -> None:
    scores = scores_from_rows([("a", "kids", True), ("a", "kids", False), ("b", "garment", True)], GROUPS)
    assert scores.products == ("a", "b")
    assert scores.known.tolist() == [[0, 2], [1, 0]]
    assert scores.correct.tolist() == [[0, 1], [1, 0]]


def test_gate_config_rejects_meaningless_settings() -> None:
    with pytest.raises(ValueError):
        GateConfig(bootstrap_samples=10)
    with pytest.raises(ValueError):
        GateConfig(confidence=1.5)


def test_a_challenger_whose_detection_map_regressed_beyond_the_margin_is_rejected() -> None:
    decision = decide(
        _metrics({"garment": 0.6, "kids": 0.6}),
        _metrics({"garment": 0.8, "kids": 0.8}),
        _scores(0.6, seed=1),
        _scores(0.8, seed=2),
        GateConfig(bootstrap_samples=500, max_detection_regression=0.02),
        champion_detection={"map": 0.40, "map_50": 0.7},
        challenger_detection={"map": 0.35, "map_50": 0.7},
    )
    assert decision.bootstrap is not None and decision.bootstrap.low > 0  # it would have won on the classifier
    assert not decision.promote
    assert "detection regression beyond the margin: mAP@[.5:.95] 0.3500 vs 0.4000" in decision.summary()
    assert decision.regressions == ["detection/map: -0.0500 (margin 0.0200)"]
    assert decision.to_dict()["detection"] == {"champion": 0.4, "challenger": 0.35, "difference": -0.05}


def test_a_detection_map_drop_within_the_margin_or_without_both_figures_does_not_block_promotion() -> None:
    def gate(champion: dict[str, float] | None, challenger: dict[str, float] | None) -> bool:
        return decide(
            _metrics({"garment": 0.6, "kids": 0.6}),
            _metrics({"garment": 0.8, "kids": 0.8}),
            _scores(0.6, seed=1),
            _scores(0.8, seed=2),
            GateConfig(bootstrap_samples=500, max_detection_regression=0.02),
            champion_detection=champion,
            challenger_detection=challenger,
        ).promote

    assert gate({"map": 0.40}, {"map": 0.39})
    assert gate({"map": 0.40}, None)  # no boxes on the holdout for one of them: nothing to compare
    assert not gate({"map": 0.40}, {"map": 0.37})
