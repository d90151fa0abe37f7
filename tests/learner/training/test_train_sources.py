"""`shelfsight train` on several labelled sets: further sets at serving resolution join every split, low-resolution
sets give their train split only (their validation and test photos are never read), and the bundle records them all,
so `evaluate` knows each as training data. A real short fine-tune on the CC0 demo photos at 64 px."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from daemon.cli import app
from learner.datasets.labelled import DataError, SplitRule, load_labelled_set
from learner.evaluation.evaluate import training_set_relation
from learner.model.bundle import load_bundle
from learner.model.taxonomy import load_taxonomy
from learner.training.run import FreshBackbone, run_training
from tests.learner.training.tiny_cc0 import CC0_TAXONOMY, tiny_recipe

SALT, TRAIN, VAL = "tiny", 0.6, 0.25


def derived_set(
    tiny_set: Path, root: Path, prefix: str, size: tuple[int, int], corrupt: frozenset[str] = frozenset()
) -> Path:
    """The tiny set's photos as new products (ids `prefix` + id) shrunk to fit `size`; photos whose split is named in
    `corrupt` are written as bytes no decoder reads."""
    rule = SplitRule(SALT, TRAIN, VAL)  # the tiny recipe's
    (root / "images").mkdir(parents=True)
    with (tiny_set / "labels.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(reader)
    for r in rows:
        r["image"] = prefix + r["image"]
        target = root / "images" / f"{r['image']}.jpg"
        if rule.split_of(r["image"]) in corrupt:
            target.write_bytes(b"not a photo")
            continue
        with Image.open(tiny_set / "images" / f"{r['image'][len(prefix) :]}.jpg") as original:
            img = original.convert("RGB")
        img.thumbnail(size)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=90)
        target.write_bytes(out.getvalue())
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_low_resolution_sets_give_their_train_split_only_and_every_set_is_recorded(
    tiny_set: Path, tmp_path: Path
) -> None:
    more = derived_set(tiny_set, tmp_path / "more", "m", (300, 400))
    thumbs = derived_set(tiny_set, tmp_path / "thumbs", "t", (60, 80), corrupt=frozenset({"val", "test"}))
    out = tmp_path / "mixed.safetensors"

    result = CliRunner().invoke(
        app,
        [
            "train", "--data", str(tiny_set), "--data", str(more), "--low-res-data", str(thumbs),
            "--taxonomy", str(CC0_TAXONOMY), "--out", str(out), "--input-size", "64", "--low-res-size", "32",
            "--epochs", "2", "--serving-only-epochs", "1", "--batch-size", "4", "--patience", "0",
            "--ema-decay", "0", "--split-salt", SALT, "--train-fraction", str(TRAIN), "--val-fraction", str(VAL),
            "--device", "cpu", "--no-progress", "--no-test",
        ],
    )  # fmt: skip

    assert result.exit_code == 0, result.output  # the unreadable validation and test thumbnails were never read
    bundle = load_bundle(out)
    data = bundle.lineage["data"]
    taxonomy = load_taxonomy(CC0_TAXONOMY)
    sets = {p: load_labelled_set(p, taxonomy) for p in (tiny_set, more, thumbs)}
    assert [Path(d["source"]).parent for d in (data, *data["more"], *data["low_res"])] == [tiny_set, more, thumbs]
    assert data["low_res"][0]["read"] == "train split"
    assert all(training_set_relation(bundle, s) for s in sets.values())
    val = sum(d["split_counts"].get("val", 0) for d in (data, *data["more"]))
    assert bundle.metrics["validation"]["groups"]["garment"]["n"] == val  # both serving sets' validation products
    assert [row["input_size"] for row in bundle.lineage["history"]] == [64, 64]


def test_an_unreadable_low_resolution_training_photo_is_a_clear_error_naming_it(tiny_set: Path, tmp_path: Path) -> None:
    taxonomy = load_taxonomy(CC0_TAXONOMY)
    thumbs = derived_set(tiny_set, tmp_path / "thumbs", "t", (60, 80), corrupt=frozenset({"train"}))
    config = tiny_recipe(input_size=64, low_res_size=32, epochs=2, serving_only_epochs=1)
    serving = load_labelled_set(tiny_set, taxonomy)
    low = load_labelled_set(thumbs, taxonomy).split(config.split, "train")

    with pytest.raises(DataError, match=r"thumbs/images/t.*cannot be decoded"):
        run_training(
            FreshBackbone(taxonomy),
            serving.split(config.split, "train"),
            serving.split(config.split, "val"),
            config,
            record=lambda r: {},
            say=print,
            low_res_samples=low,
        )
