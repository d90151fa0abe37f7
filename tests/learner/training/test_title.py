"""The title model learns what titles say, calibrates on validation titles, and travels in a bundle: the torch path
(load_bundle) and the torch-free serving path (BundleInfo) give identical probabilities, shrunk or not."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest

from learner.datasets.labelled import Label, Sample
from learner.evaluation.evaluate import GroupPredictions
from learner.evaluation.title_calibration import fit_title_calibration, targets_of, title_metrics
from learner.model.bundle import BundleError, load_bundle, shrink_bundle
from learner.model.manifest import BundleInfo, read_manifest
from learner.model.taxonomy import Taxonomy, load_taxonomy
from learner.model.title_model import TitleModel
from learner.training.errors import TrainingError
from learner.training.title import attach_title_model, build_vocab, train_title_model

ROOT = Path(__file__).resolve().parents[3]
CC0 = load_taxonomy(ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml")
BRANDS = ("acme", "zento", "lumo", "parva", "kestrel", "orbis", "tulio", "vesta")
GARMENTS = ("Hat", "Shoes", "Pants", "Shirt", "Dress")


def train(train_samples: list[Sample], val_samples: list[Sample]) -> TitleModel:
    """A small recipe: a few seconds on a CPU."""
    return train_title_model(train_samples, val_samples, CC0, seed=3, epochs=8, dim=16, batch_size=32)


def synthetic(n: int, seed: int, taxonomy: Taxonomy = CC0) -> list[Sample]:
    """Titles "<brand> [Kids] <garment> <model number>": the garment word names the garment, "Kids" the kids flag;
    one sample in ten has no kids label (masked out of that group's loss)."""
    rng = random.Random(seed)
    garment = taxonomy.group("garment")
    out = []
    for i in range(n):
        g, kids = rng.choice(GARMENTS), rng.random() < 0.4
        title = f"{rng.choice(BRANDS)} {'Kids ' if kids else ''}{g} {rng.randint(100, 999)}"
        labels: dict[str, Label] = {"garment": garment.index(g), "kids": None if i % 10 == 0 else int(kids)}
        out.append(Sample(f"s{seed}-{i}", Path("unused.jpg"), f"s{seed}-{i}", labels, title))
    return out


@pytest.fixture(scope="module")
def model():
    return train(synthetic(300, 1), synthetic(120, 2))


def test_it_learns_the_garment_and_kids_words_of_unseen_titles(model):
    figures = title_metrics(model, synthetic(100, 4), CC0, masked=False)
    assert figures["top1"]["garment"] >= 0.98
    assert figures["top1"]["kids"] >= 0.95
    assert figures["no_signal"] == 0.0
    assert set(model.metrics) == {"validation", "validation_masked"}


def test_masking_the_attribute_words_takes_the_garment_away(model):
    masked = title_metrics(model, synthetic(100, 4), CC0, masked=True)
    assert masked["top1"]["garment"] < 0.6  # the brand and model number do not say the garment


def test_training_is_deterministic_with_a_seed(model):
    again = train(synthetic(300, 1), synthetic(120, 2))
    np.testing.assert_array_equal(again.embedding, model.embedding)
    assert again.temperatures == model.temperatures


def test_calibration_fits_a_temperature_and_title_only_thresholds_on_the_validation_titles(model):
    calibration = fit_title_calibration(model, synthetic(200, 5), CC0)
    assert set(model.temperatures) == {"garment", "kids"} and all(t > 0 for t in model.temperatures.values())
    assert model.autofill_thresholds == {g: round(c.threshold, 6) for g, c in calibration.thresholds.items()}
    assert model.autofill_thresholds["garment"] <= 1.0  # an easy group reaches the target precision


def test_the_vocabulary_keeps_features_seen_at_least_twice_and_is_capped():
    vocab = build_vocab(["red hat", "red shoe", "blue coat"], min_count=2)
    assert "w:red" in vocab and "w:hat" not in vocab
    assert len(build_vocab(["red hat", "red shoe", "red hats"], min_count=1, max_features=5)) == 5


def test_titles_missing_from_a_split_are_refused():
    untitled = [Sample("a", Path("a.jpg"), "a", {"garment": 0, "kids": 0})]
    with pytest.raises(TrainingError, match="no titles"):
        train_title_model(synthetic(20, 1), untitled, CC0)


def test_a_bundle_carries_the_title_model_to_torch_and_to_the_torch_free_path_alike(
    model, untrained_bundle_path, tmp_path
):
    bundle = load_bundle(untrained_bundle_path)
    assert bundle.title_model is None and BundleInfo.read(untrained_bundle_path).title_model is None
    bundle.title_model = model
    path = bundle.save(tmp_path / "titled.safetensors")
    titles = ["acme Kids Hat 123", "zento Pants", "", None, "nothing known"]
    expected = model.probabilities(titles)
    small = shrink_bundle(path, tmp_path / "small.safetensors").path
    assert read_manifest(small)["title_model"]["tensor_sha256"] != read_manifest(path)["title_model"]["tensor_sha256"]
    for p in (path, small):
        by_torch = load_bundle(p).title_model
        served = BundleInfo.read(p).title_model
        assert by_torch is not None and served is not None
        assert served.temperatures == model.temperatures
        assert served.autofill_thresholds == model.autofill_thresholds
        for g, probs in by_torch.probabilities(titles).items():
            np.testing.assert_array_equal(served.probabilities(titles)[g], probs)
            np.testing.assert_allclose(probs, expected[g], atol=0 if p == path else 2e-3)
            assert np.isnan(probs[2:]).all() and not np.isnan(probs[:2]).any()


def test_a_corrupt_title_tensor_is_refused_by_the_torch_free_reader(model, untrained_bundle_path, tmp_path):
    bundle = load_bundle(untrained_bundle_path)
    bundle.title_model = model
    path = bundle.save(tmp_path / "titled.safetensors")
    data = bytearray(path.read_bytes())
    vocab_bytes = "\n".join(sorted(model.vocab, key=model.vocab.__getitem__)).encode()
    at = bytes(data).index(vocab_bytes[:40])
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="title model"):
        BundleInfo.read(path)
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(path)


