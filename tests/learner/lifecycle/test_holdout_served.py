"""The holdout judges what a bundle serves: for one that reads titles, its photos and the product's title decided
together (learner/lifecycle/holdout.py `evaluate_on_holdout`), so the gate sees a retrained title model and fusion,
not only the image model beside them. Real CC0 photos; the image model is the untrained test bundle (its heads
guess), the title models are trained here on titles alone."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from learner.datasets.labelled import Label, Sample, load_labelled_set
from learner.evaluation.gate import GateConfig, decide
from learner.lifecycle.holdout import evaluate_on_holdout
from learner.model.bundle import ModelBundle, load_bundle
from learner.model.fusion import Fusion, GroupFusion
from learner.model.taxonomy import Taxonomy
from learner.model.title_model import TitleModel
from learner.training.title import train_title_model

ROOT = Path(__file__).resolve().parents[3]
CC0 = ROOT / "deploy" / "demo" / "clothing-cc0"
BRANDS = ("acme", "zento", "lumo", "parva", "kestrel")


def title_of(garment: str, rng: random.Random) -> str:
    return f"{rng.choice(BRANDS)} {garment} {rng.randint(10, 99)}"


def title_model(taxonomy: Taxonomy, shuffled: bool) -> TitleModel:
    """A title model of the garment word (`shuffled`: trained on titles whose garment word is a random one)."""
    rng = random.Random(1)
    values = taxonomy.group("garment").values
    samples = []
    for i in range(1000):
        label = rng.randrange(len(values))
        said = rng.randrange(len(values)) if shuffled else label
        labels: dict[str, Label] = {"garment": label, "kids": rng.randrange(2)}
        samples.append(Sample(f"t{i}", Path("none.jpg"), f"t{i}", labels, title_of(values[said], rng)))
    return train_title_model(samples[:800], samples[800:], taxonomy, epochs=20, dim=16)


@pytest.fixture(scope="module")
def holdout(untrained_bundle_path: Path) -> list[Sample]:
    """Every fourth CC0 photo, titled with its own garment."""
    taxonomy = load_bundle(untrained_bundle_path).taxonomy
    rng = random.Random(2)
    samples = load_labelled_set(CC0, taxonomy).samples[::4]
    garments = taxonomy.group("garment").values
    return [dataclasses.replace(s, title=title_of(garments[cast(int, s.labels["garment"])], rng)) for s in samples]


def reading_titles(path: Path, shuffled: bool) -> ModelBundle:
    bundle = load_bundle(path)
    bundle.title_model = title_model(bundle.taxonomy, shuffled)
    bundle.fusion = Fusion({"garment": GroupFusion(image_weight=0.1, title_weight=1.0)})
    return bundle


def garment_top1(scores: object) -> float:
    correct, known = scores.correct, scores.known  # type: ignore[attr-defined]
    column = list(scores.groups).index("garment")  # type: ignore[attr-defined]
    return float(correct[:, column].sum() / known[:, column].sum())


def test_a_challenger_whose_title_model_reads_better_wins_with_the_same_image_model(
    untrained_bundle_path: Path, holdout: list[Sample]
) -> None:
    champion = reading_titles(untrained_bundle_path, shuffled=True)
    challenger = reading_titles(untrained_bundle_path, shuffled=False)

    ours = evaluate_on_holdout(champion, holdout, "cpu")
    theirs = evaluate_on_holdout(challenger, holdout, "cpu")

    assert ours.titles_read == theirs.titles_read == len(holdout)
    assert theirs.served_top1 is not None and theirs.served_top1["garment"] >= 0.8
    assert garment_top1(theirs.scores) >= 0.8 > garment_top1(ours.scores) + 0.3
    assert ours.metrics["groups"] == theirs.metrics["groups"]  # the photos alone: the same image model
    assert theirs.summary()["served"]["titles_read"] == len(holdout)
    gate = GateConfig(bootstrap_samples=500)
    assert decide(ours.metrics, theirs.metrics, ours.scores, theirs.scores, gate).promote
    assert not decide(theirs.metrics, ours.metrics, theirs.scores, ours.scores, gate).promote


def test_a_bundle_that_reads_no_titles_is_judged_on_its_photos_alone(
    untrained_bundle_path: Path, holdout: list[Sample]
) -> None:
    photos_only = load_bundle(untrained_bundle_path)
    assert photos_only.title_model is None or photos_only.fusion is None

    evaluation = evaluate_on_holdout(photos_only, holdout, "cpu")

    assert evaluation.titles_read == 0 and evaluation.served_top1 is None and "served" not in evaluation.summary()
    photo_top1 = evaluation.metrics["groups"]["garment"]["top1"]
    assert np.isclose(garment_top1(evaluation.scores), photo_top1)  # the raw photo arg-max, as before


def test_titles_absent_from_the_holdout_leave_the_photos_judged_alone(
    untrained_bundle_path: Path, holdout: list[Sample]
) -> None:
    untitled = [dataclasses.replace(s, title=None) for s in holdout]

    evaluation = evaluate_on_holdout(reading_titles(untrained_bundle_path, shuffled=False), untitled, "cpu")

    assert evaluation.titles_read == 0 and evaluation.served_top1 is None
    assert np.isclose(garment_top1(evaluation.scores), evaluation.metrics["groups"]["garment"]["top1"])
