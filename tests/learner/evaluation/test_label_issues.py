"""Likely wrong labels are found by cleanlab on out-of-fold probabilities, with the value the features suggest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from learner.datasets.labelled import LabelledSet, Sample, SplitRule
from learner.evaluation.label_issue_sheet import write_contact_sheet
from learner.evaluation.label_issues import (
    LabelIssue,
    find_label_issues,
    out_of_fold_probabilities,
    read_issues_csv,
    write_issues_csv,
)
from learner.model.taxonomy import load_taxonomy

ROOT = Path(__file__).resolve().parents[3]
TAXONOMY = load_taxonomy(ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml")
GARMENTS = ("Dress", "Hat", "Shoes")


def clustered_set(n_per_class: int = 40, flipped: int = 6, seed: int = 0) -> tuple[LabelledSet, np.ndarray, set[str]]:
    """Three well separated clusters in 16-d, one per garment; `flipped` rows carry another garment's label."""
    rng = np.random.default_rng(seed)
    garment = TAXONOMY.group("garment")
    samples, rows = [], []
    flip_ids: set[str] = set()
    for c, name in enumerate(GARMENTS):
        centre = np.zeros(16)
        centre[c] = 10.0
        for i in range(n_per_class):
            sid = f"{name}-{i}"
            label = name
            if i < flipped // len(GARMENTS):
                label = GARMENTS[(c + 1) % len(GARMENTS)]
                flip_ids.add(sid)
            kids = garment.values.index(label)
            samples.append(Sample(sid, Path(f"/nowhere/{sid}.jpg"), sid, {"garment": kids, "kids": 0}))
            rows.append(centre + rng.normal(size=16))
    data = LabelledSet(Path("/nowhere/labels.csv"), TAXONOMY, samples, split_column="image")
    return data, np.asarray(rows, dtype=np.float32), flip_ids


def test_flipped_labels_are_flagged_with_the_true_value_as_suggestion() -> None:
    data, features, flipped = clustered_set()
    results = find_label_issues(data, features, SplitRule(), groups=["garment"], folds=5)
    found = results["garment"]
    flagged = {i.sample_id for i in found.issues}
    assert len(flipped & flagged) >= len(flipped) - 1  # confident learning is conservative: most, not always all
    assert len(flagged - flipped) <= 2  # clean rows of well separated clusters are (nearly) never flagged
    for issue in found.issues:
        if issue.sample_id in flipped:
            true = issue.sample_id.split("-")[0]
            assert issue.suggested == true and issue.given != true
            assert issue.label_quality < 0.5 < issue.suggested_probability
    assert found.labelled == len(data.samples) and found.oof_top1 > 0.9
    assert found.summary()["flagged"] == len(found.issues)


def test_issues_are_ranked_most_likely_wrong_first_and_carry_their_split() -> None:
    data, features, _ = clustered_set()
    rule = SplitRule()
    issues = find_label_issues(data, features, rule, groups=["garment"])["garment"].issues
    qualities = [i.label_quality for i in issues]
    assert qualities == sorted(qualities)
    assert all(i.split == rule.split_of(i.sample_id) for i in issues)


def test_a_group_with_a_single_value_or_an_unknown_name_is_not_judged() -> None:
    data, features, _ = clustered_set()
    results = find_label_issues(data, features, SplitRule(), groups=["kids"])  # every row says kids=False
    assert results["kids"].issues == [] and results["kids"].labelled == len(data.samples)
    with pytest.raises(ValueError, match="no single-choice group"):
        find_label_issues(data, features, SplitRule(), groups=["detectedObjects"])


def test_out_of_fold_probabilities_never_score_a_row_with_a_model_that_saw_it() -> None:
    # each row is a product of its own and a lone outlier of class 1 sits inside class 0's cluster: a model that
    # saw it could learn it; out of fold it is scored as class 0
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (30, 4)), rng.normal(8, 1, (30, 4)), np.zeros((1, 4))])
    y = np.array([0] * 30 + [1] * 30 + [1])
    probs = out_of_fold_probabilities(x, y, [str(i) for i in range(len(y))], folds=5)
    assert probs.shape == (61, 2) and np.allclose(probs.sum(axis=1), 1.0)
    assert probs[-1, 0] > 0.9


def test_the_csv_round_trips_and_the_contact_sheet_survives_an_unreadable_photo(tmp_path: Path) -> None:
    data, features, _ = clustered_set()
    results = find_label_issues(data, features, SplitRule(), groups=["garment"])
    csv_path = tmp_path / "issues.csv"
    assert write_issues_csv(csv_path, results) == len(results["garment"].issues)
    assert read_issues_csv(csv_path) == results["garment"].issues
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (60, 80), (200, 30, 30)).save(photo)
    shown = [
        LabelIssue("a", "garment", "Hat", "Shoes", 0.1, 0.8, 0.1, "train", str(photo)),
        LabelIssue("b", "garment", "Hat", "Dress", 0.2, 0.7, 0.2, "val", str(tmp_path / "missing.jpg")),
    ]
    sheet = write_contact_sheet(tmp_path / "sheet.png", shown, "test")
    with Image.open(sheet) as img:
        assert img.format == "PNG" and img.width > 100
