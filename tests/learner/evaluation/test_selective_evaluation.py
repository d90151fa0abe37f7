"""Evaluation that cannot mislead: coverage and precision at the auto-fill threshold, unknown labels counted as
errors and reported, foreign sets evaluated whole, charts for groups with many classes, and `models calibrate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from daemon.cli import app
from learner.datasets.labelled import IGNORE_INDEX, load_labelled_set
from learner.evaluation.evaluate import GroupPredictions, audit_labels, compute_metrics, single_label_metrics
from learner.evaluation.report import build_report, write_report
from learner.inference.decoding import ValueDecoder
from learner.model.bundle import read_manifest
from learner.model.taxonomy import AttributeGroup, load_taxonomy, parse_taxonomy

runner = CliRunner()
CC0 = Path(__file__).resolve().parents[3] / "deploy" / "demo" / "clothing-cc0"


def test_coverage_and_precision_at_the_threshold_on_a_constructed_case() -> None:
    # six labelled rows and two without a usable label; argmax confidences .95 .90 .80 .70 .60 .55
    probs = np.array(
        [[0.95, 0.05], [0.10, 0.90], [0.80, 0.20], [0.30, 0.70], [0.60, 0.40], [0.45, 0.55], [0.9, 0.1], [0.9, 0.1]]
    )
    targets = np.array([0, 1, 1, 1, 0, 0, IGNORE_INDEX, IGNORE_INDEX])

    m = single_label_metrics(probs, targets, ["a", "b"], autofill_threshold=0.75)

    # auto-filled: .95 right, .90 right, .80 wrong -> 3 of 6 rows, precision 2/3
    assert m["autofill"] == {
        "threshold": 0.75,
        "n": 6,
        "auto_filled": 3,
        "errors": 1,
        "coverage": 0.5,
        "precision": pytest.approx(2 / 3),
    }
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["all_rows_top1"] == pytest.approx(4 / 8)  # the two unusable labels are errors here
    curve = m["precision_coverage"]
    assert curve["coverage"][0] == pytest.approx(1 / 6, abs=1e-4) and curve["coverage"][-1] == 1.0
    assert curve["precision"][-1] == pytest.approx(4 / 6, abs=1e-4)
    # without a threshold every value is auto-filled: today's behaviour, coverage 1 at top-1 precision
    plain = single_label_metrics(probs, targets, ["a", "b"])["autofill"]
    assert plain["coverage"] == 1.0 and plain["precision"] == pytest.approx(4 / 6)


def test_decoder_metrics_use_calibrated_values_and_keep_the_raw_ece() -> None:
    taxonomy = parse_taxonomy("schema_version: 1\nname: t\ngroups:\n  g: {kind: single, values: [a, b]}\n")
    probs = np.array([[0.99, 0.01], [0.98, 0.02], [0.97, 0.03], [0.02, 0.98]])
    preds = {"g": GroupPredictions(taxonomy.group("g"), probs, np.array([0, 1, 0, 1]))}

    m = compute_metrics(preds, decoder=ValueDecoder(taxonomy, {"g": 3.0}, {"g": 0.8}))["groups"]["g"]

    assert m["ece_uncalibrated"] > m["ece"]
    # calibrated confidences .82 .79 .76 .79: only the first reaches 0.8 (all four would, uncalibrated)
    assert m["autofill"]["threshold"] == 0.8 and m["autofill"]["auto_filled"] == 1


def small_set(tmp_path: Path, rows: int = 12, edits: dict[int, str] | None = None) -> Path:
    """The first `rows` CC0 images with absolute image paths; `edits` replaces the label of some rows."""
    with (CC0 / "labels.csv").open() as f:
        reader = list(csv.DictReader(f))[:rows]
    out = tmp_path / "set" / "labels.csv"
    out.parent.mkdir()
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "label", "kids"])
        w.writeheader()
        for i, r in enumerate(reader):
            label = (edits or {}).get(i, r["label"])
            w.writerow({"image": str(CC0 / "images" / r["image"]) + ".jpg", "label": label, "kids": r["kids"]})
    return out


def test_unknown_labels_are_reported_not_dropped_silently(tmp_path) -> None:
    path = small_set(tmp_path, edits={0: "Cardigan", 1: "Cardigan", 2: "NA", 3: "", 4: "Poncho"})
    taxonomy = load_taxonomy(CC0.parents[2] / "learner" / "taxonomies" / "clothing-cc0.yaml")
    labelled = load_labelled_set(path, taxonomy)

    audit = audit_labels(labelled, labelled.samples)

    assert audit == {"garment": {"empty": 1, "na": 1, "unknown": {"Cardigan": 2, "Poncho": 1}}}


def test_evaluate_on_a_foreign_set_evaluates_all_of_it_says_so_and_lists_unknown_labels(
    tmp_path, untrained_bundle_path
) -> None:
    path = small_set(tmp_path, edits={0: "Cardigan", 1: "Cardigan", 2: "NA"})
    out = tmp_path / "report"

    result = runner.invoke(app, ["evaluate", str(untrained_bundle_path), "--data", str(path), "--out", str(out)])

    assert result.exit_code == 0, result.output
    assert "not the bundle's training set: evaluating all of it" in result.stdout
    assert "all (12 images)" in result.stdout
    assert "garment: 0 empty, 1 NA, 2 unknown: 'Cardigan' (2)" in result.stdout
    report = json.loads((out / "report.json").read_text())
    garment = report["groups"]["garment"]
    assert garment["n"] == 9 and garment["skipped"] == 3
    assert garment["all_rows_top1"] == pytest.approx(garment["top1"] * 9 / 12)
    assert report["label_audit"]["garment"]["unknown"] == {"Cardigan": 2}
    assert (out / "precision_coverage.png").stat().st_size > 0


def test_evaluate_cuts_a_foreign_set_only_when_asked_and_says_so(tmp_path, untrained_bundle_path) -> None:
    # the split key is the image path, which includes the checkout's location: enough rows that some always fall
    # in the test split wherever the repository lives (15% each; 120 rows miss it with probability ~3e-9)
    path = small_set(tmp_path, rows=120)
    result = runner.invoke(
        app, ["evaluate", str(untrained_bundle_path), "--data", str(path), "--split", "test", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "is not the bundle's training set: cut by its split rule (test) as asked" in result.stdout


def test_groups_with_many_classes_get_a_chart_of_their_most_confused_pairs(tmp_path) -> None:
    values = [f"v{i}" for i in range(15)]
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(15), 4)
    probs = rng.dirichlet(np.ones(15), size=len(targets))
    metrics = compute_metrics(
        {
            "many": GroupPredictions(
                AttributeGroup("many", "single", "classifier", tuple(values), "many"), probs, targets
            )
        }
    )
    report = build_report(metrics, model_version="m", split="test", data={"source": "x", "evaluated": 60})

    paths = write_report(report, tmp_path)

    assert "confused_pairs_png" in paths and "confusion_png" not in paths
    assert paths["confused_pairs_png"].stat().st_size > 0


def test_calibrate_stores_thresholds_in_the_bundle_and_says_the_file_changed(tmp_path, untrained_bundle_path) -> None:
    bundle = tmp_path / "b.safetensors"
    bundle.write_bytes(untrained_bundle_path.read_bytes())
    path = small_set(tmp_path, rows=20)

    result = runner.invoke(
        app,
        [
            *("models", "calibrate", str(bundle), "--data", str(path), "--split", "all"),
            *("--target-precision", "0.9", "--hierarchy", "kids,garment"),
        ],
    )

    assert result.exit_code == 0, result.output
    manifest = read_manifest(bundle)
    assert set(manifest["temperatures"]) == set(manifest["autofill_thresholds"]) == {"garment", "kids"}
    assert manifest["calibration"]["groups"]["garment"]["target_precision"] == 0.9
    assert manifest["calibration"]["split"] == "all" and manifest["calibration"]["images"] == 20
    assert "file SHA-256" in result.stdout and "rewritten" in result.stdout
    # an untrained model cannot prove 90% on 20 images: nothing of it is auto-filled, and that is said
    assert "NOT auto-filled" in result.stdout
    assert manifest["autofill_thresholds"]["garment"] > 1
    # the hierarchy derived from the labels (each garment implies a kids value) is stored in the bundle's taxonomy
    assert manifest["taxonomy"]["hierarchy"]["levels"] == ["kids", "garment"]
    assert "raw heads disagreed with the hierarchy" in result.stdout


def test_evaluation_reports_how_often_the_raw_heads_disagreed_with_the_hierarchy() -> None:
    taxonomy = parse_taxonomy(
        "schema_version: 1\nname: t\ngroups:\n  top: {kind: single, values: [A, B]}\n"
        "  leaf: {kind: single, values: [a1, a2, b1]}\n"
        "hierarchy: {levels: [top, leaf], implies: {a1: [A], a2: [A], b1: [B]}}\n"
    )
    top = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    leaf = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]])  # row 1: top says A, leaf says b1
    preds = {
        "top": GroupPredictions(taxonomy.group("top"), top, np.array([0, 1, 1])),
        "leaf": GroupPredictions(taxonomy.group("leaf"), leaf, np.array([0, 2, 2])),
    }

    metrics = compute_metrics(preds, decoder=ValueDecoder(taxonomy))

    assert metrics["summary"]["hierarchy_disagreement"] == {"levels": ["top", "leaf"], "rows": 1, "rate": 1 / 3}
    assert metrics["groups"]["top"]["top1"] == 1.0  # decoded (B, b1) for row 1: the leaf's evidence was stronger
