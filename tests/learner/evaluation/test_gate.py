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
    vetoed_win_streak,
    vetoes_of,
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
    # the veto is a paired bootstrap now: kids drops 0.9 -> 0.6 on 200 products, far beyond noise and the margin
    champion = _scores(0.5, seed=1, rate_kids=0.9)
    challenger = _scores(0.95, seed=2, rate_kids=0.6)
    decision = decide(
        _metrics({"garment": 0.5, "kids": 0.9}),
        _metrics({"garment": 0.95, "kids": 0.6}),
        champion,
        challenger,
        GateConfig(bootstrap_samples=500, max_group_regression=0.02),
    )
    assert decision.bootstrap is not None and decision.bootstrap.low > 0
    assert not decision.promote
    assert len(decision.regressions) == 1 and decision.regressions[0].startswith("kids/top1 -0.")
    assert decision.regressions[0].endswith("(400 images, 200 products), below -0.0200")


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


# --- the group veto is a paired bootstrap too ----------------------------------------------------------------


def _rows(group: str, true: np.ndarray, predicted: np.ndarray) -> list[tuple[str, str, int, int]]:
    """One image per product p0000, p0001, ...: (product, group, true class, predicted class)."""
    return [(f"p{i:04d}", group, int(t), int(p)) for i, (t, p) in enumerate(zip(true, predicted, strict=True))]


