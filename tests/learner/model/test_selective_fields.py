"""Taxonomy and bundle fields of selective prediction: target precision, hierarchy, temperatures, thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from learner.model.bundle import load_bundle, read_manifest
from learner.model.hierarchy import derive_hierarchy
from learner.model.taxonomy import TaxonomyError, load_taxonomy, parse_taxonomy

CC0_TAXONOMY = Path(__file__).resolve().parents[3] / "learner" / "taxonomies" / "clothing-cc0.yaml"

BASE = """
schema_version: 1
name: shop
groups:
  master:
    kind: single
    values: [Apparel, Footwear]
  article:
    kind: single
    values: [Tshirts, Shoes, Socks]
  tags:
    kind: multi
    values: [x, y]
"""


def test_target_precision_is_read_per_group() -> None:
    taxonomy = parse_taxonomy(
        BASE.replace("values: [Apparel, Footwear]", "values: [Apparel, Footwear]\n    target_precision: 0.95")
    )
    assert taxonomy.group("master").target_precision == 0.95
    assert taxonomy.group("article").target_precision is None
    assert parse_taxonomy(json.dumps(taxonomy.to_dict())).group("master").target_precision == 0.95


def test_a_target_precision_given_in_percent_is_refused_with_a_hint_and_its_line() -> None:
    text = BASE.replace("values: [Apparel, Footwear]", "values: [Apparel, Footwear]\n    target_precision: 95")
    with pytest.raises(TaxonomyError) as err:
        parse_taxonomy(text)
    message = str(err.value)
    assert "groups.master.target_precision (line 8)" in message and "write 0.95 for 95%" in message


def test_target_precision_on_a_multi_label_group_is_refused() -> None:
    text = BASE.replace("values: [x, y]", "values: [x, y]\n    target_precision: 0.9")
    with pytest.raises(TaxonomyError, match="single-choice classifier groups only"):
        parse_taxonomy(text)


def test_taxonomies_without_the_new_keys_keep_their_fingerprint() -> None:
    taxonomy = load_taxonomy(str(CC0_TAXONOMY))  # fashion-products declares a hierarchy since issue 13
    assert "hierarchy" not in taxonomy.to_dict()
    for name in (str(CC0_TAXONOMY), "fashion-products"):
        assert all("target_precision" not in g for g in load_taxonomy(name).to_dict()["groups"].values())


def test_hierarchy_is_derived_from_labels_with_the_most_frequent_path_and_conflicts_counted(tmp_path) -> None:
    taxonomy = parse_taxonomy(BASE)
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "image,master,article\n"
        "a,Apparel,Tshirts\nb,Apparel,Tshirts\nc,Footwear,Tshirts\n"  # one row disagrees
        "d,Footwear,Shoes\ne,,Shoes\nf,Unknown,Shoes\n"  # two rows skipped
    )

    derived = derive_hierarchy(csv, taxonomy, ["master", "article"])

    assert dict(derived.hierarchy.implies) == {"Tshirts": ("Apparel",), "Shoes": ("Footwear",)}
    assert derived.conflicts == {"Tshirts": 1}
    assert derived.skipped_rows == 2 and derived.rows == 6
    assert derived.unseen_leaves == ["Socks"]
    stored = taxonomy.with_hierarchy(derived.hierarchy)
    assert parse_taxonomy(derived.hierarchy.to_yaml() + BASE).hierarchy == stored.hierarchy


def test_a_calibrated_bundle_round_trips_and_an_old_bundle_has_no_threshold(untrained_bundle_path, tmp_path) -> None:
    old = load_bundle(untrained_bundle_path)
    assert old.autofill_threshold("garment") is None and old.temperatures == {}
    assert "autofill_thresholds" not in read_manifest(untrained_bundle_path)

    old.temperatures = {"garment": 1.7}
    old.autofill_thresholds = {"garment": 0.8, "kids": 2.0}
    old.calibration = {"groups": {"garment": {"target_precision": 0.95}}}
    path = old.save(tmp_path / "calibrated.safetensors")

    again = load_bundle(path)
    assert again.temperatures == {"garment": 1.7}
    assert again.autofill_threshold("garment") == 0.8 and again.autofill_threshold("kids") == 2.0
    assert again.calibration["groups"]["garment"]["target_precision"] == 0.95
    with safe_open(str(path), framework="pt") as f:
        assert (
            json.loads(f.metadata()["shelfsight.manifest"])["tensor_sha256"]
            == read_manifest(untrained_bundle_path)["tensor_sha256"]
        )
