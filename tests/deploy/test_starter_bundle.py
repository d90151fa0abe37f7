"""The starter model shipped in deploy/demo/ (what `shelfsight demo` and `shelfsight tag` use out of the box): it is
present, small, its manifest says what it is (data and the SHA-256 of its labels.csv, recipe, validation figures,
the bundle's SHA-256), the manifest matches the file, and the bundle loads and tags. Rebuilt by
deploy/demo/build_starter.sh. A missing file fails: the starter model must be shipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from learner.model.bundle import load_bundle
from learner.model.manifest import file_sha256, read_manifest

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo"
BUNDLE = DEMO / "starter.safetensors"
MANIFEST = DEMO / "starter.manifest.json"
MAX_BYTES = 16_000_000  # "at most about 15 MB": EfficientNet-Lite0 in float16 is 7 MB, 12 MB with its title model


@pytest.fixture(scope="module")
def manifest() -> dict:
    assert BUNDLE.is_file(), f"{BUNDLE} is missing: build it with `bash deploy/demo/build_starter.sh`"
    assert MANIFEST.is_file(), f"{MANIFEST} is missing: build it with `bash deploy/demo/build_starter.sh`"
    return json.loads(MANIFEST.read_text())


def test_starter_manifest_is_complete(manifest):
    assert manifest["bundle"] == BUNDLE.name
    assert len(manifest["data"]["labels_csv_sha256"]) == 64
    assert manifest["data"]["path"].endswith("fashion-products")
    assert manifest["recipe"]["command"] and manifest["recipe"]["train_config"]
    validation = manifest["metrics"]["validation"]
    assert 0.0 < validation["summary"]["mean_top1"] <= 1.0
    single = [g for g in manifest["groups"] if g != "detectedObjects"]
    assert set(single) <= set(validation["groups"]), "validation figures of every classifier group"
    assert manifest["taxonomy"] == "fashion-products" and manifest["backbone"] == "tf_efficientnet_lite0"
    assert manifest["weights_dtype"] == "float16"


def test_the_manifest_records_the_command_that_rebuilds_the_starter_not_a_path_of_the_machine_that_built_it(manifest):
    command = manifest["recipe"]["command"]
    rebuild = command.split(" (", 1)[0]  # then, in parentheses, what it ran
    assert rebuild.endswith("bash deploy/demo/build_starter.sh"), command
    words = [w.strip("\"'") for w in command.replace("=", " ").split()]
    assert not [w for w in words if w.startswith(("/", "runs/"))], command  # no output path of the building machine


def test_starter_manifest_matches_the_bundle_file(manifest):
    assert BUNDLE.stat().st_size == manifest["bundle_bytes"] <= MAX_BYTES
    assert file_sha256(BUNDLE) == manifest["bundle_sha256"]
    header = read_manifest(BUNDLE)
    assert header["model_version"] == manifest["model_version"]
    assert header["lineage"]["data"]["csv_sha256"] == manifest["data"]["labels_csv_sha256"]
    assert header["metrics"]["validation"] == manifest["metrics"]["validation"]
    assert "test" not in header["metrics"], "the starter model is built with --no-test: the test split stays unseen"


def test_starter_bundle_loads_with_every_group_and_tags_a_photo(manifest, cc0_images):
    from learner.inference.engine import TaggingEngine

    bundle = load_bundle(BUNDLE)
    assert {p.dtype for p in bundle.classifier.parameters()} == {torch.float32}
    assert [g.name for g in bundle.taxonomy.groups] == manifest["groups"]
    (tags,) = TaggingEngine(bundle, device="cpu").tag_bytes([cc0_images[0].read_bytes()])
    assert {g.name for g in bundle.taxonomy.classifier_groups} <= set(tags.attributes)


def test_the_starter_reads_titles_and_decides_a_product_from_its_photo_and_title(manifest, cc0_images):
    from learner.inference.engine import TaggingEngine

    assert manifest["title_model"]["title_column"] == "productDisplayName"
    assert manifest["title_model"]["validation_top1"]["articleType"] > 0.9
    engine = TaggingEngine(load_bundle(BUNDLE), device="cpu")
    assert engine.decider.reads_titles
    (tags,) = engine.tag_bytes([cc0_images[0].read_bytes()])
    values = {a.attribute: a for a in engine.decider.decide([tags], "Nike Men Navy Blue Running Shoes")}
    assert values["gender"].readings is not None and values["gender"].readings["title"]["value"] == "Men"
    assert values["baseColour"].readings["title"]["value"] == "Navy Blue"
    assert engine.decider.decide([tags], None) == engine.decider.decide([tags], "   ")  # no title: photos only
