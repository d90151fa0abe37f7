from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from learner.inference.backends import BACKENDS, load_engine
from learner.inference.engine import ImageTags, TagError, TaggingEngine
from learner.inference.imaging import ImageDecodeError, decode_image, decode_image_sized
from learner.model.bundle import ModelBundle, load_bundle
from learner.model.detector import DetectorSpec, build_detector


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request, untrained_bundle_path) -> TaggingEngine:
    """Every engine-level test runs on each backend (onnxruntime exports the bundle beside it on first use)."""
    return load_engine(untrained_bundle_path, request.param, device="cpu")


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares 10 gigapixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_one_bad_image_fails_alone_and_the_rest_of_the_batch_is_tagged(engine, cc0_images):
    good = cc0_images[0].read_bytes()
    batch = [good, b"this is not an image", good[: len(good) // 2], png_bomb(), b"", good]
    results = engine.tag_bytes(batch)
    assert [type(r).__name__ for r in results] == [
        "ImageTags",
        "TagError",
        "TagError",
        "TagError",
        "TagError",
        "ImageTags",
    ]
    assert [r.reason for r in results if isinstance(r, TagError)] == ["not_an_image", "truncated", "too_large", "empty"]
    assert results[0].attributes == results[-1].attributes


def test_every_single_choice_group_gets_ranked_confidences(engine, cc0_images):
    (tags,) = engine.tag_bytes([cc0_images[3].read_bytes()])
    assert isinstance(tags, ImageTags)
    garment = tags.attributes["garment"]
    assert len(garment) == 3
    confidences = [c for _, c in garment]
    assert confidences == sorted(confidences, reverse=True)
    assert all(0.0 <= c <= 1.0 for c in confidences)
    assert tags.model_version == "cc0-untrained-test"


def test_batching_does_not_change_the_answer(engine, cc0_images):
    images = [p.read_bytes() for p in cc0_images[:5]]
    together = engine.tag_bytes(images, batch_size=5)
    alone = [engine.tag_bytes([b])[0] for b in images]
    for a, b in zip(together, alone, strict=True):
        for (va, ca), (vb, cb) in zip(a.attributes["garment"], b.attributes["garment"], strict=True):
            assert va == vb
            assert ca == pytest.approx(cb, abs=1e-4)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(encode(img, "JPEG", exif=exif))
    assert decoded.size == (20, 40)


@pytest.mark.parametrize(
    ("orientation", "true_size"), [(1, (1200, 800)), (3, (1200, 800)), (6, (800, 1200)), (8, (800, 1200))]
)
def test_a_draft_decode_reports_the_files_true_oriented_size(orientation, true_size):
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded, size = decode_image_sized(encode(Image.new("RGB", (1200, 800), "red"), "JPEG", exif=exif), draft_size=200)
    assert max(decoded.size) < 1200  # decoded at a reduced scale ...
    assert size == true_size  # ... yet the size is the file's, oriented like the decoded image


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "L", "P", "LA", "I;16"])
def test_every_colour_mode_becomes_rgb(mode):
    fmt = {"CMYK": "JPEG", "I;16": "PNG"}.get(mode, "PNG")
    img = Image.new(mode, (16, 12))
    decoded = decode_image(encode(img, fmt))
    assert decoded.mode == "RGB"
    assert decoded.size == (16, 12)


def test_transparent_pixels_become_white_not_black():
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_image(encode(img, "PNG")).getpixel((4, 4)) == (255, 255, 255)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageDecodeError) as err:
        decode_image(encode(Image.new("RGB", (300, 300)), "PNG"), max_pixels=50_000)
    assert err.value.reason == "too_large"


def test_detections_become_attributes_with_boxes_in_original_pixels(untrained_bundle_path, cc0_images):
    import torch

    torch.manual_seed(0)
    bundle = load_bundle(untrained_bundle_path)
    spec = DetectorSpec(
        arch="fasterrcnn_mobilenet_v3_large_320_fpn",
        class_names=["__background__", "handbag", "person"],
        score_threshold=0.0,
        max_detections=5,
    )
    bundle.detector, bundle.detector_spec = build_detector(spec).eval(), spec
    data = cc0_images[0].read_bytes()
    width, height = Image.open(io.BytesIO(data)).size
    (tags,) = TaggingEngine(bundle, device="cpu").tag_bytes([data])
    assert tags.detections, "a detector with threshold 0 returns its top boxes"
    for d in tags.detections:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 <= x2 <= width + 1 and 0 <= y1 <= y2 <= height + 1
        assert d.attributes == {"detectedObjects": d.label} or d.label == "__background__"
    found = {v for v, _ in tags.attributes["detectedObjects"]}
    assert found == {d.label for d in tags.detections}


def test_onnxruntime_gives_the_torch_engines_confidences(untrained_bundle_path, cc0_images):
    images = [p.read_bytes() for p in cc0_images[:8]]
    on_torch = load_engine(untrained_bundle_path, "torch", device="cpu").tag_bytes(images)
    on_ort = load_engine(untrained_bundle_path, "onnxruntime", device="cpu").tag_bytes(images)
    for a, b in zip(on_torch, on_ort, strict=True):
        assert a.attributes.keys() == b.attributes.keys()
        for group in a.attributes:
            assert [v for v, _ in a.attributes[group]] == [v for v, _ in b.attributes[group]]
            assert [c for _, c in a.attributes[group]] == pytest.approx([c for _, c in b.attributes[group]], abs=1e-4)


def test_a_bundle_with_a_detector_runs_the_detector_on_torch_under_onnxruntime(
    untrained_bundle_path, cc0_images, tmp_path
):
    import torch

    torch.manual_seed(0)
    bundle = load_bundle(untrained_bundle_path)
    spec = DetectorSpec(
        arch="fasterrcnn_mobilenet_v3_large_320_fpn",
        class_names=["__background__", "handbag", "person"],
        score_threshold=0.0,
        max_detections=5,
    )
    with_detector = ModelBundle(
        "cc0-detector-test",
        bundle.taxonomy,
        bundle.classifier,
        detector=build_detector(spec).eval(),
        detector_spec=spec,
    ).save(tmp_path / "with-detector.safetensors")
    data = cc0_images[0].read_bytes()
    (on_torch,) = load_engine(with_detector, "torch", device="cpu").tag_bytes([data])
    engine = load_engine(with_detector, "onnxruntime", device="cpu")
    (on_ort,) = engine.tag_bytes([data])
    assert engine.backend == "onnxruntime" and engine.detector is not None
    assert on_ort.detections and [d.label for d in on_ort.detections] == [d.label for d in on_torch.detections]
    for a, b in zip(on_ort.detections, on_torch.detections, strict=True):
        assert a.box == pytest.approx(b.box, abs=1e-3)
    assert on_ort.top("garment")[0] == on_torch.top("garment")[0]
