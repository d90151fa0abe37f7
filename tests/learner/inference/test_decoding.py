"""Hierarchy-consistent decoding, temperatures and auto-fill marks, from probabilities to values."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image, ImageOps

from learner.inference.backends import load_engine
from learner.inference.decoding import ValueDecoder, apply_temperature, hierarchy_paths
from learner.inference.engine import TaggingEngine
from learner.model.bundle import load_bundle
from learner.model.hierarchy import Hierarchy
from learner.model.taxonomy import Taxonomy, parse_taxonomy

TAXONOMY = """
schema_version: 1
name: shop
groups:
  master:
    kind: single
    values: [Apparel, Footwear, Accessories]
  sub:
    kind: single
    values: [Topwear, Bottomwear, Shoes, Sandal, Bags, Watches]
  article:
    kind: single
    values: [Tshirts, Shirts, Jeans, Casual Shoes, Sandals, Handbags, Backpacks, Watches, Mystery]
  colour:
    kind: single
    values: [Black, White]
hierarchy:
  levels: [master, sub, article]
  implies:
    Tshirts: [Apparel, Topwear]
    Shirts: [Apparel, Topwear]
    Jeans: [Apparel, Bottomwear]
    Casual Shoes: [Footwear, Shoes]
    Sandals: [Footwear, Sandal]
    Handbags: [Accessories, Bags]
    Backpacks: [Accessories, Bags]
    Watches: [Accessories, Watches]