def _rare_class_world(products: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """masterCategory labels: three common classes and ten rare ones (3 to 8 images), and a champion that gets 90%
    of the images right (a wrong guess is the next class)."""
    rng = np.random.default_rng(seed)
    rare = np.repeat(np.arange(3, 13), [3, 4, 5, 5, 6, 6, 7, 7, 8, 8])
    true = np.concatenate([rng.integers(0, 3, products - len(rare)), rare])
    rng.shuffle(true)
    champion = np.where(rng.random(products) < 0.9, true, (true + 1) % 13)
    return true, champion, rng.random(products)


def test_a_challenger_better_overall_and_within_noise_on_a_rare_class_group_is_promoted() -> None:
    true, champ, _ = _rare_class_world()
    garment_true = np.arange(len(true)) % 2
    rng = np.random.default_rng(1)
    garment_champ = np.where(rng.random(len(true)) < 0.6, garment_true, 1 - garment_true)
    garment_chall = np.where(rng.random(len(true)) < 0.85, garment_true, 1 - garment_true)
    # the challenger gets one image wrong in each of three rare classes (5, 6 and 7 images) that the champion got right
    chall = champ.copy()
    for cls in (5, 7, 9):
        i = np.flatnonzero((true == cls) & (champ == true))[0]
        chall[i] = 0
    champion = scores_from_rows(_rows("masterCategory", true, champ) + _rows("garment", garment_true, garment_champ))
    challenger = scores_from_rows(_rows("masterCategory", true, chall) + _rows("garment", garment_true, garment_chall))
    decision = decide({"groups": {}}, {"groups": {}}, champion, challenger, GateConfig(bootstrap_samples=2000))
    assert decision.promote, decision.reasons
    f1 = next(t for t in decision.group_tests if (t.group, t.figure) == ("masterCategory", "macro_f1"))
    # the old point-estimate rule would have vetoed: macro-F1 fell by more than the 0.02 margin
    assert f1.difference is not None and f1.difference < -0.02
    assert f1.high is not None and f1.high >= -0.02  # but the drop is not significant beyond the margin
    assert f1.classes == 11 and f1.excluded_classes == 2  # the classes with 3 and 4 images are left out
    assert decision.vetoes == [] and decision.significant_win


def test_a_significant_top1_regression_of_one_group_beyond_the_margin_is_rejected() -> None:
    true, champ, noise = _rare_class_world()
    chall = np.where(noise < 0.3, (true + 2) % 13, champ)  # a third of masterCategory now wrong
    garment_true = np.arange(len(true)) % 2
    champion = scores_from_rows(_rows("masterCategory", true, champ) + _rows("garment", garment_true, 1 - garment_true))
    challenger = scores_from_rows(_rows("masterCategory", true, chall) + _rows("garment", garment_true, garment_true))
    decision = decide({"groups": {}}, {"groups": {}}, champion, challenger, GateConfig(bootstrap_samples=1000))
    assert decision.significant_win  # garment went from 0% to 100%: the mean wins
    assert not decision.promote
    assert decision.vetoes == ["group_regression"]
    assert [r.split(" ")[0] for r in decision.regressions] == ["masterCategory/top1", "masterCategory/macro_f1"]
    assert decision.to_dict()["vetoes"] == ["group_regression"]


def test_a_macro_f1_collapse_vetoes_even_when_top1_holds() -> None:
    # 450 images of class 0 and 50 of class 1: the challenger fixes 50 class-0 errors but never predicts class 1
    true = np.array([0] * 450 + [1] * 50)
    champ = true.copy()
    champ[:50] = 1
    chall = np.zeros_like(true)
    champion, challenger = scores_from_rows(_rows("kids", true, champ)), scores_from_rows(_rows("kids", true, chall))
    decision = decide({"groups": {}}, {"groups": {}}, champion, challenger, GateConfig(bootstrap_samples=1000))
    top1, f1 = decision.group_tests
    assert top1.difference == pytest.approx(0.0) and not top1.regressed_beyond(0.02)
    assert f1.regressed_beyond(0.02)
    assert not decision.promote and "group_regression" in decision.vetoes


def test_the_explanation_names_the_test_the_intervals_and_the_supports() -> None:
    true, champ, _ = _rare_class_world()
    better = np.where(champ != true, true, champ)
    decision = decide(
        {"groups": {}},
        {"groups": {}},
        scores_from_rows(_rows("masterCategory", true, champ)),
        scores_from_rows(_rows("masterCategory", true, better)),
        GateConfig(bootstrap_samples=500),
    )
    win, groups = decision.reasons
    assert "95% CI [" in win and "over 500 products (paired bootstrap, 500 resamples)" in win
    assert "paired bootstrap over the same resamples" in groups and "below -0.0200" in groups
    assert "macro-F1 over classes with >= 5 holdout images" in groups
    assert "95% CI [" in groups and "(500 images, 500 products)" in groups
    # every figure's interval and support are in the record; the explanation names the one closest to a veto
    f1 = next(t for t in decision.group_tests if t.figure == "macro_f1")
    assert "11 classes averaged, 2 below the minimum support; 500 images, 500 products" in f1.describe(0.95)
    recorded = decision.to_dict()["group_tests"]
    assert {(t["group"], t["figure"]) for t in recorded} == {("masterCategory", "top1"), ("masterCategory", "macro_f1")}
    assert all(t["low"] is not None and t["images"] == 500 and t["products"] == 500 for t in recorded)


def test_figures_without_per_product_data_are_reported_but_do_not_veto() -> None:
    # a multi-label group's macro-F1 is in the metrics only: its point estimate is far below the margin
    decision = decide(
        {"groups": {"garment": {"top1": 0.6}, "style": {"macro_f1": 0.7, "n": 300}}},
        {"groups": {"garment": {"top1": 0.8}, "style": {"macro_f1": 0.4, "n": 300}}},
        _scores(0.6, seed=1),
        _scores(0.8, seed=2),
        GateConfig(bootstrap_samples=500),
    )
    assert decision.promote, decision.reasons
    style = next(t for t in decision.group_tests if t.group == "style")
    assert not style.tested and style.difference == pytest.approx(-0.3)
    assert "reported, not vetoing: " in decision.summary()
    assert "style/macro_f1 -0.3000 not tested: no per-product scores to resample" in decision.summary()


def test_a_rare_class_group_without_enough_support_is_reported_and_not_tested() -> None:
    true = np.array([0, 0, 1, 1, 2, 2, 3])
    decision = decide(
        {"groups": {}},
        {"groups": {}},
        scores_from_rows(_rows("kids", true, true)),
        scores_from_rows(_rows("kids", true, np.zeros_like(true))),
        GateConfig(bootstrap_samples=200),
    )
    f1 = next(t for t in decision.group_tests if t.figure == "macro_f1")
    assert not f1.tested and f1.excluded_classes == 4
    assert "no class has 5 or more labelled holdout images" in f1.note


def test_failures_name_their_veto_reason() -> None:
    assert decide(None, None, None, None, GateConfig(), failure="loss is nan").vetoes == ["training_failed"]
    evaluation = decide(None, None, None, None, GateConfig(), failure="evaluation failed: OSError: disk")
    assert evaluation.vetoes == ["evaluation_failed"]
    assert decide({"groups": {}}, None, None, None, GateConfig()).vetoes == ["evaluation_missing"]
    worse = decide(
        _metrics({"garment": 0.8}), _metrics({"garment": 0.5}), _scores(0.8), _scores(0.5, seed=2), GateConfig()
    )
    assert worse.vetoes == ["not_significant", "group_regression"]  # both groups dropped 0.3


def test_the_streak_counts_consecutive_vetoed_winners_and_a_promotion_or_a_plain_loss_ends_it() -> None:
    win = {"low": 0.01, "high": 0.03}
    vetoed = {"promote": False, "bootstrap": win, "regressions": ["masterCategory/macro_f1: -0.0350 (margin 0.0200)"]}
    promoted = {"promote": True, "bootstrap": win, "regressions": []}
    lost = {"promote": False, "bootstrap": {"low": -0.01, "high": 0.02}, "regressions": []}
    failed = {"promote": False, "bootstrap": None, "reasons": ["challenger failed: loss is nan"]}
    assert vetoed_win_streak([vetoed, vetoed, failed, vetoed]) == 3  # a failed run leaves the streak as it is
    assert vetoed_win_streak([vetoed, vetoed, promoted]) == 0
    assert vetoed_win_streak([vetoed, lost, vetoed]) == 1
    assert vetoed_win_streak([vetoed], start=2) == 3
    # records written before the veto reasons were recorded are classified from their reasons and regressions
    assert vetoes_of(vetoed) == ["group_regression"]
    assert vetoes_of(failed) == ["training_failed"]
    assert vetoes_of({**lost, "regressions": ["detection/map: -0.0500 (margin 0.0200)"]}) == [
        "not_significant",
        "detection_regression",
    ]
