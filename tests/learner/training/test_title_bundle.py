"""A title model added to an existing bundle (`shelfsight models add-title`), float16 (shrunk) or not, without touching
its image model."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from learner.datasets.labelled import DataError
from learner.model.bundle import load_bundle, read_manifest, shrink_bundle
from learner.model.manifest import BundleInfo
from learner.training.title_bundle import add_title_model

GARMENTS = ("Hat", "Shoes", "Pants", "Shirt", "Dress")
BRANDS = ("acme", "zento", "lumo", "parva", "kestrel")


def titled_set(root: Path, n: int = 300, column: str = "name", prefix: str = "p") -> Path:
    """A clothing-cc0 labels.csv with a title column, products `prefix`0, `prefix`1, ...; the image files exist
    (add-title never decodes them)."""
    rng = random.Random(0)
    (root / "images").mkdir(parents=True)
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label", "kids", column])
        for i in range(n):
            garment, kids = rng.choice(GARMENTS), rng.random() < 0.4
            (root / "images" / f"{prefix}{i}.jpg").write_bytes(b"")
            title = f"{rng.choice(BRANDS)} {'Kids ' if kids else ''}{garment} {rng.randint(10, 99)}"
            writer.writerow([f"{prefix}{i}", garment, str(kids), title])
    return root


def stored(path: Path, prefix: str) -> dict[str, np.ndarray]:
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118


def test_a_shrunk_bundle_gets_a_title_model_and_stays_shrunk(untrained_bundle_path, tmp_path):
    small = shrink_bundle(untrained_bundle_path, tmp_path / "small.safetensors").path
    data = titled_set(tmp_path / "data")
    out = tmp_path / "titled.safetensors"
    done = add_title_model(small, data, out, title_column="name", epochs=8, dim=16, fusion=False)
    assert done.target == out and done.fusion is None
    manifest = read_manifest(out)
    assert manifest["weights_dtype"] == "float16" and done.weights_dtype == "float16"
    assert manifest["taxonomy"]["title_column"] == "name"
    assert manifest["model_version"] == read_manifest(small)["model_version"]
    before, after = stored(small, "classifier."), stored(out, "classifier.")
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert stored(out, "title.")["title.embedding"].dtype == np.float16
    assert done.model.metrics["validation"]["top1"]["garment"] >= 0.95
    titles = ["acme Kids Hat 12", "", "zento Shoes"]
    served, by_torch = BundleInfo.read(out).title_model, load_bundle(out).title_model
    assert served is not None and by_torch is not None
    for g, p in by_torch.probabilities(titles).items():
        np.testing.assert_array_equal(served.probabilities(titles)[g], p)
        np.testing.assert_allclose(p, done.model.probabilities(titles)[g], atol=2e-3)


def test_without_a_title_column_nothing_is_written(untrained_bundle_path, tmp_path):
    data = titled_set(tmp_path / "data")
    with pytest.raises(DataError, match="title-column"):
        add_title_model(untrained_bundle_path, data, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_further_sets_join_both_splits_and_low_resolution_sets_give_lighter_training_titles_only(
    untrained_bundle_path, tmp_path
):
    data, more = titled_set(tmp_path / "data"), titled_set(tmp_path / "more", n=200, prefix="m")
    thumbs = titled_set(tmp_path / "thumbs", n=400, prefix="t")
    alone = add_title_model(untrained_bundle_path, data, tmp_path / "a.safetensors", title_column="name", epochs=2,
                            dim=8, fusion=False)  # fmt: skip
    joined = add_title_model(
        untrained_bundle_path, data, tmp_path / "b.safetensors", more=[more], low_res=[thumbs], low_res_weight=0.2,
        title_column="name", epochs=2, dim=8, fusion=False,
    )  # fmt: skip
    assert joined.val_titles > alone.val_titles  # the further set's validation titles joined; the thumbnails' not
    config = joined.model.config
    assert config["val_titles"] == joined.val_titles
    weighted = config["weighted"]
    assert weighted["full"] == config["train_titles"] - weighted["lighter"] > alone.train_titles
    assert 0 < weighted["lighter"] < 400  # the thumbnails' train split only
    assert weighted["lighter_weight_sum"] == pytest.approx(0.2 * weighted["lighter"])
    assert joined.train_titles == config["train_titles"]
    assert [d["source"] for d in config["data"]["more"]] == [str(more / "labels.csv")]
    assert config["data"]["low_res"][0]["weight"] == 0.2


def test_a_low_resolution_title_weight_outside_zero_to_one_is_refused_before_anything_is_read(
    untrained_bundle_path, tmp_path
):
    with pytest.raises(ValueError, match="low-res-title-weight"):
        add_title_model(untrained_bundle_path, tmp_path / "missing", low_res_weight=1.5, title_column="name")
