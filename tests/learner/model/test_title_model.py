from __future__ import annotations

import numpy as np
import pytest

from learner.model.taxonomy import load_taxonomy, parse_taxonomy
from learner.model.title_model import TitleModel, mask_attribute_words, title_digest, title_features

TAXONOMY = parse_taxonomy(
    """\
schema_version: 1
name: t
groups:
  colour:
    kind: single
    values: [Red, Navy Blue]
  gender:
    kind: single
    values: [Men, Women]
"""
)


def small_model() -> TitleModel:
    """Three features: 'w:red' pushes colour to Red, 'w:navy' to Navy Blue, 'w:women' gender to Women."""
    vocab = {"w:red": 0, "w:navy": 1, "w:women": 2}
    embedding = np.array([[4.0, 0.0], [-4.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    heads = {
        "colour": (np.array([[1.0, 0.0], [-1.0, 0.0]]), np.zeros(2)),
        "gender": (np.array([[0.0, -1.0], [0.0, 1.0]]), np.zeros(2)),
    }
    return TitleModel(vocab, embedding, heads, temperatures={"colour": 2.0})


def test_features_are_words_bigrams_and_character_ngrams_of_the_lowercased_title():
    feats = title_features("Red Tee")
    assert feats[:3] == ["w:red", "w:tee", "b:red tee"]
    assert {"c:<re", "c:red", "c:ed>", "c:<red", "c:red>", "c:<red>", "c:<tee>"} <= set(feats)
    assert "c:<red t" not in feats  # n-grams never cross words
    assert title_features("RED tee") == feats
    assert title_features(None) == title_features("") == []


def test_probabilities_are_temperature_scaled_softmax_of_the_mean_feature_embedding():
    model = small_model()
    p = model.probabilities(["red women"])
    h = np.array([4.0, 3.0]) / 2  # mean of the two known features; unknown ones are ignored
    z = np.array([h[0], -h[0]]) / 2.0
    assert p["colour"][0] == pytest.approx(np.exp(z) / np.exp(z).sum())
    assert p["gender"][0].argmax() == 1
    raw = model.probabilities(["red women"], calibrated=False)["colour"][0]
    assert raw[0] > p["colour"][0][0] > 0.5  # T = 2 softens
    assert model.probabilities(["red women", "red women unknownword"])["colour"][1] == pytest.approx(
        model.probabilities(["red women"])["colour"][0]
    )


@pytest.mark.parametrize("title", [None, "", "   ", "completely unseen"])
def test_a_title_without_known_features_gives_a_nan_row_and_no_signal(title):
    model = small_model()
    p = model.probabilities([title, "navy"])
    assert np.isnan(p["colour"][0]).all() and np.isnan(p["gender"][0]).all()
    assert not np.isnan(p["colour"][1]).any()
    assert not model.has_signal(title)
    assert model.has_signal("Navy shirt")


def test_manifest_and_tensors_round_trip_to_identical_probabilities():
    model = small_model()
    model.autofill_thresholds = {"colour": 0.9}
    entry = model.to_manifest()
    tensors = model.tensors()
    assert all(k.startswith("title.") for k in tensors)
    again = TitleModel.from_manifest(entry, {k: np.array(v) for k, v in tensors.items()})
    assert again.vocab == model.vocab
    assert again.temperatures == {"colour": 2.0} and again.autofill_thresholds == {"colour": 0.9}
    titles = ["red women", "navy", None]
    for g, p in model.probabilities(titles).items():
        np.testing.assert_array_equal(again.probabilities(titles)[g], p)
    half = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()}
    with pytest.raises(ValueError, match="checksum"):
        TitleModel.from_manifest(entry, half)  # the digest covers the tensors as stored
    shrunk = TitleModel.from_manifest({**entry, "tensor_sha256": title_digest(half)}, half)
    assert shrunk.embedding.dtype == np.float32


def test_a_model_whose_heads_do_not_fit_the_taxonomy_is_refused():
    small_model().check(TAXONOMY)
    with pytest.raises(ValueError, match="colour"):
        small_model().check(parse_taxonomy(GOOD_THREE_COLOURS))


GOOD_THREE_COLOURS = """\
schema_version: 1
name: t
groups:
  colour:
    kind: single
    values: [Red, Navy Blue, Green]
  gender:
    kind: single
    values: [Men, Women]
"""


@pytest.mark.parametrize(
    ("title", "masked"),
    [
        ("Puma Men Black Running Shoes", "Puma Running"),
        ("Nike Men's T-Shirt Navy-Blue", "Nike"),
        ("Fastrack Women T Shirt Sea Green", "Fastrack"),
        ("Lino Perros Women Brown Handbag", "Lino Perros"),
        ("Titan Unisex Watches", "Titan"),
        ("Davidoff Men Cool Water Perfume", "Davidoff Cool Water"),
    ],
)
def test_masking_removes_every_word_naming_a_value_in_any_form(title, masked):
    assert mask_attribute_words(title, load_taxonomy("fashion-products")) == masked


def test_masking_keeps_a_title_without_attribute_words():
    title = "Wrangler Vegas Slim Fit"
    assert mask_attribute_words(title, load_taxonomy("fashion-products")) == title


def test_a_title_names_a_group_when_it_carries_a_word_of_one_of_its_values():
    from learner.model.title_model import named_groups

    taxonomy = load_taxonomy("fashion-products")
    named = named_groups(["Puma Men Black Running Shoes", "Palm Tree Kids Sp Jema", None, "Nike T-Shirts"], taxonomy)
    assert named["gender"].tolist() == [True, False, False, False]
    assert named["baseColour"].tolist() == [True, False, False, False]
    assert named["articleType"].tolist() == [True, False, False, True]
    assert named["usage"].tolist() == [False, False, False, False]


def test_a_title_reads_the_same_whichever_titles_it_is_read_with():
    # a batch's matrix product rounds differently by batch size (BLAS); the title model must not
    rng = np.random.default_rng(0)
    words = [f"word{i}" for i in range(200)]
    vocab = {f"w:{w}": i for i, w in enumerate(words)}
    embedding = rng.normal(size=(len(vocab), 64)).astype(np.float32)
    heads = {g: (rng.normal(size=(40, 64)), rng.normal(size=40)) for g in ("colour", "gender")}
    model = TitleModel(vocab, embedding, heads, temperatures={"colour": 1.7})
    titles = [" ".join(rng.choice(words, size=5)) for _ in range(300)] + [None, "", "unseen"]
    batch = model.probabilities(titles)
    for i, title in enumerate(titles):
        alone = model.probabilities([title])
        assert all(np.array_equal(batch[g][i], alone[g][0], equal_nan=True) for g in heads)


def test_a_title_names_a_group_exactly_when_masking_that_groups_words_removes_one_of_its_words():
    from learner.model.title_model import group_word_sets, named_groups

    taxonomy = load_taxonomy("fashion-products")
    titles = ["Puma Men Black Running Shoes", "Nike T-Shirts", "Navy-Blue Women's Tshirt", "Palm Tree Kids", None]
    named = named_groups(titles, taxonomy)
    for group, words in group_word_sets(taxonomy).items():
        for i, title in enumerate(titles):
            kept = mask_attribute_words(title or "", taxonomy, words).split()
            assert named[group][i] == (len(kept) < len((title or "").split())), (group, title)
