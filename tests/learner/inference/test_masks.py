"""A mask detector in a bundle (learner/model/detector.py, learner/inference/engine.py): the engine returns each
detection's mask in original image pixels, the masks survive bundle save/load bit-identically, `tag --draw` tints
them; and the dominant colour of masked pixels (learner/inference/colour.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from daemon.cli import app
from learner.inference.backends import load_engine
from learner.inference.colour import BASIC_PALETTE, dominant_colour, palette_for, studio_foreground
from learner.inference.engine import ImageTags, TaggingEngine
from learner.model.bundle import ModelBundle, load_bundle
from learner.model.detector import torchvision_detector_spec
from learner.model.masks import area, decode
from tests.learner.scenes import small_mask_detector


def _mask_bundle(untrained_bundle_path: Path) -> ModelBundle:
    """The untrained cc0 bundle with a random small Mask R-CNN whose masks fill most of their boxes (its mask
    logits' bias raised: a random head's masks are empty) and whose every detection is kept."""
    bundle = load_bundle(untrained_bundle_path)
    bundle.model_version = "cc0-mask-test"
    bundle.detector, bundle.detector_spec = small_mask_detector(seed=0, score_threshold=0.0)
    with torch.no_grad():
        bundle.detector.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(3.0)  # type: ignore[union-attr]
    return bundle


@pytest.fixture(scope="module")
def mask_bundle_path(untrained_bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mask_bundle(untrained_bundle_path).save(tmp_path_factory.mktemp("mask-bundle") / "mask.safetensors")


def test_masks_survive_bundle_save_and_load_bit_identically_in_the_outputs(
    untrained_bundle_path: Path, mask_bundle_path: Path, cc0_images: list[Path]
) -> None:
    bundle = _mask_bundle(untrained_bundle_path)
    data = cc0_images[0].read_bytes()
    (in_memory,) = TaggingEngine(bundle, device="cpu").tag_bytes([data])
    (reloaded,) = load_engine(mask_bundle_path, "torch", device="cpu").tag_bytes([data])
    assert isinstance(in_memory, ImageTags) and isinstance(reloaded, ImageTags)
    assert in_memory.detections and all(d.mask is not None and area(d.mask) > 0 for d in in_memory.detections)
    assert reloaded.to_dict() == in_memory.to_dict()
    with Image.open(cc0_images[0]) as img:  # masks are in original image pixels, like boxes
        assert all(d.mask is not None and d.mask["size"] == [img.height, img.width] for d in reloaded.detections)


def test_tag_draw_of_a_mask_bundle_tints_the_masked_pixels(mask_bundle_path: Path, cc0_images: list[Path]) -> None:
    out = mask_bundle_path.parent / "drawn.png"
    result = CliRunner().invoke(
        app, ["tag", str(cc0_images[0]), "--model", str(mask_bundle_path), "--device", "cpu", "--draw", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "mask of" in result.stdout
    (tags,) = load_engine(mask_bundle_path, "torch", device="cpu").tag_bytes([cc0_images[0].read_bytes()])
    assert isinstance(tags, ImageTags)
    masked = max((d.mask for d in tags.detections if d.mask is not None), key=area)
    with Image.open(cc0_images[0]) as original, Image.open(out) as drawn:
        assert drawn.format == "PNG"
        photo = original.convert("RGB")
        scale = max(1.0, 480 / max(photo.size))
        size = (round(photo.width * scale), round(photo.height * scale))
        photo = photo.resize(size)
        region = np.asarray(drawn.convert("RGB").crop((0, 0, *size)), dtype=np.int16)
        inside = np.asarray(Image.fromarray(decode(masked)).resize(size, Image.Resampling.NEAREST))
        difference = np.abs(region - np.asarray(photo, dtype=np.int16)).mean(axis=2)
        assert inside.sum() > 100 and difference[inside].mean() > 15  # tinted where the mask is


def test_the_dominant_colour_of_masked_pixels_is_named_from_the_palette() -> None:
    image = np.full((40, 40, 3), 250, dtype=np.uint8)
    image[10:30, 5:20] = (205, 30, 40)  # a red garment ...
    image[10:30, 20:35] = (30, 40, 80)  # ... beside a navy one
    palette = palette_for(["Red", "Navy Blue", "White", "Black", "Unknown"])
    assert list(palette) == ["Black", "White", "Navy Blue", "Red"]
    red = np.zeros((40, 40), dtype=bool)
    red[10:30, 5:20] = True
    assert dominant_colour(image, red, palette) == ("Red", 1.0)
    found = dominant_colour(image, studio_foreground(image), palette)
    assert found is not None and found[0] in {"Red", "Navy Blue"} and found[1] == pytest.approx(0.5)
    assert dominant_colour(image, np.zeros((40, 40), dtype=bool), palette) is None
    assert set(BASIC_PALETTE) <= set(load_fashion_colours())


def load_fashion_colours() -> tuple[str, ...]:
    from learner.model.taxonomy import load_taxonomy

    return load_taxonomy("fashion-products").group("baseColour").values


def test_a_coco_mask_rcnn_without_its_weight_file_says_where_to_put_it() -> None:
    from learner.model.backbones import PretrainedWeightsUnavailable

    with pytest.raises(PretrainedWeightsUnavailable, match="checkpoints"):
        torchvision_detector_spec("maskrcnn_resnet50_fpn_v2")