"""


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return parse_taxonomy(TAXONOMY)


def consistent(taxonomy: Taxonomy, master: int, sub: int, article: int) -> bool:
    h = taxonomy.hierarchy
    assert h is not None
    leaf = taxonomy.group("article").values[article]
    upper = (taxonomy.group("master").values[master], taxonomy.group("sub").values[sub])
    if leaf in h.implies:
        return h.implies[leaf] == upper
    return upper in set(h.implies.values())  # an unlisted leaf may only sit under a known path


def test_hierarchy_decoding_never_emits_an_inconsistent_triple(taxonomy) -> None:
    decoder = ValueDecoder(taxonomy)
    rng = np.random.default_rng(7)
    for trial in range(300):
        n = 16
        # mixes of flat, peaked and near-one-hot rows, so the heads often disagree with each other
        sharpness = rng.choice([0.3, 1.0, 5.0, 30.0])
        probs = {
            g.name: apply_temperature(rng.dirichlet(np.ones(len(g.values)), size=n), 1 / sharpness)
            for g in taxonomy.classifier_groups
        }
        d = decoder(probs)
        for i in range(n):
            triple = (int(d.chosen["master"][i]), int(d.chosen["sub"][i]), int(d.chosen["article"][i]))
            assert consistent(taxonomy, *triple), (trial, i, triple)
        # and it is the most probable consistent triple (brute force over all triples)
        sizes = [len(taxonomy.group(n).values) for n in ("master", "sub", "article")]
        for i in range(n):
            best = max(
                (t for t in itertools.product(*map(range, sizes)) if consistent(taxonomy, *t)),
                key=lambda t: probs["master"][i, t[0]] * probs["sub"][i, t[1]] * probs["article"][i, t[2]],
            )
            chosen = (d.chosen["master"][i], d.chosen["sub"][i], d.chosen["article"][i])
            assert tuple(int(c) for c in chosen) == best


def test_heads_that_agree_keep_their_values_and_disagreement_is_reported(taxonomy) -> None:
    def onehot(group: str, value: str, p: float = 0.9) -> np.ndarray:
        g = taxonomy.group(group)
        row = np.full(len(g.values), (1 - p) / (len(g.values) - 1))
        row[g.index(value)] = p
        return row[None, :]

    agree = {"master": onehot("master", "Footwear"), "sub": onehot("sub", "Shoes")}
    agree |= {"article": onehot("article", "Casual Shoes"), "colour": onehot("colour", "Black")}
    d = ValueDecoder(taxonomy)(agree)
    assert not d.disagreed[0]
    assert taxonomy.group("article").values[d.chosen["article"][0]] == "Casual Shoes"

    # the article head is sure of a handbag, the others weakly say footwear: the path follows the strongest evidence
    clash = {**agree, "master": onehot("master", "Footwear", 0.5), "sub": onehot("sub", "Shoes", 0.4)}
    clash["article"] = onehot("article", "Handbags", 0.95)
    d = ValueDecoder(taxonomy)(clash)
    assert d.disagreed[0]
    assert [taxonomy.group(g).values[d.chosen[g][0]] for g in ("master", "sub", "article")] == [
        "Accessories",
        "Bags",
        "Handbags",
    ]
    assert d.confidence["master"][0] == pytest.approx(clash["master"][0, 2])  # its own head's probability


def test_unlisted_leaf_values_may_sit_under_any_known_path(taxonomy) -> None:
    paths = hierarchy_paths(taxonomy.hierarchy, taxonomy)  # type: ignore[arg-type]
    mystery = taxonomy.group("article").index("Mystery")
    under = {tuple(p[:2]) for p in paths if p[2] == mystery}
    known = {tuple(p[:2]) for p in paths if p[2] != mystery}
    assert under == known


def test_auto_fill_marks_follow_each_groups_threshold_and_temperatures_soften(taxonomy) -> None:
    probs = {g.name: np.full((1, len(g.values)), 0.01) for g in taxonomy.classifier_groups}
    for p in probs.values():
        p[0, 0] = 1 - 0.01 * (p.shape[1] - 1)
    d = ValueDecoder(taxonomy, {"colour": 4.0}, {"master": 0.9, "sub": 0.999})(probs)
    assert d.auto_filled["master"][0] and not d.auto_filled["sub"][0]
    assert d.auto_filled["article"][0]  # no threshold: auto-filled, as before calibration existed
    assert d.confidence["colour"][0] < probs["colour"][0, 0]


def test_hierarchy_problems_name_the_key_and_line() -> None:
    bad = TAXONOMY.replace("Jeans: [Apparel, Bottomwear]", "Jeans: [Apparel, Trousers]")
    with pytest.raises(ValueError) as err:
        parse_taxonomy(bad)
    assert "hierarchy.implies.Jeans" in str(err.value) and "'Trousers' is not a value of group 'sub'" in str(err.value)
    assert "line" in str(err.value)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_engine_with_flip_tta_gives_the_same_values_for_an_image_and_its_mirror(
    untrained_bundle_path, cc0_images, backend, tmp_path
):
    # each backend lays its inputs out its own way (3 x S x S tensors, S x S x 3 arrays): the mirror must flip the width
    engine = load_engine(untrained_bundle_path, backend, device="cpu", tta="flip", onnx_cache_dir=tmp_path)
    img = Image.open(cc0_images[0]).convert("RGB")
    mirrored = ImageOps.mirror(img)
    encoded = []
    for im in (img, mirrored):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        encoded.append(buf.getvalue())
    a, b = engine.tag_bytes(encoded)
    for group in ("garment", "kids"):
        assert [v for v, _ in a.attributes[group]] == [v for v, _ in b.attributes[group]]
        assert [c for _, c in a.attributes[group]] == pytest.approx([c for _, c in b.attributes[group]], abs=1e-4)
    with pytest.raises(ValueError, match="tta"):
        TaggingEngine(load_bundle(untrained_bundle_path), device="cpu", tta="rotate")


def test_engine_marks_values_below_their_threshold_as_suggestions(calibrated_bundle_path, cc0_images):
    engine = TaggingEngine(load_bundle(calibrated_bundle_path), device="cpu")
    (tags,) = engine.tag_bytes([cc0_images[0].read_bytes()])
    assert tags.is_auto_filled("kids") and not tags.is_auto_filled("garment")
    assert tags.to_dict()["auto_filled"]["garment"] is False


def test_hierarchy_round_trips_through_a_dict() -> None:
    h = Hierarchy(("a", "b"), {"x": ("y",)})
    assert Hierarchy.from_dict(h.to_dict()) == h


def test_no_value_under_its_groups_confidence_floor_is_auto_filled_whatever_the_threshold(taxonomy) -> None:
    probs = {g.name: np.full((1, len(g.values)), 0.4 / (len(g.values) - 1)) for g in taxonomy.classifier_groups}
    for p in probs.values():
        p[0, 0] = 0.6
    probs["colour"][0] = [0.45, 0.55]  # its best value, White, at 0.55

    d = ValueDecoder(taxonomy, {}, {"master": 0.1, "sub": 0.1, "article": 0.1, "colour": 0.1})(probs)
    assert d.auto_filled["master"][0] and d.auto_filled["colour"][0]  # 0.6 and 0.55: above the default floor

    floored = "values: [Black, White]\n    confidence_floor: 0.6"
    strict = parse_taxonomy(TAXONOMY.replace("values: [Black, White]", floored))
    d = ValueDecoder(strict, {}, {"master": 0.1, "sub": 0.1, "article": 0.1, "colour": 0.1})(probs)
    assert not d.auto_filled["colour"][0]  # 0.55 < the group's floor of 0.6, though far above its threshold
    low = dict(probs)
    low["master"] = np.array([[0.45, 0.35, 0.2]])
    assert not ValueDecoder(taxonomy, {}, {"master": 0.1})(low).auto_filled["master"][0]  # 0.45 < 0.5


def test_an_image_above_the_guards_cut_off_has_none_of_its_values_auto_filled(taxonomy) -> None:
    from learner.model.shift_guard import SCORE_KEY, ShiftGuard

    probs = {g.name: np.full((2, len(g.values)), 0.001) for g in taxonomy.classifier_groups}
    for p in probs.values():
        p[:, 0] = 1 - 0.001 * (p.shape[1] - 1)
    guard = ShiftGuard(-10.0, tuple(range(11)), 0.02, 0.02, tuple(g.name for g in taxonomy.classifier_groups))

    d = ValueDecoder(taxonomy, shift_guard=guard)({**probs, SCORE_KEY: np.array([-12.0, -8.0])})

    assert list(d.unfamiliar) == [False, True]
    assert all(d.auto_filled[name][0] for name in d.auto_filled)
    assert not any(d.auto_filled[name][1] for name in d.auto_filled)
    assert ValueDecoder(taxonomy)({**probs, SCORE_KEY: np.array([-12.0, -8.0])}).unfamiliar is None  # no guard


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_both_backends_score_a_photo_alike_and_the_guard_withholds_it(
    calibrated_bundle_path, cc0_images, backend, tmp_path
):
    from learner.model.shift_guard import ShiftGuard

    bundle = load_bundle(calibrated_bundle_path)
    reference = TaggingEngine(bundle, device="cpu").tag_bytes([cc0_images[1].read_bytes()])[0]
    assert reference.shift_score is not None and not reference.unfamiliar  # no guard: scored, nothing withheld
    assert reference.is_auto_filled("kids")
    bundle.shift_guard = ShiftGuard(reference.shift_score - 0.01, tuple(range(11)), 0.02, 0.02, ("garment", "kids"))
    guarded = bundle.save(tmp_path / "guarded.safetensors")

    engine = load_engine(guarded, backend, device="cpu", onnx_cache_dir=tmp_path)
    (tags,) = engine.tag_bytes([cc0_images[1].read_bytes()])

    assert tags.shift_score == pytest.approx(reference.shift_score, abs=1e-3)
    assert tags.unfamiliar and not tags.is_auto_filled("kids")
    assert tags.to_dict()["unfamiliar"] is True
