"""A flagged image becomes one Label Studio task: the set's labels pre-annotated, a note naming each flagged group."""

from __future__ import annotations

from pathlib import Path

import pytest

from learner.datasets.labelled import Sample
from learner.evaluation.label_issues import LabelIssue
from learner.model.taxonomy import load_taxonomy
from learner.review.label_issue_tasks import LABEL_ISSUE_KEY, LABELS_VERSION, issue_note, label_issue_tasks
from learner.review.tasks import DESCRIPTION_NAME, IMAGE_NAME, parse_annotation

ROOT = Path(__file__).resolve().parents[3]
TAXONOMY = load_taxonomy(ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml")
GARMENT = TAXONOMY.group("garment").values


def sample(sid: str, garment: str, kids: int = 0, title: str | None = None) -> Sample:
    return Sample(sid, Path(f"/photos/{sid}.jpg"), sid, {"garment": GARMENT.index(garment), "kids": kids}, title)


def issue(sid: str, group: str, given: str, suggested: str, quality: float) -> LabelIssue:
    return LabelIssue(sid, group, given, suggested, quality, 0.9, quality, "train", f"/photos/{sid}.jpg")


def test_two_flagged_groups_of_one_image_make_one_task_with_both_in_its_note() -> None:
    samples = [sample("a", "Hat", kids=1, title="Kids sun hat"), sample("b", "Shoes")]
    issues = [issue("a", "garment", "Hat", "Shoes", 0.05), issue("b", "garment", "Shoes", "Hat", 0.1)]
    issues.append(issue("a", "kids", "True", "False", 0.2))
    tasks = label_issue_tasks(TAXONOMY, samples, issues, lambda s: f"/img/{s.sample_id}", "cc0")
    assert [t["data"]["product_id"] for t in tasks] == ["a", "b"]
    first = tasks[0]
    assert first["data"][IMAGE_NAME] == "/img/a" and first["data"]["title"] == "Kids sun hat"
    assert first["data"][LABEL_ISSUE_KEY] == "cc0:a"
    note = first["data"][DESCRIPTION_NAME]
    assert "garment is Hat, the images suggest Shoes" in note and "kids is True" in note
    (prediction,) = first["predictions"]
    assert prediction["model_version"] == LABELS_VERSION and prediction["score"] == pytest.approx(0.05)
    # the pre-annotation is the set's labels, read back as an annotation would be
    parsed = parse_annotation(TAXONOMY, prediction["result"])
    values = {p.attribute: p.value for p in parsed if p.outcome == "applied"}
    assert values == {"garment": "Hat", "kids": "True"}


def test_the_note_of_one_issue_is_one_sentence() -> None:
    assert issue_note([issue("a", "garment", "Hat", "Shoes", 0.1)]) == (
        "Possibly wrong label: garment is Hat, the images suggest Shoes (0.90)."
    )


def test_an_issue_naming_a_sample_the_set_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="does not have"):
        label_issue_tasks(TAXONOMY, [sample("a", "Hat")], [issue("zz", "garment", "Hat", "Shoes", 0.1)], str, "cc0")
