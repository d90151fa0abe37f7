"""One decision per product from all its photos and its title: fusion, conflicts, the shift guard, no title."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest

from connectors.records import TITLE_PHOTO_CONFLICT, AttributeValue
from learner.inference.decoding import ValueDecoder
from learner.inference.engine import ImageTags
from learner.inference.product_decision import (
    FROM_BOTH,
    FROM_TITLE,
    Fusion,
    GroupFusion,
    ProductDecider,
    decide_products,
    merge_attributes,
)
from learner.model.shift_guard import UNFAMILIAR_PHOTO
from learner.model.taxonomy import Taxonomy, parse_taxonomy

TAXONOMY = """
schema_version: 1
name: shop
groups:
  master:
    kind: single
    values: [Apparel, Footwear]
  article:
    kind: single
    values: [Tshirts, Jeans, Casual Shoes]
  colour:
    kind: single
    values: [Blue, Red, Black]
  objects:
    kind: multi
    source: detector
    values: [person, handbag]
hierarchy:
  levels: [master, article]
  implies:
    Tshirts: [Apparel]
    Jeans: [Apparel]
    Casual Shoes: [Footwear]
"""


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return parse_taxonomy(TAXONOMY)


class Titles:
    """A title model stand-in: fixed calibrated rows per title, a NaN row for a title it has no signal for."""

    def __init__(self, rows: dict[str, dict[str, list[float]]], thresholds: dict[str, float] | None = None) -> None:
        self.rows = rows
        self.autofill_thresholds = thresholds or {"master": 0.9, "article": 0.9, "colour": 0.9}

    def probabilities(self, titles: Sequence[str | None]) -> dict[str, np.ndarray]:
        groups = {"master": 2, "article": 3, "colour": 3}
        return {
            g: np.array([self.rows[t][g] if t in self.rows else [np.nan] * c for t in titles], dtype=np.float64)
            for g, c in groups.items()
        }


FUSION = Fusion(
    {
        g: GroupFusion(1.0, 1.0, threshold=0.9, conflict_title=0.9, conflict_image=0.05)
        for g in ("master", "article", "colour")
    }
)
BLUE_TSHIRT = {"master": [0.99, 0.01], "article": [0.98, 0.01, 0.01], "colour": [0.97, 0.02, 0.01]}
RED_TSHIRT = {"master": [0.99, 0.01], "article": [0.98, 0.01, 0.01], "colour": [0.01, 0.98, 0.01]}


def photo(taxonomy: Taxonomy, probs: dict[str, list[float]], unfamiliar: bool = False) -> ImageTags:
    """The tags the engine gives a photo with these calibrated probabilities (no thresholds: floor 0.5)."""
    decoder = ValueDecoder(taxonomy)
    d = decoder({g: np.array([p]) for g, p in probs.items()})
    attributes = {g.name: d.ranked(g.name, 0, g.values, 3) for g in decoder.groups}
    attributes["objects"] = [("person", 0.9)]
    auto = {g: bool(a[0]) and not unfamiliar for g, a in d.auto_filled.items()}
    return ImageTags(
        attributes, [], 10, 10, "v1", auto, unfamiliar=unfamiliar, probs={g: p[0] for g, p in d.probs.items()}
    )


def decider(taxonomy: Taxonomy, titles: Titles | None = None) -> ProductDecider:
    return ProductDecider(taxonomy, ValueDecoder(taxonomy), titles or Titles({"blue tee": BLUE_TSHIRT}), FUSION)


def by_group(values: list[AttributeValue]) -> dict[str, AttributeValue]:
    return {a.attribute: a for a in values}


def test_without_a_title_a_one_photo_product_gets_exactly_that_photos_values_and_marks(taxonomy: Taxonomy) -> None:
    tags = [photo(taxonomy, {"master": [0.7, 0.3], "article": [0.6, 0.3, 0.1], "colour": [0.55, 0.4, 0.05]})]
    today = merge_attributes(tags, taxonomy)  # the photo's own values, confidences, alternatives and marks
    decide = decider(taxonomy)
    for title in (None, "", "   ", "zzqx"):  # "zzqx": the title model has no signal for it (NaN row)
        assert decide.decide(tags, title) == today
    assert ProductDecider(taxonomy, ValueDecoder(taxonomy)).decide(tags, "blue tee") == today  # no title model


def test_without_a_title_several_photos_give_one_decision_consistent_with_the_hierarchy(taxonomy: Taxonomy) -> None:
    # the most confident photo per group would take master from the first photo (Apparel 0.9) and article from the
    # second (Casual Shoes 0.95): a Footwear article under Apparel
    tags = [
        photo(taxonomy, {"master": [0.9, 0.1], "article": [0.5, 0.3, 0.2], "colour": [0.6, 0.3, 0.1]}),
        photo(taxonomy, {"master": [0.2, 0.8], "article": [0.02, 0.03, 0.95], "colour": [0.6, 0.3, 0.1]}),
    ]
    values = by_group(decider(taxonomy).decide(tags, None))
    assert (values["master"].value, values["article"].value) == ("Footwear", "Casual Shoes")
    assert values["master"].confidence == pytest.approx(0.45) and values["master"].readings is None
    assert decider(taxonomy).decide(tags, "zzqx") == decider(taxonomy).decide(tags, None)


def test_unfamiliar_photos_alone_and_no_title_keep_their_values_as_suggestions(taxonomy: Taxonomy) -> None:
    values = by_group(decider(taxonomy).decide([photo(taxonomy, RED_TSHIRT, unfamiliar=True)], None))
    assert values["colour"].value == "Red" and not values["colour"].auto_filled
    assert values["colour"].withheld_by == UNFAMILIAR_PHOTO


def test_a_title_that_agrees_makes_a_value_the_photos_alone_would_only_suggest_auto_filled(taxonomy: Taxonomy) -> None:
    tags = [photo(taxonomy, {"master": [0.9, 0.1], "article": [0.6, 0.2, 0.2], "colour": [0.6, 0.3, 0.1]})]
    (alone,) = [a for a in merge_attributes(tags, taxonomy) if a.attribute == "colour"]
    fused = by_group(decider(taxonomy).decide(tags, "blue tee"))["colour"]
    assert alone.value == fused.value == "Blue"
    assert fused.confidence > 0.9 > alone.confidence and fused.auto_filled
    assert fused.readings == {
        "decided_from": FROM_BOTH,
        "title": {"value": "Blue", "confidence": 0.97},
        "photos": {"value": "Blue", "confidence": 0.6},
    }
    assert by_group(decider(taxonomy).decide(tags, "blue tee"))["objects"].value == ["person"]


def test_title_and_photos_confidently_disagreeing_withholds_only_that_group_and_keeps_both_readings(
    taxonomy: Taxonomy,
) -> None:
    tags = [photo(taxonomy, RED_TSHIRT)]
    values = by_group(decider(taxonomy).decide(tags, "blue tee"))
    colour = values["colour"]
    assert not colour.auto_filled and colour.withheld_by == TITLE_PHOTO_CONFLICT
    assert colour.readings is not None
    assert colour.readings["title"] == {"value": "Blue", "confidence": 0.97}
    assert colour.readings["photos"] == {"value": "Red", "confidence": 0.98}
    assert values["article"].auto_filled and values["article"].withheld_by is None


def test_unfamiliar_photos_do_not_vote_and_without_a_familiar_one_the_title_decides_alone(taxonomy: Taxonomy) -> None:
    familiar = photo(taxonomy, BLUE_TSHIRT)
    odd = photo(taxonomy, RED_TSHIRT, unfamiliar=True)
    colour = by_group(decider(taxonomy).decide([familiar, odd], "blue tee"))["colour"]
    assert colour.value == "Blue" and colour.withheld_by is None and colour.auto_filled  # the odd photo's Red: no vote

    only_odd = by_group(decider(taxonomy).decide([odd], "blue tee"))
    assert only_odd["colour"].value == "Blue" and only_odd["colour"].readings is not None
    assert only_odd["colour"].readings["decided_from"] == FROM_TITLE
    assert only_odd["colour"].readings["photos"] is None
    assert only_odd["colour"].auto_filled  # 0.97 >= the title model's own threshold 0.9
    strict = Titles({"blue tee": BLUE_TSHIRT}, {"master": 0.999, "article": 0.999, "colour": 0.999})
    assert not by_group(decider(taxonomy, strict).decide([odd], "blue tee"))["colour"].auto_filled
    assert only_odd["objects"].withheld_by == UNFAMILIAR_PHOTO  # multi-label values as before


def test_the_photos_are_averaged_and_the_product_is_decoded_along_the_hierarchy(taxonomy: Taxonomy) -> None:
    # photo 1 says Apparel/Casual Shoes-ish, photo 2 Footwear: averaged and decoded, master and article agree
    tags = [
        photo(taxonomy, {"master": [0.6, 0.4], "article": [0.05, 0.05, 0.9], "colour": [0.5, 0.3, 0.2]}),
        photo(taxonomy, {"master": [0.55, 0.45], "article": [0.3, 0.1, 0.6], "colour": [0.5, 0.3, 0.2]}),
    ]
    titles = Titles({"shoe": {"master": [0.5, 0.5], "article": [0.3, 0.3, 0.4], "colour": [0.4, 0.3, 0.3]}})
    values = by_group(decider(taxonomy, titles).decide(tags, "shoe"))
    assert (values["master"].value, values["article"].value) == ("Footwear", "Casual Shoes")


def test_decide_products_fuses_rows_with_both_signals_and_uses_each_alone_otherwise(taxonomy: Taxonomy) -> None:
    nan = [np.nan] * 3
    image = {"master": np.array([[0.9, 0.1]] * 3), "article": np.array([[0.8, 0.1, 0.1]] * 3)}
    image["colour"] = np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], nan])
    image["master"][2] = image["article"][2] = np.nan
    title = {g: np.array([np.full(len(r[0]), np.nan), r[0], r[0]]) for g, r in image.items() if g != "colour"}
    title["colour"] = np.array([nan, [0.95, 0.03, 0.02], [0.95, 0.03, 0.02]])
    title["master"][1:] = [0.95, 0.05]
    title["article"][1:] = [0.95, 0.03, 0.02]
    d = decide_products(image, title, ValueDecoder(taxonomy, autofill_thresholds={"colour": 0.7}), FUSION, {})
    assert list(d.decided_from["colour"]) == ["photos", "photos+title", "title"]
    np.testing.assert_allclose(d.probs["colour"][0], [0.6, 0.3, 0.1])
    np.testing.assert_allclose(
        d.probs["colour"][1], FUSION.groups["colour"].fuse(image["colour"][1:2], title["colour"][1:2])[0]
    )
    assert list(d.auto_filled["colour"]) == [False, True, False]  # the title alone: no threshold given, never


def test_a_fusion_survives_the_manifest_and_a_bundle_without_one_reads_no_titles(taxonomy: Taxonomy) -> None:
    fusion = Fusion({"colour": GroupFusion(0.4, 0.8, (0.1, -0.1, 0.0), 0.93, 0.9, 0.02)}, {"rows": 10})
    assert Fusion.from_dict(fusion.to_dict()) == fusion
    assert Fusion.from_dict(None) is None and Fusion.from_dict({}) is None
    assert not ProductDecider(taxonomy, ValueDecoder(taxonomy), Titles({})).reads_titles


def test_the_engines_tags_carry_the_calibrated_probabilities_their_values_were_chosen_from(
    calibrated_bundle_path, cc0_images
) -> None:
    from learner.inference.engine import TaggingEngine
    from learner.model.bundle import load_bundle

    engine = TaggingEngine(load_bundle(calibrated_bundle_path), device="cpu")
    (tags,) = engine.tag_bytes([cc0_images[0].read_bytes()])
    assert isinstance(tags, ImageTags) and tags.probs is not None
    for g in engine.decoder.groups:
        values = dict(tags.attributes[g.name])
        assert [values[v] for v in values] == pytest.approx([tags.probs[g.name][g.index(v)] for v in values])
    assert engine.decider.decide([tags], None) == merge_attributes([tags], engine.bundle.taxonomy)


def test_with_no_photo_read_the_title_decides_alone_and_without_one_nothing_is_decided(taxonomy: Taxonomy) -> None:
    values = by_group(decider(taxonomy).decide([], "blue tee"))
    assert values["colour"].value == "Blue" and values["colour"].auto_filled
    assert values["colour"].readings == {
        "decided_from": FROM_TITLE,
        "title": {"value": "Blue", "confidence": 0.97},
        "photos": None,
    }
    assert "objects" not in values  # nothing for the detector's groups without a photo
    assert decider(taxonomy).decide([], None) == [] == decider(taxonomy).decide([], "zzqx")


def test_a_title_that_names_none_of_a_groups_values_is_fused_by_that_groups_unnamed_weights(taxonomy: Taxonomy) -> None:
    # the photos say Red; a title that names a colour is trusted as much as the photos, one that names none
    # ("zz shirt": its colour reading is a guess from other words) hardly at all, and never counted as a conflict
    unnamed = GroupFusion(1.0, 0.1, threshold=0.9)
    fusion = Fusion({**FUSION.groups, "colour": dataclasses.replace(FUSION.groups["colour"], unnamed=unnamed)})
    image = {g: np.array([RED_TSHIRT[g]] * 2) for g in ("master", "article", "colour")}
    title = {g: np.array([BLUE_TSHIRT[g]] * 2) for g in ("master", "article", "colour")}
    named = {"master": np.array([True, True]), "article": np.array([True, True]), "colour": np.array([True, False])}
    d = decide_products(image, title, ValueDecoder(taxonomy), fusion, title_named=named)
    assert d.conflict["colour"].tolist() == [True, False]
    # both rows choose the photos' Red; the title that names Blue weighs on it, the one that names no colour hardly
    assert d.chosen["colour"].tolist() == [1, 1]
    assert d.confidence["colour"][1] > 0.95 > d.confidence["colour"][0]
    same = decide_products(image, title, ValueDecoder(taxonomy), FUSION, title_named=named)  # no unnamed weights
    assert same.confidence["colour"][0] == same.confidence["colour"][1]
    assert same.conflict["colour"].tolist() == [True, True]


def test_products_decided_together_get_exactly_the_values_each_gets_decided_alone(taxonomy: Taxonomy) -> None:
    # the writer decides a whole write group at once; no product's values may depend on the others in it
    titles = Titles({"blue tee": BLUE_TSHIRT, "zz shirt": RED_TSHIRT})  # "zz shirt" names no colour
    unnamed = GroupFusion(1.0, 0.1, threshold=0.9)
    fusion = Fusion({**FUSION.groups, "colour": dataclasses.replace(FUSION.groups["colour"], unnamed=unnamed)})
    decide = ProductDecider(taxonomy, ValueDecoder(taxonomy), titles, fusion)
    unsure = {"master": [0.7, 0.3], "article": [0.6, 0.3, 0.1], "colour": [0.55, 0.4, 0.05]}
    by_hand = ImageTags({"colour": [("Red", 0.9)]}, [], 10, 10, "v1", {"colour": True})  # no probabilities
    products: list[tuple[list[ImageTags], str | None]] = [
        ([photo(taxonomy, unsure)], "blue tee"),  # with a title that agrees
        ([photo(taxonomy, unsure)], None),  # without a title
        ([photo(taxonomy, unsure)], "zzqx"),  # a title the model has no signal for
        ([photo(taxonomy, RED_TSHIRT)], "zz shirt"),  # a title that names no colour
        ([photo(taxonomy, RED_TSHIRT)], "blue tee"),  # a title that contradicts the photos
        ([], "blue tee"),  # every photo failed: the title alone
        ([], None),  # nothing to decide
        ([photo(taxonomy, RED_TSHIRT, unfamiliar=True)], None),  # unfamiliar photos alone
        ([photo(taxonomy, RED_TSHIRT, unfamiliar=True), photo(taxonomy, unsure)], "blue tee"),
        ([photo(taxonomy, unsure), photo(taxonomy, RED_TSHIRT)], "   "),  # several photos, a blank title
        ([by_hand], "blue tee"),  # tags made by hand: merged
    ]
    together = decide.decide_many(products)
    assert together == [decide.decide(tags, title) for tags, title in products]
    assert by_group(together[4])["colour"].withheld_by == TITLE_PHOTO_CONFLICT
    assert by_group(together[5])["colour"].readings == {
        "decided_from": FROM_TITLE,
        "title": {"value": "Blue", "confidence": 0.97},
        "photos": None,
    }
    assert together[6] == [] and decide.decide_many([]) == []
