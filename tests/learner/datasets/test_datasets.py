"""Labelled-set loading, the product-id split, label masking and train/serve-identical image preparation."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from learner.datasets.augmentation import Augmentation
from learner.datasets.images import ImageDataset, prepare_image
from learner.datasets.labelled import IGNORE_INDEX, DataError, SplitRule, load_labelled_set
from learner.inference.engine import TaggingEngine
from learner.model.backbones import Preprocessing
from learner.model.bundle import ModelBundle
from learner.model.classifier import AttributeClassifier
from learner.model.manifest import file_sha256
from learner.model.taxonomy import parse_taxonomy
from learner.training.loss import AttributeLoss

TAXONOMY = parse_taxonomy(
    """
schema_version: 1
name: tiny
groups:
  colour:
    kind: single
    label_column: baseColour
    colour: true
    values: [Red, Blue, Green]
  kind:
    kind: single
    label_column: articleType
    values: [Shirt, Shoe]
  tags:
    kind: multi
    label_column: tags
    values: [sale, new]
"""
)


def _pre() -> Preprocessing:
    return Preprocessing(input_size=64, resize_interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)


COLOURS = {"Red": (220, 20, 20), "Blue": (20, 20, 220), "Green": (20, 200, 20)}


def _write_set(root: Path, rows: list[dict[str, str]], header: list[str], size: tuple[int, int] = (40, 60)) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)]
    for r in rows:
        lines.append(",".join(r.get(h, "") for h in header))
        colour = COLOURS.get(r.get("baseColour", ""), (128, 128, 128))
        Image.new("RGB", size, colour).save(root / "images" / f"{r['id']}.jpg", quality=95)
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _rows(n: int) -> list[dict[str, str]]:
    colours = list(COLOURS)
    return [
        {"id": str(1000 + i), "baseColour": colours[i % 3], "articleType": "Shirt" if i % 2 else "Shoe", "tags": "sale"}
        for i in range(n)
    ]


def test_split_is_deterministic_and_follows_the_stated_fractions() -> None:
    rule = SplitRule(salt="s1")
    ids = [str(i) for i in range(5000)]

    first = [rule.split_of(i) for i in ids]
    again = [SplitRule(salt="s1").split_of(i) for i in ids]

    assert first == again
    shares = {name: first.count(name) / len(ids) for name in ("train", "val", "test")}
    assert shares["train"] == pytest.approx(0.70, abs=0.03)
    assert shares["val"] == pytest.approx(0.15, abs=0.03)
    assert shares["test"] == pytest.approx(0.15, abs=0.03)
    assert [SplitRule(salt="s2").split_of(i) for i in ids] != first  # the salt matters


def test_split_never_puts_one_product_in_two_splits(tmp_path: Path) -> None:
    # three photos per product, grouped by the product_id column
    rows = [
        {"image": f"p{p}-{k}", "product_id": f"P{p}", "baseColour": "Red", "articleType": "Shirt"}
        for p in range(60)
        for k in range(3)
    ]
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    for r in rows:
        (root / "images" / f"{r['image']}.jpg").write_bytes(b"")
    header = ["image", "product_id", "baseColour", "articleType"]
    (root / "labels.csv").write_text("\n".join([",".join(header), *(",".join(r[h] for h in header) for r in rows)]))
    labelled = load_labelled_set(root, TAXONOMY, group_column="product_id")
    rule = SplitRule()

    splits = {name: labelled.split(rule, name) for name in ("train", "val", "test")}

    products = {name: {s.split_key for s in samples} for name, samples in splits.items()}
    assert products["train"].isdisjoint(products["val"])
    assert products["train"].isdisjoint(products["test"])
    assert products["val"].isdisjoint(products["test"])
    assert sum(len(s) for s in splits.values()) == len(rows)
    assert all(len(products[name]) > 0 for name in splits)


def test_split_is_unchanged_when_rows_are_reordered_or_added(tmp_path: Path) -> None:
    header = ["id", "baseColour", "articleType", "tags"]
    rows = _rows(40)
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    a = load_labelled_set(_write_set(tmp_path / "a", rows, header), TAXONOMY)
    b = load_labelled_set(_write_set(tmp_path / "b", [*shuffled, *_rows(50)[40:]], header), TAXONOMY)
    rule = SplitRule()

    for name in ("train", "val", "test"):
        in_a = {s.sample_id for s in a.split(rule, name)}
        in_b = {s.sample_id for s in b.split(rule, name)}
        assert in_a == in_b & {r["id"] for r in rows}


def test_missing_and_unknown_labels_are_masked_and_reported(tmp_path: Path) -> None:
    header = ["id", "baseColour", "articleType", "tags"]
    rows = [
        {"id": "1", "baseColour": "Red", "articleType": "Shirt", "tags": "sale|new"},
        {"id": "2", "baseColour": "", "articleType": "Shoe", "tags": ""},
        {"id": "3", "baseColour": "Mauve", "articleType": "Shoe", "tags": "new|unheard"},
    ]
    labelled = load_labelled_set(_write_set(tmp_path / "s", rows, header), TAXONOMY)
    ds = ImageDataset(labelled.samples, TAXONOMY, _pre())

    assert labelled.missing_labels == {"colour": 2, "kind": 0, "tags": 1}
    assert labelled.unknown_values == {"colour": {"Mauve": 1}, "tags": {"unheard": 1}}
    assert ds.targets["colour"].tolist() == [0, IGNORE_INDEX, IGNORE_INDEX]
    assert ds.targets["tags"][0].tolist() == [1.0, 1.0]
    assert torch.isnan(ds.targets["tags"][1]).all()
    assert ds.targets["tags"][2].tolist() == [0.0, 1.0]


def test_a_masked_label_contributes_nothing_to_the_loss(tmp_path: Path) -> None:
    header = ["id", "baseColour", "articleType", "tags"]
    rows = [
        {"id": "1", "baseColour": "Red", "articleType": "Shirt", "tags": "sale"},
        {"id": "2", "baseColour": "", "articleType": "Shoe", "tags": ""},
    ]
    labelled = load_labelled_set(_write_set(tmp_path / "s", rows, header), TAXONOMY)
    targets = ImageDataset(labelled.samples, TAXONOMY, _pre()).targets
    loss_fn = AttributeLoss(TAXONOMY, labelled.samples, label_smoothing=0.1, class_weight_power=0.5)
    logits = {"colour": torch.randn(2, 3), "kind": torch.randn(2, 2), "tags": torch.randn(2, 2)}
    changed = {k: v.clone() for k, v in logits.items()}
    changed["colour"][1] = torch.tensor([50.0, -50.0, 9.0])  # the unlabelled sample's colour logits
    changed["tags"][1] = torch.tensor([-30.0, 30.0])

    _, parts = loss_fn(logits, targets)
    _, parts_changed = loss_fn(changed, targets)

    assert parts["colour"] == pytest.approx(parts_changed["colour"])
    assert parts["tags"] == pytest.approx(parts_changed["tags"])


def test_images_are_found_with_or_without_extension_from_a_csv_or_its_directory(tmp_path: Path) -> None:
    root = _write_set(tmp_path / "s", _rows(2), ["id", "baseColour", "articleType"])
    (root / "images" / "1001.jpg").rename(root / "images" / "1001")
    with (root / "labels.csv").open("a") as f:
        f.write("9999,Red,Shirt\n")  # no such image

    from_dir = load_labelled_set(root, TAXONOMY)
    from_csv = load_labelled_set(root / "labels.csv", TAXONOMY)

    assert [s.image_path.name for s in from_dir.samples] == ["1000.jpg", "1001"]
    assert [s.sample_id for s in from_csv.samples] == ["1000", "1001"]
    assert from_dir.skipped_rows == {"image file not found": 1}
    assert from_dir.absent_columns == ["tags"]


def test_unreadable_data_paths_raise_a_data_error_that_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_labelled_set(tmp_path / "nowhere", TAXONOMY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no labels\.csv"):
        load_labelled_set(tmp_path / "empty", TAXONOMY)
    (tmp_path / "other.csv").write_text("sku,price\n1,2\n")
    with pytest.raises(DataError, match="no image column"):
        load_labelled_set(tmp_path / "other.csv", TAXONOMY)


def test_training_images_are_prepared_exactly_as_the_engine_prepares_them(tmp_path: Path) -> None:
    rows = _rows(3)
    root = _write_set(tmp_path / "s", rows, ["id", "baseColour", "articleType"], size=(300, 170))
    taxonomy = parse_taxonomy(
        "schema_version: 1\nname: t\ngroups:\n  kind:\n    kind: single\n    label_column: articleType\n"
        "    values: [Shirt, Shoe]\n"
    )
    labelled = load_labelled_set(root, taxonomy)
    model = AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=False)
    engine = TaggingEngine(ModelBundle("v", taxonomy, model), device="cpu")
    ds = ImageDataset(labelled.samples, taxonomy, model.preprocessing)

    for i, s in enumerate(labelled.samples):
        served = engine.prepare(s.image_path.read_bytes()).classifier_input
        assert torch.equal(ds[i][0], served)


def test_augmentation_keeps_the_colour_of_the_product() -> None:
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    img.paste(Image.new("RGB", (32, 40), COLOURS["Red"]), (16, 12))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    x = prepare_image(buf.getvalue(), _pre())
    aug = Augmentation(pad_value=255)

    for seed in range(20):
        out = aug(x, random.Random(seed))
        y = out.float()
        product = y.min(dim=0).values < 200  # not the white background
        r, g, b = (y[c][product] for c in range(3))
        assert product.sum() > 200
        assert (r.mean() - g.mean()) > 120 and (r.mean() - b.mean()) > 120
        assert out.shape == x.shape and out.dtype == torch.uint8


def test_file_sha256_is_the_digest_of_the_whole_file_when_it_spans_many_blocks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 20_000  # ~5 MB: several read blocks
    path = tmp_path / "labels.csv"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_single_choice_target_rejects_a_multi_value_label() -> None:
    from learner.datasets.images import class_index

    assert class_index(None) == IGNORE_INDEX
    assert class_index(3) == 3
    with pytest.raises(TypeError):
        class_index((1, 2))


class _Stamp(Augmentation):
    """An augmentation that paints the image with its generator's first draw: which draw each access got."""

    def __call__(self, x: torch.Tensor, rng: random.Random) -> torch.Tensor:
        return torch.full_like(x, rng.randrange(256))


def test_loader_workers_that_persist_across_epochs_draw_each_epochs_augmentations(tmp_path: Path) -> None:
    labelled = load_labelled_set(_write_set(tmp_path / "s", _rows(4), ["id", "baseColour", "articleType"]), TAXONOMY)
    ds = ImageDataset(labelled.samples, TAXONOMY, _pre(), augmentation=_Stamp(), seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, persistent_workers=True)

    drawn = []
    for epoch in range(3):
        ds.set_epoch(epoch)  # as the trainer does before each epoch; the worker was started in the first
        (images, _targets) = next(iter(loader))
        drawn.append(images[:, 0, 0, 0].tolist())
    in_process = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        in_process.append([int(ds[i][0][0, 0, 0]) for i in range(4)])

    assert drawn == in_process
    assert drawn[0] != drawn[1] != drawn[2]
