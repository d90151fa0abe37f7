"""The title model's calibration: `models calibrate` (learner/evaluation/recalibrate.py) refits its temperatures and
title-only thresholds on the split's titles, by the same rule as the photos'."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from learner.datasets.labelled import load_labelled_set
from learner.evaluation.recalibrate import recalibrate
from learner.evaluation.title_calibration import title_metrics, title_predictions
from learner.model.bundle import load_bundle, store_title_model
from learner.model.taxonomy import load_taxonomy
from learner.model.title_model import TitleModel
from tests.learner.training.tiny_cc0 import CC0_TAXONOMY, copy_tiny_set

TAXONOMY = dataclasses.replace(load_taxonomy(CC0_TAXONOMY), title_column="name")


def with_titles(root: Path) -> Path:
    """The tiny CC0 set (15 photos) with a `name` column: brand, garment word (wrong in one title in three), number."""
    root.mkdir()
    data = copy_tiny_set(root)
    rows = list(csv.DictReader((data / "labels.csv").open(newline="")))
    with (data / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0].keys(), "name"])
        writer.writeheader()
        for i, r in enumerate(rows):  # one title in three names another garment
            word = r["label"] if i % 3 else next(v for v in ("Hat", "Shoes") if v != r["label"])
            writer.writerow({**r, "name": f"Acme {word} {i}"})
    return data


def garment_model(values: tuple[str, ...]) -> TitleModel:
    """A hand-made title model: each garment word's feature points at its value, overconfident (logits of 20)."""
    vocab = {f"w:{v.lower()}": i for i, v in enumerate(values)}
    embedding = np.eye(len(values), dtype=np.float32)
    heads = {
        "garment": (20 * np.eye(len(values)), np.zeros(len(values))),
        "kids": (np.zeros((2, len(values))), np.zeros(2)),
    }
    return TitleModel(vocab, embedding, heads)


def test_calibrate_refits_the_title_models_temperatures_and_thresholds(untrained_bundle_path, tmp_path):
    data = with_titles(tmp_path / "data")
    model = garment_model(TAXONOMY.group("garment").values)
    path = store_title_model(untrained_bundle_path, tmp_path / "titled.safetensors", model, TAXONOMY)
    done = recalibrate(path, data, "all", device="cpu")
    assert done.title_calibration is not None
    refitted = load_bundle(path).title_model
    assert refitted is not None and set(refitted.temperatures) == {"garment", "kids"}
    assert refitted.temperatures["garment"] > 1  # logits of 20 are overconfident on titles that are not all right
    assert refitted.autofill_thresholds == {
        g: round(c.threshold, 6) for g, c in done.title_calibration.thresholds.items()
    }
    assert done.title_calibration.fitted_on["titles"] == 15


def test_titles_without_a_signal_are_left_out_of_the_fit_and_count_as_errors(tmp_path):
    data = with_titles(tmp_path / "data")
    labelled = load_labelled_set(data, TAXONOMY)
    samples = labelled.samples
    model = garment_model(labelled.taxonomy.group("garment").values)
    unknown = [dataclasses.replace(s, title="zzz") for s in samples[:5]]
    predictions = title_predictions(model, [*unknown, *samples[5:]], labelled.taxonomy)
    assert len(predictions["garment"].targets) == 10
    figures = title_metrics(model, [*unknown, *samples[5:]], labelled.taxonomy, masked=False)
    assert figures["no_signal"] == pytest.approx(5 / 15)
    assert figures["top1"]["garment"] < 10 / 15  # the unknown titles and the wrong garment words
