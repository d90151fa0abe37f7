"""Fitting the fusion of photos and title on labelled probabilities: weights, fused thresholds, conflict cut-offs."""

from __future__ import annotations

import numpy as np
import pytest

from learner.evaluation.fusion import fit_conflict_cutoffs, fit_fusion, fit_weights, nll, value_word_swaps
from learner.inference.decoding import ValueDecoder
from learner.inference.product_decision import decide_products
from learner.model.taxonomy import Taxonomy, parse_taxonomy

TAXONOMY = """
schema_version: 1
name: shop
groups:
  colour:
    kind: single
    values: [Black, Blue, Red, White]
  kind:
    kind: single
    values: [Shirt, Shoe, Bag]
"""
N = 3000


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return parse_taxonomy(TAXONOMY)


def readings(labels: np.ndarray, classes: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Calibrated-looking probabilities that favour the label by `strength` (0: pure noise)."""
    z = strength * np.eye(classes)[labels] + rng.normal(0.0, 1.0, (len(labels), classes))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


Probs = dict[str, np.ndarray]


def signals(strengths: dict[str, tuple[float, float]], seed: int = 0) -> tuple[Probs, Probs, Probs]:
    rng = np.random.default_rng(seed)
    sizes = {"colour": 4, "kind": 3}
    labels = {g: rng.integers(0, c, N) for g, c in sizes.items()}
    image = {g: readings(labels[g], sizes[g], strengths[g][0], rng) for g in sizes}
    title = {g: readings(labels[g], sizes[g], strengths[g][1], rng) for g in sizes}
    return image, title, labels


def test_fused_probabilities_beat_either_signal_alone(taxonomy: Taxonomy) -> None:
    image, title, labels = signals({"colour": (1.5, 2.5), "kind": (2.5, 1.5)})
    fusion = fit_fusion(image, title, labels, taxonomy)
    d = decide_products(image, title, ValueDecoder(taxonomy), fusion)
    for g in ("colour", "kind"):
        accuracy = {
            "photos": (image[g].argmax(1) == labels[g]).mean(),
            "title": (title[g].argmax(1) == labels[g]).mean(),
            "fused": (d.chosen[g] == labels[g]).mean(),
        }
        assert accuracy["fused"] > max(accuracy["photos"], accuracy["title"]) + 0.02, (g, accuracy)
        assert nll(d.probs[g], labels[g]) < min(nll(image[g], labels[g]), nll(title[g], labels[g]))
        assert fusion.groups[g].image_weight > 0 and fusion.groups[g].title_weight > 0
    assert fusion.report["groups"]["colour"]["accuracy"]["fused"] == pytest.approx(
        (d.chosen["colour"] == labels["colour"]).mean()
    )


def test_a_title_that_carries_nothing_gets_no_weight() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, N)
    image, title = readings(labels, 4, 2.0, rng), readings(labels, 4, 0.0, rng)
    a, b, bias = fit_weights(image, title, labels)
    assert abs(b) < 0.1 and a > 0.5 and bias == ()


def test_fused_thresholds_keep_the_target_precision_and_fill_more_than_the_photos_alone(taxonomy: Taxonomy) -> None:
    image, title, labels = signals({"colour": (2.0, 3.0), "kind": (3.0, 3.0)})
    fusion = fit_fusion(image, title, labels, taxonomy, default_target=0.97)
    d = decide_products(image, title, ValueDecoder(taxonomy), fusion)
    for g in ("colour", "kind"):
        filled = d.auto_filled[g]
        assert (d.chosen[g][filled] == labels[g][filled]).mean() >= 0.97
        photos_alone = fusion.report["groups"][g]["accuracy"]["photos"]
        assert filled.mean() > 0.5 and filled.mean() > (image[g].max(1) >= 0.97).mean(), (g, photos_alone)


def test_conflict_cut_offs_flag_few_clean_products_and_most_titles_that_name_another_value() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, N)
    image, title = readings(labels, 4, 4.0, rng), readings(labels, 4, 6.0, rng)
    alpha, beta, figures = fit_conflict_cutoffs(image, title, labels, max_flagged=0.015)
    assert 0.0 <= alpha <= 1.0 and beta < 0.5
    assert figures["clean_flagged_share"] <= 0.015
    assert figures["swaps"] == "simulated" and figures["swapped_flagged_share"] >= 0.9

    other = (labels + rng.integers(1, 4, N)) % 4  # each title now names another value
    swapped = readings(other, 4, 6.0, rng)
    said = swapped.argmax(1)
    flagged = (swapped[np.arange(N), said] >= alpha) & (image[np.arange(N), said] <= beta)
    assert flagged.mean() >= 0.9


def test_a_bundle_keeps_its_fusion_and_calibration_fits_one_only_with_a_title_model(untrained_bundle_path) -> None:
    from learner.evaluation.evaluate import GroupPredictions, Predictions
    from learner.evaluation.fusion import fit_bundle_fusion
    from learner.model.bundle import load_bundle
    from learner.model.manifest import BundleInfo

    bundle = load_bundle(untrained_bundle_path)
    single = [g for g in bundle.taxonomy.classifier_groups if not g.multi_label]
    rng = np.random.default_rng(3)
    labels = {g.name: rng.integers(0, len(g.values), 400) for g in single}
    predictions = Predictions(
        {g.name: GroupPredictions(g, readings(labels[g.name], len(g.values), 2.0, rng), labels[g.name]) for g in single}
    )
    predictions.shift_scores = np.zeros(0)
    titles = [f"title {i}" for i in range(400)]
    assert fit_bundle_fusion(bundle, predictions, titles) is None  # no title model: titles are not read

    class Titles:
        def __init__(self) -> None:
            self.autofill_thresholds: dict[str, float] = {}

        def probabilities(self, given):  # type: ignore[no-untyped-def]
            # one reading per title given (fit_bundle_fusion reads them as written and with attribute words masked)
            return {g.name: readings(np.resize(labels[g.name], len(given)), len(g.values), 3.0, rng) for g in single}

    bundle.title_model = Titles()  # type: ignore[assignment]
    fusion = fit_bundle_fusion(bundle, predictions, titles)
    assert fusion is not None and set(fusion.groups) == {g.name for g in single}
    bundle.title_model, bundle.fusion = None, fusion  # the stand-in has no tensors to save
    path = bundle.save(untrained_bundle_path.parent / "fused.safetensors")
    assert load_bundle(path).fusion == fusion and BundleInfo.read(path).fusion == fusion
    assert load_bundle(untrained_bundle_path).fusion is None


def test_a_titles_value_word_is_swapped_for_another_value_never_one_that_contains_it() -> None:
    colour = parse_taxonomy(TAXONOMY.replace("[Black, Blue, Red, White]", "[Blue, Navy Blue, Red]")).group("colour")
    titles = ["Puma Blue Tee", "Nike Navy Blue Shorts", "Plain Tee", None, "bluebird Red cap"]
    rows, swapped = value_word_swaps(titles, colour, np.array([0, 1, 0, 2, 2]), seed=0)
    assert list(rows) == [0, 1, 4]  # "Plain Tee" names no colour, row 3 has no title
    assert swapped[0] == "Puma Red Tee"  # not "Navy Blue": it contains Blue
    assert swapped[1] == "Nike Red Shorts" and swapped[2] in ("bluebird Blue cap", "bluebird Navy Blue cap")


def test_with_title_word_swaps_the_cut_offs_are_fitted_on_them_and_unnamed_groups_get_none(taxonomy: Taxonomy) -> None:
    image, title, labels = signals({"colour": (4.0, 6.0), "kind": (4.0, 6.0)})
    rng = np.random.default_rng(5)
    rows = np.arange(0, N, 3)
    other = (labels["colour"][rows] + rng.integers(1, 4, len(rows))) % 4
    swaps = {"colour": (rows, readings(other, 4, 3.0, rng))}  # a swapped word reads less surely than a real title
    fusion = fit_fusion(image, title, labels, taxonomy, swaps=swaps)
    colour = fusion.report["groups"]["colour"]["conflict"]
    assert colour["swaps"] == "title words" and colour["swapped_flagged_share"] >= 0.8
    assert colour["clean_flagged_share"] <= 0.015
    assert fusion.groups["kind"].conflict_title > 1.0  # no title names a kind: never a conflict there


def test_titles_that_name_none_of_a_groups_values_get_weights_and_a_threshold_of_their_own(taxonomy: Taxonomy) -> None:
    # the same products read twice: titles that name the colour (strong) and titles that do not (weak readings)
    image, strong, labels = signals({"colour": (1.5, 4.0), "kind": (2.5, 1.5)}, seed=1)
    _, weak, _ = signals({"colour": (1.5, 0.3), "kind": (2.5, 0.3)}, seed=2)
    both = {g: np.concatenate([image[g], image[g]]) for g in image}
    title = {g: np.concatenate([strong[g], weak[g]]) for g in image}
    y = {g: np.concatenate([labels[g], labels[g]]) for g in labels}
    named = {g: np.r_[np.ones(N, bool), np.zeros(N, bool)] for g in image}
    fusion = fit_fusion(both, title, y, taxonomy, title_named=named)
    colour = fusion.groups["colour"]
    assert colour.unnamed is not None
    assert colour.unnamed.title_weight < colour.title_weight / 2  # a weak title is trusted less
    assert colour.unnamed.threshold <= 1.0 or colour.unnamed.threshold == colour.threshold  # a fitted threshold
    assert fusion.report["groups"]["colour"]["unnamed"]["rows"] == N
    # without the split every title counts as naming: one weight pair for both kinds of title
    assert fit_fusion(both, title, y, taxonomy).groups["colour"].unnamed is None