def test_a_warm_start_keeps_the_champions_vocabulary_and_starts_from_its_weights(model):
    untouched = train_title_model(synthetic(60, 6), synthetic(60, 7), CC0, epochs=0, init=model)
    assert untouched.vocab == model.vocab
    np.testing.assert_array_equal(untouched.embedding, model.embedding)
    tuned = train_title_model(synthetic(60, 6), synthetic(60, 7), CC0, epochs=2, lr=0.01, init=model)
    assert tuned.config["warm_start"] and tuned.vocab == model.vocab
    assert title_metrics(tuned, synthetic(100, 4), CC0, masked=False)["top1"]["garment"] >= 0.95


def test_a_fine_tune_without_titles_keeps_the_champions_title_model_and_fusion(model, untrained_bundle_path):
    champion, challenger = load_bundle(untrained_bundle_path), load_bundle(untrained_bundle_path)
    champion.title_model = model
    untitled = [dataclasses.replace(s, title=None) for s in synthetic(20, 8)]
    said = attach_title_model(challenger, untitled, untitled, {}, seed=0, say=print, fallback=champion)
    assert challenger.title_model is model and challenger.fusion is champion.fusion
    assert "kept" in said
    fresh = load_bundle(untrained_bundle_path)
    assert (
        attach_title_model(fresh, untitled, untitled, {}, seed=0, say=print) == "no titles in the data: no title model"
    )
    assert fresh.title_model is None


def test_a_trained_bundle_gets_a_title_model_and_a_fusion_fitted_on_the_validation_titles(untrained_bundle_path):
    bundle = load_bundle(untrained_bundle_path)
    val = synthetic(200, 9)
    rng = np.random.default_rng(0)
    predictions = {  # photos that know the garment a little
        g.name: GroupPredictions(g, rng.dirichlet(np.ones(len(g.values)), len(val)), targets_of(val, g))
        for g in CC0.classifier_groups
        if not g.multi_label
    }
    said = attach_title_model(bundle, synthetic(300, 1), val, predictions, seed=0, say=print)
    assert said.startswith("title model trained on 300 titles")
    assert bundle.title_model is not None and bundle.fusion is not None
    assert set(bundle.fusion.groups) <= {"garment", "kids"} and bundle.fusion.groups


