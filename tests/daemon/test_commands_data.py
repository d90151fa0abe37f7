"""`shelfsight data issues` lists the likely wrong labels of a labelled set and can send them to Label Studio."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connectors.labelstudio import LabelStudioClient
from daemon.cli import app
from learner.model.taxonomy import load_taxonomy
from learner.review.label_issue_tasks import LABEL_ISSUE_KEY
from learner.review.tasks import parse_annotation

ROOT = Path(__file__).resolve().parents[2]
CC0 = ROOT / "deploy" / "demo" / "clothing-cc0"
KEPT = ("Dress", "Hat", "Pants", "Shoes")  # four garments photos tell apart
FLIPS = {"Shoes": "Hat", "Hat": "Shoes", "Pants": "Dress"}  # the first photo of each gets this wrong label


def flipped_set(root: Path) -> tuple[Path, dict[str, tuple[str, str]]]:
    """60 CC0 photos of four garments (the images linked, not copied); three labels deliberately wrong.
    Returns the set and, per wrong row, (given, true)."""
    with (CC0 / "labels.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] in KEPT]
    wrong: dict[str, tuple[str, str]] = {}
    for row in rows:
        true = row["label"]
        if true in FLIPS and true not in {t for _, t in wrong.values()}:
            row["label"] = FLIPS[true]
            wrong[row["image"]] = (row["label"], true)
    root.mkdir(parents=True)
    (root / "images").symlink_to(CC0 / "images", target_is_directory=True)
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root, wrong


def test_wrong_labels_are_listed_with_the_value_the_photos_suggest(
    untrained_bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data, wrong = flipped_set(tmp_path / "set")
    out = tmp_path / "issues"
    args = ["data", "issues", str(data), "--model", str(untrained_bundle_path), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--groups", "garment"])
    assert result.exit_code == 0, result.output
    assert "garment:" in result.output and "labels flagged" in result.output
    with (out / "label_issues.csv").open(newline="") as f:
        listed = {r["sample_id"]: r for r in csv.DictReader(f)}
    found = [image for image in wrong if image in listed]
    assert len(found) >= 2, (wrong, listed)
    for image in found:
        assert listed[image]["given"] == wrong[image][0] != listed[image]["suggested"]
    assert any(listed[image]["suggested"] == wrong[image][1] for image in found)  # usually what it truly shows
    assert len(listed) <= 10  # the other 57 labels are right: few of them may be doubted, not most
    summary = json.loads((out / "label_issues.json").read_text())
    assert summary["groups"]["garment"]["labelled"] == 60 and summary["groups"]["garment"]["flagged"] == len(listed)
    assert (out / "label_issues.png").stat().st_size > 10_000
    again = CliRunner().invoke(app, [*args, "--groups", "garment", "--folds", "3"])
    assert again.exit_code == 0 and "(cached)" in again.output


def test_an_unknown_group_or_feature_source_is_a_clear_error(untrained_bundle_path: Path, tmp_path: Path) -> None:
    data, _ = flipped_set(tmp_path / "set")
    args = ["data", "issues", str(data), "--model", str(untrained_bundle_path), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*args, "--features", "clip"])
    assert result.exit_code == 2 and "--features must be one of bundle, imagenet" in result.output
    result = CliRunner().invoke(app, [*args, "--groups", "colour"])
    assert result.exit_code == 2 and "no single-choice group named ['colour']" in result.output


def test_flagged_photos_go_to_label_studio_once_with_the_sets_labels_preannotated(
    untrained_bundle_path: Path, label_studio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHELFSIGHT_REVIEW__LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("SHELFSIGHT_REVIEW__LABEL_STUDIO_TOKEN", label_studio.token)
    monkeypatch.setenv("SHELFSIGHT_REVIEW__LOCAL_FILES_ROOT", str(label_studio.document_root))
    title = f"label issues {uuid.uuid4().hex[:8]}"
    args = ["data", "issues", str(CC0), "--model", str(untrained_bundle_path), "--out", str(tmp_path / "o")]
    args += ["--groups", "garment", "--label-studio", "--send-limit", "3", "--project", title, "--sheet", "0"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "Label Studio: 3 tasks sent, 0 already there" in first.output
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and "Label Studio: 0 tasks sent, 3 already there" in second.output
    client = LabelStudioClient(label_studio.url, label_studio.token)
    project = json.loads((tmp_path / "o" / "label_issues.json").read_text())["label_studio"]["project"]
    with (CC0 / "labels.csv").open(newline="") as f:
        labels = {r["image"]: r["label"] for r in csv.DictReader(f)}
    with (tmp_path / "o" / "label_issues.csv").open(newline="") as f:
        first_flagged = next(csv.DictReader(f))["sample_id"]
    task_id = client.find_task(project, LABEL_ISSUE_KEY, f"clothing-cc0:{first_flagged}")
    assert task_id is not None
    task = client.get_task(task_id)
    assert task["data"]["image"].startswith("/data/local-files/?d=images/")
    assert "the images suggest" in task["data"]["description"]
    (prediction,) = task["predictions"]
    parsed = {
        p.attribute: p.value
        for p in parse_annotation(load_taxonomy(ROOT / "learner/taxonomies/clothing-cc0.yaml"), prediction["result"])
    }
    assert parsed["garment"] == labels[first_flagged]