def era(n: int, seed: int, kids_brands: frozenset[str]) -> list[Sample]:
    """Titles "<brand> <garment> <number>" without the Kids word, labelled kids when the brand is one of
    `kids_brands`: what a brand means (as a season does) can differ between two eras of a catalog."""
    rng = random.Random(seed)
    garment = CC0.group("garment")
    out = []
    for i in range(n):
        brand, g = rng.choice(BRANDS), rng.choice(GARMENTS)
        labels: dict[str, Label] = {"garment": garment.index(g), "kids": int(brand in kids_brands)}
        out.append(Sample(f"e{seed}-{i}", Path("unused.jpg"), f"e{seed}-{i}", labels, f"{brand} {g} {i % 50}"))
    return out


NOW, OLDER = frozenset(BRANDS[:4]), frozenset(BRANDS[4:])  # which brands are kids' brands, now and in an older era


def kids_right(weight: float) -> float:
    """Top-1 of kids on current-era titles of a model trained on 150 of them and 450 older-era ones at `weight`."""
    current, older = era(150, 11, NOW), era(450, 12, OLDER)
    model = train_title_model(
        [*current, *older], era(120, 13, NOW), CC0, seed=3, epochs=8, dim=16, batch_size=32,
        weights=[1.0] * len(current) + [weight] * len(older),
    )  # fmt: skip
    return title_metrics(model, era(200, 14, NOW), CC0, masked=False)["top1"]["kids"]


def test_titles_of_another_era_weigh_less_when_given_a_lighter_weight():
    assert kids_right(1.0) < 0.2  # three times as many older titles: the older meaning of the brands wins (0.05)
    assert kids_right(0.1) > 0.8  # at a tenth of their weight, the current one does (0.895)


def test_a_weight_of_zero_trains_the_model_that_leaves_those_titles_out():
    current, older = synthetic(200, 1), era(100, 12, OLDER)
    without = train_title_model(current, synthetic(80, 2), CC0, seed=3, epochs=3, dim=8)
    zero = train_title_model(
        [*current, *older], synthetic(80, 2), CC0, seed=3, epochs=3, dim=8, weights=[1.0] * 200 + [0.0] * 100
    )
    assert zero.vocab == without.vocab
    np.testing.assert_array_equal(zero.embedding, without.embedding)
    assert zero.config["weighted"] == {"full": 200, "lighter": 0, "lighter_weight_sum": 0.0}


@pytest.mark.parametrize("weights", [[1.0] * 19, [1.0] * 19 + [-0.5]])
def test_weights_that_do_not_fit_the_samples_are_refused(weights):
    with pytest.raises(TrainingError, match="title weights for 20 samples"):
        train_title_model(synthetic(20, 1), synthetic(20, 2), CC0, weights=weights)


def test_a_trained_bundles_title_model_weighs_its_samples_as_given(untrained_bundle_path):
    bundle = load_bundle(untrained_bundle_path)
    serving, light, val = synthetic(200, 1), era(300, 12, OLDER), synthetic(120, 9)
    rng = np.random.default_rng(0)
    predictions = {
        g.name: GroupPredictions(g, rng.dirichlet(np.ones(len(g.values)), len(val)), targets_of(val, g))
        for g in CC0.classifier_groups
        if not g.multi_label
    }
    weights = [1.0] * len(serving) + [0.1] * len(light)
    said = attach_title_model(bundle, [*serving, *light], val, predictions, seed=0, say=print, weights=weights)
    assert said.startswith("title model trained on 500 titles")
    assert bundle.title_model is not None
    assert bundle.title_model.config["weighted"]["lighter"] == 300
    assert bundle.title_model.config["weighted"]["lighter_weight_sum"] == pytest.approx(30.0, rel=1e-5)
